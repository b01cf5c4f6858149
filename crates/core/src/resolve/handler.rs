//! A collection's conflict handler, as configured with `PUT /v1/collections/{name}`.

use super::access::Access;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

/// Longest webhook time-out a collection may ask for: a handler holds its
/// key's lane while it runs, so an unbounded one would stall the key.
pub const WEBHOOK_TIMEOUT_MS_MAX: u64 = 30_000;
/// Default webhook time-out, the figure the API contract shows.
pub const WEBHOOK_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Largest script source: a resolver is a function, not a program.
pub const SCRIPT_SOURCE_BYTES_MAX: usize = 256 * 1024;
/// How many top-level set fields a collection may name.
pub const SET_FIELDS_LEN_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub enum Handler {
    Optimistic,
    Automerge,
    Script {
        source: String,
    },
    Webhook {
        url: String,
        timeout_ms: u64,
        /// Sent with every call, for the function service to authenticate
        /// Sluice (credentials never go in the URL); never shown by `GET`.
        headers: Vec<(String, String)>,
    },
}

/// Headers a webhook may carry, at most.
pub const WEBHOOK_HEADERS_LEN_MAX: usize = 16;
/// What `GET /v1/collections/{name}` shows instead of a header's value.
pub const REDACTED: &str = "<redacted>";

impl Handler {
    /// The name that responses and the conflict history give the handler.
    pub fn name(&self) -> &'static str {
        match self {
            Handler::Optimistic => "optimistic",
            Handler::Automerge => "automerge",
            Handler::Script { .. } => "script",
            Handler::Webhook { .. } => "webhook",
        }
    }

    /// Custom logic: a conflict waits on something outside the engine (a
    /// script thread, a webhook) to be decided.
    pub fn is_custom(&self) -> bool {
        matches!(self, Handler::Script { .. } | Handler::Webhook { .. })
    }

    pub fn to_json(&self) -> Value {
        match self {
            Handler::Optimistic => json!("optimistic"),
            Handler::Automerge => json!("automerge"),
            Handler::Script { source } => json!({ "script": source }),
            Handler::Webhook {
                url,
                timeout_ms,
                headers,
            } => {
                // Defaults read back absent, as every setting's do.
                let mut hook = serde_json::Map::new();
                hook.insert("url".into(), json!(url));
                if *timeout_ms != WEBHOOK_TIMEOUT_MS_DEFAULT {
                    hook.insert("timeout_ms".into(), json!(timeout_ms));
                }
                if !headers.is_empty() {
                    let headers: serde_json::Map<String, Value> = headers
                        .iter()
                        .map(|(name, value)| (name.clone(), json!(value)))
                        .collect();
                    hook.insert("headers".into(), Value::Object(headers));
                }
                json!({ "webhook": hook })
            }
        }
    }

    /// Parses the wire form, saying what is wrong for a person.
    pub fn from_json(value: &Value) -> Result<Handler, String> {
        match value {
            Value::String(s) if s == "optimistic" => Ok(Handler::Optimistic),
            Value::String(s) if s == "automerge" => Ok(Handler::Automerge),
            Value::String(s) => Err(format!(
                "unknown handler \"{s}\": expected \"optimistic\", \"automerge\", {{\"script\": …}} or {{\"webhook\": …}}"
            )),
            Value::Object(map) if map.len() == 1 && map.contains_key("script") => match &map["script"] {
                Value::String(source) if source.trim().is_empty() => Err("handler.script is empty".into()),
                Value::String(source) if source.len() > SCRIPT_SOURCE_BYTES_MAX => {
                    Err(format!("handler.script is longer than {SCRIPT_SOURCE_BYTES_MAX} bytes"))
                }
                Value::String(source) => Ok(Handler::Script { source: source.clone() }),
                _ => Err("handler.script must be a string of JavaScript source".into()),
            },
            Value::Object(map) if map.len() == 1 && map.contains_key("webhook") => {
                let Value::Object(hook) = &map["webhook"] else {
                    return Err("handler.webhook must be an object {\"url\", \"timeout_ms\"}".into());
                };
                if let Some(unknown) = hook
                    .keys()
                    .find(|k| !matches!(k.as_str(), "url" | "timeout_ms" | "headers"))
                {
                    return Err(format!("unknown field handler.webhook.{unknown}"));
                }
                let url = match hook.get("url") {
                    Some(Value::String(url)) => url.clone(),
                    _ => return Err("handler.webhook.url must be a string".into()),
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
                    return Err("handler.webhook.url must be an http:// or https:// URL of at most 2048 bytes".into());
                }
                let timeout_ms = match hook.get("timeout_ms") {
                    None | Some(Value::Null) => WEBHOOK_TIMEOUT_MS_DEFAULT,
                    Some(v) => match v.as_u64() {
                        Some(ms) if (1..=WEBHOOK_TIMEOUT_MS_MAX).contains(&ms) => ms,
                        _ => {
                            return Err(format!(
                                "handler.webhook.timeout_ms must be an integer from 1 to {WEBHOOK_TIMEOUT_MS_MAX}"
                            ));
                        }
                    },
                };
                let headers = match hook.get("headers") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Object(map)) => webhook_headers(map)?,
                    Some(_) => return Err("handler.webhook.headers must be an object of header names to values".into()),
                };
                Ok(Handler::Webhook {
                    url,
                    timeout_ms,
                    headers,
                })
            }
            _ => Err("handler must be \"optimistic\", \"automerge\", {\"script\": \"…\"} or {\"webhook\": {\"url\": \"…\"}}".into()),
        }
    }
}

/// Validates a webhook's headers: names and values HTTP allows, not the ones
/// the call sets itself, at most `WEBHOOK_HEADERS_LEN_MAX`.
fn webhook_headers(map: &serde_json::Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    if map.len() > WEBHOOK_HEADERS_LEN_MAX {
        return Err(format!(
            "handler.webhook.headers holds more than {WEBHOOK_HEADERS_LEN_MAX} headers"
        ));
    }
    let mut headers = Vec::with_capacity(map.len());
    for (name, value) in map {
        let Value::String(value) = value else {
            return Err(format!("handler.webhook.headers.{name} must be a string"));
        };
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host" | "content-type" | "content-length" | "transfer-encoding" | "connection"
        ) {
            return Err(format!(
                "handler.webhook.headers.{name} is set by Sluice itself"
            ));
        }
        if !is_header_name(name) {
            return Err(format!(
                "handler.webhook.headers: {name:?} is not a header name"
            ));
        }
        if value == REDACTED {
            return Err(format!(
                "handler.webhook.headers.{name} is {REDACTED:?}, what GET shows: send the header's value"
            ));
        }
        if value.len() > 4096 || !is_header_value(value) {
            return Err(format!(
                "handler.webhook.headers.{name} must be a header value of at most 4096 bytes"
            ));
        }
        headers.push((name.clone(), value.clone()));
    }
    Ok(headers)
}

/// A header name HTTP allows: one or more token characters (RFC 9110 §5.6.2).
/// The core names no HTTP crate; the server's tests hold this to the one
/// the webhook's client uses.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 1 << 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value HTTP allows: no control character but a tab.
pub fn is_header_value(value: &str) -> bool {
    value.bytes().all(|b| (b >= 32 && b != 127) || b == b'\t')
}

impl CollectionConfig {
    /// The configuration as `GET` shows it: a webhook's header values
    /// replaced by `REDACTED`.
    pub fn redacted(&self) -> CollectionConfig {
        let mut shown = self.clone();
        for handler in std::iter::once(&mut shown.handler).chain(shown.shadow_handler.as_mut()) {
            if let Handler::Webhook { headers, .. } = handler {
                for (_, value) in headers.iter_mut() {
                    *value = REDACTED.to_owned();
                }
            }
        }
        shown
    }
}

impl Serialize for Handler {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Handler {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Handler::from_json(&value).map_err(D::Error::custom)
    }
}

/// What becomes of a conflicting mutation whose custom handler failed
/// (threw, ran out of time or memory, or a webhook that could not be
/// reached or answered nonsense): the data did not decide it, the handler
/// did not run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnHandlerFailure {
    /// Rejected with the failure as its reason, as any rejection.
    #[default]
    Reject,
    /// Kept aside with its reason, to be retried or discarded; the lane
    /// goes on without it.
    Quarantine,
}

/// What a collection is configured with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    pub handler: Handler,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_fields: Vec<String>,
    /// A mutation whose base is stale only because of its own client's
    /// earlier writes applies as if based on the current version. Off by
    /// default, so that plain version semantics (and replayed traces) stay
    /// exact.
    #[serde(default, skip_serializing_if = "is_false")]
    pub chain_own_writes: bool,
    #[serde(default, skip_serializing_if = "OnHandlerFailure::is_reject")]
    pub on_handler_failure: OnHandlerFailure,
    /// Who may do what here, where it differs from the roles.
    #[serde(default, skip_serializing_if = "Access::is_empty")]
    pub access: Access,
    /// A candidate handler run beside the live one on real conflicts, as
    /// a dry run: its result is only compared (the collection's shadow
    /// report), never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_handler: Option<Handler>,
}

// Settings left at their defaults are left out of a configuration's JSON,
// so that it reads back as it was written.
fn is_false(b: &bool) -> bool {
    !*b
}

impl OnHandlerFailure {
    fn is_reject(&self) -> bool {
        *self == OnHandlerFailure::Reject
    }
}

impl CollectionConfig {
    pub fn with_handler(handler: Handler) -> Self {
        CollectionConfig {
            handler,
            set_fields: Vec::new(),
            chain_own_writes: false,
            on_handler_failure: OnHandlerFailure::Reject,
            access: Access::default(),
            shadow_handler: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.access.validate()?;
        if self.set_fields.len() > SET_FIELDS_LEN_MAX {
            return Err(format!(
                "set_fields names more than {SET_FIELDS_LEN_MAX} fields"
            ));
        }
        if let Some(bad) = self
            .set_fields
            .iter()
            .find(|f| f.is_empty() || f.len() > 256)
        {
            return Err(format!("set_fields entry {bad:?} must be 1 to 256 bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_wire_forms_round_trip() {
        for handler in [
            Handler::Optimistic,
            Handler::Automerge,
            Handler::Script {
                source: "function resolve(ctx) {}".into(),
            },
            Handler::Webhook {
                url: "http://127.0.0.1:9/x".into(),
                timeout_ms: 250,
                headers: Vec::new(),
            },
            Handler::Webhook {
                url: "http://127.0.0.1:9/x".into(),
                timeout_ms: 250,
                headers: vec![("Authorization".into(), "Bearer s3cret".into())],
            },
        ] {
            assert_eq!(Handler::from_json(&handler.to_json()), Ok(handler.clone()));
        }
    }

    #[test]
    fn handler_rejects_what_it_cannot_run() {
        let bad = [
            json!("pessimistic"),
            json!({"script": 3}),
            json!({"script": "  "}),
            json!({"webhook": {"url": "ftp://x"}}),
            json!({"webhook": {"url": "http://x", "timeout_ms": 0}}),
            json!({"webhook": {"url": "http://x", "extra": 1}}),
            json!({"script": "x", "webhook": {}}),
            json!(42),
        ];
        for value in bad {
            assert!(
                Handler::from_json(&value).is_err(),
                "{value} should be refused"
            );
        }
        assert_eq!(
            Handler::from_json(&json!({"webhook": {"url": "http://x"}})),
            Ok(Handler::Webhook {
                url: "http://x".into(),
                timeout_ms: WEBHOOK_TIMEOUT_MS_DEFAULT,
                headers: Vec::new(),
            })
        );
    }

    /// Every setting, sent at its default, reads back absent; sent at
    /// another value, reads back as sent. One rule, held for every field.
    #[test]
    fn defaults_read_back_absent_and_the_rest_as_sent() {
        let hook = |extra: Value| {
            let mut hook = json!({"url": "http://127.0.0.1:9/x"});
            if let (Some(hook), Some(extra)) = (hook.as_object_mut(), extra.as_object()) {
                hook.extend(extra.clone());
            }
            json!({ "webhook": hook })
        };
        let minimal = json!({"handler": hook(json!({}))});
        // (field, its default, another value): each in the configuration's
        // top level or in its webhook.
        let top: [(&str, Value, Value); 3] = [
            ("set_fields", json!([]), json!(["tags"])),
            ("chain_own_writes", json!(false), json!(true)),
            ("on_handler_failure", json!("reject"), json!("quarantine")),
        ];
        let in_hook: [(&str, Value, Value); 2] = [
            ("timeout_ms", json!(WEBHOOK_TIMEOUT_MS_DEFAULT), json!(250)),
            ("headers", json!({}), json!({"X-Key": "v"})),
        ];
        let read_back = |sent: Value| -> Value {
            let config: CollectionConfig = serde_json::from_value(sent).expect("valid");
            serde_json::to_value(&config).expect("serializes")
        };
        for (field, default, other) in top {
            let mut sent = minimal.clone();
            sent[field] = default;
            assert_eq!(read_back(sent), minimal, "{field} at its default");
            let mut sent = minimal.clone();
            sent[field] = other;
            assert_eq!(read_back(sent.clone()), sent, "{field} set");
        }
        for (field, default, other) in in_hook {
            let sent = json!({"handler": hook(json!({ field: default }))});
            assert_eq!(read_back(sent), minimal, "webhook.{field} at its default");
            let sent = json!({"handler": hook(json!({ field: other }))});
            assert_eq!(read_back(sent.clone()), sent, "webhook.{field} set");
        }
    }
}
