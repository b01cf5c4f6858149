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
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ErrorDetail {
    /// Stable, machine-readable: `invalid_mutation`, `queue_full`, `overloaded`, `store_unavailable`, …
    pub code: String,
    pub message: String,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MutationOutcome {
    Applied,
    Merged,
    Rejected,
}

/// A decided mutation: 200 when applied or merged, 409 when rejected.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct MutationResult {
    pub id: String,
    pub outcome: MutationOutcome,
    /// The document's version after the mutation.
    pub version: u64,
    /// The document after the mutation (null when deleted).
    #[schema(value_type = Option<Object>)]
    pub item: Option<Value>,
    /// Present when the mutation conflicted.
    pub conflict: Option<ConflictSummary>,
    /// Present when the mutation's base was stale only because of its own
    /// client's later writes (`chain_own_writes`): the base it was sent with.
    #[schema(required = false)]
    pub chained_from: Option<u64>,
    /// The predicted conflict probability, scored before the outcome existed.
    pub score: Option<f64>,
    /// Time spent queued, in milliseconds.
    pub queued_ms: f64,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ConflictSummary {
    pub base_version: u64,
    pub server_version: u64,
    pub handler: String,
    pub reason: Option<String>,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum QueuedStatus {
    Queued,
    /// A shadow write in the staging area.
    Staged,
}

/// A mutation accepted with `?wait=false`, or staged (`"shadow": true`),
/// and not yet decided.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct Queued {
    pub id: String,
    pub status: QueuedStatus,
    pub score: Option<f64>,
}

/// A mutation kept in the quarantine because its collection's script or
/// webhook failed (`on_handler_failure: quarantine`).
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct QuarantinedStatus {
    pub id: String,
    pub status: QuarantinedTag,
    /// How the handler failed.
    pub reason: String,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum QuarantinedTag {
    Quarantined,
}

/// A 202: durably queued, or quarantined.
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum NotYetDecided {
    Queued(Queued),
    Quarantined(QuarantinedStatus),
}

/// `GET /v1/quarantine`.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct QuarantineList {
    pub quarantined: Vec<QuarantineEntry>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct QuarantineEntry {
    pub client: String,
    pub id: String,
    pub collection: String,
    pub key: String,
    /// How the handler failed (the latest attempt's).
    pub reason: String,
    pub score: f64,
    /// When it was (last) quarantined, ms since the epoch.
    pub quarantined_at_ms: i64,
    /// Since when, in milliseconds.
    pub waited_ms: i64,
    /// The mutation as it was sent.
    #[schema(value_type = Object)]
    pub mutation: Value,
}

/// `GET /v1/mutations?client=…&status=…`.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct PendingList {
    pub mutations: Vec<PendingEntry>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct PendingEntry {
    pub id: String,
    pub collection: String,
    pub key: String,
    /// `queued` or `quarantined`.
    pub status: String,
    /// The predicted conflict probability.
    pub score: f64,
    /// How long it has waited, in milliseconds (since it arrived; for a
    /// quarantined one, since it was quarantined).
    pub waited_ms: i64,
    /// Why it is quarantined (quarantined ones only).
    #[schema(required = false)]
    pub reason: Option<String>,
}

/// One answer per mutation, in the batch's order, each as a single mutation
/// would get it.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct BatchResult {
    pub results: Vec<BatchItemResult>,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum BatchItemResult {
    Decided(MutationResult),
    Quarantined(QuarantinedStatus),
    Failed(ErrorBody),
}

/// What `GET /v1/mutations/{id}` answers: the stored answer of a decided
/// mutation (its outcome, or the error it was refused with), else `queued`.
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum MutationStatus {
    Decided(MutationResult),
    Queued(Queued),
    Quarantined(QuarantinedStatus),
    Failed(ErrorBody),
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct DocumentBody {
    pub collection: String,
    pub key: String,
    pub version: u64,
    #[schema(value_type = Option<Object>)]
    pub item: Option<Value>,
    /// With `intent=write`: what a write based on this read is forecast.
    #[schema(nullable = false)]
    pub forecast: Option<ForecastBody>,
    /// With `intent=write`, when the forecast earned one: a write lease.
    #[schema(nullable = false)]
    pub lease: Option<LeaseBody>,
}

/// `GET /v1/shadow`.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct StagedList {
    pub staged: Vec<StagedEntry>,
}

/// A shadow write waiting in the staging area.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct StagedEntry {
    pub id: String,
    pub client: String,
    pub collection: String,
    pub key: String,
    pub op: String,
    pub base_version: Option<u64>,
    /// When it was staged (ms since the epoch), and how long ago.
    pub staged_ms: i64,
    pub waited_ms: i64,
    /// The document's version now, whether the mutation's base is behind
    /// it (it would conflict if decided now), and its score now.
    pub current_version: u64,
    pub would_conflict: bool,
    pub score: f64,
}

/// `GET /v1/collections/{name}/shadow-report`.
#[derive(ToSchema, serde::Serialize)]
#[schema(as = ShadowReport)]
pub(crate) struct ShadowReportBody {
    pub collection: String,
    /// The shadow handler configured now (its name; null: none).
    pub shadow_handler: Option<String>,
    /// Conflicts both handlers decided, those they agreed on (the same
    /// outcome and the same document), and those they did not.
    pub compared: u64,
    pub agreed: u64,
    pub disagreed: u64,
    /// The shadow handler failed (the live outcome was unaffected).
    pub failed: u64,
    /// Comparisons dropped because too many were waiting.
    pub skipped: u64,
    pub agreement_rate: Option<f64>,
    /// The latest 20 disagreements, newest first.
    pub disagreements: Vec<ShadowDisagreement>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ShadowDisagreement {
    pub id: String,
    pub client: String,
    pub key: String,
    pub at_ms: i64,
    pub base_version: Option<u64>,
    pub server_version: u64,
    pub live: ShadowSide,
    pub shadow: ShadowSide,
}

/// What one handler decided.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ShadowSide {
    /// `applied`, `merged`, `rejected`, `not_found`, or `failed`.
    pub outcome: String,
    /// The document it would leave (null when rejected or deleted).
    #[schema(value_type = Option<Object>)]
    pub item: Value,
    pub reason: Option<String>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ForecastBody {
    /// The probability that a write based on this read will conflict, as
    /// the model scores it now.
    pub conflict_probability: f64,
}

/// Until `expires_ms` or until its holder's mutation (carrying
/// `"lease": token`) arrives, other mutations of the document wait in its
/// lane, and the holder's goes first.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct LeaseBody {
    pub token: String,
    /// When the lease ends on its own (ms since the epoch, server clock).
    pub expires_ms: i64,
}

/// `"optimistic"`, `"automerge"`, `{"script": "<JavaScript source>"}` or
/// `{"webhook": {"url", "timeout_ms"}}`.
#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HandlerConfig {
    Optimistic,
    Automerge,
    Script(String),
    Webhook(WebhookConfig),
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct WebhookConfig {
    pub url: String,
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Headers sent with every call (for the function service to
    /// authenticate Sluice); their values read back as `<redacted>`.
    #[schema(required = false)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct CollectionBody {
    pub handler: HandlerConfig,
    /// Fields automerge treats as sets (union instead of last writer wins).
    pub set_fields: Option<Vec<String>>,
    /// A mutation whose base is stale only because of its own client's
    /// later writes applies as if based on the current version, and its
    /// answer carries `chained_from` (default false).
    pub chain_own_writes: Option<bool>,
    /// What becomes of a conflict whose script or webhook failed: rejected
    /// (default), or kept in the quarantine to be retried or discarded.
    pub on_handler_failure: Option<OnHandlerFailure>,
    /// Who may do what in this collection where it differs from the roles
    /// (only an admin changes it).
    pub access: Option<AccessRules>,
    /// A candidate handler run beside the live one on real conflicts as a
    /// dry run, its result only compared (`GET
    /// /v1/collections/{name}/shadow-report`), never written.
    pub shadow_handler: Option<HandlerConfig>,
}

/// Per action, who may take it: `"*"` (any authenticated caller),
/// `"role:admin|writer|reader"` or `"client:NAME"`, at most 256 entries. An
/// action left out follows the caller's role; admins may do everything.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct AccessRules {
    /// Read documents.
    #[schema(max_items = 256)]
    pub read: Option<Vec<String>>,
    /// Send mutations.
    #[schema(max_items = 256)]
    pub write: Option<Vec<String>>,
    /// Read and change the configuration (not `access`), and read its changes.
    #[schema(max_items = 256)]
    pub configure: Option<Vec<String>>,
    /// Read the collection's conflicts.
    #[schema(max_items = 256)]
    pub history: Option<Vec<String>>,
    /// List, retry and discard its quarantined mutations.
    #[schema(max_items = 256)]
    pub quarantine: Option<Vec<String>>,
}

/// `GET /v1/collections/{name}/changes`.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct CollectionChanges {
    /// Newest first.
    pub changes: Vec<CollectionChangeEntry>,
    /// Present when older changes remain: the `before` of the next page.
    #[schema(required = false)]
    pub next: Option<i64>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct CollectionChangeEntry {
    /// Its place in the order of changes.
    pub seq: i64,
    /// When it was made, ms since the epoch.
    pub at_ms: i64,
    /// Who made it; null when authentication was off.
    pub by: Option<ChangeAuthor>,
    /// The configuration it set (secrets redacted).
    pub config: CollectionBody,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ChangeAuthor {
    pub client: String,
    pub role: String,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnHandlerFailure {
    Reject,
    Quarantine,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct Conflicts {
    pub conflicts: Vec<ConflictEntry>,
    /// Present when older conflicts remain: pass it as `before`.
    #[schema(required = false)]
    pub next: Option<i64>,
}

/// One conflict from the history database.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ConflictEntry {
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
pub(crate) struct Health {
    pub status: String,
    /// What is wrong while Sluice still serves (the history gone or failing).
    pub degraded: Vec<String>,
}

/// An operation's name.
#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OpName {
    Put,
    Patch,
    Delete,
}

/// `GET /v1/stats`: the dispatcher's state now.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct EngineStats {
    /// The load signal, 0–1, and the threshold above which dispatch backs off.
    pub load: f64,
    pub threshold: f64,
    /// Lanes in flight at most (adaptive), and in flight now.
    pub concurrency_limit: u64,
    pub in_flight: u64,
    /// Mutations accepted and not yet decided.
    pub queue_depth: u64,
    pub lanes: u64,
    pub commit_batch_max: u64,
    pub store_latency_ms: f64,
    pub baseline_latency_ms: f64,
    pub conflict_rate: f64,
    pub cpu: f64,
    pub memory: f64,
    /// Mutations decided since the start (applied, merged or rejected).
    pub mutations_decided: u64,
    /// Lane commits the store refused because the version had moved (a
    /// writer that bypassed Sluice): store writes wasted and done again.
    pub commits_stale: u64,
    /// Requests inside Sluice: synchronous mutations between arrival and
    /// answer, and document reads.
    pub in_system: u64,
    /// Requests let into the system at once, at most (the door's adaptive limit).
    pub admission_limit: u64,
    /// Mutations kept in the quarantine.
    pub quarantined: u64,
    pub locking: LockingStats,
    pub leases: LeaseStats,
}

/// Read-time forecasts and write leases.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct LeaseStats {
    /// `off`, `adaptive` or `always`.
    pub mode: String,
    /// The forecast at or above which a read earns a lease now.
    pub threshold: f64,
    /// Reads with `intent=write` answered since the start.
    pub forecasts: u64,
    pub granted: u64,
    /// Leases ended by their holder's mutation, and by their time.
    pub used: u64,
    pub expired: u64,
    /// Ended leases that held someone else's mutation back.
    pub needed: u64,
    /// Mutations held back by leases, in all.
    pub held_back: u64,
    /// Documents held by a lease now, and the mutations waiting on them.
    pub held_now: u64,
    pub waiting_now: u64,
    /// The forecasts against what then happened: the same client's write
    /// based on the version it read, decided as a conflict or not.
    pub forecast_quality: QualityReport,
}

/// Pre-emptive locking: lanes whose highest conflict score is at or above
/// `threshold` read, decide and commit their document under a lock in the
/// store.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct LockingStats {
    /// `off`, `adaptive` or `always`.
    pub mode: String,
    pub threshold: f64,
    /// Lanes decided under a lock since the start.
    pub locked_lanes: u64,
    /// Of those, the ones whose document had been written behind Sluice
    /// since it last wrote it.
    pub locks_needed: u64,
    /// Commits of lanes without a lock that found the version moved.
    pub stale_unlocked: u64,
    /// How long the locks were held, in all (ms).
    pub lock_held_ms: f64,
}

/// `POST /v1/mutations:simulate`: one result per mutation, in order.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct SimulateResult {
    pub results: Vec<Simulated>,
}

/// What one mutation would meet now; nothing was written.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct Simulated {
    pub id: String,
    pub collection: String,
    pub key: String,
    /// Its base is not the document's version now: the collection's
    /// handler would decide.
    pub would_conflict: bool,
    /// `applied`, `merged`, `rejected`, `not_found`, or `refused` (it would
    /// leave a document over `document_bytes_max`).
    pub outcome: SimulatedOutcome,
    /// The version it would leave, and the version it is decided against.
    pub version: u64,
    pub current_version: u64,
    /// The item it would leave (the current one when rejected or refused;
    /// null when deleted or never written).
    #[schema(value_type = Option<Object>)]
    pub item: Option<Value>,
    /// The handler that would decide its conflict, and why it would
    /// reject or merge; null without a conflict.
    pub handler: Option<String>,
    pub reason: Option<String>,
    /// The predicted conflict probability.
    pub score: f64,
    /// An estimate of its wait in its lane.
    pub expected_wait_ms: f64,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SimulatedOutcome {
    Applied,
    Merged,
    Rejected,
    NotFound,
    Refused,
}

/// Predicted probability against the observed conflict rate, in one bin.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: u64,
    pub mean_predicted: Option<f64>,
    pub observed_rate: Option<f64>,
}

/// One summary of (prediction, outcome) pairs; figures are null until both
/// classes have been seen.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct QualityReport {
    pub count: u64,
    pub positives: u64,
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub expected_calibration_error: Option<f64>,
    pub calibration: Vec<CalibrationBin>,
}

/// `GET /v1/cluster`: every live member with the partitions it owns.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ClusterView {
    /// How many partitions documents are split into.
    pub partitions: u32,
    pub members: Vec<ClusterMember>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ClusterMember {
    pub id: String,
    /// Where it serves (`host:port`).
    pub address: String,
    /// When it last renewed its membership, epoch ms of Redis's clock.
    pub last_seen_ms: i64,
    pub partitions: Vec<OwnedPartition>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct OwnedPartition {
    pub partition: u32,
    /// The fencing token the store checks in every commit of the partition.
    pub epoch: u64,
    /// Entries of the partition's stream not yet acknowledged.
    pub backlog: u64,
}

/// `GET /v1/model`: the predictor, where it came from and how good it is.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ModelReport {
    /// 0 for the model built online since start; +1 at every retraining swap.
    pub model_version: u64,
    pub trained_at_ms: Option<i64>,
    pub trained_rows: u64,
    pub training_ms: Option<f64>,
    pub use_version_cache: bool,
    pub learned: u64,
    pub features: u64,
    pub dimensions: u64,
    pub keys_tracked: u64,
    pub clients_tracked: u64,
    pub all_time: QualityReport,
    pub recent: QualityReport,
}

/// Outcome counts since the start.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct Totals {
    pub applied: u64,
    pub merged: u64,
    pub rejected: u64,
    pub not_found: u64,
    pub refused: u64,
}

/// One second of the dashboard's series: rates per second over that second.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct SeriesPoint {
    pub at_ms: i64,
    pub applied: u64,
    pub merged: u64,
    pub rejected: u64,
    pub not_found: u64,
    pub refused: u64,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub concurrency_limit: u64,
    pub load: f64,
    pub threshold: f64,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct HotDocument {
    pub collection: String,
    pub key: String,
    /// Decayed count of recent mutations (about the last 10 s), a lower
    /// bound: what the document surely had since it was last tracked.
    pub recent_mutations: f64,
    /// Share of those that conflicted.
    pub conflict_rate: f64,
    /// The predicted conflict probability of its latest mutation.
    pub score: f64,
}

/// A recent conflict, its values summarized.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ConflictView {
    pub at_ms: i64,
    pub mutation_id: String,
    pub collection: String,
    pub key: String,
    pub handler: String,
    pub resolution: String,
    pub reason: String,
    pub base_version: u64,
    pub server_version: u64,
    /// JSON text, summarized and cut to 1,000 characters.
    pub incoming: String,
    pub existing: String,
    pub result: String,
}

/// The predictor's quality over its recent window.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct ModelSummary {
    pub model_version: u64,
    pub learned: u64,
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub calibration_error: Option<f64>,
    pub calibration: Vec<CalibrationBin>,
}

/// `GET /v1/dashboard`: what the dashboard draws.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct Dashboard {
    pub at_ms: i64,
    pub totals: Totals,
    pub series: Vec<SeriesPoint>,
    pub hot: Vec<HotDocument>,
    pub conflicts: Vec<ConflictView>,
    pub stats: EngineStats,
    pub model: ModelSummary,
    /// The cluster this process is a member of; `null` outside cluster
    /// mode.
    pub cluster: Option<DashboardCluster>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct DashboardCluster {
    /// The member serving this page.
    pub member: String,
    /// Partitions it owns now.
    pub owned: usize,
    pub partitions: u32,
    /// The live members as its last renewal saw them.
    pub members: Vec<DashboardMember>,
}

#[derive(ToSchema, serde::Serialize)]
pub(crate) struct DashboardMember {
    pub id: String,
    pub address: String,
    pub last_seen_ms: i64,
}
