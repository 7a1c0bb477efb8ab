//! Command lines as a shell reads them: words, simple commands and comments,
//! and the command lines a doc shows (its code spans, the lines of its shell
//! blocks and the `$ ` lines of its console and text blocks).
//!
//! The path, command and console checks all split commands; doing it here
//! keeps them agreeing on what a word is. It builds on the markdown parsing
//! and knows nothing of the binaries.

use crate::markdown::{Doc, Located};

/// Words of a command line as a shell splits them (quotes removed), with
/// `|`, `||`, `&&` and `;` as words of their own.
pub fn shell_words(line: &str) -> Vec<String> {
    let mut words = vec![];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            ';' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                words.push(";".into());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Simple commands of a line: split at `|`, `||`, `&&` and `;`, with leading
/// `VAR=value` assignments dropped.
pub fn simple_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![];
    for part in shell_words(line).split(|w| matches!(w.as_str(), "|" | "||" | "&&" | ";")) {
        let start = part
            .iter()
            .position(|w| !is_assignment(w))
            .unwrap_or(part.len());
        if start < part.len() {
            commands.push(part[start..].to_vec());
        }
    }
    commands
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// A line of a shell block without its comment.
fn without_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev.is_whitespace() => return &line[..at],
            _ => {}
        }
        prev = c;
    }
    line
}

/// The command lines a doc shows: code spans, and the command lines of its
/// blocks.
pub fn command_lines(doc: &Doc) -> Vec<Located> {
    let mut lines = doc.spans.clone();
    lines.extend(block_command_lines(doc));
    lines
}

/// The lines of shell blocks (continuations joined), and the `$ ` lines of
/// console and text blocks.
pub fn block_command_lines(doc: &Doc) -> Vec<Located> {
    let mut lines = vec![];
    for block in &doc.blocks {
        let shell = matches!(block.info.as_str(), "sh" | "bash" | "shell");
        let mut pending: Option<Located> = None;
        for (k, raw) in block.body.iter().enumerate() {
            let n = block.line + 1 + k;
            let line = if shell {
                without_comment(raw)
            } else if let Some(cmd) = raw.strip_prefix("$ ") {
                cmd
            } else {
                continue;
            };
            let (start, mut text) = pending.take().unwrap_or((n, String::new()));
            text.push_str(line.trim_end().trim_end_matches('\\'));
            text.push(' ');
            if line.trim_end().ends_with('\\') {
                pending = Some((start, text));
            } else {
                lines.push((start, text));
            }
        }
    }
    lines
}
