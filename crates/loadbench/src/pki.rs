//! The benchmark's credentials and policies, written once per run into a
//! scratch directory: a dev CA, a server certificate for `localhost`, one
//! client identity (`loadgen`), and A43 policies of 10 and (by default)
//! 100,000 rules.

use std::fs;
use std::path::Path;

use anyhow::Context;
use mtls_kit::pki::{write_dev_pki, DevPkiOptions, DevPkiPaths};

pub const CA_CERT: &str = "ca.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const CRL: &str = "crl.pem";
pub const CLIENT_CERT: &str = "loadgen.pem";
pub const CLIENT_KEY: &str = "loadgen.key";
pub const TRUST_DOMAIN: &str = "bench.test";
/// One rule that allows everything.
pub const ALLOW_ALL: &str = "allow-all.json";
/// `rules - 1` rules that never match this client, then the one that does.
pub fn rules_file(rules: usize) -> String {
    format!("rules-{rules}.json")
}

/// The method every benchmark calls.
pub const METHOD: &str = "/grpc.health.v1.Health/Check";

/// The large policy's rule count unless `--big-policy-rules` says otherwise.
pub const BIG_POLICY_RULES: usize = 100_000;

/// Writes the PKI and the policies (10 rules, and `big_rules`) into `dir`.
pub fn write(dir: &Path, big_rules: usize) -> anyhow::Result<()> {
    anyhow::ensure!(big_rules >= 1, "--big-policy-rules must be at least 1");
    let paths = DevPkiPaths::new(dir);
    write_dev_pki(
        &paths,
        &DevPkiOptions {
            trust_domain: TRUST_DOMAIN.to_owned(),
            identities: vec!["loadgen".to_owned()],
            ..DevPkiOptions::default()
        },
    )
    .with_context(|| format!("writing the benchmark PKI into {}", dir.display()))?;
    let allow_all = serde_json::json!({
        "name": "bench-allow-all",
        "allow_rules": [{ "name": "all" }],
    });
    write_json(&dir.join(ALLOW_ALL), &allow_all)?;
    for rules in [10, big_rules] {
        write_json(&dir.join(rules_file(rules)), &policy_of(rules))?;
    }
    Ok(())
}

/// A policy of `rules` allow rules: each of the first `rules - 1` names a
/// principal of its own on a path of its own, so none matches the load
/// generator; the last allows it on [`METHOD`]. What a large deployment's
/// policy looks like (one rule per caller and method), with the matching
/// rule last.
pub fn policy_of(rules: usize) -> serde_json::Value {
    let mut allow: Vec<serde_json::Value> = (1..rules)
        .map(|i| {
            serde_json::json!({
                "name": format!("caller-{i}"),
                "source": { "principals": [format!("spiffe://{TRUST_DOMAIN}/caller-{i}")] },
                "request": { "paths": [format!("/bench.v1.Service{}/Method", i % 1000)] },
            })
        })
        .collect();
    allow.push(serde_json::json!({
        "name": "loadgen",
        "source": { "principals": [format!("spiffe://{TRUST_DOMAIN}/loadgen")] },
        "request": { "paths": [METHOD] },
    }));
    serde_json::json!({ "name": format!("bench-{rules}-rules"), "allow_rules": allow })
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    fs::write(path, serde_json::to_vec(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtls_kit::policy::Policy;

    #[test]
    fn the_pki_and_every_policy_are_written_and_the_policies_parse() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 20).unwrap();
        for file in [ALLOW_ALL.to_owned(), rules_file(10), rules_file(20)] {
            let text = fs::read_to_string(dir.path().join(&file)).unwrap();
            Policy::from_json(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        let big = policy_of(100_000);
        assert_eq!(big["allow_rules"].as_array().unwrap().len(), 100_000);
        for name in [
            CA_CERT,
            SERVER_CERT,
            SERVER_KEY,
            CRL,
            CLIENT_CERT,
            CLIENT_KEY,
        ] {
            assert!(dir.path().join(name).is_file(), "{name} missing");
        }
    }
}
