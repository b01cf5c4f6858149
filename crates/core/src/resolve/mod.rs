//! The pure part of resolution: what a handler may answer, applying a
//! mutation, the built-in automerge, and a collection's handler settings.
//! Running scripts and webhooks is the server's (`sluice_server::resolve`).

pub mod access;
mod handler;
pub mod merge;

pub use access::Access;

pub use handler::{
    CollectionConfig, Handler, OnHandlerFailure, REDACTED, SCRIPT_SOURCE_BYTES_MAX,
    SET_FIELDS_LEN_MAX, WEBHOOK_HEADERS_LEN_MAX, WEBHOOK_TIMEOUT_MS_DEFAULT,
    WEBHOOK_TIMEOUT_MS_MAX, is_header_name, is_header_value,
};

use crate::model::{
    ConflictInfo, ConflictRecord, Document, Mutation, Op, Outcome, Resolution, Verdict,
};
use serde_json::{Map, Value, json};

/// Deepest document a handler may return, the same bound the API puts on values.
pub const VALUE_DEPTH_MAX: usize = 64;

/// What a custom handler answered.
#[derive(Clone, Debug, PartialEq)]
pub enum HandlerAnswer {
    Resolve(Map<String, Value>),
    Reject(String),
    Remove,
}

/// Reads `{action: "resolve", item}`, `{action: "reject", reason}` or `{action: "remove"}`.
pub fn parse_answer(value: &Value) -> Result<HandlerAnswer, String> {
    let Value::Object(answer) = value else {
        return Err(format!(
            "expected an object with an \"action\", got {}",
            kind_of(value)
        ));
    };
    match answer.get("action").and_then(Value::as_str) {
        Some("resolve") => match answer.get("item") {
            Some(Value::Object(item)) if merge::json_depth(&answer["item"]) <= VALUE_DEPTH_MAX => {
                Ok(HandlerAnswer::Resolve(item.clone()))
            }
            Some(Value::Object(_)) => Err(format!(
                "item is nested deeper than {VALUE_DEPTH_MAX} levels"
            )),
            Some(other) => Err(format!(
                "\"resolve\" needs an object item, got {}",
                kind_of(other)
            )),
            None => Err("\"resolve\" needs an item".into()),
        },
        Some("reject") => Ok(HandlerAnswer::Reject(match answer.get("reason") {
            Some(Value::String(reason)) if !reason.is_empty() => {
                reason.chars().take(1024).collect()
            }
            _ => "rejected by the handler".into(),
        })),
        Some("remove") => Ok(HandlerAnswer::Remove),
        Some(other) => Err(format!(
            "unknown action \"{other}\": expected resolve, reject or remove"
        )),
        None => Err("missing \"action\"".into()),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One mutation decided against one document state.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub verdict: Verdict,
    /// The document after the mutation; equal to the input when nothing was written.
    pub after: Document,
    pub conflict: Option<ConflictRecord>,
    /// The rejection is the custom handler's failure (it threw, timed out,
    /// ran out of memory, could not be reached, answered nonsense), not a
    /// decision about the data.
    pub handler_failed: bool,
}

/// Mode 1: no conflict, apply as asked.
pub fn apply(doc: &Document, m: &Mutation) -> Step {
    let item = match m.op {
        Op::Put => m.value.clone().unwrap_or_default(),
        Op::Patch => {
            let mut item = doc.item.clone().unwrap_or_default();
            if let Some(patch) = &m.value {
                merge::merge_patch(&mut item, patch);
            }
            item
        }
        Op::Delete if doc.is_gone() => {
            return Step {
                verdict: Verdict::NotFound {
                    version: doc.version,
                },
                after: doc.clone(),
                conflict: None,
                handler_failed: false,
            };
        }
        Op::Delete => {
            let after = Document {
                version: doc.version + 1,
                item: None,
            };
            let verdict = Verdict::Outcome {
                outcome: Outcome::Applied,
                version: after.version,
                conflict: None,
            };
            return Step {
                verdict,
                after,
                conflict: None,
                handler_failed: false,
            };
        }
    };
    let after = Document {
        version: doc.version + 1,
        item: Some(item),
    };
    let verdict = Verdict::Outcome {
        outcome: Outcome::Applied,
        version: after.version,
        conflict: None,
    };
    Step {
        verdict,
        after,
        conflict: None,
        handler_failed: false,
    }
}

pub fn automerge_answer(
    doc: &Document,
    m: &Mutation,
    base: u64,
    set_fields: &[String],
) -> HandlerAnswer {
    if m.op == Op::Delete {
        return HandlerAnswer::Reject(format!(
            "a delete in conflict is rejected: {}",
            stale_reason(base, doc.version)
        ));
    }
    if doc.version > 0 && doc.is_gone() {
        return HandlerAnswer::Reject(format!(
            "the document was deleted at version {}; automerge does not revive a tombstone",
            doc.version
        ));
    }
    let server = doc.item.clone().unwrap_or_default();
    let incoming = m.value.clone().unwrap_or_default();
    HandlerAnswer::Resolve(merge::automerge(&server, &incoming, set_fields))
}

/// Why a handler's result is refused for its size.
pub fn result_too_large(handler: &str, bytes: usize, max: usize) -> String {
    format!(
        "the {handler} handler's result would be {bytes} bytes of JSON, over the {max}-byte bound"
    )
}

/// A resolution larger than a document may be is the handler's rejection.
pub fn bounded(answer: HandlerAnswer, handler: &str, max: usize) -> HandlerAnswer {
    match answer {
        HandlerAnswer::Resolve(item) => {
            let bytes = crate::model::encoded_len(&item);
            if bytes > max {
                return HandlerAnswer::Reject(result_too_large(handler, bytes, max));
            }
            HandlerAnswer::Resolve(item)
        }
        other => other,
    }
}

pub fn stale_reason(base: u64, current: u64) -> String {
    if base < current {
        format!("base_version {base} is behind the server's version {current}")
    } else {
        format!("base_version {base} is ahead of the server's version {current}")
    }
}

/// The `ctx` a custom handler receives.
pub fn resolve_context(doc: &Document, m: &Mutation, base: u64) -> Value {
    json!({
        "collection": m.doc.collection,
        "key": m.doc.key,
        "op": m.op.as_str(),
        "client": m.client,
        "base_version": base,
        "existing": doc.item_value(),
        "existing_version": doc.version,
        "incoming": m.value.clone().map(Value::Object).unwrap_or(Value::Null),
    })
}

/// A mutation in conflict with the document, as its handler's answer
/// settles it.
pub struct Conflict<'a> {
    pub doc: &'a Document,
    pub m: &'a Mutation,
    pub base: u64,
    /// The handler's name, as records and answers show it.
    pub handler: &'a str,
    /// When it was settled, ms since the epoch.
    pub at_ms: i64,
}

impl Conflict<'_> {
    /// The step the handler's answer makes: merged (a resolved item, or a
    /// removal) at the next version, or rejected leaving the document as it
    /// was; with the conflict's record in full either way. `handler_failed`:
    /// the rejection is the handler's failure, not its decision.
    pub fn settle(&self, answer: HandlerAnswer, handler_failed: bool) -> Step {
        let Conflict {
            doc,
            m,
            base,
            handler,
            at_ms,
        } = *self;
        let next = |item| Document {
            version: doc.version + 1,
            item,
        };
        let (outcome, resolution, after, reason) = match answer {
            HandlerAnswer::Resolve(item) => (
                Outcome::Merged,
                Resolution::Merged,
                next(Some(item)),
                format!("resolved by the {handler} handler"),
            ),
            HandlerAnswer::Remove => (
                Outcome::Merged,
                Resolution::Removed,
                next(None),
                format!("removed by the {handler} handler"),
            ),
            HandlerAnswer::Reject(reason) => {
                (Outcome::Rejected, Resolution::Rejected, doc.clone(), reason)
            }
        };
        let wrote = outcome != Outcome::Rejected;
        let record = ConflictRecord {
            mutation_id: m.id.clone(),
            client: m.client_name().to_owned(),
            doc: m.doc.clone(),
            base_version: base,
            server_version: doc.version,
            handler: handler.to_owned(),
            resolution,
            reason: reason.clone(),
            incoming: m.value.clone().map(Value::Object).unwrap_or(Value::Null),
            existing: doc.item_value(),
            result: if wrote {
                after.item_value()
            } else {
                Value::Null
            },
            at_ms,
        };
        let verdict = Verdict::Outcome {
            outcome,
            version: after.version,
            conflict: Some(ConflictInfo {
                base_version: base,
                server_version: doc.version,
                handler: handler.to_owned(),
                reason: Some(reason),
            }),
        };
        Step {
            verdict,
            after,
            conflict: Some(record),
            handler_failed,
        }
    }
}
