//! `policy check | explain | test`: the operator's tools for a policy file,
//! for a service's server binary to offer as a subcommand (the binary knows
//! the methods it serves, so paths are checked as a running server checks
//! them). Offline: no listener, no port, no certificates needed.
//!
//! * [`explain`] owns the explain command and the identity and header
//!   inputs it shares with `test`;
//! * [`cases`] owns `test` and its case-file format.
//!
//! Exit statuses: 0 ok; 1 warnings under `check --strict`, or a failed test
//! case; 2 an invalid policy or case file, or an unusable input.

pub mod cases;
pub mod explain;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::policy::check::{self, Report};
use crate::policy::file::PolicySpec;
use crate::policy::{Policy, ServedMethods};
use crate::server::Services;

/// Everything went as asked.
pub const EXIT_OK: u8 = 0;
/// Warnings under `--strict`, or a test case failed.
pub const EXIT_FAILED: u8 = 1;
/// The policy, a case file or an input could not be used.
pub const EXIT_INVALID: u8 = 2;

/// The `policy` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum PolicyCommand {
    /// Validate a policy file and check its paths against the methods this
    /// server serves. Prints every error and warning. Exit status: 0 ok, 1
    /// warnings with --strict, 2 errors.
    Check {
        /// The policy file (gRPC A43 JSON).
        file: PathBuf,
        /// Treat warnings as failures (as --strict-policy-paths does for
        /// the server).
        #[arg(long)]
        strict: bool,
    },
    /// Show the decision the server would make for one RPC, and why.
    Explain(ExplainArgs),
    /// Run a table of cases (identity, method, expected decision) against a
    /// policy. A case whose method this server does not serve fails. Exit
    /// status: 0 all passed, 1 a case failed, 2 unusable input.
    Test {
        /// The policy file.
        policy: PathBuf,
        /// The cases (JSON; see docs/policy.md).
        cases: PathBuf,
    },
}

/// `policy explain`'s inputs. The peer is given one way: a certificate, or
/// principal names.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("peer").required(true).args(["cert", "principals"])))]
pub struct ExplainArgs {
    /// The policy file.
    pub file: PathBuf,
    /// The RPC, `/package.Service/Method`.
    #[arg(long)]
    pub method: String,
    /// The peer's certificate (PEM; the first certificate is the leaf).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// A principal name of the peer (repeatable): a URI such as a SPIFFE ID
    /// (contains `://`) is a URI SAN, a name with `=` is the Subject in
    /// RFC 2253 form, anything else a DNS SAN.
    #[arg(long = "principal", value_name = "NAME")]
    pub principals: Vec<String>,
    /// Request metadata, `key:value` (repeatable; a repeated key is joined
    /// with `,` as gRPC does; `-bin` values base64-encoded).
    #[arg(long = "header", value_name = "KEY:VALUE", value_parser = explain::parse_header)]
    pub headers: Vec<(String, String)>,
    /// Print JSON: {"decision": "allow"|"deny", "rule": NAME|null, ...}.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cmd` for a server serving `services`, printing to stdout and
/// stderr.
pub fn main(cmd: &PolicyCommand, services: &Services) -> ExitCode {
    offline(services, |served, out, err| run(cmd, served, out, err))
}

/// Runs an offline command against the methods `services` serve, with
/// stdout and stderr; its result is the exit status.
pub(crate) fn offline(
    services: &Services,
    command: impl FnOnce(&ServedMethods, &mut dyn Write, &mut dyn Write) -> u8,
) -> ExitCode {
    let served = match services.served_methods() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: reading the services' descriptor sets: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    ExitCode::from(command(&served, &mut stdout.lock(), &mut stderr.lock()))
}

/// Runs `cmd` against `served`: reports to `out`, diagnostics (errors and
/// warnings) to `err`. Returns the exit status.
pub fn run(
    cmd: &PolicyCommand,
    served: &ServedMethods,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    match cmd {
        PolicyCommand::Check { file, strict } => check(file, *strict, served, out, err),
        PolicyCommand::Explain(args) => explain(args, served, out, err),
        PolicyCommand::Test { policy, cases } => test(policy, cases, served, out, err),
    }
}

/// Reads and checks the policy, printing its errors and warnings.
fn load(file: &Path, served: &ServedMethods, err: &mut dyn Write) -> Result<(Report, String), u8> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        let _ = writeln!(err, "error: policy file {}: {e}", file.display());
        EXIT_INVALID
    })?;
    let report = check::check_text(&text, Some(served));
    for e in &report.errors {
        let _ = writeln!(err, "error: policy file {}: {e}", file.display());
    }
    for w in &report.warnings {
        let _ = writeln!(err, "warning: policy file {}: {w}", file.display());
    }
    Ok((report, text))
}

/// The valid policy of `report`, or the exit status for an invalid one.
fn valid(report: &Report) -> Result<(&PolicySpec, Policy), u8> {
    report
        .spec
        .as_ref()
        .map(|spec| (spec, Policy::compile(spec)))
        .ok_or(EXIT_INVALID)
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn check(
    file: &Path,
    strict: bool,
    served: &ServedMethods,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let Ok((report, _)) = load(file, served, err) else {
        return EXIT_INVALID;
    };
    let shown = file.display();
    let (errors, warnings) = (report.errors.len(), report.warnings.len());
    let Some(spec) = &report.spec else {
        let _ = writeln!(
            out,
            "{shown}: invalid: {}, {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        );
        return EXIT_INVALID;
    };
    let verdict = if warnings > 0 && strict {
        "refused (--strict)"
    } else {
        "ok"
    };
    let _ = writeln!(
        out,
        "{shown}: {verdict}: policy {:?}, {}, {}, {}; paths checked against {} served methods",
        spec.name,
        plural(spec.deny_rules.len(), "deny rule"),
        plural(spec.allow_rules.len(), "allow rule"),
        plural(warnings, "warning"),
        served.methods().count()
    );
    if warnings > 0 && strict {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

fn explain(
    args: &ExplainArgs,
    served: &ServedMethods,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let Ok((report, _)) = load(&args.file, served, err) else {
        return EXIT_INVALID;
    };
    let Ok((spec, policy)) = valid(&report) else {
        return EXIT_INVALID;
    };
    let peer = match &args.cert {
        Some(cert) => explain::identity_from_cert(cert),
        None => explain::identity_from_principals(&args.principals)
            .map_err(|e| format!("--principal: {e}")),
    };
    let inputs = peer.and_then(|p| {
        Ok((
            p,
            explain::header_map(&args.headers).map_err(|e| format!("--header {e}"))?,
        ))
    });
    let (peer, headers) = match inputs {
        Ok(i) => i,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_INVALID;
        }
    };
    let q = explain::Query {
        peer: &peer,
        method: &args.method,
        headers: &headers,
    };
    let e = q.explain(&policy);
    if args.json {
        let _ = writeln!(out, "{:#}", explain::render_json(&e, spec, &q));
    } else {
        let _ = write!(out, "{}", explain::render_text(&e, spec, &q, served));
    }
    EXIT_OK
}

fn test(
    policy_file: &Path,
    cases: &Path,
    served: &ServedMethods,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let Ok((report, _)) = load(policy_file, served, err) else {
        return EXIT_INVALID;
    };
    let Ok((spec, policy)) = valid(&report) else {
        return EXIT_INVALID;
    };
    match cases::run(&policy, spec, served, cases, out) {
        Ok(true) => EXIT_OK,
        Ok(false) => EXIT_FAILED,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_INVALID
        }
    }
}
