//! Decision cost of the compiled policy, against a plain scan of the same
//! rules measured side by side (machines here are noisy; compare ratios).
//!
//!     cargo bench --bench policy
//!
//! Shapes: the shipped 6-rule policy; 100,000 rules keyed by identity; and
//! 100,000 rules keyed by method path. For each, an allowed request and a
//! denied one (no rule matches, the worst case for a scan).

use std::hint::black_box;
use std::time::{Duration, Instant};

use http::HeaderMap;
use mtls_kit::identity::PeerIdentity;
use mtls_kit::policy::file::{self, PolicySpec, RuleSpec};
use mtls_kit::policy::pattern::Pattern;
use mtls_kit::policy::{Policy, RpcRequest};
use serde_json::json;

/// The baseline: every rule, in order, with patterns compiled up front.
struct Scan {
    deny: Vec<ScanRule>,
    allow: Vec<ScanRule>,
}

struct ScanRule {
    principals: Vec<Pattern>,
    paths: Vec<Pattern>,
}

impl Scan {
    fn new(spec: &PolicySpec) -> Self {
        let compile = |rules: &[RuleSpec]| {
            rules
                .iter()
                .map(|r| ScanRule {
                    principals: r.principals.iter().map(|p| Pattern::parse(p)).collect(),
                    paths: r.paths.iter().map(|p| Pattern::parse(p)).collect(),
                })
                .collect()
        };
        Self {
            deny: compile(&spec.deny_rules),
            allow: compile(&spec.allow_rules),
        }
    }

    fn allowed(&self, peer: &PeerIdentity, path: &str) -> bool {
        let matches = |r: &ScanRule| {
            (r.principals.is_empty()
                || r.principals
                    .iter()
                    .any(|p| peer.principal_names().any(|n| p.matches(n.as_bytes()))))
                && (r.paths.is_empty() || r.paths.iter().any(|p| p.matches(path.as_bytes())))
        };
        !self.deny.iter().any(matches) && self.allow.iter().any(matches)
    }
}

/// Median nanoseconds per call of `f` over a few batches.
fn time(mut f: impl FnMut() -> bool) -> f64 {
    let mut batch = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(f());
        }
        if start.elapsed() > Duration::from_millis(50) {
            break;
        }
        batch *= 2;
    }
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                black_box(f());
            }
            start.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn peer(name: &str) -> PeerIdentity {
    PeerIdentity::from_names(
        &[&format!("spiffe://example.org/{name}")],
        &[&format!("{name}.internal")],
        &format!("CN={name},O=Example"),
    )
}

fn main() {
    let headers = HeaderMap::new();
    let shipped = include_str!("../tests/it/policy.json").to_owned();
    let by_identity = json!({"name": "by-identity", "allow_rules": (0..100_000).map(|i| json!({
        "name": format!("svc-{i}"),
        "source": {"principals": [format!("spiffe://example.org/svc-{i}")]},
        "request": {"paths": ["/svc.v1.Svc/Get", "/svc.v1.Svc/List"]}
    })).collect::<Vec<_>>()})
    .to_string();
    let by_path = json!({"name": "by-path", "allow_rules": (0..100_000).map(|i| json!({
        "name": format!("m-{i}"),
        "source": {"principals": ["spiffe://example.org/*"]},
        "request": {"paths": [format!("/svc{}.v1.Service/Method{}", i / 10, i % 10)]}
    })).collect::<Vec<_>>()})
    .to_string();

    let cases: Vec<(&str, &str, PeerIdentity, &str)> = vec![
        (
            "6 rules, allowed",
            &shipped,
            peer("reader"),
            "/kittest.v1.Store/Get",
        ),
        (
            "6 rules, denied",
            &shipped,
            peer("reader"),
            "/kittest.v1.Store/Clear",
        ),
        (
            "100k by identity, allowed",
            &by_identity,
            peer("svc-73519"),
            "/svc.v1.Svc/Get",
        ),
        (
            "100k by identity, denied",
            &by_identity,
            peer("intruder"),
            "/svc.v1.Svc/Get",
        ),
        (
            "100k by path, allowed",
            &by_path,
            peer("api"),
            "/svc4242.v1.Service/Method7",
        ),
        (
            "100k by path, denied",
            &by_path,
            peer("api"),
            "/svc4242.v1.Service/Method77",
        ),
    ];

    println!(
        "{:<28} {:>12} {:>14} {:>10}",
        "case", "indexed ns", "scan ns", "scan/idx"
    );
    let mut compiled: Vec<(String, Policy, Scan)> = Vec::new();
    for (label, doc, who, path) in &cases {
        if !compiled.iter().any(|(d, _, _)| d == doc) {
            let spec = file::parse(doc).expect("bench policy");
            compiled.push((doc.to_string(), Policy::compile(&spec), Scan::new(&spec)));
        }
        let (_, policy, scan) = compiled.iter().find(|(d, _, _)| d == doc).unwrap();
        let request = RpcRequest {
            path,
            headers: &headers,
        };
        let expected = policy.decide(who, &request).is_allowed();
        assert_eq!(
            expected,
            scan.allowed(who, path),
            "{label}: index and scan disagree"
        );
        assert_eq!(expected, label.ends_with("allowed"), "{label}");
        let indexed = time(|| policy.decide(who, &request).is_allowed());
        let scanned = time(|| scan.allowed(who, path));
        println!(
            "{label:<28} {indexed:>12.0} {scanned:>14.0} {:>9.1}x",
            scanned / indexed
        );
    }
}
