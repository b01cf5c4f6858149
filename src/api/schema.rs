//! Schemas of answers that are rendered by hand (a mutation's reply is
//! serialized once from borrows and stored verbatim, an error is built in one
//! place): these types exist for the OpenAPI description only. The API test
//! checks real answers against them, so they cannot drift from what the
//! server sends.

#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;

/// Every error: a stable code and a message for a person.
#[derive(ToSchema, serde::Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(ToSchema, serde::Serialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_mutation`, `queue_full`, `overloaded`, `store_unavailable`, …
    pub code: String,
    pub message: String,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MutationOutcome {
    Applied,
    Merged,
    Rejected,
}

/// A decided mutation: 200 when applied or merged, 409 when rejected.
#[derive(ToSchema, serde::Serialize)]
pub struct MutationResult {
    pub id: String,
    pub outcome: MutationOutcome,
    /// The document's version after the mutation.
    pub version: u64,
    /// The document after the mutation (null when deleted).
    #[schema(value_type = Option<Object>)]
    pub item: Option<Value>,
    /// Present when the mutation conflicted.
    pub conflict: Option<ConflictSummary>,
    /// The predicted conflict probability, scored before the outcome existed.
    pub score: Option<f64>,
    /// Time spent queued, in milliseconds.
    pub queued_ms: f64,
}

#[derive(ToSchema, serde::Serialize)]
pub struct ConflictSummary {
    pub base_version: u64,
    pub server_version: u64,
    pub handler: String,
    pub reason: Option<String>,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueuedStatus {
    Queued,
}

/// A mutation accepted with `?wait=false` and not yet decided.
#[derive(ToSchema, serde::Serialize)]
pub struct Queued {
    pub id: String,
    pub status: QueuedStatus,
    pub score: Option<f64>,
}

/// One answer per mutation, in the batch's order, each as a single mutation
/// would get it.
#[derive(ToSchema, serde::Serialize)]
pub struct BatchResult {
    pub results: Vec<BatchItemResult>,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub enum BatchItemResult {
    Decided(MutationResult),
    Failed(ErrorBody),
}

/// What `GET /v1/mutations/{id}` answers: the stored answer of a decided
/// mutation (its outcome, or the error it was refused with), else `queued`.
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub enum MutationStatus {
    Decided(MutationResult),
    Queued(Queued),
    Failed(ErrorBody),
}

#[derive(ToSchema, serde::Serialize)]
pub struct DocumentBody {
    pub collection: String,
    pub key: String,
    pub version: u64,
    #[schema(value_type = Option<Object>)]
    pub item: Option<Value>,
}

/// `"optimistic"`, `"automerge"`, `{"script": "<JavaScript source>"}` or
/// `{"webhook": {"url", "timeout_ms"}}`.
#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerConfig {
    Optimistic,
    Automerge,
    Script(String),
    Webhook(WebhookConfig),
}

#[derive(ToSchema, serde::Serialize)]
pub struct WebhookConfig {
    pub url: String,
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

#[derive(ToSchema, serde::Serialize)]
pub struct CollectionBody {
    pub handler: HandlerConfig,
    /// Fields automerge treats as sets (union instead of last writer wins).
    pub set_fields: Option<Vec<String>>,
}

#[derive(ToSchema, serde::Serialize)]
pub struct Conflicts {
    pub conflicts: Vec<ConflictEntry>,
}

/// One conflict from the history database.
#[derive(ToSchema, serde::Serialize)]
pub struct ConflictEntry {
    pub mutation_id: String,
    pub client: Option<String>,
    pub collection: String,
    pub key: String,
    pub base_version: u64,
    pub server_version: u64,
    pub handler: String,
    /// `merged`, `removed` or `rejected`.
    pub resolution: String,
    pub reason: String,
    #[schema(value_type = Option<Object>)]
    pub incoming: Value,
    #[schema(value_type = Option<Object>)]
    pub existing: Value,
    #[schema(value_type = Option<Object>)]
    pub result: Value,
    /// When it was decided, ms since the epoch.
    pub at: i64,
}

#[derive(ToSchema, serde::Serialize)]
pub struct Health {
    pub status: String,
}
