//! The dispatcher: admission, idempotency, the lanes' workers, group commit
//! and the history writer. This is the async layer around the synchronous
//! queue and resolver.
//!
//! The life of a mutation here:
//! 1. `submit` reserves `(client, id)`: a resend of a mutation still in flight
//!    waits for the original's reply; a resend of a decided one gets the stored
//!    reply; the same id with another body is refused.
//! 2. The mutation is admitted to its key's lane (or refused with 429).
//! 3. The dispatch loop hands ready lanes to workers, at most
//!    `lanes_in_flight_max` at once and one per key.
//! 4. A worker reads the document once, folds every taken mutation through the
//!    resolver (coalescing), and sends the end state with the replies to the
//!    committer, which writes many lanes in one transaction, keys sorted. A
//!    compare-and-set miss (a writer that bypassed Sluice) re-reads and decides
//!    the batch again; nothing was acknowledged yet.
//! 5. The worker releases the lane, records the history, then answers.
//!
//! Invariants: an answer is sent only after its reply is committed with the
//! write it describes; one worker per key; in-flight lanes ≤ the limit.

mod cache;
pub mod control;
mod reads;
pub mod reply;

pub use control::{ControlState, Signals};
pub use reply::Reply;

use control::{ControlConfig, Controller};

use crate::clock::SharedClock;
use crate::history::{ConflictQuery, HistoryError, MutationRecord, SharedHistory};
use crate::model::{DocKey, Document, Mutation, Verdict};
use crate::predict::{self, ModelReport, Observation, Predictor, PredictorConfig, Scored};
use crate::queue::{Queue, QueueLimits, Refusal};
use crate::resolve::{CollectionConfig, ConflictRecord, Handler, Resolver, ScriptError, Step};
use crate::store::{CommitOutcome, LaneCommit, LaneHistory, SharedStore, StoreError, StoredReply};
use crate::telemetry::{Board, Gauges, SeriesPoint, Telemetry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// Lanes decided at once. Each holds a read and, for custom handlers, a script
/// or webhook call; more than this mostly adds contention on the store.
pub const LANES_IN_FLIGHT_MAX_DEFAULT: usize = 64;
/// Lanes per group-commit transaction: large enough to amortize a commit's
/// fsync, small enough to keep one transaction short.
pub const COMMIT_BATCH_MAX_DEFAULT: usize = 256;
/// How long a client's request waits for its mutation to be decided.
pub const DECIDE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The cache of committed documents, in MiB.
pub const DOCUMENT_CACHE_MB_DEFAULT: usize = 64;
/// How long stored replies are kept for resends; the contract promises 24 h.
pub const IDEMPOTENCY_RETENTION_HOURS_DEFAULT: u64 = 48;
/// The store latency the concurrency controller aims under: a commit (one
/// fsync on SQLite, a round trip on PostgreSQL) takes a few milliseconds.
pub const LATENCY_TARGET_MS_DEFAULT: f64 = 20.0;
/// Past this much queueing a client is better told to come back than kept:
/// the goodput stays the store's, and the admitted mutations stay fast.
pub const QUEUE_WAIT_MAX_MS_DEFAULT: u64 = 20;
/// How often the host's CPU and memory are sampled.
const HOST_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// How much waiting a conflict probability of 1 is worth in the lane order:
/// a likely conflict overtakes lanes that arrived up to this much earlier.
pub const PRIORITY_BOOST_MS_DEFAULT: u64 = 50;
/// How often (in learned outcomes) the model's quality is logged.
const QUALITY_LOG_EVERY: u64 = 10_000;
/// Re-reads after compare-and-set misses before a batch gives up with 503.
const CAS_RETRIES_MAX: u32 = 16;
/// Requests queued for the committer and the history writer.
const PIPELINE_CHANNEL_LEN: usize = 4_096;
/// How often collection settings are read again from the store, so that
/// several Sluice processes on one store converge on what any of them was
/// told.
const COLLECTIONS_REFRESH: Duration = Duration::from_secs(2);
/// History batches written per transaction.
const HISTORY_BATCH_MAX: usize = 512;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub queue: QueueLimits,
    pub lanes_in_flight_max: usize,
    pub commit_batch_max: usize,
    pub decide_timeout: Duration,
    pub default_handler: Handler,
    pub idempotency_retention: Duration,
    pub priority_boost_ms: u64,
    /// The store latency the controller aims under.
    pub latency_target_ms: f64,
    /// The door refuses requests over its adaptive limit (429 `overloaded`)
    /// and lowers the limit while mutations stay longer than this on
    /// average; 0: no door.
    pub queue_wait_max_ms: u64,
    /// The budget of the cache of committed documents; 0: no cache, every
    /// lane reads the store.
    pub document_cache_bytes: usize,
    /// Sample the host's CPU and memory (off in tests that set them).
    pub sample_host: bool,
    pub predictor: PredictorConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue: QueueLimits {
                queue_len_max: 10_000,
                lane_len_max: 1_000,
                batch_len_max: 256,
            },
            lanes_in_flight_max: LANES_IN_FLIGHT_MAX_DEFAULT,
            commit_batch_max: COMMIT_BATCH_MAX_DEFAULT,
            decide_timeout: Duration::from_millis(DECIDE_TIMEOUT_MS_DEFAULT),
            default_handler: Handler::Optimistic,
            idempotency_retention: Duration::from_secs(IDEMPOTENCY_RETENTION_HOURS_DEFAULT * 3600),
            priority_boost_ms: PRIORITY_BOOST_MS_DEFAULT,
            latency_target_ms: LATENCY_TARGET_MS_DEFAULT,
            queue_wait_max_ms: QUEUE_WAIT_MAX_MS_DEFAULT,
            document_cache_bytes: DOCUMENT_CACHE_MB_DEFAULT << 20,
            sample_host: true,
            predictor: PredictorConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "Sluice is overloaded: mutations stay about {stayed_ms} ms, over its bound; retry after a moment"
    )]
    Overloaded { stayed_ms: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A snapshot for `/v1/stats` and the logs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct EngineStats {
    pub load: f64,
    pub threshold: f64,
    pub concurrency_limit: usize,
    pub in_flight: usize,
    /// Mutations accepted and not yet decided.
    pub queue_depth: usize,
    pub lanes: usize,
    pub commit_batch_max: usize,
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
    pub in_system: usize,
    /// Requests let into the system at once, at most (the door's adaptive
    /// limit).
    pub admission_limit: usize,
}

/// How old the dashboards' model summary may be.
const MODEL_SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// `GET /v1/dashboard`: what the dashboard draws.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Dashboard {
    #[serde(flatten)]
    pub board: crate::telemetry::Snapshot,
    pub stats: EngineStats,
    pub model: ModelSummary,
}

/// The predictor's quality over its recent window.
#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct ModelSummary {
    pub model_version: u64,
    pub learned: u64,
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub calibration_error: Option<f64>,
    /// Predicted probability against the observed conflict rate, per bin.
    pub calibration: Vec<crate::predict::quality::CalibrationBin>,
}

impl ModelSummary {
    fn of(report: ModelReport) -> ModelSummary {
        ModelSummary {
            model_version: report.training.model_version,
            learned: report.learned,
            auc: report.recent.auc,
            log_loss: report.recent.log_loss,
            calibration_error: report.recent.expected_calibration_error,
            calibration: report.recent.calibration,
        }
    }
}

/// Host CPU and memory use, 0–1, sampled by a background task (zero when
/// sampling is off, as in the simulation): the load signal's inputs from
/// outside. The decisions themselves take them as plain numbers (`Signals`).
#[derive(Default)]
struct HostLoad {
    cpu: AtomicU64,
    memory: AtomicU64,
}

impl HostLoad {
    fn set(&self, cpu: f64, memory: f64) {
        self.cpu.store(cpu.to_bits(), Ordering::Relaxed);
        self.memory.store(memory.to_bits(), Ordering::Relaxed);
    }

    fn get(&self) -> (f64, f64) {
        (
            f64::from_bits(self.cpu.load(Ordering::Relaxed)),
            f64::from_bits(self.memory.load(Ordering::Relaxed)),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Queued {
    mutation: Mutation,
    admitted_at: Duration,
    received_ms: i64,
    score: f64,
    lane_waiting: usize,
    /// Answered 202 and kept in the accept log until decided.
    accepted: bool,
    /// Taken by the learner once the mutation is decided.
    scored: Option<Scored>,
    answer: oneshot::Sender<Reply>,
}

struct Lanes {
    queue: Queue<Queued>,
    in_flight: usize,
}

struct Reservation {
    fingerprint: u64,
    waiters: Vec<oneshot::Sender<Reply>>,
    /// For a mutation accepted asynchronously: its 202, which an async resend
    /// gets while it waits.
    queued: Option<Reply>,
}

struct CommitJob {
    commit: LaneCommit,
    /// The outcome, and the lane handed back: its end state and history
    /// records ride with the commit and are not copied.
    done: oneshot::Sender<(Result<CommitOutcome, StoreError>, LaneCommit)>,
}

struct HistoryJob {
    mutations: Vec<MutationRecord>,
    conflicts: Vec<ConflictRecord>,
    done: oneshot::Sender<()>,
}

struct Inner {
    config: EngineConfig,
    clock: SharedClock,
    store: SharedStore,
    history: SharedHistory,
    resolver: Resolver,
    predictor: Mutex<Predictor>,
    control: Mutex<Controller>,
    host: HostLoad,
    lanes: Mutex<Lanes>,
    wake: Notify,
    reservations: Mutex<HashMap<(String, String), Reservation>>,
    collections: RwLock<HashMap<String, CollectionConfig>>,
    /// Bumped by every local change of `collections`: a refresh read from
    /// the store before the change must not undo it.
    collections_changed: AtomicU64,
    commit_tx: mpsc::Sender<CommitJob>,
    history_tx: mpsc::Sender<HistoryJob>,
    closing: AtomicBool,
    drained: Notify,
    /// Outcomes learned online since the last retraining.
    outcomes_since_retrain: AtomicU64,
    commits_stale: AtomicU64,
    in_system: AtomicUsize,
    door: Mutex<Door>,
    reads: reads::Reads,
    /// What Sluice last committed, so lanes start without a store read.
    cache: cache::DocCache,
    retrain_wanted: Notify,
    /// Bumped after every commit, so event streams know to look.
    events: tokio::sync::watch::Sender<u64>,
    telemetry: Arc<Telemetry>,
    /// The model's quality for dashboards and when it was computed:
    /// computing it sorts the recent window under the predictor's lock, so it
    /// is done at most once a second, and only while someone looks.
    model_summary: Mutex<Option<(Duration, ModelSummary)>>,
}

/// A handle on the running dispatcher; clones share it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves its state consistent before anything can
    // panic, so a poisoned lock still guards valid data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Engine {
    /// Loads the collection configurations and starts the dispatch loop, the
    /// committer, the history writer and the reply expiry.
    pub async fn start(
        store: SharedStore,
        history: SharedHistory,
        mut resolver: Resolver,
        clock: SharedClock,
        config: EngineConfig,
    ) -> Result<Engine, StoreError> {
        let mut collections = HashMap::new();
        for (name, text) in store.collections().await? {
            match serde_json::from_str::<CollectionConfig>(&text) {
                Ok(c) => {
                    collections.insert(name, c);
                }
                Err(e) => {
                    return Err(StoreError::Corrupt(format!(
                        "collection {name:?} configuration: {e}"
                    )));
                }
            }
        }
        let queue_len_max = config.queue.queue_len_max;
        let cache = cache::DocCache::new(config.document_cache_bytes);
        let reads_store = store.clone();
        let (commit_tx, commit_rx) = mpsc::channel(PIPELINE_CHANNEL_LEN);
        let (history_tx, history_rx) = mpsc::channel(PIPELINE_CHANNEL_LEN);
        let telemetry = Arc::new(Telemetry::new());
        resolver.observe(telemetry.clone());
        let inner = Arc::new(Inner {
            predictor: Mutex::new(Predictor::new(config.predictor.clone())),
            control: Mutex::new(Controller::new(ControlConfig {
                limit_max: config.lanes_in_flight_max,
                commit_batch_max: config.commit_batch_max,
                latency_target_ms: config.latency_target_ms,
            })),
            host: HostLoad::default(),
            lanes: Mutex::new(Lanes {
                queue: Queue::new(config.queue),
                in_flight: 0,
            }),
            config,
            clock,
            store,
            history,
            resolver,
            wake: Notify::new(),
            reservations: Mutex::new(HashMap::new()),
            collections: RwLock::new(collections),
            collections_changed: AtomicU64::new(0),
            commit_tx,
            history_tx,
            closing: AtomicBool::new(false),
            drained: Notify::new(),
            outcomes_since_retrain: AtomicU64::new(0),
            commits_stale: AtomicU64::new(0),
            in_system: AtomicUsize::new(0),
            door: Mutex::new(Door::new(queue_len_max)),
            reads: reads::Reads::start(reads_store),
            cache,
            retrain_wanted: Notify::new(),
            events: tokio::sync::watch::Sender::new(0),
            telemetry,
            model_summary: Mutex::new(None),
        });
        tokio::spawn(dispatch_loop(inner.clone()));
        tokio::spawn(committer(inner.clone(), commit_rx));
        if inner.config.sample_host {
            tokio::spawn(sample_host(inner.clone()));
        }
        tokio::spawn(history_writer(
            inner.history.clone(),
            inner.telemetry.clone(),
            history_rx,
        ));
        tokio::spawn(sample_board(inner.clone()));
        tokio::spawn(expire_replies(inner.clone()));
        tokio::spawn(learning_loop(inner.clone()));
        tokio::spawn(refresh_collections(inner.clone()));
        Ok(Engine { inner })
    }

    pub fn stats(&self) -> EngineStats {
        self.inner.stats()
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let stats = self.inner.stats();
        let report = self.model_report();
        let gauges = Gauges {
            queue_depth: stats.queue_depth as f64,
            lanes: stats.lanes as f64,
            in_flight: stats.in_flight as f64,
            concurrency_limit: stats.concurrency_limit as f64,
            load: stats.load,
            threshold: stats.threshold,
            admission_limit: stats.admission_limit as f64,
            in_system: stats.in_system as f64,
            commit_batch_max: stats.commit_batch_max as f64,
            store_latency_seconds: stats.store_latency_ms / 1000.0,
            conflict_rate: stats.conflict_rate,
            model_auc: report.recent.auc,
            model_log_loss: report.recent.log_loss,
            model_calibration_error: report.recent.expected_calibration_error,
            model_version: report.training.model_version as f64,
        };
        self.inner.telemetry.render(&gauges)
    }

    /// The dashboard's aggregates, leaving out series points up to
    /// `series_after_ms` (what a stream already sent).
    pub fn dashboard(&self, series_after_ms: i64) -> Dashboard {
        Dashboard {
            board: self
                .inner
                .telemetry
                .board
                .snapshot(self.inner.clock.now_ms(), series_after_ms),
            stats: self.inner.stats(),
            model: self.model_summary(),
        }
    }

    /// The model's quality for dashboards, at most a second old: computed
    /// when someone looks, once for every viewer.
    fn model_summary(&self) -> ModelSummary {
        let now = self.inner.clock.elapsed();
        let mut cached = lock(&self.inner.model_summary);
        match &*cached {
            Some((at, summary)) if now.saturating_sub(*at) < MODEL_SUMMARY_EVERY => summary.clone(),
            _ => {
                let summary = ModelSummary::of(self.model_report());
                *cached = Some((now, summary.clone()));
                summary
            }
        }
    }

    /// Decides one mutation and returns what the client is told.
    pub async fn submit(&self, mutation: Mutation) -> Reply {
        let inner = &self.inner;
        if inner.closing.load(Ordering::SeqCst) {
            return inner.refuse(shutting_down(), 1);
        }
        let _in_system = match inner.enter(1, true) {
            Ok(entered) => entered,
            Err(wait_ms) => return inner.refuse(overloaded_reply(wait_ms), 1),
        };
        let received_ms = inner.clock.now_ms();
        let id = mutation.id.clone();
        let guard = match self.claim(&mutation, true, false).await {
            Claim::Answered(reply) => return reply,
            Claim::Waiting(rx) => return self.await_answer(rx, &id).await,
            Claim::Fresh(guard) => guard,
        };
        let doc = mutation.doc.clone();
        let (queued, rank, rx) = self.prepare(mutation, received_ms);
        let admitted = lock(&inner.lanes).queue.admit(&doc, queued, rank);
        if let Err(refusal) = admitted {
            let reply = inner.refuse(refusal_reply(refusal, &doc), 1);
            guard.release(&reply);
            return reply;
        }
        // From here the worker that decides the mutation releases the reservation.
        guard.hand_over();
        inner.wake.notify_one();
        self.await_answer(rx, &id).await
    }

    /// Accepts a mutation asynchronously: answers 202 once it is durably in the
    /// accept log (and queued); its outcome comes later, by
    /// `GET /v1/mutations/{id}`, a resend, or the client's event stream.
    pub async fn accept(&self, mutation: Mutation) -> Reply {
        if self.inner.closing.load(Ordering::SeqCst) {
            return self.inner.refuse(shutting_down(), 1);
        }
        // On a task of its own: once the entry is in the log, the mutation
        // must also reach the queue, even if the request goes away meanwhile
        // (otherwise it would wait for the next start).
        let engine = self.clone();
        tokio::spawn(async move { engine.accept_logged(mutation, true).await })
            .await
            .unwrap_or_else(|e| {
                Reply::error(
                    500,
                    "internal",
                    format!("accepting the mutation failed: {e}"),
                )
            })
    }

    /// `log`: write the accept-log entry first (a new request); recovery
    /// re-queues entries that are already there.
    async fn accept_logged(&self, mutation: Mutation, log: bool) -> Reply {
        let inner = &self.inner;
        let received_ms = inner.clock.now_ms();
        let guard = match self.claim(&mutation, false, true).await {
            Claim::Answered(reply) => return reply,
            // A synchronous request for the same mutation is deciding it: it
            // is as good as queued.
            Claim::Waiting(_) => return queued_reply(&mutation.id, None),
            Claim::Fresh(guard) => guard,
        };
        let doc = mutation.doc.clone();
        let (client, id) = (mutation.client_name().to_owned(), mutation.id.clone());
        let entry = crate::store::Accepted {
            client: client.clone(),
            id: id.clone(),
            fingerprint: mutation.fingerprint,
            mutation: mutation.to_json(),
            score: 0.0,
            at_ms: received_ms,
        };
        let (mut queued, rank, _) = self.prepare(mutation, received_ms);
        queued.accepted = true;
        let reply = queued_reply(&id, Some(queued.score));
        if log {
            let entry = crate::store::Accepted {
                score: queued.score,
                ..entry
            };
            if let Err(e) = inner.store.accept(&entry).await {
                let refused = inner.refuse(store_error_reply(&e), 1);
                guard.release(&refused);
                return refused;
            }
        }
        let admitted = lock(&inner.lanes).queue.admit(&doc, queued, rank);
        if let Err(refusal) = admitted {
            let refused = inner.refuse(refusal_reply(refusal, &doc), 1);
            if log && let Err(e) = inner.store.unaccept(&client, &id).await {
                // Left in the log, it is queued again at the next start: late, not lost.
                warn!(id = %id, collection = %doc.collection, key = %doc.key, error = %e, "could not withdraw a refused accept");
            }
            guard.release(&refused);
            return refused;
        }
        if let Some(reservation) = lock(&inner.reservations).get_mut(&(client, id)) {
            reservation.queued = Some(reply.clone());
        }
        guard.hand_over();
        inner.wake.notify_one();
        if log {
            inner.telemetry.accepted();
        }
        reply
    }

    /// Queues again what the accept log holds: mutations answered 202 before
    /// a crash or a shutdown that did not finish them. Returns how many.
    pub async fn resume_accepted(&self) -> Result<usize, StoreError> {
        let entries = self.inner.store.pending_accepted().await?;
        let mut resumed = 0;
        for entry in entries {
            match Mutation::from_json(&entry.mutation, entry.fingerprint) {
                Ok(mutation) => {
                    let doc = mutation.doc.clone();
                    let reply = self.accept_logged(mutation, false).await;
                    if reply.status == 202 {
                        resumed += 1;
                    } else if reply.status >= 500 || reply.status == 429 {
                        warn!(id = %entry.id, collection = %doc.collection, key = %doc.key, status = reply.status, "an accepted mutation could not be queued again; it stays in the log");
                    }
                }
                Err(e) => {
                    error!(id = %entry.id, error = %e, "an accept-log entry is unreadable; it stays in the log")
                }
            }
        }
        if resumed > 0 {
            info!(
                resumed,
                "queued again the mutations accepted before the last stop"
            );
        }
        Ok(resumed)
    }

    /// The 202 of a mutation still in the accept log, if it is there.
    pub async fn queued_status(&self, client: &str, id: &str) -> Result<Option<Reply>, StoreError> {
        Ok(self
            .inner
            .store
            .accepted(client, id)
            .await?
            .map(|entry| queued_reply(id, Some(entry.score))))
    }

    /// Events of `client` after `after_seq` (see `Store::events_after`).
    pub async fn events_after(
        &self,
        client: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.inner
            .store
            .events_after(client, after_seq, limit)
            .await
    }

    /// A receiver that changes after every commit.
    pub fn commit_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.events.subscribe()
    }

    /// Decides a client's outbox: every mutation is admitted, in order, or
    /// none is (`Err` with the 429 for the whole batch); then each gets the
    /// answer it would have got alone, in the same order.
    pub async fn submit_batch(&self, mutations: Vec<Mutation>) -> Result<Vec<Reply>, Reply> {
        let inner = &self.inner;
        if inner.closing.load(Ordering::SeqCst) {
            return Err(inner.refuse(shutting_down(), mutations.len()));
        }
        let _in_system = inner
            .enter(mutations.len(), true)
            .map_err(|wait_ms| inner.refuse(overloaded_reply(wait_ms), mutations.len()))?;
        let received_ms = inner.clock.now_ms();
        enum Slot<'a> {
            Answered(Reply),
            Waiting(oneshot::Receiver<Reply>, String),
            Admit(
                ReservationGuard<'a>,
                DocKey,
                Box<Queued>,
                i64,
                oneshot::Receiver<Reply>,
                String,
            ),
        }
        let mut slots = Vec::with_capacity(mutations.len());
        for mutation in mutations {
            let id = mutation.id.clone();
            slots.push(match self.claim(&mutation, true, false).await {
                Claim::Answered(reply) => Slot::Answered(reply),
                Claim::Waiting(rx) => Slot::Waiting(rx, id),
                Claim::Fresh(guard) => {
                    let doc = mutation.doc.clone();
                    let (queued, rank, rx) = self.prepare(mutation, received_ms);
                    Slot::Admit(guard, doc, Box::new(queued), rank, rx, id)
                }
            });
        }
        let refused = {
            let mut lanes = lock(&inner.lanes);
            let mut per_lane: HashMap<&DocKey, usize> = HashMap::new();
            for slot in &slots {
                if let Slot::Admit(_, doc, ..) = slot {
                    *per_lane.entry(doc).or_default() += 1;
                }
            }
            let admits: usize = per_lane.values().sum();
            let refusal = if !lanes.queue.has_room(admits) {
                Some(Refusal::QueueFull)
            } else {
                per_lane
                    .iter()
                    .find(|(doc, n)| lanes.queue.lane_room(doc) < **n)
                    .map(|_| Refusal::LaneFull)
            };
            match refusal {
                Some(refusal) => Some(refusal),
                None => {
                    let mut admitted = Vec::with_capacity(slots.len());
                    for slot in slots {
                        admitted.push(match slot {
                            Slot::Admit(guard, doc, queued, rank, rx, id) => {
                                let fits = lanes.queue.admit(&doc, *queued, rank);
                                debug_assert!(
                                    fits.is_ok(),
                                    "invariant: room was checked under the same lock"
                                );
                                guard.hand_over();
                                Slot::Waiting(rx, id)
                            }
                            other => other,
                        });
                    }
                    slots = admitted;
                    None
                }
            }
        };
        if let Some(refusal) = refused {
            let reply = match refusal {
                Refusal::QueueFull => Reply::error(
                    429,
                    "queue_full",
                    "the batch does not fit in the mutation queue; nothing of it was queued, retry after a moment",
                ),
                Refusal::LaneFull => Reply::error(
                    429,
                    "lane_full",
                    "the batch would overfill a document's lane; nothing of it was queued, retry after a moment",
                ),
            };
            let reply = inner.refuse(reply, slots.len());
            for slot in slots {
                if let Slot::Admit(guard, ..) = slot {
                    guard.release(&reply);
                }
            }
            return Err(reply);
        }
        inner.wake.notify_one();
        let mut replies = Vec::with_capacity(slots.len());
        for slot in slots {
            replies.push(match slot {
                Slot::Answered(reply) => reply,
                Slot::Waiting(rx, id) => self.await_answer(rx, &id).await,
                Slot::Admit(..) => Reply::error(
                    500,
                    "internal",
                    "a batch mutation was neither queued nor refused",
                ),
            });
        }
        Ok(replies)
    }

    /// Reserves `(client, id)`: a resend of a mutation in flight waits for its
    /// answer; a resend of a decided one gets the stored answer; the same id
    /// with another body is refused; otherwise the caller holds the reservation.
    /// Without `check_store`, whether it was decided before (in another
    /// process, or before a restart) is found by its lane's commit, which
    /// writes nothing for a lane with a mutation already answered
    /// (`CommitOutcome::Resent`): a synchronous mutation costs no store read
    /// before it is queued.
    async fn claim(&self, mutation: &Mutation, wait: bool, check_store: bool) -> Claim<'_> {
        let inner = &self.inner;
        let reservation = (mutation.client_name().to_owned(), mutation.id.clone());
        let in_flight: Option<Result<oneshot::Receiver<Reply>, Reply>> = {
            let mut reservations = lock(&inner.reservations);
            match reservations.get_mut(&reservation) {
                Some(existing) if existing.fingerprint != mutation.fingerprint => {
                    Some(Err(inner.refuse(reused_key(&mutation.id), 1)))
                }
                Some(existing) => {
                    if let Some(queued) = existing.queued.as_ref().filter(|_| !wait) {
                        Some(Err(queued.clone()))
                    } else {
                        let (tx, rx) = oneshot::channel();
                        existing.waiters.push(tx);
                        Some(Ok(rx))
                    }
                }
                None => {
                    let fresh = Reservation {
                        fingerprint: mutation.fingerprint,
                        waiters: Vec::new(),
                        queued: None,
                    };
                    reservations.insert(reservation.clone(), fresh);
                    None
                }
            }
        };
        match in_flight {
            Some(Ok(rx)) => return Claim::Waiting(rx),
            // An async resend of an accepted mutation: its outcome if it is
            // already stored (the reservation outlives the commit by the
            // history write), else its 202.
            Some(Err(reply)) if reply.status == 202 => {
                return match inner.reads.reply(&reservation.0, &reservation.1).await {
                    Ok(Some(stored)) => Claim::Answered(Reply {
                        status: stored.status,
                        body: stored.body,
                        retry_after_s: None,
                        code: None,
                    }),
                    _ => Claim::Answered(reply),
                };
            }
            Some(Err(reply)) => return Claim::Answered(reply),
            None => {}
        }
        let guard = ReservationGuard {
            inner,
            reservation: Some(reservation.clone()),
        };
        if !check_store {
            return Claim::Fresh(guard);
        }
        // Under the reservation, a stored reply cannot appear behind our back:
        // only the holder of the reservation can store one.
        match inner.reads.reply(&reservation.0, &reservation.1).await {
            Ok(Some(stored)) => {
                let reply = if stored.fingerprint == mutation.fingerprint {
                    Reply {
                        status: stored.status,
                        body: stored.body,
                        retry_after_s: None,
                        code: None,
                    }
                } else {
                    inner.refuse(reused_key(&mutation.id), 1)
                };
                guard.release(&reply);
                Claim::Answered(reply)
            }
            Ok(None) => Claim::Fresh(guard),
            Err(e) => {
                let reply = inner.refuse(store_error_reply(&e), 1);
                guard.release(&reply);
                Claim::Answered(reply)
            }
        }
    }

    /// Scores the mutation (now, before anything about its outcome exists)
    /// and wraps it for its lane, with its rank and the receiver of its answer.
    fn prepare(
        &self,
        mutation: Mutation,
        received_ms: i64,
    ) -> (Queued, i64, oneshot::Receiver<Reply>) {
        let inner = &self.inner;
        let (tx, rx) = oneshot::channel();
        let lane_waiting = lock(&inner.lanes).queue.waiting_len(&mutation.doc);
        let fields = mutation.fields_touched();
        let observation = Observation {
            doc: &mutation.doc,
            op: mutation.op,
            fields: &fields,
            client: mutation.client_name(),
            base_version: mutation.base_version,
            event_ms: mutation.ts_ms.unwrap_or(received_ms),
            lane_waiting,
        };
        let scored = inner
            .config
            .predictor
            .enabled
            .then(|| lock(&inner.predictor).score(&observation));
        let probability = scored.as_ref().map_or(0.0, |s| s.probability);
        let admitted_at = inner.clock.elapsed();
        let boost_us = inner.config.priority_boost_ms as f64 * 1000.0 * probability;
        let rank = i64::try_from(admitted_at.as_micros()).unwrap_or(i64::MAX) - boost_us as i64;
        let queued = Queued {
            mutation,
            admitted_at,
            received_ms,
            score: probability,
            lane_waiting,
            accepted: false,
            scored,
            answer: tx,
        };
        (queued, rank, rx)
    }

    async fn await_answer(&self, rx: oneshot::Receiver<Reply>, id: &str) -> Reply {
        match tokio::time::timeout(self.inner.config.decide_timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Reply::error(
                500,
                "internal",
                "the mutation's worker stopped without an answer",
            ),
            Err(_) => self.inner.refuse(
                Reply::error(
                    503,
                    "decision_timeout",
                    format!(
                        "mutation {id} was not decided within {} ms; it stays queued: resend it with the same id to learn its outcome",
                        self.inner.config.decide_timeout.as_millis()
                    ),
                ),
                1,
            ),
        }
    }

    /// The predictor's state and quality, for `GET /v1/model`.
    pub fn model_report(&self) -> ModelReport {
        lock(&self.inner.predictor).report()
    }

    pub async fn stored_reply(
        &self,
        client: &str,
        id: &str,
    ) -> Result<Option<StoredReply>, StoreError> {
        self.inner.store.reply(client, id).await
    }

    /// The document as the store has it, unless Sluice is overloaded.
    pub async fn document(&self, doc: &DocKey) -> Result<Document, ReadError> {
        let _in_system = self
            .inner
            .enter(1, false)
            .map_err(|stayed_ms| ReadError::Overloaded { stayed_ms })?;
        Ok(self.inner.reads.document(doc).await?)
    }

    pub async fn conflicts(
        &self,
        query: &ConflictQuery,
    ) -> Result<Vec<ConflictRecord>, HistoryError> {
        self.inner.history.conflicts(query).await
    }

    /// The collection's configuration, or the default handler's when it has none.
    pub fn collection(&self, name: &str) -> CollectionConfig {
        self.inner.collection(name)
    }

    /// Validates (loading a script in the sandbox) and stores a configuration.
    pub async fn configure_collection(
        &self,
        name: &str,
        config: CollectionConfig,
    ) -> Result<(), ConfigureError> {
        config.validate().map_err(ConfigureError::Invalid)?;
        if let Handler::Script { source } = &config.handler {
            match self.inner.resolver.check_script(source).await {
                Ok(()) => {}
                Err(
                    e @ (ScriptError::Engine(_)
                    | ScriptError::TimeLimit(_)
                    | ScriptError::MemoryLimit(_)),
                ) => {
                    return Err(ConfigureError::Invalid(format!(
                        "the script could not be loaded: {e}"
                    )));
                }
                Err(e) => {
                    return Err(ConfigureError::Invalid(format!(
                        "the script is not usable: {e}"
                    )));
                }
            }
        }
        let text =
            serde_json::to_string(&config).map_err(|e| ConfigureError::Invalid(e.to_string()))?;
        self.inner
            .store
            .put_collection(name, &text, self.inner.clock.now_ms())
            .await?;
        let mut collections = self
            .inner
            .collections
            .write()
            .unwrap_or_else(|p| p.into_inner());
        collections.insert(name.to_owned(), config);
        self.inner
            .collections_changed
            .fetch_add(1, Ordering::SeqCst);
        info!(collection = name, "collection configured");
        Ok(())
    }

    /// Refuses new mutations and waits up to `deadline` for the queued ones to
    /// be decided. Returns how many were still pending at the deadline.
    pub async fn shutdown(&self, deadline: Duration) -> usize {
        self.inner.closing.store(true, Ordering::SeqCst);
        let wait = async {
            loop {
                let drained = self.inner.drained.notified();
                if self.stats().queue_depth == 0 {
                    return;
                }
                drained.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.stats().queue_depth
    }
}

/// Holds a `(client, id)` reservation until the mutation is queued. If the
/// request goes away first (the client disconnected during the stored-reply
/// lookup), dropping the guard frees the id, so that a resend is not stuck
/// behind a reservation nobody will release.
struct ReservationGuard<'a> {
    inner: &'a Inner,
    reservation: Option<(String, String)>,
}

impl ReservationGuard<'_> {
    fn release(mut self, reply: &Reply) {
        if let Some(reservation) = self.reservation.take() {
            self.inner.release(&reservation, reply);
        }
    }

    fn hand_over(mut self) {
        self.reservation = None;
    }
}

impl Drop for ReservationGuard<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            let reply = Reply::error(
                503,
                "request_abandoned",
                "the first request with this id went away before its mutation was queued; nothing was applied, resend it",
            );
            self.inner.release(&reservation, &reply);
        }
    }
}

/// The outcome of reserving a mutation's `(client, id)`.
enum Claim<'a> {
    Answered(Reply),
    Waiting(oneshot::Receiver<Reply>),
    Fresh(ReservationGuard<'a>),
}

/// The 202 (and the queued-status 200 body) of an accepted mutation.
fn queued_reply(id: &str, score: Option<f64>) -> Reply {
    let body = serde_json::json!({ "id": id, "status": "queued", "score": score }).to_string();
    Reply {
        status: 202,
        body,
        retry_after_s: None,
        code: None,
    }
}

fn shutting_down() -> Reply {
    Reply::error(
        503,
        "shutting_down",
        "Sluice is shutting down; send the mutation again shortly",
    )
}

fn refusal_reply(refusal: Refusal, doc: &DocKey) -> Reply {
    match refusal {
        Refusal::QueueFull => Reply::error(
            429,
            "queue_full",
            "the mutation queue is full; retry after a moment",
        ),
        Refusal::LaneFull => Reply::error(
            429,
            "lane_full",
            format!("too many mutations are waiting for {doc}; retry after a moment"),
        ),
    }
}

fn overloaded_reply(wait_ms: u64) -> Reply {
    Reply::error(
        429,
        "overloaded",
        format!(
            "Sluice is overloaded: mutations stay about {wait_ms} ms, over its bound; nothing was queued, retry after a moment"
        ),
    )
}

fn reused_key(id: &str) -> Reply {
    Reply::error(
        422,
        "idempotency_key_reused",
        format!("id {id:?} was already used by this client for a different mutation"),
    )
}

fn store_error_reply(e: &StoreError) -> Reply {
    Reply::error(
        503,
        "store_unavailable",
        format!("{e}; nothing was applied by this attempt, resend with the same id"),
    )
}

/// A request inside Sluice (mutations between arrival and answer, or a
/// document read); leaves the count on drop, and a mutation tells the door
/// how long it stayed.
struct InSystem<'a> {
    inner: &'a Inner,
    n: usize,
    /// When a mutation entered; `None` for a read.
    entered_at: Option<Duration>,
}

impl Drop for InSystem<'_> {
    fn drop(&mut self) {
        let inner = self.inner;
        inner.in_system.fetch_sub(self.n, Ordering::SeqCst);
        let Some(entered_at) = self.entered_at else {
            return;
        };
        let now = inner.clock.elapsed();
        let stayed_ms = now.saturating_sub(entered_at).as_secs_f64() * 1000.0;
        let depth = inner.in_system.load(Ordering::SeqCst);
        lock(&inner.door).observe(now, stayed_ms, depth, inner.config.queue_wait_max_ms as f64);
    }
}

/// Admission at the door, an AIMD limit on what is in the system: when the
/// mutations of a window stayed longer than `queue_wait_max_ms` on average,
/// there is a standing queue, and the limit comes down; while they do not
/// and the limit was what refused or bounded the window, it goes back up.
/// Goodput stays the store's while the admitted keep their latency, and the
/// refused get a fast 429 instead of a time-out. (CoDel's minimum over the
/// window was the first choice: with many lanes in parallel one lucky
/// mutation kept it low while the rest queued, and `sluice bench` measured
/// an admitted p99 nine times the unloaded one at twice the capacity.)
#[derive(Debug)]
struct Door {
    limit: f64,
    window_start: Duration,
    window_stays_ms: f64,
    window_count: u32,
    window_max_depth: usize,
    /// The mean stay of the last full window, for the refusal's message.
    last_mean_ms: f64,
    refused: bool,
    limit_max: f64,
}

const DOOR_WINDOW: Duration = Duration::from_millis(100);
/// The limit never goes below this: a handful of clients is never refused.
const DOOR_LIMIT_MIN: usize = 64;

impl Door {
    fn new(limit_max: usize) -> Door {
        Door {
            limit: limit_max as f64,
            window_start: Duration::ZERO,
            window_stays_ms: 0.0,
            window_count: 0,
            window_max_depth: 0,
            last_mean_ms: 0.0,
            refused: false,
            limit_max: limit_max as f64,
        }
    }

    fn observe(&mut self, now: Duration, stayed_ms: f64, depth: usize, bound_ms: f64) {
        self.window_stays_ms += stayed_ms;
        self.window_count += 1;
        self.window_max_depth = self.window_max_depth.max(depth + 1);
        if now.saturating_sub(self.window_start) < DOOR_WINDOW {
            return;
        }
        let floor = DOOR_LIMIT_MIN as f64;
        let mean_ms = self.window_stays_ms / f64::from(self.window_count);
        if mean_ms > bound_ms {
            // Start from what was actually in the system, not from a limit
            // far above it, so one window is enough to bite.
            let from = self.limit.min(self.window_max_depth as f64);
            self.limit = (from * 0.9).max(floor);
        } else if self.refused || self.window_max_depth as f64 >= self.limit * 0.9 {
            self.limit = (self.limit * 1.1 + 1.0).min(self.limit_max);
        }
        self.last_mean_ms = mean_ms;
        self.window_start = now;
        self.window_stays_ms = 0.0;
        self.window_count = 0;
        self.window_max_depth = 0;
        self.refused = false;
    }
}

impl Inner {
    /// Lets `n` synchronous mutations in, or refuses them (with the
    /// recent time in the system) when the door's adaptive limit is reached.
    /// The limit counts every mutation between arrival and answer, not only
    /// the queued ones: under overload requests also pile up on the store's
    /// connections (the resend check) before they reach the queue.
    ///
    /// Document reads pass the same door (`timed` false): they count toward
    /// the limit, so an overloaded Sluice refuses a client's read as fast as
    /// its write, but their stays say nothing about the write queue.
    fn enter(&self, n: usize, timed: bool) -> Result<InSystem<'_>, u64> {
        let depth = self.in_system.fetch_add(n, Ordering::SeqCst);
        let mut entered = InSystem {
            inner: self,
            n,
            entered_at: timed.then(|| self.clock.elapsed()),
        };
        if self.config.queue_wait_max_ms == 0 {
            return Ok(entered);
        }
        let mut door = lock(&self.door);
        if depth + n > door.limit.max(n as f64) as usize && depth >= DOOR_LIMIT_MIN {
            door.refused = true;
            // A refusal's instant stay must not pull the window's mean down:
            // it only leaves the count.
            entered.entered_at = None;
            return Err(door.last_mean_ms.round() as u64);
        }
        Ok(entered)
    }

    /// Counts `n` mutations refused with `reply` (an error answer) and hands
    /// it back.
    fn refuse(&self, reply: Reply, n: usize) -> Reply {
        self.telemetry.refused(reply.code.unwrap_or("other"), n);
        reply
    }

    fn stats(&self) -> EngineStats {
        let control = lock(&self.control).state();
        let (queue_depth, lanes, in_flight) = {
            let lanes = lock(&self.lanes);
            (
                lanes.queue.pending_len(),
                lanes.queue.lane_count(),
                lanes.in_flight,
            )
        };
        let (cpu, memory) = self.host.get();
        let signals = Signals {
            cpu,
            memory,
            in_flight,
            limit: control.concurrency_limit,
            store_latency_ms: control.store_latency_ms,
            latency_target_ms: self.config.latency_target_ms,
        };
        EngineStats {
            load: control::load(&signals),
            threshold: control.threshold,
            concurrency_limit: control.concurrency_limit,
            in_flight,
            queue_depth,
            lanes,
            commit_batch_max: control.commit_batch_max,
            store_latency_ms: control.store_latency_ms,
            baseline_latency_ms: control.baseline_latency_ms,
            conflict_rate: control.conflict_rate,
            cpu,
            memory,
            mutations_decided: self.telemetry.board.totals().decided(),
            commits_stale: self.commits_stale.load(Ordering::Relaxed),
            in_system: self.in_system.load(Ordering::Relaxed),
            admission_limit: lock(&self.door).limit as usize,
        }
    }

    /// Feeds one store round trip (a read, or a commit of `batch` lanes) that
    /// started at `started` to the concurrency controller and the metrics.
    fn observe_store(&self, started: Duration, commit: bool, batch: usize, ok: bool) {
        let seconds = self.clock.elapsed().saturating_sub(started).as_secs_f64();
        let in_flight = lock(&self.lanes).in_flight;
        lock(&self.control).on_store(seconds * 1000.0, batch, ok, in_flight);
        if commit {
            self.telemetry.store_commit(seconds, batch, ok);
        } else {
            self.telemetry.store_read(seconds, ok);
        }
    }

    fn collection(&self, name: &str) -> CollectionConfig {
        let collections = self.collections.read().unwrap_or_else(|p| p.into_inner());
        collections
            .get(name)
            .cloned()
            .unwrap_or_else(|| CollectionConfig::with_handler(self.config.default_handler.clone()))
    }

    /// Drops the reservation and hands `reply` to every resend that waited on it.
    fn release(&self, reservation: &(String, String), reply: &Reply) {
        let waiters = lock(&self.reservations)
            .remove(reservation)
            .map(|r| r.waiters)
            .unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(reply.clone());
        }
    }

    /// Commits one lane through the group committer. The lane comes back
    /// with the outcome, whatever it is; `None` if the committer stopped
    /// with it.
    async fn commit(
        &self,
        commit: LaneCommit,
    ) -> (Result<CommitOutcome, StoreError>, Option<LaneCommit>) {
        let stopped = || StoreError::Unavailable("the committer has stopped".into());
        let (done, rx) = oneshot::channel();
        if let Err(refused) = self.commit_tx.send(CommitJob { commit, done }).await {
            return (Err(stopped()), Some(refused.0.commit));
        }
        match rx.await {
            Ok((outcome, lane)) => (outcome, Some(lane)),
            Err(_) => (Err(stopped()), None),
        }
    }
}

/// The dispatch loop: take the best-ranked ready lane while writes in flight
/// are under the adaptive limit and the load is under the threshold; above
/// the threshold, back off (exponential, jittered, capped) and look again.
/// It sleeps on a notification when there is nothing to do: no busy-spin.
async fn dispatch_loop(inner: Arc<Inner>) {
    // Jitter only needs to differ between processes, not to be unpredictable.
    let mut jitter = crate::rng::SplitMix64::new(inner.clock.now_ms() as u64);
    let mut backoffs = 0u32;
    loop {
        loop {
            let (state, floor) = {
                let control = lock(&inner.control);
                (control.state(), control.in_flight_floor())
            };
            let limit = state.concurrency_limit;
            let (cpu, memory) = inner.host.get();
            let taken = {
                let mut lanes = lock(&inner.lanes);
                let signals = Signals {
                    cpu,
                    memory,
                    in_flight: lanes.in_flight,
                    limit,
                    store_latency_ms: state.store_latency_ms,
                    latency_target_ms: inner.config.latency_target_ms,
                };
                // Below the floor, dispatch whatever the load says: the load
                // cannot fall by waiting on ourselves, and the queue must move.
                let overloaded =
                    lanes.in_flight >= floor && control::load(&signals) >= state.threshold;
                if lanes.in_flight >= limit || lanes.queue.pending_len() == 0 {
                    None
                } else if overloaded {
                    Some(None)
                } else {
                    let taken = lanes.queue.take_ready();
                    if taken.is_some() {
                        lanes.in_flight += 1;
                        debug_assert!(
                            lanes.in_flight <= limit,
                            "invariant: in-flight ≤ limit at dispatch"
                        );
                    }
                    taken.map(Some)
                }
            };
            match taken {
                None => break,
                Some(None) => {
                    let wait = control::backoff_ms(backoffs, jitter.unit());
                    backoffs = backoffs.saturating_add(1);
                    debug!(
                        wait_ms = wait,
                        backoffs, "load over the threshold; backing off"
                    );
                    tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
                }
                Some(Some((doc, batch))) => {
                    backoffs = 0;
                    tokio::spawn(run_lane(inner.clone(), doc, batch));
                }
            }
        }
        // `notify_one` keeps a permit when nobody waits, so a wake-up between
        // the check above and this await is not lost.
        inner.wake.notified().await;
    }
}

/// Samples the host's CPU and memory into `HostLoad`.
async fn sample_host(inner: Arc<Inner>) {
    let mut system = match sysinfo::System::new() {
        Ok(system) => system,
        Err(e) => {
            warn!(error = %e, "cannot read host CPU and memory; the load signal will use the store and the queue only");
            return;
        }
    };
    loop {
        system.refresh_cpu_usage();
        system.refresh_memory();
        let cpu = f64::from(system.global_cpu_usage()) / 100.0;
        let total = system.total_memory();
        let memory = if total == 0 {
            0.0
        } else {
            system.used_memory() as f64 / total as f64
        };
        inner.host.set(cpu, memory);
        tokio::time::sleep(HOST_SAMPLE_INTERVAL).await;
    }
}

/// Closes a second of the dashboard's series every second, and folds the
/// metrics' buffered samples into their buckets every few.
async fn sample_board(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let upkeep_every = crate::telemetry::UPKEEP_EVERY.as_secs().max(1);
    let mut seconds = 0u64;
    loop {
        tick.tick().await;
        let stats = inner.stats();
        inner.telemetry.board.tick(SeriesPoint {
            at_ms: inner.clock.now_ms(),
            queue_depth: stats.queue_depth as u64,
            in_flight: stats.in_flight as u64,
            concurrency_limit: stats.concurrency_limit as u64,
            load: stats.load,
            threshold: stats.threshold,
            ..SeriesPoint::default()
        });
        seconds += 1;
        if seconds.is_multiple_of(upkeep_every) {
            inner.telemetry.upkeep();
        }
    }
}

/// What one batch ended as.
#[derive(Default)]
struct Decided {
    replies: Vec<Reply>,
    mutations: Vec<MutationRecord>,
    conflicts: Vec<ConflictRecord>,
}

/// Rounds of "the commit found resends; answer them and decide the rest"
/// before a lane gives up: a stored reply cannot disappear between the
/// commit that saw it and the lookup, short of expiring in that instant.
const RESEND_ROUNDS_MAX: usize = 3;

fn resend_loop() -> Reply {
    Reply::error(
        503,
        "store_contention",
        "the lane's commits kept finding stored replies its lookups did not; nothing was applied, resend with the same id",
    )
}

async fn run_lane(inner: Arc<Inner>, doc: DocKey, mut batch: Vec<Queued>) {
    // Every mutation taken from the queue, resends answered early included.
    let settled = batch.len();
    let dispatched_at = inner.clock.elapsed();
    let mut decided = Err(resend_loop());
    for _ in 0..RESEND_ROUNDS_MAX {
        if batch.is_empty() {
            decided = Ok(Decided::default());
            break;
        }
        match decide_lane(&inner, &doc, &batch).await {
            Ok(Some(done)) => {
                decided = Ok(done);
                break;
            }
            Ok(None) => batch = settle_resends(&inner, batch).await,
            Err(reply) => {
                decided = Err(reply);
                break;
            }
        }
    }
    inner.telemetry.dispatched(
        batch.len(),
        batch
            .iter()
            .map(|q| dispatched_at.saturating_sub(q.admitted_at)),
        batch.iter().map(|q| q.score),
    );
    if let Ok(decided) = &decided {
        // The outcomes teach the predictor, each through its own score's token.
        let mut predictor = lock(&inner.predictor);
        for (queued, record) in batch.iter_mut().zip(&decided.mutations) {
            if let Some(scored) = queued.scored.take() {
                let outcome = predict::Outcome {
                    conflict: record.conflict,
                    version_after: record.version_after,
                    wrote: record.version_after > record.version_before,
                };
                predictor.learn(scored, outcome);
            }
        }
        let conflicts = decided.mutations.iter().filter(|m| m.conflict).count();
        lock(&inner.control).on_outcomes(decided.mutations.len(), conflicts);
        let since = inner
            .outcomes_since_retrain
            .fetch_add(batch.len() as u64, Ordering::Relaxed)
            + batch.len() as u64;
        if since >= inner.config.predictor.retrain_after_outcomes {
            inner.outcomes_since_retrain.store(0, Ordering::Relaxed);
            inner.retrain_wanted.notify_one();
        }
        let learned = predictor.learned();
        if learned > 0 && learned % QUALITY_LOG_EVERY < batch.len() as u64 {
            let report = predictor.report();
            info!(
                learned,
                auc_all = ?report.all_time.auc,
                auc_recent = ?report.recent.auc,
                log_loss_recent = ?report.recent.log_loss,
                ece_recent = ?report.recent.expected_calibration_error,
                features = report.features,
                "model quality"
            );
        }
    }
    {
        let mut lanes = lock(&inner.lanes);
        lanes.queue.finish(&doc, settled);
        lanes.in_flight -= 1;
        if lanes.queue.pending_len() == 0 {
            inner.drained.notify_waiters();
        }
    }
    inner.wake.notify_one();

    let replies = match decided {
        Ok(decided) => {
            // A store that writes the history did so in the lane's commit.
            if !decided.mutations.is_empty() && !inner.store.writes_history() {
                let (done, recorded) = oneshot::channel();
                let job = HistoryJob {
                    mutations: decided.mutations,
                    conflicts: decided.conflicts,
                    done,
                };
                if inner.history_tx.send(job).await.is_ok() {
                    let _ = recorded.await;
                }
            }
            decided.replies
        }
        Err(reply) => vec![inner.refuse(reply, batch.len()); batch.len()],
    };
    for (queued, reply) in batch.into_iter().zip(replies) {
        let reservation = (
            queued.mutation.client_name().to_owned(),
            queued.mutation.id.clone(),
        );
        inner.release(&reservation, &reply);
        let _ = queued.answer.send(reply);
    }
}

/// Answers the mutations of the lane that were decided before (their commit
/// found their replies stored) from those replies (422 if the body differs),
/// and returns the others. Each lookup waits no longer than a client does.
async fn settle_resends(inner: &Inner, batch: Vec<Queued>) -> Vec<Queued> {
    let bound = inner.config.decide_timeout;
    let lookups = batch.iter().map(|q| async move {
        let m = &q.mutation;
        match tokio::time::timeout(bound, inner.reads.reply(m.client_name(), &m.id)).await {
            Ok(found) => found,
            Err(_) => Err(StoreError::Unavailable(
                "looking up a stored reply took too long".into(),
            )),
        }
    });
    let found = futures_util::future::join_all(lookups).await;
    let mut fresh = Vec::with_capacity(batch.len());
    for (queued, found) in batch.into_iter().zip(found) {
        let m = &queued.mutation;
        let reply = match found {
            Ok(None) => {
                fresh.push(queued);
                continue;
            }
            Ok(Some(stored)) if stored.fingerprint == m.fingerprint => Reply {
                status: stored.status,
                body: stored.body,
                retry_after_s: None,
                code: None,
            },
            Ok(Some(_)) => inner.refuse(reused_key(&m.id), 1),
            Err(e) => inner.refuse(store_error_reply(&e), 1),
        };
        let reservation = (m.client_name().to_owned(), m.id.clone());
        inner.release(&reservation, &reply);
        let _ = queued.answer.send(reply);
    }
    fresh
}

/// Reads the document (from the cache of what Sluice last committed, else
/// the store), decides every mutation of the batch in order, and commits;
/// again from a store read when a writer that bypassed Sluice moved the
/// version. `None`: the commit found mutations of the batch decided before,
/// and wrote nothing.
async fn decide_lane(
    inner: &Inner,
    doc: &DocKey,
    batch: &[Queued],
) -> Result<Option<Decided>, Reply> {
    let config = inner.collection(&doc.collection);
    let dispatched_at = inner.clock.elapsed();
    let doc_label = format!("{}/{}", doc.collection, doc.key);
    for attempt in 0..=CAS_RETRIES_MAX {
        let cached = if attempt == 0 {
            inner.cache.get(doc)
        } else {
            None
        };
        let current = match cached {
            Some(cached) => cached,
            None => {
                let read_started = inner.clock.elapsed();
                let read = inner.reads.document(doc).await;
                inner.observe_store(read_started, false, 1, read.is_ok());
                read.map_err(|e| store_error_reply(&e))?
            }
        };
        let current_version = current.version;
        // Each mutation is decided against the state the previous one left;
        // only the last state is written.
        let mut state = current;
        let mut steps = Vec::with_capacity(batch.len());
        for queued in batch {
            let Step {
                verdict,
                after,
                conflict,
            } = inner
                .resolver
                .decide(&state, &queued.mutation, &config)
                .await;
            debug_assert!(
                after.version >= state.version,
                "invariant: versions never go backwards"
            );
            // Rendered now, from the document the mutation left (its answer
            // carries it), before that document becomes the next one's.
            let queued_ms = dispatched_at
                .saturating_sub(queued.admitted_at)
                .as_secs_f64()
                * 1000.0;
            let reply = reply::render(
                &queued.mutation.id,
                &doc_label,
                &verdict,
                after.item.as_ref(),
                Some(queued.score),
                queued_ms,
            );
            steps.push((reply, verdict, after.version, conflict));
            state = after;
        }
        let decided_ms = inner.clock.now_ms();
        let mut decided = Decided::default();
        let mut stored = Vec::with_capacity(batch.len());
        let mut before = current_version;
        for (queued, (reply, verdict, version_after, conflict)) in batch.iter().zip(steps) {
            let m = &queued.mutation;
            stored.push(StoredReply {
                client: m.client_name().to_owned(),
                was_accepted: queued.accepted,
                id: m.id.clone(),
                fingerprint: m.fingerprint,
                status: reply.status,
                body: reply.body.clone(),
                at_ms: decided_ms,
            });
            let outcome = match &verdict {
                Verdict::Decided { outcome, .. } => outcome.as_str(),
                Verdict::NotFound { .. } => "not_found",
            };
            decided.mutations.push(MutationRecord {
                id: m.id.clone(),
                client: m.client_name().to_owned(),
                doc: doc.clone(),
                op: m.op.as_str().to_owned(),
                fields: m.fields_touched(),
                base_version: m.base_version,
                version_before: before,
                version_after,
                outcome: outcome.to_owned(),
                conflict: conflict.is_some(),
                score: Some(queued.score),
                ts_ms: m.ts_ms,
                received_ms: queued.received_ms,
                decided_ms,
                queued_us: u64::try_from(
                    dispatched_at.saturating_sub(queued.admitted_at).as_micros(),
                )
                .unwrap_or(u64::MAX),
                lane_waiting: queued.lane_waiting as u64,
            });
            if let Some(conflict) = conflict {
                decided.conflicts.push(conflict);
            }
            before = version_after;
            decided.replies.push(reply);
        }
        // A lane that wrote nothing leaves the document as it was read.
        let (write, unchanged) = if state.version != current_version {
            (Some(state), None)
        } else {
            (None, Some(state))
        };
        let commit = LaneCommit {
            doc: doc.clone(),
            expected_version: current_version,
            write,
            replies: stored,
            at_ms: decided_ms,
            history: LaneHistory {
                mutations: std::mem::take(&mut decided.mutations),
                conflicts: std::mem::take(&mut decided.conflicts),
            },
        };
        let (committed, lane) = inner.commit(commit).await;
        let mut written = None;
        if let Some(lane) = lane {
            decided.mutations = lane.history.mutations;
            decided.conflicts = lane.history.conflicts;
            written = lane.write;
        }
        match committed {
            Ok(CommitOutcome::Committed) => {
                // The reply of the lane's last mutation carries the document
                // as it now is: its length estimates the entry's size.
                let size = decided.replies.last().map_or(0, |r| r.body.len());
                if let Some(end) = written.or(unchanged) {
                    inner.cache.put(doc, end, size);
                }
                observe_decided(inner, &config, &decided);
                return Ok(Some(decided));
            }
            Ok(CommitOutcome::Resent) => {
                inner.cache.forget(doc);
                return Ok(None);
            }
            Ok(CommitOutcome::Stale) => {
                inner.cache.stale(doc);
                inner.commits_stale.fetch_add(1, Ordering::Relaxed);
                inner.telemetry.commit_stale();
                debug!(id = %lane_ids(batch), collection = %doc.collection, key = %doc.key, attempt, "version moved under the batch; deciding again");
                // Back off a little so a busy foreign writer can finish.
                tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(6)) * 2)).await;
            }
            Err(e) => {
                inner.cache.forget(doc);
                warn!(id = %lane_ids(batch), collection = %doc.collection, key = %doc.key, error = %e, "store commit failed");
                return Err(store_error_reply(&e));
            }
        }
    }
    warn!(id = %lane_ids(batch), collection = %doc.collection, key = %doc.key, "gave up after repeated compare-and-set misses");
    Err(Reply::error(
        503,
        "store_contention",
        format!(
            "{doc_label} kept changing under Sluice (written by something else); nothing was applied, resend with the same id"
        ),
    ))
}

/// The ids of a lane's mutations, for its log lines: `a,b,c`.
fn lane_ids(batch: &[Queued]) -> String {
    let ids: Vec<&str> = batch.iter().map(|q| q.mutation.id.as_str()).collect();
    ids.join(",")
}

/// Counts a committed lane's outcomes and feeds the dashboard.
fn observe_decided(inner: &Inner, config: &CollectionConfig, decided: &Decided) {
    let telemetry = &inner.telemetry;
    let handler = config.handler.name();
    let mut conflicts = decided.conflicts.iter();
    for record in &decided.mutations {
        let conflict = if record.conflict {
            conflicts.next()
        } else {
            None
        };
        telemetry.decided(
            &record.outcome,
            handler,
            conflict.map(|c| (c.base_version, c.server_version, c.resolution.as_str())),
        );
        telemetry
            .board
            .touch(&record.doc, record.score.unwrap_or(0.0), record.conflict);
        if let Some(c) = conflict {
            telemetry.board.conflict(Board::view(c));
        }
        debug!(
            id = %record.id,
            collection = %record.doc.collection,
            key = %record.doc.key,
            outcome = %record.outcome,
            version = record.version_after,
            score = record.score.unwrap_or(0.0),
            "mutation decided"
        );
    }
}

/// Group commit: whatever lanes are ready to commit go in one transaction,
/// keys sorted, up to the controller's batch size; each round trip's latency
/// feeds the controller.
async fn committer(inner: Arc<Inner>, mut rx: mpsc::Receiver<CommitJob>) {
    while let Some(first) = rx.recv().await {
        let batch_max = lock(&inner.control).batch_max();
        let mut jobs = vec![first];
        while jobs.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Sorted keys: two Sluice processes committing overlapping batches take
        // row locks in the same order and cannot deadlock.
        jobs.sort_by(|a, b| a.commit.doc.cmp(&b.commit.doc));
        let (commits, waiters): (Vec<LaneCommit>, Vec<_>) =
            jobs.into_iter().map(|j| (j.commit, j.done)).unzip();
        let started = inner.clock.elapsed();
        let result = inner.store.commit(&commits).await;
        inner.observe_store(started, true, commits.len(), result.is_ok());
        if result.is_ok() {
            inner.events.send_modify(|n| *n = n.wrapping_add(1));
        }
        match result {
            Ok(outcomes) => {
                for ((done, outcome), lane) in waiters.into_iter().zip(outcomes).zip(commits) {
                    let _ = done.send((Ok(outcome), lane));
                }
            }
            Err(e) => {
                for (done, lane) in waiters.into_iter().zip(commits) {
                    let _ = done.send((Err(e.clone()), lane));
                }
            }
        }
    }
}

async fn history_writer(
    history: SharedHistory,
    telemetry: Arc<Telemetry>,
    mut rx: mpsc::Receiver<HistoryJob>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < HISTORY_BATCH_MAX {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mutations: Vec<MutationRecord> = jobs
            .iter()
            .flat_map(|j| j.mutations.iter().cloned())
            .collect();
        let conflicts: Vec<ConflictRecord> = jobs
            .iter()
            .flat_map(|j| j.conflicts.iter().cloned())
            .collect();
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=4 {
            match history.record(&mutations, &conflicts).await {
                Ok(()) => break,
                Err(e) if attempt < 4 => {
                    warn!(error = %e, attempt, "history write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                Err(e) => {
                    telemetry.history_failure();
                    error!(error = %e, records = mutations.len(), "history write failed; these records are lost")
                }
            }
        }
        for job in jobs {
            let _ = job.done.send(());
        }
    }
}

/// History rows fetched per page while retraining.
const RETRAIN_PAGE_ROWS: u32 = 10_000;

/// The adaptive learning loop: retrain from the history at start (a warm
/// start), on a schedule, and after enough new outcomes; swap the new model in
/// atomically.
async fn learning_loop(inner: Arc<Inner>) {
    let config = inner.config.predictor.clone();
    if !config.enabled {
        return;
    }
    if config.retrain_on_start {
        retrain(&inner).await;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(config.retrain_interval_s)) => {}
            _ = inner.retrain_wanted.notified() => {}
        }
        retrain(&inner).await;
    }
}

/// Trains a fresh predictor on the newest `retrain_window_rows` of history,
/// page by page on a blocking thread (memory stays one page), and swaps it in
/// under the predictor's lock.
async fn retrain(inner: &Arc<Inner>) {
    let started = inner.clock.elapsed();
    let config = inner.config.predictor.clone();
    let mut fresh = match train_from_history(inner.history.as_ref(), &config).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "retraining skipped: reading the history failed");
            return;
        }
    };
    let training_ms = inner.clock.elapsed().saturating_sub(started).as_secs_f64() * 1000.0;
    let rows = fresh.training().trained_rows;
    {
        let mut live = lock(&inner.predictor);
        fresh.succeed(&mut live, inner.clock.now_ms(), training_ms);
        *live = fresh;
    }
    inner.outcomes_since_retrain.store(0, Ordering::Relaxed);
    inner.telemetry.retrained(training_ms / 1000.0);
    info!(
        rows,
        training_ms, "retrained the predictor from the history"
    );
}

/// A predictor trained on the newest `config.retrain_window_rows` rows of
/// `history`, in order, including rows recorded while it trained; `None` for
/// an empty history.
pub async fn train_from_history(
    history: &dyn crate::history::History,
    config: &PredictorConfig,
) -> Result<Option<Predictor>, HistoryError> {
    let last = history.last_seq().await?;
    if last == 0 {
        return Ok(None);
    }
    let window = i64::try_from(config.retrain_window_rows).unwrap_or(i64::MAX);
    // Reading the next page overlaps training on the last one.
    let (pages_tx, mut pages_rx) = mpsc::channel::<Vec<(i64, MutationRecord)>>(2);
    let read = async move {
        let mut cursor = last.saturating_sub(window).max(0);
        let mut caught_up = false;
        loop {
            let page = history.mutations(cursor, RETRAIN_PAGE_ROWS).await?;
            let Some((page_last, _)) = page.last() else {
                break;
            };
            cursor = *page_last;
            if pages_tx.send(page).await.is_err() {
                break;
            }
            // Past the window's end, one more page catches up on what was
            // recorded during training.
            if cursor >= last {
                if caught_up {
                    break;
                }
                caught_up = true;
            }
        }
        Ok::<(), HistoryError>(())
    };
    let train = async {
        let mut fresh = Predictor::new(config.clone());
        while let Some(page) = pages_rx.recv().await {
            fresh = tokio::task::spawn_blocking(move || {
                for (_, record) in &page {
                    fresh.train_on(record);
                }
                fresh
            })
            .await
            .map_err(|e| HistoryError::Unavailable(format!("the training thread failed: {e}")))?;
        }
        Ok::<Predictor, HistoryError>(fresh)
    };
    let (read, fresh) = tokio::join!(read, train);
    read?;
    let fresh = fresh?;
    Ok(Some(fresh))
}

/// Reads the collection settings again now and then: another Sluice process
/// on the same store may have changed them. A setting that no longer parses
/// is logged and the one in use kept.
async fn refresh_collections(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(COLLECTIONS_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the engine has just read them.
    tick.tick().await;
    loop {
        tick.tick().await;
        let before = inner.collections_changed.load(Ordering::SeqCst);
        let listed = match inner.store.collections().await {
            Ok(listed) => listed,
            Err(e) => {
                debug!(error = %e, "reading collection settings failed; trying again later");
                continue;
            }
        };
        let mut fresh = Vec::with_capacity(listed.len());
        for (name, text) in listed {
            match serde_json::from_str::<CollectionConfig>(&text) {
                Ok(config) => fresh.push((name, config)),
                Err(e) => {
                    warn!(collection = %name, error = %e, "a stored collection setting does not parse; keeping the one in use")
                }
            }
        }
        let mut collections = inner.collections.write().unwrap_or_else(|p| p.into_inner());
        // Changed here while the store was read: the list may predate it.
        if inner.collections_changed.load(Ordering::SeqCst) != before {
            continue;
        }
        for (name, config) in fresh {
            if collections.get(&name) != Some(&config) {
                info!(collection = %name, "collection setting changed in the store");
                collections.insert(name, config);
            }
        }
    }
}

async fn expire_replies(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let retention_ms =
            i64::try_from(inner.config.idempotency_retention.as_millis()).unwrap_or(i64::MAX);
        let before = inner.clock.now_ms().saturating_sub(retention_ms);
        match inner.store.expire_replies(before).await {
            Ok(n) if n > 0 => info!(expired = n, "expired stored replies"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "expiring stored replies failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows of `DOOR_WINDOW` one after another.
    struct Windows {
        door: Door,
        next_ms: u64,
    }

    impl Windows {
        /// One window: these stays (ms) at this depth, then its close.
        fn window(&mut self, stays: &[f64], depth: usize) -> f64 {
            let start = self.next_ms;
            for stay in stays {
                self.door
                    .observe(Duration::from_millis(start + 1), *stay, depth, 20.0);
            }
            self.next_ms = start + 100;
            let last = stays.iter().copied().fold(f64::MAX, f64::min);
            self.door
                .observe(Duration::from_millis(self.next_ms), last, depth, 20.0);
            self.door.limit
        }
    }

    #[test]
    fn the_door_closes_on_a_standing_queue_and_reopens_when_it_drains() {
        let mut w = Windows {
            door: Door::new(10_000),
            next_ms: 0,
        };
        // Quick answers on average, the limit far from used: nothing changes.
        assert_eq!(w.window(&[3.0, 5.0, 40.0], 100), 10_000.0);
        // They stayed 30 ms and more: down to 90% of what was in the
        // system, at once, however high the limit was.
        let limit = w.window(&[30.0, 80.0], 499);
        assert!((limit - 450.0).abs() < 1.0, "{limit}");
        let limit = w.window(&[25.0], 399);
        assert!((limit - 360.0).abs() < 1.0, "{limit}");
        // Never below the floor.
        for _ in 0..100 {
            w.window(&[50.0], 10);
        }
        assert_eq!(w.door.limit, DOOR_LIMIT_MIN as f64);
        // Drained, and used up to the limit: it grows back, 10% a window,
        // up to the queue's bound and not beyond.
        let before = w.door.limit;
        let limit = w.window(&[2.0], DOOR_LIMIT_MIN);
        assert!(limit > before * 1.09, "{limit}");
        for _ in 0..200 {
            let depth = w.door.limit as usize;
            w.window(&[2.0], depth);
        }
        assert_eq!(w.door.limit, 10_000.0);
        // Drained but far from used: it stays where it is.
        w.door.limit = 1_000.0;
        assert_eq!(w.window(&[2.0], 10), 1_000.0);
    }
}
