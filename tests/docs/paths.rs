//! The path and link check: every repository path the docs name exists,
//! every relative link points at a file, and its `#anchor` at a heading.
//!
//! Paths are the first thing to go stale when files move. This module owns
//! what counts as a repository path (and what is a placeholder, or
//! [`GENERATED`] by the tools), and how a link resolves.

use std::fs;
use std::path::{Path, PathBuf};

use crate::markdown::{parse_doc, Doc, Located};
use crate::repo::ROOT;
use crate::shell::{block_command_lines, shell_words};

/// What the tools generate: named by the docs, absent from a fresh clone
/// (the dev PKI, build output, and the record `scripts/update-kit` writes).
const GENERATED: &[&str] = &["certs/", "target/", "crates/mtls-kit/.installed"];

/// Every path, link and anchor of the docs that does not exist, and every
/// block that shows `$ ` prompts without saying whether it runs.
pub fn errors(docs: &[Doc]) -> Vec<String> {
    let mut errors = vec![];
    for doc in docs {
        let mut words: Vec<Located> = vec![];
        for (line, span) in &doc.spans {
            words.extend(span.split_whitespace().map(|w| (*line, w.to_string())));
        }
        for (line, command) in block_command_lines(doc) {
            words.extend(shell_words(&command).into_iter().map(|w| (line, w)));
        }
        for (line, word) in words {
            if let Some(problem) = check_path(&word) {
                errors.push(format!("{}:{line}: {problem}", doc.name));
            }
        }
        for (line, target) in &doc.links {
            if let Some(problem) = check_link(doc, target, docs) {
                errors.push(format!("{}:{line}: {problem}", doc.name));
            }
        }
        for block in &doc.blocks {
            let known = matches!(block.info.as_str(), "console" | "text");
            if !known && block.body.iter().any(|l| l.starts_with("$ ")) {
                errors.push(format!(
                    "{}:{}: a `{}` block shows `$ ` prompts: mark it `console` (run and compared) or `text` (not run)",
                    doc.name, block.line, block.info
                ));
            }
        }
    }
    errors
}

/// `None` when `word` is not a repository path or names one that exists.
fn check_path(word: &str) -> Option<String> {
    let word = word
        .trim_start_matches(['(', '"', '\''])
        .trim_end_matches([',', ';', ':', ')', '.', '"', '\'']);
    let (path, function) = match word.split_once("::") {
        Some((p, f)) if p.ends_with(".rs") => (p, Some(f)),
        _ => (word, None),
    };
    let placeholder = ['*', '<', '{', '[', '$', '…']
        .iter()
        .any(|c| path.contains(*c))
        || path.contains("...")
        || path.contains("://");
    let first = path.split('/').next().unwrap_or("");
    let repo_path = path.contains('/')
        && !first.is_empty()
        && Path::new(ROOT).join(first).is_dir()
        && !GENERATED.iter().any(|g| path.starts_with(g));
    if placeholder || !repo_path {
        return None;
    }
    let full = Path::new(ROOT).join(path);
    if !full.exists() {
        return Some(format!("`{path}` does not exist"));
    }
    let function = function?;
    let source = fs::read_to_string(&full).unwrap_or_default();
    let defined =
        source.contains(&format!("fn {function}(")) || source.contains(&format!("fn {function}<"));
    (!defined).then(|| format!("`{path}` has no `fn {function}`"))
}

/// `None` when the link leaves the repository, or its file exists and has
/// the heading its `#anchor` names.
fn check_link(doc: &Doc, target: &str, docs: &[Doc]) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
        return None;
    }
    let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
    let here = Path::new(&doc.name).parent().unwrap_or(Path::new(""));
    let resolved = if file.is_empty() {
        PathBuf::from(&doc.name)
    } else {
        normalize(&here.join(file))
    };
    if !Path::new(ROOT).join(&resolved).exists() {
        return Some(format!(
            "link to `{target}`: {} does not exist",
            resolved.display()
        ));
    }
    if anchor.is_empty() {
        return None;
    }
    let name = resolved.to_string_lossy().replace('\\', "/");
    let anchors = match docs.iter().find(|d| d.name == name) {
        Some(d) => d.anchors.clone(),
        None if name.ends_with(".md") => parse_doc(&resolved).anchors,
        None => return None,
    };
    (!anchors.iter().any(|a| a == anchor))
        .then(|| format!("link to `{target}`: {name} has no heading with anchor #{anchor}"))
}

/// `a/b/../c` as `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
