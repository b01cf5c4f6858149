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
}

impl Reply {
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
        let body = json!({ "error": { "code": code, "message": message.into() } }).to_string();
        let retry_after_s = matches!(status, 429 | 503).then_some(1);
        Reply {
            status,
            body,
            retry_after_s,
        }
    }
}

/// Renders a decided mutation as the `POST /v1/mutations` response.
pub fn render(
    id: &str,
    doc_label: &str,
    verdict: &Verdict,
    score: Option<f64>,
    queued_ms: f64,
) -> Reply {
    match verdict {
        Verdict::Decided {
            outcome,
            version,
            item,
            conflict,
        } => {
            let status = if *outcome == crate::model::Outcome::Rejected {
                409
            } else {
                200
            };
            let body = json!({
                "id": id,
                "outcome": outcome.as_str(),
                "version": version,
                "item": item.clone().map(Value::Object),
                "conflict": conflict.as_ref().map(conflict_json),
                "score": score,
                "queued_ms": (queued_ms * 1000.0).round() / 1000.0,
            });
            Reply {
                status,
                body: body.to_string(),
                retry_after_s: None,
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

fn conflict_json(c: &ConflictInfo) -> Value {
    json!({
        "base_version": c.base_version,
        "server_version": c.server_version,
        "handler": c.handler,
        "reason": c.reason,
    })
}
