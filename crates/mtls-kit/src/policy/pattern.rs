//! The string patterns of an A43 policy, and an index over many of them.
//!
//! gRPC translates each policy string into an Envoy string matcher:
//! `"*"` matches any non-empty value, a leading `*` makes a suffix match, a
//! trailing `*` a prefix match, anything else is exact; a `*` anywhere else is
//! literal. When a value both starts and ends with `*` (`"*abc*"`), gRPC C++
//! and Java check the leading `*` first, so it is the suffix `"abc*"`; we do
//! the same. (gRPC Go checks the trailing `*` first; such patterns are best
//! avoided.) Matching is byte-wise and case-sensitive.

use std::collections::HashMap;

use smallvec::SmallVec;

/// One compiled policy string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Anything without a leading or trailing `*`: the whole value.
    Exact(Box<[u8]>),
    /// `"abc*"`: values that start with `abc`.
    Prefix(Box<[u8]>),
    /// `"*abc"`: values that end with `abc`.
    Suffix(Box<[u8]>),
    /// `"*"`: present and non-empty.
    NonEmpty,
}

impl Pattern {
    /// Compiles one policy string as gRPC does. Every string is a pattern,
    /// so this cannot fail.
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Pattern::NonEmpty
        } else if let Some(suffix) = s.strip_prefix('*') {
            Pattern::Suffix(suffix.as_bytes().into())
        } else if let Some(prefix) = s.strip_suffix('*') {
            Pattern::Prefix(prefix.as_bytes().into())
        } else {
            Pattern::Exact(s.as_bytes().into())
        }
    }

    /// Whether `value` matches, byte-wise and case-sensitively.
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            Pattern::Exact(e) => value == &**e,
            Pattern::Prefix(p) => value.starts_with(p),
            Pattern::Suffix(s) => value.ends_with(s),
            Pattern::NonEmpty => !value.is_empty(),
        }
    }
}

/// Buckets of ids, gathered for one lookup. Most lookups touch a handful.
pub(crate) type Buckets<'a> = SmallVec<[&'a [u32]; 8]>;

/// Maps patterns to the (sorted) ids of the rules that use them, so that the
/// rules a value can match are found with a few hash lookups instead of a
/// scan of every rule.
///
/// A lookup costs one hash probe for exact patterns plus one per distinct
/// prefix length and per distinct suffix length present in the index: it
/// grows with the variety of pattern lengths, never with the number of rules.
#[derive(Debug, Default)]
pub(crate) struct PatternIndex {
    exact: HashMap<Box<[u8]>, Vec<u32>>,
    prefix: HashMap<Box<[u8]>, Vec<u32>>,
    prefix_lens: Vec<usize>,
    suffix: HashMap<Box<[u8]>, Vec<u32>>,
    suffix_lens: Vec<usize>,
    non_empty: Vec<u32>,
    /// Ids with no pattern in this dimension: they match every value.
    unconstrained: Vec<u32>,
}

impl PatternIndex {
    pub fn insert(&mut self, pattern: &Pattern, id: u32) {
        match pattern {
            Pattern::Exact(e) => self.exact.entry(e.clone()).or_default().push(id),
            Pattern::Prefix(p) => {
                self.prefix.entry(p.clone()).or_default().push(id);
                self.prefix_lens.push(p.len());
            }
            Pattern::Suffix(s) => {
                self.suffix.entry(s.clone()).or_default().push(id);
                self.suffix_lens.push(s.len());
            }
            Pattern::NonEmpty => self.non_empty.push(id),
        }
    }

    pub fn insert_unconstrained(&mut self, id: u32) {
        self.unconstrained.push(id);
    }

    /// Sorts and de-duplicates after the last insert. Ids must be inserted
    /// in ascending order of rule for [`super::engine`]'s early exit to pick
    /// the first matching rule; sorting here makes that hold regardless.
    pub fn finish(&mut self) {
        let all = self
            .exact
            .values_mut()
            .chain(self.prefix.values_mut())
            .chain(self.suffix.values_mut())
            .chain([&mut self.non_empty, &mut self.unconstrained]);
        for ids in all {
            ids.sort_unstable();
            ids.dedup();
            ids.shrink_to_fit();
        }
        for lens in [&mut self.prefix_lens, &mut self.suffix_lens] {
            lens.sort_unstable();
            lens.dedup();
        }
    }

    /// Adds the buckets of ids whose exact, prefix or suffix pattern matches
    /// `value`. Buckets that do not depend on the value (non-empty and
    /// unconstrained) are added by [`Self::value_independent`].
    pub fn lookup<'a>(&'a self, value: &[u8], out: &mut Buckets<'a>) {
        if let Some(ids) = self.exact.get(value) {
            out.push(ids);
        }
        for &len in &self.prefix_lens {
            if len > value.len() {
                break;
            }
            if let Some(ids) = self.prefix.get(&value[..len]) {
                out.push(ids);
            }
        }
        for &len in &self.suffix_lens {
            if len > value.len() {
                break;
            }
            if let Some(ids) = self.suffix.get(&value[value.len() - len..]) {
                out.push(ids);
            }
        }
    }

    /// Adds the buckets that match whatever the value is, given whether any
    /// looked-up value was non-empty.
    pub fn value_independent<'a>(&'a self, any_non_empty: bool, out: &mut Buckets<'a>) {
        if any_non_empty && !self.non_empty.is_empty() {
            out.push(&self.non_empty);
        }
        if !self.unconstrained.is_empty() {
            out.push(&self.unconstrained);
        }
    }
}

/// The patterns of one rule for one dimension (principals, paths, or one
/// header's values): "any of these". Small sets are scanned; large ones (a
/// rule listing thousands of principals) are indexed.
#[derive(Debug)]
pub(crate) enum PatternSet {
    /// No patterns: the dimension does not constrain the rule.
    Any,
    Few(Vec<Pattern>),
    Many(Box<PatternIndex>),
}

/// Above this many patterns a rule's own set is indexed rather than scanned.
const SCAN_LIMIT: usize = 16;

impl PatternSet {
    pub fn new(patterns: Vec<Pattern>) -> Self {
        if patterns.is_empty() {
            PatternSet::Any
        } else if patterns.len() <= SCAN_LIMIT {
            PatternSet::Few(patterns)
        } else {
            let mut index = PatternIndex::default();
            for p in &patterns {
                index.insert(p, 0);
            }
            index.finish();
            PatternSet::Many(Box::new(index))
        }
    }

    /// Whether any pattern matches any of `values`.
    pub fn matches_any<'v>(&self, values: impl Iterator<Item = &'v [u8]> + Clone) -> bool {
        match self {
            PatternSet::Any => true,
            PatternSet::Few(patterns) => patterns
                .iter()
                .any(|p| values.clone().any(|v| p.matches(v))),
            PatternSet::Many(index) => {
                let mut buckets = Buckets::new();
                let mut any_non_empty = false;
                for v in values {
                    index.lookup(v, &mut buckets);
                    any_non_empty |= !v.is_empty();
                    if !buckets.is_empty() {
                        return true;
                    }
                }
                index.value_independent(any_non_empty, &mut buckets);
                !buckets.is_empty()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, value: &str) -> bool {
        Pattern::parse(pattern).matches(value.as_bytes())
    }

    #[test]
    fn pattern_kinds() {
        assert_eq!(Pattern::parse("*"), Pattern::NonEmpty);
        assert_eq!(Pattern::parse("abc*"), Pattern::Prefix(b"abc"[..].into()));
        assert_eq!(Pattern::parse("*abc"), Pattern::Suffix(b"abc"[..].into()));
        assert_eq!(Pattern::parse("abc"), Pattern::Exact(b"abc"[..].into()));
        // Leading star wins, as in gRPC C++ and Java.
        assert_eq!(Pattern::parse("*abc*"), Pattern::Suffix(b"abc*"[..].into()));
        assert_eq!(Pattern::parse("**"), Pattern::Suffix(b"*"[..].into()));
        // A star in the middle is literal.
        assert_eq!(Pattern::parse("a*c"), Pattern::Exact(b"a*c"[..].into()));
    }

    #[test]
    fn matching() {
        assert!(m("*", "x"));
        assert!(!m("*", ""));
        assert!(m("/pkg.Svc/*", "/pkg.Svc/Get"));
        assert!(!m("/pkg.Svc/*", "/pkg.Other/Get"));
        assert!(m("*/Get", "/pkg.Svc/Get"));
        assert!(!m("*/Get", "/pkg.Svc/Put"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "Exact"), "case-sensitive");
        assert!(!m("exact", "exactly"));
        assert!(m("a*c", "a*c"));
        assert!(!m("a*c", "abc"), "a middle star is literal");
        assert!(m("", ""));
    }

    #[test]
    fn large_sets_are_indexed_and_agree_with_scanning() {
        let patterns: Vec<Pattern> = (0..100)
            .map(|i| match i % 3 {
                0 => format!("exact-{i}"),
                1 => format!("pre-{i}*"),
                _ => format!("*-suf-{i}"),
            })
            .map(|s| Pattern::parse(&s))
            .collect();
        let set = PatternSet::new(patterns.clone());
        assert!(matches!(set, PatternSet::Many(_)));
        for value in [
            "exact-3", "exact-4", "pre-4xyz", "pre-5xyz", "a-suf-5", "a-suf-6", "",
        ] {
            let scanned = patterns.iter().any(|p| p.matches(value.as_bytes()));
            assert_eq!(
                set.matches_any(std::iter::once(value.as_bytes())),
                scanned,
                "{value}"
            );
        }
    }
}
