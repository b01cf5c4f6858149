//! The contract of [`Coordinator`], as one function any implementation runs
//! unchanged (the reference in memory, Redis single and clustered). It
//! panics, naming the broken rule, when the implementation breaks one. Give
//! it a coordinator nothing else uses: it takes partitions 0 to 9 and
//! members named `m-…`.

use super::relay::{Entry, Relay};
use super::{ClusterError, Coordinator, Holder};
use std::time::Duration;

/// Leases that expire in the suite: short, so that it waits little, and
/// long enough that a slow machine renews in time.
const SHORT_MS: u64 = 400;
const LONG_MS: u64 = 30_000;

/// Every rule of [`Coordinator`].
pub async fn suite(c: &dyn Coordinator) {
    one_holder_at_a_time(c).await;
    epochs_only_grow_and_respect_the_floor(c).await;
    only_the_holder_of_an_epoch_renews_or_releases(c).await;
    an_expired_lease_goes_to_another_member(c).await;
    members_are_listed_while_alive(c).await;
    bad_requests_are_refused(c).await;
}

async fn past(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms + 150)).await;
}

fn holder(member: &str, epoch: u64) -> Option<Holder> {
    Some(Holder {
        member: member.to_string(),
        epoch,
    })
}

async fn one_holder_at_a_time(c: &dyn Coordinator) {
    assert_eq!(
        c.holder(0).await.expect("holder"),
        None,
        "a fresh partition has no holder"
    );
    let e = c.acquire(0, "m-a", 0, LONG_MS).await.expect("acquire");
    let e = e.expect("a free partition's lease is granted");
    assert_eq!(c.holder(0).await.expect("holder"), holder("m-a", e));
    assert_eq!(
        c.acquire(0, "m-b", 0, LONG_MS).await.expect("acquire"),
        None,
        "a held lease is not granted to another member"
    );
    assert_eq!(
        c.acquire(0, "m-a", 0, LONG_MS).await.expect("acquire"),
        Some(e),
        "the holder asking again keeps its epoch"
    );
    // Another partition is independent.
    assert!(
        c.acquire(1, "m-b", 0, LONG_MS)
            .await
            .expect("acquire")
            .is_some()
    );
    assert_eq!(c.holder(0).await.expect("holder"), holder("m-a", e));
}

async fn epochs_only_grow_and_respect_the_floor(c: &dyn Coordinator) {
    let mut last = 0;
    for member in ["m-a", "m-b", "m-a", "m-c"] {
        let e = c
            .acquire(2, member, 0, LONG_MS)
            .await
            .expect("acquire")
            .unwrap_or_else(|| panic!("{member} is granted the released partition"));
        assert!(e > last, "epoch {e} after {last}: epochs must grow");
        assert!(
            c.release(2, member, e).await.expect("release"),
            "the holder releases"
        );
        assert_eq!(
            c.holder(2).await.expect("holder"),
            None,
            "a released lease has no holder"
        );
        last = e;
    }
    let e = c
        .acquire(2, "m-a", last + 100, LONG_MS)
        .await
        .expect("acquire");
    assert_eq!(e, Some(last + 101), "a grant is above the floor asked for");
    assert!(c.release(2, "m-a", last + 101).await.expect("release"));
    let e = c.acquire(2, "m-b", 1, LONG_MS).await.expect("acquire");
    assert_eq!(
        e,
        Some(last + 102),
        "a low floor does not take the epoch back"
    );
}

async fn only_the_holder_of_an_epoch_renews_or_releases(c: &dyn Coordinator) {
    let e = c
        .acquire(3, "m-a", 0, LONG_MS)
        .await
        .expect("acquire")
        .expect("granted");
    assert!(
        !c.renew(3, "m-b", e, LONG_MS).await.expect("renew"),
        "another member renews"
    );
    assert!(
        !c.renew(3, "m-a", e + 1, LONG_MS).await.expect("renew"),
        "another epoch renews"
    );
    assert!(
        !c.release(3, "m-b", e).await.expect("release"),
        "another member releases"
    );
    assert!(
        !c.release(3, "m-a", e - 1).await.expect("release"),
        "an old epoch releases"
    );
    assert_eq!(c.holder(3).await.expect("holder"), holder("m-a", e));
    assert!(c.renew(3, "m-a", e, LONG_MS).await.expect("renew"));
    assert!(c.release(3, "m-a", e).await.expect("release"));
    assert!(
        !c.release(3, "m-a", e).await.expect("release"),
        "a lease is released once"
    );
    assert!(
        !c.renew(3, "m-a", e, LONG_MS).await.expect("renew"),
        "a released lease renews"
    );
}

async fn an_expired_lease_goes_to_another_member(c: &dyn Coordinator) {
    let e = c
        .acquire(4, "m-a", 0, SHORT_MS)
        .await
        .expect("acquire")
        .expect("granted");
    // Renewed, it outlives its first time-to-live.
    tokio::time::sleep(Duration::from_millis(SHORT_MS / 2)).await;
    assert!(c.renew(4, "m-a", e, SHORT_MS).await.expect("renew"));
    tokio::time::sleep(Duration::from_millis(SHORT_MS / 2 + 100)).await;
    assert_eq!(
        c.acquire(4, "m-b", 0, SHORT_MS).await.expect("acquire"),
        None,
        "a renewed lease is still held"
    );
    past(SHORT_MS).await;
    assert_eq!(
        c.holder(4).await.expect("holder"),
        None,
        "an expired lease has no holder"
    );
    assert!(
        !c.renew(4, "m-a", e, SHORT_MS).await.expect("renew"),
        "an expired lease renews"
    );
    let next = c.acquire(4, "m-b", 0, LONG_MS).await.expect("acquire");
    assert!(
        matches!(next, Some(n) if n > e),
        "the next holder's epoch {next:?} is above {e}"
    );
    assert!(
        !c.release(4, "m-a", e).await.expect("release"),
        "the former holder releases"
    );
}

async fn members_are_listed_while_alive(c: &dyn Coordinator) {
    c.heartbeat("m-b", "10.0.0.2:8080", LONG_MS)
        .await
        .expect("heartbeat");
    c.heartbeat("m-a", "10.0.0.1:8080", LONG_MS)
        .await
        .expect("heartbeat");
    c.heartbeat("m-c", "10.0.0.3:8080", SHORT_MS)
        .await
        .expect("heartbeat");
    let members = c.members().await.expect("members");
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m-a", "m-b", "m-c"], "members are listed by id");
    assert_eq!(members[0].address, "10.0.0.1:8080");
    assert!(
        members[0].last_seen_ms > 1_600_000_000_000,
        "last seen is epoch ms"
    );
    past(SHORT_MS).await;
    let ids: Vec<String> = c
        .members()
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        ids,
        ["m-a", "m-b"],
        "a member not heard from within its time-to-live is gone"
    );
    let before = c.members().await.expect("members")[0].last_seen_ms;
    c.heartbeat("m-a", "10.0.0.9:8080", LONG_MS)
        .await
        .expect("heartbeat");
    let again = c.members().await.expect("members");
    assert!(again[0].last_seen_ms >= before && again[0].address == "10.0.0.9:8080");
    c.leave("m-b").await.expect("leave");
    let ids: Vec<String> = c
        .members()
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["m-a"], "a member that leaves is gone at once");
}

async fn bad_requests_are_refused(c: &dyn Coordinator) {
    for member in ["", "two words", &"x".repeat(200)] {
        assert!(
            matches!(
                c.acquire(5, member, 0, LONG_MS).await,
                Err(ClusterError::Invalid(_))
            ),
            "member id {member:?} is refused"
        );
        assert!(matches!(
            c.heartbeat(member, "a:1", LONG_MS).await,
            Err(ClusterError::Invalid(_))
        ));
    }
    assert!(matches!(
        c.acquire(5, "m-a", 0, 0).await,
        Err(ClusterError::Invalid(_))
    ));
    assert_eq!(
        c.holder(5).await.expect("holder"),
        None,
        "a refused request grants nothing"
    );
}

/// Every rule of [`Relay`]. Give it a relay nothing else uses: it takes
/// partitions 20 and 21 and members named `r-…`.
pub async fn relay_suite(r: &dyn Relay) {
    a_stream_delivers_each_entry_once_in_order(r).await;
    unacknowledged_entries_go_to_whoever_claims_them(r).await;
    an_inbox_is_read_in_order_and_wakes_its_reader(r).await;
    a_queued_note_is_seen_until_removed_or_expired(r).await;
}

async fn a_queued_note_is_seen_until_removed_or_expired(r: &dyn Relay) {
    let long = Duration::from_secs(60);
    assert!(!r.is_queued("qc", "m1").await.expect("is_queued"));
    r.mark_queued("qc", "m1", long).await.expect("mark");
    assert!(r.is_queued("qc", "m1").await.expect("is_queued"));
    // Another client's id, and pairs that concatenate alike, are apart.
    assert!(!r.is_queued("qd", "m1").await.expect("is_queued"));
    assert!(!r.is_queued("q", "cm1").await.expect("is_queued"));
    r.mark_queued("{q}", "{x}", long).await.expect("braces");
    assert!(r.is_queued("{q}", "{x}").await.expect("is_queued"));
    r.unmark_queued("qc", "m1").await.expect("unmark");
    assert!(!r.is_queued("qc", "m1").await.expect("is_queued"));
    r.unmark_queued("qc", "m1").await.expect("unmarking twice");
    r.mark_queued("qc", "m2", Duration::from_millis(100))
        .await
        .expect("mark");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        !r.is_queued("qc", "m2").await.expect("is_queued"),
        "a note expires"
    );
}

/// A stream id (`ms-seq`) as numbers.
fn position(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn bodies(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.body.as_str()).collect()
}

async fn a_stream_delivers_each_entry_once_in_order(r: &dyn Relay) {
    assert_eq!(r.backlog(20).await.expect("backlog"), 0, "a fresh stream");
    assert!(
        r.take(20, "r-a", 10).await.expect("take").is_empty(),
        "an empty stream delivers nothing"
    );
    for body in ["one", "two", "three"] {
        r.push(20, body).await.expect("push");
    }
    r.push(21, "elsewhere").await.expect("push");
    assert_eq!(r.backlog(20).await.expect("backlog"), 3);
    let first = r.take(20, "r-a", 2).await.expect("take");
    assert_eq!(
        bodies(&first),
        ["one", "two"],
        "oldest first, at most count"
    );
    assert!(position(&first[0].id) < position(&first[1].id), "ids grow");
    let rest = r.take(20, "r-b", 10).await.expect("take");
    assert_eq!(bodies(&rest), ["three"], "each entry is delivered once");
    assert!(r.take(20, "r-a", 10).await.expect("take").is_empty());
    assert_eq!(
        r.backlog(20).await.expect("backlog"),
        3,
        "delivered is not acknowledged"
    );
    for e in first.iter().chain(&rest) {
        r.ack(20, &e.id).await.expect("ack");
    }
    assert_eq!(r.backlog(20).await.expect("backlog"), 0);
    r.ack(20, &rest[0].id)
        .await
        .expect("acknowledging twice is harmless");
    let other = r.take(21, "r-a", 10).await.expect("take");
    assert_eq!(bodies(&other), ["elsewhere"], "partitions are apart");
    r.ack(21, &other[0].id).await.expect("ack");
}

async fn unacknowledged_entries_go_to_whoever_claims_them(r: &dyn Relay) {
    for body in ["p1", "p2", "p3", "p4"] {
        r.push(20, body).await.expect("push");
    }
    let taken = r.take(20, "r-a", 3).await.expect("take");
    assert_eq!(bodies(&taken), ["p1", "p2", "p3"]);
    // r-a dies: r-b claims what it had not acknowledged, in order; what
    // nobody was given stays for `take`.
    r.ack(20, &taken[1].id).await.expect("ack");
    let claimed = r.claim(20, "r-b", 10).await.expect("claim");
    assert_eq!(bodies(&claimed), ["p1", "p3"]);
    assert_eq!(
        claimed.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&taken[0].id, &taken[2].id],
        "an entry keeps its id when claimed"
    );
    let fresh = r.take(20, "r-b", 10).await.expect("take");
    assert_eq!(bodies(&fresh), ["p4"]);
    let again = r.claim(20, "r-c", 1).await.expect("claim");
    assert_eq!(bodies(&again), ["p1"], "at most count");
    for e in claimed.iter().chain(&fresh) {
        r.ack(20, &e.id).await.expect("ack");
    }
    assert!(r.claim(20, "r-c", 10).await.expect("claim").is_empty());
    assert_eq!(r.backlog(20).await.expect("backlog"), 0);
}

async fn an_inbox_is_read_in_order_and_wakes_its_reader(r: &dyn Relay) {
    let quick = Duration::from_millis(50);
    assert!(
        r.receive("r-in", "0-0", quick)
            .await
            .expect("receive")
            .is_empty(),
        "an empty inbox waits, then answers nothing"
    );
    r.send("r-in", "x").await.expect("send");
    r.send("r-in", "y").await.expect("send");
    r.send("r-other", "z").await.expect("send");
    let got = r.receive("r-in", "0-0", quick).await.expect("receive");
    assert_eq!(bodies(&got), ["x", "y"]);
    let after = got[1].id.clone();
    assert!(
        r.receive("r-in", &after, quick)
            .await
            .expect("receive")
            .is_empty(),
        "nothing after the last one read"
    );
    // A reader waiting is woken by a send, long before its wait is over.
    let started = std::time::Instant::now();
    let (woken, ()) = tokio::join!(r.receive("r-in", &after, Duration::from_secs(2)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        r.send("r-in", "late").await.expect("send");
    });
    assert_eq!(bodies(&woken.expect("receive")), ["late"]);
    assert!(started.elapsed() < Duration::from_millis(1900));
    r.drop_inbox("r-in").await.expect("drop");
    assert!(
        r.receive("r-in", "0-0", quick)
            .await
            .expect("receive")
            .is_empty(),
        "a dropped inbox is empty"
    );
    r.drop_inbox("r-other").await.expect("drop");
}
