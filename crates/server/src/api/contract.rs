//! What `/openapi.json` says beyond what the handlers' annotations can:
//! the same bounds the validators hold (patterns, ranges, a put's required
//! value, a script that is not empty) and the shape of a Server-Sent Event.
//! schemathesis, run by `scripts/test`, sends requests valid under the
//! description and fails when the server refuses one, so the two cannot
//! drift apart. Where a bound cannot be said exactly (a key's 512 bytes),
//! the description is the stricter: what it allows, the server accepts.
//! The description itself is split from `routes()` here too, with the
//! answers every operation may give (500; 401, 403 and 429 when
//! authentication is on).

use super::quarantine::LIST_LIMIT_MAX;
use super::wire::{
    CLIENT_CHARS_MAX, COLLECTION_CHARS_MAX, ID_CHARS_MAX, KEY_BYTES_MAX, LEASE_CHARS_MAX,
};
use crate::history::CONFLICTS_LIMIT_MAX;
use serde_json::{Value, json};

/// The OpenAPI 3.1 description of every route, with the bounds the
/// annotations cannot say (`contract`).
pub fn openapi() -> Value {
    let mut spec = serde_json::to_value(generated()).unwrap_or_default();
    tighten(&mut spec);
    spec
}

/// The description as the handlers' annotations give it.
fn generated() -> utoipa::openapi::OpenApi {
    let (_, mut spec) = super::routes().split_for_parts();
    // axum writes a catch-all segment `{*key}`; OpenAPI knows it as `{key}`.
    let paths = std::mem::take(&mut spec.paths.paths);
    spec.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    // Any route can fail inside Sluice: the panic guard answers 500 with the
    // usual error body, and the description says so once for all.
    let error = |description: &str| {
        utoipa::openapi::ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::Content::new(Some(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))),
            )
            .build()
    };
    let internal = error("Sluice failed inside; nothing was applied by this request");
    let unauthenticated = error(
        "With authentication on (`serve --auth keys`): no credential, or one that is not valid here (`credential_missing`, `credential_malformed`, `credential_invalid`, `credential_revoked`); `WWW-Authenticate` says the scheme",
    );
    let forbidden = error(
        "With authentication on: the caller's role may not do this (`forbidden`), or the request names another client than the caller (`client_mismatch`); nothing was applied",
    );
    let limited = error(
        "With authentication on: this client is over its role's request rate (`client_rate_limited`); nothing was applied, retry after `Retry-After`",
    );
    for (path, item) in spec.paths.paths.iter_mut() {
        let public = super::caller::PUBLIC_PATHS.contains(&path.as_str());
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        .filter(|_| !public)
        {
            let responses = &mut op.responses.responses;
            responses
                .entry("401".to_owned())
                .or_insert_with(|| unauthenticated.clone().into());
            responses
                .entry("403".to_owned())
                .or_insert_with(|| forbidden.clone().into());
            responses
                .entry("429".to_owned())
                .or_insert_with(|| limited.clone().into());
        }
    }
    for item in spec.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            op.responses
                .responses
                .entry("500".to_owned())
                .or_insert_with(|| internal.clone().into());
        }
    }
    spec
}

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
        "lease" => {
            json!({"type": "string", "minLength": 1, "maxLength": LEASE_CHARS_MAX, "pattern": NO_NUL})
        }
        "limit" => {
            json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": LIST_LIMIT_MAX.min(CONFLICTS_LIMIT_MAX)})
        }
        // Event ids: 16 hexadecimal digits below 2^63 (`api/event_id.rs`).
        "Last-Event-ID" => json!({"type": "string", "pattern": "^[0-7][0-9a-f]{15}$"}),
        "since" => json!({"type": "string", "pattern": "^(start|[0-7][0-9a-f]{15})$"}),
        "status" => json!({"type": "string", "enum": ["queued", "quarantined"]}),
        "intent" => json!({"type": "string", "enum": ["read", "write"]}),
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
        for name in ["id", "client", "lease"] {
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
