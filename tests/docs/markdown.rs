//! The docs as markdown: each file split into the code spans, links, fenced
//! blocks, heading anchors and plain lines that the checks read.
//!
//! The parsing is its own module so that every check reads the docs the same
//! way, and so that what counts as a span, a link or a block is decided in
//! one place. It knows nothing of shells, binaries or the workspace.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::repo::ROOT;

/// A piece of text and the line it starts on.
pub type Located = (usize, String);

/// One markdown file, split into what the checks read.
pub struct Doc {
    /// Relative to the repository root, with `/` separators.
    pub name: String,
    /// Code spans outside fenced blocks.
    pub spans: Vec<Located>,
    /// Link targets outside code.
    pub links: Vec<Located>,
    /// Fenced blocks.
    pub blocks: Vec<Block>,
    /// GitHub's anchors for the headings.
    pub anchors: Vec<String>,
    /// Lines outside fenced blocks (tables live here).
    pub lines: Vec<Located>,
}

/// A fenced block: its info string (`console`, `sh`, ...) and its lines.
pub struct Block {
    pub info: String,
    /// Line of the opening fence.
    pub line: usize,
    pub body: Vec<String>,
}

/// Every doc the checks read: `README.md`, `certs/README.md` and every
/// `.md` under `docs/`, in path order.
pub fn docs() -> Vec<Doc> {
    let mut files = vec![PathBuf::from("README.md"), PathBuf::from("certs/README.md")];
    let mut dirs = vec![PathBuf::from("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(Path::new(ROOT).join(&dir)).expect("docs/") {
            let path = dir.join(entry.unwrap().file_name());
            if Path::new(ROOT).join(&path).is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files.iter().map(|f| parse_doc(f)).collect()
}

/// One markdown file, named relative to the repository root.
pub fn parse_doc(file: &Path) -> Doc {
    let text = fs::read_to_string(Path::new(ROOT).join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let name = file.to_string_lossy().replace('\\', "/");
    let mut doc = Doc {
        name,
        spans: vec![],
        links: vec![],
        blocks: vec![],
        anchors: vec![],
        lines: vec![],
    };
    // Fenced blocks out, their lines left blank so that offsets keep their
    // line numbers for the inline scan below.
    let mut prose = String::new();
    let mut fence: Option<(String, Block)> = None;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim_start();
        if let Some((marker, block)) = &mut fence {
            let fence_char = marker.chars().next().unwrap_or('`');
            if trimmed.starts_with(marker.as_str()) && trimmed.trim_matches(fence_char).is_empty() {
                doc.blocks.push(fence.take().unwrap().1);
            } else {
                block.body.push(line.to_string());
            }
            prose.push('\n');
            continue;
        }
        let ticks = trimmed.len() - trimmed.trim_start_matches(['`', '~']).len();
        if ticks >= 3 && (trimmed.starts_with("```") || trimmed.starts_with("~~~")) {
            let info = trimmed[ticks..].trim().to_string();
            let block = Block {
                info,
                line: n,
                body: vec![],
            };
            fence = Some((trimmed[..ticks].to_string(), block));
            prose.push('\n');
            continue;
        }
        let hashes = trimmed.len() - trimmed.trim_start_matches('#').len();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            let title = trimmed[hashes..].trim();
            let slug = slug(title);
            let count = seen.entry(slug.clone()).or_default();
            doc.anchors.push(match *count {
                0 => slug,
                k => format!("{slug}-{k}"),
            });
            *count += 1;
        }
        doc.lines.push((n, line.to_string()));
        prose.push_str(line);
        prose.push('\n');
    }
    let (spans, links) = inline(&prose);
    doc.spans = spans;
    doc.links = links;
    doc
}

/// Code spans and link targets, with their lines. A span does not cross a
/// blank line, as in CommonMark.
pub fn inline(prose: &str) -> (Vec<Located>, Vec<Located>) {
    let bytes = prose.as_bytes();
    let line_of = |at: usize| prose[..at].matches('\n').count() + 1;
    let (mut spans, mut links) = (vec![], vec![]);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'`' {
            let run = bytes[i..].iter().take_while(|&&b| b == b'`').count();
            let fence = &prose[i..i + run];
            let rest = &prose[i + run..];
            let para_end = rest.find("\n\n").unwrap_or(rest.len());
            let mut close = None;
            let mut from = 0;
            while let Some(at) = rest[from..para_end].find(fence) {
                let at = from + at;
                let after = rest[at + run..].starts_with('`');
                if !after {
                    close = Some(at);
                    break;
                }
                from = at + rest[at..].chars().take_while(|&c| c == '`').count();
            }
            match close {
                Some(at) => {
                    let content = rest[..at].replace('\n', " ");
                    spans.push((line_of(i), content.trim().to_string()));
                    i += run + at + run;
                }
                None => i += run,
            }
            continue;
        }
        if bytes[i] == b']' && bytes.get(i + 1) == Some(&b'(') {
            if let Some(end) = prose[i + 2..].find(')') {
                let target = prose[i + 2..i + 2 + end]
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                links.push((line_of(i), target.to_string()));
            }
        }
        i += 1;
    }
    (spans, links)
}

/// GitHub's anchor for a heading: lower case, code marks and punctuation
/// dropped, spaces as hyphens; link text kept, link targets dropped.
fn slug(title: &str) -> String {
    let mut text = String::new();
    let mut rest = title;
    while let Some(at) = rest.find("](") {
        text.push_str(&rest[..at]);
        rest = rest[at..].split_once(')').map_or("", |(_, r)| r);
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}
