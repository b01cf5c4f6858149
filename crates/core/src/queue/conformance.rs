//! The contract of [`MutationQueue`] and [`Reservations`], as functions any
//! implementation runs unchanged: the in-process ones here, a shared one
//! (Redis) in its own crate with the `conformance` feature. Each panics,
//! naming the broken rule, when the implementation breaks one.

use super::{Full, MutationQueue, Pending, QueueLimits, Reservations, Reserve};
use crate::model::DocKey;

/// Makes an empty queue with these limits.
pub type MakeQueue<'a> = &'a dyn Fn(QueueLimits) -> Box<dyn MutationQueue<u64>>;
/// Makes empty reservations; waiters and answers are numbers.
pub type MakeReservations<'a> = &'a dyn Fn() -> Box<dyn Reservations<u64, u64>>;

/// Every rule of [`MutationQueue`].
pub fn queue_suite(make: MakeQueue<'_>) {
    one_batch_per_lane_in_arrival_order(make);
    bounds_refuse_and_change_nothing(make);
    the_best_rank_goes_first_and_a_lane_keeps_its_order(make);
    a_lane_admitted_while_in_flight_waits_for_finish(make);
}

/// Every rule of [`Reservations`].
pub fn reservation_suite(make: MakeReservations<'_>) {
    an_id_is_held_by_one_fingerprint_until_released(make);
    release_hands_back_every_waiter_once(make);
    pending_lists_a_clients_own_oldest_first(make);
}

fn doc(key: &str) -> DocKey {
    DocKey::new("c", key)
}

fn checked(q: &dyn MutationQueue<u64>) -> usize {
    match q.check() {
        Ok(in_flight) => in_flight,
        Err(broken) => panic!("the queue's own check fails: {broken}"),
    }
}

fn one_batch_per_lane_in_arrival_order(make: MakeQueue<'_>) {
    let mut q = make(QueueLimits {
        queue_len_max: 5,
        lane_len_max: 3,
        batch_len_max: 2,
    });
    for i in 0..3 {
        assert_eq!(q.admit(&doc("a"), i, 0), Ok(()), "room for a{i}");
    }
    assert_eq!(q.admit(&doc("b"), 10, 1), Ok(()), "room for b");
    assert_eq!(
        q.take_ready(),
        Some((doc("a"), vec![0, 1])),
        "a's oldest two"
    );
    // a is in flight: only b is ready, though a still has an item.
    assert_eq!(
        q.take_ready(),
        Some((doc("b"), vec![10])),
        "b while a flies"
    );
    assert_eq!(q.take_ready(), None, "a lane is in flight once");
    assert_eq!(checked(q.as_ref()), 2, "two lanes in flight");
    q.finish(&doc("a"), 2);
    assert_eq!(
        q.take_ready(),
        Some((doc("a"), vec![2])),
        "a again after finish"
    );
    q.finish(&doc("a"), 1);
    q.finish(&doc("b"), 1);
    assert_eq!((q.pending_len(), q.lane_count()), (0, 0), "all finished");
    assert_eq!(q.take_ready(), None, "nothing left");
    assert_eq!(checked(q.as_ref()), 0);
}

fn bounds_refuse_and_change_nothing(make: MakeQueue<'_>) {
    let mut q = make(QueueLimits {
        queue_len_max: 5,
        lane_len_max: 3,
        batch_len_max: 2,
    });
    for i in 0..3 {
        assert_eq!(q.admit(&doc("a"), i, 0), Ok(()));
    }
    assert_eq!(q.lane_room(&doc("a")), 0);
    assert_eq!(q.admit(&doc("a"), 3, 0), Err(Full::LaneFull));
    assert_eq!(q.waiting_len(&doc("a")), 3, "a refused item is not queued");
    assert_eq!(q.admit(&doc("b"), 0, 0), Ok(()));
    assert_eq!(q.admit(&doc("c"), 0, 0), Ok(()));
    assert!(!q.has_room(1), "the queue is full");
    assert_eq!(q.admit(&doc("d"), 0, 0), Err(Full::QueueFull));
    assert_eq!(q.pending_len(), 5);
    assert_eq!(q.lane_count(), 3, "a refused lane is not kept");
    assert_eq!(checked(q.as_ref()), 0);
}

fn the_best_rank_goes_first_and_a_lane_keeps_its_order(make: MakeQueue<'_>) {
    let mut q = make(QueueLimits {
        queue_len_max: 100,
        lane_len_max: 10,
        batch_len_max: 1,
    });
    assert_eq!(q.admit(&doc("a"), 1, 10), Ok(()));
    assert_eq!(q.admit(&doc("b"), 2, 20), Ok(()));
    assert_eq!(q.admit(&doc("c"), 3, 30), Ok(()));
    // A likely conflict arriving later on c ranks c's lane first, but c's
    // first item still goes before it.
    assert_eq!(q.admit(&doc("c"), 4, 5), Ok(()));
    assert_eq!(
        q.take_ready(),
        Some((doc("c"), vec![3])),
        "c by its best rank"
    );
    assert_eq!(q.take_ready(), Some((doc("a"), vec![1])));
    q.finish(&doc("c"), 1);
    assert_eq!(q.take_ready(), Some((doc("c"), vec![4])));
    assert_eq!(q.take_ready(), Some((doc("b"), vec![2])));
    assert_eq!(q.take_ready(), None);
}

fn a_lane_admitted_while_in_flight_waits_for_finish(make: MakeQueue<'_>) {
    let mut q = make(QueueLimits {
        queue_len_max: 10,
        lane_len_max: 10,
        batch_len_max: 10,
    });
    assert_eq!(q.admit(&doc("a"), 1, 0), Ok(()));
    assert_eq!(q.take_ready(), Some((doc("a"), vec![1])));
    assert_eq!(q.admit(&doc("a"), 2, -100), Ok(()));
    assert_eq!(q.waiting_len(&doc("a")), 1);
    assert_eq!(q.take_ready(), None, "a is in flight, whatever its rank");
    assert_eq!(q.pending_len(), 2, "a batch in flight is pending");
    q.finish(&doc("a"), 1);
    assert_eq!(q.pending_len(), 1);
    assert_eq!(q.take_ready(), Some((doc("a"), vec![2])));
    q.finish(&doc("a"), 1);
    assert_eq!((q.pending_len(), q.lane_count()), (0, 0));
}

fn an_id_is_held_by_one_fingerprint_until_released(make: MakeReservations<'_>) {
    let mut r = make();
    assert_eq!(r.reserve("ann", "m1", 7), Reserve::Fresh);
    assert_eq!(r.reserve("ann", "m1", 7), Reserve::Held { queued: None });
    assert_eq!(
        r.reserve("ann", "m1", 8),
        Reserve::Reused,
        "another mutation"
    );
    assert_eq!(
        r.reserve("bob", "m1", 8),
        Reserve::Fresh,
        "ids are per client"
    );
    r.mark_queued("ann", "m1", 202);
    assert_eq!(
        r.reserve("ann", "m1", 7),
        Reserve::Held { queued: Some(202) }
    );
    assert_eq!(r.len(), 2);
    assert_eq!(r.reserve("ann", "m2", 9), Reserve::Fresh);
    assert_eq!(
        (r.held_by("ann"), r.held_by("bob"), r.held_by("cy")),
        (2, 1, 0),
        "counted per client, a resend and a reuse not again"
    );
    r.release("ann", "m2");
    r.release("ann", "m2");
    assert_eq!(r.held_by("ann"), 1, "a second release frees nothing more");
    assert_eq!(r.release("ann", "m1"), Vec::<u64>::new());
    assert_eq!(r.held_by("ann"), 0);
    assert_eq!(
        r.reserve("ann", "m1", 8),
        Reserve::Fresh,
        "free once released"
    );
    r.release("ann", "m1");
    r.release("bob", "m1");
    assert!(r.is_empty());
}

fn release_hands_back_every_waiter_once(make: MakeReservations<'_>) {
    let mut r = make();
    assert_eq!(r.wait("ann", "m1", 1), Err(1), "nothing held to wait on");
    assert_eq!(r.reserve("ann", "m1", 7), Reserve::Fresh);
    assert_eq!(r.wait("ann", "m1", 1), Ok(()));
    assert_eq!(r.wait("ann", "m1", 2), Ok(()));
    let mut waiters = r.release("ann", "m1");
    waiters.sort_unstable();
    assert_eq!(waiters, vec![1, 2]);
    assert_eq!(r.release("ann", "m1"), Vec::<u64>::new(), "once");
}

fn pending_lists_a_clients_own_oldest_first(make: MakeReservations<'_>) {
    let mut r = make();
    let pending = |id: &str, received_ms: i64| Pending {
        id: id.to_owned(),
        doc: doc(id),
        score: 0.5,
        received_ms,
    };
    for (client, id, at) in [
        ("ann", "b", 20),
        ("ann", "a", 20),
        ("ann", "c", 10),
        ("bob", "z", 1),
    ] {
        assert_eq!(r.reserve(client, id, 1), Reserve::Fresh);
        r.mark_pending(client, pending(id, at));
    }
    assert_eq!(r.reserve("ann", "unqueued", 1), Reserve::Fresh);
    let ids = |list: Vec<Pending>| list.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(
        ids(r.pending("ann", 10)),
        ["c", "a", "b"],
        "oldest first, ties by id"
    );
    assert_eq!(ids(r.pending("ann", 2)), ["c", "a"], "at most the limit");
    assert_eq!(ids(r.pending("bob", 10)), ["z"], "only the client's own");
    r.release("ann", "c");
    assert_eq!(
        ids(r.pending("ann", 10)),
        ["a", "b"],
        "a released one is gone"
    );
    assert_eq!(ids(r.pending("nobody", 10)), Vec::<String>::new());
}
