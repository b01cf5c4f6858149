//! The lanes' part: the mutation queue, the count of lanes in flight and
//! parked, the write leases' holds on lanes, and the two notifications
//! around them. Its lock is private to
//! this module and no method calls out while holding it, except to the
//! closures `take` and `admit_with` are given, which see only the queue or
//! a count: so the lanes' lock is always a leaf.

use super::{LaneEntry, lock};
use crate::model::DocKey;
use crate::queue::{Full, MutationQueue};
use sluice_core::invariant;
use std::collections::{HashMap, VecDeque};
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

/// A write lease's hold on a document's lane: until the holder's mutation
/// carrying `token` arrives or the lease ends, other mutations of the
/// document wait here, beside the queue, in the order they came.
pub(super) struct Hold {
    pub(super) token: String,
    pub(super) client: String,
    /// When the lease ends on its own (ms on the engine's clock).
    pub(super) until_ms: i64,
    /// The forecast that earned the lease.
    pub(super) p: f64,
    deferred: VecDeque<(LaneEntry, i64)>,
    /// Mutations held back in all: the lease saved its holder from them.
    held_back: usize,
}

impl Hold {
    pub(super) fn new(token: String, client: String, until_ms: i64, p: f64) -> Hold {
        Hold {
            token,
            client,
            until_ms,
            p,
            deferred: VecDeque::new(),
            held_back: 0,
        }
    }
}

/// Why a hold was not taken.
pub(super) enum NotHeld {
    /// Another lease holds the document: its holder, token and end.
    Held {
        client: String,
        token: String,
        until_ms: i64,
    },
    /// As many documents are held as may be.
    Full,
}

/// How a hold ended.
#[derive(Clone, Copy, Debug)]
pub(super) struct HoldEnd {
    pub(super) p: f64,
    /// Mutations of others it held back.
    pub(super) held_back: usize,
    /// Its holder's mutation arrived (else it expired or was released).
    pub(super) used: bool,
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

/// The queue as admission sees it: a held lane's mutations wait in its
/// hold, and what waits in holds counts against the queue's bounds.
pub(super) struct Intake<'a> {
    state: &'a mut State,
    /// Holds the admissions ended (their holder's mutation arrived).
    pub(super) ended: Vec<HoldEnd>,
}

impl Intake<'_> {
    /// Whether `extra` more mutations fit, counting those held back.
    pub(super) fn has_room(&self, extra: usize) -> bool {
        self.state.queue.has_room(self.state.deferred + extra)
    }

    /// How many more mutations the document's lane takes, counting those
    /// its hold keeps back.
    pub(super) fn lane_room(&self, doc: &DocKey) -> usize {
        let held = self.state.holds.get(doc).map_or(0, |h| h.deferred.len());
        self.state.queue.lane_room(doc).saturating_sub(held)
    }

    /// Queues the mutation, or keeps it in its lane's hold when a lease
    /// holds the lane and it is not the holder's; the holder's mutation
    /// ends the hold, and what the hold kept back follows it in order.
    pub(super) fn admit(&mut self, doc: &DocKey, entry: LaneEntry, rank: i64) -> Result<(), Full> {
        if !self.has_room(1) {
            return Err(Full::QueueFull);
        }
        if self.lane_room(doc) == 0 {
            return Err(Full::LaneFull);
        }
        let state = &mut *self.state;
        let Some(hold) = state.holds.get_mut(doc) else {
            return state.queue.admit(doc, entry, rank);
        };
        if entry.mutation.lease.as_deref() != Some(hold.token.as_str()) {
            hold.deferred.push_back((entry, rank));
            hold.held_back += 1;
            state.deferred += 1;
            return Ok(());
        }
        state.queue.admit(doc, entry, rank)?;
        if let Some(end) = state.unhold(doc, None, true) {
            self.ended.push(end);
        }
        Ok(())
    }
}

struct State {
    queue: Box<dyn MutationQueue<LaneEntry>>,
    /// Lanes taken from the queue and not finished, less the parked ones:
    /// what the concurrency limit and the load gate count.
    in_flight: usize,
    /// Lanes that gave their in-flight slot back to wait on a custom
    /// handler (at most `in_flight_max`; see `lane::park`).
    parked: usize,
    /// Documents held by a write lease (at most `holds_max`), and the
    /// mutations their holds keep back, in all.
    holds: HashMap<DocKey, Hold>,
    deferred: usize,
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
                holds: HashMap::new(),
                deferred: 0,
                dispatched_past_limit: 0,
            }),
            wake: Notify::new(),
            drained: Notify::new(),
            in_flight_max,
        }
    }

    /// Queues one mutation in its document's lane, or in the lane's hold
    /// (the dispatch loop is not woken: the caller does that once it has
    /// handed the mutation over). Returns the hold it ended, if any.
    pub(super) fn admit(
        &self,
        doc: &DocKey,
        entry: LaneEntry,
        rank: i64,
    ) -> Result<Option<HoldEnd>, Full> {
        let (admitted, mut ended) = self.admit_with(|door| door.admit(doc, entry, rank));
        admitted.map(|()| ended.pop())
    }

    /// Runs `f` on the queue's door under the lock, for a batch that is
    /// admitted whole or not at all; returns its result and the holds it
    /// ended.
    pub(super) fn admit_with<R>(&self, f: impl FnOnce(&mut Intake<'_>) -> R) -> (R, Vec<HoldEnd>) {
        let mut state = lock(&self.state);
        let mut door = Intake {
            state: &mut state,
            ended: Vec::new(),
        };
        let r = f(&mut door);
        (r, door.ended)
    }

    /// Holds the document's lane for a write lease, unless another lease
    /// holds it or `holds_max` documents are held.
    pub(super) fn hold(&self, doc: &DocKey, hold: Hold, holds_max: usize) -> Result<(), NotHeld> {
        let mut state = lock(&self.state);
        if let Some(h) = state.holds.get(doc) {
            return Err(NotHeld::Held {
                client: h.client.clone(),
                token: h.token.clone(),
                until_ms: h.until_ms,
            });
        }
        if state.holds.len() >= holds_max {
            return Err(NotHeld::Full);
        }
        state.holds.insert(doc.clone(), hold);
        Ok(())
    }

    /// Ends the lease `token`'s hold on the document, if it still holds it:
    /// what it kept back joins the lane, in order.
    pub(super) fn unhold(&self, doc: &DocKey, token: &str) -> Option<HoldEnd> {
        let end = lock(&self.state).unhold(doc, Some(token), false);
        if end.is_some() {
            self.wake.notify_one();
        }
        end
    }

    /// Ends every hold (at shutdown, so that the queue can drain).
    pub(super) fn unhold_all(&self) -> Vec<HoldEnd> {
        let mut state = lock(&self.state);
        let docs: Vec<DocKey> = state.holds.keys().cloned().collect();
        let ended = docs
            .iter()
            .filter_map(|doc| state.unhold(doc, None, false))
            .collect();
        drop(state);
        self.wake.notify_one();
        ended
    }

    /// Documents held by a lease now, and the mutations their holds keep back.
    pub(super) fn held(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.holds.len(), state.deferred)
    }

    /// Mutations waiting in the document's lane, or held back by its lease.
    pub(super) fn waiting_len(&self, doc: &DocKey) -> usize {
        let state = lock(&self.state);
        let held = state.holds.get(doc).map_or(0, |h| h.deferred.len());
        state.queue.waiting_len(doc) + held
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
            if state.queue.pending_len() == 0 && state.deferred == 0 {
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
            pending: state.queue.pending_len() + state.deferred,
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
        let deferred: usize = state.holds.values().map(|h| h.deferred.len()).sum();
        if deferred != state.deferred {
            return Err(format!(
                "{} mutations counted held back, {deferred} in the holds",
                state.deferred
            ));
        }
        if !state.queue.has_room(state.deferred) {
            return Err("queued and held-back mutations exceed queue_len_max".into());
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

impl State {
    /// Removes the document's hold (only when it is lease `token`'s, if
    /// given) and queues what it kept back, in order: room for them was
    /// counted when they were kept.
    fn unhold(&mut self, doc: &DocKey, token: Option<&str>, used: bool) -> Option<HoldEnd> {
        if token.is_some_and(|t| self.holds.get(doc).is_none_or(|h| h.token != t)) {
            return None;
        }
        let hold = self.holds.remove(doc)?;
        self.deferred -= hold.deferred.len();
        for (entry, rank) in hold.deferred {
            let fits = self.queue.admit(doc, entry, rank);
            invariant::hold(fits.is_ok(), "room for a hold's mutations was kept");
        }
        Some(HoldEnd {
            p: hold.p,
            held_back: hold.held_back,
            used,
        })
    }
}
