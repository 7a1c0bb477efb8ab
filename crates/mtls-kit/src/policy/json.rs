//! Reading a policy document as JSON, strictly, and walking it with every
//! problem collected rather than the first one returned.
//!
//! Why not derive `Deserialize` for the schema: serde's derived structs also
//! accept a JSON array for a struct (its sequence form, so `"source": []`
//! would parse), stop at the first error, and serde_json's `from_reader`
//! style entry points accept trailing data unless asked. Parsing to a
//! [`Value`] first and checking the shape by hand-written walk (not a
//! hand-written parser) fixes all three.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::locate::{FieldPath, Position};
use super::PolicyError;

/// Parses `text` as exactly one JSON value. Syntax errors, duplicate keys
/// and anything after the value are refused with their position.
pub(crate) fn parse_value(text: &str) -> Result<Value, PolicyError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value: StrictValue = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = match e.path().to_string().as_str() {
            "." => "(document)".to_owned(),
            other => other.to_owned(),
        };
        let inner = e.into_inner();
        let message = without_position(&inner);
        located(field, message, &inner)
    })?;
    // serde_json stops after the value; what follows it must be whitespace.
    de.end().map_err(|e| {
        located(
            "(document)".to_owned(),
            "unexpected data after the end of the policy's JSON value".to_owned(),
            &e,
        )
    })?;
    Ok(value.0)
}

fn located(field: String, message: String, e: &serde_json::Error) -> PolicyError {
    PolicyError::Invalid {
        field,
        message,
        at: (e.line() > 0).then_some(Position {
            line: e.line(),
            column: e.column(),
        }),
    }
}

/// serde_json's message without its " at line L column C" tail: the
/// position is carried separately, so it is printed once.
fn without_position(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let tail = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&tail).unwrap_or(&full).to_owned()
}

/// A `Value` whose objects have no duplicate keys. serde_json's own `Value`
/// keeps the last of two equal keys; a policy with `"allow_rules"` twice is
/// a mistake, so it is refused (as the derived structs used to).
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut list = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            list.push(v);
        }
        Ok(StrictValue(Value::Array(list)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictValue, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let StrictValue(v) = access.next_value()?;
            map.insert(key, v);
        }
        Ok(StrictValue(Value::Object(map)))
    }
}

/// What a JSON value is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks the shape of a document, collecting every problem with its
/// field path. Each getter returns `None` (after recording why) when the
/// value is not what the schema says, so the caller skips it and goes on.
#[derive(Default)]
pub(crate) struct Walk {
    pub problems: Vec<(FieldPath, String)>,
}

impl Walk {
    pub fn problem(&mut self, at: &FieldPath, message: impl Into<String>) {
        self.problems.push((at.clone(), message.into()));
    }

    fn wrong_type(&mut self, at: &FieldPath, expected: &str, v: &Value) {
        self.problem(
            at,
            format!("invalid type: expected {expected}, found {}", kind(v)),
        );
    }

    /// `v` as an object holding only `fields`; each unknown field is a
    /// problem (A43: a field a server does not understand must not be
    /// skipped silently).
    pub fn object<'v>(
        &mut self,
        v: &'v Value,
        at: &FieldPath,
        fields: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = v else {
            self.wrong_type(at, "an object", v);
            return None;
        };
        for key in map.keys() {
            if !fields.contains(&key.as_str()) {
                let expected: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
                self.problem(
                    &at.key(key),
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        expected.join(", ")
                    ),
                );
            }
        }
        Some(map)
    }

    /// The field `name` of `map`, if present. An explicit `null` is not
    /// "absent": gRPC C++ and Java refuse it, so it is a problem here.
    pub fn field<'v>(
        &mut self,
        map: &'v Map<String, Value>,
        at: &FieldPath,
        name: &str,
    ) -> Option<&'v Value> {
        match map.get(name) {
            Some(Value::Null) => {
                self.problem(
                    &at.key(name),
                    "invalid type: null; leave the field out instead (gRPC C++ and Java refuse null)",
                );
                None
            }
            other => other,
        }
    }

    /// Whether `v` is an object, of any fields.
    pub fn any_object(&mut self, v: &Value, at: &FieldPath) -> bool {
        let ok = v.is_object();
        if !ok {
            self.wrong_type(at, "an object", v);
        }
        ok
    }

    pub fn string<'v>(&mut self, v: &'v Value, at: &FieldPath) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            _ => {
                self.wrong_type(at, "a string", v);
                None
            }
        }
    }

    pub fn bool(&mut self, v: &Value, at: &FieldPath) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(at, "a boolean", v);
                None
            }
        }
    }

    pub fn array<'v>(&mut self, v: &'v Value, at: &FieldPath) -> Option<&'v [Value]> {
        match v {
            Value::Array(list) => Some(list),
            _ => {
                self.wrong_type(at, "an array", v);
                None
            }
        }
    }

    /// An array of strings; elements that are not strings are problems and
    /// are left out of the result.
    pub fn strings(&mut self, v: &Value, at: &FieldPath) -> Option<Vec<String>> {
        let list = self.array(v, at)?;
        Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, s)| self.string(s, &at.index(i)).map(str::to_owned))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_only() {
        assert!(parse_value(r#"{"a": 1}  "#).is_ok());
        let e = parse_value(r#"{"a": 1} x"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "(document): unexpected data after the end of the policy's JSON value (line 1, column 10)"
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let e = parse_value("{\"a\": {\"b\": 1,\n \"b\": 2}}").unwrap_err();
        let PolicyError::Invalid { field, message, at } = e;
        assert_eq!(field, "a");
        assert_eq!(message, "duplicate field `b`");
        assert_eq!(at.map(|p| p.line), Some(2));
    }
}
