//! What the engine tells a client about a mutation, as typed results: a
//! decision, a durable queueing, or a refusal with its reason. `api` alone
//! turns them into statuses, headers and bodies.
//!
//! A decided mutation's answer is the one exception to "no wire format
//! below the API": it is rendered once, when the mutation is decided, and
//! kept verbatim in the store, so that a resend, `GET /v1/mutations/{id}`
//! and the event stream all replay exactly what the first answer said.

use crate::model::{ConflictInfo, Decision, DecisionKind, DocKey, Outcome, Verdict};
use crate::queue::Full;
use crate::store::StoreError;
use serde_json::{Value, json};
use sluice_core::control::Shut;

/// The engine's answer about one mutation.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Decided(Decision),
    /// Durably in the accept log and queued (`?wait=false`); the outcome
    /// comes later.
    Queued(Queued),
    /// Its collection's handler failed and it is kept in the quarantine
    /// (`on_handler_failure: quarantine`) until retried or discarded.
    Quarantined {
        id: String,
        reason: String,
    },
    /// Not queued, or not decided in time: nothing was applied by this
    /// attempt.
    Refused(Refusal),
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Answer {
        Answer::Refused(refusal)
    }
}

/// A mutation accepted and not yet decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub id: String,
    /// Its conflict score, when it was scored.
    pub score: Option<f64>,
    /// In the staging area (a shadow write), not yet in the queue.
    pub staged: bool,
}

/// Why a mutation was not decided, and what to tell its client.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
    /// Seconds for `Retry-After`, when the engine knows better than the
    /// status's usual one.
    pub retry_after_s: Option<u32>,
}

impl Refusal {
    pub fn new(reason: RefusalReason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
            retry_after_s: None,
        }
    }
}

/// Every reason the engine refuses a mutation. Each but
/// `IdempotencyKeyReused` is worth a resend with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// The door's adaptive limit is reached.
    Overloaded,
    QueueFull,
    LaneFull,
    ShuttingDown,
    StoreUnavailable,
    /// The document kept changing under Sluice, or its commits kept finding
    /// replies its lookups did not.
    StoreContention,
    /// In cluster mode: the document's partition moved to another process
    /// while the lane was decided (its commit was fenced off).
    PartitionMoved,
    /// In cluster mode: Redis, which carries the mutation to its owner,
    /// did not answer.
    ClusterUnavailable,
    DecisionTimeout,
    /// The id was used by this client for a different mutation.
    IdempotencyKeyReused,
    /// The first request with this id went away before it was queued.
    RequestAbandoned,
    /// A handler failed and the quarantine has no room.
    QuarantineFull,
    /// The mutation would leave a document over `document_bytes_max`.
    DocumentTooLarge,
    /// A broken invariant inside the engine.
    Internal,
}

impl RefusalReason {
    /// A refusal that a later attempt of the same mutation may not meet:
    /// room, the door, the store or the process came back.
    pub(super) fn is_transient(self) -> bool {
        matches!(
            self,
            RefusalReason::Overloaded
                | RefusalReason::QueueFull
                | RefusalReason::LaneFull
                | RefusalReason::ShuttingDown
                | RefusalReason::StoreUnavailable
                | RefusalReason::StoreContention
                | RefusalReason::ClusterUnavailable
                | RefusalReason::PartitionMoved
                | RefusalReason::DecisionTimeout
                | RefusalReason::RequestAbandoned
        )
    }

    const ALL: [RefusalReason; 14] = [
        RefusalReason::Overloaded,
        RefusalReason::QueueFull,
        RefusalReason::LaneFull,
        RefusalReason::ShuttingDown,
        RefusalReason::StoreUnavailable,
        RefusalReason::StoreContention,
        RefusalReason::PartitionMoved,
        RefusalReason::ClusterUnavailable,
        RefusalReason::DecisionTimeout,
        RefusalReason::IdempotencyKeyReused,
        RefusalReason::RequestAbandoned,
        RefusalReason::QuarantineFull,
        RefusalReason::DocumentTooLarge,
        RefusalReason::Internal,
    ];

    /// The reason a code stands for (an answer that came from another
    /// process).
    pub fn from_code(code: &str) -> Option<RefusalReason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The stable code clients and the metrics see.
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::Overloaded => "overloaded",
            RefusalReason::QueueFull => "queue_full",
            RefusalReason::LaneFull => "lane_full",
            RefusalReason::ShuttingDown => "shutting_down",
            RefusalReason::StoreUnavailable => "store_unavailable",
            RefusalReason::StoreContention => "store_contention",
            RefusalReason::PartitionMoved => "partition_moved",
            RefusalReason::ClusterUnavailable => "cluster_unavailable",
            RefusalReason::DecisionTimeout => "decision_timeout",
            RefusalReason::IdempotencyKeyReused => "idempotency_key_reused",
            RefusalReason::RequestAbandoned => "request_abandoned",
            RefusalReason::QuarantineFull => "quarantine_full",
            RefusalReason::DocumentTooLarge => "document_too_large",
            RefusalReason::Internal => "internal",
        }
    }
}

// The engine's refusals, one constructor each.

pub(super) fn document_too_large(doc: &DocKey, bytes: usize, max: usize) -> Refusal {
    Refusal::new(
        RefusalReason::DocumentTooLarge,
        format!(
            "the mutation would make {doc} {bytes} bytes of JSON, over the {max}-byte bound; nothing was applied"
        ),
    )
}

pub(super) fn shutting_down() -> Refusal {
    Refusal::new(
        RefusalReason::ShuttingDown,
        "Sluice is shutting down; send the mutation again shortly",
    )
}

pub(super) fn full_refusal(full: Full, doc: &DocKey) -> Refusal {
    match full {
        Full::QueueFull => Refusal::new(
            RefusalReason::QueueFull,
            "the mutation queue is full; retry after a moment",
        ),
        Full::LaneFull => Refusal::new(
            RefusalReason::LaneFull,
            format!("too many mutations are waiting for {doc}; retry after a moment"),
        ),
    }
}

pub(super) fn overloaded(shut: Shut) -> Refusal {
    let seconds = shut.retry_after_s();
    Refusal {
        retry_after_s: Some(seconds),
        ..Refusal::new(
            RefusalReason::Overloaded,
            format!(
                "Sluice is overloaded: mutations wait about {} ms in its queue, over its bound; nothing was queued, retry after {seconds} s (Retry-After), when what is queued now will have drained",
                shut.wait_ms
            ),
        )
    }
}

pub(super) fn reused_key(id: &str) -> Refusal {
    Refusal::new(
        RefusalReason::IdempotencyKeyReused,
        format!("id {id:?} was already used by this client for a different mutation"),
    )
}

pub(super) fn store_error_refusal(e: &StoreError) -> Refusal {
    Refusal::new(
        RefusalReason::StoreUnavailable,
        format!("{e}; nothing was applied by this attempt, resend with the same id"),
    )
}

/// What a decided mutation's answer says besides its verdict and document:
/// the same for every rendering of one mutation (a size-limit rewrite
/// renders it again).
pub(crate) struct Frame<'a> {
    pub id: &'a str,
    /// The document as a message names it (`collection/key`).
    pub doc_label: &'a str,
    pub score: Option<f64>,
    pub queued_ms: f64,
    /// The base it was sent with, when it chained onto its client's own writes.
    pub chained_from: Option<u64>,
}

impl Frame<'_> {
    /// Renders the answer; `item` is the document as the mutation left it
    /// (for a rejection, the server's).
    pub(crate) fn render(
        &self,
        verdict: &Verdict,
        item: Option<&serde_json::Map<String, Value>>,
    ) -> Decision {
        let Frame {
            id,
            doc_label,
            score,
            queued_ms,
            chained_from,
        } = *self;
        match verdict {
            Verdict::Outcome {
                outcome,
                version,
                conflict,
            } => {
                let kind = if *outcome == Outcome::Rejected {
                    DecisionKind::Rejected
                } else {
                    DecisionKind::Written
                };
                // Serialized from borrows: a hot document's item can be large,
                // and every mutation of a coalesced batch carries it.
                let body = WireDecision {
                    id,
                    outcome: outcome.as_str(),
                    version: *version,
                    item,
                    conflict: conflict.as_ref().map(conflict_json),
                    chained_from,
                    score,
                    queued_ms: (queued_ms * 1000.0).round() / 1000.0,
                };
                // Serializing borrowed JSON values and plain numbers cannot fail
                // (serde_json writes a non-finite float as null).
                let body = serde_json::to_string(&body).unwrap_or_else(|e| {
                    json!({ "id": id, "outcome": outcome.as_str(), "version": version, "error": e.to_string() })
                        .to_string()
                });
                Decision { kind, body }
            }
            Verdict::NotFound { version } => {
                let message = format!(
                    "cannot delete {doc_label}: {}",
                    if *version == 0 {
                        "it was never written".to_string()
                    } else {
                        format!("it is already deleted (version {version})")
                    }
                );
                Decision {
                    kind: DecisionKind::NotFound,
                    body: json!({ "error": { "code": "not_found", "message": message } })
                        .to_string(),
                }
            }
        }
    }
}

/// The answer to a decided mutation, fields in wire order.
#[derive(serde::Serialize)]
struct WireDecision<'a> {
    id: &'a str,
    outcome: &'a str,
    version: u64,
    item: Option<&'a serde_json::Map<String, Value>>,
    conflict: Option<Value>,
    /// The base it was sent with, when it chained onto its client's own
    /// later writes; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    chained_from: Option<u64>,
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
