//! The A43 policy parser and decision function: the input is a policy
//! document (UTF-8; other bytes are rejected before the parser).
//!
//! Invariants: parsing never panics; `Policy::from_json_all` accepts exactly
//! the documents `file::parse` validates, with the same errors, and
//! `from_json` reports the first of them; a parsed policy keeps every rule; on a set of
//! peers and requests built from the policy's own strings (so that rules do
//! match), `Policy::decide` never panics, is deterministic, and gives the
//! answer of a naive rule-by-rule evaluation of the parsed document. The one
//! allowed difference: when binary metadata is malformed, the indexed engine
//! may meet the bad header in another rule first and answer `DenyMalformed`
//! where the naive order reached a matching rule.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use mtls_kit::identity::PeerIdentity;
use mtls_kit::policy::file::{self, PolicySpec, RuleSpec};
use mtls_kit::policy::pattern::Pattern;
use mtls_kit::policy::{Decision, Policy, RpcRequest};

/// Caps on how many strings from the policy become peers, paths and header
/// values, to keep each execution fast.
const MAX_NAMES: usize = 4;

/// gRPC accepts `-bin` metadata with or without base64 padding.
const BIN: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub fn check(data: &[u8]) {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let first = Policy::from_json(json);
    let policy = Policy::from_json_all(json);
    let spec = file::parse(json);
    let (policy, spec) = match (policy, spec) {
        (Ok(p), Ok(s)) => {
            assert!(first.is_ok(), "from_json refused what from_json_all accepted");
            (p, s)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "from_json_all and file::parse give different errors");
            // The one-error form reports the first of them.
            assert_eq!(first.err().as_ref(), a.0.first());
            assert!(!a.0.is_empty(), "an error list is never empty");
            return;
        }
        (p, s) => panic!("from_json_all {:?} but file::parse {:?}", p.is_ok(), s.is_ok()),
    };
    assert_eq!(
        policy.rule_counts(),
        (spec.deny_rules.len(), spec.allow_rules.len())
    );

    let peers = peers(&spec);
    let paths = paths(&spec);
    let header_maps = header_maps(&spec);
    for peer in &peers {
        for path in &paths {
            for (headers, malformed) in &header_maps {
                let req = RpcRequest { path, headers };
                let got = policy.decide(peer, &req);
                assert_eq!(got, policy.decide(peer, &req), "decide is not deterministic");
                let want = reference(&spec, peer, &req);
                let agrees = got == want || (*malformed && got == Decision::DenyMalformed);
                assert!(
                    agrees,
                    "decide({peer:?}, {path:?}, {headers:?}) = {got:?}, naive evaluation says {want:?}"
                );
                if !*malformed {
                    assert_ne!(got, Decision::DenyMalformed);
                }
            }
        }
    }
}

/// Strings that match a policy pattern: the pattern itself, and the pattern
/// with each `*` replaced (so `spiffe://x/*` yields `spiffe://x/z`).
fn instances<'a>(patterns: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out = Vec::new();
    for p in patterns {
        for s in [p.clone(), p.replace('*', "z")] {
            if out.len() < MAX_NAMES && !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

fn all_rules(spec: &PolicySpec) -> impl Iterator<Item = &RuleSpec> {
    spec.deny_rules.iter().chain(&spec.allow_rules)
}

fn peers(spec: &PolicySpec) -> Vec<PeerIdentity> {
    let names = instances(all_rules(spec).flat_map(|r| &r.principals));
    let mut peers = vec![
        PeerIdentity::from_names(&["spiffe://example.org/reader"], &[], "CN=reader"),
        PeerIdentity::from_names(&[], &[], ""),
    ];
    for n in names.iter().map(String::as_str) {
        peers.push(PeerIdentity::from_names(&[n], &[], ""));
        peers.push(PeerIdentity::from_names(&[], &[n], "CN=x"));
        peers.push(PeerIdentity::from_names(&["urn:other"], &[], n));
    }
    peers
}

fn paths(spec: &PolicySpec) -> Vec<String> {
    let mut paths = instances(all_rules(spec).flat_map(|r| &r.paths));
    paths.push("/inventory.v1.Inventory/GetItem".to_owned());
    paths.push(String::new());
    paths
}

/// Header maps built from the policy's header conditions: none at all; one
/// value per key; each value sent twice (so it is joined with `,`); and, if
/// the policy names `-bin` keys, those keys with invalid base64. The flag
/// says whether the map holds malformed binary metadata.
fn header_maps(spec: &PolicySpec) -> Vec<(HeaderMap, bool)> {
    let mut single = HeaderMap::new();
    let mut repeated = HeaderMap::new();
    let mut malformed = HeaderMap::new();
    let mut any_bin = false;
    for h in all_rules(spec).flat_map(|r| &r.headers).take(MAX_NAMES) {
        let Ok(name) = HeaderName::from_bytes(h.key.as_bytes()) else {
            continue;
        };
        let binary = h.key.ends_with("-bin");
        any_bin |= binary;
        for v in instances(h.values.iter()) {
            let encoded = if binary {
                base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
            } else {
                v
            };
            let Ok(value) = HeaderValue::from_str(&encoded) else {
                continue;
            };
            single.insert(name.clone(), value.clone());
            repeated.append(name.clone(), value.clone());
            repeated.append(name.clone(), value);
        }
        if binary {
            malformed.insert(name, HeaderValue::from_static("!not base64!"));
        }
    }
    let mut maps = vec![(HeaderMap::new(), false), (single, false), (repeated, false)];
    if any_bin {
        maps.push((malformed, true));
    }
    maps
}

/// gRFC A43 read literally: deny rules in order, then allow rules in order.
fn reference<'a>(spec: &'a PolicySpec, peer: &PeerIdentity, req: &RpcRequest<'_>) -> Decision<'a> {
    match first_match(&spec.deny_rules, peer, req) {
        Err(()) => return Decision::DenyMalformed,
        Ok(Some(rule)) => return Decision::DenyByRule { rule },
        Ok(None) => {}
    }
    match first_match(&spec.allow_rules, peer, req) {
        Err(()) => Decision::DenyMalformed,
        Ok(Some(rule)) => Decision::Allow { rule },
        Ok(None) => Decision::DenyNoMatch,
    }
}

fn first_match<'a>(
    rules: &'a [RuleSpec],
    peer: &PeerIdentity,
    req: &RpcRequest<'_>,
) -> Result<Option<&'a str>, ()> {
    fn any(patterns: &[String], value: &[u8]) -> bool {
        patterns.iter().any(|p| Pattern::parse(p).matches(value))
    }
    for rule in rules {
        if !rule.paths.is_empty() && !any(&rule.paths, req.path.as_bytes()) {
            continue;
        }
        if !rule.principals.is_empty()
            && !peer
                .principal_names()
                .any(|n| any(&rule.principals, n.as_bytes()))
        {
            continue;
        }
        let mut headers_match = true;
        for h in &rule.headers {
            let values: Vec<&HeaderValue> = req.headers.get_all(h.key.as_str()).iter().collect();
            if values.is_empty() {
                headers_match = false;
                break;
            }
            let mut joined = Vec::new();
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    joined.push(b',');
                }
                if h.key.ends_with("-bin") {
                    joined.extend(BIN.decode(v.as_bytes()).map_err(|_| ())?);
                } else {
                    joined.extend_from_slice(v.as_bytes());
                }
            }
            if !any(&h.values, &joined) {
                headers_match = false;
                break;
            }
        }
        if headers_match {
            return Ok(Some(&rule.name));
        }
    }
    Ok(None)
}
