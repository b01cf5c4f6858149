//! Cluster mode against real Redis servers: the single one and the
//! three-master Redis Cluster that `scripts/test` starts.

use crate::support::{redis_cluster_urls, redis_prefix, redis_url};
use sluice_server::clock::SystemClock;
use sluice_server::cluster::{
    ClusterError, Coordinator, MemoryCoordinator, RedisCoordinator, RedisTarget, conformance,
};

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
