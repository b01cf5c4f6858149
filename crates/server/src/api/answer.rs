//! The engine's typed answers on the wire: every status a mutation's answer
//! can have is chosen here, and nowhere else.

use crate::dispatch::{Answer, Queued, Refusal, RefusalReason};
use crate::model::DecisionKind;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An answer as it goes out: status, JSON body, and for 429 and 503 the
/// seconds of its `Retry-After`.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after_s: Option<u32>,
}

/// The status of a decided mutation of this kind.
pub(super) fn decision_status(kind: DecisionKind) -> StatusCode {
    match kind {
        DecisionKind::Written => StatusCode::OK,
        DecisionKind::Rejected => StatusCode::CONFLICT,
        DecisionKind::NotFound => StatusCode::NOT_FOUND,
    }
}

/// The status of a refusal for this reason.
pub(super) fn refusal_status(reason: RefusalReason) -> StatusCode {
    match reason {
        RefusalReason::Overloaded | RefusalReason::QueueFull | RefusalReason::LaneFull => {
            StatusCode::TOO_MANY_REQUESTS
        }
        RefusalReason::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        RefusalReason::DocumentTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RefusalReason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        RefusalReason::ShuttingDown
        | RefusalReason::StoreUnavailable
        | RefusalReason::StoreContention
        | RefusalReason::PartitionMoved
        | RefusalReason::ClusterUnavailable
        | RefusalReason::DecisionTimeout
        | RefusalReason::RequestAbandoned
        | RefusalReason::QuarantineFull => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The body of a queued mutation: the 202, and `GET /v1/mutations/{id}`
/// while it waits.
pub(super) fn queued_body(queued: &Queued) -> String {
    if queued.staged {
        return json!({ "id": queued.id, "status": "staged" }).to_string();
    }
    json!({ "id": queued.id, "status": "queued", "score": queued.score }).to_string()
}

/// The body of a quarantined mutation: its 202, a resend's, and
/// `GET /v1/mutations/{id}`'s while it stays there.
pub(super) fn quarantined_body(id: &str, reason: &str) -> String {
    json!({ "id": id, "status": "quarantined", "reason": reason }).to_string()
}

pub(super) fn refusal_body(refusal: &Refusal) -> String {
    json!({ "error": { "code": refusal.reason.code(), "message": refusal.message } }).to_string()
}

/// A refusal as an error answer, for the routes that answer errors only.
pub(super) fn refusal_error(refusal: Refusal) -> super::ApiError {
    let error = super::ApiError::new(
        refusal_status(refusal.reason),
        refusal.reason.code(),
        refusal.message,
    );
    match refusal.retry_after_s {
        Some(seconds) => error.retry_after(seconds),
        None => error,
    }
}

/// How long a client told to come back should wait, for a status: every
/// `Retry-After` Sluice sends is chosen here.
pub(super) fn retry_after(status: StatusCode) -> Option<u32> {
    matches!(status.as_u16(), 429 | 503).then_some(1)
}

/// The engine's answer as it goes on the wire.
pub fn reply(answer: Answer) -> Reply {
    let (status, body, told) = match answer {
        Answer::Decided(decision) => (decision_status(decision.kind), decision.body, None),
        Answer::Queued(queued) => (StatusCode::ACCEPTED, queued_body(&queued), None),
        Answer::Quarantined { id, reason } => {
            (StatusCode::ACCEPTED, quarantined_body(&id, &reason), None)
        }
        Answer::Refused(refusal) => (
            refusal_status(refusal.reason),
            refusal_body(&refusal),
            refusal.retry_after_s,
        ),
    };
    Reply {
        status: status.as_u16(),
        body,
        retry_after_s: told.or(retry_after(status)),
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body,
        )
            .into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
