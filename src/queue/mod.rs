//! Per-document lanes: the in-process queue.
//!
//! Plain synchronous bookkeeping, free of IO and time, so the dispatcher can
//! drive it under one lock and tests can drive it directly.
//!
//! Invariants:
//! - inside a lane, items leave in the order they arrived;
//! - a lane is handed out to at most one batch at a time (`in_flight`), so two
//!   writes for one key are never dispatched together;
//! - a lane is in `ready` exactly when it has waiting items and is not in flight;
//! - `pending_len` counts items admitted and not yet settled, and never exceeds
//!   `queue_len_max`; a lane never holds more than `lane_len_max` waiting items.

use crate::model::DocKey;
use std::collections::{HashMap, VecDeque};

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
    waiting: VecDeque<T>,
    in_flight: bool,
}

pub struct Queue<T> {
    limits: QueueLimits,
    lanes: HashMap<DocKey, Lane<T>>,
    /// Lanes with waiting items and no batch in flight, in the order they became
    /// ready: the fairness the dispatcher starts from.
    ready: VecDeque<DocKey>,
    pending_len: usize,
}

impl<T> Queue<T> {
    pub fn new(limits: QueueLimits) -> Self {
        Queue {
            limits,
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            pending_len: 0,
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending_len
    }

    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn admit(&mut self, doc: &DocKey, item: T) -> Result<(), Refusal> {
        if self.pending_len >= self.limits.queue_len_max {
            return Err(Refusal::QueueFull);
        }
        let lane = self.lanes.entry(doc.clone()).or_insert_with(|| Lane {
            waiting: VecDeque::new(),
            in_flight: false,
        });
        if lane.waiting.len() >= self.limits.lane_len_max {
            return Err(Refusal::LaneFull);
        }
        let became_ready = lane.waiting.is_empty() && !lane.in_flight;
        lane.waiting.push_back(item);
        self.pending_len += 1;
        if became_ready {
            self.ready.push_back(doc.clone());
        }
        Ok(())
    }

    /// Takes the next ready lane's oldest items (up to `batch_len_max`) and
    /// marks the lane in flight until [`Queue::finish`].
    pub fn take_ready(&mut self) -> Option<(DocKey, Vec<T>)> {
        let doc = self.ready.pop_front()?;
        let lane = self
            .lanes
            .get_mut(&doc)
            .expect("invariant: a ready lane exists");
        debug_assert!(!lane.in_flight, "invariant: a ready lane is not in flight");
        let n = lane.waiting.len().min(self.limits.batch_len_max);
        let batch: Vec<T> = lane.waiting.drain(..n).collect();
        lane.in_flight = true;
        Some((doc, batch))
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
        if lane.waiting.is_empty() {
            self.lanes.remove(doc);
        } else {
            self.ready.push_back(doc.clone());
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
            q.admit(&a, i).expect("room");
        }
        q.admit(&b, 10).expect("room");
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
        assert_eq!((q.pending_len(), q.lane_count(), q.ready_len()), (0, 0, 0));
    }

    #[test]
    fn bounds_refuse_instead_of_growing() {
        let mut q = Queue::new(limits());
        let a = DocKey::new("c", "a");
        for i in 0..3 {
            q.admit(&a, i).expect("room");
        }
        assert_eq!(q.admit(&a, 3), Err(Refusal::LaneFull));
        q.admit(&DocKey::new("c", "b"), 0).expect("room");
        q.admit(&DocKey::new("c", "c"), 0).expect("room");
        assert_eq!(q.admit(&DocKey::new("c", "d"), 0), Err(Refusal::QueueFull));
        assert_eq!(q.pending_len(), 5);
    }
}
