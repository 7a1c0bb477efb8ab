//! The configuration table check: the table in `docs/operations.md` whose
//! header is `flag | environment | default` against `server --help`.
//!
//! The table is what operators read instead of the help, so every flag, its
//! environment variable and its default must be the binary's own. It owns
//! reading markdown tables, which no other check needs.

use std::collections::BTreeMap;
use std::path::Path;

use crate::help::{help, Opt};
use crate::markdown::{docs, inline, Doc};
use crate::repo::SERVER;

/// What differs between the configuration table of `docs/operations.md`
/// and `server --help`, one line a difference. Panics when either has lost
/// the shape the check reads (no clap defaults, no table).
pub fn errors() -> Vec<String> {
    let help = help(Path::new(SERVER), &[]);
    let flags: Vec<&Opt> = help
        .options
        .iter()
        .filter(|o| !matches!(o.long.as_deref(), Some("--help" | "--version") | None))
        .collect();
    assert!(
        flags.iter().any(|o| o.default.is_some()),
        "no `[default: V]` line in `server --help`: has its format changed?"
    );
    let doc = docs()
        .into_iter()
        .find(|d| d.name == "docs/operations.md")
        .expect("docs/operations.md");
    let rows = table_rows(&doc, &["flag", "environment", "default"]);
    assert!(
        !rows.is_empty(),
        "docs/operations.md: no `| flag | environment | default |` table"
    );

    let mut errors = vec![];
    let mut listed = BTreeMap::new();
    for (line, cells) in &rows {
        let at = format!("docs/operations.md:{line}");
        let Some(flag) = code_spans(&cells[0]).into_iter().next() else {
            errors.push(format!("{at}: the flag cell has no `--flag`"));
            continue;
        };
        if listed.insert(flag.clone(), *line).is_some() {
            errors.push(format!("{at}: {flag} is listed twice"));
        }
        let Some(opt) = flags.iter().find(|o| o.long.as_deref() == Some(&flag)) else {
            errors.push(format!("{at}: {flag} is not a flag of `server --help`"));
            continue;
        };
        let env = code_spans(&cells[1]).into_iter().next();
        if env != opt.env {
            errors.push(format!(
                "{at}: {flag}: the table says environment {env:?}, `server --help` says {:?}",
                opt.env
            ));
        }
        let spans = code_spans(&cells[2]);
        match &opt.default {
            Some(default) if spans.first() != Some(default) => errors.push(format!(
                "{at}: {flag}: `server --help` has default `{default}`, the table's default cell starts with {:?} (its first code must be the default)",
                spans.first()
            )),
            None => {
                for span in spans.iter().filter(|s| !opt.text.contains(s.as_str())) {
                    errors.push(format!(
                        "{at}: {flag} has no default in `server --help`, and its help does not mention `{span}`, which the table's default cell names"
                    ));
                }
            }
            _ => {}
        }
    }
    for opt in &flags {
        let flag = opt.long.clone().unwrap();
        if !listed.contains_key(&flag) {
            errors.push(format!(
                "docs/operations.md: `server --help` has {flag} ({}), the configuration table does not",
                opt.env.as_deref().unwrap_or("no environment variable")
            ));
        }
    }
    errors
}

/// The rows of the table with this header, as (line, cells).
fn table_rows(doc: &Doc, header: &[&str]) -> Vec<(usize, Vec<String>)> {
    let cells = |line: &str| -> Vec<String> {
        let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(|c| c.trim().to_string()).collect()
    };
    let mut rows = vec![];
    let mut in_table = false;
    for (n, line) in &doc.lines {
        if !line.trim_start().starts_with('|') {
            in_table = false;
            continue;
        }
        let row = cells(line);
        if row.iter().map(String::as_str).eq(header.iter().copied()) {
            in_table = true;
        } else if in_table && !row.iter().all(|c| c.chars().all(|c| c == '-' || c == ':')) {
            rows.push((*n, row));
        }
    }
    rows
}

/// The code spans of a table cell.
fn code_spans(cell: &str) -> Vec<String> {
    inline(cell).0.into_iter().map(|(_, s)| s).collect()
}
