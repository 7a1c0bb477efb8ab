//! The policy document: gRPC's authorization policy JSON (gRFC A43, with the
//! A59 `audit_logging_options`), parsed and validated.
//!
//! Validation refuses everything gRPC's implementations refuse, plus two
//! things they silently accept but that can only be mistakes: duplicate rule
//! names (gRPC keys rules by name, so the later one silently replaces the
//! earlier) and header keys that are not valid HTTP/2 header names (they can
//! never match). Unknown fields are refused, as A43 requires.

use std::collections::HashSet;

use serde::Deserialize;

use super::PolicyError;

// The serde model. Every field is optional so that a missing one is
// reported by name below. An explicit `null` is not "absent": gRPC C++ and
// Java refuse it (only Go's decoder lets it through), so it is refused here
// with serde's "invalid type: null" error.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyJson {
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    deny_rules: Option<Vec<RuleJson>>,
    #[serde(default, deserialize_with = "present")]
    allow_rules: Option<Vec<RuleJson>>,
    #[serde(default, deserialize_with = "present")]
    audit_logging_options: Option<AuditJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleJson {
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    source: Option<SourceJson>,
    #[serde(default, deserialize_with = "present")]
    request: Option<RequestJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceJson {
    #[serde(default, deserialize_with = "present")]
    principals: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    #[serde(default, deserialize_with = "present")]
    paths: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    headers: Option<Vec<HeaderJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderJson {
    #[serde(default, deserialize_with = "present")]
    key: Option<String>,
    #[serde(default, deserialize_with = "present")]
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditJson {
    #[serde(default, deserialize_with = "present")]
    audit_condition: Option<AuditCondition>,
    #[serde(default, deserialize_with = "present")]
    audit_loggers: Option<Vec<AuditLoggerJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditLoggerJson {
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    config: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, deserialize_with = "present")]
    is_optional: Option<bool>,
}

/// Reads a field that is present: `null` is an error, not "absent".
fn present<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(de).map(Some)
}

/// When decisions are audit-logged (gRFC A59).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[allow(non_camel_case_types)]
pub enum AuditCondition {
    #[default]
    NONE,
    ON_DENY,
    ON_ALLOW,
    ON_DENY_AND_ALLOW,
}

impl AuditCondition {
    pub fn logs_allow(self) -> bool {
        matches!(self, Self::ON_ALLOW | Self::ON_DENY_AND_ALLOW)
    }
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
    pub name: String,
    pub deny_rules: Vec<RuleSpec>,
    pub allow_rules: Vec<RuleSpec>,
    pub audit_condition: AuditCondition,
    /// Whether a usable audit logger is configured. A59: with no logger,
    /// nothing is audit-logged whatever the condition says.
    pub audit_logger: bool,
}

/// One validated rule. Empty lists mean "unconstrained".
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub name: String,
    pub principals: Vec<String>,
    pub paths: Vec<String>,
    pub headers: Vec<HeaderSpec>,
}

/// One header condition: `key` (lower-cased) must match one of `values`.
#[derive(Debug, Clone)]
pub struct HeaderSpec {
    pub key: String,
    pub values: Vec<String>,
}

/// Headers a policy may not name: HTTP/2 pseudo-headers and `grpc-*` are
/// transport-owned, `host` is replaced by `:authority`, and the rest are
/// hop-by-hop headers that never reach a gRPC server as metadata.
const UNSUPPORTED_HEADERS: &[&str] = &[
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

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses and validates a policy document.
pub fn parse(json: &str) -> Result<PolicySpec, PolicyError> {
    // serde would also read a struct from a JSON array; A43 documents are
    // objects, and the error should say so rather than name our types.
    let first = json.trim_start().chars().next();
    if first.is_some() && first != Some('{') {
        return Err(invalid("(document)", "a policy must be a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_str(json);
    let doc: PolicyJson = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let field = if field == "." {
            "(document)".to_owned()
        } else {
            field
        };
        invalid(field, inner.to_string())
    })?;

    let name = match doc.name {
        Some(n) if !n.is_empty() => n,
        _ => return Err(invalid("name", "is required and must not be empty")),
    };
    if doc.deny_rules.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid(
            "deny_rules",
            "is empty; leave it out instead (gRPC C++ refuses an empty list)",
        ));
    }
    let deny_rules = rules(doc.deny_rules.unwrap_or_default(), "deny_rules")?;
    let allow_rules = rules(doc.allow_rules.unwrap_or_default(), "allow_rules")?;
    if allow_rules.is_empty() {
        return Err(invalid(
            "allow_rules",
            "is required and must hold at least one rule (gRPC refuses a policy without one)",
        ));
    }
    let (audit_condition, audit_logger) = audit(doc.audit_logging_options)?;
    Ok(PolicySpec {
        name,
        deny_rules,
        allow_rules,
        audit_condition,
        audit_logger,
    })
}

fn rules(list: Vec<RuleJson>, field: &str) -> Result<Vec<RuleSpec>, PolicyError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, rule) in list.into_iter().enumerate() {
        let at = format!("{field}[{i}]");
        let name = match rule.name {
            Some(n) if !n.is_empty() => n,
            _ => {
                return Err(invalid(
                    format!("{at}.name"),
                    "is required and must not be empty",
                ))
            }
        };
        if !seen.insert(name.clone()) {
            return Err(invalid(
                format!("{at}.name"),
                format!("duplicate rule name {name:?} in {field} (gRPC would silently keep only the last one)"),
            ));
        }
        let principals = rule.source.and_then(|s| s.principals).unwrap_or_default();
        let (paths, headers) = match rule.request {
            Some(r) => (r.paths.unwrap_or_default(), r.headers.unwrap_or_default()),
            None => (Vec::new(), Vec::new()),
        };
        let headers = headers
            .into_iter()
            .enumerate()
            .map(|(j, h)| header(h, &format!("{at}.request.headers[{j}]")))
            .collect::<Result<_, _>>()?;
        out.push(RuleSpec {
            name,
            principals,
            paths,
            headers,
        });
    }
    Ok(out)
}

fn header(h: HeaderJson, at: &str) -> Result<HeaderSpec, PolicyError> {
    let key = match h.key {
        Some(k) if !k.is_empty() => k.to_ascii_lowercase(),
        _ => {
            return Err(invalid(
                format!("{at}.key"),
                "is required and must not be empty",
            ))
        }
    };
    if key.starts_with(':')
        || key.starts_with("grpc-")
        || UNSUPPORTED_HEADERS.contains(&key.as_str())
    {
        return Err(invalid(
            format!("{at}.key"),
            format!("header {key:?} cannot be matched: pseudo-headers, grpc-* and hop-by-hop headers are not allowed"),
        ));
    }
    if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
        return Err(invalid(
            format!("{at}.key"),
            format!("{key:?} is not a valid HTTP/2 header name, so it could never match"),
        ));
    }
    let values = h.values.unwrap_or_default();
    if values.is_empty() {
        return Err(invalid(
            format!("{at}.values"),
            "is required and must hold at least one value",
        ));
    }
    Ok(HeaderSpec { key, values })
}

fn audit(options: Option<AuditJson>) -> Result<(AuditCondition, bool), PolicyError> {
    let Some(options) = options else {
        return Ok((AuditCondition::NONE, false));
    };
    let mut usable_logger = false;
    for (i, logger) in options
        .audit_loggers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let at = format!("audit_logging_options.audit_loggers[{i}]");
        let name = match logger.name {
            Some(n) if !n.is_empty() => n,
            _ => {
                return Err(invalid(
                    format!("{at}.name"),
                    "is required and must not be empty",
                ))
            }
        };
        // The config object is the logger's own; stdout_logger takes none
        // that matters, so any object is accepted as gRPC does.
        let _ = logger.config;
        if name == STDOUT_LOGGER {
            usable_logger = true;
        } else if !logger.is_optional.unwrap_or(false) {
            return Err(invalid(
                format!("{at}.name"),
                format!("unknown audit logger {name:?}: only {STDOUT_LOGGER:?} is available (mark others \"is_optional\": true to skip them)"),
            ));
        }
    }
    Ok((options.audit_condition.unwrap_or_default(), usable_logger))
}
