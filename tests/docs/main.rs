//! The docs, checked against the binaries and the files, so that they cannot
//! go stale. The docs are `README.md`, `certs/README.md` and every page under
//! `docs/`. Four checks, one test each:
//!
//! 1. **The configuration table** in `docs/operations.md` (the table whose
//!    header is `flag | environment | default`) lists exactly the flags and
//!    environment variables of `server --help`. Defaults: where the help prints
//!    clap's own `[default: V]` (a line of its own in the long help), the first
//!    code span of the cell must be exactly `V`. Where it prints none (a switch,
//!    or a default that depends on other flags and is described in words),
//!    every code span of the cell must appear in that flag's help text, so the
//!    table cannot claim a value the binary does not.
//! 2. **Paths**: every repository path the docs name exists. A path is a word
//!    of a code span or of a shell command whose first component is a
//!    top-level entry of the repository (`scripts/...`, `config/...`, `.ci/...`);
//!    words with `*`, `<`, `{`, `[`, `$` or `...` are patterns or placeholders,
//!    and what the tools generate ([`paths::GENERATED`]: the dev PKI, build
//!    output) is not checked. `PATH::name` also needs `fn name` in that file.
//!    Every relative link must point at a file, and its `#anchor` at a
//!    heading there.
//! 3. **Commands**: `cargo` commands name real binaries, tests, benches,
//!    packages and features; an invocation of one of the package's binaries
//!    (`server policy check ...`, `cargo run --bin certs -- client NAME`,
//!    `target/debug/client ...`) uses subcommands and flags its `--help`
//!    lists. Commands come from code spans, the lines of `sh`, `bash` and
//!    `shell` blocks, and the `$ ` lines of `console` and `text` blocks.
//! 4. **Console blocks** (fenced as `console`) print what they show. Each
//!    `$ ` line runs from the repository root with the freshly built binaries
//!    (`cargo run [-q] --bin X --` and `target/debug/X` mean binary `X`), and
//!    the lines up to the next `$ ` line are its expected output, stdout and
//!    stderr together, trailing blank lines and spaces ignored. `echo $?`
//!    prints the previous command's exit status. Only commands that their own
//!    `--help` describes as offline may run (and `--help` itself), with no
//!    redirection but `>/dev/null`, `2>/dev/null` and `2>&1`; anything else in
//!    a console block fails the test. Sessions that need a running server go
//!    in `text` blocks, which are never run, and a block of another kind that
//!    shows a `$ ` prompt must say `console` or `text`.
//!
//! Nothing here names the example service: the binaries, the workspace and
//! the files say what exists, so the checks hold after the example is
//! renamed or replaced.
//!
//! The parts, lowest first (a module uses only those above it):
//!
//! - [`repo`]: where the repository and the built binaries are.
//! - [`markdown`]: the docs split into code spans, links, blocks, anchors
//!   and lines.
//! - [`shell`]: shell words and simple commands, and the command lines a doc
//!   shows.
//! - [`workspace`]: the packages, binaries, features and targets, from the
//!   files.
//! - [`help`]: what a binary's `--help` lists, and the clean environment
//!   binaries run in.
//! - [`config_table`], [`paths`], [`commands`]: checks 1 to 3.
//! - [`console`]: check 4, which runs what [`commands`] resolves.

mod commands;
mod config_table;
mod console;
mod help;
mod markdown;
mod paths;
mod repo;
mod shell;
mod workspace;

use markdown::docs;
use workspace::workspace;

#[test]
fn the_configuration_table_matches_server_help() {
    let errors = config_table::errors();
    assert!(errors.is_empty(), "\n{}\n", errors.join("\n"));
}

#[test]
fn every_path_and_link_the_docs_name_exists() {
    let errors = paths::errors(&docs());
    assert!(errors.is_empty(), "\n{}\n", errors.join("\n"));
}

#[test]
fn every_command_the_docs_show_names_real_targets_subcommands_and_flags() {
    let errors = commands::errors(&workspace(), &docs());
    assert!(errors.is_empty(), "\n{}\n", errors.join("\n"));
}

#[test]
fn console_blocks_print_what_they_show() {
    let (errors, ran) = console::run(&workspace(), &docs());
    assert!(errors.is_empty(), "\n{}\n", errors.join("\n\n"));
    assert!(ran > 0, "no console block ran");
}
