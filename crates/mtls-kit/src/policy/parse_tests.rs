//! Strict parsing and reporting every problem at once, with positions.

use super::*;

fn errors(text: &str) -> Vec<PolicyError> {
    file::parse(text).unwrap_err().0
}

fn one(text: &str) -> (String, String, Option<(usize, usize)>) {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let PolicyError::Invalid { field, message, at } = all.remove(0);
    (field, message, at.map(|p| (p.line, p.column)))
}

#[test]
fn trailing_data_after_the_document_is_refused_with_its_position() {
    let (field, message, at) = one(r#"{"name": "authz", "allow_rules": [{"name": "a"}]} x"#);
    assert_eq!(field, "(document)");
    assert!(message.contains("after the end"), "{message}");
    assert_eq!(at, Some((1, 51)));
    // A second document is trailing data too.
    let e = errors("{\"name\": \"a\", \"allow_rules\": [{\"name\": \"a\"}]}\n{}");
    assert_eq!(e[0].position().map(|p| p.line), Some(2));
    // Whitespace after the document is fine.
    assert!(file::parse("{\"name\": \"a\", \"allow_rules\": [{\"name\": \"a\"}]}\n\n ").is_ok());
}

#[test]
fn an_array_where_the_schema_has_an_object_is_refused() {
    // serde's derived structs would read these as a struct's sequence form.
    for (source, column) in [(r#"[]"#, 55), (r#"[["spiffe://x/*"]]"#, 55)] {
        let doc =
            format!(r#"{{"name": "p", "allow_rules": [{{"name": "a", "source": {source}}}]}}"#);
        let (field, message, at) = one(&doc);
        assert_eq!(field, "allow_rules[0].source", "{doc}");
        assert_eq!(message, "invalid type: expected an object, found an array");
        assert_eq!(at, Some((1, column)), "{doc}");
    }
    for (doc, field) in [
        (r#"{"name": "p", "allow_rules": [["a"]]}"#, "allow_rules[0]"),
        (
            r#"{"name": "p", "allow_rules": [{"name": "a", "request": []}]}"#,
            "allow_rules[0].request",
        ),
        (
            r#"{"name": "p", "allow_rules": [{"name": "a", "request": {"headers": [["k", ["v"]]]}}]}"#,
            "allow_rules[0].request.headers[0]",
        ),
        (
            r#"{"name": "p", "allow_rules": [{"name": "a"}], "audit_logging_options": []}"#,
            "audit_logging_options",
        ),
    ] {
        let (f, message, _) = one(doc);
        assert_eq!(f, field, "{doc}");
        assert!(message.contains("expected an object"), "{doc}: {message}");
    }
}

#[test]
fn an_object_or_string_where_the_schema_has_an_array_is_refused() {
    for (doc, field, found) in [
        (
            r#"{"name": "p", "allow_rules": {"name": "a"}}"#,
            "allow_rules",
            "an object",
        ),
        (
            r#"{"name": "p", "deny_rules": "r", "allow_rules": [{"name": "a"}]}"#,
            "deny_rules",
            "a string",
        ),
        (
            r#"{"name": "p", "allow_rules": [{"name": "a", "source": {"principals": "spiffe://x"}}]}"#,
            "allow_rules[0].source.principals",
            "a string",
        ),
        (
            r#"{"name": "p", "allow_rules": [{"name": "a", "request": {"headers": {"key": "k"}}}]}"#,
            "allow_rules[0].request.headers",
            "an object",
        ),
        (
            r#"{"name": "p", "allow_rules": [{"name": "a", "request": {"headers": [{"key": "k", "values": "v"}]}}]}"#,
            "allow_rules[0].request.headers[0].values",
            "a string",
        ),
    ] {
        let (f, message, at) = one(doc);
        assert_eq!(f, field, "{doc}");
        assert_eq!(
            message,
            format!("invalid type: expected an array, found {found}")
        );
        assert!(at.is_some(), "{doc}");
    }
}

#[test]
fn a_multi_error_file_reports_every_problem_in_file_order() {
    let text = r#"{
  "name": "",
  "deny_rules": [
    { "name": "d", "source": [] }
  ],
  "allow_rules": [
    { "name": "a", "request": { "paths": "/x" } },
    { "name": "a", "colour": "blue" },
    { "request": { "headers": [{ "key": "grpc-timeout", "values": [] }] } }
  ],
  "audit_logging_options": { "audit_condition": "SOMETIMES" }
}"#;
    let got: Vec<String> = errors(text).iter().map(ToString::to_string).collect();
    let expected = [
        "name: is required and must not be empty (line 2, column 11)",
        "deny_rules[0].source: invalid type: expected an object, found an array (line 4, column 30)",
        "allow_rules[0].request.paths: invalid type: expected an array, found a string (line 7, column 42)",
        "allow_rules[1].name: duplicate rule name \"a\" in allow_rules (gRPC would silently keep only the last one) (line 8, column 15)",
        "allow_rules[1].colour: unknown field `colour`, expected one of `name`, `source`, `request` (line 8, column 30)",
        "allow_rules[2].name: is required and must not be empty (line 9, column 5)",
        "allow_rules[2].request.headers[0].key: header \"grpc-timeout\" cannot be matched: pseudo-headers, grpc-* and hop-by-hop headers are not allowed (line 9, column 41)",
        "allow_rules[2].request.headers[0].values: is required and must hold at least one value (line 9, column 67)",
        "audit_logging_options.audit_condition: unknown variant `SOMETIMES`, expected one of `NONE`, `ON_DENY`, `ON_ALLOW`, `ON_DENY_AND_ALLOW` (line 11, column 49)",
    ];
    assert_eq!(got, expected);
}

#[test]
fn loading_a_file_reports_every_problem_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    std::fs::write(
        &path,
        "{\"name\": \"p\",\n \"allow_rules\": [{\"name\": 1}, {\"name\": \"b\", \"source\": {\"principals\": null}}]}",
    )
    .unwrap();
    let e = Policy::from_file(&path).unwrap_err().to_string();
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    let shown = path.display().to_string();
    assert!(
        lines[0].starts_with(&format!(
            "policy file {shown}: allow_rules[0].name: invalid type"
        )),
        "{e}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "policy file {shown}: allow_rules[1].source.principals: invalid type: null"
        )),
        "{e}"
    );
    assert!(lines[1].ends_with("(line 2, column 70)"), "{e}");
}

#[test]
fn syntax_errors_and_duplicate_keys_carry_a_position() {
    let (field, message, at) = one("{\"name\": \"p\",\n  \"allow_rules\": [}");
    assert_eq!(field, "allow_rules[0]");
    assert_eq!(message, "expected value");
    assert_eq!(at, Some((2, 19)));
    let (field, message, _) = one(r#"{"name": "p", "name": "q", "allow_rules": [{"name": "a"}]}"#);
    assert_eq!(
        (field.as_str(), message.as_str()),
        ("(document)", "duplicate field `name`")
    );
}

#[test]
fn a_large_policy_with_an_error_in_every_rule_is_located_in_one_pass() {
    // One problem per rule, 20,000 rules: each must be located without
    // re-reading the whole document for each one.
    let rules: Vec<String> = (0..20_000)
        .map(|i| format!("{{\"name\": \"r{i}\", \"sauce\": 1}}"))
        .collect();
    let text = format!(
        "{{\"name\": \"p\", \"allow_rules\": [\n{}\n]}}",
        rules.join(",\n")
    );
    let all = errors(&text);
    assert_eq!(all.len(), 20_000);
    let last = all.last().unwrap();
    assert_eq!(
        last.to_string(),
        "allow_rules[19999].sauce: unknown field `sauce`, expected one of `name`, `source`, `request` (line 20001, column 29)"
    );
}
