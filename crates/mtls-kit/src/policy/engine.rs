//! The compiled rule sets and the decision function.
//!
//! Each rule set (deny, allow) keeps two indexes: rules by principal pattern
//! and rules by path pattern. A decision looks up the peer's names in one and
//! the method path in the other, walks whichever candidate list is shorter,
//! and checks each candidate rule fully, stopping at the first (lowest
//! numbered) rule that matches. For the usual shapes of policy (rules keyed
//! by principal, by path, or both) the cost is a few hash lookups and a short
//! walk, independent of the number of rules.
//!
//! The one shape that still walks many rules is adversarial: many rules that
//! share the peer's principal pattern *and* many that share the path
//! pattern, with none sharing both. `benches/policy.rs` measures the usual
//! shapes against a plain scan.

use std::borrow::Cow;
use std::ops::ControlFlow;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use http::{HeaderMap, HeaderName};

use super::explain::{Miss, RuleList, RuleOutcome, RuleTrace};
use super::file::RuleSpec;
use super::pattern::{Buckets, Pattern, PatternIndex, PatternSet};
use crate::identity::PeerIdentity;

/// The request-side inputs to a decision.
#[derive(Clone, Copy, Debug)]
pub struct RpcRequest<'a> {
    /// `/package.Service/Method`.
    pub path: &'a str,
    /// The request headers (gRPC metadata).
    pub headers: &'a HeaderMap,
}

/// A request that cannot be evaluated: binary (`-bin`) metadata a rule
/// inspects is not valid base64. gRPC's own transports reject such a request
/// outright, so it is denied here too rather than treated as "absent".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedMetadata;

// gRPC accepts binary metadata with or without base64 padding.
const BIN_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What one header condition found in a request.
enum HeaderOutcome {
    Absent,
    Mismatch,
    Match,
}

#[derive(Debug)]
struct HeaderCondition {
    name: HeaderName,
    binary: bool,
    values: PatternSet,
}

impl HeaderCondition {
    /// gRPC joins repeated metadata with `,` in arrival order and matches
    /// `-bin` metadata on its decoded bytes. An absent header matches
    /// nothing, not even `"*"`.
    fn check(&self, headers: &HeaderMap) -> Result<HeaderOutcome, MalformedMetadata> {
        let outcome = |matched| {
            if matched {
                HeaderOutcome::Match
            } else {
                HeaderOutcome::Mismatch
            }
        };
        let mut values = headers.get_all(&self.name).iter();
        let Some(first) = values.next() else {
            return Ok(HeaderOutcome::Absent);
        };
        let second = values.next();
        // The common case, one plain value, is matched in place.
        if second.is_none() && !self.binary {
            return Ok(outcome(
                self.values.matches_any(std::iter::once(first.as_bytes())),
            ));
        }
        fn bytes(binary: bool, v: &http::HeaderValue) -> Result<Cow<'_, [u8]>, MalformedMetadata> {
            if binary {
                BIN_ENGINE
                    .decode(v.as_bytes())
                    .map(Cow::Owned)
                    .map_err(|_| MalformedMetadata)
            } else {
                Ok(Cow::Borrowed(v.as_bytes()))
            }
        }
        let mut joined = bytes(self.binary, first)?.into_owned();
        for v in second.into_iter().chain(values) {
            joined.push(b',');
            joined.extend_from_slice(&bytes(self.binary, v)?);
        }
        Ok(outcome(
            self.values.matches_any(std::iter::once(joined.as_slice())),
        ))
    }
}

/// A rule's header `index` holds binary metadata that is not valid base64,
/// and every condition before it was met.
struct MalformedAt {
    header: usize,
}

#[derive(Debug)]
struct Rule {
    name: String,
    principals: PatternSet,
    paths: PatternSet,
    headers: Vec<HeaderCondition>,
}

impl Rule {
    /// Checks the rule's conditions in order (path, principals, then each
    /// header), telling `miss` about each one the request does not meet;
    /// `miss` says whether to go on. Returns whether all were met.
    ///
    /// Decisions ([`Self::matches`]) and explanations
    /// ([`RuleSet::explain`]) both go through here, so they cannot disagree
    /// on what a rule matches. Malformed binary metadata is an error only
    /// when every earlier condition was met, as it is for a decision, which
    /// stops at the first miss.
    fn check(
        &self,
        peer: &PeerIdentity,
        req: &RpcRequest<'_>,
        mut miss: impl FnMut(Miss) -> ControlFlow<()>,
    ) -> Result<bool, MalformedAt> {
        let mut met = true;
        let mut missed = |m: Miss, met: &mut bool| {
            *met = false;
            miss(m).is_break()
        };
        if !self.paths.matches_any(std::iter::once(req.path.as_bytes()))
            && missed(Miss::Path, &mut met)
        {
            return Ok(false);
        }
        if !self
            .principals
            .matches_any(peer.principal_names().map(str::as_bytes))
            && missed(Miss::Principals, &mut met)
        {
            return Ok(false);
        }
        for (index, h) in self.headers.iter().enumerate() {
            let m = match h.check(req.headers) {
                Ok(HeaderOutcome::Match) => continue,
                Ok(HeaderOutcome::Absent) => Miss::HeaderAbsent { index },
                Ok(HeaderOutcome::Mismatch) => Miss::HeaderValue { index },
                Err(MalformedMetadata) if met => return Err(MalformedAt { header: index }),
                Err(MalformedMetadata) => Miss::HeaderMalformed { index },
            };
            if missed(m, &mut met) {
                return Ok(false);
            }
        }
        Ok(met)
    }

    /// Whether the rule matches; stops at the first condition not met.
    fn matches(&self, peer: &PeerIdentity, req: &RpcRequest<'_>) -> Result<bool, MalformedAt> {
        self.check(peer, req, |_| ControlFlow::Break(()))
    }
}

/// The deny or the allow rules of a policy, compiled.
#[derive(Debug, Default)]
pub(crate) struct RuleSet {
    rules: Vec<Rule>,
    by_principal: PatternIndex,
    by_path: PatternIndex,
}

impl RuleSet {
    pub fn compile(specs: &[RuleSpec]) -> Self {
        let mut set = RuleSet::default();
        for (id, spec) in specs.iter().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            let principals: Vec<Pattern> =
                spec.principals.iter().map(|p| Pattern::parse(p)).collect();
            let paths: Vec<Pattern> = spec.paths.iter().map(|p| Pattern::parse(p)).collect();
            index_dimension(&mut set.by_principal, &principals, id);
            index_dimension(&mut set.by_path, &paths, id);
            let headers = spec
                .headers
                .iter()
                .filter_map(|h| {
                    // Validation already proved the name parses.
                    let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
                    Some(HeaderCondition {
                        binary: h.key.ends_with("-bin"),
                        name,
                        values: PatternSet::new(
                            h.values.iter().map(|v| Pattern::parse(v)).collect(),
                        ),
                    })
                })
                .collect();
            set.rules.push(Rule {
                name: spec.name.clone(),
                principals: PatternSet::new(principals),
                paths: PatternSet::new(paths),
                headers,
            });
        }
        set.by_principal.finish();
        set.by_path.finish();
        set
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The name of the first rule (in policy order) that matches, if any.
    pub fn first_match(
        &self,
        peer: &PeerIdentity,
        req: &RpcRequest<'_>,
    ) -> Result<Option<&str>, MalformedMetadata> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        let mut by_principal = Buckets::new();
        let mut any_name = false;
        for name in peer.principal_names() {
            self.by_principal.lookup(name.as_bytes(), &mut by_principal);
            any_name |= !name.is_empty();
        }
        self.by_principal
            .value_independent(any_name, &mut by_principal);

        let mut by_path = Buckets::new();
        self.by_path.lookup(req.path.as_bytes(), &mut by_path);
        self.by_path
            .value_independent(!req.path.is_empty(), &mut by_path);

        let total = |b: &Buckets<'_>| b.iter().map(|ids| ids.len()).sum::<usize>();
        let candidates = if total(&by_principal) <= total(&by_path) {
            by_principal
        } else {
            by_path
        };

        // Each bucket is sorted; within a bucket stop at the first match,
        // and skip ids past the best match found so far. A rule that cannot
        // be evaluated (malformed binary metadata) counts at its own place
        // in policy order, as in a scan: buckets are visited in no
        // particular order, so returning at the first such rule could let a
        // later rule's bad metadata override an earlier rule's match.
        let mut best: Option<(u32, bool)> = None;
        for bucket in candidates {
            for &id in bucket {
                if best.is_some_and(|(b, _)| id >= b) {
                    break;
                }
                match self.rules[id as usize].matches(peer, req) {
                    Ok(false) => continue,
                    Ok(true) => best = Some((id, false)),
                    Err(_) => best = Some((id, true)),
                }
                break;
            }
        }
        match best {
            None => Ok(None),
            Some((_, true)) => Err(MalformedMetadata),
            Some((id, false)) => Ok(Some(self.rules[id as usize].name.as_str())),
        }
    }

    /// What [`Self::first_match`] decides, found by a plain scan in policy
    /// order, with the outcome of every rule checked appended to `trace`.
    /// The scan stops where the decision is made.
    pub fn explain<'a>(
        &'a self,
        list: RuleList,
        peer: &PeerIdentity,
        req: &RpcRequest<'_>,
        trace: &mut Vec<RuleTrace<'a>>,
    ) -> Result<Option<&'a str>, MalformedMetadata> {
        for (index, rule) in self.rules.iter().enumerate() {
            let mut misses = Vec::new();
            let checked = rule.check(peer, req, |m| {
                misses.push(m);
                ControlFlow::Continue(())
            });
            let outcome = match checked {
                Ok(true) => RuleOutcome::Matched,
                Ok(false) => RuleOutcome::Missed(misses),
                Err(MalformedAt { header }) => RuleOutcome::Malformed { header },
            };
            let decided = !matches!(outcome, RuleOutcome::Missed(_));
            let malformed = matches!(outcome, RuleOutcome::Malformed { .. });
            trace.push(RuleTrace {
                list,
                index,
                name: &rule.name,
                outcome,
            });
            if malformed {
                return Err(MalformedMetadata);
            }
            if decided {
                return Ok(Some(&rule.name));
            }
        }
        Ok(None)
    }
}

fn index_dimension(index: &mut PatternIndex, patterns: &[Pattern], id: u32) {
    if patterns.is_empty() {
        index.insert_unconstrained(id);
    }
    for p in patterns {
        index.insert(p, id);
    }
}
