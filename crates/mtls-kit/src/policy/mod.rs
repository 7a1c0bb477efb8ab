//! gRPC authorization policies (gRFC A43): pure data in, a decision out.
//!
//! * [`file`] parses and validates the JSON document;
//! * [`pattern`] and [`engine`] compile it into indexes;
//! * [`Policy::decide`] is the pure decision function the enforcement layer
//!   ([`crate::authz`]) calls.
//!
//! Semantics, as gRPC's C++, Go and Java implementations apply them: deny
//! rules are checked before allow rules, and a request no allow rule matches
//! is denied. Within a rule, `source` and `request` must both match; within
//! `request`, `paths` and every `headers` entry must match; lists of
//! principals, paths and header values are "any of". A rule without `source`
//! or `request`, or with empty lists, is unconstrained there.

use std::path::{Path, PathBuf};

pub mod engine;
pub mod file;
pub mod pattern;

pub use engine::RpcRequest;
pub use file::{AuditCondition, PolicySpec};

use crate::identity::PeerIdentity;
use engine::RuleSet;

/// Why a policy document is invalid. `field` is a path into the document,
/// such as `allow_rules[2].request.headers[0].key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// A policy file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("policy file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {}: {source}", path.display())]
    Invalid { path: PathBuf, source: PolicyError },
}

/// The outcome of one authorization decision. Rule names borrow from the
/// policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// An allow rule matched and no deny rule did.
    Allow { rule: &'a str },
    /// A deny rule matched.
    DenyByRule { rule: &'a str },
    /// No allow rule matched (the default).
    DenyNoMatch,
    /// A rule needed binary metadata that is not valid base64.
    DenyMalformed,
}

impl<'a> Decision<'a> {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
    /// The name of the rule that decided, if one did.
    pub fn rule(&self) -> Option<&'a str> {
        match self {
            Decision::Allow { rule } | Decision::DenyByRule { rule } => Some(rule),
            _ => None,
        }
    }
}

/// A compiled, immutable authorization policy.
///
/// ```
/// use http::HeaderMap;
/// use mtls_kit::identity::PeerIdentity;
/// use mtls_kit::policy::{Decision, Policy, RpcRequest};
///
/// let policy = Policy::from_json(r#"{
///     "name": "example",
///     "allow_rules": [{"name": "readers",
///         "source": {"principals": ["spiffe://example.org/reader"]},
///         "request": {"paths": ["/svc.v1.Svc/Get"]}}]
/// }"#).unwrap();
/// let reader = PeerIdentity::from_names(&["spiffe://example.org/reader"], &[], "CN=reader");
/// let headers = HeaderMap::new();
/// let get = RpcRequest { path: "/svc.v1.Svc/Get", headers: &headers };
/// let put = RpcRequest { path: "/svc.v1.Svc/Put", headers: &headers };
/// assert_eq!(policy.decide(&reader, &get), Decision::Allow { rule: "readers" });
/// assert_eq!(policy.decide(&reader, &put), Decision::DenyNoMatch);
/// ```
#[derive(Debug)]
pub struct Policy {
    name: String,
    deny: RuleSet,
    allow: RuleSet,
    audit_condition: AuditCondition,
}

impl Policy {
    /// Parses, validates and compiles a policy document.
    pub fn from_json(json: &str) -> Result<Self, PolicyError> {
        Ok(Self::compile(&file::parse(json)?))
    }

    /// Reads and compiles a policy file. Errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self, PolicyLoadError> {
        let json = std::fs::read_to_string(path).map_err(|source| PolicyLoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&json).map_err(|source| PolicyLoadError::Invalid {
            path: path.to_owned(),
            source,
        })
    }

    pub fn compile(spec: &PolicySpec) -> Self {
        Self {
            name: spec.name.clone(),
            deny: RuleSet::compile(&spec.deny_rules),
            allow: RuleSet::compile(&spec.allow_rules),
            // A59: without a logger nothing is audited.
            audit_condition: if spec.audit_logger {
                spec.audit_condition
            } else {
                AuditCondition::NONE
            },
        }
    }

    /// The policy's `name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When decisions are audit-logged, as `audit_logging_options` says.
    pub fn audit_condition(&self) -> AuditCondition {
        self.audit_condition
    }

    /// How many deny and allow rules the policy holds.
    pub fn rule_counts(&self) -> (usize, usize) {
        (self.deny.len(), self.allow.len())
    }

    /// Decides one RPC: deny rules first, then allow rules, deny if neither
    /// matched.
    pub fn decide(&self, peer: &PeerIdentity, req: &RpcRequest<'_>) -> Decision<'_> {
        match self.deny.first_match(peer, req) {
            Err(_) => return Decision::DenyMalformed,
            Ok(Some(rule)) => return Decision::DenyByRule { rule },
            Ok(None) => {}
        }
        match self.allow.first_match(peer, req) {
            Err(_) => Decision::DenyMalformed,
            Ok(Some(rule)) => Decision::Allow { rule },
            Ok(None) => Decision::DenyNoMatch,
        }
    }
}

#[cfg(test)]
mod tests;
