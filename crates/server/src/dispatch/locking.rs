//! Pre-emptive locking: a lane whose highest conflict score is at or above
//! the lock threshold reads, decides and commits its document under a lock
//! in the store (`Store::lock`; on PostgreSQL `SELECT … FOR UPDATE` in the
//! commit's own transaction), so a writer that bypasses Sluice waits instead
//! of making the lane's compare-and-set stale. Below the threshold nothing
//! changes and nothing is paid. The threshold adapts (`guard`): down when
//! unlocked lanes went stale, up when marginal locks were rarely needed or
//! the store is slow, and by the model's calibration error.
//!
//! Its own lock is a leaf: nothing else is taken while it is held.

use super::lock;
use crate::guard::{GuardChange, GuardConfig, GuardMode, GuardThreshold, GuardWindow};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) struct Locking {
    state: Mutex<State>,
    /// Lanes decided under a lock, those it saved (the document had been
    /// written behind Sluice), and stale commits of lanes without one.
    locked_total: AtomicU64,
    needed_total: AtomicU64,
    stale_unlocked_total: AtomicU64,
    /// How long locks were held, in all, µs.
    held_us_total: AtomicU64,
}

struct State {
    threshold: GuardThreshold,
    window: GuardWindow,
}

/// `GET /v1/stats`' view of the locking.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LockingStats {
    pub mode: GuardMode,
    /// The score at or above which a lane locks its document now.
    pub threshold: f64,
    pub locked_lanes: u64,
    pub locks_needed: u64,
    pub stale_unlocked: u64,
    /// How long the locks were held, in all (ms).
    pub lock_held_ms: f64,
}

impl Locking {
    pub(super) fn new(config: GuardConfig) -> Self {
        Locking {
            state: Mutex::new(State {
                threshold: GuardThreshold::new(config),
                window: GuardWindow::default(),
            }),
            locked_total: AtomicU64::new(0),
            needed_total: AtomicU64::new(0),
            stale_unlocked_total: AtomicU64::new(0),
            held_us_total: AtomicU64::new(0),
        }
    }

    /// Whether a lane whose highest score is `score` locks its document.
    pub(super) fn wants(&self, score: f64) -> bool {
        lock(&self.state).threshold.protects(score)
    }

    /// A lane decided under a lock; `needed`: the document had moved since
    /// Sluice last wrote it, so without the lock its commit could have
    /// gone stale; `None`: not known, and not judged.
    pub(super) fn locked(&self, score: f64, needed: Option<bool>, held: std::time::Duration) {
        let was_needed = needed == Some(true);
        self.locked_total.fetch_add(1, Ordering::Relaxed);
        self.held_us_total.fetch_add(
            u64::try_from(held.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.needed_total
            .fetch_add(u64::from(was_needed), Ordering::Relaxed);
        let mut state = lock(&self.state);
        let marginal = needed.is_some() && state.threshold.is_marginal(score);
        let w = &mut state.window;
        w.protected += 1;
        w.needed += u64::from(was_needed);
        w.marginal += u64::from(marginal);
        w.marginal_needed += u64::from(marginal && was_needed);
    }

    /// A lane's commit without a lock; `stale`: it found the version moved.
    pub(super) fn unlocked(&self, stale: bool) {
        self.stale_unlocked_total
            .fetch_add(u64::from(stale), Ordering::Relaxed);
        let mut state = lock(&self.state);
        state.window.unprotected += 1;
        state.window.hit += u64::from(stale);
    }

    /// Ends a window: the threshold moves by what it showed.
    pub(super) fn tick(
        &self,
        store_latency_ms: f64,
        latency_target_ms: f64,
        calibration_error: f64,
    ) -> Option<GuardChange> {
        let state = &mut *lock(&self.state);
        state.threshold.close(
            &mut state.window,
            store_latency_ms,
            latency_target_ms,
            calibration_error,
        )
    }

    pub(super) fn stats(&self) -> LockingStats {
        let (mode, threshold) = {
            let state = lock(&self.state);
            (state.threshold.mode(), state.threshold.threshold())
        };
        LockingStats {
            mode,
            threshold,
            locked_lanes: self.locked_total.load(Ordering::Relaxed),
            locks_needed: self.needed_total.load(Ordering::Relaxed),
            stale_unlocked: self.stale_unlocked_total.load(Ordering::Relaxed),
            lock_held_ms: self.held_us_total.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}
