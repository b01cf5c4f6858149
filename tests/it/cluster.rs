//! Cluster mode against real Redis servers: the single one and the
//! three-master Redis Cluster that `scripts/test` starts.

use crate::conformance::{item, lane, reply};
use crate::support::{fresh_postgres_database, redis_cluster_urls, redis_prefix, redis_url};
use serde_json::json;
use sluice_server::clock::{ManualClock, SharedClock, SystemClock};
use sluice_server::cluster::{
    ClusterError, Coordinator, MemoryCoordinator, MemoryRelay, Ownership, OwnershipConfig,
    RedisCoordinator, RedisRelay, RedisTarget, SharedCoordinator, conformance, partition_of,
};
use sluice_server::model::{DocKey, Document};
use sluice_server::store::{
    CommitOutcome, Fence, MemoryStore, PostgresStore, SharedStore, SqliteStore,
};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn the_reference_coordinator_keeps_the_contract() {
    conformance::suite(&MemoryCoordinator::new(SystemClock::shared())).await;
}

#[tokio::test]
async fn the_coordinator_on_a_single_redis_keeps_the_contract() {
    let target = RedisTarget::parse(&redis_url()).expect("a URL");
    assert!(matches!(target, RedisTarget::Single(_)));
    let c = RedisCoordinator::connect(&target, &redis_prefix())
        .await
        .expect("connect");
    conformance::suite(&c).await;
}

#[tokio::test]
async fn the_coordinator_on_a_redis_cluster_keeps_the_contract() {
    let target = RedisTarget::parse(&redis_cluster_urls()).expect("URLs");
    assert!(matches!(target, RedisTarget::Cluster(ref seeds) if seeds.len() == 3));
    let c = RedisCoordinator::connect(&target, &redis_prefix())
        .await
        .expect("connect");
    conformance::suite(&c).await;
}

#[tokio::test]
async fn the_reference_relay_keeps_the_contract() {
    conformance::relay_suite(&MemoryRelay::new()).await;
}

#[tokio::test]
async fn the_relay_on_a_single_redis_keeps_the_contract() {
    let target = RedisTarget::parse(&redis_url()).expect("a URL");
    let r = RedisRelay::connect(&target, &redis_prefix())
        .await
        .expect("connect");
    conformance::relay_suite(&r).await;
}

#[tokio::test]
async fn the_relay_on_a_redis_cluster_keeps_the_contract() {
    let target = RedisTarget::parse(&redis_cluster_urls()).expect("URLs");
    let r = RedisRelay::connect(&target, &redis_prefix())
        .await
        .expect("connect");
    conformance::relay_suite(&r).await;
}

#[tokio::test]
async fn one_node_of_a_cluster_named_alone_reaches_the_whole_cluster() {
    let first = redis_cluster_urls()
        .split(',')
        .next()
        .expect("a seed")
        .to_string();
    let c = RedisCoordinator::connect(&RedisTarget::parse(&first).expect("a URL"), &redis_prefix())
        .await
        .expect("connect");
    // Ten partitions' keys fall in slots of all three masters: a connection
    // to the one node would be answered MOVED for most of them.
    for p in 0..10 {
        let e = c.acquire(p, "m-a", 0, 30_000).await.expect("acquire");
        assert_eq!(e, Some(1), "partition {p}");
    }
}

#[tokio::test]
async fn a_coordinator_that_cannot_be_reached_says_so() {
    assert!(matches!(
        RedisTarget::parse("http://localhost:6379"),
        Err(ClusterError::Invalid(_))
    ));
    assert!(matches!(
        RedisTarget::parse(" , "),
        Err(ClusterError::Invalid(_))
    ));
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let target = RedisTarget::parse(&format!("redis://127.0.0.1:{port}")).expect("a URL");
    match RedisCoordinator::connect(&target, "p:").await {
        Err(ClusterError::Unavailable(message)) => assert!(!message.is_empty()),
        Err(other) => panic!("an unreachable Redis is unavailable, not {other}"),
        Ok(_) => panic!("nothing listens there"),
    }
    let bad =
        RedisCoordinator::connect(&RedisTarget::parse(&redis_url()).expect("URL"), "a{b}:").await;
    assert!(
        matches!(bad, Err(ClusterError::Invalid(_))),
        "a prefix with a hash tag is refused"
    );
}

/// Time in the ownership story: a manual clock advanced by hand, or the
/// real one that Redis also follows.
enum Time {
    Manual(Arc<ManualClock>),
    Real,
}

impl Time {
    fn clock(&self) -> SharedClock {
        match self {
            Time::Manual(clock) => clock.clone(),
            Time::Real => SystemClock::shared(),
        }
    }

    async fn pass(&self, by: Duration) {
        match self {
            Time::Manual(clock) => clock.advance(by),
            Time::Real => tokio::time::sleep(by).await,
        }
    }
}

const PARTITIONS: u32 = 12;
const LEASE: Duration = Duration::from_millis(1000);

fn owned_by(members: &[&Ownership]) -> Vec<Vec<u32>> {
    members
        .iter()
        .map(|m| m.owned().into_iter().map(|(p, _)| p).collect())
        .collect()
}

/// Every partition is owned by exactly one of `members`, each owning
/// `shares` of them.
fn assert_spread(members: &[&Ownership], shares: &[usize]) {
    let owned = owned_by(members);
    let mut all: Vec<u32> = owned.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..PARTITIONS).collect::<Vec<_>>(), "{owned:?}");
    let counts: Vec<usize> = owned.iter().map(Vec::len).collect();
    assert_eq!(counts, shares, "{owned:?}");
}

async fn tick_all(members: &[&Ownership]) {
    for m in members {
        m.tick().await.expect("tick");
    }
}

/// A document of `partition`.
fn doc_in(partition: u32) -> DocKey {
    (0..)
        .map(|i| DocKey::new("owned", format!("k{i}")))
        .find(|doc| partition_of(doc, PARTITIONS) == partition)
        .expect("every partition has documents")
}

/// Three processes share the partitions evenly, a paused one loses its
/// partitions and cannot write under its old fence, it comes back, and one
/// that leaves hands its partitions over at once.
async fn ownership_story(coordinator: SharedCoordinator, store: SharedStore, time: Time) {
    let config = OwnershipConfig {
        partitions: PARTITIONS,
        lease: LEASE,
    };
    let member = |id: &str| {
        Ownership::new(
            coordinator.clone(),
            store.clone(),
            time.clock(),
            id,
            format!("{id}.test:8080"),
            config,
        )
    };
    let (a, b, c) = (member("a"), member("b"), member("c"));

    // Alone, a owns everything; each of its partitions' fences is raised.
    let report = a.tick().await.expect("tick");
    assert_eq!(report.gained.len(), 12);
    assert_spread(&[&a], &[12]);
    for (p, epoch) in a.owned() {
        assert_eq!(store.raise_fence(p, 0).await.expect("fence"), epoch);
    }

    // b joins: it gets nothing until a gives half up, then takes it.
    assert_eq!(b.tick().await.expect("tick").owned, 0);
    assert_eq!(a.tick().await.expect("tick").lost.len(), 6);
    assert_eq!(b.tick().await.expect("tick").gained.len(), 6);
    assert_spread(&[&a, &b], &[6, 6]);
    // c joins: two rounds settle it (a partition may also move between a
    // and b, given up by one before the other asks).
    tick_all(&[&c, &a, &b, &c, &a, &b]).await;
    assert_spread(&[&a, &b, &c], &[4, 4, 4]);
    assert_eq!(
        a.members()
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );

    // a stalls past its lease (a pause, a stall): b and c take its share.
    let stalled = a.owned();
    let (p, old_epoch) = stalled[0];
    for _ in 0..5 {
        time.pass(LEASE / 4).await;
        tick_all(&[&b, &c]).await;
    }
    assert_spread(&[&b, &c], &[6, 6]);
    assert_eq!(a.fence_of(p), None, "a no longer trusts its lease");
    let new_epoch = b.fence_of(p).or(c.fence_of(p)).expect("taken").epoch;
    assert!(new_epoch > old_epoch);
    // What a decided under its old fence is refused by the store, reply
    // and all.
    let doc = doc_in(p);
    let mut stale = lane(
        &doc,
        0,
        Some(Document {
            version: 1,
            item: item(json!({"by": "a"})),
        }),
        vec![reply("ann", "from-a", 1)],
    );
    stale.fence = Some(Fence {
        partition: p,
        epoch: old_epoch,
    });
    assert_eq!(
        store.commit(&[stale]).await.expect("commit"),
        [CommitOutcome::Fenced]
    );
    assert_eq!(store.get(&doc).await.expect("get").version, 0);
    assert_eq!(store.reply("ann", "from-a").await.expect("reply"), None);

    // a comes back: its renewals are refused, then it gets its share anew.
    let back = a.tick().await.expect("tick");
    let mut lost = back.lost.clone();
    lost.sort_unstable();
    assert_eq!(lost, stalled.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    tick_all(&[&b, &c, &a, &b, &c, &a]).await;
    assert_spread(&[&a, &b, &c], &[4, 4, 4]);

    // b leaves: a and c take its share at their next tick.
    b.leave().await.expect("leave");
    assert!(b.owned().is_empty());
    tick_all(&[&a, &c, &a]).await;
    assert_spread(&[&a, &c], &[6, 6]);
}

#[tokio::test]
async fn partitions_are_shared_fenced_and_handed_over_on_the_reference() {
    let clock = ManualClock::new(1_000_000);
    let coordinator: SharedCoordinator = Arc::new(MemoryCoordinator::new(clock.clone()));
    ownership_story(
        coordinator,
        Arc::new(MemoryStore::new()),
        Time::Manual(clock),
    )
    .await;
}

#[tokio::test]
async fn partitions_are_shared_fenced_and_handed_over_on_redis_and_postgres() {
    let target = RedisTarget::parse(&redis_url()).expect("a URL");
    let coordinator: SharedCoordinator = Arc::new(
        RedisCoordinator::connect(&target, &redis_prefix())
            .await
            .expect("connect"),
    );
    let store = PostgresStore::connect(&fresh_postgres_database().await)
        .await
        .expect("store");
    ownership_story(coordinator, Arc::new(store), Time::Real).await;
}

#[tokio::test]
async fn partitions_are_shared_fenced_and_handed_over_on_a_redis_cluster() {
    let target = RedisTarget::parse(&redis_cluster_urls()).expect("URLs");
    let coordinator: SharedCoordinator = Arc::new(
        RedisCoordinator::connect(&target, &redis_prefix())
            .await
            .expect("connect"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("store.db"))
        .await
        .expect("store");
    ownership_story(coordinator, Arc::new(store), Time::Real).await;
}
