//! The benchmark's credentials and policies, written once per run into a
//! scratch directory: a dev CA, a server certificate for `localhost`, two
//! client identities (`loadgen`, which every row loads the server as, and
//! `loadgen-b`, the second caller of the fairness row), and A43 policies of
//! 10 and (by default) 100,000 rules.

use std::fs;
use std::path::Path;

use anyhow::Context;
use mtls_kit::pki::{write_dev_pki, DevPkiOptions, DevPkiPaths};

pub const CA_CERT: &str = "ca.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const CRL: &str = "crl.pem";
/// The client identity of every row: `spiffe://bench.test/loadgen`.
pub const LOADGEN: &str = "loadgen";
/// The fairness row's second caller, `spiffe://bench.test/loadgen-b`: the
/// same CA, a certificate and SPIFFE ID of its own, so a server that shares
/// by identity tells it apart from [`LOADGEN`].
pub const LOADGEN_B: &str = "loadgen-b";
/// Every client identity the PKI issues.
pub const CLIENTS: [&str; 2] = [LOADGEN, LOADGEN_B];
pub const TRUST_DOMAIN: &str = "bench.test";
/// One rule that allows everything.
pub const ALLOW_ALL: &str = "allow-all.json";
/// `rules - 1` rules that never match this client, then the one that does.
pub fn rules_file(rules: usize) -> String {
    format!("rules-{rules}.json")
}

/// The certificate file of client identity `name` (`<name>.pem`).
pub fn cert_file(name: &str) -> String {
    format!("{name}.pem")
}

/// The private key file of client identity `name` (`<name>.key`).
pub fn key_file(name: &str) -> String {
    format!("{name}.key")
}

/// The SPIFFE ID the PKI issues to client identity `name`.
pub fn spiffe_id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{name}")
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
            identities: CLIENTS.iter().map(|c| (*c).to_owned()).collect(),
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
/// generator; the last allows it (both [`CLIENTS`], `loadgen` first, so
/// the other rows match on the first principal as before) on [`METHOD`].
/// What a large deployment's policy looks like (one rule per caller and
/// method), with the matching rule last.
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
        "source": { "principals": CLIENTS.map(spiffe_id) },
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
    use http::HeaderMap;
    use mtls_kit::identity::PeerIdentity;
    use mtls_kit::policy::{Policy, RpcRequest};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

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
        for name in [CA_CERT, SERVER_CERT, SERVER_KEY, CRL] {
            assert!(dir.path().join(name).is_file(), "{name} missing");
        }
    }

    /// The identity in `<name>.pem`, as the server's verifier reads it.
    fn identity_in(dir: &Path, name: &str) -> PeerIdentity {
        let path = dir.join(cert_file(name));
        assert!(dir.join(key_file(name)).is_file(), "{name}: no key");
        let cert = CertificateDer::from_pem_file(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        PeerIdentity::from_der(&cert).unwrap()
    }

    #[test]
    fn both_client_identities_are_issued_each_with_its_own_spiffe_id() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 10).unwrap();
        let ids: Vec<String> = CLIENTS
            .iter()
            .map(|name| {
                let id = identity_in(dir.path(), name);
                id.spiffe_id()
                    .unwrap_or_else(|| panic!("{name}: no SPIFFE ID in {:?}", id.uri_sans()))
                    .to_string()
            })
            .collect();
        assert_eq!(ids, CLIENTS.map(spiffe_id));
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn every_benchmark_policy_allows_both_identities_and_only_them() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 50).unwrap();
        let headers = HeaderMap::new();
        let check = RpcRequest {
            path: METHOD,
            headers: &headers,
        };
        let stranger = PeerIdentity::from_names(&[&spiffe_id("stranger")], &[], "CN=stranger");
        for file in [ALLOW_ALL.to_owned(), rules_file(10), rules_file(50)] {
            let policy = Policy::from_file(&dir.path().join(&file)).unwrap();
            for name in CLIENTS {
                let peer = identity_in(dir.path(), name);
                let decision = policy.decide(&peer, &check);
                assert!(decision.is_allowed(), "{file} denies {name}: {decision:?}");
            }
            // The rule policies name their callers: a third one is refused,
            // so the match above is the last rule's, not an accident.
            if file != ALLOW_ALL {
                assert!(!policy.decide(&stranger, &check).is_allowed(), "{file}");
            }
        }
    }
}
