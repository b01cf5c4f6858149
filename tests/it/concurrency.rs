//! Many clients appending to a few hot documents with stale bases: every
//! element must land exactly once, and each document's version must count the
//! mutations applied to it.

use crate::support::{TestServer, fresh_postgres_database};
use serde_json::{Value, json};
use std::collections::HashMap;

const CLIENTS: usize = 32;
const APPENDS_PER_CLIENT: usize = 100;
const HOT_KEYS: usize = 5;

/// Returns how many mutations were sent and how many were merged.
async fn stale_appends_keep_every_element(s: &TestServer) -> (usize, usize) {
    let (status, _) = s
        .put("/v1/collections/hot", json!({"handler": "automerge"}))
        .await;
    assert_eq!(status, 200);
    for k in 0..HOT_KEYS {
        let (status, _) = s.post(json!({"collection": "hot", "key": format!("k{k}"), "op": "put", "value": {"items": []}})).await;
        assert_eq!(status, 200);
    }
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, url) = (s.http.clone(), s.url.clone());
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..APPENDS_PER_CLIENT {
                let key = format!("k{}", (c * 7 + i) % HOT_KEYS);
                // Base 1 is the version every client read first: stale for all but the first writer.
                let body = json!({"id": format!("c{c}-{i}"), "client": format!("client-{c}"), "collection": "hot", "key": key,
                                  "op": "patch", "value": {"items": [format!("c{c}-{i}")]}, "base_version": 1});
                let response = http.post(format!("{url}/v1/mutations")).json(&body).send().await.expect("POST");
                let status = response.status().as_u16();
                let answer: Value = response.json().await.expect("JSON");
                assert_eq!(status, 200, "{answer}");
                outcomes.push((key, answer["outcome"].as_str().unwrap_or("").to_owned()));
            }
            outcomes
        }));
    }
    let mut applied_per_key: HashMap<String, u64> = HashMap::new();
    let mut merged = 0;
    for client in clients {
        for (key, outcome) in client.await.expect("client task") {
            assert!(outcome == "applied" || outcome == "merged", "{outcome}");
            merged += usize::from(outcome == "merged");
            *applied_per_key.entry(key).or_default() += 1;
        }
    }
    check_hot_documents(
        &[s],
        HOT_KEYS,
        &applied_per_key,
        CLIENTS * APPENDS_PER_CLIENT,
    )
    .await;
    (HOT_KEYS + CLIENTS * APPENDS_PER_CLIENT, merged)
}

/// Reads `hot/k0` … `hot/k{keys-1}` (through each server in turn): each version
/// counts the mutations applied to it, and the `sent` elements appended are
/// all there, each once.
async fn check_hot_documents(
    servers: &[&TestServer],
    keys: usize,
    applied_per_key: &HashMap<String, u64>,
    sent: usize,
) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for k in 0..keys {
        let key = format!("k{k}");
        let (status, doc) = servers[k % servers.len()]
            .get(&format!("/v1/documents/hot/{key}"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            doc["version"].as_u64(),
            Some(1 + applied_per_key.get(&key).copied().unwrap_or(0)),
            "version counts the applied mutations of {key}"
        );
        for element in doc["item"]["items"].as_array().expect("items") {
            *seen
                .entry(element.as_str().expect("string").to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(seen.len(), sent, "every element is present");
    assert!(
        seen.values().all(|n| *n == 1),
        "no element is present twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_appends_to_hot_keys_on_sqlite() {
    stale_appends_keep_every_element(&TestServer::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_appends_to_hot_keys_on_postgres() {
    let url = fresh_postgres_database().await;
    let s = TestServer::with(|c| {
        c.store = url.clone();
        c.history = url.clone();
    })
    .await;
    let (sent, merged) = stale_appends_keep_every_element(&s).await;
    // Store and history share the database, so each commit wrote its lanes'
    // history: every mutation exactly once, every conflict exactly once.
    let db = sqlx::PgPool::connect(&url).await.expect("connect");
    let count = |table: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(&db)
            .await
            .expect("count")
        }
    };
    assert_eq!(count("sluice_mutations").await, sent as i64);
    assert_eq!(count("sluice_conflicts").await, merged as i64);
    assert!(merged > 0, "stale bases were merged");
    // Listed in pages (bounded in bytes since conflicts hold whole
    // documents), every one of them across the pages.
    let mut listed = 0;
    let mut path = "/v1/conflicts?collection=hot&limit=1000".to_owned();
    loop {
        let (status, page) = s.get(&path).await;
        assert_eq!(status, 200);
        listed += page["conflicts"].as_array().map_or(0, Vec::len);
        match page.get("next").and_then(serde_json::Value::as_i64) {
            Some(next) => path = format!("/v1/conflicts?collection=hot&limit=1000&before={next}"),
            None => break,
        }
    }
    assert_eq!(listed, merged);
}

/// Sluice's tables start empty and grow under load; its lookups must stay
/// index probes. (A plan cached while a table was empty once turned every
/// resend check and document read into a scan of the whole table.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lookups_stay_index_probes_as_tables_grow() {
    const WRITERS: usize = 8;
    const WRITES: usize = 150;
    let url = fresh_postgres_database().await;
    let s = TestServer::with(|c| {
        c.store = url.clone();
        c.history = url.clone();
    })
    .await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (http, base) = (s.http.clone(), s.url.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..WRITES {
                let body = json!({"id": format!("w{w}-{i}"), "client": format!("writer-{w}"), "collection": "grow",
                                  "key": format!("k{}", (i * WRITERS + w) % 600), "op": "patch", "value": {"n": i}});
                let response = http.post(format!("{base}/v1/mutations")).json(&body).send().await.expect("POST");
                assert_eq!(response.status().as_u16(), 200);
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    s.stop().await;

    // A backend reports its table statistics when it exits: end Sluice's
    // sessions, then read what they did.
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        .execute(&admin)
        .await
        .expect("terminate Sluice's sessions");
    let mut scans = Vec::new();
    for _ in 0..100 {
        let others: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            .fetch_one(&admin)
            .await
            .expect("sessions");
        scans = sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT relname::text, seq_tup_read, COALESCE(idx_scan, 0) FROM pg_stat_user_tables
             WHERE relname IN ('sluice_documents', 'sluice_replies') ORDER BY relname",
        )
        .fetch_all(&admin)
        .await
        .expect("table statistics");
        if others == 0 && scans.len() == 2 && scans.iter().all(|(_, _, index)| *index > 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(scans.len(), 2, "{scans:?}");
    for (table, seq_rows, index_scans) in &scans {
        assert!(
            *index_scans >= (WRITERS * WRITES) as i64,
            "{table}: statistics not reported: {scans:?}"
        );
        assert_eq!(*seq_rows, 0, "{table}: rows read by sequential scans");
    }
}

/// Two Sluice servers on one PostgreSQL database, their clients appending to
/// the same hot documents with stale bases: each server's commits find the
/// other's writes (a stale lane is read and decided again), batches lock rows
/// in key order so the servers never deadlock, and every element lands
/// exactly once. A client told 503 resends with the same id, as the API asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_keep_every_element() {
    const PER_SERVER: usize = 8;
    const APPENDS: usize = 40;
    const KEYS: usize = 6;
    let url = fresh_postgres_database().await;
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(
            TestServer::with(|c| {
                c.store = url.clone();
                c.history = url.clone();
            })
            .await,
        );
    }
    // Configured through one server; the other reads it from the store.
    let (status, _) = servers[0]
        .put("/v1/collections/hot", json!({"handler": "automerge"}))
        .await;
    assert_eq!(status, 200);
    let mut handler = String::new();
    for _ in 0..100 {
        let (status, config) = servers[1].get("/v1/collections/hot").await;
        assert_eq!(status, 200);
        handler = config["handler"].as_str().unwrap_or_default().to_owned();
        if handler == "automerge" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        handler, "automerge",
        "the second server took the setting from the store"
    );
    for k in 0..KEYS {
        let (status, _) = servers[0]
            .post(json!({"collection": "hot", "key": format!("k{k}"), "op": "put", "value": {"items": []}}))
            .await;
        assert_eq!(status, 200);
    }
    let mut clients = Vec::new();
    for c in 0..2 * PER_SERVER {
        let (http, url) = (servers[c % 2].http.clone(), servers[c % 2].url.clone());
        clients.push(tokio::spawn(async move {
            let mut applied = Vec::new();
            for i in 0..APPENDS {
                let key = format!("k{}", (c * 5 + i) % KEYS);
                let body = json!({"id": format!("c{c}-{i}"), "client": format!("client-{c}"), "collection": "hot", "key": key,
                                  "op": "patch", "value": {"items": [format!("c{c}-{i}")]}, "base_version": 1});
                let mut resends = 0;
                loop {
                    let response = http.post(format!("{url}/v1/mutations")).json(&body).send().await.expect("POST");
                    let status = response.status().as_u16();
                    let answer: Value = response.json().await.expect("JSON");
                    if status == 503 && resends < 20 {
                        resends += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                    assert_eq!(status, 200, "{answer}");
                    applied.push(key);
                    break;
                }
            }
            applied
        }));
    }
    let mut applied_per_key: HashMap<String, u64> = HashMap::new();
    for client in clients {
        for key in client.await.expect("client task") {
            *applied_per_key.entry(key).or_default() += 1;
        }
    }
    let mut stale = 0;
    for server in &servers {
        let (_, stats) = server.get("/v1/stats").await;
        stale += stats["commits_stale"].as_u64().expect("commits_stale");
    }
    println!("stale commits: {stale}");
    assert!(stale > 0, "each server met the other's writes");
    let servers: Vec<&TestServer> = servers.iter().collect();
    check_hot_documents(&servers, KEYS, &applied_per_key, 2 * PER_SERVER * APPENDS).await;
}
