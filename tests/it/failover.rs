//! Cluster mode with real processes: three `sluice serve --redis` on one
//! PostgreSQL database, one killed with `kill -9` and restarted under load,
//! one paused with `SIGSTOP` past its lease while it decides.

use crate::support::{free_port, fresh_postgres_database, redis_prefix, redis_url, wait_healthy};
use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};
use sluice_server::cluster::partition_of;
use sluice_server::model::DocKey;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 16;

/// One `sluice serve` of the cluster, killed when dropped.
pub(crate) struct Member {
    port: u16,
    pub(crate) url: String,
    child: Option<Child>,
    store: String,
    redis: String,
    prefix: String,
    logs: tempfile::TempDir,
    starts: usize,
}

impl Member {
    async fn start(store: &str, prefix: &str) -> Member {
        Member::start_on(store, &redis_url(), prefix).await
    }

    pub(crate) async fn start_on(store: &str, redis: &str, prefix: &str) -> Member {
        let port = free_port();
        let mut m = Member {
            port,
            url: format!("http://127.0.0.1:{port}"),
            child: None,
            store: store.to_string(),
            redis: redis.to_string(),
            prefix: prefix.to_string(),
            logs: tempfile::tempdir().expect("temp dir"),
            starts: 0,
        };
        m.restart().await;
        m
    }

    async fn restart(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.logs.path().join(format!("{}.log", self.starts)))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--store", &self.store, "--history", &self.store])
            .args(["--redis", &self.redis])
            .env("SLUICE_CLUSTER__PREFIX", &self.prefix)
            .env("SLUICE_CLUSTER__PARTITIONS", PARTITIONS.to_string())
            .env("SLUICE_CLUSTER__LEASE_MS", "1000")
            .env("SLUICE_QUEUE__DECIDE_TIMEOUT_MS", "20000")
            .env("SLUICE_WEBHOOK_ALLOW", r#"["127.0.0.1"]"#)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice");
        self.child = Some(child);
        wait_healthy(&reqwest::Client::new(), &self.url).await;
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    /// Waits for the process to exit by itself (after a SIGTERM).
    pub(crate) fn wait_exit(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = child.wait().expect("exited");
            assert!(status.success(), "a graceful stop exits 0: {status}");
        }
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }

    /// `kill -9`, and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    match http.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// The cluster as `url` shows it, once `n` members own every partition
/// (as many as the view says the cluster has).
pub(crate) async fn settled(http: &reqwest::Client, url: &str, n: usize) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let (status, view) = get(http, &format!("{url}/v1/cluster")).await;
        let members = view["members"].as_array().cloned().unwrap_or_default();
        let owned: Vec<usize> = members
            .iter()
            .map(|m| m["partitions"].as_array().map_or(0, Vec::len))
            .collect();
        if status == 200
            && members.len() == n
            && view["partitions"]
                .as_u64()
                .is_some_and(|p| owned.iter().sum::<usize>() as u64 == p)
            && owned.iter().all(|o| *o > 0)
        {
            return view;
        }
        last = view;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the cluster did not settle on {n} members: {last}");
}

/// Configures a collection through one member and waits until every member
/// has it (they read the store's settings every 2 s).
async fn configure(http: &reqwest::Client, members: &[&Member], name: &str, config: Value) {
    let url = format!("{}/v1/collections/{name}", members[0].url);
    let r = http.put(url).json(&config).send().await.expect("PUT");
    assert_eq!(r.status().as_u16(), 200);
    for m in members {
        let url = format!("{}/v1/collections/{name}", m.url);
        let mut seen = false;
        for _ in 0..100 {
            let (_, body) = get(http, &url).await;
            if body["handler"] == config["handler"] {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen, "{} never saw collection {name}", m.url);
    }
}

/// Sends a mutation until it is answered with something other than a
/// refusal worth a resend, trying each member in turn from `first`.
pub(crate) async fn until_answered(
    http: &reqwest::Client,
    urls: &[String],
    first: usize,
    body: &Value,
) -> (u16, Value) {
    until_answered_noting(http, urls, first, body, &Refused::default()).await
}

/// What clients met on their way to an answer.
#[derive(Default)]
pub(crate) struct Refused {
    /// 429 and 503 answers.
    pub(crate) refusals: AtomicUsize,
    /// ... of which without a `Retry-After`.
    pub(crate) without_retry_after: AtomicUsize,
    /// Requests that got no answer at all (a member down).
    pub(crate) unanswered: AtomicUsize,
}

pub(crate) async fn until_answered_noting(
    http: &reqwest::Client,
    urls: &[String],
    first: usize,
    body: &Value,
    refused: &Refused,
) -> (u16, Value) {
    let started = Instant::now();
    let mut at = first;
    while started.elapsed() < Duration::from_secs(60) {
        let url = format!("{}/v1/mutations", urls[at % urls.len()]);
        match http.post(url).json(body).send().await {
            Ok(r) if !matches!(r.status().as_u16(), 429 | 503) => {
                let status = r.status().as_u16();
                return (status, r.json().await.expect("JSON answer"));
            }
            // Refused or unreachable (a member being killed): the same id
            // elsewhere.
            answered => {
                match answered {
                    Ok(r) => {
                        refused.refusals.fetch_add(1, Ordering::SeqCst);
                        if r.headers().get("retry-after").is_none() {
                            refused.without_retry_after.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(_) => {
                        refused.unanswered.fetch_add(1, Ordering::SeqCst);
                    }
                }
                at += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    panic!("{body} was not answered within a minute");
}

const CLIENTS: usize = 64;
const OPS: usize = 12;
const DOCS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_under_load_loses_nothing_and_applies_nothing_twice() {
    let store = fresh_postgres_database().await;
    let prefix = redis_prefix();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Member::start(&store, &prefix).await);
    }
    let http = reqwest::Client::new();
    let before = settled(&http, &members[0].url, 3).await;
    configure(
        &http,
        &members.iter().collect::<Vec<_>>(),
        "hot",
        json!({"handler": "automerge"}),
    )
    .await;
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    for d in 0..DOCS {
        let put = json!({"id": format!("init-{d}"), "client": "setup", "collection": "hot", "key": format!("d{d}"), "op": "put", "value": {"items": []}});
        let (status, body) = until_answered(&http, &urls, d, &put).await;
        assert_eq!((status, body["version"].clone()), (200, json!(1)), "{body}");
    }

    // 64 clients, each on its home member, each appending with a stale base
    // (automerge concatenates) or writing unconditionally to hot documents.
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, urls, done) = (http.clone(), urls.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for k in 0..OPS {
                let doc = (c + k) % DOCS;
                let tag = format!("c{c}-{k}");
                let body = if k % 4 == 3 {
                    json!({"id": tag, "client": format!("c{c}"), "collection": "hot", "key": format!("d{doc}"), "op": "patch", "value": {"touched": tag}})
                } else {
                    json!({"id": tag, "client": format!("c{c}"), "collection": "hot", "key": format!("d{doc}"), "op": "patch", "value": {"items": [tag]}, "base_version": 1})
                };
                let (status, answer) = until_answered(&http, &urls, c % 3, &body).await;
                assert_eq!(status, 200, "{tag}: {answer}");
                assert!(
                    matches!(answer["outcome"].as_str(), Some("applied" | "merged")),
                    "{tag}: {answer}"
                );
                acknowledged.push((doc, tag, k % 4 != 3));
                done.fetch_add(1, Ordering::SeqCst);
            }
            acknowledged
        }));
    }
    // A third of the way in, member 2 dies without a word; it comes back a
    // second later (a new member id, the same address).
    while done.load(Ordering::SeqCst) < CLIENTS * OPS / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    members[2].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    members[2].restart().await;

    let mut expected_items: HashMap<usize, Vec<String>> = HashMap::new();
    let mut writes: HashMap<usize, u64> = HashMap::new();
    for client in clients {
        for (doc, tag, append) in client.await.expect("client") {
            *writes.entry(doc).or_default() += 1;
            if append {
                expected_items.entry(doc).or_default().push(tag);
            }
        }
    }
    // The restarted process is a new member at the old address.
    let after = settled(&http, &members[0].url, 3).await;
    let id_at = |view: &Value| {
        view["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["address"] == json!(members[2].address()))
            .map(|m| m["id"].clone())
            .expect("member 2 listed")
    };
    assert_ne!(id_at(&before), id_at(&after));
    for d in 0..DOCS {
        let (status, doc) = get(&http, &format!("{}/v1/documents/hot/d{d}", urls[d % 3])).await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(
            doc["version"].as_u64(),
            Some(1 + writes[&d]),
            "d{d}: every acknowledged write applied exactly once"
        );
        let items: Vec<String> = doc["item"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|v| v.as_str().expect("a tag").to_string())
            .collect();
        let mut sorted = items.clone();
        sorted.sort();
        let mut want = expected_items[&d].clone();
        want.sort();
        assert_eq!(sorted, want, "d{d}: each acknowledged append exactly once");
        // Each client's appends to this document kept their order.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for item in &items {
            let (client, k) = item.split_once('-').expect("c-k");
            let k: usize = k.parse().expect("k");
            if let Some(before) = last.insert(client, k) {
                assert!(
                    before < k,
                    "d{d}: {client}'s appends out of order: {items:?}"
                );
            }
        }
    }
    let (_, view) = get(&http, &format!("{}/v1/cluster", urls[0])).await;
    let backlog: u64 = view["members"]
        .as_array()
        .expect("members")
        .iter()
        .flat_map(|m| m["partitions"].as_array().cloned().unwrap_or_default())
        .map(|p| p["backlog"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(backlog, 0, "every stream entry acknowledged: {view}");
}

/// A webhook that takes its time: long enough to pause its caller midway.
async fn slow_service() -> String {
    async fn resolve(Json(ctx): Json<Value>) -> Json<Value> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut item = ctx["existing"].as_object().cloned().unwrap_or_default();
        if let Some(incoming) = ctx["incoming"].as_object() {
            item.extend(incoming.clone());
        }
        Json(json!({"action": "resolve", "item": item}))
    }
    crate::support::webhook(post(resolve)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_its_lease_cannot_write_what_it_decided() {
    let store = fresh_postgres_database().await;
    let prefix = redis_prefix();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Member::start(&store, &prefix).await);
    }
    let http = reqwest::Client::new();
    let view = settled(&http, &members[0].url, 3).await;
    let url = slow_service().await;
    configure(
        &http,
        &members.iter().collect::<Vec<_>>(),
        "slow",
        json!({"handler": {"webhook": {"url": url, "timeout_ms": 10000}}}),
    )
    .await;
    // A document whose partition member 0 owns.
    let paused = &members[0];
    let owned: Vec<u32> = view["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["address"] == json!(paused.address()))
        .expect("member 0 is listed")["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["partition"].as_u64().expect("n") as u32)
        .collect();
    let partition = owned[0];
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| partition_of(&DocKey::new("slow", k.clone()), PARTITIONS) == partition)
        .expect("a key");
    let doc_url = format!("{}/v1/documents/slow/{key}", members[1].url);
    for (id, base) in [("v1", None), ("v2", Some(1))] {
        let mut body = json!({"id": id, "client": "ann", "collection": "slow", "key": key, "op": "patch", "value": {"v": id}});
        if let Some(base) = base {
            body["base_version"] = json!(base);
        }
        let r = http
            .post(format!("{}/v1/mutations", paused.url))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 200);
    }

    // A conflicting patch: member 0 calls the slow webhook, and is paused
    // while it waits.
    let stale = json!({"id": "late", "client": "bob", "collection": "slow", "key": key, "op": "patch", "value": {"late": true}, "base_version": 1});
    let request = {
        let (http, url, stale) = (http.clone(), paused.url.clone(), stale.clone());
        tokio::spawn(async move {
            let r = http
                .post(format!("{url}/v1/mutations"))
                .json(&stale)
                .send()
                .await
                .expect("answered after SIGCONT");
            (r.status().as_u16(), r.json::<Value>().await.expect("JSON"))
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    paused.signal("-STOP");
    // The others take its partitions once its lease runs out.
    let mut moved = false;
    for _ in 0..200 {
        let (_, view) = get(&http, &format!("{}/v1/cluster", members[1].url)).await;
        let holder = view["members"].as_array().and_then(|ms| {
            ms.iter().find(|m| {
                m["partitions"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["partition"] == json!(partition)))
            })
        });
        if holder.is_some_and(|m| m["address"] != json!(paused.address())) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        moved,
        "partition {partition} never moved off the paused member"
    );
    paused.signal("-CONT");

    // Its decision, made under the old lease, is refused by the store.
    let (status, body) = request.await.expect("request");
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (503, json!("partition_moved")),
        "{body}"
    );
    let (_, doc) = get(&http, &doc_url).await;
    assert_eq!(doc["version"], json!(2), "nothing written: {doc}");
    assert!(doc["item"].get("late").is_none(), "{doc}");
    let (_, metrics) = (
        0,
        http.get(format!("{}/metrics", paused.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text"),
    );
    assert!(
        metrics.lines().any(|l| l
            .starts_with("sluice_mutations_refused_total{reason=\"partition_moved\"}")
            && !l.ends_with(" 0")),
        "the fenced commit is counted"
    );
    // Resent anywhere, the new owner decides it.
    let (status, body) = until_answered(&http, &[members[2].url.clone()], 0, &stale).await;
    assert_eq!(
        (status, body["outcome"].clone()),
        (200, json!("merged")),
        "{body}"
    );
    assert_eq!(body["version"], json!(3));
}
