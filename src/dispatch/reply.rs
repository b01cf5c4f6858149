//! What a client is told about a mutation: a status and a JSON body, rendered
//! once when the mutation is decided and kept verbatim for idempotent resends.

use crate::model::{ConflictInfo, Verdict};
use serde_json::{Value, json};

#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// JSON text, exactly what goes on the wire.
    pub body: String,
    /// Seconds, for the `Retry-After` header of 429 and 503 answers.
    pub retry_after_s: Option<u32>,
    /// The `error.code` of an error made here (`None` for a decision, and
    /// for an answer read back from the store): what the metrics count.
    pub code: Option<&'static str>,
}

impl Reply {
    pub fn error(status: u16, code: &'static str, message: impl Into<String>) -> Reply {
        let body = json!({ "error": { "code": code, "message": message.into() } }).to_string();
        let retry_after_s = matches!(status, 429 | 503).then_some(1);
        Reply {
            status,
            body,
            retry_after_s,
            code: Some(code),
        }
    }
}

/// Renders a decided mutation as the `POST /v1/mutations` response; `item`
/// is the document as the mutation left it (for a rejection, the server's).
pub fn render(
    id: &str,
    doc_label: &str,
    verdict: &Verdict,
    item: Option<&serde_json::Map<String, Value>>,
    score: Option<f64>,
    queued_ms: f64,
) -> Reply {
    match verdict {
        Verdict::Decided {
            outcome,
            version,
            conflict,
        } => {
            let status = if *outcome == crate::model::Outcome::Rejected {
                409
            } else {
                200
            };
            // Serialized from borrows: a hot document's item can be large,
            // and every mutation of a coalesced batch carries it.
            let body = Decided {
                id,
                outcome: outcome.as_str(),
                version: *version,
                item,
                conflict: conflict.as_ref().map(conflict_json),
                score,
                queued_ms: (queued_ms * 1000.0).round() / 1000.0,
            };
            match serde_json::to_string(&body) {
                Ok(body) => Reply {
                    status,
                    body,
                    retry_after_s: None,
                    code: None,
                },
                Err(e) => Reply::error(500, "internal", format!("cannot render the answer: {e}")),
            }
        }
        Verdict::NotFound { version } => Reply::error(
            404,
            "not_found",
            format!(
                "cannot delete {doc_label}: {}",
                if *version == 0 {
                    "it was never written".to_string()
                } else {
                    format!("it is already deleted (version {version})")
                }
            ),
        ),
    }
}

/// The answer to a decided mutation, fields in wire order.
#[derive(serde::Serialize)]
struct Decided<'a> {
    id: &'a str,
    outcome: &'a str,
    version: u64,
    item: Option<&'a serde_json::Map<String, Value>>,
    conflict: Option<Value>,
    score: Option<f64>,
    queued_ms: f64,
}

fn conflict_json(c: &ConflictInfo) -> Value {
    json!({
        "base_version": c.base_version,
        "server_version": c.server_version,
        "handler": c.handler,
        "reason": c.reason,
    })
}
