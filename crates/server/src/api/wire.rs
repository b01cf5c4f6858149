//! Wire types of API v1 and their validation: the edge where untrusted JSON
//! becomes a domain [`Mutation`].

use crate::model::{DocKey, Mutation, Op};
use crate::resolve::{VALUE_DEPTH_MAX, merge::json_depth};
use serde::Deserialize;
use serde_json::Value;

pub const BODY_BYTES_MAX: usize = 1_048_576;
pub const ID_CHARS_MAX: usize = 128;
pub const CLIENT_CHARS_MAX: usize = 128;
/// A lease token as granted is 32 hex digits; anything longer is not one.
pub const LEASE_CHARS_MAX: usize = 64;
pub const COLLECTION_CHARS_MAX: usize = 64;
pub const KEY_BYTES_MAX: usize = 512;

/// `POST /v1/mutations` as sent. `deny_unknown_fields` turns a typo into a 400
/// instead of a silently ignored field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MutationRequest)]
pub struct MutationBody {
    /// The idempotency key, unique per client (1 to 128 characters); generated when absent.
    #[schema(max_length = 128, min_length = 1)]
    pub id: Option<String>,
    /// 1 to 64 characters of `[A-Za-z0-9_.-]`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub collection: String,
    /// Any text but NUL, up to 512 bytes.
    #[schema(min_length = 1)]
    pub key: String,
    #[schema(value_type = super::schema::OpName)]
    pub op: Op,
    /// The document (put) or a JSON merge patch (patch); absent or null for a delete.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    /// The version the client last saw; a mismatch is a conflict.
    #[serde(default, deserialize_with = "whole::option_u64")]
    pub base_version: Option<u64>,
    /// Who sends it: ids are unique per client, events are streamed per client.
    #[schema(max_length = 128, min_length = 1)]
    pub client: Option<String>,
    /// When the client made the edit (ms since the epoch).
    #[serde(default, deserialize_with = "whole::option_i64")]
    pub ts_ms: Option<i64>,
    /// The write lease `GET /v1/documents/{collection}/{key}?intent=write`
    /// granted: this mutation goes before those the lease held back. An
    /// expired or unknown lease changes nothing.
    #[schema(max_length = 64, min_length = 1)]
    pub lease: Option<String>,
    /// A shadow write: staged beside the live documents (202 `staged`) and
    /// decided when load allows, or expired. Only `POST /v1/mutations`.
    #[serde(default)]
    pub shadow: Option<bool>,
}

/// Whole numbers as JSON Schema counts them: `3.0` is the integer 3, as
/// the description promises (`type: integer`). Anything else is refused.
mod whole {
    use serde::{Deserialize, Deserializer, de::Error};
    use serde_json::Number;

    /// Below 2^64 and 2^63: `as` would saturate at the edge.
    const U64_END: f64 = 18_446_744_073_709_551_616.0;
    const I64_END: f64 = 9_223_372_036_854_775_808.0;

    fn whole(n: &Number) -> Option<f64> {
        n.as_f64().filter(|f| f.fract() == 0.0)
    }

    pub(super) fn option_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let Some(n) = Option::<Number>::deserialize(d)? else {
            return Ok(None);
        };
        n.as_u64()
            .or_else(|| {
                whole(&n)
                    .filter(|f| (0.0..U64_END).contains(f))
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| {
                D::Error::custom(format!("expected a whole number from 0 to 2^64-1, got {n}"))
            })
    }

    pub(super) fn option_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let Some(n) = Option::<Number>::deserialize(d)? else {
            return Ok(None);
        };
        n.as_i64()
            .or_else(|| {
                whole(&n)
                    .filter(|f| (-I64_END..I64_END).contains(f))
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "expected a whole number from -2^63 to 2^63-1, got {n}"
                ))
            })
    }
}

/// Parses and validates one mutation; `Err` is the message for a 400.
/// `generated_id` is used when the body names no id.
pub fn parse_mutation(
    body: &[u8],
    generated_id: impl FnOnce() -> String,
) -> Result<Mutation, String> {
    super::exact::check(body)?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(format!(
            "the body is a list, and {MUTATION_ROUTE} takes one mutation as a JSON object; send several as {{\"mutations\": [...]}} to {BATCH_ROUTE}"
        ));
    }
    let parsed: MutationBody =
        deserialize(&mut serde_json::Deserializer::from_slice(body), "the body").map_err(|e| {
            if e.contains("unknown field \"mutations\"") {
                format!("this is a batch: send {{\"mutations\": [...]}} to {BATCH_ROUTE}")
            } else {
                e
            }
        })?;
    validate(parsed, generated_id)
}

const MUTATION_ROUTE: &str = "POST /v1/mutations";
const BATCH_ROUTE: &str = "POST /v1/mutations:batch";

/// Deserializes `what` (named in errors) and says what was wrong in the
/// API's words: the field, what it takes, what was sent, and where.
fn deserialize<'de, T: Deserialize<'de>, D>(de: D, what: &str) -> Result<T, String>
where
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return format!("{what} is not valid JSON: {inner}");
        }
        let field = if path == "." || path.is_empty() {
            what.to_owned()
        } else {
            path
        };
        in_api_words(&field, &inner.to_string())
    })
}

/// A serde message about `field` without Rust's type names.
fn in_api_words(field: &str, message: &str) -> String {
    // serde_json appends the position, which is worth keeping.
    let (message, position) = match message.rsplit_once(" at line ") {
        Some((m, at)) => (m, format!(" (at line {at})")),
        None => (message, String::new()),
    };
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        return format!("{name} is required{position}");
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.trim_start_matches(", expected ").replace('`', "");
        return format!("unknown field {name:?}; the fields are {expected}{position}");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let expected = match expected {
            e if e.starts_with("struct ") => "a JSON object",
            "a sequence" => "a list",
            "a string" => "a string",
            "u64" => "a whole number from 0",
            "i64" => "a whole number",
            e if e.starts_with("internally tagged") || e.starts_with("enum") => "a string",
            e => e,
        };
        let got = got
            .replace("map", "an object")
            .replace("sequence", "a list")
            .replace("integer", "the number");
        return format!("{field} must be {expected}, got {got}{position}");
    }
    format!("{field}: {message}{position}")
}

/// Parses and validates one mutation of a batch (already parsed as JSON).
pub fn parse_mutation_value(
    value: Value,
    generated_id: impl FnOnce() -> String,
) -> Result<Mutation, String> {
    if value.is_array() {
        return Err("is a list; each entry of mutations is one mutation, a JSON object".into());
    }
    let parsed: MutationBody = deserialize(value, "the mutation")?;
    validate(parsed, generated_id)
}

/// Most mutations in one `POST /v1/mutations:batch`: an offline client's outbox.
pub const BATCH_LEN_MAX: usize = 1_000;
/// A batch body may be larger than one mutation's, not unboundedly.
pub const BATCH_BODY_BYTES_MAX: usize = 16 * 1_048_576;

/// `POST /v1/mutations:batch` as sent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchRequest)]
pub struct BatchBody {
    /// 1 to 1,000 mutations, decided in this order per document.
    #[schema(value_type = Vec<MutationBody>, min_items = 1, max_items = 1000)]
    pub mutations: Vec<Value>,
}

pub fn validate(
    body: MutationBody,
    generated_id: impl FnOnce() -> String,
) -> Result<Mutation, String> {
    if let Some(id) = &body.id {
        check_chars("id", id, ID_CHARS_MAX)?;
    }
    if let Some(client) = &body.client {
        check_chars("client", client, CLIENT_CHARS_MAX)?;
    }
    if let Some(lease) = &body.lease {
        check_chars("lease", lease, LEASE_CHARS_MAX)?;
    }
    validate_collection(&body.collection)?;
    validate_key(&body.key)?;
    let value = match (body.op, body.value) {
        (Op::Delete, None | Some(Value::Null)) => None,
        (Op::Delete, Some(_)) => return Err("value must be absent or null for a delete".into()),
        (_, None | Some(Value::Null)) => {
            return Err(format!("value is required for a {}", body.op.as_str()));
        }
        (_, Some(v @ Value::Object(_))) => {
            let depth = json_depth(&v);
            if depth > VALUE_DEPTH_MAX {
                return Err(format!(
                    "value is nested {depth} levels deep; at most {VALUE_DEPTH_MAX} are allowed"
                ));
            }
            match v {
                Value::Object(map) => Some(map),
                _ => None,
            }
        }
        (_, Some(_)) => return Err("value must be a JSON object".into()),
    };
    let fingerprint = fingerprint(
        &body.collection,
        &body.key,
        body.op,
        value.as_ref(),
        body.base_version,
        body.client.as_deref(),
        body.ts_ms,
    );
    Ok(Mutation {
        id: body.id.unwrap_or_else(generated_id),
        client: body.client,
        doc: DocKey::new(body.collection, body.key),
        op: body.op,
        value,
        base_version: body.base_version,
        ts_ms: body.ts_ms,
        lease: body.lease,
        shadow: body.shadow.unwrap_or(false),
        fingerprint,
    })
}

pub fn validate_collection(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() || name.len() > COLLECTION_CHARS_MAX || !ok_chars {
        return Err(format!(
            "collection must be 1 to {COLLECTION_CHARS_MAX} characters of [A-Za-z0-9_.-], got {name:?}"
        ));
    }
    Ok(())
}

pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("key must not be empty".into());
    }
    if key.contains('\0') {
        return Err("key must not contain a NUL character".into());
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(format!(
            "key is {} bytes; at most {KEY_BYTES_MAX} are allowed",
            key.len()
        ));
    }
    Ok(())
}

fn check_chars(field: &str, value: &str, max: usize) -> Result<(), String> {
    let n = value.chars().count();
    if n == 0 || n > max {
        return Err(format!("{field} must be 1 to {max} characters, got {n}"));
    }
    // PostgreSQL's text type cannot hold NUL; refuse it here rather than fail in the store.
    if value.contains('\0') {
        return Err(format!("{field} must not contain a NUL character"));
    }
    Ok(())
}

/// serde's messages name the field and the expectation; add where it stood.
/// Parses a batch's body: `{"mutations": [...]}` with 1 to
/// [`BATCH_LEN_MAX`] entries, each still to be validated.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Value>, String> {
    let sent: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let send = "send {\"mutations\": [{...}, ...]}";
    let mut object = match sent {
        Value::Object(object) => object,
        Value::Array(_) => {
            return Err(format!(
                "the body is a list; a batch is an object holding the list: {send}"
            ));
        }
        _ => return Err(format!("the body must be a JSON object: {send}")),
    };
    if let Some(other) = object.keys().find(|k| *k != "mutations") {
        return Err(format!(
            "unknown field {other:?}; a batch has one field, mutations: {send}"
        ));
    }
    let mutations = match object.remove("mutations") {
        Some(Value::Array(list)) => list,
        Some(_) => return Err(format!("mutations must be a list: {send}")),
        None => return Err(format!("mutations is required: {send}")),
    };
    if mutations.is_empty() || mutations.len() > BATCH_LEN_MAX {
        return Err(format!(
            "a batch holds 1 to {BATCH_LEN_MAX} mutations, got {}",
            mutations.len()
        ));
    }
    Ok(mutations)
}

/// A stable 64-bit hash of everything a mutation means except its id: object
/// keys are hashed in sorted order, so `{"a":1,"b":2}` and `{"b":2,"a":1}` are
/// the same body. FNV-1a, because the hash is stored and must not change
/// between builds (std's `DefaultHasher` may).
fn fingerprint(
    collection: &str,
    key: &str,
    op: Op,
    value: Option<&serde_json::Map<String, Value>>,
    base_version: Option<u64>,
    client: Option<&str>,
    ts_ms: Option<i64>,
) -> u64 {
    let mut h = Fnv::default();
    h.field(collection.as_bytes());
    h.field(key.as_bytes());
    h.field(op.as_str().as_bytes());
    match value {
        Some(map) => hash_object(&mut h, map),
        None => h.field(b"~none"),
    }
    h.field(&base_version.map(|v| v.to_le_bytes()).unwrap_or([0xff; 8]));
    h.field(client.unwrap_or("~anonymous").as_bytes());
    h.field(&ts_ms.map(|v| v.to_le_bytes()).unwrap_or([0xff; 8]));
    h.0
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Length-prefixed, so that field boundaries cannot shift.
    fn field(&mut self, bytes: &[u8]) {
        self.bytes(&(bytes.len() as u64).to_le_bytes());
        self.bytes(bytes);
    }
}

fn hash_value(h: &mut Fnv, value: &Value) {
    match value {
        Value::Null => h.field(b"n"),
        Value::Bool(b) => h.field(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            h.field(b"#");
            h.field(n.to_string().as_bytes());
        }
        Value::String(s) => {
            h.field(b"s");
            h.field(s.as_bytes());
        }
        Value::Array(items) => {
            h.field(b"[");
            h.field(&(items.len() as u64).to_le_bytes());
            for item in items {
                hash_value(h, item);
            }
        }
        Value::Object(map) => hash_object(h, map),
    }
}

fn hash_object(h: &mut Fnv, map: &serde_json::Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    h.field(b"{");
    h.field(&(keys.len() as u64).to_le_bytes());
    for k in keys {
        h.field(k.as_bytes());
        hash_value(h, &map[k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Mutation, String> {
        parse_mutation(body.as_bytes(), || "generated".into())
    }

    /// Found by the `request` fuzz target: serde_json's default float
    /// parser is not correctly rounded, so a stored float read back as
    /// another one. With `float_roundtrip` both are the nearest double.
    /// Found by schemathesis: `3.0` is an integer to JSON Schema, and the
    /// description says `type: integer`.
    #[test]
    fn whole_numbers_written_as_decimals_are_integers() {
        let m = parse(r#"{"collection": "c", "key": "k", "op": "delete", "base_version": 319752.0, "ts_ms": -5.0}"#)
            .expect("accepted");
        assert_eq!((m.base_version, m.ts_ms), (Some(319752), Some(-5)));
        let same = parse(r#"{"collection": "c", "key": "k", "op": "delete", "base_version": 319752, "ts_ms": -5}"#)
            .expect("accepted");
        assert_eq!(m.fingerprint, same.fingerprint);
        for bad in ["1.5", "-1", "18446744073709551616.0", "\"3\""] {
            let body = format!(
                r#"{{"collection": "c", "key": "k", "op": "delete", "base_version": {bad}}}"#
            );
            assert!(parse(&body).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_float_reads_back_as_the_same_double() {
        let text = "15600000000000006421558026912311979.6626";
        let m = parse(&format!(
            r#"{{"collection": "c", "key": "k", "op": "put", "value": {{"f": {text}}}}}"#
        ))
        .expect("accepted");
        let value = m.value.clone().expect("value");
        let nearest: f64 = text.parse().expect("a float");
        assert_eq!(value["f"].as_f64(), Some(nearest));
        let back = parse(&m.to_json()).expect("accepted again");
        assert_eq!(back.value, m.value);
    }

    #[test]
    fn accepts_a_full_mutation() {
        let m = parse(r#"{"id":"m1","collection":"notes","key":"a/b","op":"patch","value":{"x":1},"base_version":3,"client":"c","ts_ms":5}"#)
            .expect("valid");
        assert_eq!(
            (
                m.id.as_str(),
                m.doc.key.as_str(),
                m.base_version,
                m.client.as_deref()
            ),
            ("m1", "a/b", Some(3), Some("c"))
        );
        let d = parse(r#"{"collection":"notes","key":"k","op":"delete"}"#).expect("valid");
        assert_eq!((d.id.as_str(), d.value.clone()), ("generated", None));
    }

    #[test]
    fn refuses_what_the_contract_refuses() {
        let deep = format!(
            r#"{{"collection":"c","key":"k","op":"put","value":{}1{}}}"#,
            r#"{"a":"#.repeat(65),
            "}".repeat(65)
        );
        let long_key = format!(
            r#"{{"collection":"c","key":"{}","op":"put","value":{{}}}}"#,
            "k".repeat(513)
        );
        let cases = [
            r#"{"collection":"c","key":"k","op":"put","value":{},"extra":1}"#,
            r#"{"collection":"c","key":"k","op":"upsert","value":{}}"#,
            r#"{"collection":"c","key":"k","op":"put","value":{},"base_version":-1}"#,
            r#"{"collection":"c","key":"k","op":"put","value":{},"base_version":"3"}"#,
            r#"{"collection":"c","key":"","op":"put","value":{}}"#,
            r#"{"collection":"bad name","key":"k","op":"put","value":{}}"#,
            r#"{"collection":"c","key":"k","op":"put"}"#,
            r#"{"collection":"c","key":"k","op":"put","value":[1]}"#,
            r#"{"collection":"c","key":"k","op":"delete","value":{}}"#,
            r#"{"id":"","collection":"c","key":"k","op":"delete"}"#,
            r#"{"collection":"c","key":"k","op":"put","value":{},"client":""}"#,
            r#"{"collection":"c","key":"a\u0000b","op":"put","value":{}}"#,
            r#"{"id":"x\u0000","collection":"c","key":"k","op":"put","value":{}}"#,
            r#"{"collection":"c","key":"k""#,
            r#"[]"#,
            &deep,
            &long_key,
        ];
        for body in cases {
            assert!(parse(body).is_err(), "should refuse {body}");
        }
        let at_limit = format!(
            r#"{{"collection":"c","key":"k","op":"put","value":{}1{}}}"#,
            r#"{"a":"#.repeat(64),
            "}".repeat(64)
        );
        assert!(parse(&at_limit).is_ok(), "64 levels are allowed");
    }

    #[test]
    fn fingerprint_ignores_id_and_key_order_but_not_content() {
        let a =
            parse(r#"{"id":"1","collection":"c","key":"k","op":"put","value":{"a":1,"b":[1,2]}}"#)
                .expect("valid");
        let b =
            parse(r#"{"id":"2","collection":"c","key":"k","op":"put","value":{"b":[1,2],"a":1}}"#)
                .expect("valid");
        let c =
            parse(r#"{"id":"1","collection":"c","key":"k","op":"put","value":{"a":1,"b":[2,1]}}"#)
                .expect("valid");
        let d = parse(r#"{"id":"1","collection":"c","key":"k","op":"put","value":{"a":1,"b":[1,2]},"base_version":0}"#).expect("valid");
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
        assert_ne!(a.fingerprint, d.fingerprint);
    }
}
