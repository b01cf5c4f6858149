//! The group committer (many lanes in one transaction, keys sorted) and the
//! history writer (batched, retried).

use super::{Inner, lock};
use crate::model::{ConflictRecord, MutationRecord};
use crate::store::{CommitOutcome, LaneCommit, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

/// History batches written per transaction.
const HISTORY_BATCH_MAX: usize = 512;

pub(super) struct CommitJob {
    commit: LaneCommit,
    /// The outcome, and the lane handed back: its end state and history
    /// records ride with the commit and are not copied.
    done: oneshot::Sender<(Result<CommitOutcome, StoreError>, LaneCommit)>,
}

pub(super) struct HistoryJob {
    mutations: Vec<MutationRecord>,
    conflicts: Vec<ConflictRecord>,
    done: oneshot::Sender<()>,
}
/// The committer's part: the queues into the group committer and the
/// history writer, and what they report back. Its one lock
/// (`history_failure`) is a leaf.
pub(super) struct Pipeline {
    commit_tx: mpsc::Sender<CommitJob>,
    history_tx: mpsc::Sender<HistoryJob>,
    /// Commits that found the document changed since the lane read it.
    commits_stale: AtomicU64,
    /// The last history write that failed after its retries, until one
    /// succeeds again.
    history_failure: Mutex<Option<String>>,
}

impl Pipeline {
    /// The part, and the receiving ends for `committer` and `history_writer`.
    pub(super) fn new(
        channel_len: usize,
    ) -> (
        Pipeline,
        mpsc::Receiver<CommitJob>,
        mpsc::Receiver<HistoryJob>,
    ) {
        let (commit_tx, commit_rx) = mpsc::channel(channel_len);
        let (history_tx, history_rx) = mpsc::channel(channel_len);
        let pipeline = Pipeline {
            commit_tx,
            history_tx,
            commits_stale: AtomicU64::new(0),
            history_failure: Mutex::new(None),
        };
        (pipeline, commit_rx, history_rx)
    }

    /// Commits one lane through the group committer. The lane comes back
    /// with the outcome, whatever it is; `None` if the committer stopped
    /// with it.
    pub(super) async fn commit(
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

    /// Writes history records through the history writer and waits until
    /// it has tried them (a failure after retries is the writer's to report).
    pub(super) async fn record(
        &self,
        mutations: Vec<MutationRecord>,
        conflicts: Vec<ConflictRecord>,
    ) {
        let (done, recorded) = oneshot::channel();
        let job = HistoryJob {
            mutations,
            conflicts,
            done,
        };
        if self.history_tx.send(job).await.is_ok() {
            let _ = recorded.await;
        }
    }

    pub(super) fn stale_commit(&self) {
        self.commits_stale.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn commits_stale(&self) -> u64 {
        self.commits_stale.load(Ordering::Relaxed)
    }

    pub(super) fn history_failure(&self) -> Option<String> {
        lock(&self.history_failure).clone()
    }

    fn set_history_failure(&self, failure: Option<String>) {
        *lock(&self.history_failure) = failure;
    }
}

/// Group commit: whatever lanes are ready to commit go in one transaction,
/// keys sorted, up to the controller's batch size; each round trip's latency
/// feeds the controller.
pub(super) async fn committer(inner: Arc<Inner>, mut rx: mpsc::Receiver<CommitJob>) {
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

pub(super) async fn history_writer(inner: Arc<Inner>, mut rx: mpsc::Receiver<HistoryJob>) {
    let history = &inner.history;
    let telemetry = &inner.telemetry;
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
                Ok(()) => {
                    inner.pipeline.set_history_failure(None);
                    break;
                }
                Err(e) if attempt < 4 => {
                    warn!(error = %e, attempt, "history write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                Err(e) => {
                    telemetry.history_failure();
                    inner.pipeline.set_history_failure(Some(format!(
                        "a history write failed after retries ({e}); its records are lost"
                    )));
                    error!(error = %e, records = mutations.len(), "history write failed; these records are lost")
                }
            }
        }
        for job in jobs {
            let _ = job.done.send(());
        }
    }
}
