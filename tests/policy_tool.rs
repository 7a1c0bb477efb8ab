//! `server policy check | explain | test`, run as an operator runs them:
//! offline, from the repository root, against the shipped policy.
//!
//! Nothing here names a method, rule or count of the service's: what a test
//! needs (the rules, their names and order, the cases, the served methods)
//! is read from `config/policy.json`, `config/policy.test.json` and the
//! service's descriptor sets, so these tests hold for any service.

use std::path::Path;
use std::process::{Command, Output};

use mtls_kit::server::Limits;
use serde_json::Value;

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

/// A shipped file under config/, parsed.
fn shipped(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rules(policy: &Value, list: &str) -> Vec<Value> {
    policy[list].as_array().cloned().unwrap_or_default()
}

/// Every method the server serves.
fn served() -> Vec<String> {
    let services = inventory_service::services(&Limits::default());
    let served = services.served_methods().unwrap();
    served.methods().map(str::to_owned).collect()
}

/// A method of the service's own (not health or reflection).
fn service_method() -> String {
    served()
        .into_iter()
        .find(|p| !p.starts_with("/grpc.health.") && !p.starts_with("/grpc.reflection."))
        .expect("the service serves no method of its own")
}

/// `method` with its name in lower case: a typo a policy author makes.
fn miscased(method: &str) -> String {
    let (service, name) = method.rsplit_once('/').unwrap();
    let typo = format!("{service}/{}", name.to_ascii_lowercase());
    assert_ne!(typo, method, "{method}: a method name with no capital?");
    typo
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// The shipped cases, each with its index.
fn cases() -> Vec<(usize, Value)> {
    shipped("policy.test.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .enumerate()
        .collect()
}

/// The first shipped case given by principals that `pick` accepts.
fn case_where(pick: impl Fn(&Value) -> bool) -> Value {
    cases()
        .into_iter()
        .map(|(_, c)| c)
        .find(|c| c["principals"].is_array() && pick(c))
        .expect("config/policy.test.json has no such case")
}

/// `policy explain` of the shipped policy for a case's method and
/// principals, with `extra` arguments.
fn explain(case: &Value, extra: &[&str]) -> Output {
    let mut args = vec!["explain", "config/policy.json", "--method"];
    args.push(case["method"].as_str().unwrap());
    for p in case["principals"].as_array().unwrap() {
        args.extend(["--principal", p.as_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    policy(&args)
}

#[test]
fn check_passes_the_shipped_policy() {
    let out = policy(&["check", "config/policy.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let p = shipped("policy.json");
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "config/policy.json: ok: policy {:?}, {}, {}, 0 warnings; paths checked against {} served methods",
            p["name"].as_str().unwrap(),
            plural(rules(&p, "deny_rules").len(), "deny rule"),
            plural(rules(&p, "allow_rules").len(), "allow rule"),
            served().len()
        )
    );
}

#[test]
fn check_warns_about_a_typo_and_fails_it_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let method = service_method();
    let typo_path = miscased(&method);
    let mut p = shipped("policy.json");
    let at = rules(&p, "allow_rules").len();
    p["allow_rules"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "typo", "request": {"paths": [typo_path]}}));
    let typo = write(dir.path(), "typo.json", &p.to_string());
    let out = policy(&["check", &typo]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "warning: policy file {typo}: allow_rules[{at}].request.paths[0]: rule \"typo\": path {typo_path:?} matches no method this server serves; did you mean {method:?}? (paths are case-sensitive) (line "
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
    let p = shipped("policy.json");
    let (deny_rules, allow_rules) = (rules(&p, "deny_rules"), rules(&p, "allow_rules"));
    // Denied by default: every rule is listed with why it missed.
    let case = case_where(|c| c["expect"] == "deny" && c["rule"].is_null());
    let out = explain(&case, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("decision: deny (no allow rule matched; deny by default)\n"),
        "{text}"
    );
    for (list, rules) in [("deny_rules", &deny_rules), ("allow_rules", &allow_rules)] {
        for (i, rule) in rules.iter().enumerate() {
            let line = format!(
                "  {list}[{i}] {:?}: no match\n",
                rule["name"].as_str().unwrap()
            );
            assert!(text.contains(&line), "{line:?} not in:\n{text}");
        }
    }
    if let Some(id) = case["principals"][0]
        .as_str()
        .filter(|p| p.starts_with("spiffe://"))
    {
        assert!(text.contains(&format!("  SPIFFE ID: {id}\n")), "{text}");
    }

    // Allowed by a rule, as JSON.
    let case = case_where(|c| c["expect"] == "allow" && c["rule"].is_string());
    let json = explain(&case, &["--json"]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["rule"], case["rule"]);
    // Every deny rule, then the allow rules up to the one that decided.
    let decided = allow_rules
        .iter()
        .position(|r| r["name"] == case["rule"])
        .unwrap();
    assert_eq!(
        v["rules"].as_array().unwrap().len(),
        deny_rules.len() + decided + 1,
        "{v}"
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
    let v: Value = serde_json::from_slice(&nobody.stdout).unwrap();
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
    // An allowed case whose principal is a dev identity's SPIFFE ID.
    let td = inventory_service::DEV_IDENTITIES.trust_domain;
    let prefix = format!("spiffe://{td}/");
    let case = case_where(|c| {
        c["expect"] == "allow"
            && c["rule"].is_string()
            && c["principals"][0]
                .as_str()
                .and_then(|p| p.strip_prefix(&prefix))
                .is_some_and(|name| inventory_service::DEV_IDENTITIES.clients.contains(&name))
    });
    let id = case["principals"][0].as_str().unwrap();
    let name = &id[prefix.len()..];
    let cert = format!("certs/{name}.pem");
    let out = policy_in(
        dir.path(),
        &[
            "explain",
            &policy_file,
            "--method",
            case["method"].as_str().unwrap(),
            "--cert",
            &cert,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("  URI SANs:  {id}\n")), "{text}");
    assert!(text.contains(&format!("  subject:   CN={name}")), "{text}");
    assert!(
        text.contains(&format!(
            "decision: allow (allow rule {:?})\n",
            case["rule"].as_str().unwrap()
        )),
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
    for peer in [&["--cert", &cert, "--principal", id][..], &[]] {
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
    assert_eq!(
        stdout(&out).trim(),
        format!("{} passed, 0 failed", cases().len())
    );
}

#[test]
fn test_fails_a_wrong_case_with_its_explanation() {
    let dir = tempfile::tempdir().unwrap();
    // Every shipped case given by principals, with its expectation turned
    // around: each must fail, saying what it expected and what it got.
    let flipped: Vec<(usize, Value)> = cases()
        .into_iter()
        .filter(|(_, c)| c["principals"].is_array())
        .map(|(_, mut c)| {
            let other = if c["expect"] == "allow" {
                "deny"
            } else {
                "allow"
            };
            c["expect"] = other.into();
            c.as_object_mut().unwrap().remove("rule");
            c
        })
        .enumerate()
        .collect();
    let doc = serde_json::json!({"cases": flipped.iter().map(|(_, c)| c).collect::<Vec<_>>()});
    let file = write(dir.path(), "cases.json", &doc.to_string());
    let out = policy(&["test", "config/policy.json", &file]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for (i, case) in &flipped {
        let name = case["name"]
            .as_str()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let line = format!(
            "FAIL {file} cases[{i}]{name}: expected {}, got {}",
            case["expect"].as_str().unwrap(),
            if case["expect"] == "allow" {
                "deny"
            } else {
                "allow"
            }
        );
        assert!(text.contains(&line), "{line:?} not in:\n{text}");
    }
    assert!(text.contains("    decision: "), "{text}");
    assert_eq!(
        text.lines().last(),
        Some(format!("0 passed, {} failed", flipped.len()).as_str())
    );

    // The right decision by the wrong rule fails too.
    let case = case_where(|c| c["expect"] == "allow" && c["rule"].is_string());
    let mut wrong_rule = case.clone();
    wrong_rule["rule"] = "no-such-rule".into();
    let doc = serde_json::json!({"cases": [wrong_rule]});
    let file = write(dir.path(), "rule.json", &doc.to_string());
    let out = policy(&["test", "config/policy.json", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!(
            "expected allow by rule \"no-such-rule\", got allow (allow rule {:?})\n",
            case["rule"].as_str().unwrap()
        )),
        "{}",
        stdout(&out)
    );

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

#[test]
fn test_refuses_a_case_whose_method_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    // A deny case with a typo in its method would pass against the policy
    // alone: the method is checked against what the server serves.
    let case = case_where(|c| c["expect"] == "deny");
    let method = case["method"].as_str().unwrap().to_owned();
    let mut typo = case.clone();
    typo["method"] = miscased(&method).into();
    let doc = serde_json::json!({"cases": [typo, case]});
    let file = write(dir.path(), "typo.json", &doc.to_string());
    let out = policy(&["test", "config/policy.json", &file]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            ": method {:?} is not served by this server; did you mean {method:?}? (paths are case-sensitive)\n",
            miscased(&method)
        )),
        "{text}"
    );
    assert_eq!(text.lines().last(), Some("1 passed, 1 failed"));
}
