//! What `/openapi.json` says beyond what the handlers' annotations can:
//! the same bounds the validators hold (patterns, ranges, a put's required
//! value, a script that is not empty) and the shape of a Server-Sent Event.
//! schemathesis, run by `scripts/test`, sends requests valid under the
//! description and fails when the server refuses one, so the two cannot
//! drift apart. Where a bound cannot be said exactly (a key's 512 bytes),
//! the description is the stricter: what it allows, the server accepts.

use super::quarantine::LIST_LIMIT_MAX;
use super::wire::{CLIENT_CHARS_MAX, COLLECTION_CHARS_MAX, ID_CHARS_MAX, KEY_BYTES_MAX};
use crate::history::CONFLICTS_LIMIT_MAX;
use serde_json::{Value, json};

/// Any text but NUL, which PostgreSQL's `text` cannot hold.
const NO_NUL: &str = "^[^\\u0000]+$";

/// The schema of a parameter, by its name.
fn parameter(name: &str) -> Option<Value> {
    Some(match name {
        "collection" | "name" => json!({
            "type": "string",
            "pattern": format!("^[A-Za-z0-9_.-]{{1,{COLLECTION_CHARS_MAX}}}$"),
        }),
        // Characters of up to four bytes each: within the bytes allowed.
        "key" => {
            json!({"type": "string", "minLength": 1, "maxLength": KEY_BYTES_MAX / 4, "pattern": NO_NUL})
        }
        "client" => {
            json!({"type": "string", "minLength": 1, "maxLength": CLIENT_CHARS_MAX, "pattern": NO_NUL})
        }
        "id" => {
            json!({"type": "string", "minLength": 1, "maxLength": ID_CHARS_MAX, "pattern": NO_NUL})
        }
        "limit" => {
            json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": LIST_LIMIT_MAX.min(CONFLICTS_LIMIT_MAX)})
        }
        // Event ids: 16 hexadecimal digits below 2^63 (`api/event_id.rs`).
        "Last-Event-ID" => json!({"type": "string", "pattern": "^[0-7][0-9a-f]{15}$"}),
        "since" => json!({"type": "string", "pattern": "^(start|[0-7][0-9a-f]{15})$"}),
        "status" => json!({"type": "string", "enum": ["queued", "quarantined"]}),
        _ => return None,
    })
}

/// Tightens a description generated from the handlers.
pub(super) fn tighten(spec: &mut Value) {
    if let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) {
        for op in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
        {
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params.iter_mut() {
                    let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                    if let Some(schema) = parameter(name) {
                        p["schema"] = schema;
                    }
                }
            }
            if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                for response in responses.values_mut() {
                    if let Some(events) = response.pointer_mut("/content/text~1event-stream") {
                        events["schema"] = json!({
                            "type": "object",
                            "description": "One event: its name, its data (JSON text) and, on `/v1/events`, its id",
                            "required": ["event", "data"],
                            "properties": {
                                "event": {"type": "string"},
                                "data": {"type": "string"},
                                "id": {"type": "string"},
                            },
                        });
                    }
                }
            }
        }
    }
    let Some(schemas) = spec
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    // Any JSON, but numbers Sluice keeps exactly: integers within 64 bits
    // (`api::exact` refuses the rest), decimals as doubles.
    schemas.insert(
        "JsonValue".into(),
        json!({
            "description": "Any JSON value; an integer must fit in 64 bits",
            "anyOf": [
                {"type": ["null", "boolean", "string"]},
                {"type": "number", "minimum": i64::MIN, "maximum": u64::MAX},
                {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
                {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
            ],
        }),
    );
    if let Some(request) = schemas.get_mut("MutationRequest") {
        let props = &mut request["properties"];
        props["value"]["additionalProperties"] = json!({"$ref": "#/components/schemas/JsonValue"});
        props["key"] = parameter("key").unwrap_or_default();
        for name in ["id", "client"] {
            let mut schema = parameter(name).unwrap_or_default();
            schema["type"] = json!(["string", "null"]);
            props[name] = schema;
        }
        // A put and a patch carry an object; a delete none.
        request["oneOf"] = json!([
            {
                "properties": {"op": {"enum": ["put", "patch"]}, "value": {"type": "object"}},
                "required": ["value"],
            },
            {
                "properties": {"op": {"const": "delete"}, "value": {"type": "null"}},
            },
        ]);
    }
    if let Some(script) = schemas
        .get_mut("HandlerConfig")
        .and_then(|h| h.get_mut("oneOf"))
        .and_then(Value::as_array_mut)
        .and_then(|variants| {
            variants
                .iter_mut()
                .find_map(|v| v.pointer_mut("/properties/script"))
        })
    {
        // Not only white space, as the server trims it.
        script["pattern"] = json!("\\S");
    }
}
