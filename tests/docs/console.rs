//! The console-block runner: each `$ ` line of a `console` block runs from
//! the repository root with the freshly built binaries, and its output must
//! be the lines the block shows under it.
//!
//! Shown output goes stale silently, so it is compared with a real run. Only
//! commands that their own `--help` calls offline may run, with no
//! redirection that writes a file: a doc can then never start a server or
//! change the tree.

use std::path::Path;

use crate::commands::{display, invocation, is_redirection, walk};
use crate::help::clean_command;
use crate::markdown::{Block, Doc};
use crate::shell::{shell_words, simple_commands};
use crate::workspace::Workspace;

/// Runs every `console` block of the docs: what went wrong, one entry a
/// block, and how many commands ran.
pub fn run(ws: &Workspace, docs: &[Doc]) -> (Vec<String>, usize) {
    let mut errors = vec![];
    let mut ran = 0;
    for doc in docs {
        for block in doc.blocks.iter().filter(|b| b.info == "console") {
            match run_block(ws, block) {
                Ok(n) => ran += n,
                Err((k, problem)) => {
                    errors.push(format!("{}:{}: {problem}", doc.name, block.line + 1 + k))
                }
            }
        }
    }
    (errors, ran)
}

/// Runs a console block's commands; on a failure, the offset of the line
/// in the block and what went wrong.
fn run_block(ws: &Workspace, block: &Block) -> Result<usize, (usize, String)> {
    // (offset of the `$ ` line, command, expected output)
    let mut steps: Vec<(usize, String, Vec<String>)> = vec![];
    for (k, line) in block.body.iter().enumerate() {
        match (line.strip_prefix("$ "), steps.last_mut()) {
            (Some(command), _) => steps.push((k, command.trim().to_string(), vec![])),
            (None, Some(step)) => step.2.push(line.clone()),
            (None, None) if line.trim().is_empty() => {}
            (None, None) => {
                return Err((k, "a console block starts with a `$ ` command line".into()))
            }
        }
    }
    let mut status = None;
    for (k, command, expected) in &steps {
        let output = if command == "echo $?" {
            match status {
                Some(code) => format!("{code}\n"),
                None => return Err((*k, "`echo $?` before any command".into())),
            }
        } else {
            let (out, code) = run_offline(ws, command).map_err(|e| (*k, e))?;
            status = Some(code);
            out
        };
        let want = trimmed_lines(&expected.join("\n"));
        let got = trimmed_lines(&output);
        if want != got {
            let first = want
                .iter()
                .zip(&got)
                .position(|(w, g)| w != g)
                .unwrap_or(want.len().min(got.len()));
            return Err((
                *k,
                format!(
                    "`{command}` printed something else; first difference at output line {}:\n  doc:    {:?}\n  binary: {:?}\nthe whole output:\n{}",
                    first + 1,
                    want.get(first).map(String::as_str).unwrap_or("(nothing)"),
                    got.get(first).map(String::as_str).unwrap_or("(nothing)"),
                    got.join("\n")
                ),
            ));
        }
    }
    Ok(steps.len())
}

/// Runs one console command with stdout and stderr merged in order, if it is
/// one of the package's binaries and offline by its own `--help`.
fn run_offline(ws: &Workspace, command: &str) -> Result<(String, i32), String> {
    let commands = simple_commands(command);
    let [words] = commands.as_slice() else {
        return Err(format!(
            "`{command}`: a console command is one command, without pipes or `;`"
        ));
    };
    if shell_words(command).len() != words.len() {
        return Err(format!(
            "`{command}`: no variable assignments in console commands"
        ));
    }
    let Ok(Some((bin, args))) = invocation(ws, words) else {
        return Err(format!(
            "`{command}` is not a binary of this package ({}): a console block can run only those; show other commands in a `text` block",
            ws.bins.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    };
    if let Some(bad) = args
        .iter()
        .find(|a| (a.contains('>') || a.starts_with('<')) && !is_redirection(a))
    {
        return Err(format!(
            "`{command}`: only >/dev/null, 2>/dev/null and 2>&1 may redirect, not {bad}"
        ));
    }
    let (path, offline) = walk(&bin, &args)?;
    if !offline {
        return Err(format!(
            "`{command}` needs more than the files ({} is not described as offline by its --help), so it cannot be checked here: show it in a `text` block",
            display(&bin, &path)
        ));
    }
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if is_redirection(a) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    let script = format!("exec 2>&1; exec '{}' {}", bin.display(), quoted.join(" "));
    let out = clean_command(Path::new("sh"))
        .arg("-c")
        .arg(script)
        .output()
        .map_err(|e| format!("`{command}`: {e}"))?;
    let code = out
        .status
        .code()
        .ok_or_else(|| format!("`{command}` was killed"))?;
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), code))
}

/// The lines of an output as they are compared: trailing spaces and
/// trailing blank lines dropped.
fn trimmed_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}
