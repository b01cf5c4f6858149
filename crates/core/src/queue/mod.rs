//! Per-document lanes: the in-process queue.
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

use crate::model::DocKey;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Mutations admitted and not yet decided, across all lanes.
    pub queue_len_max: usize,
    /// Mutations waiting in one lane.
    pub lane_len_max: usize,
    /// Mutations of one lane decided together in one read-merge-write.
    pub batch_len_max: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    QueueFull,
    LaneFull,
}

struct Lane<T> {
    waiting: VecDeque<(T, i64)>,
    in_flight: bool,
    /// The sequence number and rank of the lane's live entry in `ready`.
    ready_entry: Option<(u64, i64)>,
}

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

    pub fn pending_len(&self) -> usize {
        self.pending_len
    }

    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// Whether `extra` more items fit in the queue as a whole.
    pub fn has_room(&self, extra: usize) -> bool {
        self.pending_len + extra <= self.limits.queue_len_max
    }

    /// How many more items the lane of `doc` takes.
    pub fn lane_room(&self, doc: &DocKey) -> usize {
        self.limits
            .lane_len_max
            .saturating_sub(self.waiting_len(doc))
    }

    /// Items waiting in the lane of `doc` (not counting a batch in flight).
    pub fn waiting_len(&self, doc: &DocKey) -> usize {
        self.lanes.get(doc).map_or(0, |lane| lane.waiting.len())
    }

    /// Checks the queue's invariants in O(lanes) and returns how many lanes
    /// are in flight: the simulation calls it after every event.
    pub fn check(&self) -> Result<usize, String> {
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

    fn push_ready(&mut self, doc: &DocKey, rank: i64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(lane) = self.lanes.get_mut(doc) {
            lane.ready_entry = Some((seq, rank));
        }
        self.ready.push(Reverse((rank, seq, doc.clone())));
    }

    /// Queues `item` in the lane of `doc` with `rank` (smaller goes sooner).
    pub fn admit(&mut self, doc: &DocKey, item: T, rank: i64) -> Result<(), Refusal> {
        if self.pending_len >= self.limits.queue_len_max {
            return Err(Refusal::QueueFull);
        }
        let lane = self.lanes.entry(doc.clone()).or_insert_with(|| Lane {
            waiting: VecDeque::new(),
            in_flight: false,
            ready_entry: None,
        });
        if lane.waiting.len() >= self.limits.lane_len_max {
            return Err(Refusal::LaneFull);
        }
        lane.waiting.push_back((item, rank));
        self.pending_len += 1;
        debug_assert!(
            self.pending_len <= self.limits.queue_len_max,
            "invariant: pending_len ≤ queue_len_max"
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
    pub fn take_ready(&mut self) -> Option<(DocKey, Vec<T>)> {
        while let Some(Reverse((_, seq, doc))) = self.ready.pop() {
            let Some(lane) = self.lanes.get_mut(&doc) else {
                continue;
            };
            if lane.ready_entry.map(|(live, _)| live) != Some(seq) {
                continue; // superseded by a better entry, or the lane is in flight
            }
            debug_assert!(!lane.in_flight, "invariant: a ready lane is not in flight");
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
    pub fn finish(&mut self, doc: &DocKey, settled: usize) {
        debug_assert!(
            self.pending_len >= settled,
            "invariant: settled items were pending"
        );
        self.pending_len -= settled;
        let Some(lane) = self.lanes.get_mut(doc) else {
            debug_assert!(false, "invariant: a finished lane exists");
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

    fn limits() -> QueueLimits {
        QueueLimits {
            queue_len_max: 5,
            lane_len_max: 3,
            batch_len_max: 2,
        }
    }

    #[test]
    fn one_batch_per_lane_in_arrival_order() {
        let mut q = Queue::new(limits());
        let a = DocKey::new("c", "a");
        let b = DocKey::new("c", "b");
        for i in 0..3 {
            q.admit(&a, i, 0).expect("room");
        }
        q.admit(&b, 10, 1).expect("room");
        let (doc, batch) = q.take_ready().expect("a is ready");
        assert_eq!((doc.clone(), batch), (a.clone(), vec![0, 1]));
        // a is in flight: only b is ready, even though a still has an item.
        let (doc_b, batch_b) = q.take_ready().expect("b is ready");
        assert_eq!((doc_b.clone(), batch_b), (b.clone(), vec![10]));
        assert!(q.take_ready().is_none());
        q.finish(&a, 2);
        assert_eq!(q.take_ready(), Some((a.clone(), vec![2])));
        q.finish(&a, 1);
        q.finish(&b, 1);
        assert_eq!((q.pending_len(), q.lane_count()), (0, 0));
        assert!(q.take_ready().is_none());
    }

    #[test]
    fn bounds_refuse_instead_of_growing() {
        let mut q = Queue::new(limits());
        let a = DocKey::new("c", "a");
        for i in 0..3 {
            q.admit(&a, i, 0).expect("room");
        }
        assert_eq!(q.admit(&a, 3, 0), Err(Refusal::LaneFull));
        q.admit(&DocKey::new("c", "b"), 0, 0).expect("room");
        q.admit(&DocKey::new("c", "c"), 0, 0).expect("room");
        assert_eq!(
            q.admit(&DocKey::new("c", "d"), 0, 0),
            Err(Refusal::QueueFull)
        );
        assert_eq!(q.pending_len(), 5);
    }

    #[test]
    fn the_best_rank_goes_first_and_a_lane_keeps_its_order() {
        let mut q = Queue::new(QueueLimits {
            queue_len_max: 100,
            lane_len_max: 10,
            batch_len_max: 1,
        });
        let (a, b, c) = (
            DocKey::new("c", "a"),
            DocKey::new("c", "b"),
            DocKey::new("c", "c"),
        );
        q.admit(&a, "a1", 10).expect("room");
        q.admit(&b, "b1", 20).expect("room");
        q.admit(&c, "c1", 30).expect("room");
        // A likely conflict arriving later on c ranks c's lane first, but c1 still goes before c2.
        q.admit(&c, "c2", 5).expect("room");
        assert_eq!(q.take_ready(), Some((c.clone(), vec!["c1"])));
        assert_eq!(q.take_ready(), Some((a.clone(), vec!["a1"])));
        q.finish(&c, 1);
        assert_eq!(q.take_ready(), Some((c.clone(), vec!["c2"])));
        assert_eq!(q.take_ready(), Some((b.clone(), vec!["b1"])));
        assert_eq!(q.take_ready(), None);
    }
}
