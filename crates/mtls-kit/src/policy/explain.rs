//! Why a policy decides what it decides: the rules checked, in order, and
//! for each one that did not match, the conditions it missed.
//!
//! An explanation runs the same per-rule matcher as [`Policy::decide`]
//! (`Rule::check` in [`super::engine`]) and combines deny and allow rules
//! with the same function; only the choice of candidate rules differs (a
//! plain scan here, the index there), and a test holds the two decisions
//! equal.

use super::engine::MalformedMetadata;
use super::{Decision, Policy, RpcRequest};
use crate::identity::PeerIdentity;

/// Which list of the policy a rule is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleList {
    /// `deny_rules`, checked first.
    Deny,
    /// `allow_rules`, checked when no deny rule matched.
    Allow,
}

impl RuleList {
    /// The list's field in the policy document.
    pub fn field(self) -> &'static str {
        match self {
            RuleList::Deny => "deny_rules",
            RuleList::Allow => "allow_rules",
        }
    }
}

/// A condition of a rule that a request did not meet. Indexes point into
/// the rule's `request.headers` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The method path matches none of the rule's `request.paths`.
    Path,
    /// None of the peer's names matches the rule's `source.principals`.
    Principals,
    /// The request lacks the header (an absent header matches nothing).
    HeaderAbsent {
        /// The condition's index in `request.headers`.
        index: usize,
    },
    /// The header's value matches none of the condition's `values`.
    HeaderValue {
        /// The condition's index in `request.headers`.
        index: usize,
    },
    /// The header holds binary metadata that is not valid base64; it did
    /// not decide because an earlier condition had already failed.
    HeaderMalformed {
        /// The condition's index in `request.headers`.
        index: usize,
    },
}

/// What became of one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleOutcome {
    /// Every condition was met: this rule decided.
    Matched,
    /// These conditions were not met (at least one).
    Missed(Vec<Miss>),
    /// The rule's header `header` holds binary metadata that is not valid
    /// base64, and every earlier condition was met: the RPC is denied.
    Malformed {
        /// The condition's index in the rule's `request.headers`.
        header: usize,
    },
}

/// One rule checked, in the order the policy checks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleTrace<'p> {
    /// The list the rule is in.
    pub list: RuleList,
    /// The rule's index in its list.
    pub index: usize,
    /// The rule's name, borrowed from the policy.
    pub name: &'p str,
    /// Whether it matched, and if not, what it missed.
    pub outcome: RuleOutcome,
}

/// A decision and how it was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation<'p> {
    /// The decision, the same as [`Policy::decide`]'s for this request.
    pub decision: Decision<'p>,
    /// Every rule checked, deny rules first, up to and including the one
    /// that decided. With no match, every rule of the policy.
    pub rules: Vec<RuleTrace<'p>>,
}

/// Deny rules first, then allow rules, deny if neither matched. The one
/// place this order is written, for decisions and explanations alike.
pub(super) fn combine<'p>(
    deny: impl FnOnce() -> Result<Option<&'p str>, MalformedMetadata>,
    allow: impl FnOnce() -> Result<Option<&'p str>, MalformedMetadata>,
) -> Decision<'p> {
    match deny() {
        Err(_) => return Decision::DenyMalformed,
        Ok(Some(rule)) => return Decision::DenyByRule { rule },
        Ok(None) => {}
    }
    match allow() {
        Err(_) => Decision::DenyMalformed,
        Ok(Some(rule)) => Decision::Allow { rule },
        Ok(None) => Decision::DenyNoMatch,
    }
}

impl Policy {
    /// Decides like [`Policy::decide`] and says why. Slower (a scan of the
    /// rules, and a record of each): for tools, not for the request path.
    pub fn explain(&self, peer: &PeerIdentity, req: &RpcRequest<'_>) -> Explanation<'_> {
        let mut rules = Vec::new();
        let trace = std::cell::RefCell::new(&mut rules);
        let decision = combine(
            || {
                self.deny
                    .explain(RuleList::Deny, peer, req, &mut trace.borrow_mut())
            },
            || {
                self.allow
                    .explain(RuleList::Allow, peer, req, &mut trace.borrow_mut())
            },
        );
        Explanation { decision, rules }
    }
}
