//! A lane's life after the queue: the dispatch loop hands ready lanes to
//! workers; a worker reads the document once, decides every taken mutation
//! in order (coalescing), commits through the group committer, teaches the
//! predictor, and answers.

use super::lanes::Take;
use super::quarantine::{QuarantineAction, quarantine_full, quarantined_answer};
use super::reply::{
    self, Answer, Refusal, RefusalReason, document_too_large, reused_key, store_error_refusal,
};
use super::{Inner, LaneEntry, Origin, cache, chain, control, lock};
use crate::model::{
    ConflictInfo, ConflictRecord, Decision, DocKey, Document, Mutation, Outcome, Resolution,
    Verdict,
};
use crate::model::{MutationRecord, RecordedOutcome, encoded_len};
use crate::predict;
use crate::resolve::{CollectionConfig, OnHandlerFailure, Step};
use crate::store::{
    CommitOutcome, LaneCommit, LaneHistory, LockedDoc, Quarantined, StoreError, StoredReply,
};
use crate::telemetry::Board;
use sluice_core::invariant;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::{debug, warn};

mod decide;

use decide::{fold, lane_commit};

/// Re-reads after compare-and-set misses before a batch gives up with 503.
const CAS_RETRIES_MAX: u32 = 16;
/// The dispatch loop: take the best-ranked ready lane while writes in flight
/// are under the adaptive limit and the load is under the threshold; above
/// the threshold, back off (exponential, jittered, capped) and look again.
/// It sleeps on a notification when there is nothing to do: no busy-spin.
pub(super) async fn dispatch_loop(inner: Arc<Inner>) {
    // Jitter only needs to differ between processes, not to be unpredictable.
    let mut jitter = crate::rng::SplitMix64::new(inner.clock.now_ms() as u64);
    let mut backoffs = 0u32;
    loop {
        loop {
            match take(&inner) {
                Take::Nothing => break,
                Take::Overloaded => {
                    let wait = control::backoff_ms(backoffs, jitter.unit());
                    backoffs = backoffs.saturating_add(1);
                    debug!(
                        wait_ms = wait,
                        backoffs, "load over the threshold; backing off"
                    );
                    tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
                }
                Take::Lane(doc, batch) => {
                    backoffs = 0;
                    inner.taken(batch.iter().map(|entry| entry.admitted_at));
                    tokio::spawn(run_lane(inner.clone(), doc, batch));
                }
            }
        }
        inner.lanes.woken().await;
    }
}

/// Takes the best-ranked ready lane if the limit and the load allow it.
fn take(inner: &Inner) -> Take {
    let (state, floor) = {
        let control = lock(&inner.control);
        (control.state(), control.in_flight_floor())
    };
    inner
        .lanes
        .take(state.concurrency_limit, floor, |in_flight| {
            control::load(&inner.signals(&state, in_flight)) >= state.threshold
        })
}

/// What one batch ended as.
#[derive(Default)]
struct BatchEnd {
    /// One answer per mutation of the batch, in order.
    answers: Vec<Answer>,
    /// The history's records of the decided mutations, in order: handed to
    /// the lane's commit (a store that writes the history keeps them in the
    /// commit's transaction) and back with the committed lane.
    history: LaneHistory,
    /// The batch positions the history's mutation records belong to.
    decided_at: Vec<usize>,
    /// Mutations kept in the quarantine, and how many of them took a new slot.
    kept: usize,
    new_slots: usize,
    /// The document as read, when the lane wrote nothing.
    unchanged: Option<Document>,
}

/// Rounds of "the commit found resends; answer them and decide the rest"
/// before a lane gives up: a stored reply cannot disappear between the
/// commit that saw it and the lookup, short of expiring in that instant.
const RESEND_ROUNDS_MAX: usize = 3;

fn resend_loop() -> Refusal {
    Refusal::new(
        RefusalReason::StoreContention,
        "the lane's commits kept finding stored replies its lookups did not; nothing was applied, resend with the same id",
    )
}

/// A lane about to wait on a custom handler gives its in-flight slot back:
/// a script thread or a webhook is no store work, and six slow scripts must
/// not hold the concurrency limit (or keep the load gate shut) against every
/// other collection. It keeps its place in the queue: its own document's
/// mutations still wait for it. Parked lanes are bounded by
/// `lanes_in_flight_max` too; past that a lane waits holding its slot.
fn park(inner: &Inner, parked: &AtomicBool) {
    if !parked.load(Ordering::Relaxed) && inner.lanes.park() {
        parked.store(true, Ordering::Relaxed);
    }
}

async fn run_lane(inner: Arc<Inner>, doc: DocKey, batch: Vec<LaneEntry>) {
    // Every mutation taken from the queue, resends answered early included.
    let settled = batch.len();
    let dispatched_at = inner.clock.elapsed();
    let parked = AtomicBool::new(false);
    let (mut batch, decided) = decide_rounds(&inner, &doc, batch, &parked).await;
    inner.telemetry.dispatched(
        batch.len(),
        batch
            .iter()
            .map(|entry| dispatched_at.saturating_sub(entry.admitted_at)),
        batch.iter().map(|entry| entry.score),
    );
    if let Ok(decided) = &decided {
        learn(&inner, &mut batch, decided);
    }
    finish(&inner, &doc, settled, &parked);
    let replies = match decided {
        Ok(decided) => {
            record_history(&inner, decided.history).await;
            decided
                .answers
                .into_iter()
                .map(|answer| match answer {
                    Answer::Refused(refusal) => inner.refuse(refusal, 1),
                    other => other,
                })
                .collect()
        }
        Err(refusal) => vec![inner.refuse(refusal, batch.len()); batch.len()],
    };
    for (entry, reply) in batch.into_iter().zip(replies) {
        let reservation = (
            entry.mutation.client_name().to_owned(),
            entry.mutation.id.clone(),
        );
        inner.release(&reservation, &reply);
        let _ = entry.answer.send(reply);
    }
}

/// Decides the batch, answering resends the commit finds on the way
/// (`settle_resends`) and deciding the rest again, a few rounds at most.
/// Returns the mutations still to answer and how their batch ended.
async fn decide_rounds(
    inner: &Inner,
    doc: &DocKey,
    mut batch: Vec<LaneEntry>,
    parked: &AtomicBool,
) -> (Vec<LaneEntry>, Result<BatchEnd, Refusal>) {
    // Whether the batch's ids were looked up in the stored replies.
    let mut looked_up = false;
    for _ in 0..RESEND_ROUNDS_MAX {
        if batch.is_empty() {
            return (batch, Ok(BatchEnd::default()));
        }
        match decide_lane(inner, doc, &batch, parked, looked_up).await {
            Ok(Some(done)) => return (batch, Ok(done)),
            Ok(None) => {
                batch = settle_resends(inner, batch).await;
                looked_up = true;
            }
            Err(refusal) => return (batch, Err(refusal)),
        }
    }
    (batch, Err(resend_loop()))
}

/// The committed outcomes teach the controller and the predictor (each
/// through its own score's token).
fn learn(inner: &Inner, batch: &mut [LaneEntry], decided: &BatchEnd) {
    let records = &decided.history.mutations;
    inner.leases.observe(records);
    let conflicts = records.iter().filter(|m| m.conflict).count();
    lock(&inner.control).on_outcomes(records.len(), conflicts);
    let settled = batch.len() as u64;
    let outcomes = decided.decided_at.iter().zip(records);
    let outcomes = outcomes.filter_map(|(&i, record)| {
        let scored = batch[i].scored.take()?;
        let outcome = predict::Outcome {
            conflict: record.conflict,
            version_after: record.version_after,
            wrote: record.version_after > record.version_before,
        };
        Some((scored, outcome))
    });
    let retrain_after = inner.config.predictor.retrain_after_outcomes;
    inner.learning.learn(outcomes, settled, retrain_after);
}

/// Ends the lane's batch of `settled` mutations in the queue and gives its
/// slot back (a parked lane's, or an in-flight one's).
fn finish(inner: &Inner, doc: &DocKey, settled: usize, parked: &AtomicBool) {
    inner
        .lanes
        .finish(doc, settled, parked.load(Ordering::Relaxed));
}

/// Writes the lane's history through the history writer, unless the store
/// wrote it in the lane's commit; answers wait for it.
async fn record_history(inner: &Inner, history: LaneHistory) {
    if history.mutations.is_empty() || inner.store.writes_history() {
        return;
    }
    inner
        .pipeline
        .record(history.mutations, history.conflicts)
        .await;
}

/// Answers the mutations of the lane that were decided before (their commit
/// found their replies stored) from those replies (422 if the body differs),
/// and returns the others. Each lookup waits no longer than a client does.
async fn settle_resends(inner: &Inner, batch: Vec<LaneEntry>) -> Vec<LaneEntry> {
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
            Ok(Some(stored)) if stored.fingerprint == m.fingerprint => {
                Answer::Decided(stored.decision)
            }
            Ok(Some(_)) => inner.refuse(reused_key(&m.id), 1),
            Err(e) => inner.refuse(store_error_refusal(&e), 1),
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
/// and wrote nothing; or the batch may reach a script or a webhook and its
/// ids were not `looked_up` yet: a handler may charge a card or send a mail,
/// so a resend or a reused id must be answered before one is called.
async fn decide_lane(
    inner: &Inner,
    doc: &DocKey,
    batch: &[LaneEntry],
    parked: &AtomicBool,
    looked_up: bool,
) -> Result<Option<BatchEnd>, Refusal> {
    let config = inner.collection(&doc.collection);
    let dispatched_at = inner.clock.elapsed();
    let score = batch.iter().map(|entry| entry.score).fold(0.0, f64::max);
    let wants_lock = inner.locking.wants(score);
    // Decided before the lock is taken, the lock holds only the
    // compare-and-set; a lane that writes nothing takes no lock at all.
    let decide_first = wants_lock && inner.config.lock_decides_first;
    for attempt in 0..=CAS_RETRIES_MAX {
        let (current, mut held) = if wants_lock && !decide_first {
            lock_current(inner, doc, attempt).await?
        } else {
            (read_current(inner, doc, attempt).await?, None)
        };
        if !looked_up && config.handler.is_custom() && may_conflict(batch, current.version) {
            return Ok(None);
        }
        let against = (&*config, doc, batch, dispatched_at, parked);
        let (mut commit, mut decided) = decide_against(inner, against, current).await;
        if decide_first
            && commit.write.is_some()
            && let Some((locked, lock)) = try_lock(inner, doc).await?
        {
            if locked.version != commit.expected_version {
                // Moved since the read: decided again, under the lock.
                inner.quarantine.unreserve(decided.new_slots);
                (commit, decided) = decide_against(inner, against, locked).await;
            }
            held = Some(lock);
        }
        let (committed, lane) = match held {
            Some(held) => commit_locked(inner, held, score, commit).await,
            None => {
                let (committed, lane) = inner.pipeline.commit(commit).await;
                inner
                    .locking
                    .unlocked(matches!(committed, Ok(CommitOutcome::Stale)));
                (committed, lane)
            }
        };
        if !matches!(committed, Ok(CommitOutcome::Committed)) {
            // Slots this attempt took in the quarantine: given back.
            inner.quarantine.unreserve(decided.new_slots);
        }
        match committed {
            Ok(CommitOutcome::Committed) => {
                committed_lane(inner, doc, &config, &mut decided, lane);
                return Ok(Some(decided));
            }
            Ok(CommitOutcome::Resent) => {
                inner.cache.forget(doc);
                return Ok(None);
            }
            Ok(CommitOutcome::Fenced) => {
                inner.cache.forget(doc);
                warn!(id = %lane_ids(batch), collection = %doc.collection, key = %doc.key, "the partition moved to another process; nothing was written");
                return Err(Refusal::new(
                    RefusalReason::PartitionMoved,
                    format!(
                        "{}/{} is now decided by another Sluice process; nothing was applied, resend with the same id",
                        doc.collection, doc.key
                    ),
                ));
            }
            Ok(CommitOutcome::Stale) => {
                inner.cache.stale(doc);
                inner.pipeline.stale_commit();
                inner.telemetry.commit_stale();
                debug!(id = %lane_ids(batch), collection = %doc.collection, key = %doc.key, attempt, "version moved under the batch; deciding again");
                // Back off a little so a busy foreign writer can finish.
                tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(6)) * 2)).await;
            }
            Err(e) => {
                inner.cache.forget(doc);
                warn!(id = %lane_ids(batch), collection = %doc.collection, key = %doc.key, error = %e, "store commit failed");
                return Err(store_error_refusal(&e));
            }
        }
    }
    warn!(id = %lane_ids(batch), collection = %doc.collection, key = %doc.key, "gave up after repeated compare-and-set misses");
    Err(Refusal::new(
        RefusalReason::StoreContention,
        format!(
            "{}/{} kept changing under Sluice (written by something else); nothing was applied, resend with the same id",
            doc.collection, doc.key
        ),
    ))
}

/// What a lane is decided with: its collection's settings, its document,
/// its batch, when it was dispatched, and its parking flag.
type Against<'a> = (
    &'a CollectionConfig,
    &'a DocKey,
    &'a [LaneEntry],
    Duration,
    &'a AtomicBool,
);

/// Decides the batch against `current`: the lane's commit, fenced in
/// cluster mode, and how the batch ends if it commits.
async fn decide_against(
    inner: &Inner,
    (config, doc, batch, dispatched_at, parked): Against<'_>,
    current: Document,
) -> (LaneCommit, BatchEnd) {
    let current_version = current.version;
    let decided_ms = inner.clock.now_ms();
    let folded = fold(inner, config, doc, current, batch, dispatched_at, parked).await;
    let (mut commit, decided) = lane_commit(
        doc,
        current_version,
        folded,
        batch,
        decided_ms,
        dispatched_at,
    );
    // In cluster mode the store checks that this process still owns the
    // document's partition.
    commit.fence = inner.cluster.get().map(|role| role.fence_for(doc));
    (commit, decided)
}

/// A document locked in the store for a lane (pre-emptive locking).
struct Held {
    lock: Box<dyn LockedDoc>,
    /// When the lock was taken, on the engine's clock.
    at: Duration,
    /// Whether the lock was needed: the document had been written behind
    /// Sluice since it last wrote it. `None`: not known (not in the cache).
    needed: Option<bool>,
}

/// The document as it stands, locked in the store until the lane commits;
/// read as usual when the store has no lock to offer.
async fn lock_current(
    inner: &Inner,
    doc: &DocKey,
    attempt: u32,
) -> Result<(Document, Option<Held>), Refusal> {
    match try_lock(inner, doc).await? {
        Some((current, held)) => Ok((current, Some(held))),
        None => Ok((read_current(inner, doc, attempt).await?, None)),
    }
}

/// The document locked in the store, as it stands under the lock; `None`
/// when the store has no lock to offer.
async fn try_lock(inner: &Inner, doc: &DocKey) -> Result<Option<(Document, Held)>, Refusal> {
    let known = inner.cache.version(doc);
    let started = inner.clock.elapsed();
    let locked = inner.store.lock(doc).await;
    match locked {
        Ok(Some(lock)) => {
            inner.observe_store(started, false, 1, true);
            let current = lock.document().clone();
            let needed = known.map(|version| version != current.version);
            let at = inner.clock.elapsed();
            Ok(Some((current, Held { lock, at, needed })))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            inner.observe_store(started, false, 1, false);
            Err(store_error_refusal(&e))
        }
    }
}

/// Commits a locked lane in its lock's transaction, which releases the lock.
async fn commit_locked(
    inner: &Inner,
    held: Held,
    score: f64,
    commit: LaneCommit,
) -> (Result<CommitOutcome, StoreError>, Option<LaneCommit>) {
    let started = inner.clock.elapsed();
    let committed = held.lock.commit(&commit).await;
    let now = inner.clock.elapsed();
    inner.observe_store(started, true, 1, committed.is_ok());
    let held_for = now.saturating_sub(held.at);
    inner.telemetry.lane_locked(held_for);
    inner.locking.locked(score, held.needed, held_for);
    (committed, Some(commit))
}

/// The document as it stands: from the cache of what Sluice last committed
/// on a first attempt, else from the store.
async fn read_current(inner: &Inner, doc: &DocKey, attempt: u32) -> Result<Document, Refusal> {
    if attempt == 0
        && let Some(cached) = inner.cache.get(doc)
    {
        return Ok(cached);
    }
    let read_started = inner.clock.elapsed();
    let read = inner.reads.document(doc).await;
    inner.observe_store(read_started, false, 1, read.is_ok());
    read.map_err(|e| store_error_refusal(&e))
}

/// After a lane committed: its quarantine entries and released slots, the
/// writers of the versions it wrote, the cache, and the counts. `lane` is
/// the commit as the committer hands it back, with the history records.
fn committed_lane(
    inner: &Inner,
    doc: &DocKey,
    config: &CollectionConfig,
    decided: &mut BatchEnd,
    lane: Option<LaneCommit>,
) {
    let mut written = None;
    if let Some(lane) = lane {
        let released: Vec<(String, String)> = lane
            .replies
            .into_iter()
            .filter(|r| r.was_quarantined)
            .map(|r| (r.client, r.id))
            .collect();
        inner
            .quarantine
            .committed(&lane.quarantine, decided.new_slots, &released);
        decided.history = lane.history;
        written = lane.write;
    } else {
        inner.quarantine.committed(&[], decided.new_slots, &[]);
    }
    for record in &decided.history.mutations {
        if record.version_after > record.version_before {
            inner
                .writers
                .record(doc, record.version_after, &record.client);
        }
    }
    // The reply of the lane's last decided mutation carries the document as
    // it now is: it estimates the entry's memory.
    let last_body = decided.answers.iter().rev().find_map(|a| match a {
        Answer::Decided(d) => Some(d.body.as_str()),
        _ => None,
    });
    let size = last_body.map_or(0, cache::memory_estimate);
    if let Some(end) = written.or(decided.unchanged.take()) {
        inner.cache.put(doc, end, size);
    }
    observe_decided(inner, config, decided);
    if decided.kept > 0 {
        inner.telemetry.quarantined(decided.kept);
    }
}

/// Whether a mutation of the batch may conflict, and so reach the
/// collection's handler: a conditional one whose base is not the version
/// read, or that follows another mutation of its lane.
fn may_conflict(batch: &[LaneEntry], version: u64) -> bool {
    batch.iter().enumerate().any(|(i, q)| {
        q.mutation
            .base_version
            .is_some_and(|base| base != version || i > 0)
    })
}

/// The ids of a lane's mutations, for its log lines: `a,b,c`.
fn lane_ids(batch: &[LaneEntry]) -> String {
    let ids: Vec<&str> = batch.iter().map(|q| q.mutation.id.as_str()).collect();
    ids.join(",")
}

/// Counts a committed lane's outcomes and feeds the dashboard.
fn observe_decided(inner: &Inner, config: &CollectionConfig, decided: &BatchEnd) {
    let telemetry = &inner.telemetry;
    let handler = config.handler.name();
    let mut conflicts = decided.history.conflicts.iter();
    for record in &decided.history.mutations {
        let conflict = if record.conflict {
            conflicts.next()
        } else {
            None
        };
        telemetry.decided(
            record.outcome,
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
            outcome = record.outcome.as_str(),
            version = record.version_after,
            score = record.score.unwrap_or(0.0),
            "mutation decided"
        );
    }
}
