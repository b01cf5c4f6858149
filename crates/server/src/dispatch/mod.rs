//! The dispatcher: the async layer around the core's synchronous queue,
//! reservations, predictor and controller (the queue and the reservations
//! behind the core's traits). Each stage of a mutation's life is a file:
//!
//! - `admit.rs`: the door, reservations of `(client, id)`, sync, async and
//!   batch admission into the queue;
//! - `lanes.rs`: the lanes' part — the queue, lanes in flight and parked,
//!   and the dispatch loop's wake-up;
//! - `lane.rs`: the dispatch loop and a lane's read-decide-commit;
//! - `commit.rs`: the committer's part (`Pipeline`), the group committer and
//!   the history writer;
//! - `learn.rs`: the learning loop and retraining;
//! - `chores.rs`: host sampling, the dashboard's clock, collection refresh and
//!   reply expiry;
//! - `collections.rs`: the collections' configurations in use, and their
//!   refresh from the store;
//! - `stats.rs`: what `/v1/stats`, `/v1/model`, `/metrics` and the dashboard
//!   read;
//! - `control` (the core's): every adaptive decision, pure (no IO, no clock);
//! - `chain.rs`: own-write chaining; `quarantine.rs`: the quarantine;
//! - `reads.rs`, `cache.rs`, `reply.rs`: point reads, the document cache, the
//!   typed answers and the rendering of a decided mutation's answer.
//!
//! Invariants: an answer is sent only after its reply is committed with the
//! write it describes; one worker per key; in-flight lanes ≤ the limit.
//!
//! Lock order. The engine's state sits behind few `std::sync` locks, each
//! private to the part that owns it (`lanes::LaneSet`, `admit::Admission`'s
//! door and reservations, `learn::Learning`'s two, `commit::Pipeline`'s
//! history failure, and the leaves inside `cache`, `writers`,
//! `collections` and `quarantine`), plus `control` on `Inner`. Nothing
//! awaits while holding one, and a thread holds at most one at a time, with
//! one exception that its type keeps in one place: `Learning` computes the
//! dashboards' cached summary from the predictor's report under the
//! summary's lock, so that viewers compute it once. (`LaneSet::take` asks
//! the load gate under the lanes' lock, so that the count it judges is the
//! one it dispatches against; the gate reads atomics, no lock.) Any new
//! nesting must extend this order, not invert it, and belongs inside the
//! part that owns both locks.

mod admit;
mod cache;
mod chain;
mod chores;
mod cluster;
mod collections;
mod commit;
pub use sluice_core::control;
mod lane;
mod lanes;
mod learn;
mod leases;
mod locking;
mod quarantine;
mod reads;
pub(crate) mod reply;
mod shadow;
mod simulate;
mod staging;
mod stats;

pub use crate::queue::Pending;
pub use admit::InSystem;
pub use cluster::{ClusterMember, ClusterView, OwnedPartition};
pub use control::{ControlState, Signals};
pub use learn::train_from_history;
pub use leases::{Forecast, Lease, LeaseConfig, LeaseStats};
pub use quarantine::{QuarantineAction, QuarantineError};
pub use reply::{Answer, Queued, Refusal, RefusalReason};
pub use shadow::{Disagreement, ShadowReport, Side};
pub use simulate::Simulated;
pub use staging::{STAGED_LIST_MAX, StagedView, StagingConfig};
pub use stats::{Dashboard, DashboardCluster, DashboardMember, EngineStats, ModelSummary};

use chores::HostLoad;
use control::{ControlConfig, Controller};

use crate::auth::Principal;
use crate::clock::SharedClock;
use crate::guard::{GuardConfig, GuardMode};
use crate::history::{ConflictPage, ConflictQuery, HistoryError, SharedHistory};
use crate::model::{DocKey, Document, Mutation};
use crate::predict::{ModelReport, PredictorConfig, Scored};
use crate::queue::{Queue, QueueLimits};
use crate::resolve::{CollectionConfig, Handler, Resolver, ScriptError};
use crate::store::{CollectionChange, SharedStore, StoreError, StoredReply};
use crate::telemetry::Telemetry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::info;

/// Lanes decided at once. Each holds a read and, for custom handlers, a script
/// or webhook call; more than this mostly adds contention on the store.
pub const LANES_IN_FLIGHT_MAX_DEFAULT: usize = 64;
/// Lanes per group-commit transaction: large enough to amortize a commit's
/// fsync, small enough to keep one transaction short.
pub const COMMIT_BATCH_MAX_DEFAULT: usize = 256;
/// How long a client's request waits for its mutation to be decided.
pub const DECIDE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Quarantined mutations kept at most: each is a whole mutation (up to a
/// body's 1 MiB) waiting for an operator; thousands is already a backlog
/// nobody reads.
pub const QUARANTINE_LEN_MAX_DEFAULT: usize = 1_000;
/// The largest document, in encoded JSON: as large as a request body, so a
/// document can always be read back, put again, and answered in one reply
/// a client can hold.
pub const DOCUMENT_BYTES_MAX_DEFAULT: usize = 1 << 20;
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
/// How much waiting a conflict probability of 1 is worth in the lane order:
/// a likely conflict overtakes lanes that arrived up to this much earlier.
pub const PRIORITY_BOOST_MS_DEFAULT: u64 = 50;
/// Requests queued for the committer and the history writer.
const PIPELINE_CHANNEL_LEN: usize = 4_096;

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
    /// and lowers the limit while mutations wait longer than this in the
    /// queue on average; 0: no door.
    pub queue_wait_max_ms: u64,
    /// The budget of the cache of committed documents; 0: no cache, every
    /// lane reads the store.
    pub document_cache_bytes: usize,
    /// Mutations the quarantine keeps at most; past it a failed handler's
    /// mutation is refused (503 `quarantine_full`), or rejected when it was
    /// accepted asynchronously and nobody waits to resend it.
    pub quarantine_len_max: usize,
    /// The largest document a mutation may leave, in encoded JSON bytes.
    pub document_bytes_max: usize,
    /// Sample the host's CPU and memory (off in tests that set them).
    pub sample_host: bool,
    pub predictor: PredictorConfig,
    /// Pre-emptive locking: which lanes read, decide and commit their
    /// document under a lock in the store (`locking.rs`).
    pub locking: GuardConfig,
    /// A locking lane decides before it takes the lock (and takes none when
    /// it writes nothing): the lock then holds only the compare-and-set.
    pub lock_decides_first: bool,
    /// Read-time forecasts and write leases (`leases.rs`).
    pub leases: LeaseConfig,
    /// Shadow writes' staging area (`staging.rs`).
    pub staging: StagingConfig,
}

/// Where the lock threshold starts, and its bounds.
pub const LOCK_THRESHOLD_DEFAULT: f64 = 0.5;
pub const LOCK_THRESHOLD_MIN_DEFAULT: f64 = 0.05;
pub const LOCK_THRESHOLD_MAX_DEFAULT: f64 = 0.95;

/// Off: in `sluice bench`'s external workload locking cost more goodput
/// (a locked lane commits alone, outside the group commit) than the stale
/// commits it saved (see the README's Advanced features).
pub const LOCKING_DEFAULT: GuardConfig = GuardConfig {
    mode: GuardMode::Off,
    threshold: LOCK_THRESHOLD_DEFAULT,
    threshold_min: LOCK_THRESHOLD_MIN_DEFAULT,
    threshold_max: LOCK_THRESHOLD_MAX_DEFAULT,
};

/// Where the lease threshold starts, its bounds, and a lease's length.
pub const LEASE_THRESHOLD_DEFAULT: f64 = 0.5;
pub const LEASE_MS_DEFAULT: u64 = 2_000;
pub const LEASE_MS_MAX: u64 = 30_000;
pub const LEASES_MAX_DEFAULT: usize = 10_000;
pub const FORECASTS_MAX_DEFAULT: usize = 100_000;

/// Off: in `sluice bench`'s hot workload leases changed neither goodput
/// nor client conflicts (a lease moves a conflict from its holder to the
/// clients that read meanwhile), and a lease holds others back.
pub const LEASES_DEFAULT: LeaseConfig = LeaseConfig {
    guard: GuardConfig {
        mode: GuardMode::Off,
        threshold: LEASE_THRESHOLD_DEFAULT,
        threshold_min: LOCK_THRESHOLD_MIN_DEFAULT,
        threshold_max: LOCK_THRESHOLD_MAX_DEFAULT,
    },
    duration: Duration::from_millis(LEASE_MS_DEFAULT),
    holds_max: LEASES_MAX_DEFAULT,
    forecasts_max: FORECASTS_MAX_DEFAULT,
};

pub const STAGING_DEFAULT: StagingConfig = StagingConfig {
    shed_when_overloaded: false,
    shed_below: 0.05,
    expire: Duration::from_secs(600),
    staged_max: 100_000,
    validate_every: Duration::from_millis(200),
};

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue: QueueLimits {
                queue_len_max: crate::config::QUEUE_LEN_MAX_DEFAULT,
                lane_len_max: crate::config::LANE_LEN_MAX_DEFAULT,
                batch_len_max: crate::config::BATCH_LEN_MAX_DEFAULT,
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
            quarantine_len_max: QUARANTINE_LEN_MAX_DEFAULT,
            document_bytes_max: DOCUMENT_BYTES_MAX_DEFAULT,
            sample_host: true,
            predictor: PredictorConfig::default(),
            locking: LOCKING_DEFAULT,
            lock_decides_first: true,
            leases: LEASES_DEFAULT,
            staging: STAGING_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Refused at the door, as a mutation would be.
    #[error("{}", .0.message)]
    Overloaded(Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct LaneEntry {
    mutation: Mutation,
    admitted_at: Duration,
    received_ms: i64,
    score: f64,
    lane_waiting: usize,
    origin: Origin,
    /// Taken by the learner once the mutation is decided.
    scored: Option<Scored>,
    answer: oneshot::Sender<Answer>,
}

/// Where a mutation came from, and so who waits for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A synchronous request (alone or in a batch): its client waits.
    Sent,
    /// Answered 202 and kept in the accept log until decided: nobody waits.
    Accepted,
    /// An operator's retry or discard of a quarantined mutation: its final
    /// reply removes the quarantine's entry.
    Quarantine(QuarantineAction),
    /// A shadow write that stayed staged past its bound: accepted like
    /// `Accepted`, and rejected as expired instead of decided.
    Expired,
}

impl Origin {
    /// In the accept log until decided: nobody waits.
    fn is_accepted(self) -> bool {
        matches!(self, Origin::Accepted | Origin::Expired)
    }

    fn is_from_quarantine(self) -> bool {
        matches!(self, Origin::Quarantine(_))
    }
}

struct Inner {
    config: EngineConfig,
    clock: SharedClock,
    store: SharedStore,
    history: SharedHistory,
    resolver: Resolver,
    learning: learn::Learning,
    control: Mutex<Controller>,
    host: HostLoad,
    lanes: lanes::LaneSet,
    admission: admit::Admission,
    collections: collections::Collections,
    pipeline: commit::Pipeline,
    closing: AtomicBool,
    reads: reads::Reads,
    /// What Sluice last committed, so lanes start without a store read.
    cache: cache::DocCache,
    /// Who wrote documents' recent versions, for own-write chaining.
    writers: chain::RecentWriters,
    quarantine: quarantine::QuarantineIndex,
    locking: locking::Locking,
    leases: leases::Leases,
    shadows: shadow::Shadows,
    staging: staging::Staging,
    /// Bumped after every commit, so event streams know to look.
    events: tokio::sync::watch::Sender<u64>,
    /// The secret behind event ids, read from the store once.
    events_secret: tokio::sync::OnceCell<Arc<str>>,
    telemetry: Arc<Telemetry>,
    /// This process's part in a cluster, once it joined one.
    cluster: std::sync::OnceLock<Arc<cluster::ClusterRole>>,
}

/// A handle on the running dispatcher; clones share it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A map whose iteration order is the same in every run (SipHash with fixed
/// keys): the engine's maps that are walked use it, so that the simulation
/// replays a seed bit for bit.
type FixedMap<K, V> =
    HashMap<K, V, std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

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
        let default_collection = CollectionConfig::with_handler(config.default_handler.clone());
        let mut collections = HashMap::new();
        for (name, text) in store.collections().await? {
            match serde_json::from_str::<CollectionConfig>(&text) {
                Ok(c) => {
                    collections.insert(name, Arc::new(c));
                }
                Err(e) => {
                    return Err(StoreError::Corrupt(format!(
                        "collection {name:?} configuration: {e}"
                    )));
                }
            }
        }
        let queue_len_max = config.queue.queue_len_max;
        let kept = store
            .quarantine_list(&crate::store::QuarantineQuery {
                limit: u32::try_from(config.quarantine_len_max).unwrap_or(u32::MAX),
                ..Default::default()
            })
            .await?;
        let quarantine = quarantine::QuarantineIndex::new(config.quarantine_len_max, kept);
        let cache = cache::DocCache::new(config.document_cache_bytes);
        let reads_store = store.clone();
        let (pipeline, commit_rx, history_rx) = commit::Pipeline::new(PIPELINE_CHANNEL_LEN);
        let telemetry = Arc::new(Telemetry::new());
        resolver.observe(telemetry.clone());
        resolver.bound_documents(config.document_bytes_max);
        let inner = Arc::new(Inner {
            learning: learn::Learning::new(&config.predictor),
            locking: locking::Locking::new(config.locking),
            leases: leases::Leases::new(config.leases),
            shadows: shadow::Shadows::new(),
            staging: staging::Staging {
                count: std::sync::atomic::AtomicUsize::new(0),
            },
            control: Mutex::new(Controller::new(ControlConfig {
                limit_max: config.lanes_in_flight_max,
                commit_batch_max: config.commit_batch_max,
                latency_target_ms: config.latency_target_ms,
            })),
            host: HostLoad::default(),
            lanes: lanes::LaneSet::new(
                Box::new(Queue::new(config.queue)),
                config.lanes_in_flight_max,
            ),
            config,
            clock,
            store,
            history,
            resolver,
            admission: admit::Admission::new(queue_len_max),
            collections: collections::Collections::new(collections, default_collection),
            pipeline,
            closing: AtomicBool::new(false),
            reads: reads::Reads::start(reads_store),
            cache,
            writers: chain::RecentWriters::default(),
            quarantine,
            events: tokio::sync::watch::Sender::new(0),
            telemetry,
            events_secret: tokio::sync::OnceCell::new(),
            cluster: std::sync::OnceLock::new(),
        });
        tokio::spawn(lane::dispatch_loop(inner.clone()));
        tokio::spawn(commit::committer(inner.clone(), commit_rx));
        if inner.config.sample_host {
            tokio::spawn(chores::sample_host(inner.clone()));
            // The simulation checks after every event, on its own clock.
            if cfg!(debug_assertions) {
                tokio::spawn(chores::check_invariants(Engine {
                    inner: inner.clone(),
                }));
            }
        }
        tokio::spawn(commit::history_writer(inner.clone(), history_rx));
        tokio::spawn(chores::watch_history(inner.clone()));
        tokio::spawn(chores::sample_board(inner.clone()));
        tokio::spawn(chores::adapt_locking(inner.clone()));
        tokio::spawn(chores::expire_replies(inner.clone()));
        tokio::spawn(learn::learning_loop(inner.clone()));
        tokio::spawn(shadow::run(inner.clone()));
        tokio::spawn(staging::validate(inner.clone()));
        tokio::spawn(chores::refresh_collections(inner.clone()));
        Ok(Engine { inner })
    }

    /// The predictor's state and quality, for `GET /v1/model`.
    pub fn model_report(&self) -> ModelReport {
        self.inner.learning.report()
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
        let _in_system = Inner::enter(&self.inner, 1, false)
            .map_err(|shut| ReadError::Overloaded(reply::overloaded(shut)))?;
        Ok(self.inner.reads.document(doc).await?)
    }

    pub async fn conflicts(&self, query: &ConflictQuery) -> Result<ConflictPage, HistoryError> {
        self.inner.history.conflicts_page(query).await
    }

    /// What is wrong while Sluice still serves: the history no longer the
    /// file it opened, or its writes failing. Empty when all is well.
    pub fn degraded(&self) -> Vec<String> {
        let mut degraded = Vec::new();
        if let Err(e) = self.inner.history.health() {
            degraded.push(e);
        }
        if let Some(failure) = self.inner.pipeline.history_failure() {
            degraded.push(failure);
        }
        degraded
    }

    /// Wall time now, ms since the epoch, by the engine's clock.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The collection's configuration, or the default handler's when it has none.
    pub fn collection(&self, name: &str) -> Arc<CollectionConfig> {
        self.inner.collection(name)
    }

    /// Validates (loading a script in the sandbox) and stores a
    /// configuration, recording that `by` (nobody when authentication is
    /// off) made the change.
    pub async fn configure_collection(
        &self,
        name: &str,
        config: CollectionConfig,
        by: Option<&Principal>,
    ) -> Result<(), ConfigureError> {
        config.validate().map_err(ConfigureError::Invalid)?;
        self.check_handler(&config.handler, "").await?;
        if let Some(shadow) = &config.shadow_handler {
            self.check_handler(shadow, "shadow_handler: ").await?;
        }
        let invalid = |e: serde_json::Error| ConfigureError::Invalid(e.to_string());
        let text = serde_json::to_string(&config).map_err(invalid)?;
        let change = CollectionChange {
            seq: 0,
            collection: name.to_owned(),
            config: serde_json::to_string(&config.redacted()).map_err(invalid)?,
            by_client: by.map(|p| p.subject.clone()),
            by_role: by.map(|p| p.role.as_str().to_owned()),
            at_ms: self.inner.clock.now_ms(),
        };
        self.inner.store.put_collection(&text, &change).await?;
        self.inner.collections.set(name, config);
        info!(collection = name, "collection configured");
        Ok(())
    }

    /// Refuses a webhook Sluice may not call and a script that does not
    /// load; `what` starts the message.
    async fn check_handler(&self, handler: &Handler, what: &str) -> Result<(), ConfigureError> {
        if let Handler::Webhook { url, .. } = handler {
            self.inner
                .resolver
                .check_webhook(url)
                .map_err(|e| ConfigureError::Invalid(format!("{what}{e}")))?;
        }
        if let Handler::Script { source } = handler {
            match self.inner.resolver.check_script(source).await {
                Ok(()) => {}
                Err(
                    e @ (ScriptError::Engine(_)
                    | ScriptError::TimeLimit(_)
                    | ScriptError::MemoryLimit(_)),
                ) => {
                    return Err(ConfigureError::Invalid(format!(
                        "{what}the script could not be loaded: {e}"
                    )));
                }
                Err(e) => {
                    return Err(ConfigureError::Invalid(format!(
                        "{what}the script is not usable: {e}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// A collection's recorded changes, newest first.
    pub async fn collection_changes(
        &self,
        name: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<CollectionChange>, StoreError> {
        self.inner
            .store
            .collection_changes(name, before, limit)
            .await
    }

    /// Refuses new mutations and waits up to `deadline` for the queued ones to
    /// be decided. Returns how many were still pending at the deadline.
    pub async fn shutdown(&self, deadline: Duration) -> usize {
        self.inner.closing.store(true, Ordering::SeqCst);
        // Nobody holds a document for a write that will not be taken.
        for end in self.inner.lanes.unhold_all() {
            self.inner.leases.ended(end);
        }
        let wait = async {
            loop {
                let drained = self.inner.lanes.drained();
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

impl Inner {
    /// What the load is computed from, now, for `in_flight` lanes under
    /// the controller's `state`.
    fn signals(&self, state: &ControlState, in_flight: usize) -> Signals {
        let (cpu, memory) = self.host.get();
        Signals {
            cpu,
            memory,
            in_flight,
            limit: state.concurrency_limit,
            store_latency_ms: state.store_latency_ms,
            latency_target_ms: self.config.latency_target_ms,
        }
    }

    /// Feeds one store round trip (a read, or a commit of `batch` lanes) that
    /// started at `started` to the concurrency controller and the metrics.
    fn observe_store(&self, started: Duration, commit: bool, batch: usize, ok: bool) {
        let seconds = self.clock.elapsed().saturating_sub(started).as_secs_f64();
        let in_flight = self.lanes.in_flight();
        lock(&self.control).on_store(seconds * 1000.0, batch, ok, in_flight);
        if commit {
            self.telemetry.store_commit(seconds, batch, ok);
        } else {
            self.telemetry.store_read(seconds, ok);
        }
    }

    fn collection(&self, name: &str) -> Arc<CollectionConfig> {
        self.collections.get(name)
    }

    /// Drops the reservation and hands `reply` to every resend that waited on it.
    fn release(&self, reservation: &(String, String), reply: &Answer) {
        let waiters = self.admission.release(&reservation.0, &reservation.1);
        for waiter in waiters {
            let _ = waiter.send(reply.clone());
        }
    }
}
