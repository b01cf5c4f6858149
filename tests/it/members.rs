//! Cluster mode end to end: several Sluice servers on one PostgreSQL store
//! and one Redis, each accepting any request.

use crate::support::{
    TestServer, error_code, fresh_postgres_database, redis_prefix, redis_url, sample,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const PARTITIONS: u32 = 8;

pub(crate) async fn member(store: &str, redis: &str, prefix: &str) -> TestServer {
    member_with(store, redis, prefix, |_| {}).await
}

async fn member_with(
    store: &str,
    redis: &str,
    prefix: &str,
    adjust: impl FnOnce(&mut sluice_server::config::Config) + Send + 'static,
) -> TestServer {
    let (store, redis, prefix) = (store.to_string(), redis.to_string(), prefix.to_string());
    TestServer::with(move |c| {
        adjust(c);
        c.store = store.clone();
        c.history = store;
        c.cluster.redis = redis;
        c.cluster.prefix = prefix;
        c.cluster.partitions = PARTITIONS;
        c.cluster.lease_ms = 1_000;
        c.cluster.retrain_interval_s = 1;
    })
    .await
}

/// Waits until `server`'s `GET /v1/cluster` shows `n` members that own
/// every partition between them, none of them idle; returns it.
async fn settled(server: &TestServer, n: usize) -> Value {
    crate::failover::settled(&server.http, &server.url, n).await
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn any_member_answers_for_any_document_and_a_leaving_one_hands_over() {
    let store = fresh_postgres_database().await;
    let (redis, prefix) = (redis_url(), redis_prefix());
    let servers = [
        member(&store, &redis, &prefix).await,
        member(&store, &redis, &prefix).await,
        member(&store, &redis, &prefix).await,
    ];
    let view = settled(&servers[0], 3).await;
    // The exact shape tools rely on.
    assert_eq!(keys(&view), BTreeSet::from(["partitions", "members"]));
    assert_eq!(view["partitions"], json!(PARTITIONS));
    for m in view["members"].as_array().expect("members") {
        assert_eq!(
            keys(m),
            BTreeSet::from(["id", "address", "last_seen_ms", "partitions"])
        );
        for p in m["partitions"].as_array().expect("partitions") {
            assert_eq!(keys(p), BTreeSet::from(["partition", "epoch", "backlog"]));
            assert!(p["epoch"].as_u64().expect("epoch") >= 1);
        }
    }

    // Every document written through one member and patched through
    // another: whichever owns it decides, the receiver answers.
    for i in 0..24 {
        let key = format!("doc-{i}");
        let first = &servers[i % 3];
        let second = &servers[(i + 1) % 3];
        let (status, body) = first
            .post(json!({"id": format!("put-{i}"), "client": "ann", "collection": "spread", "key": key, "op": "put", "value": {"n": i}}))
            .await;
        assert_eq!((status, body["version"].clone()), (200, json!(1)), "{body}");
        let (status, body) = second
            .post(json!({"id": format!("patch-{i}"), "client": "ann", "collection": "spread", "key": key, "op": "patch", "value": {"m": i}, "base_version": 1}))
            .await;
        assert_eq!((status, body["version"].clone()), (200, json!(2)), "{body}");
        // A stale base through the third: rejected by its owner.
        let (status, body) = servers[(i + 2) % 3]
            .post(json!({"id": format!("stale-{i}"), "client": "bob", "collection": "spread", "key": key, "op": "patch", "value": {"x": 1}, "base_version": 1}))
            .await;
        assert_eq!(status, 409, "{body}");
        // A resend through another member is answered, not applied again.
        let (status, body) = servers[(i + 2) % 3]
            .post(json!({"id": format!("patch-{i}"), "client": "ann", "collection": "spread", "key": key, "op": "patch", "value": {"m": i}, "base_version": 1}))
            .await;
        assert_eq!((status, body["version"].clone()), (200, json!(2)), "{body}");
        let (status, doc) = servers[i % 3]
            .get(&format!("/v1/documents/spread/{key}"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(doc["version"], json!(2), "{doc}");
        assert_eq!(doc["item"], json!({"n": i, "m": i}));
    }

    // A batch spread over the members: each mutation answered in order.
    let batch: Vec<Value> = (0..12)
        .map(|i| json!({"id": format!("b-{i}"), "client": "ann", "collection": "spread", "key": format!("doc-{i}"), "op": "patch", "value": {"b": i}, "base_version": 2}))
        .collect();
    let (status, body) = servers[1]
        .post_raw(
            "/v1/mutations:batch",
            json!({"mutations": batch}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answers = body["results"].as_array().expect("results");
    assert_eq!(answers.len(), 12);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["id"], json!(format!("b-{i}")), "{a}");
        assert_eq!(
            (a["outcome"].clone(), a["version"].clone()),
            (json!("applied"), json!(3)),
            "{a}"
        );
    }

    // Asynchronous, through every member: 202 once Redis has it, decided
    // by its owner, readable from any member.
    for i in 0..6 {
        let (status, body) = servers[i % 3]
            .post_raw(
                "/v1/mutations?wait=false",
                json!({"id": format!("async-{i}"), "client": "cy", "collection": "spread", "key": format!("async-{i}"), "op": "put", "value": {"a": i}}).to_string(),
            )
            .await;
        assert_eq!(
            (status, body["status"].clone()),
            (202, json!("queued")),
            "{body}"
        );
    }
    for i in 0..6 {
        let path = format!("/v1/mutations/async-{i}?client=cy");
        let mut answered = Value::Null;
        for _ in 0..100 {
            let (status, body) = servers[(i + 1) % 3].get(&path).await;
            if status == 200 {
                answered = body;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(answered["version"], json!(1), "async-{i}: {answered}");
    }

    // The metrics and the dashboard show the cluster too.
    let mut forwarded = 0.0;
    for server in &servers {
        let metrics = server.metrics().await;
        forwarded += sample(&metrics, "sluice_mutations_forwarded_total");
        assert_eq!(sample(&metrics, "sluice_cluster_members"), 3.0, "{metrics}");
        let owned = sample(&metrics, "sluice_cluster_partitions_owned");
        assert!(owned >= 1.0, "{metrics}");
        let epochs = metrics
            .lines()
            .filter(|l| l.starts_with("sluice_cluster_partition_epoch{") && !l.ends_with(" 0"))
            .count();
        assert_eq!(epochs as f64, owned, "an epoch for each owned partition");
        let (status, board) = server.get("/v1/dashboard").await;
        assert_eq!(status, 200);
        let cluster = &board["cluster"];
        assert_eq!(cluster["partitions"], json!(PARTITIONS), "{cluster}");
        assert_eq!(cluster["members"].as_array().map(Vec::len), Some(3));
        let me = cluster["member"].as_str().expect("member");
        assert!(
            view["members"]
                .as_array()
                .expect("members")
                .iter()
                .any(|m| m["id"] == json!(me)),
            "{me} is one of the members"
        );
    }
    assert!(forwarded >= 24.0, "mutations were forwarded: {forwarded}");

    // One member leaves: the other two own everything at once, not a
    // lease later, and go on answering.
    let [a, b, c] = servers;
    c.stop().await;
    settled(&a, 2).await;
    let (status, body) = b
        .post(json!({"id": "after", "client": "ann", "collection": "spread", "key": "doc-0", "op": "patch", "value": {"after": true}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = a.get("/v1/cluster").await;
    assert_eq!(status, 200);
    let backlog: u64 = body["members"]
        .as_array()
        .expect("members")
        .iter()
        .flat_map(|m| m["partitions"].as_array().cloned().unwrap_or_default())
        .map(|p| p["backlog"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(backlog, 0, "every stream entry was acknowledged: {body}");
}

#[tokio::test]
async fn cluster_mode_is_refused_without_a_shared_store_and_absent_without_redis() {
    let err = sluice_server::server::start(
        sluice_server::config::Config {
            listen: "127.0.0.1:0".into(),
            store: "memory".into(),
            history: "memory".into(),
            cluster: sluice_server::config::ClusterConfig {
                redis: redis_url(),
                ..Default::default()
            },
            ..Default::default()
        },
        async {},
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("postgres"), "{err}");
    let single = TestServer::embedded().await;
    let (status, body) = single.get("/v1/cluster").await;
    assert_eq!((status, error_code(&body)), (404, "not_clustered"));
    let (_, board) = single.get("/v1/dashboard").await;
    assert_eq!(board["cluster"], Value::Null);
    assert!(
        !single.metrics().await.contains("sluice_cluster_"),
        "no cluster series on a single process"
    );
}

/// A generated trace replayed through three members, each client's
/// mutations through one of them: every conflict flag is the labelled one
/// (each key decided in order, exactly once, whichever member received it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_split_over_the_members_keeps_every_labelled_conflict() {
    use sluice_tools::generate::{GenOptions, generate};
    use sluice_tools::replay::{ReplayOptions, replay};
    let dir = tempfile::tempdir().expect("temp dir");
    let (trace, labels) = (dir.path().join("t.jsonl.gz"), dir.path().join("l.jsonl"));
    {
        let file = std::fs::File::create(&trace).expect("create");
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut label_file = std::fs::File::create(&labels).expect("create");
        let options = GenOptions {
            mutations: 1_500,
            keys: 150,
            clients: 40,
            zipf: 1.1,
            ..GenOptions::default()
        };
        let stats = generate(&options, &mut gz, Some(&mut label_file), None).expect("generate");
        gz.finish().expect("finish gzip");
        assert!(stats.conflicts > 50, "{stats:?}");
    }
    let store = fresh_postgres_database().await;
    let (redis, prefix) = (redis_url(), redis_prefix());
    let servers = [
        member(&store, &redis, &prefix).await,
        member(&store, &redis, &prefix).await,
        member(&store, &redis, &prefix).await,
    ];
    settled(&servers[0], 3).await;
    let summary = replay(&ReplayOptions {
        trace,
        url: servers
            .iter()
            .map(|s| s.url.clone())
            .collect::<Vec<_>>()
            .join(","),
        handler: Some("automerge".into()),
        concurrency: 16,
        speed: None,
        out: None,
        labels: Some(labels),
        progress: false,
    })
    .await
    .expect("replay");
    assert_eq!((summary.mutations, summary.errors), (1_500, 0));
    assert_eq!(summary.label_mismatches, Some(0), "{summary:?}");
    for server in &servers {
        let metrics = server.metrics().await;
        let decided: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("sluice_mutations_decided_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        assert!(decided > 0.0, "every member decides its share");
        assert!(sample(&metrics, "sluice_mutations_forwarded_total") > 0.0);
    }
    // Each member decided a third of the keys, yet retraining from the
    // shared history gives every one of them all 1,500 outcomes and every
    // key's statistics: what one learns, the others know.
    let mut models = Vec::new();
    for server in &servers {
        let mut model = Value::Null;
        for _ in 0..100 {
            let (status, m) = server.get("/v1/model").await;
            assert_eq!(status, 200, "{m}");
            model = m;
            if model["trained_rows"].as_u64() >= Some(1_500) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            model["trained_rows"].as_u64() >= Some(1_500),
            "a member never retrained from the others' outcomes: {model}"
        );
        models.push(model);
    }
    let keys: BTreeSet<u64> = models
        .iter()
        .filter_map(|m| m["keys_tracked"].as_u64())
        .collect();
    assert_eq!(keys.len(), 1, "every member tracks every key: {keys:?}");
}

/// A `?wait=false` mutation forwarded into a stream is `queued` to every
/// member until it is decided, then its outcome: never 404 in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_mutation_in_a_stream_is_queued_wherever_it_is_asked() {
    let store = fresh_postgres_database().await;
    let (redis, prefix) = (redis_url(), redis_prefix());
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(member_with(&store, &redis, &prefix, |c| c.script.time_ms_max = 5_000).await);
    }
    settled(&servers[0], 3).await;
    // The owner's lane of held/k is busy for 1.5 s with a script, so what
    // follows it waits there, undecided.
    let script = "function resolve(ctx) { const end = Date.now() + 1500; while (Date.now() < end) {} return {action: 'resolve', item: ctx.existing}; }";
    for s in &servers {
        let (status, body) = s
            .put(
                "/v1/collections/held",
                json!({"handler": {"script": script}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for _ in 0..2 {
        let (status, body) = servers[0]
            .post(json!({"client": "ann", "collection": "held", "key": "k", "op": "put", "value": {}}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let blocker = servers[0].spawn_post(
        json!({"client": "ann", "collection": "held", "key": "k", "op": "put", "value": {}, "base_version": 1}),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = servers[1]
        .post_raw(
            "/v1/mutations?wait=false",
            json!({"id": "late", "client": "ann", "collection": "held", "key": "k", "op": "put", "value": {"late": true}}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for s in &servers {
        let (status, body) = s.get("/v1/mutations/late?client=ann").await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("queued")),
            "{body}"
        );
        // Another client's id of the same name is not this one.
        let (status, _) = s.get("/v1/mutations/late?client=bob").await;
        assert_eq!(status, 404);
    }
    let (status, _) = blocker.await.expect("blocker");
    assert_eq!(status, 200);
    for s in &servers {
        let mut last = Value::Null;
        for _ in 0..100 {
            let (status, body) = s.get("/v1/mutations/late?client=ann").await;
            assert_eq!(status, 200, "{body}");
            last = body;
            if last["status"] != "queued" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last["outcome"], json!("applied"), "{last}");
    }
}
