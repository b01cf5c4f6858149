//! The two pure merge functions: JSON Merge Patch (RFC 7396), used when there
//! is no conflict, and AppSync-style automerge, used to settle one.

use serde_json::{Map, Value};

/// RFC 7396: apply `patch` to `target` in place. A null removes a field,
/// objects merge recursively, anything else replaces.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (field, patch_value) in patch {
        match patch_value {
            Value::Null => {
                target.shift_remove(field);
            }
            Value::Object(patch_object) => {
                let entry = target
                    .entry(field.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(target_object) = entry {
                    merge_patch(target_object, patch_object);
                }
            }
            other => {
                target.insert(field.clone(), other.clone());
            }
        }
    }
}

/// AppSync's automerge rules, field by field from the server item `server`
/// and the incoming value `incoming`:
///
/// - a field missing in the server item, or null there, takes the incoming value;
/// - two objects merge recursively;
/// - two arrays concatenate (server then incoming, duplicates kept), except for
///   top-level fields named in `set_fields`, which union (server order, then the
///   incoming elements not yet present);
/// - anything else keeps the server's value, and an incoming null never removes
///   a server field.
pub fn automerge(
    server: &Map<String, Value>,
    incoming: &Map<String, Value>,
    set_fields: &[String],
) -> Map<String, Value> {
    let mut merged = server.clone();
    merge_fields(&mut merged, incoming, Some(set_fields));
    merged
}

/// `set_fields` is `Some` only at the top level: the set semantics name
/// top-level fields, so nested arrays always concatenate.
fn merge_fields(
    server: &mut Map<String, Value>,
    incoming: &Map<String, Value>,
    set_fields: Option<&[String]>,
) {
    for (field, incoming_value) in incoming {
        match server.get_mut(field) {
            None => {
                server.insert(field.clone(), incoming_value.clone());
            }
            Some(server_value) => match (server_value, incoming_value) {
                (slot @ Value::Null, _) => *slot = incoming_value.clone(),
                (Value::Object(s), Value::Object(i)) => merge_fields(s, i, None),
                (Value::Array(s), Value::Array(i)) => {
                    let is_set = set_fields.is_some_and(|names| names.iter().any(|n| n == field));
                    if is_set {
                        union_into(s, i);
                    } else {
                        s.extend(i.iter().cloned());
                    }
                }
                // Scalars, mismatched types, and an incoming null: the server wins.
                _ => {}
            },
        }
    }
}

/// Appends the elements of `incoming` not yet in `server`. A hot set grows
/// to thousands of elements and every stale write sends it whole, so scalar
/// elements are looked up by their JSON text (equal exactly when the values
/// are) instead of by scanning; objects and arrays, whose equality ignores
/// key order, are compared in full.
fn union_into(server: &mut Vec<Value>, incoming: &[Value]) {
    fn scalar_text(v: &Value) -> Option<String> {
        match v {
            Value::Object(_) | Value::Array(_) => None,
            scalar => Some(scalar.to_string()),
        }
    }
    let mut seen: std::collections::HashSet<String> =
        server.iter().filter_map(scalar_text).collect();
    for element in incoming {
        let present = match scalar_text(element) {
            Some(text) => !seen.insert(text),
            None => server.contains(element),
        };
        if !present {
            server.push(element.clone());
        }
    }
}

/// Nesting depth of a JSON value: a scalar is 0, `{}` and `[]` are 1.
/// Iterative, so a hostile value cannot overflow the stack.
pub fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Object(map) => {
                deepest = deepest.max(depth + 1);
                stack.extend(map.values().map(|child| (child, depth + 1)));
            }
            Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|child| (child, depth + 1)));
            }
            _ => deepest = deepest.max(depth),
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// (target, patch, expected) — the examples of RFC 7396, appendix A.
    #[test]
    fn merge_patch_rfc7396_table() {
        let table = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({"a": "foo"}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, expected) in table {
            let mut t = obj(target.clone());
            merge_patch(&mut t, &obj(patch.clone()));
            assert_eq!(Value::Object(t), expected, "target {target}, patch {patch}");
        }
    }

    /// (server, incoming, set_fields, expected)
    #[test]
    fn automerge_rule_table() {
        let sets = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let table = [
            // A field missing on the server takes the incoming value.
            (
                json!({"a": 1}),
                json!({"b": 2}),
                sets(&[]),
                json!({"a": 1, "b": 2}),
            ),
            // A null on the server takes the incoming value.
            (
                json!({"a": null}),
                json!({"a": 5}),
                sets(&[]),
                json!({"a": 5}),
            ),
            // Conflicting scalars: the server wins.
            (json!({"a": 1}), json!({"a": 2}), sets(&[]), json!({"a": 1})),
            (
                json!({"a": "x"}),
                json!({"a": 2}),
                sets(&[]),
                json!({"a": "x"}),
            ),
            // Mismatched types: the server wins.
            (
                json!({"a": [1]}),
                json!({"a": {"b": 1}}),
                sets(&[]),
                json!({"a": [1]}),
            ),
            (
                json!({"a": {"b": 1}}),
                json!({"a": [1]}),
                sets(&[]),
                json!({"a": {"b": 1}}),
            ),
            // An incoming null never removes.
            (
                json!({"a": 1}),
                json!({"a": null}),
                sets(&[]),
                json!({"a": 1}),
            ),
            // Objects merge recursively.
            (
                json!({"o": {"x": 1, "y": null}}),
                json!({"o": {"x": 2, "y": 3, "z": 4}}),
                sets(&[]),
                json!({"o": {"x": 1, "y": 3, "z": 4}}),
            ),
            // Arrays concatenate, duplicates kept.
            (
                json!({"l": [1, 2]}),
                json!({"l": [2, 3]}),
                sets(&[]),
                json!({"l": [1, 2, 2, 3]}),
            ),
            // Set fields union, server order then the new incoming elements.
            (
                json!({"tags": ["a", "b"]}),
                json!({"tags": ["b", "c", "a", "d"]}),
                sets(&["tags"]),
                json!({"tags": ["a", "b", "c", "d"]}),
            ),
            // Union compares JSON values, not text.
            (
                json!({"tags": [{"k": 1}]}),
                json!({"tags": [{"k": 1}, {"k": 2}]}),
                sets(&["tags"]),
                json!({"tags": [{"k": 1}, {"k": 2}]}),
            ),
            // set_fields name top-level fields only: a nested array of that name concatenates.
            (
                json!({"o": {"tags": ["a"]}}),
                json!({"o": {"tags": ["a"]}}),
                sets(&["tags"]),
                json!({"o": {"tags": ["a", "a"]}}),
            ),
            // Server fields that the incoming value does not mention stay.
            (
                json!({"keep": true, "a": 1}),
                json!({}),
                sets(&[]),
                json!({"keep": true, "a": 1}),
            ),
        ];
        for (server, incoming, set_fields, expected) in table {
            let merged = automerge(&obj(server.clone()), &obj(incoming.clone()), &set_fields);
            assert_eq!(
                Value::Object(merged),
                expected,
                "server {server}, incoming {incoming}, sets {set_fields:?}"
            );
        }
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!({})), 1);
        assert_eq!(json_depth(&json!({"a": [1]})), 2);
        assert_eq!(json_depth(&json!({"a": [{"b": {}}]})), 4);
    }
}
