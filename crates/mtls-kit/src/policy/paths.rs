//! A policy's `paths` against the methods the server serves.
//!
//! A43 accepts any string as a path, and gRPC loads such a policy; a path
//! that names no served method is still almost always a typo, and in a deny
//! rule a typo fails open. So each one gets a warning naming the rule, the
//! pattern and the closest served method. Warnings never change what loads
//! (decision parity with gRPC); a server can be told to refuse instead.

use super::file::PolicySpec;
use super::locate::FieldPath;
use super::pattern::Pattern;
use super::served::ServedMethods;
use super::RuleList;

/// A path pattern that matches no served method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathWarning {
    /// Where the pattern is: `allow_rules[2].request.paths[0]`.
    pub field: FieldPath,
    /// The name of the rule that holds it.
    pub rule: String,
    /// The pattern as written.
    pub pattern: String,
    /// The served method (or `/pkg.Service/*`, `*/Method`) it most likely
    /// meant.
    pub suggestion: Option<String>,
    /// Why the suggestion, when it is more than "closest by spelling".
    pub hint: Option<&'static str>,
}

impl PathWarning {
    /// What is wrong, for an operator.
    pub fn message(&self) -> String {
        let mut m = format!(
            "rule {:?}: path {:?} matches no method this server serves",
            self.rule, self.pattern
        );
        if let Some(s) = &self.suggestion {
            m.push_str(&format!("; did you mean {s:?}?"));
        }
        if let Some(h) = self.hint {
            m.push_str(&format!(" ({h})"));
        }
        m
    }
}

/// Every path pattern of `spec` that matches none of `served`, in policy
/// order (deny rules first).
pub fn check(spec: &PolicySpec, served: &ServedMethods) -> Vec<PathWarning> {
    let mut warnings = Vec::new();
    for (list, rules) in [
        (RuleList::Deny, &spec.deny_rules),
        (RuleList::Allow, &spec.allow_rules),
    ] {
        for (i, rule) in rules.iter().enumerate() {
            for (j, pattern) in rule.paths.iter().enumerate() {
                if matches_something(pattern, served) {
                    continue;
                }
                let (suggestion, hint) = suggest(pattern, served);
                warnings.push(PathWarning {
                    field: FieldPath::root()
                        .key(list.field())
                        .index(i)
                        .key("request")
                        .key("paths")
                        .index(j),
                    rule: rule.name.clone(),
                    pattern: pattern.clone(),
                    suggestion,
                    hint,
                });
            }
        }
    }
    warnings
}

/// Why `method`, a concrete `/pkg.Service/Method` (a test case's, say),
/// cannot be one this server serves, with the closest served method; `None`
/// when it is served, or might be (a service whose methods are unknown).
pub fn unserved_method(method: &str, served: &ServedMethods) -> Option<String> {
    if served.contains(method) || served.in_opaque_service(method) {
        return None;
    }
    let (suggestion, hint) = suggest(method, served);
    let mut m = format!("method {method:?} is not served by this server");
    if let Some(s) = suggestion {
        m.push_str(&format!("; did you mean {s:?}?"));
    }
    if let Some(h) = hint {
        m.push_str(&format!(" ({h})"));
    }
    Some(m)
}

/// Whether `pattern` matches a served method, or might (a service whose
/// methods are unknown).
fn matches_something(pattern: &str, served: &ServedMethods) -> bool {
    let compiled = Pattern::parse(pattern);
    if served.methods().any(|m| compiled.matches(m.as_bytes())) {
        return true;
    }
    match compiled {
        Pattern::NonEmpty => true,
        Pattern::Exact(_) => served.in_opaque_service(pattern),
        // A prefix that reaches into, or covers, an unknown service.
        Pattern::Prefix(p) => served.opaque_services().any(|s| {
            let service = format!("/{s}/");
            service.as_bytes().starts_with(&p) || p.starts_with(service.as_bytes())
        }),
        // Any unknown service might have such a method.
        Pattern::Suffix(_) => served.opaque_services().next().is_some(),
    }
}

/// The closest served method (or service prefix, or method suffix) to
/// `pattern`, and a hint when the mistake is a well-known one.
fn suggest(pattern: &str, served: &ServedMethods) -> (Option<String>, Option<&'static str>) {
    let candidates: Vec<String> = match Pattern::parse(pattern) {
        Pattern::Exact(_) | Pattern::NonEmpty => served.methods().map(str::to_owned).collect(),
        Pattern::Prefix(_) => {
            let mut services: Vec<String> = served
                .methods()
                .filter_map(|m| m.rfind('/').map(|i| format!("{}*", &m[..=i])))
                .collect();
            services.dedup();
            services
        }
        Pattern::Suffix(_) => {
            let mut names: Vec<String> = served
                .methods()
                .filter_map(|m| m.rfind('/').map(|i| format!("*{}", &m[i..])))
                .collect();
            names.sort();
            names.dedup();
            names
        }
    };
    if !pattern.starts_with('/') && !pattern.starts_with('*') {
        let slashed = format!("/{pattern}");
        if candidates.contains(&slashed) {
            return (Some(slashed), Some("paths start with `/`"));
        }
    }
    if let Some(same) = candidates.iter().find(|c| c.eq_ignore_ascii_case(pattern)) {
        return (Some(same.clone()), Some("paths are case-sensitive"));
    }
    let closest = candidates.into_iter().min_by_key(|c| {
        strsim::levenshtein(&c.to_ascii_lowercase(), &pattern.to_ascii_lowercase())
    });
    (closest, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::file;

    fn served() -> ServedMethods {
        let mut s = ServedMethods::new();
        for m in [
            "/shop.v1.Cart/Add",
            "/shop.v1.Cart/Remove",
            "/grpc.health.v1.Health/Check",
        ] {
            s.add_method(m);
        }
        s
    }

    fn warnings(paths: &[&str]) -> Vec<String> {
        let doc = serde_json::json!({"name": "p",
            "deny_rules": [{"name": "d", "request": {"paths": paths}}],
            "allow_rules": [{"name": "a"}]});
        let spec = file::parse(&doc.to_string()).unwrap();
        check(&spec, &served())
            .iter()
            .map(|w| format!("{}: {}", w.field, w.message()))
            .collect()
    }

    #[test]
    fn paths_that_match_served_methods_are_quiet() {
        assert!(warnings(&[
            "/shop.v1.Cart/Add",
            "/shop.v1.Cart/*",
            "*/Check",
            "*",
            "/shop.*"
        ])
        .is_empty());
    }

    #[test]
    fn typos_get_the_closest_served_method() {
        assert_eq!(
            warnings(&["/shop.v1.Cart/Ad", "shop.v1.Cart/Remove", "/shop.v1.cart/add", "/shop.v1.Crat/*", "*/Chek"]),
            [
                "deny_rules[0].request.paths[0]: rule \"d\": path \"/shop.v1.Cart/Ad\" matches no method this server serves; did you mean \"/shop.v1.Cart/Add\"?",
                "deny_rules[0].request.paths[1]: rule \"d\": path \"shop.v1.Cart/Remove\" matches no method this server serves; did you mean \"/shop.v1.Cart/Remove\"? (paths start with `/`)",
                "deny_rules[0].request.paths[2]: rule \"d\": path \"/shop.v1.cart/add\" matches no method this server serves; did you mean \"/shop.v1.Cart/Add\"? (paths are case-sensitive)",
                "deny_rules[0].request.paths[3]: rule \"d\": path \"/shop.v1.Crat/*\" matches no method this server serves; did you mean \"/shop.v1.Cart/*\"?",
                "deny_rules[0].request.paths[4]: rule \"d\": path \"*/Chek\" matches no method this server serves; did you mean \"*/Check\"?",
            ]
        );
    }

    #[test]
    fn an_unserved_method_gets_the_closest_served_one() {
        let s = served();
        assert_eq!(unserved_method("/shop.v1.Cart/Add", &s), None);
        assert_eq!(
            unserved_method("/shop.v1.Cart/Ad", &s).as_deref(),
            Some("method \"/shop.v1.Cart/Ad\" is not served by this server; did you mean \"/shop.v1.Cart/Add\"?")
        );
        assert_eq!(
            unserved_method("/shop.v1.cart/add", &s).as_deref(),
            Some("method \"/shop.v1.cart/add\" is not served by this server; did you mean \"/shop.v1.Cart/Add\"? (paths are case-sensitive)")
        );
        let mut opaque = served();
        opaque.add_opaque_service("other.v1.Thing");
        assert_eq!(unserved_method("/other.v1.Thing/Anything", &opaque), None);
    }

    #[test]
    fn services_without_descriptors_are_not_second_guessed() {
        let mut s = served();
        s.add_opaque_service("other.v1.Thing");
        let doc = serde_json::json!({"name": "p", "allow_rules": [{"name": "a",
            "request": {"paths": ["/other.v1.Thing/Anything", "/other.*", "*/Whatever", "/nope.v1.X/Y"]}}]});
        let spec = file::parse(&doc.to_string()).unwrap();
        let got: Vec<String> = check(&spec, &s).into_iter().map(|w| w.pattern).collect();
        assert_eq!(got, ["/nope.v1.X/Y"]);
    }
}
