//! gRPC authorization policies (gRFC A43): pure data in, a decision out.
//!
//! * [`file`](mod@file) parses and validates the JSON document (with
//!   `json`'s strict reading, `schema`'s walk and [`locate`]'s line and
//!   column of each problem);
//! * [`pattern`] and [`engine`] compile it into indexes;
//! * [`served`] and [`paths`] compare its paths with the methods a server
//!   serves, and [`check`] puts it all together as a server loads a file;
//! * [`Policy::decide`] is the pure decision function the enforcement layer
//!   ([`crate::authz`]) calls; [`Policy::explain`] (in [`explain`]) reaches
//!   the same decision and says why, for operators' tools.
//!
//! Semantics, as gRPC's C++, Go and Java implementations apply them: deny
//! rules are checked before allow rules, and a request no allow rule matches
//! is denied. Within a rule, `source` and `request` must both match; within
//! `request`, `paths` and every `headers` entry must match; lists of
//! principals, paths and header values are "any of". A rule without `source`
//! or `request`, or with empty lists, is unconstrained there.

use std::path::{Path, PathBuf};

pub mod check;
pub mod engine;
pub mod explain;
pub mod file;
pub(crate) mod json;
pub mod locate;
pub mod paths;
pub mod pattern;
mod schema;
pub mod served;

pub use check::{PathCheck, PolicyWarning};
pub use engine::RpcRequest;
pub use explain::{Explanation, Miss, RuleList, RuleOutcome, RuleTrace};
pub use file::{AuditCondition, PolicySpec};
pub use locate::Position;
pub use served::ServedMethods;

use crate::identity::PeerIdentity;
use engine::RuleSet;

/// One reason a policy document is invalid. `field` is a path into the
/// document, such as `allow_rules[2].request.headers[0].key`; `at` is where
/// that field is in the text, when it is known. Displays as
/// `field: message (line L, column C)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The field (or the document) breaks a rule of A43 or of the kit's
    /// stricter checks.
    Invalid {
        /// The field path; `(document)` for the document as a whole.
        field: String,
        /// What is wrong, for a person.
        message: String,
        /// Where the field is in the text; for a missing field, the object
        /// that should hold it. `None` when the text could not place it.
        at: Option<Position>,
    },
}

impl PolicyError {
    /// Where the problem is in the text, if known.
    pub fn position(&self) -> Option<Position> {
        match self {
            PolicyError::Invalid { at, .. } => *at,
        }
    }
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let PolicyError::Invalid { field, message, at } = self;
        write!(f, "{field}: {message}")?;
        if let Some(at) = at {
            write!(f, " ({at})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Every reason a policy document is invalid, in document order (never
/// empty). Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl std::fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// A policy file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// The file could not be read.
    #[error("policy file {}: {source}", path.display())]
    Read {
        /// The policy file.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// Every problem, one per line, each prefixed with the file.
    #[error("{}", prefixed(path, source))]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// Every problem found in it.
        source: PolicyErrors,
    },
}

/// `policy file F: <error>` for each error, one per line.
pub(crate) fn prefixed(path: &Path, errors: &PolicyErrors) -> String {
    let lines: Vec<String> = errors
        .0
        .iter()
        .map(|e| format!("policy file {}: {e}", path.display()))
        .collect();
    lines.join("\n")
}

/// The outcome of one authorization decision. Rule names borrow from the
/// policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// An allow rule matched and no deny rule did.
    Allow {
        /// The first allow rule that matched, by name.
        rule: &'a str,
    },
    /// A deny rule matched.
    DenyByRule {
        /// The first deny rule that matched, by name.
        rule: &'a str,
    },
    /// No allow rule matched (the default).
    DenyNoMatch,
    /// A rule needed binary metadata that is not valid base64.
    DenyMalformed,
}

impl<'a> Decision<'a> {
    /// Whether the RPC may go on: only for [`Decision::Allow`].
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
    /// Parses, validates and compiles a policy document. On failure,
    /// returns the first problem in the document; [`Self::from_json_all`]
    /// returns all of them.
    pub fn from_json(json: &str) -> Result<Self, PolicyError> {
        Self::from_json_all(json).map_err(|all| {
            all.0.into_iter().next().unwrap_or(PolicyError::Invalid {
                field: "(document)".to_owned(),
                message: "invalid".to_owned(),
                at: None,
            })
        })
    }

    /// Parses, validates and compiles a policy document, reporting every
    /// problem on failure.
    pub fn from_json_all(json: &str) -> Result<Self, PolicyErrors> {
        Ok(Self::compile(&file::parse(json)?))
    }

    /// Reads and compiles a policy file. Errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self, PolicyLoadError> {
        let json = std::fs::read_to_string(path).map_err(|source| PolicyLoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json_all(&json).map_err(|source| PolicyLoadError::Invalid {
            path: path.to_owned(),
            source,
        })
    }

    /// Compiles a validated policy (from [`file::parse`] or a
    /// [`check::Report`]) into its indexes. Audit logging follows
    /// `audit_condition` only when the policy names a usable audit logger
    /// (gRFC A59); otherwise nothing is audit-logged.
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
    /// [`Policy::explain`] reaches the same decision through the same
    /// per-rule matcher, and says why.
    pub fn decide(&self, peer: &PeerIdentity, req: &RpcRequest<'_>) -> Decision<'_> {
        explain::combine(
            || self.deny.first_match(peer, req),
            || self.allow.first_match(peer, req),
        )
    }
}

#[cfg(test)]
mod explain_tests;
#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod tests;
