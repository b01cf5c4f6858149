//! The lanes' part: the mutation queue, the count of lanes in flight and
//! parked, and the two notifications around them. Its lock is private to
//! this module and no method calls out while holding it, except to the
//! closures `take` and `admit_with` are given, which see only the queue or
//! a count: so the lanes' lock is always a leaf.

use super::{LaneEntry, lock};
use crate::model::DocKey;
use crate::queue::{Full, MutationQueue};
use sluice_core::invariant;
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// What `take` found.
pub(super) enum Take {
    /// No lane ready, or the lanes in flight are at the limit: sleep until woken.
    Nothing,
    /// The load is over the threshold: back off, then look again.
    Overloaded,
    /// A lane's batch to decide.
    Lane(DocKey, Vec<LaneEntry>),
}

/// Counts the dashboards read.
pub(super) struct LaneCounts {
    pub(super) pending: usize,
    pub(super) lanes: usize,
    pub(super) in_flight: usize,
}

pub(super) struct LaneSet {
    state: Mutex<State>,
    /// Woken when a lane may be ready or a slot came free.
    wake: Notify,
    /// Woken when the queue became empty.
    drained: Notify,
    /// `lanes_in_flight_max`: the bound on lanes in flight and on parked ones.
    in_flight_max: usize,
}

struct State {
    queue: Box<dyn MutationQueue<LaneEntry>>,
    /// Lanes taken from the queue and not finished, less the parked ones:
    /// what the concurrency limit and the load gate count.
    in_flight: usize,
    /// Lanes that gave their in-flight slot back to wait on a custom
    /// handler (at most `in_flight_max`; see `lane::park`).
    parked: usize,
    /// Dispatches that found the lanes in flight past the concurrency limit:
    /// impossible by construction, counted in every build so that
    /// `check` can report it (a panic in the dispatch loop's task would go
    /// unseen).
    dispatched_past_limit: u64,
}

impl LaneSet {
    pub(super) fn new(queue: Box<dyn MutationQueue<LaneEntry>>, in_flight_max: usize) -> LaneSet {
        LaneSet {
            state: Mutex::new(State {
                queue,
                in_flight: 0,
                parked: 0,
                dispatched_past_limit: 0,
            }),
            wake: Notify::new(),
            drained: Notify::new(),
            in_flight_max,
        }
    }

    /// Queues one mutation in its document's lane (the dispatch loop is not
    /// woken: the caller does that once it has handed the mutation over).
    pub(super) fn admit(&self, doc: &DocKey, entry: LaneEntry, rank: i64) -> Result<(), Full> {
        lock(&self.state).queue.admit(doc, entry, rank)
    }

    /// Runs `f` on the queue under the lock, for a batch that is admitted
    /// whole or not at all.
    pub(super) fn admit_with<R>(
        &self,
        f: impl FnOnce(&mut dyn MutationQueue<LaneEntry>) -> R,
    ) -> R {
        f(lock(&self.state).queue.as_mut())
    }

    /// Mutations waiting in the document's lane.
    pub(super) fn waiting_len(&self, doc: &DocKey) -> usize {
        lock(&self.state).queue.waiting_len(doc)
    }

    /// Takes the best-ranked ready lane if fewer than `limit` lanes are in
    /// flight and, at or above `floor`, `overloaded(in_flight)` says no.
    pub(super) fn take(
        &self,
        limit: usize,
        floor: usize,
        overloaded: impl FnOnce(usize) -> bool,
    ) -> Take {
        let mut state = lock(&self.state);
        if state.in_flight >= limit || state.queue.pending_len() == 0 {
            return Take::Nothing;
        }
        // Below the floor, dispatch whatever the load says: the load cannot
        // fall by waiting on ourselves, and the queue must move.
        if state.in_flight >= floor && overloaded(state.in_flight) {
            return Take::Overloaded;
        }
        let Some((doc, batch)) = state.queue.take_ready() else {
            return Take::Nothing;
        };
        state.in_flight += 1;
        if state.in_flight > limit {
            state.dispatched_past_limit += 1;
        }
        invariant::hold(
            state.in_flight <= limit,
            "lanes in flight ≤ the concurrency limit at dispatch",
        );
        Take::Lane(doc, batch)
    }

    /// Moves an in-flight lane to the parked ones, unless as many are
    /// parked as may be; says whether it did.
    pub(super) fn park(&self) -> bool {
        {
            let mut state = lock(&self.state);
            if state.parked >= self.in_flight_max {
                return false;
            }
            state.in_flight -= 1;
            state.parked += 1;
        }
        self.wake.notify_one();
        true
    }

    /// Ends a lane's batch of `settled` mutations in the queue and gives its
    /// slot back (a parked lane's, or an in-flight one's).
    pub(super) fn finish(&self, doc: &DocKey, settled: usize, parked: bool) {
        {
            let mut state = lock(&self.state);
            state.queue.finish(doc, settled);
            if parked {
                state.parked -= 1;
            } else {
                state.in_flight -= 1;
            }
            if state.queue.pending_len() == 0 {
                self.drained.notify_waiters();
            }
        }
        self.wake.notify_one();
    }

    pub(super) fn in_flight(&self) -> usize {
        lock(&self.state).in_flight
    }

    pub(super) fn counts(&self) -> LaneCounts {
        let state = lock(&self.state);
        LaneCounts {
            pending: state.queue.pending_len(),
            lanes: state.queue.lane_count(),
            in_flight: state.in_flight,
        }
    }

    /// Wakes the dispatch loop.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sleeps until woken. `notify_one` keeps a permit when nobody waits, so
    /// a wake-up between the caller's last look and this await is not lost.
    pub(super) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// A future that completes when the queue next becomes empty; created
    /// before looking at the queue, so that an emptying in between counts.
    pub(super) fn drained(&self) -> Notified<'_> {
        self.drained.notified()
    }

    /// The part's invariants: the queue's own, its lanes in flight counted
    /// here, and both counts within their bounds.
    pub(super) fn check(&self) -> Result<(), String> {
        let state = lock(&self.state);
        let lanes_in_flight = state.queue.check()?;
        if lanes_in_flight != state.in_flight + state.parked {
            return Err(format!(
                "{} lanes counted in flight and {} parked, {lanes_in_flight} in the queue",
                state.in_flight, state.parked
            ));
        }
        if state.parked > self.in_flight_max {
            return Err(format!(
                "{} lanes parked > lanes_in_flight_max {}",
                state.parked, self.in_flight_max
            ));
        }
        if state.in_flight > self.in_flight_max {
            return Err(format!(
                "{} lanes in flight > lanes_in_flight_max {}",
                state.in_flight, self.in_flight_max
            ));
        }
        if state.dispatched_past_limit > 0 {
            return Err(format!(
                "{} dispatches took lanes in flight past the concurrency limit",
                state.dispatched_past_limit
            ));
        }
        Ok(())
    }
}
