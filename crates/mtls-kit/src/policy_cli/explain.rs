//! `policy explain`: the identity as the server reads it, the decision, and
//! for each rule checked, the conditions it missed. Also the identity and
//! header inputs that `policy test` shares.

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::identity::PeerIdentity;
use crate::policy::file::{PolicySpec, RuleSpec};
use crate::policy::{
    Decision, Explanation, Miss, Policy, RpcRequest, RuleList, RuleOutcome, ServedMethods,
};
use crate::tls;

/// The identity a server would read from the certificate in `path` (the
/// first certificate of the PEM file is the leaf).
pub fn identity_from_cert(path: &Path) -> Result<PeerIdentity, String> {
    let certs = tls::read_certs(path, "certificate").map_err(|e| e.to_string())?;
    PeerIdentity::from_chain(&certs).map_err(|e| format!("{}: {e}", path.display()))
}

/// The identity of a peer whose principal names are exactly `names`. Each
/// name takes the place in a certificate that it most likely comes from:
///
/// * one with a URI scheme (`spiffe://…`, `https://…`: it contains `://`)
///   is a URI SAN;
/// * one with an `=` (`CN=reporting,O=Example`) is the Subject, already in
///   RFC 2253 form; at most one may be given;
/// * anything else is a DNS SAN.
///
/// The placement only changes how the identity is shown: a principal
/// pattern matches a peer if it matches any of its names.
pub fn identity_from_principals(names: &[String]) -> Result<PeerIdentity, String> {
    let (mut uris, mut dns, mut subject) = (Vec::new(), Vec::new(), None);
    for name in names {
        if name.contains("://") {
            uris.push(name.as_str());
        } else if name.contains('=') {
            if let Some(first) = subject.replace(name.as_str()) {
                return Err(format!(
                    "two subjects given ({first:?} and {name:?}); a certificate has one"
                ));
            }
        } else {
            dns.push(name.as_str());
        }
    }
    Ok(PeerIdentity::from_names(&uris, &dns, subject.unwrap_or("")))
}

/// Parses `key:value` into a metadata entry. Keys are case-insensitive;
/// `-bin` values are given base64-encoded, as they travel.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not key:value"))?;
    HeaderName::from_bytes(k.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a valid header name", k.trim()))?;
    HeaderValue::from_str(v.trim_start())
        .map_err(|_| format!("{:?} is not a valid header value", v.trim_start()))?;
    Ok((k.trim().to_ascii_lowercase(), v.trim_start().to_owned()))
}

/// The headers as a request would carry them; a repeated key is repeated
/// metadata (which the policy sees joined with `,`).
pub fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{k:?}: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("{k:?}: {e}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// One RPC to explain.
pub struct Query<'a> {
    /// Who calls, as their certificate would identify them.
    pub peer: &'a PeerIdentity,
    /// The method's path, `/package.Service/Method`.
    pub method: &'a str,
    /// The request's metadata ([`header_map`]).
    pub headers: &'a HeaderMap,
}

impl Query<'_> {
    /// What `policy` decides for this RPC, and why.
    pub fn explain<'p>(&self, policy: &'p Policy) -> Explanation<'p> {
        policy.explain(
            self.peer,
            &RpcRequest {
                path: self.method,
                headers: self.headers,
            },
        )
    }
}

/// The decision in words: `allow (rule "x")`, `deny (no allow rule matched)`.
pub fn decision_text(d: &Decision<'_>) -> String {
    match d {
        Decision::Allow { rule } => format!("allow (allow rule {rule:?})"),
        Decision::DenyByRule { rule } => format!("deny (deny rule {rule:?})"),
        Decision::DenyNoMatch => "deny (no allow rule matched; deny by default)".to_owned(),
        Decision::DenyMalformed => {
            "deny (a rule needed binary metadata that is not valid base64)".to_owned()
        }
    }
}

fn rule_spec(spec: &PolicySpec, list: RuleList, index: usize) -> Option<&RuleSpec> {
    match list {
        RuleList::Deny => spec.deny_rules.get(index),
        RuleList::Allow => spec.allow_rules.get(index),
    }
}

/// One missed condition in words.
fn miss_text(miss: Miss, rule: Option<&RuleSpec>, q: &Query<'_>) -> String {
    let header = |index: usize| rule.and_then(|r| r.headers.get(index));
    match miss {
        Miss::Path => format!(
            "path {:?} matches none of {:?}",
            q.method,
            rule.map(|r| &r.paths[..]).unwrap_or_default()
        ),
        Miss::Principals => format!(
            "no name of the peer matches principals {:?}",
            rule.map(|r| &r.principals[..]).unwrap_or_default()
        ),
        Miss::HeaderAbsent { index } => match header(index) {
            Some(h) => format!(
                "header {:?} is absent (it must match {:?})",
                h.key, h.values
            ),
            None => format!("headers[{index}] is absent"),
        },
        Miss::HeaderValue { index } => match header(index) {
            Some(h) => {
                let got: Vec<&str> = q
                    .headers
                    .get_all(h.key.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                format!(
                    "header {:?} is {:?}, which matches none of {:?}",
                    h.key,
                    got.join(","),
                    h.values
                )
            }
            None => format!("headers[{index}] does not match"),
        },
        Miss::HeaderMalformed { index } => match header(index) {
            Some(h) => format!("header {:?} is not valid base64", h.key),
            None => format!("headers[{index}] is not valid base64"),
        },
    }
}

fn outcome_text(outcome: &RuleOutcome, rule: Option<&RuleSpec>, q: &Query<'_>) -> Vec<String> {
    match outcome {
        RuleOutcome::Matched => vec!["matched".to_owned()],
        RuleOutcome::Missed(misses) => misses.iter().map(|m| miss_text(*m, rule, q)).collect(),
        RuleOutcome::Malformed { header } => {
            vec![miss_text(Miss::HeaderMalformed { index: *header }, rule, q)]
        }
    }
}

fn names_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

/// The explanation for people.
pub fn render_text(
    e: &Explanation<'_>,
    spec: &PolicySpec,
    q: &Query<'_>,
    served: &ServedMethods,
) -> String {
    let mut out = String::new();
    let p = q.peer;
    out.push_str("identity:\n");
    out.push_str(&format!(
        "  SPIFFE ID: {}\n",
        p.spiffe_id().map_or("(none)".to_owned(), |s| s.to_string())
    ));
    out.push_str(&format!("  URI SANs:  {}\n", names_or_none(p.uri_sans())));
    out.push_str(&format!("  DNS SANs:  {}\n", names_or_none(p.dns_sans())));
    let subject = if p.subject().is_empty() {
        "(empty)"
    } else {
        p.subject()
    };
    out.push_str(&format!("  subject:   {subject}\n"));
    let not_served = if served.contains(q.method) || served.in_opaque_service(q.method) {
        ""
    } else {
        " (not a method this server serves)"
    };
    out.push_str(&format!("method:   {}{not_served}\n", q.method));
    let headers: Vec<String> = q
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("(binary)")))
        .collect();
    out.push_str(&format!("headers:  {}\n", names_or_none(&headers)));
    out.push_str(&format!("decision: {}\n", decision_text(&e.decision)));
    out.push_str("rules checked, in order:\n");
    for t in &e.rules {
        let rule = rule_spec(spec, t.list, t.index);
        let lines = outcome_text(&t.outcome, rule, q);
        let verdict = if t.outcome == RuleOutcome::Matched {
            "matched"
        } else {
            "no match"
        };
        out.push_str(&format!(
            "  {}[{}] {:?}: {verdict}\n",
            t.list.field(),
            t.index,
            t.name
        ));
        if t.outcome != RuleOutcome::Matched {
            for l in lines {
                out.push_str(&format!("      - {l}\n"));
            }
        }
    }
    out
}

/// The explanation for machines. `decision` is `"allow"` or `"deny"`;
/// `rule` is the name of the rule that decided, or null.
pub fn render_json(e: &Explanation<'_>, spec: &PolicySpec, q: &Query<'_>) -> Value {
    let reason = match e.decision {
        Decision::Allow { .. } => "allow_rule",
        Decision::DenyByRule { .. } => "deny_rule",
        Decision::DenyNoMatch => "no_match",
        Decision::DenyMalformed => "malformed_metadata",
    };
    let rules: Vec<Value> = e
        .rules
        .iter()
        .map(|t| {
            let rule = rule_spec(spec, t.list, t.index);
            json!({
                "list": t.list.field(),
                "index": t.index,
                "name": t.name,
                "matched": t.outcome == RuleOutcome::Matched,
                "failed": match &t.outcome {
                    RuleOutcome::Matched => Vec::new(),
                    other => outcome_text(other, rule, q),
                },
            })
        })
        .collect();
    json!({
        "decision": if e.decision.is_allowed() { "allow" } else { "deny" },
        "rule": e.decision.rule(),
        "reason": reason,
        "method": q.method,
        "identity": {
            "spiffe_id": q.peer.spiffe_id().map(|s| s.to_string()),
            "uri_sans": q.peer.uri_sans(),
            "dns_sans": q.peer.dns_sans(),
            "subject": q.peer.subject(),
        },
        "rules": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_take_their_place_in_a_certificate() {
        let names: Vec<String> = ["spiffe://example.org/a", "a.internal", "CN=a,O=Example"]
            .map(String::from)
            .into();
        let id = identity_from_principals(&names).unwrap();
        assert_eq!(id.uri_sans(), ["spiffe://example.org/a"]);
        assert_eq!(id.dns_sans(), ["a.internal"]);
        assert_eq!(id.subject(), "CN=a,O=Example");
        let two = ["CN=a".to_owned(), "CN=b".to_owned()];
        assert!(identity_from_principals(&two)
            .unwrap_err()
            .contains("two subjects"));
    }

    #[test]
    fn headers_are_key_colon_value() {
        assert_eq!(
            parse_header("X-Env: prod").unwrap(),
            ("x-env".into(), "prod".into())
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad key:v").is_err());
    }
}
