//! The limits file: strict JSON, every problem reported with its field
//! path, line and column, compiled into a [`LimitsConfig`].
//!
//! ```json
//! {
//!   "fair_share": { "max_in_flight_per_identity": 64, "max_wait_ms": 10000 },
//!   "total": { "rate": { "per_second": 20000, "burst": 2000 }, "max_in_flight": 4096 },
//!   "limits": [
//!     { "name": "batch", "principal": "spiffe://example.org/batch/*",
//!       "method": "/shop.v1.Catalog/*",
//!       "rate": { "per_second": 50, "burst": 100 }, "max_in_flight": 8 }
//!   ],
//!   "pushback_ms": 100,
//!   "dry_run": false
//! }
//! ```
//!
//! Every field is optional; an empty object is the defaults (fair share
//! only). It is read with the policy's strict reader (no duplicate keys,
//! no trailing data, no unknown fields, no `null`s) for the same reason:
//! a limit that is silently not applied is worse than a refused file.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::policy::json::{parse_value, Walk};
use crate::policy::locate::{FieldPath, Locator, Position};
use crate::policy::paths::unserved_method;
use crate::policy::pattern::Pattern;
use crate::policy::{PolicyError, ServedMethods};

/// Per-identity fair share: how many calls of one identity run at once;
/// more wait, in arrival order, for one of them to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FairShare {
    /// Off: calls never wait for their identity's share.
    pub enabled: bool,
    /// Calls of one identity running at once. Default 64.
    pub max_in_flight_per_identity: u32,
    /// How long a call may wait for its share before it is refused with
    /// RESOURCE_EXHAUSTED. Default 10 s (the call's deadline ends it sooner
    /// if it is shorter).
    pub max_wait: Duration,
}

impl Default for FairShare {
    fn default() -> Self {
        Self {
            enabled: true,
            max_in_flight_per_identity: 64,
            max_wait: Duration::from_secs(10),
        }
    }
}

/// A rate: `per_second` on average, with bursts of up to `burst` calls
/// (a GCRA token bucket).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Calls per second, on average; above 0.
    pub per_second: f64,
    /// Calls allowed at once after a quiet spell; at least 1.
    pub burst: u32,
}

/// What one limit allows: a rate, calls in flight, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Allowance {
    /// How fast calls may start; `None`: no rate limit.
    pub rate: Option<Rate>,
    /// Calls that may be in flight at once; `None`: no limit.
    pub max_in_flight: Option<u32>,
}

/// One entry of `limits`: an allowance for each identity it matches.
#[derive(Clone, Debug)]
pub struct LimitEntry {
    /// Unique in the file; metrics and logs name the entry by it.
    pub name: String,
    /// The principal pattern, as written, for messages.
    pub principal: String,
    /// The method pattern, as written; `None` matches every method.
    pub method: Option<String>,
    pub(crate) principal_pattern: Pattern,
    pub(crate) method_pattern: Option<Pattern>,
    /// What each identity it matches may do.
    pub allowance: Allowance,
}

impl LimitEntry {
    /// Whether this entry applies to a call of `method` from a peer with
    /// these principal names (matched as the policy matches them: any name).
    pub fn matches<'a>(&self, mut names: impl Iterator<Item = &'a str>, method: &str) -> bool {
        self.method_pattern
            .as_ref()
            .is_none_or(|m| m.matches(method.as_bytes()))
            && names.any(|n| self.principal_pattern.matches(n.as_bytes()))
    }

    /// Larger is more specific: the principal first (exact, then longer
    /// prefixes and suffixes, then `*`), then the method likewise, where
    /// no method is the broadest.
    fn specificity(&self) -> (u8, usize, u8, usize) {
        fn rank(p: &Pattern) -> (u8, usize) {
            match p {
                Pattern::Exact(e) => (3, e.len()),
                Pattern::Prefix(s) | Pattern::Suffix(s) => (2, s.len()),
                Pattern::NonEmpty => (1, 0),
            }
        }
        let (p, plen) = rank(&self.principal_pattern);
        let (m, mlen) = self.method_pattern.as_ref().map_or((0, 0), rank);
        (p, plen, m, mlen)
    }
}

/// A limits file, compiled.
#[derive(Clone, Debug, Default)]
pub struct LimitsConfig {
    /// Each identity's share of calls running at once.
    pub fair_share: FairShare,
    /// Across every caller.
    pub total: Allowance,
    /// Most specific first; among equally specific entries, file order.
    pub entries: Vec<LimitEntry>,
    /// Sent as `grpc-retry-pushback-ms` when a call is refused for calls in
    /// flight or for its wait (a rate refusal says exactly when the next
    /// call fits instead). Default 100 ms.
    pub pushback: Duration,
    /// Log and count what would be refused, refuse nothing.
    pub dry_run: bool,
    /// Identities whose rate state is kept per limit; past it, new
    /// identities share one state (stricter, never fresher). Default 10,000.
    pub max_tracked_identities: usize,
}

impl LimitsConfig {
    /// The defaults: fair share only, as with no limits file.
    pub fn fair_share_only() -> Self {
        Self {
            pushback: Duration::from_millis(100),
            max_tracked_identities: 10_000,
            ..Self::default()
        }
    }

    /// The entry that governs a call, if any: the most specific match.
    pub fn entry_for<'a>(
        &self,
        names: impl Iterator<Item = &'a str> + Clone,
        method: &str,
    ) -> Option<(usize, &LimitEntry)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.matches(names.clone(), method))
    }
}

/// One problem in a limits file: `field: message (line L, column C)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsError {
    /// The field's path in the document, such as `limits[2].rate.burst`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// Its line and column in the file, when known.
    pub at: Option<Position>,
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)?;
        if let Some(at) = self.at {
            write!(f, " ({at})")?;
        }
        Ok(())
    }
}

const TOP: &[&str] = &[
    "fair_share",
    "total",
    "limits",
    "pushback_ms",
    "dry_run",
    "max_tracked_identities",
];
const FAIR: &[&str] = &["enabled", "max_in_flight_per_identity", "max_wait_ms"];
const ALLOWANCE: &[&str] = &["rate", "max_in_flight"];
const ENTRY: &[&str] = &["name", "principal", "method", "rate", "max_in_flight"];
const RATE: &[&str] = &["per_second", "burst"];

/// Parses and checks a limits file. Methods named exactly are checked
/// against `served` when it is given. Every problem is returned, in file
/// order.
pub fn parse(text: &str, served: Option<&ServedMethods>) -> Result<LimitsConfig, Vec<LimitsError>> {
    let value = parse_value(text).map_err(|e| {
        let PolicyError::Invalid { field, message, at } = e;
        vec![LimitsError { field, message, at }]
    })?;
    let mut walk = Walk::default();
    let config = read(&mut walk, &value, served);
    if walk.problems.is_empty() {
        return Ok(config);
    }
    let mut locator = Locator::new(text);
    let mut errors: Vec<LimitsError> = walk
        .problems
        .into_iter()
        .map(|(path, message)| LimitsError {
            at: locator.locate(&path),
            field: path.to_string(),
            message,
        })
        .collect();
    // In file order (stable: one field's problems keep theirs).
    errors.sort_by_key(|e| e.at);
    Err(errors)
}

fn read(walk: &mut Walk, doc: &Value, served: Option<&ServedMethods>) -> LimitsConfig {
    let mut config = LimitsConfig::fair_share_only();
    let root = FieldPath::root();
    let Some(map) = walk.object(doc, &root, TOP) else {
        return config;
    };
    if let Some(v) = walk.field(map, &root, "fair_share") {
        let at = root.key("fair_share");
        if let Some(fair) = walk.object(v, &at, FAIR) {
            if let Some(b) = walk.field(fair, &at, "enabled") {
                config.fair_share.enabled = walk.bool(b, &at.key("enabled")).unwrap_or(true);
            }
            if let Some(n) = count(walk, fair, &at, "max_in_flight_per_identity", 1, 1 << 20) {
                config.fair_share.max_in_flight_per_identity = n as u32;
            }
            if let Some(ms) = count(walk, fair, &at, "max_wait_ms", 0, 3_600_000) {
                config.fair_share.max_wait = Duration::from_millis(ms);
            }
        }
    }
    if let Some(v) = walk.field(map, &root, "total") {
        let at = root.key("total");
        if let Some(total) = walk.object(v, &at, ALLOWANCE) {
            config.total = allowance(walk, total, &at);
            if !sets_a_limit(total) {
                walk.problem(&at, "sets no limit: give `rate`, `max_in_flight` or both");
            }
        }
    }
    if let Some(ms) = count(walk, map, &root, "pushback_ms", 0, 3_600_000) {
        config.pushback = Duration::from_millis(ms);
    }
    if let Some(b) = walk.field(map, &root, "dry_run") {
        config.dry_run = walk.bool(b, &root.key("dry_run")).unwrap_or(false);
    }
    if let Some(n) = count(walk, map, &root, "max_tracked_identities", 1, 10_000_000) {
        config.max_tracked_identities = n as usize;
    }
    if let Some(v) = walk.field(map, &root, "limits") {
        let at = root.key("limits");
        let list = walk.array(v, &at).unwrap_or_default();
        let mut names = HashSet::new();
        let mut scopes = HashSet::new();
        for (i, v) in list.iter().enumerate() {
            let at = at.index(i);
            let Some(e) = entry(walk, v, &at, served) else {
                continue;
            };
            if !names.insert(e.name.clone()) {
                walk.problem(
                    &at.key("name"),
                    format!("duplicate limit name {:?}", e.name),
                );
            }
            if !scopes.insert((e.principal.clone(), e.method.clone())) {
                walk.problem(
                    &at,
                    "another limit has the same principal and method; merge them",
                );
            }
            config.entries.push(e);
        }
    }
    // Stable: equally specific entries keep their file order.
    config
        .entries
        .sort_by_key(|e| std::cmp::Reverse(e.specificity()));
    config
}

fn entry(
    walk: &mut Walk,
    v: &Value,
    at: &FieldPath,
    served: Option<&ServedMethods>,
) -> Option<LimitEntry> {
    let map = walk.object(v, at, ENTRY)?;
    let name = required_string(walk, map, at, "name");
    if let Some(n) = &name {
        let ok = !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            walk.problem(
                &at.key("name"),
                "must be non-empty and use only letters, digits, `-`, `_` and `.` (it becomes a metric label)",
            );
        }
    }
    let principal = required_string(walk, map, at, "principal");
    if principal.as_deref() == Some("") {
        walk.problem(
            &at.key("principal"),
            "must not be empty; `*` matches every identity",
        );
    }
    let method = walk
        .field(map, at, "method")
        .and_then(|m| walk.string(m, &at.key("method")))
        .map(str::to_owned);
    if let Some(m) = &method {
        check_method(walk, m, &at.key("method"), served);
    }
    let allowance = allowance(walk, map, at);
    if !sets_a_limit(map) {
        walk.problem(at, "sets no limit: give `rate`, `max_in_flight` or both");
    }
    let (name, principal) = (name?, principal?);
    Some(LimitEntry {
        principal_pattern: Pattern::parse(&principal),
        method_pattern: method.as_deref().map(Pattern::parse),
        name,
        principal,
        method,
        allowance,
    })
}

fn check_method(walk: &mut Walk, m: &str, at: &FieldPath, served: Option<&ServedMethods>) {
    let pattern = Pattern::parse(m);
    match &pattern {
        Pattern::Exact(_) | Pattern::Prefix(_) if !m.starts_with('/') => walk.problem(
            at,
            "a method path starts with `/` (`/package.Service/Method`, `/package.Service/*` or `*`)",
        ),
        Pattern::Exact(_) => {
            if let Some(why) = served.and_then(|s| unserved_method(m, s)) {
                walk.problem(at, why);
            }
        }
        _ => {}
    }
}

fn allowance(walk: &mut Walk, map: &Map<String, Value>, at: &FieldPath) -> Allowance {
    let rate = walk.field(map, at, "rate").and_then(|v| {
        let at = at.key("rate");
        let r = walk.object(v, &at, RATE)?;
        let per_second = match walk.field(r, &at, "per_second") {
            None => {
                walk.problem(&at, "missing field `per_second`");
                None
            }
            Some(v) => match v.as_f64() {
                Some(x) if x > 0.0 && x <= 1e9 => Some(x),
                _ => {
                    walk.problem(
                        &at.key("per_second"),
                        "must be a number above 0 and at most 1e9",
                    );
                    None
                }
            },
        };
        let burst = count(walk, r, &at, "burst", 1, u32::MAX as u64);
        let per_second = per_second?;
        // Default burst: one second's worth, at least one call.
        let burst = burst.map_or_else(|| per_second.ceil().max(1.0) as u32, |b| b as u32);
        Some(Rate { per_second, burst })
    });
    let max_in_flight = count(walk, map, at, "max_in_flight", 1, u32::MAX as u64).map(|n| n as u32);
    Allowance {
        rate,
        max_in_flight,
    }
}

/// Whether an entry or the total names a limit at all (whether or not it
/// is valid: an invalid one has its own message).
fn sets_a_limit(map: &Map<String, Value>) -> bool {
    map.contains_key("rate") || map.contains_key("max_in_flight")
}

fn required_string(
    walk: &mut Walk,
    map: &Map<String, Value>,
    at: &FieldPath,
    name: &str,
) -> Option<String> {
    match walk.field(map, at, name) {
        None => {
            if !map.contains_key(name) {
                walk.problem(at, format!("missing field `{name}`"));
            }
            None
        }
        Some(v) => walk.string(v, &at.key(name)).map(str::to_owned),
    }
}

/// An integer field within `min..=max`, if present and valid.
fn count(
    walk: &mut Walk,
    map: &Map<String, Value>,
    at: &FieldPath,
    name: &str,
    min: u64,
    max: u64,
) -> Option<u64> {
    let v = walk.field(map, at, name)?;
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            walk.problem(
                &at.key(name),
                format!("must be a whole number from {min} to {max}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text, None)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn an_empty_file_is_fair_share_only() {
        let c = parse("{}", None).unwrap();
        assert!(c.fair_share.enabled);
        assert_eq!(c.fair_share.max_in_flight_per_identity, 64);
        assert!(c.entries.is_empty() && !c.dry_run);
        assert_eq!(c.total, Allowance::default());
    }

    #[test]
    fn every_problem_is_reported_with_its_path_line_and_column() {
        let text = r#"{
  "fair_share": {"max_in_flight_per_identity": 0},
  "limits": [
    {"name": "a b", "principal": "x", "rate": {"per_second": -1}},
    {"name": "c", "principal": "y", "max_in_flight": 2, "extra": 1},
    {"name": "c", "principal": "y", "method": "pkg.S/M", "max_in_flight": 2},
    {"principal": "z"}
  ],
  "pushback_ms": "soon"
}"#;
        let e = errors(text);
        let expected = [
            "fair_share.max_in_flight_per_identity: must be a whole number from 1 to 1048576 (line 2, column 48)",
            "limits[0].name: must be non-empty and use only letters, digits, `-`, `_` and `.` (it becomes a metric label) (line 4, column 14)",
            "limits[0].rate.per_second: must be a number above 0 and at most 1e9 (line 4, column 62)",
            "limits[1].extra: unknown field `extra`, expected one of `name`, `principal`, `method`, `rate`, `max_in_flight` (line 5, column 66)",
            "limits[2].name: duplicate limit name \"c\" (line 6, column 14)",
            "limits[2].method: a method path starts with `/` (`/package.Service/Method`, `/package.Service/*` or `*`) (line 6, column 47)",
            "limits[3]: missing field `name` (line 7, column 5)",
            "limits[3]: sets no limit: give `rate`, `max_in_flight` or both (line 7, column 5)",
            "pushback_ms: must be a whole number from 0 to 3600000 (line 9, column 18)",
        ];
        assert_eq!(e, expected, "{e:#?}");
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_are_refused_with_their_position() {
        assert_eq!(
            errors("{\"dry_run\": true,\n \"dry_run\": false}"),
            ["(document): duplicate field `dry_run` (line 2, column 10)"]
        );
        assert_eq!(
            errors("{\"limits\": [}"),
            ["limits[0]: expected value (line 1, column 13)"]
        );
    }

    #[test]
    fn the_most_specific_entry_governs_a_call() {
        let c = parse(
            r#"{"limits": [
                {"name": "any", "principal": "*", "max_in_flight": 1},
                {"name": "team", "principal": "spiffe://td/team/*", "max_in_flight": 2},
                {"name": "team-writes", "principal": "spiffe://td/team/*", "method": "/s.S/Put", "max_in_flight": 3},
                {"name": "job", "principal": "spiffe://td/team/job", "max_in_flight": 4},
                {"name": "t", "principal": "spiffe://td/t*", "max_in_flight": 5}
            ]}"#,
            None,
        )
        .unwrap();
        let governs = |name: &str, method: &str| {
            c.entry_for([name].into_iter(), method)
                .map(|(_, e)| e.name.as_str())
        };
        assert_eq!(governs("spiffe://td/team/job", "/s.S/Put"), Some("job"));
        assert_eq!(
            governs("spiffe://td/team/web", "/s.S/Put"),
            Some("team-writes")
        );
        assert_eq!(governs("spiffe://td/team/web", "/s.S/Get"), Some("team"));
        assert_eq!(governs("spiffe://td/tool", "/s.S/Get"), Some("t"));
        assert_eq!(governs("spiffe://other/x", "/s.S/Get"), Some("any"));
    }

    #[test]
    fn an_exact_method_must_be_served() {
        let mut served = ServedMethods::new();
        served.add_method("/s.S/Put");
        let e = parse(
            r#"{"limits": [{"name": "w", "principal": "*", "method": "/s.S/Pot", "max_in_flight": 1}]}"#,
            Some(&served),
        )
        .unwrap_err();
        assert!(e[0].message.contains("did you mean \"/s.S/Put\""), "{e:?}");
    }

    #[test]
    fn a_rate_without_burst_allows_one_seconds_worth() {
        let c = parse(r#"{"total": {"rate": {"per_second": 2.5}}}"#, None).unwrap();
        assert_eq!(
            c.total.rate,
            Some(Rate {
                per_second: 2.5,
                burst: 3
            })
        );
    }
}
