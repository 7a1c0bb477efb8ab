//! `server policy check | explain | test`, run as an operator runs them:
//! offline, from the repository root, against the shipped policy.

use std::path::Path;
use std::process::{Command, Output};

const SERVER: &str = env!("CARGO_BIN_EXE_server");

fn policy(args: &[&str]) -> Output {
    policy_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

fn policy_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(SERVER)
        .current_dir(dir)
        .arg("policy")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

#[test]
fn check_passes_the_shipped_policy() {
    let out = policy(&["check", "config/policy.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert_eq!(
        stdout(&out).trim(),
        "config/policy.json: ok: policy \"inventory-dev\", 1 deny rule, 5 allow rules, 0 warnings; paths checked against 9 served methods"
    );
}

#[test]
fn check_warns_about_a_typo_and_fails_it_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy.json"))
            .unwrap();
    let typo = write(
        dir.path(),
        "typo.json",
        &shipped.replace("Inventory/Purge", "Inventory/Prge"),
    );
    let out = policy(&["check", &typo]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "warning: policy file {typo}: allow_rules[4].request.paths[0]: rule \"admins-administer\": path \"/inventory.v1.Inventory/Prge\" matches no method this server serves; did you mean \"/inventory.v1.Inventory/Purge\"? (line "
        )),
        "{err}"
    );
    assert!(
        stdout(&out).contains(": ok: ") && stdout(&out).contains("1 warning;"),
        "{}",
        stdout(&out)
    );

    let strict = policy(&["check", "--strict", &typo]);
    assert_eq!(strict.status.code(), Some(1));
    assert_eq!(stderr(&strict), err);
    assert!(
        stdout(&strict).contains("refused (--strict)"),
        "{}",
        stdout(&strict)
    );
}

#[test]
fn check_reports_every_error_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.json",
        "{\"name\": \"p\",\n \"allow_rules\": [{\"name\": \"a\", \"source\": []},\n   {\"name\": \"a\"}]} x",
    );
    // Trailing data is a syntax error: reported alone, with its position.
    let out = policy(&["check", &bad]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        format!("error: policy file {bad}: (document): unexpected data after the end of the policy's JSON value (line 3, column 20)")
    );
    assert!(
        stdout(&out).contains("invalid: 1 error, 0 warnings"),
        "{}",
        stdout(&out)
    );

    let bad = write(
        dir.path(),
        "bad.json",
        "{\"name\": \"p\",\n \"allow_rules\": [{\"name\": \"a\", \"source\": []},\n   {\"name\": \"a\"}]}",
    );
    let out = policy(&["check", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            format!("error: policy file {bad}: allow_rules[0].source: invalid type: expected an object, found an array (line 2, column 42)"),
            format!("error: policy file {bad}: allow_rules[1].name: duplicate rule name \"a\" in allow_rules (gRPC would silently keep only the last one) (line 3, column 13)"),
        ]
    );

    let missing = policy(&["check", "no/such.json"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).starts_with("error: policy file no/such.json: No such file"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn explain_shows_the_identity_the_decision_and_each_rules_miss() {
    let out = policy(&[
        "explain",
        "config/policy.json",
        "--method",
        "/inventory.v1.Inventory/PutItem",
        "--principal",
        "spiffe://example.org/reader",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "  SPIFFE ID: spiffe://example.org/reader\n",
        "decision: deny (no allow rule matched; deny by default)\n",
        "  deny_rules[0] \"outsiders-get-nothing\": no match\n      - no name of the peer matches principals [\"spiffe://example.org/outsider\"]\n",
        "  allow_rules[3] \"writers-write\": no match\n      - no name of the peer matches principals [\"spiffe://example.org/writer\", \"spiffe://example.org/admin\"]\n",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }

    let json = policy(&[
        "explain",
        "config/policy.json",
        "--method",
        "/inventory.v1.Inventory/PutItem",
        "--principal",
        "spiffe://example.org/writer",
        "--json",
    ]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["rule"], "writers-write");
    assert_eq!(v["rules"].as_array().unwrap().len(), 5);

    let denied = policy(&[
        "explain",
        "config/policy.json",
        "--method",
        "/grpc.health.v1.Health/Check",
        "--principal",
        "spiffe://example.org/outsider",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(
        (v["decision"].as_str(), v["rule"].as_str()),
        (Some("deny"), Some("outsiders-get-nothing"))
    );
    let nobody = policy(&[
        "explain",
        "config/policy.json",
        "--method",
        "/x.Y/Z",
        "--principal",
        "stranger.example",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&nobody.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert!(v["rule"].is_null());
    assert_eq!(v["identity"]["dns_sans"][0], "stranger.example");
}

#[test]
fn explain_reads_the_identity_from_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Command::new(env!("CARGO_BIN_EXE_certs"))
        .current_dir(dir.path())
        .arg("init")
        .output()
        .unwrap();
    assert!(certs.status.success(), "{}", stderr(&certs));
    let policy_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy.json");
    let policy_file = policy_file.display().to_string();
    let out = policy_in(
        dir.path(),
        &[
            "explain",
            &policy_file,
            "--method",
            "/inventory.v1.Inventory/Purge",
            "--cert",
            "certs/admin.pem",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("  URI SANs:  spiffe://example.org/admin\n"),
        "{text}"
    );
    assert!(text.contains("  subject:   CN=admin"), "{text}");
    assert!(
        text.contains("decision: allow (allow rule \"admins-administer\")\n"),
        "{text}"
    );

    let missing = policy_in(
        dir.path(),
        &[
            "explain",
            &policy_file,
            "--method",
            "/a.B/C",
            "--cert",
            "certs/nobody.pem",
        ],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("certs/nobody.pem: No such file"),
        "{}",
        stderr(&missing)
    );
    // The peer is given one way, and must be given.
    for peer in [
        &[
            "--cert",
            "certs/admin.pem",
            "--principal",
            "spiffe://example.org/admin",
        ][..],
        &[],
    ] {
        let mut args = vec!["explain", policy_file.as_str(), "--method", "/a.B/C"];
        args.extend_from_slice(peer);
        let out = policy_in(dir.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{peer:?}");
        assert!(
            stderr(&out).contains("--cert <CERT>|--principal <NAME>"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn test_runs_the_shipped_cases() {
    let out = policy(&["test", "config/policy.json", "config/policy.test.json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out).trim(), "45 passed, 0 failed");
}

#[test]
fn test_fails_a_wrong_case_with_its_explanation() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write(
        dir.path(),
        "cases.json",
        r#"{"cases": [
            {"name": "readers may purge (wrong)", "principals": ["spiffe://example.org/reader"],
             "method": "/inventory.v1.Inventory/Purge", "expect": "allow"},
            {"principals": ["spiffe://example.org/admin"], "method": "/inventory.v1.Inventory/Purge",
             "expect": "allow", "rule": "writers-write"},
            {"principals": ["spiffe://example.org/admin"], "method": "/inventory.v1.Inventory/Purge", "expect": "allow"}
        ]}"#,
    );
    let out = policy(&["test", "config/policy.json", &cases]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("FAIL {cases} cases[0] \"readers may purge (wrong)\": expected allow, got deny (no allow rule matched; deny by default)\n")),
        "{text}"
    );
    assert!(text.contains("    decision: deny"), "{text}");
    assert!(
        text.contains(&format!("FAIL {cases} cases[1]: expected allow by rule \"writers-write\", got allow (allow rule \"admins-administer\")\n")),
        "{text}"
    );
    assert_eq!(text.lines().last(), Some("1 passed, 2 failed"));

    let broken = write(
        dir.path(),
        "broken.json",
        r#"{"cases": [{"method": "/a.B/C", "expect": "maybe"}]}"#,
    );
    let out = policy(&["test", "config/policy.json", &broken]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!(
            "cases file {broken}: cases[0].expect: unknown variant `maybe`"
        )),
        "{}",
        stderr(&out)
    );
}
