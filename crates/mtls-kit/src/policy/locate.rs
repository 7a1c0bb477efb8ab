//! Field paths into a policy document, and where they are in its text.
//!
//! The checks walk a parsed `serde_json::Value`, which has no positions. To
//! point an operator at the line and column of a problem, the field's path
//! is followed again through the raw text: serde_json hands back each value
//! as a [`RawValue`], a slice of the source, and the slice's offset in the
//! source is the value's position. Nothing here parses JSON by hand.

use std::collections::HashMap;
use std::fmt;

use serde_json::value::RawValue;

/// A line and column in a policy file, both counted from 1 (columns in
/// characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1, in characters (not bytes).
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// One step into a document: an object key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A key of an object.
    Key(String),
    /// An index into an array, from 0.
    Index(usize),
}

/// A path into a policy document, such as `allow_rules[2].request.paths[0]`.
/// The empty path is the document itself, shown as `(document)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Step>);

impl FieldPath {
    /// The empty path: the document itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path, one key deeper.
    pub fn key(&self, key: &str) -> Self {
        let mut steps = self.0.clone();
        steps.push(Step::Key(key.to_owned()));
        Self(steps)
    }

    /// This path, one index deeper.
    pub fn index(&self, i: usize) -> Self {
        let mut steps = self.0.clone();
        steps.push(Step::Index(i));
        Self(steps)
    }

    /// The steps from the document down, outermost first.
    pub fn steps(&self) -> &[Step] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if i == 0 => f.write_str(k)?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where `path` is in `text`: the position of the value at `path`, or, if
/// the path does not exist (a missing field), of its deepest ancestor that
/// does. `None` if `text` is not JSON at all. To locate many paths in one
/// text, use a [`Locator`].
pub fn locate(text: &str, path: &FieldPath) -> Option<Position> {
    Locator::new(text).locate(path)
}

/// Locates many paths in one text. Each JSON value on the way is split into
/// its children once and remembered, and lines are indexed once, so that a
/// large policy with many problems is not re-read for each one.
pub struct Locator<'t> {
    text: &'t str,
    root: Option<&'t RawValue>,
    /// Children of the values already split, by the value's byte offset.
    children: HashMap<usize, Children<'t>>,
    /// Byte offsets where lines start.
    line_starts: Vec<usize>,
    /// The last position found, as (byte offset, column): columns count
    /// characters, and a policy written on one line (as tools write JSON)
    /// would otherwise be re-counted from its start for every problem,
    /// quadratic in its size. Problems come in file order, so counting on
    /// from the last one is linear.
    last: (usize, usize),
}

enum Children<'t> {
    Object(HashMap<String, &'t RawValue>),
    Array(Vec<&'t RawValue>),
    Scalar,
}

impl<'t> Locator<'t> {
    /// Reads `text` once. If it is not JSON, every [`Self::locate`] is
    /// `None`.
    pub fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            text,
            root: serde_json::from_str(text).ok(),
            children: HashMap::new(),
            line_starts,
            last: (0, 1),
        }
    }

    /// As [`locate`].
    pub fn locate(&mut self, path: &FieldPath) -> Option<Position> {
        let mut raw = self.root?;
        for step in path.steps() {
            let offset = self.offset(raw);
            let children = self.children.entry(offset).or_insert_with(|| {
                let json = raw.get();
                if let Ok(map) = serde_json::from_str(json) {
                    Children::Object(map)
                } else if let Ok(list) = serde_json::from_str(json) {
                    Children::Array(list)
                } else {
                    Children::Scalar
                }
            });
            let child = match (step, &*children) {
                (Step::Key(k), Children::Object(map)) => map.get(k).copied(),
                (Step::Index(i), Children::Array(list)) => list.get(*i).copied(),
                _ => None,
            };
            match child {
                Some(c) => raw = c,
                None => break,
            }
        }
        let offset = self.offset(raw);
        Some(self.position_of(offset))
    }

    /// The byte offset of `raw`, a slice of the text, in the text.
    fn offset(&self, raw: &RawValue) -> usize {
        (raw.get().as_ptr() as usize).saturating_sub(self.text.as_ptr() as usize)
    }

    fn position_of(&mut self, offset: usize) -> Position {
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        let (last_offset, last_column) = self.last;
        // Count on from the last position when it is earlier on this line.
        let (from, column) = if (start..=offset).contains(&last_offset) {
            (last_offset, last_column)
        } else {
            (start, 1)
        };
        let column = column + self.text.get(from..offset).map_or(0, |s| s.chars().count());
        self.last = (offset, column);
        Position { line, column }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_print_as_operators_write_them() {
        let p = FieldPath::root().key("allow_rules").index(2).key("request");
        assert_eq!(p.to_string(), "allow_rules[2].request");
        assert_eq!(FieldPath::root().to_string(), "(document)");
    }

    #[test]
    fn values_are_located_by_path() {
        let text = "{\n  \"a\": [1,\n    {\"b\": \"x\"}]\n}";
        let at = |p: &FieldPath| locate(text, p).unwrap();
        assert_eq!(at(&FieldPath::root()), Position { line: 1, column: 1 });
        let a = FieldPath::root().key("a");
        assert_eq!(at(&a), Position { line: 2, column: 8 });
        assert_eq!(
            at(&a.index(1).key("b")),
            Position {
                line: 3,
                column: 11
            }
        );
        // A missing field points at the object that should hold it.
        assert_eq!(at(&a.index(1).key("c")), Position { line: 3, column: 5 });
        assert_eq!(locate("{", &a), None);
    }

    #[test]
    fn one_locator_finds_the_same_positions_in_any_order() {
        // One line, multi-byte characters: columns count characters, and
        // counting on from an earlier position must agree with counting
        // from the line's start.
        let text = r#"{"é": ["ü", "x", {"k": "ß"}], "z": 1}"#;
        let paths = [
            FieldPath::root().key("é").index(0),
            FieldPath::root().key("é").index(1),
            FieldPath::root().key("é").index(2).key("k"),
            FieldPath::root().key("z"),
        ];
        let alone: Vec<_> = paths.iter().map(|p| locate(text, p).unwrap()).collect();
        assert_eq!(alone[0], Position { line: 1, column: 8 });
        assert_eq!(
            alone[3],
            Position {
                line: 1,
                column: 36
            }
        );
        let mut locator = Locator::new(text);
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            for i in order {
                assert_eq!(locator.locate(&paths[i]), Some(alone[i]), "{}", paths[i]);
            }
        }
    }
}
