//! The policy engine against A43 semantics, as gRPC's implementations apply
//! them (see the field notes in docs/policy.md, "The format").

use http::{HeaderMap, HeaderValue};
use serde_json::json;

use super::*;

fn policy(v: serde_json::Value) -> Policy {
    Policy::from_json(&v.to_string()).unwrap()
}

fn err(v: serde_json::Value) -> PolicyError {
    Policy::from_json(&v.to_string()).unwrap_err()
}

fn field_of(e: &PolicyError) -> &str {
    match e {
        PolicyError::Invalid { field, .. } => field,
    }
}

fn spiffe(name: &str) -> PeerIdentity {
    PeerIdentity::from_names(
        &[&format!("spiffe://example.org/{name}")],
        &[],
        &format!("CN={name}"),
    )
}

fn decide<'p>(p: &'p Policy, peer: &PeerIdentity, path: &str, headers: &HeaderMap) -> Decision<'p> {
    p.decide(peer, &RpcRequest { path, headers })
}

fn no_headers() -> HeaderMap {
    HeaderMap::new()
}

#[test]
fn deny_rules_win_over_allow_rules() {
    let p = policy(json!({
        "name": "p",
        "deny_rules": [{"name": "no-admins-purge", "source": {"principals": ["spiffe://example.org/admin"]},
                        "request": {"paths": ["/svc/Purge"]}}],
        "allow_rules": [{"name": "admins", "source": {"principals": ["spiffe://example.org/admin"]}}]
    }));
    let admin = spiffe("admin");
    assert_eq!(
        decide(&p, &admin, "/svc/Purge", &no_headers()),
        Decision::DenyByRule {
            rule: "no-admins-purge"
        }
    );
    assert_eq!(
        decide(&p, &admin, "/svc/Get", &no_headers()),
        Decision::Allow { rule: "admins" }
    );
}

#[test]
fn unmatched_requests_are_denied() {
    let p = policy(json!({"name": "p", "allow_rules": [
        {"name": "r", "source": {"principals": ["spiffe://example.org/reader"]}, "request": {"paths": ["/svc/Get"]}}
    ]}));
    assert_eq!(
        decide(&p, &spiffe("writer"), "/svc/Get", &no_headers()),
        Decision::DenyNoMatch
    );
    assert_eq!(
        decide(&p, &spiffe("reader"), "/svc/Put", &no_headers()),
        Decision::DenyNoMatch
    );
    assert!(decide(&p, &spiffe("reader"), "/svc/Get", &no_headers()).is_allowed());
}

#[test]
fn a_rule_without_source_or_request_matches_everything() {
    let p = policy(json!({"name": "p", "allow_rules": [{"name": "all"}]}));
    let nobody = PeerIdentity::from_names(&[], &[], "");
    assert_eq!(
        decide(&p, &nobody, "/x/y", &no_headers()),
        Decision::Allow { rule: "all" }
    );
    // Empty lists behave as if absent.
    let p = policy(json!({"name": "p", "allow_rules": [
        {"name": "all", "source": {"principals": []}, "request": {"paths": [], "headers": []}}
    ]}));
    assert!(decide(&p, &nobody, "/x/y", &no_headers()).is_allowed());
}

#[test]
fn principals_match_uri_then_dns_then_subject() {
    let peer = PeerIdentity::from_names(
        &["spiffe://example.org/svc"],
        &["svc.internal", "alt.internal"],
        "CN=svc,O=Example",
    );
    for (pattern, expected) in [
        ("spiffe://example.org/svc", true),
        ("alt.internal", true),
        // A SAN that exists but does not match does not stop the Subject
        // from being tried.
        ("CN=svc,O=Example", true),
        ("svc", false),
        ("spiffe://example.org/SVC", false),
    ] {
        let p = policy(json!({"name": "p", "allow_rules": [
            {"name": "r", "source": {"principals": [pattern]}}
        ]}));
        assert_eq!(
            decide(&p, &peer, "/a/b", &no_headers()).is_allowed(),
            expected,
            "pattern {pattern}"
        );
    }
}

#[test]
fn principal_match_kinds() {
    let peer = PeerIdentity::from_names(&["spiffe://example.org/ns/prod/sa/api"], &[], "CN=api");
    let cases = [
        ("spiffe://example.org/ns/prod/sa/api", true),
        ("spiffe://example.org/ns/prod/*", true),
        ("spiffe://example.org/ns/dev/*", false),
        ("*/sa/api", true),
        ("*/sa/web", false),
        ("*", true),
        ("spiffe://example.org/ns/*/sa/api", false),
    ];
    for (pattern, expected) in cases {
        let p = policy(
            json!({"name": "p", "allow_rules": [{"name": "r", "source": {"principals": [pattern]}}]}),
        );
        assert_eq!(
            decide(&p, &peer, "/a/b", &no_headers()).is_allowed(),
            expected,
            "{pattern}"
        );
    }
    // "*" needs a non-empty name: a certificate with no SANs and an empty
    // subject has none.
    let anonymous = PeerIdentity::from_names(&[], &[], "");
    let p = policy(
        json!({"name": "p", "allow_rules": [{"name": "r", "source": {"principals": ["*"]}}]}),
    );
    assert!(!decide(&p, &anonymous, "/a/b", &no_headers()).is_allowed());
}

#[test]
fn path_match_kinds() {
    let peer = spiffe("x");
    let cases = [
        ("/svc.v1.Svc/Get", "/svc.v1.Svc/Get", true),
        ("/svc.v1.Svc/Get", "/svc.v1.Svc/Put", false),
        ("/svc.v1.Svc/*", "/svc.v1.Svc/Put", true),
        ("/svc.v1.Svc/*", "/grpc.health.v1.Health/Check", false),
        ("*/Check", "/grpc.health.v1.Health/Check", true),
        ("*", "/anything/At", true),
    ];
    for (pattern, path, expected) in cases {
        let p = policy(
            json!({"name": "p", "allow_rules": [{"name": "r", "request": {"paths": [pattern]}}]}),
        );
        assert_eq!(
            decide(&p, &peer, path, &no_headers()).is_allowed(),
            expected,
            "{pattern} vs {path}"
        );
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn header_policy(key: &str, values: &[&str]) -> Policy {
    policy(json!({"name": "p", "allow_rules": [
        {"name": "r", "request": {"headers": [{"key": key, "values": values}]}}
    ]}))
}

#[test]
fn header_match_kinds() {
    let peer = spiffe("x");
    // (policy values, metadata sent, allowed?)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], bool);
    let cases: &[Case<'_>] = &[
        (&["v1"], &[("x-env", "v1")], true),
        (&["v1"], &[("x-env", "v2")], false),
        (&["prod-*"], &[("x-env", "prod-eu")], true),
        (&["*-eu"], &[("x-env", "prod-eu")], true),
        (&["*-us"], &[("x-env", "prod-eu")], false),
        // Presence: any non-empty value...
        (&["*"], &[("x-env", "anything")], true),
        (&["*"], &[("x-env", "")], false),
        // ...and an absent header matches nothing, not even "*".
        (&["*"], &[("x-other", "v1")], false),
        (&["v1"], &[], false),
        // Values are "any of".
        (&["a", "b"], &[("x-env", "b")], true),
        // Repeated metadata is joined with "," in arrival order.
        (&["a,b"], &[("x-env", "a"), ("x-env", "b")], true),
        (&["b,a"], &[("x-env", "a"), ("x-env", "b")], false),
        (&["a"], &[("x-env", "a"), ("x-env", "b")], false),
    ];
    for (values, sent, expected) in cases {
        let p = header_policy("x-env", values);
        assert_eq!(
            decide(&p, &peer, "/a/b", &headers(sent)).is_allowed(),
            *expected,
            "values {values:?} vs {sent:?}"
        );
    }
}

#[test]
fn every_header_entry_must_match_and_keys_are_case_insensitive() {
    let p = policy(
        json!({"name": "p", "allow_rules": [{"name": "r", "request": {"headers": [
            {"key": "X-Env", "values": ["prod"]},
            {"key": "x-team", "values": ["payments"]}
        ]}}]}),
    );
    let peer = spiffe("x");
    let both = headers(&[("x-env", "prod"), ("x-team", "payments")]);
    let one = headers(&[("x-env", "prod")]);
    assert!(decide(&p, &peer, "/a/b", &both).is_allowed());
    assert!(!decide(&p, &peer, "/a/b", &one).is_allowed());
}

#[test]
fn binary_metadata_matches_decoded_bytes() {
    let p = header_policy("x-trace-bin", &["hello", "hi,there"]);
    let peer = spiffe("x");
    // "hello" padded and unpadded.
    assert!(decide(&p, &peer, "/a/b", &headers(&[("x-trace-bin", "aGVsbG8=")])).is_allowed());
    assert!(decide(&p, &peer, "/a/b", &headers(&[("x-trace-bin", "aGVsbG8")])).is_allowed());
    // Repeated: decoded values joined with ",".
    assert!(decide(
        &p,
        &peer,
        "/a/b",
        &headers(&[("x-trace-bin", "aGk"), ("x-trace-bin", "dGhlcmU")])
    )
    .is_allowed());
    assert!(!decide(&p, &peer, "/a/b", &headers(&[("x-trace-bin", "aGVsbG8h")])).is_allowed());
    // Not base64: denied outright, whatever the rule says.
    assert_eq!(
        decide(&p, &peer, "/a/b", &headers(&[("x-trace-bin", "***")])),
        Decision::DenyMalformed
    );
}

#[test]
fn malformed_binary_metadata_cannot_dodge_a_deny_rule() {
    let p = policy(json!({"name": "p",
        "deny_rules": [{"name": "blocked", "request": {"headers": [{"key": "x-block-bin", "values": ["*"]}]}}],
        "allow_rules": [{"name": "all"}]}));
    let peer = spiffe("x");
    assert_eq!(
        decide(&p, &peer, "/a/b", &headers(&[("x-block-bin", "!!")])),
        Decision::DenyMalformed
    );
    assert_eq!(
        decide(&p, &peer, "/a/b", &headers(&[("x-block-bin", "AQ")])),
        Decision::DenyByRule { rule: "blocked" }
    );
    assert!(decide(&p, &peer, "/a/b", &no_headers()).is_allowed());
}

#[test]
fn source_and_request_must_both_match() {
    let p = policy(json!({"name": "p", "allow_rules": [{"name": "r",
        "source": {"principals": ["spiffe://example.org/writer"]},
        "request": {"paths": ["/svc/Put"], "headers": [{"key": "x-env", "values": ["prod"]}]}}]}));
    let prod = headers(&[("x-env", "prod")]);
    assert!(decide(&p, &spiffe("writer"), "/svc/Put", &prod).is_allowed());
    assert!(!decide(&p, &spiffe("reader"), "/svc/Put", &prod).is_allowed());
    assert!(!decide(&p, &spiffe("writer"), "/svc/Get", &prod).is_allowed());
    assert!(!decide(&p, &spiffe("writer"), "/svc/Put", &no_headers()).is_allowed());
}

#[test]
fn the_first_matching_rule_in_policy_order_is_reported() {
    let p = policy(json!({"name": "p", "allow_rules": [
        {"name": "narrow", "source": {"principals": ["spiffe://example.org/a"]}, "request": {"paths": ["/s/M"]}},
        {"name": "by-path", "request": {"paths": ["/s/*"]}},
        {"name": "everything"}
    ]}));
    assert_eq!(
        decide(&p, &spiffe("a"), "/s/M", &no_headers()).rule(),
        Some("narrow")
    );
    assert_eq!(
        decide(&p, &spiffe("b"), "/s/M", &no_headers()).rule(),
        Some("by-path")
    );
    assert_eq!(
        decide(&p, &spiffe("b"), "/t/M", &no_headers()).rule(),
        Some("everything")
    );
}

/// The index must decide exactly as a plain scan of every rule would. This
/// builds a policy of many overlapping rules and compares both on many
/// requests.
#[test]
fn indexed_decisions_equal_a_linear_scan() {
    let principals = [
        "spiffe://example.org/a",
        "spiffe://example.org/b",
        "spiffe://example.org/*",
        "*/c",
        "*",
        "CN=d",
    ];
    let paths = ["/s.S/Get", "/s.S/*", "*/Put", "*", "/t.T/Get"];
    let mut rules = Vec::new();
    let mut n = 0;
    for (i, pr) in principals.iter().enumerate() {
        for (j, pa) in paths.iter().enumerate() {
            n += 1;
            let mut rule = json!({"name": format!("r{n}")});
            if (i + j) % 4 != 0 {
                rule["source"] = json!({"principals": [pr]});
            }
            if (i * j) % 3 != 1 {
                rule["request"] = json!({"paths": [pa]});
            }
            if n % 7 == 0 {
                rule["request"]["headers"] = json!([{"key": "x-k", "values": ["v*"]}]);
            }
            rules.push(rule);
        }
    }
    let deny: Vec<_> = rules
        .iter()
        .step_by(5)
        .cloned()
        .map(|mut r| {
            r["name"] = json!(format!("d-{}", r["name"].as_str().unwrap()));
            r["source"] = json!({"principals": ["spiffe://example.org/b"]});
            r
        })
        .collect();
    let doc = json!({"name": "p", "deny_rules": deny, "allow_rules": rules});
    let p = policy(doc.clone());
    let spec = file::parse(&doc.to_string()).unwrap();

    let naive = |rules: &[file::RuleSpec],
                 peer: &PeerIdentity,
                 path: &str,
                 h: &HeaderMap|
     -> Option<String> {
        rules
            .iter()
            .find(|r| {
                let pm = r.principals.is_empty()
                    || r.principals.iter().any(|p| {
                        peer.principal_names()
                            .any(|n| pattern::Pattern::parse(p).matches(n.as_bytes()))
                    });
                let pa = r.paths.is_empty()
                    || r.paths
                        .iter()
                        .any(|p| pattern::Pattern::parse(p).matches(path.as_bytes()));
                let hm = r.headers.iter().all(|hs| {
                    h.get(hs.key.as_str()).is_some_and(|v| {
                        hs.values
                            .iter()
                            .any(|p| pattern::Pattern::parse(p).matches(v.as_bytes()))
                    })
                });
                pm && pa && hm
            })
            .map(|r| r.name.clone())
    };

    let peers = [
        spiffe("a"),
        spiffe("b"),
        spiffe("c"),
        PeerIdentity::from_names(&[], &["d.internal"], "CN=d"),
        PeerIdentity::from_names(&[], &[], ""),
    ];
    let request_paths = ["/s.S/Get", "/s.S/Put", "/t.T/Get", "/u.U/Other", ""];
    let header_sets = [
        no_headers(),
        headers(&[("x-k", "v1")]),
        headers(&[("x-k", "w")]),
    ];
    let mut checked = 0;
    for peer in &peers {
        for path in request_paths {
            for h in &header_sets {
                let expected = match naive(&spec.deny_rules, peer, path, h) {
                    Some(rule) => format!("deny:{rule}"),
                    None => match naive(&spec.allow_rules, peer, path, h) {
                        Some(rule) => format!("allow:{rule}"),
                        None => "deny".to_owned(),
                    },
                };
                let got = match decide(&p, peer, path, h) {
                    Decision::DenyByRule { rule } => format!("deny:{rule}"),
                    Decision::Allow { rule } => format!("allow:{rule}"),
                    Decision::DenyNoMatch => "deny".to_owned(),
                    Decision::DenyMalformed => "malformed".to_owned(),
                };
                assert_eq!(got, expected, "peer {peer} path {path:?} headers {h:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        peers.len() * request_paths.len() * header_sets.len()
    );
}

#[test]
fn large_policies_decide_like_small_ones() {
    // 20,000 per-identity rules plus one catch-all path rule at the end.
    let mut rules: Vec<_> = (0..20_000)
        .map(|i| {
            json!({"name": format!("svc-{i}"),
            "source": {"principals": [format!("spiffe://example.org/svc-{i}")]},
            "request": {"paths": [format!("/s.S/M{}", i % 10)]}})
        })
        .collect();
    rules.push(json!({"name": "health", "request": {"paths": ["/grpc.health.v1.Health/*"]}}));
    let p = policy(json!({"name": "big", "allow_rules": rules}));
    assert_eq!(p.rule_counts(), (0, 20_001));
    assert_eq!(
        decide(&p, &spiffe("svc-12345"), "/s.S/M5", &no_headers()),
        Decision::Allow { rule: "svc-12345" }
    );
    assert_eq!(
        decide(&p, &spiffe("svc-12345"), "/s.S/M6", &no_headers()),
        Decision::DenyNoMatch
    );
    assert_eq!(
        decide(
            &p,
            &spiffe("nobody"),
            "/grpc.health.v1.Health/Check",
            &no_headers()
        ),
        Decision::Allow { rule: "health" }
    );
}

#[test]
fn audit_condition_needs_a_logger() {
    let with_logger = policy(json!({"name": "p", "allow_rules": [{"name": "a"}],
        "audit_logging_options": {"audit_condition": "ON_DENY_AND_ALLOW",
            "audit_loggers": [{"name": "stdout_logger", "config": {}, "is_optional": false}]}}));
    assert_eq!(
        with_logger.audit_condition(),
        AuditCondition::ON_DENY_AND_ALLOW
    );
    let without = policy(json!({"name": "p", "allow_rules": [{"name": "a"}],
        "audit_logging_options": {"audit_condition": "ON_DENY"}}));
    assert_eq!(without.audit_condition(), AuditCondition::NONE);
    let optional_unknown = policy(json!({"name": "p", "allow_rules": [{"name": "a"}],
        "audit_logging_options": {"audit_condition": "ON_ALLOW",
            "audit_loggers": [{"name": "custom", "is_optional": true}, {"name": "stdout_logger"}]}}));
    assert_eq!(optional_unknown.audit_condition(), AuditCondition::ON_ALLOW);
}

#[test]
fn invalid_policies_are_refused_with_the_field_named() {
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (json!({"allow_rules": [{"name": "a"}]}), "name", "required"),
        (
            json!({"name": "", "allow_rules": [{"name": "a"}]}),
            "name",
            "required",
        ),
        (json!({"name": "p"}), "allow_rules", "at least one rule"),
        (
            json!({"name": "p", "allow_rules": []}),
            "allow_rules",
            "at least one rule",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a"}], "extra": 1}),
            "extra",
            "unknown field `extra`",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a", "source": {"principal": ["x"]}}]}),
            "allow_rules[0].source.principal",
            "unknown field `principal`",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a", "request": {"path": ["/x"]}}]}),
            "allow_rules[0].request.path",
            "unknown field `path`",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a", "request": {"headers": [{"key": "k", "values": ["v"], "x": 1}]}}]}),
            "allow_rules[0].request.headers[0].x",
            "unknown field `x`",
        ),
        (
            json!({"name": "p", "allow_rules": [{}]}),
            "allow_rules[0].name",
            "required",
        ),
        (
            json!({"name": "p", "deny_rules": [{"name": ""}], "allow_rules": [{"name": "a"}]}),
            "deny_rules[0].name",
            "required",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a"}, {"name": "a"}]}),
            "allow_rules[1].name",
            "duplicate rule name",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a", "request": {"headers": [{"values": ["v"]}]}}]}),
            "allow_rules[0].request.headers[0].key",
            "required",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a", "request": {"headers": [{"key": "k"}]}}]}),
            "allow_rules[0].request.headers[0].values",
            "at least one value",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a", "request": {"headers": [{"key": "k", "values": []}]}}]}),
            "allow_rules[0].request.headers[0].values",
            "at least one value",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a", "request": {"headers": [{"key": "bad key", "values": ["v"]}]}}]}),
            "allow_rules[0].request.headers[0].key",
            "not a valid HTTP/2 header name",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a", "request": {"paths": "/x"}}]}),
            "allow_rules[0].request.paths",
            "invalid type",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a", "source": {"principals": [1]}}]}),
            "allow_rules[0].source.principals[0]",
            "invalid type",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a"}], "audit_logging_options": {"audit_condition": "SOMETIMES"}}),
            "audit_logging_options.audit_condition",
            "unknown variant `SOMETIMES`",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a"}], "audit_logging_options": {"audit_loggers": [{"name": "custom"}]}}),
            "audit_logging_options.audit_loggers[0].name",
            "unknown audit logger",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a"}], "audit_logging_options": {"audit_loggers": [{"is_optional": true}]}}),
            "audit_logging_options.audit_loggers[0].name",
            "required",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a"}], "audit_logging_options": {"audit_loggers": [{"name": "stdout_logger", "config": "x"}]}}),
            "audit_logging_options.audit_loggers[0].config",
            "invalid type",
        ),
        (
            json!({"name": "p", "allow_rules": [{"name": "a"}], "audit_logging_options": {"audit_condition": "ON_DENY", "level": 1}}),
            "audit_logging_options.level",
            "unknown field `level`",
        ),
    ];
    for (doc, field, message) in cases {
        let e = err(doc.clone());
        assert_eq!(field_of(&e), field, "{doc}: {e}");
        assert!(e.to_string().contains(message), "{doc}: {e}");
    }
}

#[test]
fn headers_grpc_refuses_are_refused() {
    for key in [
        ":path",
        ":authority",
        "grpc-timeout",
        "grpc-anything",
        "host",
        "Host",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "Upgrade",
    ] {
        let e = err(
            json!({"name": "p", "allow_rules": [{"name": "a", "request": {"headers": [{"key": key, "values": ["v"]}]}}]}),
        );
        assert_eq!(
            field_of(&e),
            "allow_rules[0].request.headers[0].key",
            "{key}"
        );
        assert!(e.to_string().contains("cannot be matched"), "{key}: {e}");
    }
}

#[test]
fn malformed_json_is_refused_with_a_position() {
    let e = Policy::from_json("{\"name\": \"p\",").unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
    let e = Policy::from_json("[]").unwrap_err();
    assert_eq!(e.to_string(), "(document): a policy must be a JSON object");
}

#[test]
fn loading_a_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let e = Policy::from_file(&missing).unwrap_err().to_string();
    assert!(
        e.contains("missing.json") && e.contains("No such file"),
        "{e}"
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name": "p", "allow_rules": [{"name": "a", "sauce": {}}]}"#,
    )
    .unwrap();
    let e = Policy::from_file(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.json") && e.contains("allow_rules[0]") && e.contains("sauce"),
        "{e}"
    );
}
