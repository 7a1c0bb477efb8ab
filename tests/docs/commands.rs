//! The command check, and what it rests on: which of the package's binaries
//! a command runs (directly, from `target/`, or by `cargo run`), and whether
//! its `cargo` arguments, subcommands and flags exist.
//!
//! A command copied from the docs must work, so each is walked down its
//! binary's `--help`. The console runner reuses the walk to find out whether
//! a command is offline before it runs it.

use std::path::{Path, PathBuf};

use crate::help::help;
use crate::markdown::Doc;
use crate::repo::ROOT;
use crate::shell::{command_lines, simple_commands};
use crate::workspace::Workspace;

/// Every command of the docs that names a target, package, feature,
/// subcommand or flag that does not exist.
pub fn errors(ws: &Workspace, docs: &[Doc]) -> Vec<String> {
    let mut errors = vec![];
    for doc in docs {
        for (line, text) in command_lines(doc) {
            for words in simple_commands(&text) {
                let at = format!("{}:{line}: `{}`", doc.name, words.join(" "));
                let result = match invocation(ws, &words) {
                    Ok(Some((bin, args))) => walk(&bin, &args).map(|_| ()),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(problem) = result {
                    errors.push(format!("{at}: {problem}"));
                }
            }
        }
    }
    errors
}

/// A binary of the package and the arguments a command gives it, if the
/// command runs one.
pub type Run = Option<(PathBuf, Vec<String>)>;

/// The binary of the package this command runs and its arguments, if it
/// runs one; `cargo` arguments (targets, packages, features) are checked on
/// the way.
pub fn invocation(ws: &Workspace, words: &[String]) -> Result<Run, String> {
    let Some(program) = words.first() else {
        return Ok(None);
    };
    if program == "cargo" {
        return cargo_invocation(ws, words);
    }
    let name = program.rsplit('/').next().unwrap_or(program);
    let ours = !program.contains('/')
        || program.contains("target/debug/")
        || program.contains("target/release/");
    match ws.bins.get(name) {
        Some(exe) if ours => Ok(Some((exe.clone(), words[1..].to_vec()))),
        _ => Ok(None),
    }
}

/// [`invocation`] for `cargo`: checks its `-p`, `--features`, `--test`,
/// `--bench` and `--bin`, and for `cargo run` returns the binary it runs.
fn cargo_invocation(ws: &Workspace, words: &[String]) -> Result<Run, String> {
    let (cargo_args, after) = match words.iter().position(|w| w == "--") {
        Some(at) => (&words[1..at], words[at + 1..].to_vec()),
        None => (&words[1..], vec![]),
    };
    let value = |flag: &str| -> Vec<String> {
        cargo_args
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    };
    let placeholder =
        |w: &str| w.chars().any(|c| matches!(c, '<' | '[' | '.')) || w.to_uppercase() == w;
    let package = value("-p").into_iter().chain(value("--package")).next();
    if let Some(p) = &package {
        if ws.dir(p).is_none() {
            return Err(format!("no package `{p}` in the workspace"));
        }
    }
    for feature in value("--features").iter().flat_map(|f| f.split([',', ' '])) {
        let (p, f) = match feature.split_once('/') {
            Some((p, f)) => (p.to_string(), f),
            None => (
                package.clone().unwrap_or_else(|| ws.packages[0].0.clone()),
                feature,
            ),
        };
        if !ws.has_feature(&p, f) {
            return Err(format!("package `{p}` has no feature `{f}`"));
        }
    }
    for test in value("--test").iter().filter(|t| !placeholder(t)) {
        if !ws.has_target("tests", test) {
            return Err(format!("no test target `{test}`"));
        }
    }
    for bench in value("--bench").iter().filter(|b| !placeholder(b)) {
        if !ws.has_target("benches", bench) {
            return Err(format!("no bench target `{bench}`"));
        }
    }
    let bin = value("--bin").into_iter().next();
    if let Some(b) = &bin {
        let member_bin = ws.packages[1..].iter().any(|(name, dir)| {
            (name == b && Path::new(ROOT).join(dir).join("src/main.rs").exists())
                || Path::new(ROOT)
                    .join(dir)
                    .join(format!("src/bin/{b}.rs"))
                    .exists()
        });
        if !ws.bins.contains_key(b) && !member_bin {
            return Err(format!("no binary `{b}` in the workspace"));
        }
    }
    if cargo_args.first().map(String::as_str) != Some("run") {
        return Ok(None);
    }
    let runs = match (&bin, &package) {
        (Some(b), _) => ws.bins.get(b),
        (None, None) => ws.default_run.as_ref().and_then(|b| ws.bins.get(b)),
        (None, Some(_)) => None,
    };
    Ok(runs.map(|exe| (exe.clone(), after)))
}

/// Walks the arguments down the binary's subcommands, checking each flag
/// and subcommand against `--help`. Returns the subcommand path, and
/// whether it is described as offline (or is a request for help).
pub fn walk(bin: &Path, args: &[String]) -> Result<(Vec<String>, bool), String> {
    let mut path: Vec<String> = vec![];
    let mut node = help(bin, &path);
    let mut offline = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if is_redirection(arg) {
            continue;
        }
        if arg == "--" || arg.contains("...") || arg.contains('…') || arg.starts_with('[') {
            break;
        }
        if arg.starts_with('-') && arg.len() > 1 {
            let flag = arg.split('=').next().unwrap();
            let Some(opt) = node.option(flag) else {
                return Err(format!("`{}` has no flag {flag}", display(bin, &path)));
            };
            if matches!(flag, "--help" | "-h" | "--version" | "-V") {
                offline = true;
            }
            if opt.takes_value && !arg.contains('=') {
                i += 1;
            }
            continue;
        }
        if arg.starts_with('<') {
            break;
        }
        if node.commands.is_empty() || node.positionals && !node.commands.contains_key(arg) {
            continue;
        }
        let Some(about) = node.commands.get(arg) else {
            return Err(format!("`{}` has no subcommand {arg}", display(bin, &path)));
        };
        offline |= about.to_lowercase().contains("offline");
        path.push(arg.to_string());
        node = help(bin, &path);
    }
    Ok((path, offline))
}

/// `BIN SUBCOMMAND...`, as errors name a command.
pub fn display(bin: &Path, path: &[String]) -> String {
    let name = bin.file_stem().unwrap().to_string_lossy();
    std::iter::once(name.as_ref())
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The redirections a console command may use: none that writes a file.
pub fn is_redirection(word: &str) -> bool {
    matches!(word, ">/dev/null" | "1>/dev/null" | "2>/dev/null" | "2>&1")
}
