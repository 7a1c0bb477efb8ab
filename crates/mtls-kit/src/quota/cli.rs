//! `limits check FILE`: validates a limits file offline, as the server
//! would load it (its exact method paths against the methods this server
//! serves), and prints what it sets. Exit status: 0 valid, 2 invalid.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::file::{self, LimitsConfig};
use crate::policy::ServedMethods;
use crate::policy_cli::{EXIT_INVALID, EXIT_OK};
use crate::server::Services;

/// The `limits` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum LimitsCommand {
    /// Validate a limits file against the methods this server serves and
    /// print what it sets. Every error is printed with its field, line and
    /// column. Exit status: 0 valid, 2 invalid.
    Check {
        /// The limits file (JSON).
        file: PathBuf,
    },
}

/// Runs `cmd` for a server serving `services`.
pub fn main(cmd: &LimitsCommand, services: &Services) -> ExitCode {
    crate::policy_cli::offline(services, |served, out, err| run(cmd, served, out, err))
}

/// Runs `cmd` against `served`; returns the exit status.
pub fn run(
    cmd: &LimitsCommand,
    served: &ServedMethods,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let LimitsCommand::Check { file } = cmd;
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "error: limits file {}: {e}", file.display());
            return EXIT_INVALID;
        }
    };
    match file::parse(&text, Some(served)) {
        Ok(config) => {
            let _ = writeln!(out, "limits file {}: ok", file.display());
            let _ = write!(out, "{}", summary(&config));
            EXIT_OK
        }
        Err(errors) => {
            for e in &errors {
                let _ = writeln!(err, "error: limits file {}: {e}", file.display());
            }
            EXIT_INVALID
        }
    }
}

/// What a configuration sets, one line each, most specific entry first.
pub fn summary(config: &LimitsConfig) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let fair = &config.fair_share;
    if fair.enabled {
        let _ = writeln!(
            s,
            "  fair share: {} calls at once per identity, waiting at most {} ms",
            fair.max_in_flight_per_identity,
            fair.max_wait.as_millis()
        );
    } else {
        let _ = writeln!(s, "  fair share: off");
    }
    let allowance = |a: &file::Allowance| {
        let mut parts = Vec::new();
        if let Some(r) = a.rate {
            parts.push(format!("{}/s, burst {}", r.per_second, r.burst));
        }
        if let Some(n) = a.max_in_flight {
            parts.push(format!("{n} in flight"));
        }
        parts.join(", ")
    };
    if config.total != file::Allowance::default() {
        let _ = writeln!(s, "  total: {}", allowance(&config.total));
    }
    for e in &config.entries {
        let _ = writeln!(
            s,
            "  limit {:?}: principal {:?}, method {:?}: {} per identity",
            e.name,
            e.principal,
            e.method.as_deref().unwrap_or("*"),
            allowance(&e.allowance)
        );
    }
    let _ = writeln!(
        s,
        "  pushback {} ms; dry run {}; at most {} identities tracked per rate",
        config.pushback.as_millis(),
        if config.dry_run { "on" } else { "off" },
        config.max_tracked_identities
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(text: &str) -> (u8, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.json");
        std::fs::write(&path, text).unwrap();
        let mut served = ServedMethods::new();
        served.add_method("/s.S/Put");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            &LimitsCommand::Check { file: path },
            &served,
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn a_valid_file_is_summarised() {
        let (code, out, err) = run_on(
            r#"{"total": {"max_in_flight": 100},
                "limits": [{"name": "w", "principal": "*", "method": "/s.S/Put", "rate": {"per_second": 5, "burst": 10}}]}"#,
        );
        assert_eq!((code, err.as_str()), (EXIT_OK, ""));
        assert!(out.contains("total: 100 in flight"), "{out}");
        assert!(
            out.contains(
                r#"limit "w": principal "*", method "/s.S/Put": 5/s, burst 10 per identity"#
            ),
            "{out}"
        );
    }

    #[test]
    fn an_invalid_file_prints_every_error_and_exits_2() {
        let (code, out, err) = run_on(
            r#"{"limits": [{"name": "w", "principal": "*", "method": "/s.S/Pot", "max_in_flight": 0}]}"#,
        );
        assert_eq!(code, EXIT_INVALID);
        assert_eq!(out, "");
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(
            err.contains("limits[0].method") && err.contains("limits[0].max_in_flight"),
            "{err}"
        );
    }
}
