//! The A43 schema, walked over a parsed document: which fields each object
//! may hold, of what type, and the checks gRPC makes on them. Every problem
//! is recorded in the [`Walk`] and the walk goes on, so that one run
//! reports them all.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::file::{
    AuditCondition, HeaderSpec, PolicySpec, RuleSpec, STDOUT_LOGGER, UNSUPPORTED_HEADERS,
};
use super::json::Walk;
use super::locate::FieldPath;

const POLICY_FIELDS: &[&str] = &["name", "deny_rules", "allow_rules", "audit_logging_options"];
const RULE_FIELDS: &[&str] = &["name", "source", "request"];
const SOURCE_FIELDS: &[&str] = &["principals"];
const REQUEST_FIELDS: &[&str] = &["paths", "headers"];
const HEADER_FIELDS: &[&str] = &["key", "values"];
const AUDIT_FIELDS: &[&str] = &["audit_condition", "audit_loggers"];
const LOGGER_FIELDS: &[&str] = &["name", "config", "is_optional"];

pub(super) fn document(w: &mut Walk, v: &Value) -> PolicySpec {
    let root = FieldPath::root();
    let empty = Map::new();
    let map = w.object(v, &root, POLICY_FIELDS).unwrap_or(&empty);
    let name = required_name(w, map, &root);

    let deny_at = root.key("deny_rules");
    let deny_rules = match w
        .field(map, &root, "deny_rules")
        .map(|v| w.array(v, &deny_at))
    {
        Some(Some([])) => {
            w.problem(
                &deny_at,
                "is empty; leave it out instead (gRPC C++ refuses an empty list)",
            );
            Vec::new()
        }
        Some(Some(list)) => rules(w, list, &deny_at, "deny_rules"),
        _ => Vec::new(),
    };

    let allow_at = root.key("allow_rules");
    let allow = w
        .field(map, &root, "allow_rules")
        .map(|v| w.array(v, &allow_at));
    let allow_rules = match allow {
        Some(Some(list)) => rules(w, list, &allow_at, "allow_rules"),
        _ => Vec::new(),
    };
    // Absent or empty; a wrong type or null has been reported already.
    let allow_wrong = matches!(allow, Some(None)) || map.get("allow_rules") == Some(&Value::Null);
    if !allow_wrong && allow.flatten().is_none_or(<[Value]>::is_empty) {
        w.problem(
            &allow_at,
            "is required and must hold at least one rule (gRPC refuses a policy without one)",
        );
    }

    let (audit_condition, audit_logger) = match w.field(map, &root, "audit_logging_options") {
        Some(v) => audit(w, v, &root.key("audit_logging_options")),
        None => (AuditCondition::NONE, false),
    };
    PolicySpec {
        name,
        deny_rules,
        allow_rules,
        audit_condition,
        audit_logger,
    }
}

/// The required, non-empty `name` of the object `map` at `at`.
fn required_name(w: &mut Walk, map: &Map<String, Value>, at: &FieldPath) -> String {
    let name_at = at.key("name");
    match w.field(map, at, "name").map(|v| w.string(v, &name_at)) {
        Some(Some(n)) if !n.is_empty() => return n.to_owned(),
        Some(None) => {}                       // reported as a wrong type
        None if map.contains_key("name") => {} // reported as null
        _ => w.problem(&name_at, "is required and must not be empty"),
    }
    String::new()
}

fn rules(w: &mut Walk, list: &[Value], at: &FieldPath, list_name: &str) -> Vec<RuleSpec> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let at = at.index(i);
        let Some(rule) = w.object(v, &at, RULE_FIELDS) else {
            continue;
        };
        let name = required_name(w, rule, &at);
        if !name.is_empty() && !seen.insert(name.clone()) {
            w.problem(
                &at.key("name"),
                format!("duplicate rule name {name:?} in {list_name} (gRPC would silently keep only the last one)"),
            );
        }
        let mut principals = Vec::new();
        let source_at = at.key("source");
        if let Some(source) = w.field(rule, &at, "source") {
            if let Some(source) = w.object(source, &source_at, SOURCE_FIELDS) {
                if let Some(p) = w.field(source, &source_at, "principals") {
                    principals = w
                        .strings(p, &source_at.key("principals"))
                        .unwrap_or_default();
                }
            }
        }
        let (mut paths, mut headers) = (Vec::new(), Vec::new());
        let request_at = at.key("request");
        if let Some(request) = w.field(rule, &at, "request") {
            if let Some(request) = w.object(request, &request_at, REQUEST_FIELDS) {
                if let Some(p) = w.field(request, &request_at, "paths") {
                    paths = w.strings(p, &request_at.key("paths")).unwrap_or_default();
                }
                let headers_at = request_at.key("headers");
                if let Some(h) = w.field(request, &request_at, "headers") {
                    for (j, h) in w
                        .array(h, &headers_at)
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                    {
                        headers.extend(header(w, h, &headers_at.index(j)));
                    }
                }
            }
        }
        out.push(RuleSpec {
            name,
            principals,
            paths,
            headers,
        });
    }
    out
}

fn header(w: &mut Walk, v: &Value, at: &FieldPath) -> Option<HeaderSpec> {
    let h = w.object(v, at, HEADER_FIELDS)?;
    let key_at = at.key("key");
    let key = match w.field(h, at, "key").map(|k| w.string(k, &key_at)) {
        Some(Some(k)) if !k.is_empty() => Some(k.to_ascii_lowercase()),
        Some(None) => None,
        None if h.contains_key("key") => None,
        _ => {
            w.problem(&key_at, "is required and must not be empty");
            None
        }
    };
    let key = key.filter(|key| {
        if key.starts_with(':')
            || key.starts_with("grpc-")
            || UNSUPPORTED_HEADERS.contains(&key.as_str())
        {
            w.problem(
                &key_at,
                format!("header {key:?} cannot be matched: pseudo-headers, grpc-* and hop-by-hop headers are not allowed"),
            );
            false
        } else if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
            w.problem(
                &key_at,
                format!("{key:?} is not a valid HTTP/2 header name, so it could never match"),
            );
            false
        } else {
            true
        }
    });
    let values_at = at.key("values");
    let values = match w.field(h, at, "values") {
        Some(v) => w.strings(v, &values_at),
        None if h.contains_key("values") => None,
        None => Some(Vec::new()),
    };
    if values.as_ref().is_some_and(Vec::is_empty) {
        w.problem(&values_at, "is required and must hold at least one value");
    }
    Some(HeaderSpec {
        key: key?,
        values: values.filter(|v| !v.is_empty())?,
    })
}

/// The audit condition, and whether a usable audit logger is configured.
fn audit(w: &mut Walk, v: &Value, at: &FieldPath) -> (AuditCondition, bool) {
    let Some(options) = w.object(v, at, AUDIT_FIELDS) else {
        return (AuditCondition::NONE, false);
    };
    let condition_at = at.key("audit_condition");
    let condition = match w
        .field(options, at, "audit_condition")
        .map(|c| w.string(c, &condition_at))
    {
        Some(Some(c)) => match AuditCondition::ALL.iter().find(|(name, _)| *name == c) {
            Some((_, condition)) => *condition,
            None => {
                let names: Vec<String> = AuditCondition::ALL
                    .iter()
                    .map(|(n, _)| format!("`{n}`"))
                    .collect();
                w.problem(
                    &condition_at,
                    format!(
                        "unknown variant `{c}`, expected one of {}",
                        names.join(", ")
                    ),
                );
                AuditCondition::NONE
            }
        },
        _ => AuditCondition::NONE,
    };
    let mut usable_logger = false;
    let loggers_at = at.key("audit_loggers");
    let loggers = w
        .field(options, at, "audit_loggers")
        .and_then(|l| w.array(l, &loggers_at))
        .unwrap_or_default();
    for (i, logger) in loggers.iter().enumerate() {
        let at = loggers_at.index(i);
        let Some(logger) = w.object(logger, &at, LOGGER_FIELDS) else {
            continue;
        };
        let name = required_name(w, logger, &at);
        // The config object is the logger's own; stdout_logger takes none
        // that matters, so any object is accepted as gRPC does.
        if let Some(config) = w.field(logger, &at, "config") {
            w.any_object(config, &at.key("config"));
        }
        let optional = w
            .field(logger, &at, "is_optional")
            .and_then(|o| w.bool(o, &at.key("is_optional")))
            .unwrap_or(false);
        if name == STDOUT_LOGGER {
            usable_logger = true;
        } else if !name.is_empty() && !optional {
            w.problem(
                &at.key("name"),
                format!("unknown audit logger {name:?}: only {STDOUT_LOGGER:?} is available (mark others \"is_optional\": true to skip them)"),
            );
        }
    }
    (condition, usable_logger)
}
