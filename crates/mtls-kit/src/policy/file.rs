//! The policy document: gRPC's authorization policy JSON (gRFC A43, with the
//! A59 `audit_logging_options`), parsed and validated.
//!
//! Validation refuses everything gRPC's implementations refuse, plus two
//! things they silently accept but that can only be mistakes: duplicate rule
//! names (gRPC keys rules by name, so the later one silently replaces the
//! earlier) and header keys that are not valid HTTP/2 header names (they can
//! never match). Unknown fields are refused, as A43 requires.

use super::json::{self, Walk};
use super::locate;
use super::schema;
use super::{PolicyError, PolicyErrors};

/// When decisions are audit-logged (gRFC A59).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum AuditCondition {
    /// No decision is audit-logged (the default).
    #[default]
    NONE,
    /// Denials are audit-logged.
    ON_DENY,
    /// Allowed RPCs are audit-logged.
    ON_ALLOW,
    /// Every decision is audit-logged.
    ON_DENY_AND_ALLOW,
}

impl AuditCondition {
    pub(super) const ALL: [(&'static str, Self); 4] = [
        ("NONE", Self::NONE),
        ("ON_DENY", Self::ON_DENY),
        ("ON_ALLOW", Self::ON_ALLOW),
        ("ON_DENY_AND_ALLOW", Self::ON_DENY_AND_ALLOW),
    ];

    /// Whether an allowed RPC is audit-logged.
    pub fn logs_allow(self) -> bool {
        matches!(self, Self::ON_ALLOW | Self::ON_DENY_AND_ALLOW)
    }
    /// Whether a denied RPC is audit-logged.
    pub fn logs_deny(self) -> bool {
        matches!(self, Self::ON_DENY | Self::ON_DENY_AND_ALLOW)
    }
}

/// The one audit logger gRPC ships (and so the one a policy can rely on).
/// Audit events go to the `audit` tracing target.
pub const STDOUT_LOGGER: &str = "stdout_logger";

/// A validated policy, before compilation.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    /// The policy's `name`, which names it in logs and metrics.
    pub name: String,
    /// `deny_rules`, in document order (the order they are checked in).
    pub deny_rules: Vec<RuleSpec>,
    /// `allow_rules`, in document order.
    pub allow_rules: Vec<RuleSpec>,
    /// `audit_logging_options.audit_condition`; `NONE` when absent.
    pub audit_condition: AuditCondition,
    /// Whether a usable audit logger is configured. A59: with no logger,
    /// nothing is audit-logged whatever the condition says.
    pub audit_logger: bool,
}

/// One validated rule. Empty lists mean "unconstrained".
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// The rule's name, unique within its list.
    pub name: String,
    /// `source.principals`: patterns matched against the peer's names
    /// ([`crate::identity::PeerIdentity::principal_names`]).
    pub principals: Vec<String>,
    /// `request.paths`: patterns matched against `/package.Service/Method`.
    pub paths: Vec<String>,
    /// `request.headers`: conditions that must all hold.
    pub headers: Vec<HeaderSpec>,
}

/// One header condition: `key` (lower-cased) must match one of `values`.
#[derive(Debug, Clone)]
pub struct HeaderSpec {
    /// The header name, lower-cased; never a pseudo-header, `grpc-*` or a
    /// hop-by-hop header.
    pub key: String,
    /// Patterns for its value; at least one.
    pub values: Vec<String>,
}

/// Headers a policy may not name: HTTP/2 pseudo-headers and `grpc-*` are
/// transport-owned, `host` is replaced by `:authority`, and the rest are
/// hop-by-hop headers that never reach a gRPC server as metadata.
pub(super) const UNSUPPORTED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Parses and validates a policy document. On failure, every problem is
/// reported (not only the first), in document order, each with its field
/// path and, where the field exists, its line and column; a missing field
/// points at the object that should hold it.
pub fn parse(text: &str) -> Result<PolicySpec, PolicyErrors> {
    let value = json::parse_value(text).map_err(|e| PolicyErrors(vec![e]))?;
    if !value.is_object() {
        // serde would read some of our types from an array; say what a
        // policy is instead of what it is not.
        return Err(PolicyErrors(vec![PolicyError::Invalid {
            field: "(document)".to_owned(),
            message: "a policy must be a JSON object".to_owned(),
            at: None,
        }]));
    }
    let mut walk = Walk::default();
    let spec = schema::document(&mut walk, &value);
    if walk.problems.is_empty() {
        return Ok(spec);
    }
    let mut locator = locate::Locator::new(text);
    let mut errors: Vec<PolicyError> = walk
        .problems
        .into_iter()
        .map(|(field, message)| PolicyError::Invalid {
            at: locator.locate(&field),
            field: field.to_string(),
            message,
        })
        .collect();
    // The walk visits object keys in sorted order; report in file order.
    errors.sort_by_key(PolicyError::position);
    Err(PolicyErrors(errors))
}
