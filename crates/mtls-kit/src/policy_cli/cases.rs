//! `policy test`: a table of RPCs and the decision each must get.
//!
//! The case file is JSON:
//!
//! ```json
//! {
//!   "cases": [
//!     { "name": "readers read",
//!       "principals": ["spiffe://example.org/reader"],
//!       "method": "/shop.v1.Catalog/GetItem",
//!       "expect": "allow", "rule": "readers-read" },
//!     { "cert": "../certs/outsider.pem", "method": "/grpc.health.v1.Health/Check",
//!       "headers": ["x-env: prod"], "expect": "deny" }
//!   ]
//! }
//! ```
//!
//! Each case gives the peer as `principals` (placed as `--principal` does)
//! or `cert` (a PEM file, relative to the case file); `method`; optional
//! `headers` (`key:value`, as `--header`); `expect`, `allow` or `deny`; and
//! optionally `rule`, the rule that must decide (`null`: no rule may match).
//! `name` is optional, for the report.
//!
//! A case whose method the server does not serve fails, with the closest
//! served method: such a case proves nothing (a typo in a deny case would
//! pass, and so would every deny case of a stale file).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::explain::{self, Query};
use crate::identity::PeerIdentity;
use crate::policy::file::PolicySpec;
use crate::policy::{paths, Policy, ServedMethods};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    principals: Option<Vec<String>>,
    #[serde(default)]
    cert: Option<PathBuf>,
    method: String,
    #[serde(default)]
    headers: Vec<String>,
    expect: Expect,
    /// Absent: any rule; `null`: no rule; a name: that rule.
    #[serde(default, deserialize_with = "present")]
    rule: Option<Option<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// Tells an explicit `null` from an absent field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Reads the case file; errors name the file, the field and the position.
fn read(path: &Path) -> Result<CaseFile, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cases file {}: {e}", path.display()))?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let file: CaseFile = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| format!("cases file {}: {}: {}", path.display(), e.path(), e.inner()))?;
    de.end().map_err(|e| {
        format!(
            "cases file {}: unexpected data after the cases: {e}",
            path.display()
        )
    })?;
    Ok(file)
}

/// The peer of `case`, whose relative `cert` is found next to the case file.
fn peer(case: &Case, at: &str, dir: &Path) -> Result<PeerIdentity, String> {
    match (&case.principals, &case.cert) {
        (Some(names), None) => {
            explain::identity_from_principals(names).map_err(|e| format!("{at}.principals: {e}"))
        }
        (None, Some(cert)) => {
            explain::identity_from_cert(&dir.join(cert)).map_err(|e| format!("{at}.cert: {e}"))
        }
        _ => Err(format!("{at}: give exactly one of `principals` and `cert`")),
    }
}

/// ` "name"` for a named case, nothing for one without a name.
fn case_name(case: &Case) -> String {
    case.name
        .as_deref()
        .map(|n| format!(" {n:?}"))
        .unwrap_or_default()
}

/// Runs every case of `cases_path` against `policy`. Prints each failure
/// with its explanation, then `N passed, M failed`. Returns whether all
/// passed, or an error for a case file that cannot be used.
pub fn run(
    policy: &Policy,
    spec: &PolicySpec,
    served: &ServedMethods,
    cases_path: &Path,
    out: &mut dyn Write,
) -> Result<bool, String> {
    let file = read(cases_path)?;
    let dir = cases_path.parent().unwrap_or(Path::new("."));
    let shown = cases_path.display();
    // Read every case before running any, so that a broken file reports
    // all its problems rather than a partial result.
    let mut prepared = Vec::new();
    let mut problems = Vec::new();
    for (i, case) in file.cases.iter().enumerate() {
        let at = format!("cases[{i}]");
        let headers = case
            .headers
            .iter()
            .map(|h| explain::parse_header(h))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|h| explain::header_map(&h))
            .map_err(|e| format!("{at}.headers: {e}"));
        match (peer(case, &at, dir), headers) {
            (Ok(p), Ok(h)) => prepared.push((at, case, p, h)),
            (p, h) => problems.extend(p.err().into_iter().chain(h.err())),
        }
    }
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("cases file {shown}: {p}"))
            .collect();
        return Err(lines.join("\n"));
    }

    let (mut passed, mut failed) = (0, 0);
    for (at, case, peer, headers) in &prepared {
        // A case for a method the server does not serve proves nothing: a
        // typo in a deny case would pass, and so would a stale case file.
        if let Some(why) = paths::unserved_method(&case.method, served) {
            failed += 1;
            let _ = writeln!(out, "FAIL {shown} {at}{}: {why}", case_name(case));
            continue;
        }
        let q = Query {
            peer,
            method: &case.method,
            headers,
        };
        let e = q.explain(policy);
        let got = if e.decision.is_allowed() {
            Expect::Allow
        } else {
            Expect::Deny
        };
        let rule_ok = match &case.rule {
            None => true,
            Some(want) => want.as_deref() == e.decision.rule(),
        };
        if got == case.expect && rule_ok {
            passed += 1;
            continue;
        }
        failed += 1;
        let name = case_name(case);
        let want_rule = match &case.rule {
            Some(Some(r)) => format!(" by rule {r:?}"),
            Some(None) => " with no rule matching".to_owned(),
            None => String::new(),
        };
        let want = match case.expect {
            Expect::Allow => format!("allow{want_rule}"),
            Expect::Deny => format!("deny{want_rule}"),
        };
        let text = explain::render_text(&e, spec, &q, served);
        let _ = writeln!(
            out,
            "FAIL {shown} {at}{name}: expected {want}, got {}",
            explain::decision_text(&e.decision)
        );
        for line in text.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    let _ = writeln!(out, "{passed} passed, {failed} failed");
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, LeafSpec};
    use crate::policy::file;

    const POLICY: &str = r#"{"name": "p",
        "deny_rules": [{"name": "no-canary", "request": {"headers": [{"key": "x-canary", "values": ["*"]}]}}],
        "allow_rules": [{"name": "readers", "source": {"principals": ["spiffe://example.org/reader"]}}]}"#;

    fn run_cases(cases: &str) -> (Result<bool, String>, String) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::new("test CA", 1).unwrap();
        let reader = ca
            .issue(&LeafSpec::dev_client("example.org", "reader"))
            .unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs/reader.pem"), &reader.cert_pem).unwrap();
        let path = dir.path().join("cases.json");
        std::fs::write(&path, cases).unwrap();
        let spec = file::parse(POLICY).unwrap();
        let mut served = ServedMethods::new();
        served.add_method("/a.B/C");
        let mut out = Vec::new();
        let result = run(&Policy::compile(&spec), &spec, &served, &path, &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn certificates_are_found_next_to_the_case_file_and_headers_are_sent() {
        let (result, out) = run_cases(
            r#"{"cases": [
                {"cert": "certs/reader.pem", "method": "/a.B/C", "expect": "allow", "rule": "readers"},
                {"cert": "certs/reader.pem", "method": "/a.B/C", "headers": ["x-canary: 1"],
                 "expect": "deny", "rule": "no-canary"},
                {"principals": ["other.internal"], "method": "/a.B/C", "expect": "deny", "rule": null}
            ]}"#,
        );
        assert_eq!(result, Ok(true), "{out}");
        assert_eq!(out, "3 passed, 0 failed\n");
    }

    #[test]
    fn a_case_for_a_method_that_is_not_served_fails() {
        let (result, out) = run_cases(
            r#"{"cases": [
                {"name": "typo", "principals": ["x"], "method": "/a.B/D", "expect": "deny"},
                {"principals": ["spiffe://example.org/reader"], "method": "/a.B/C", "expect": "allow"}
            ]}"#,
        );
        assert_eq!(result, Ok(false), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].ends_with(
                "cases[0] \"typo\": method \"/a.B/D\" is not served by this server; did you mean \"/a.B/C\"?"
            ),
            "{out}"
        );
        assert_eq!(lines[1], "1 passed, 1 failed");
    }

    #[test]
    fn unusable_cases_are_all_reported_before_any_runs() {
        let (result, out) = run_cases(
            r#"{"cases": [
                {"cert": "certs/nobody.pem", "method": "/a.B/C", "expect": "allow"},
                {"principals": ["x"], "cert": "certs/reader.pem", "method": "/a.B/C", "expect": "allow"},
                {"principals": ["x"], "method": "/a.B/C", "headers": ["novalue"], "expect": "allow"}
            ]}"#,
        );
        let e = result.unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(
            lines[0].contains("cases[0].cert: ") && lines[0].contains("nobody.pem"),
            "{e}"
        );
        assert!(
            lines[1].ends_with("cases[1]: give exactly one of `principals` and `cert`"),
            "{e}"
        );
        assert!(
            lines[2].ends_with("cases[2].headers: \"novalue\" is not key:value"),
            "{e}"
        );
        assert_eq!(out, "");
    }
}
