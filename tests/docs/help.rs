//! What a binary's `--help` lists: its subcommands, its flags (with their
//! environment variables and clap defaults) and whether it takes positional
//! arguments; and the clean environment the binaries run in.
//!
//! The binaries are the truth the docs are checked against, so their help is
//! run once per (sub)command and parsed here, in one place that knows clap's
//! help format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::repo::ROOT;

/// What one (sub)command's `--help` lists.
#[derive(Default)]
pub struct Help {
    /// Subcommand -> its one-line description.
    pub commands: BTreeMap<String, String>,
    pub options: Vec<Opt>,
    /// Whether it takes positional arguments.
    pub positionals: bool,
}

/// One flag of a `--help`: its names, whether it takes a value, and what
/// the help says of it.
#[derive(Default)]
pub struct Opt {
    pub long: Option<String>,
    short: Option<String>,
    pub takes_value: bool,
    pub env: Option<String>,
    /// clap's own default: `[default: V]` on a line of its own.
    pub default: Option<String>,
    /// Every line of the entry.
    pub text: String,
}

impl Help {
    pub fn option(&self, flag: &str) -> Option<&Opt> {
        self.options
            .iter()
            .find(|o| o.long.as_deref() == Some(flag) || o.short.as_deref() == Some(flag))
    }
}

/// clap's help text, read by its sections (`Commands:`, `Arguments:`,
/// `Options:`).
fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        match section {
            "Commands:" if indent == 2 => {
                let (name, about) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
                help.commands.insert(name.into(), about.trim().into());
            }
            "Arguments:" if !trimmed.is_empty() => help.positionals = true,
            "Options:" if indent <= 6 && trimmed.starts_with('-') => {
                let signature = trimmed.split("  ").next().unwrap_or("");
                let mut opt = Opt::default();
                for token in signature.split_whitespace() {
                    let token = token.trim_end_matches(',');
                    if token.starts_with("--") {
                        opt.long = Some(token.into());
                    } else if token.starts_with('-') {
                        opt.short = Some(token.into());
                    } else if token.starts_with('<') || token.starts_with("[<") {
                        opt.takes_value = true;
                    }
                }
                opt.text = line.into();
                help.options.push(opt);
            }
            "Options:" if !trimmed.is_empty() => {
                if let Some(opt) = help.options.last_mut() {
                    if trimmed.starts_with("[default: ") && trimmed.ends_with(']') {
                        opt.default = Some(trimmed["[default: ".len()..trimmed.len() - 1].into());
                    }
                    opt.text.push('\n');
                    opt.text.push_str(line);
                }
            }
            _ => {}
        }
    }
    for opt in &mut help.options {
        if let Some((_, env)) = opt.text.split_once("[env: ") {
            opt.env = env.split('=').next().map(str::to_string);
        }
    }
    help
}

/// A command of the environment that help and console runs get: no
/// variable of the user's can change a flag's default or an output.
pub fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    command.env_clear().current_dir(ROOT);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

static HELP: Mutex<BTreeMap<(PathBuf, Vec<String>), String>> = Mutex::new(BTreeMap::new());

/// `BIN SUBCOMMAND... --help`, once per process.
pub fn help(bin: &Path, path: &[String]) -> Help {
    let key = (bin.to_path_buf(), path.to_vec());
    let mut cache = HELP.lock().unwrap();
    let text = cache.entry(key).or_insert_with(|| {
        let out = clean_command(bin)
            .args(path)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "{} {path:?} --help failed",
            bin.display()
        );
        String::from_utf8(out.stdout).unwrap()
    });
    parse_help(text)
}
