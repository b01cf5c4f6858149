//! Async accepts (`?wait=false`), the outcome event stream, and what survives
//! a crash or a shutdown.

use crate::support::{TestServer, error_code, free_port, wait_healthy};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLOW: &str = "function resolve(ctx) { const end = Date.now() + 800; while (Date.now() < end) {} return {action: 'resolve', item: ctx.existing}; }";

#[tokio::test]
async fn an_async_accept_answers_202_then_the_outcome() {
    let s = TestServer::with(|c| c.script.time_ms_max = 5_000).await;
    // A conflict runs a slow script and holds the key's lane.
    let blocker = s.hold_lane("slow", 800).await;

    let body = json!({"id": "a1", "client": "phone", "collection": "slow", "key": "k", "op": "patch", "value": {"x": 1}});
    let (status, accepted) = s
        .post_raw("/v1/mutations?wait=false", body.to_string())
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(
        (accepted["id"].clone(), accepted["status"].clone()),
        (json!("a1"), json!("queued"))
    );
    assert!(accepted["score"].as_f64().is_some());
    assert_eq!(
        s.get("/v1/mutations/a1?client=phone").await,
        (200, accepted.clone()),
        "queued while it waits"
    );
    assert_eq!(
        s.post_raw("/v1/mutations?wait=false", body.to_string())
            .await,
        (202, accepted.clone()),
        "a resend gets the same 202"
    );

    assert_eq!(blocker.await.expect("task").0, 200);
    let mut decided = Value::Null;
    for _ in 0..100 {
        decided = s.get("/v1/mutations/a1?client=phone").await.1;
        if decided.get("outcome").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (decided["outcome"].clone(), decided["version"].clone()),
        (json!("applied"), json!(4)),
        "{decided}"
    );
    assert_eq!(
        s.post_raw("/v1/mutations?wait=false", body.to_string())
            .await,
        (200, decided.clone()),
        "once decided, a resend gets the outcome"
    );
    assert_eq!(
        s.post(body).await,
        (200, decided),
        "and so does a synchronous resend"
    );
    assert_eq!(
        s.get("/v1/documents/slow/k").await.1["version"],
        json!(4),
        "applied once"
    );

    let (status, answer) = s.post_raw("/v1/mutations?wait=maybe", "{}").await;
    assert_eq!((status, error_code(&answer)), (400, "invalid_request"));
}

/// Reads Server-Sent Events until `count` have arrived: (id, event, data).
pub(crate) async fn read_events(
    response: &mut reqwest::Response,
    count: usize,
) -> Vec<(String, String, Value)> {
    let mut events = Vec::new();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} events arrived: {text}",
            events.len()
        );
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an event in time")
            .expect("stream");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("stream still open")));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let (mut id, mut name, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                events.push((id, name, serde_json::from_str(&data).expect("JSON data")));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_event_stream_carries_a_clients_outcomes_and_resumes() {
    let s = TestServer::embedded().await;
    let mut stream = s
        .http
        .get(format!("{}/v1/events?client=ann", s.url))
        .send()
        .await
        .expect("GET");
    assert_eq!(stream.status().as_u16(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );

    s.post(json!({"id": "e1", "client": "ann", "collection": "c", "key": "k", "op": "put", "value": {"v": 1}})).await;
    s.post(json!({"id": "x1", "client": "bob", "collection": "c", "key": "k", "op": "put", "value": {"v": 2}})).await;
    let (status, _) = s.post(json!({"id": "e2", "client": "ann", "collection": "c", "key": "k", "op": "put", "value": {}, "base_version": 1})).await;
    assert_eq!(status, 409);
    let (status, _) = s.post_raw("/v1/mutations?wait=false", json!({"id": "e3", "client": "ann", "collection": "c", "key": "j", "op": "put", "value": {}}).to_string()).await;
    assert_eq!(status, 202);

    let events = read_events(&mut stream, 3).await;
    let ids: Vec<&str> = events
        .iter()
        .map(|(_, _, d)| d["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["e1", "e2", "e3"], "only ann's outcomes, in order");
    assert!(events.iter().all(|(_, name, _)| name == "outcome"));
    // Ids are opaque: they do not count, so they show no gaps where other
    // clients' outcomes came between.
    for (id, _, _) in &events {
        assert!(
            id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
    }
    let distinct: std::collections::HashSet<&String> = events.iter().map(|e| &e.0).collect();
    assert_eq!(distinct.len(), events.len(), "ids are distinct");
    assert_eq!(
        events[1].2["outcome"],
        json!("rejected"),
        "a rejection is an outcome event"
    );
    drop(stream);

    // A dropped stream resumes after the last event it saw.
    let mut resumed = s
        .http
        .get(format!("{}/v1/events?client=ann", s.url))
        .header("Last-Event-ID", events[0].0.as_str())
        .send()
        .await
        .expect("GET");
    let again = read_events(&mut resumed, 2).await;
    assert_eq!(again, events[1..].to_vec());
    drop(resumed);

    // A new subscriber gets what comes from now on, unless it asks for
    // every kept answer with since=start, or for those after an id.
    let mut fresh = s
        .http
        .get(format!("{}/v1/events?client=ann", s.url))
        .send()
        .await
        .expect("GET");
    s.post(json!({"id": "e4", "client": "ann", "collection": "c", "key": "k", "op": "put", "value": {}})).await;
    let now_on = read_events(&mut fresh, 1).await;
    assert_eq!(now_on[0].2["id"], json!("e4"), "from now on");
    drop(fresh);
    let mut from_start = s
        .http
        .get(format!("{}/v1/events?client=ann&since=start", s.url))
        .send()
        .await
        .expect("GET");
    let all = read_events(&mut from_start, 4).await;
    assert_eq!(all[..3], events[..]);
    assert_eq!(all[3], now_on[0]);
    drop(from_start);
    let mut after = s
        .http
        .get(format!(
            "{}/v1/events?client=ann&since={}",
            s.url, events[1].0
        ))
        .send()
        .await
        .expect("GET");
    let later = read_events(&mut after, 2).await;
    assert_eq!(
        (later[0].clone(), later[1].clone()),
        (events[2].clone(), now_on[0].clone())
    );
    for (query, header) in [("&since=12", None), ("", Some("1")), ("&since=", None)] {
        let mut request = s.http.get(format!("{}/v1/events?client=ann{query}", s.url));
        if let Some(h) = header {
            request = request.header("Last-Event-ID", h);
        }
        let response = request.send().await.expect("GET");
        assert_eq!(response.status().as_u16(), 400, "{query} {header:?}");
    }
}

fn sluice_binary(data: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .env_remove("SLUICE_TEST_POSTGRES_URL")
        .env("SLUICE_SHUTDOWN_DEADLINE_MS", "20000")
        .env("SLUICE_SCRIPT__TIME_MS_MAX", "5000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice")
}

/// The real `sluice` binary on a data directory and a port of its own,
/// killed when dropped.
struct Binary {
    data: tempfile::TempDir,
    port: u16,
    url: String,
    http: reqwest::Client,
    child: Option<Child>,
}

impl Binary {
    async fn start() -> Binary {
        let port = free_port();
        let mut binary = Binary {
            data: tempfile::tempdir().expect("temp dir"),
            port,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            child: None,
        };
        binary.restart().await;
        binary
    }

    /// Starts the binary again on the same data directory and port.
    async fn restart(&mut self) {
        self.child = Some(sluice_binary(self.data.path(), self.port));
        wait_healthy(&self.http, &self.url).await;
    }

    /// `kill -9`, and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GETs `url` and reads its JSON body.
async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON body")
}

async fn wait_drained(http: &reqwest::Client, url: &str) {
    for _ in 0..400 {
        let stats = get_json(http, format!("{url}/v1/stats")).await;
        if stats["queue_depth"] == json!(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the queue did not drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_mutation_survives_a_kill_and_applies_once() {
    let mut sluice = Binary::start().await;
    let (http, url) = (sluice.http.clone(), sluice.url.clone());
    http.put(format!("{url}/v1/collections/burst"))
        .json(&json!({"handler": "automerge"}))
        .send()
        .await
        .expect("PUT");
    for k in 0..4 {
        http.post(format!("{url}/v1/mutations")).json(&json!({"collection": "burst", "key": format!("k{k}"), "op": "put", "value": {"items": []}})).send().await.expect("POST");
    }
    // A burst of async appends from several senders; kill -9 in the middle of it.
    let mut senders = Vec::new();
    for sender in 0..8 {
        let (http, url) = (http.clone(), url.clone());
        senders.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for i in 0..200 {
                let id = format!("s{sender}-{i}");
                let body = json!({"id": id, "client": "burst", "collection": "burst", "key": format!("k{}", i % 4),
                                  "op": "patch", "value": {"items": [id]}, "base_version": 0});
                match http.post(format!("{url}/v1/mutations?wait=false")).json(&body).send().await {
                    Ok(r) if r.status().as_u16() == 202 => accepted.push(id),
                    Ok(r) if r.status().as_u16() == 200 => accepted.push(id),
                    _ => {}
                }
            }
            accepted
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sluice.kill();
    let mut accepted = Vec::new();
    for sender in senders {
        accepted.extend(sender.await.expect("sender"));
    }
    assert!(
        accepted.len() > 20,
        "the burst was under way when the server died: {}",
        accepted.len()
    );

    sluice.restart().await;
    wait_drained(&http, &url).await;
    let mut seen = std::collections::HashMap::new();
    for k in 0..4 {
        let doc = get_json(&http, format!("{url}/v1/documents/burst/k{k}")).await;
        for element in doc["item"]["items"].as_array().expect("items") {
            *seen
                .entry(element.as_str().expect("text").to_owned())
                .or_insert(0) += 1;
        }
    }
    for id in &accepted {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "{id} was accepted: it must be applied exactly once"
        );
    }
    assert!(seen.values().all(|n| *n == 1), "nothing applied twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_mutations_drains_and_exits_zero() {
    let mut sluice = Binary::start().await;
    let (http, url) = (sluice.http.clone(), sluice.url.clone());
    http.put(format!("{url}/v1/collections/slow"))
        .json(&json!({"handler": {"script": SLOW}}))
        .send()
        .await
        .expect("PUT");
    for _ in 0..2 {
        http.post(format!("{url}/v1/mutations"))
            .json(&json!({"collection": "slow", "key": "k", "op": "put", "value": {}}))
            .send()
            .await
            .expect("POST");
    }
    // Queued behind a slow conflict: accepted, not yet decided.
    let slow =
        json!({"collection": "slow", "key": "k", "op": "put", "value": {}, "base_version": 1});
    let in_flight = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(format!("{url}/v1/mutations"))
                .json(&slow)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = json!({"id": "q1", "client": "c", "collection": "slow", "key": "k", "op": "patch", "value": {"q": 1}});
    let status = http
        .post(format!("{url}/v1/mutations?wait=false"))
        .json(&queued)
        .send()
        .await
        .expect("POST")
        .status();
    assert_eq!(status.as_u16(), 202);

    let mut server = sluice.child.take().expect("running");
    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = http
        .post(format!("{url}/v1/mutations"))
        .json(&json!({"collection": "c", "key": "k", "op": "put", "value": {}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status().as_u16(), 503);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(error_code(&body), "shutting_down");
    assert_eq!(
        in_flight.await.expect("task").expect("answered"),
        200,
        "what was in flight is answered"
    );
    let exit = tokio::task::spawn_blocking(move || server.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "exits 0 after draining: {exit:?}");

    // Drained before exit: the queued mutation was decided, not left behind.
    sluice.restart().await;
    let decided = get_json(&http, format!("{url}/v1/mutations/q1?client=c")).await;
    assert_eq!(decided["outcome"], json!("applied"), "{decided}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_fast_429s_and_no_timeouts() {
    // A small queue, so the offered load is far above what it admits.
    let s = TestServer::with(|c| {
        c.queue.queue_len_max = 32;
        c.queue.lane_len_max = 2;
    })
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut senders = Vec::new();
    for sender in 0..64 {
        let (http, url) = (http.clone(), s.url.clone());
        senders.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..25 {
                let body = json!({"collection": "hot", "key": format!("k{}", (sender + i) % 6), "op": "patch", "value": {"n": i}});
                let started = Instant::now();
                let answer = http.post(format!("{url}/v1/mutations")).json(&body).send().await;
                let elapsed = started.elapsed();
                match answer {
                    Ok(r) => {
                        let retry_after = r.headers().get("retry-after").is_some();
                        seen.push((r.status().as_u16(), elapsed, retry_after));
                    }
                    Err(e) => panic!("a request failed instead of being answered: {e}"),
                }
            }
            seen
        }));
    }
    let mut answers = Vec::new();
    for sender in senders {
        answers.extend(sender.await.expect("sender"));
    }
    let refused: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == 429)
        .collect();
    let mut admitted: Vec<Duration> = answers
        .iter()
        .filter(|(status, ..)| *status == 200)
        .map(|(_, t, _)| *t)
        .collect();
    assert_eq!(
        refused.len() + admitted.len(),
        answers.len(),
        "every answer is 200 or 429"
    );
    assert!(!refused.is_empty(), "the overload was refused in part");
    assert!(
        refused.iter().all(|(_, _, retry_after)| *retry_after),
        "429s say when to retry"
    );
    let slowest_refusal = refused.iter().map(|(_, t, _)| *t).max().unwrap_or_default();
    assert!(
        slowest_refusal < Duration::from_secs(2),
        "a refusal is fast: {slowest_refusal:?}"
    );
    admitted.sort();
    let p99 = admitted[admitted.len() * 99 / 100];
    assert!(
        p99 < Duration::from_secs(5),
        "admitted mutations keep a bounded latency: p99 {p99:?}"
    );
    let stats = s.get("/v1/stats").await.1;
    assert_eq!(stats["queue_depth"], json!(0));
}

/// The door: when mutations keep staying longer than `queue_wait_max_ms`,
/// requests beyond its limit get a fast 429 `overloaded`, the admitted ones
/// are decided, and nothing is half-applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_queue_closes_the_door_with_fast_429s() {
    let s = TestServer::embedded().await;
    // Every conflicting mutation takes 20 ms of script; 100 clients sending
    // one after another keep a queue standing for seconds, well past the
    // door's first windows.
    let (status, body) = s
        .put(
            "/v1/collections/slow",
            json!({"handler": {"script": "function resolve(ctx) { const end = Date.now() + 20; while (Date.now() < end) {} return {action: 'resolve', item: ctx.incoming}; }"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (clients, rounds) = (100, 4);
    let puts: Vec<Value> = (0..clients * rounds)
        .map(|k| json!({"collection": "slow", "key": format!("k{k}"), "op": "put", "value": {"n": 0}}))
        .collect();
    let (status, body) = s
        .post_raw(
            "/v1/mutations:batch",
            json!({ "mutations": puts }).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let mut senders = Vec::new();
    for c in 0..clients {
        let (http, url) = (http.clone(), s.url.clone());
        senders.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for round in 0..rounds {
                let k = c * rounds + round;
                // Base 0 against version 1: a conflict, so the script runs.
                let body = json!({"collection": "slow", "key": format!("k{k}"), "op": "put", "value": {"n": 1}, "base_version": 0});
                let started = Instant::now();
                let r = http
                    .post(format!("{url}/v1/mutations"))
                    .json(&body)
                    .send()
                    .await
                    .expect("answered");
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok());
                let body: Value = r.json().await.expect("JSON");
                seen.push((k, status, body, retry_after, started.elapsed()));
            }
            seen
        }));
    }
    let mut answers = Vec::new();
    for sender in senders {
        answers.extend(sender.await.expect("sender"));
    }
    // Read back once everything is answered: while the door is closed, a
    // read would be refused too.
    let mut refused = 0;
    for (k, status, body, retry_after, elapsed) in &answers {
        let (_, doc) = s.get(&format!("/v1/documents/slow/k{k}")).await;
        match status {
            200 => assert_eq!(doc["version"], json!(2), "k{k} decided once: {body}"),
            // Scripts racing for two cores can hit their time limit: a
            // rejection, decided, nothing written.
            409 => assert_eq!(doc["version"], json!(1), "k{k} rejected: {body}"),
            429 => {
                refused += 1;
                assert_eq!(body["error"]["code"], json!("overloaded"), "{body}");
                // When what is inside will have drained, in whole seconds,
                // as its message says too.
                let seconds = retry_after.expect("a 429 says when to retry");
                assert!((1..=30).contains(&seconds), "Retry-After {seconds}");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(&format!("retry after {seconds} s")),
                    "{message}"
                );
                assert!(
                    *elapsed < Duration::from_secs(2),
                    "a refusal is fast: {elapsed:?}"
                );
                assert_eq!(doc["version"], json!(1), "k{k} refused: nothing applied");
            }
            other => panic!("k{k}: unexpected {other}: {body}"),
        }
    }
    assert!(refused > 0, "a standing queue closed the door");
    assert!(refused < answers.len(), "and the door let some in");
}

/// A queue that stopped moving closes the door, and the door answers before
/// the body is read: a client that sent only its request head gets its 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_queue_refuses_before_the_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::with(|c| c.script.time_ms_max = 5_000).await;
    // A 2 s script holds lane `k`; 80 more mutations of `k` wait behind it.
    let blocker = s.hold_lane("slow", 2_000).await;
    let waiting: Vec<_> = (0..80)
        .map(|i| {
            s.spawn_post(json!({"collection": "slow", "key": "k", "op": "put", "value": {"i": i}}))
        })
        .collect();
    // Nothing is taken from the queue for a whole window.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let address = s.url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/mutations HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(1), socket.read(&mut answer))
        .await
        .expect("answered without the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("overloaded"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "a body never read closes the connection: {answer}"
    );
    // A refused request whose small body did arrive keeps its connection:
    // the body is drained unparsed, and the next request is served on it.
    let mut socket = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let body = r#"{"collection": "slow", "key": "z", "op": "put", "value": {}}"#;
    let request = format!(
        "POST /v1/mutations HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n",
        body.len()
    );
    socket
        .write_all(request.as_bytes())
        .await
        .expect("requests");
    let mut answers = String::new();
    let mut buffer = vec![0u8; 8192];
    while !answers.contains("HTTP/1.1 200") {
        let read = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buffer))
            .await
            .expect("both answered")
            .expect("read");
        assert!(
            read > 0,
            "the connection was closed after the refusal: {answers}"
        );
        answers.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(answers.starts_with("HTTP/1.1 429"), "{answers}");
    // The stall ends: everything let in is decided, each once; the last
    // of the 80 may have come after the door closed.
    assert_eq!(blocker.await.expect("blocker").0, 200);
    let mut applied = 0;
    for w in waiting {
        let (status, body) = w.await.expect("waiting");
        match status {
            200 => applied += 1,
            429 => assert_eq!(error_code(&body), "overloaded", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // With the blocker, 64 inside are never refused.
    assert!(
        applied >= 63,
        "a handful is never refused: {applied} applied"
    );
    let (_, doc) = s.get("/v1/documents/slow/k").await;
    assert_eq!(
        doc["version"],
        json!(3 + applied),
        "each applied once: {doc}"
    );
    // And the door opens again.
    let (status, body) = s
        .post(json!({"collection": "slow", "key": "other", "op": "put", "value": {}}))
        .await;
    assert_eq!(status, 200, "{body}");
}
