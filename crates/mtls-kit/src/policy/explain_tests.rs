//! `Policy::explain` against `Policy::decide`: always the same decision,
//! and a trace that says why.

use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::*;

/// A small deterministic generator (xorshift), so that failures reproduce
/// without a property-testing dependency.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[(self.next() % from.len() as u64) as usize]
    }
    fn chance(&mut self, in_n: u64) -> bool {
        self.next() % in_n == 0
    }
}

const PRINCIPALS: &[&str] = &[
    "spiffe://example.org/a",
    "spiffe://example.org/*",
    "*/b",
    "*",
    "CN=c",
    "c.internal",
    "",
];
const PATHS: &[&str] = &["/s.S/Get", "/s.S/*", "*/Put", "*", "/t.T/Get", "s.S/Get"];
const HEADER_KEYS: &[&str] = &["x-k", "x-t-bin", "x-other"];
const HEADER_VALUES: &[&str] = &["v*", "*", "AQ", "*1", "v1,v2"];

fn random_rule(g: &mut Gen, name: String) -> Value {
    let mut rule = json!({ "name": name });
    if !g.chance(4) {
        let n = 1 + g.next() % 2;
        let p: Vec<&str> = (0..n).map(|_| *g.pick(PRINCIPALS)).collect();
        rule["source"] = json!({ "principals": p });
    }
    if !g.chance(4) {
        let n = 1 + g.next() % 2;
        let p: Vec<&str> = (0..n).map(|_| *g.pick(PATHS)).collect();
        rule["request"] = json!({ "paths": p });
    }
    if g.chance(3) {
        let h = json!([{ "key": g.pick(HEADER_KEYS), "values": [g.pick(HEADER_VALUES)] }]);
        rule["request"]["headers"] = h;
    }
    rule
}

fn random_policy(g: &mut Gen) -> Value {
    let deny: Vec<Value> = (0..g.next() % 4)
        .map(|i| random_rule(g, format!("d{i}")))
        .collect();
    let allow: Vec<Value> = (0..1 + g.next() % 8)
        .map(|i| random_rule(g, format!("a{i}")))
        .collect();
    let mut doc = json!({ "name": "generated", "allow_rules": allow });
    if !deny.is_empty() {
        doc["deny_rules"] = json!(deny);
    }
    doc
}

fn peers() -> Vec<PeerIdentity> {
    vec![
        PeerIdentity::from_names(&["spiffe://example.org/a"], &[], "CN=a"),
        PeerIdentity::from_names(&["spiffe://example.org/b"], &["c.internal"], ""),
        PeerIdentity::from_names(&[], &[], "CN=c"),
        PeerIdentity::from_names(&[], &[], ""),
    ]
}

fn header_sets() -> Vec<HeaderMap> {
    let mut sets = vec![HeaderMap::new()];
    for pairs in [
        &[("x-k", "v1")][..],
        &[("x-k", "v1"), ("x-k", "v2")],
        &[("x-t-bin", "AQ")],
        // Not base64: a rule that inspects it cannot be evaluated.
        &[("x-t-bin", "!!"), ("x-k", "w1")],
    ] {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        sets.push(h);
    }
    sets
}

#[test]
fn explain_decides_exactly_as_decide_does() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let peers = peers();
    let header_sets = header_sets();
    let mut checked = 0;
    let mut kinds = std::collections::HashSet::new();
    for _ in 0..300 {
        let doc = random_policy(&mut g);
        let policy = Policy::from_json(&doc.to_string()).unwrap();
        for peer in &peers {
            for path in ["/s.S/Get", "/s.S/Put", "/t.T/Get", "/u.U/X"] {
                for headers in &header_sets {
                    let req = RpcRequest { path, headers };
                    let decided = policy.decide(peer, &req);
                    let explained = policy.explain(peer, &req);
                    assert_eq!(
                        explained.decision, decided,
                        "{doc}\n{peer} {path} {headers:?}"
                    );
                    // The trace ends where the decision was made.
                    let last = explained.rules.last();
                    match decided.rule() {
                        Some(rule) => {
                            let last = last.unwrap();
                            assert_eq!((last.name, &last.outcome), (rule, &RuleOutcome::Matched));
                        }
                        None if decided == Decision::DenyMalformed => assert!(matches!(
                            last.map(|t| &t.outcome),
                            Some(RuleOutcome::Malformed { .. })
                        )),
                        None => assert!(explained
                            .rules
                            .iter()
                            .all(|t| matches!(t.outcome, RuleOutcome::Missed(_)))),
                    }
                    kinds.insert(match decided {
                        Decision::Allow { .. } => "allow",
                        Decision::DenyByRule { .. } => "deny rule",
                        Decision::DenyNoMatch => "no match",
                        Decision::DenyMalformed => "malformed",
                    });
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 300 * 4 * 4 * 5);
    assert_eq!(
        kinds.len(),
        4,
        "the generator reaches every kind of decision"
    );
}

#[test]
fn explain_names_each_condition_a_rule_missed() {
    let p = Policy::from_json(
        &json!({"name": "p",
            "deny_rules": [{"name": "no-canary", "request": {"headers": [{"key": "x-canary", "values": ["*"]}]}}],
            "allow_rules": [
                {"name": "readers", "source": {"principals": ["spiffe://example.org/reader"]},
                 "request": {"paths": ["/s.S/Get"], "headers": [{"key": "x-env", "values": ["prod"]}, {"key": "x-team", "values": ["a"]}]}},
                {"name": "writers", "source": {"principals": ["spiffe://example.org/writer"]}}
            ]})
        .to_string(),
    )
    .unwrap();
    let writer = PeerIdentity::from_names(&["spiffe://example.org/writer"], &[], "");
    let mut headers = HeaderMap::new();
    headers.insert("x-env", HeaderValue::from_static("dev"));
    let e = p.explain(
        &writer,
        &RpcRequest {
            path: "/s.S/Put",
            headers: &headers,
        },
    );
    assert_eq!(e.decision, Decision::Allow { rule: "writers" });
    let outcomes: Vec<_> = e
        .rules
        .iter()
        .map(|t| (t.list, t.name, t.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (
                RuleList::Deny,
                "no-canary",
                RuleOutcome::Missed(vec![Miss::HeaderAbsent { index: 0 }])
            ),
            (
                RuleList::Allow,
                "readers",
                RuleOutcome::Missed(vec![
                    Miss::Path,
                    Miss::Principals,
                    Miss::HeaderValue { index: 0 },
                    Miss::HeaderAbsent { index: 1 },
                ])
            ),
            (RuleList::Allow, "writers", RuleOutcome::Matched),
        ]
    );
}
