//! Per-document lanes and the reservations of `(client, id)`: the seams
//! ([`MutationQueue`], [`Reservations`]), their in-process implementations
//! ([`Queue`], [`LocalReservations`]) and, with the `conformance` feature,
//! the suite any other implementation runs unchanged.
//!
//! Plain synchronous bookkeeping, free of IO and time, so the dispatcher can
//! drive it under one lock and tests can drive it directly.
//!
//! Across lanes, the next lane is the one with the smallest *rank*, which the
//! caller computes as arrival time minus a bonus for a likely conflict: a
//! lane's priority grows with its score and with waiting time (aging), so a
//! likely conflict goes before its base grows staler, and no lane waits more
//! than the largest bonus behind later arrivals. A lane's rank is the best of
//! its waiting items'.
//!
//! Invariants:
//! - inside a lane, items leave in the order they arrived;
//! - a lane is handed out to at most one batch at a time (`in_flight`), so two
//!   writes for one key are never dispatched together;
//! - a lane has exactly one live entry in `ready` when it has waiting items and
//!   is not in flight, and none otherwise (stale heap entries are skipped);
//! - `pending_len` counts items admitted and not yet settled, and never exceeds
//!   `queue_len_max`; a lane never holds more than `lane_len_max` waiting items.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod reserve;

pub use reserve::{LocalReservations, Pending, Reservations, Reserve};

use crate::invariant;
use crate::model::DocKey;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// Where admitted mutations wait for their lane's turn. The contract, which
/// `conformance::queue_suite` checks of every implementation:
/// - inside a lane, items leave in the order they were admitted;
/// - a lane is handed out to one batch at a time, until [`finish`];
/// - across lanes, the ready lane with the smallest rank goes first (a
///   lane's rank is the best of its waiting items'), ties to the earlier;
/// - at most `queue_len_max` items admitted and not finished, at most
///   `lane_len_max` waiting in a lane, at most `batch_len_max` in a batch;
///   past a bound, `admit` refuses and changes nothing.
///
/// [`finish`]: MutationQueue::finish
pub trait MutationQueue<T>: Send {
    /// Queues `item` in the lane of `doc` with `rank` (smaller goes sooner).
    fn admit(&mut self, doc: &DocKey, item: T, rank: i64) -> Result<(), Full>;
    /// Takes the best-ranked ready lane's oldest items (up to
    /// `batch_len_max`) and marks the lane in flight until `finish`.
    fn take_ready(&mut self) -> Option<(DocKey, Vec<T>)>;
    /// Completes the lane's batch of `settled` items: they leave the pending
    /// count, and the lane is ready again if more arrived meanwhile.
    fn finish(&mut self, doc: &DocKey, settled: usize);
    /// Items admitted and not finished, across lanes.
    fn pending_len(&self) -> usize;
    /// Lanes with waiting items or a batch in flight.
    fn lane_count(&self) -> usize;
    /// Whether `extra` more items fit in the queue as a whole.
    fn has_room(&self, extra: usize) -> bool;
    /// How many more items the lane of `doc` takes.
    fn lane_room(&self, doc: &DocKey) -> usize;
    /// Items waiting in the lane of `doc` (not counting a batch in flight).
    fn waiting_len(&self, doc: &DocKey) -> usize;
    /// Checks the implementation's invariants and returns how many lanes are
    /// in flight.
    fn check(&self) -> Result<usize, String>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Mutations admitted and not yet decided, across all lanes.
    pub queue_len_max: usize,
    /// Mutations waiting in one lane.
    pub lane_len_max: usize,
    /// Mutations of one lane decided together in one read-merge-write.
    pub batch_len_max: usize,
}

/// Which bound refused an admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    QueueFull,
    LaneFull,
}

struct Lane<T> {
    waiting: VecDeque<(T, i64)>,
    in_flight: bool,
    /// The sequence number and rank of the lane's live entry in `ready`.
    ready_entry: Option<(u64, i64)>,
}

/// The in-process queue: lanes in a map, ready lanes in a heap.
pub struct Queue<T> {
    limits: QueueLimits,
    lanes: HashMap<DocKey, Lane<T>>,
    /// Lanes ready to dispatch, smallest rank first; ties go to the earlier entry.
    ready: BinaryHeap<Reverse<(i64, u64, DocKey)>>,
    next_seq: u64,
    pending_len: usize,
}

impl<T> Queue<T> {
    pub fn new(limits: QueueLimits) -> Self {
        Queue {
            limits,
            lanes: HashMap::new(),
            ready: BinaryHeap::new(),
            next_seq: 0,
            pending_len: 0,
        }
    }

    fn push_ready(&mut self, doc: &DocKey, rank: i64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(lane) = self.lanes.get_mut(doc) {
            lane.ready_entry = Some((seq, rank));
        }
        self.ready.push(Reverse((rank, seq, doc.clone())));
    }
}

impl<T: Send> MutationQueue<T> for Queue<T> {
    fn pending_len(&self) -> usize {
        self.pending_len
    }

    fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// Whether `extra` more items fit in the queue as a whole.
    fn has_room(&self, extra: usize) -> bool {
        self.pending_len + extra <= self.limits.queue_len_max
    }

    /// How many more items the lane of `doc` takes.
    fn lane_room(&self, doc: &DocKey) -> usize {
        self.limits
            .lane_len_max
            .saturating_sub(self.waiting_len(doc))
    }

    /// Items waiting in the lane of `doc` (not counting a batch in flight).
    fn waiting_len(&self, doc: &DocKey) -> usize {
        self.lanes.get(doc).map_or(0, |lane| lane.waiting.len())
    }

    /// Checks the queue's invariants in O(lanes) and returns how many lanes
    /// are in flight: the simulation calls it after every event.
    fn check(&self) -> Result<usize, String> {
        let (mut waiting, mut in_flight) = (0, 0);
        for (doc, lane) in &self.lanes {
            if lane.waiting.len() > self.limits.lane_len_max {
                return Err(format!(
                    "lane {doc} holds {} > lane_len_max {}",
                    lane.waiting.len(),
                    self.limits.lane_len_max
                ));
            }
            waiting += lane.waiting.len();
            if lane.in_flight {
                in_flight += 1;
                if lane.ready_entry.is_some() {
                    return Err(format!("lane {doc} is in flight and ready"));
                }
            } else if lane.waiting.is_empty() {
                return Err(format!("lane {doc} is idle and empty but kept"));
            } else if lane.ready_entry.is_none() {
                return Err(format!("lane {doc} has waiting items but is not ready"));
            }
        }
        if self.pending_len > self.limits.queue_len_max {
            return Err(format!(
                "{} pending > queue_len_max {}",
                self.pending_len, self.limits.queue_len_max
            ));
        }
        if waiting > self.pending_len {
            return Err(format!("{waiting} waiting > {} pending", self.pending_len));
        }
        Ok(in_flight)
    }

    /// Queues `item` in the lane of `doc` with `rank` (smaller goes sooner).
    fn admit(&mut self, doc: &DocKey, item: T, rank: i64) -> Result<(), Full> {
        if self.pending_len >= self.limits.queue_len_max {
            return Err(Full::QueueFull);
        }
        let lane = self.lanes.entry(doc.clone()).or_insert_with(|| Lane {
            waiting: VecDeque::new(),
            in_flight: false,
            ready_entry: None,
        });
        if lane.waiting.len() >= self.limits.lane_len_max {
            return Err(Full::LaneFull);
        }
        lane.waiting.push_back((item, rank));
        self.pending_len += 1;
        invariant::hold(
            self.pending_len <= self.limits.queue_len_max,
            "pending_len ≤ queue_len_max after an admission",
        );
        let improves = match lane.ready_entry {
            _ if lane.in_flight => false,
            None => true,
            Some((_, live_rank)) => rank < live_rank,
        };
        if improves {
            self.push_ready(doc, rank);
        }
        Ok(())
    }

    /// Takes the best-ranked ready lane's oldest items (up to `batch_len_max`)
    /// and marks the lane in flight until [`Queue::finish`].
    fn take_ready(&mut self) -> Option<(DocKey, Vec<T>)> {
        while let Some(Reverse((_, seq, doc))) = self.ready.pop() {
            let Some(lane) = self.lanes.get_mut(&doc) else {
                continue;
            };
            if lane.ready_entry.map(|(live, _)| live) != Some(seq) {
                continue; // superseded by a better entry, or the lane is in flight
            }
            invariant::hold(!lane.in_flight, "a ready lane is not in flight");
            let n = lane.waiting.len().min(self.limits.batch_len_max);
            let batch: Vec<T> = lane.waiting.drain(..n).map(|(item, _)| item).collect();
            lane.in_flight = true;
            lane.ready_entry = None;
            return Some((doc, batch));
        }
        None
    }

    /// Ends the lane's batch of `settled` items: they leave the pending count,
    /// and the lane becomes ready again if more arrived meanwhile.
    fn finish(&mut self, doc: &DocKey, settled: usize) {
        invariant::hold(self.pending_len >= settled, "settled items were pending");
        self.pending_len -= settled;
        let Some(lane) = self.lanes.get_mut(doc) else {
            invariant::hold(false, "a finished lane exists");
            return;
        };
        lane.in_flight = false;
        match lane.waiting.iter().map(|(_, rank)| *rank).min() {
            None => {
                self.lanes.remove(doc);
            }
            Some(rank) => self.push_ready(doc, rank),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_process_queue_conforms() {
        conformance::queue_suite(&|limits| Box::new(Queue::<u64>::new(limits)));
    }

    #[test]
    fn the_in_process_reservations_conform() {
        conformance::reservation_suite(&|| Box::new(LocalReservations::<u64, u64>::default()));
    }
}
