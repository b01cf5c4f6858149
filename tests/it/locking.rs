//! Pre-emptive locking against a writer that bypasses Sluice, on a real
//! PostgreSQL.

use crate::support::{TestServer, fresh_postgres_database, sample};
use serde_json::{Value, json};
use sluice_server::guard::GuardMode;
use std::collections::BTreeSet;

const CLIENTS: usize = 6;
const PATCHES: usize = 40;
const OUTSIDE_WRITES: usize = 150;

/// Sluice's clients patch one document while a writer outside Sluice bumps
/// it; returns the server's stats once all is done and checks that every
/// write of both is in the document.
async fn hot_document_under_an_outside_writer(mode: GuardMode, decide_first: bool) -> Value {
    let url = fresh_postgres_database().await;
    let server = TestServer::with(|c| {
        c.store = url.clone();
        c.history = url.clone();
        c.locking.mode = mode;
        c.locking.decide_first = decide_first;
    })
    .await;
    let (status, answer) = server
        .post(json!({"collection": "hot", "key": "k", "op": "put", "value": {"first": true}}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let outside = tokio::spawn(async move {
        for n in 0..OUTSIDE_WRITES {
            sqlx::query(
                "UPDATE sluice_documents SET version = version + 1, \
                 item = (item::jsonb || jsonb_build_object('outside', $1::BIGINT))::json \
                 WHERE collection = 'hot' AND key = 'k'",
            )
            .bind(n as i64)
            .execute(&pool)
            .await
            .expect("outside write");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, base) = (server.http.clone(), server.url.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..PATCHES {
                let field = format!("c{c}_{i}");
                let body = json!({"id": field, "client": format!("client-{c}"), "collection": "hot",
                                  "key": "k", "op": "patch", "value": {field.clone(): i}});
                let response = http
                    .post(format!("{base}/v1/mutations"))
                    .json(&body)
                    .send()
                    .await
                    .expect("POST");
                let status = response.status().as_u16();
                let answer: Value = response.json().await.expect("JSON");
                assert_eq!(status, 200, "{answer}");
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    outside.await.expect("outside writer");
    let (_, doc) = server.get("/v1/documents/hot/k").await;
    assert_eq!(
        doc["version"],
        json!(1 + CLIENTS * PATCHES + OUTSIDE_WRITES),
        "every write of both counted once"
    );
    let fields: BTreeSet<&str> = doc["item"]
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    for c in 0..CLIENTS {
        for i in 0..PATCHES {
            assert!(
                fields.contains(format!("c{c}_{i}").as_str()),
                "c{c}_{i} is missing"
            );
        }
    }
    let (_, stats) = server.get("/v1/stats").await;
    println!("{mode:?}: {}", stats["locking"]);
    println!("{mode:?}: commits_stale {}", stats["commits_stale"]);
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_locking_leaves_an_outside_writer_no_stale_commit() {
    // Deciding before the lock (the default) or under it: a document that
    // moved before the lock was taken is decided again under it.
    for decide_first in [true, false] {
        let stats = hot_document_under_an_outside_writer(GuardMode::Always, decide_first).await;
        assert_eq!(stats["locking"]["mode"], "always");
        assert_eq!(stats["commits_stale"], 0, "{stats}");
        let locked = stats["locking"]["locked_lanes"]
            .as_u64()
            .expect("locked_lanes");
        assert!(locked > 0, "{stats}");
        let needed = stats["locking"]["locks_needed"]
            .as_u64()
            .expect("locks_needed");
        assert!(
            needed > 0 && needed <= locked,
            "the outside writer was met: {stats}"
        );
        assert!(
            stats["locking"]["lock_held_ms"]
                .as_f64()
                .is_some_and(|ms| ms > 0.0),
            "{stats}"
        );
    }
}

/// A lane that writes nothing (a certain rejection) takes no lock when it
/// decides first; deciding under the lock, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_that_writes_nothing_takes_no_lock() {
    let url = fresh_postgres_database().await;
    for (decide_first, locks) in [(true, 1), (false, 2)] {
        let server = TestServer::with(|c| {
            c.store = url.clone();
            c.history = url.clone();
            c.locking.mode = GuardMode::Always;
            c.locking.decide_first = decide_first;
        })
        .await;
        let key = format!("k{decide_first}");
        let (status, _) = server
            .post(json!({"collection": "c", "key": key, "op": "put", "value": {"n": 1}}))
            .await;
        assert_eq!(status, 200);
        let (status, body) = server
            .post(json!({"collection": "c", "key": key, "op": "put", "value": {"n": 2}, "base_version": 0}))
            .await;
        assert_eq!(
            (status, body["outcome"].clone()),
            (409, json!("rejected")),
            "{body}"
        );
        let (_, stats) = server.get("/v1/stats").await;
        assert_eq!(
            stats["locking"]["locked_lanes"],
            json!(locks),
            "decide_first = {decide_first}: {stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_locking_no_lane_locks() {
    let stats = hot_document_under_an_outside_writer(GuardMode::Off, true).await;
    assert_eq!(stats["locking"]["mode"], "off");
    assert_eq!(stats["locking"]["locked_lanes"], 0, "{stats}");
}

#[tokio::test]
async fn the_lock_threshold_is_shown_and_its_settings_checked() {
    let server = TestServer::embedded().await;
    let (_, stats) = server.get("/v1/stats").await;
    assert_eq!(stats["locking"]["mode"], "off", "off unless asked for");
    let server = TestServer::with(|c| c.locking.mode = GuardMode::Adaptive).await;
    let (_, stats) = server.get("/v1/stats").await;
    assert_eq!(stats["locking"]["mode"], "adaptive");
    assert_eq!(stats["locking"]["threshold"], json!(0.5));
    assert_eq!(
        sample(&server.metrics().await, "sluice_lock_threshold"),
        0.5
    );

    let mut config = sluice_server::config::Config::default();
    config.locking.threshold_min = 0.6;
    let error = config
        .validate()
        .expect_err("min above the start")
        .to_string();
    assert!(
        error.contains("locking") && error.contains("threshold_min"),
        "{error}"
    );
    config.locking.threshold_min = 0.05;
    config.locking.threshold_max = 1.5;
    let error = config.validate().expect_err("max above 1").to_string();
    assert!(error.contains("from 0 to 1"), "{error}");
}
