//! What an operator sees: `/metrics` agrees with what the clients were told,
//! and the logs say which mutation they are about.

use crate::support::{TestServer, error_code, free_port, sample, wait_healthy};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The sum of every series of `family` whose labels contain all of `labels`.
fn sum(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            if name != family {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().expect("a number"))
        })
        .sum()
}

async fn scrape(s: &TestServer) -> String {
    let response = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.expect("text")
}

/// What one client was told, tallied the way `/metrics` labels it.
#[derive(Default, Debug, Clone, PartialEq)]
struct Tally {
    /// (outcome, handler) → count
    decided: BTreeMap<(String, String), u64>,
    /// error code → count
    refused: BTreeMap<String, u64>,
    /// (handler, resolution) → count
    conflicts: BTreeMap<(String, String), u64>,
    accepted: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (k, v) in other.decided {
            *self.decided.entry(k).or_default() += v;
        }
        for (k, v) in other.refused {
            *self.refused.entry(k).or_default() += v;
        }
        for (k, v) in other.conflicts {
            *self.conflicts.entry(k).or_default() += v;
        }
        self.accepted += other.accepted;
    }

    /// Counts one decided answer of a mutation of a collection with `handler`.
    fn answer(&mut self, status: u16, body: &Value, handler: &str) {
        match status {
            200 | 409 => {
                let outcome = body["outcome"].as_str().expect("an outcome").to_owned();
                *self
                    .decided
                    .entry((outcome.clone(), handler.to_owned()))
                    .or_default() += 1;
                if !body["conflict"].is_null() {
                    let resolution = if outcome == "rejected" {
                        "rejected"
                    } else {
                        "merged"
                    };
                    *self
                        .conflicts
                        .entry((handler.to_owned(), resolution.to_owned()))
                        .or_default() += 1;
                }
            }
            404 => {
                assert_eq!(error_code(body), "not_found");
                *self
                    .decided
                    .entry(("not_found".into(), handler.to_owned()))
                    .or_default() += 1;
            }
            429 | 503 | 422 => {
                *self.refused.entry(error_code(body).to_owned()).or_default() += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
}

/// One client: reads, then writes with the version it read (often stale
/// by the time it lands, as other clients write the same keys), now and
/// then deletes a document that does not exist, and sends some
/// asynchronously, polling for their outcomes.
async fn client(url: String, n: usize, seed: usize) -> Tally {
    let http = reqwest::Client::new();
    let mut tally = Tally::default();
    let name = format!("c{seed}");
    for i in 0..n {
        let (collection, handler) = if (i + seed).is_multiple_of(2) {
            ("opt", "optimistic")
        } else {
            ("auto", "automerge")
        };
        let key = format!("k{}", (i * 7 + seed) % 5);
        let id = format!("{name}-{i}");
        let read = http
            .get(format!("{url}/v1/documents/{collection}/{key}"))
            .send()
            .await
            .expect("read");
        let base = if read.status() == 200 {
            read.json::<Value>().await.expect("json")["version"]
                .as_u64()
                .expect("version")
        } else {
            0
        };
        let mutation = if i % 11 == 3 {
            json!({"id": id, "client": name, "collection": collection, "key": format!("never-{seed}-{i}"), "op": "delete"})
        } else {
            json!({"id": id, "client": name, "collection": collection, "key": key, "op": "patch",
                   "value": {"by": name, "entries": [id]}, "base_version": base})
        };
        let asynchronous = i % 5 == 4;
        let target = if asynchronous {
            format!("{url}/v1/mutations?wait=false")
        } else {
            format!("{url}/v1/mutations")
        };
        let response = http
            .post(target)
            .json(&mutation)
            .send()
            .await
            .expect("post");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        if status == 202 {
            tally.accepted += 1;
            // The outcome comes later: poll until it is decided.
            let (status, body) = loop {
                let r = http
                    .get(format!("{url}/v1/mutations/{id}?client={name}"))
                    .send()
                    .await
                    .expect("poll");
                let body: Value = r.json().await.expect("json");
                if body["status"] != "queued" {
                    // The stored answer comes back with 200; its own
                    // status is in its shape.
                    let status = if body.get("error").is_some() {
                        match error_code(&body) {
                            "not_found" => 404,
                            _ => 503,
                        }
                    } else if body["outcome"] == "rejected" {
                        409
                    } else {
                        200
                    };
                    break (status, body);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            tally.answer(status, &body, handler);
        } else {
            tally.answer(status, &body, handler);
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_agree_with_what_the_clients_saw() {
    let s = TestServer::with(|c| c.queue.queue_len_max = 200).await;
    let (status, _) = s
        .put(
            "/v1/collections/auto",
            json!({"handler": "automerge", "set_fields": ["entries"]}),
        )
        .await;
    assert_eq!(status, 200);

    // Scrape all along the workload: counters only ever go up.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraping = tokio::spawn({
        let (url, stop) = (s.url.clone(), stop.clone());
        async move {
            let http = reqwest::Client::new();
            let mut last = 0.0;
            let mut scrapes = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = http
                    .get(format!("{url}/metrics"))
                    .send()
                    .await
                    .expect("scrape")
                    .text()
                    .await
                    .expect("text");
                let decided = sum(&text, "sluice_mutations_decided_total", &[]);
                assert!(decided >= last, "a counter went down: {last} → {decided}");
                last = decided;
                scrapes += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (scrapes, last)
        }
    });

    let clients: Vec<_> = (0..16)
        .map(|seed| tokio::spawn(client(s.url.clone(), 40, seed)))
        .collect();
    let mut seen = Tally::default();
    for c in clients {
        seen.merge(c.await.expect("client"));
    }
    // A batch larger than the queue: refused whole, each of its mutations counted.
    let batch: Vec<Value> = (0..201)
        .map(|i| json!({"id": format!("batch-{i}"), "collection": "opt", "key": format!("b{i}"), "op": "put", "value": {}}))
        .collect();
    let (status, body) = s
        .post_raw(
            "/v1/mutations:batch",
            serde_json::to_vec(&json!({ "mutations": batch })).expect("json"),
        )
        .await;
    assert_eq!((status, error_code(&body)), (429, "queue_full"));
    *seen.refused.entry("queue_full".into()).or_default() += 201;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (scrapes, last_scraped) = scraping.await.expect("the scraper saw counters only rise");
    assert!(scrapes >= 2, "{scrapes} scrapes during the workload");

    let text = scrape(&s).await;
    assert!(!seen.conflicts.is_empty(), "the workload must conflict");
    assert!(seen.accepted > 0);
    for ((outcome, handler), n) in &seen.decided {
        assert_eq!(
            sample(
                &text,
                &format!(
                    "sluice_mutations_decided_total{{outcome=\"{outcome}\",handler=\"{handler}\"}}"
                )
            ),
            *n as f64,
            "decided {outcome} by {handler}"
        );
    }
    let decided: u64 = seen.decided.values().sum();
    assert_eq!(
        sum(&text, "sluice_mutations_decided_total", &[]),
        decided as f64
    );
    for (code, n) in &seen.refused {
        assert_eq!(
            sample(
                &text,
                &format!("sluice_mutations_refused_total{{reason=\"{code}\"}}")
            ),
            *n as f64,
            "refused {code}"
        );
    }
    assert_eq!(
        sum(&text, "sluice_mutations_refused_total", &[]),
        seen.refused.values().sum::<u64>() as f64
    );
    for ((handler, resolution), n) in &seen.conflicts {
        assert_eq!(
            sum(
                &text,
                "sluice_conflicts_total",
                &[("handler", handler), ("resolution", resolution)]
            ),
            *n as f64,
            "conflicts of {handler} ending {resolution}"
        );
    }
    assert_eq!(
        sum(&text, "sluice_conflicts_total", &[]),
        seen.conflicts.values().sum::<u64>() as f64
    );
    assert_eq!(
        sample(&text, "sluice_mutations_accepted_total"),
        seen.accepted as f64
    );
    // Every decided mutation was dispatched once, waited once and scored once.
    assert_eq!(
        sample(&text, "sluice_mutations_dispatched_total"),
        decided as f64
    );
    assert_eq!(
        sample(&text, "sluice_queue_wait_seconds_count"),
        decided as f64
    );
    assert_eq!(sample(&text, "sluice_conflict_score_count"), decided as f64);
    assert_eq!(
        sample(&text, "sluice_queue_wait_seconds_bucket{le=\"+Inf\"}"),
        decided as f64
    );
    assert!(sample(&text, "sluice_lane_dispatches_total") >= 1.0);
    assert!(sample(&text, "sluice_lane_dispatches_total") <= decided as f64);
    assert!(sum(&text, "sluice_store_seconds_count", &[("op", "commit")]) >= 1.0);
    assert_eq!(sample(&text, "sluice_queue_depth"), 0.0);
    assert_eq!(sample(&text, "sluice_in_flight_writes"), 0.0);
    assert!(sample(&text, "sluice_concurrency_limit") >= 1.0);
    assert!((0.0..=1.0).contains(&sample(&text, "sluice_load")));
    // The model has seen both classes, so its rolling quality is a number.
    let auc = sample(&text, "sluice_model_auc");
    assert!((0.0..=1.0).contains(&auc), "auc {auc}");
    assert!(sample(&text, "sluice_model_log_loss") > 0.0);
    assert_eq!(sample(&text, "sluice_build_info{version=\"0.1.0\"}"), 1.0);
    // Bounded label sets: no document key or client id ever becomes a label.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("\"k1\"") && !line.contains("\"c1\""),
            "a key or client leaked into a label: {line}"
        );
    }
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert!(series < 400, "{series} series");
    assert!(last_scraped <= decided as f64);
}

#[tokio::test]
async fn handler_runs_errors_and_time_outs_are_counted() {
    let s = TestServer::with(|c| c.script.time_ms_max = 50).await;
    // A webhook that accepts connections and never answers, and one where
    // nothing listens.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_url = format!("http://{}/resolve", silent.local_addr().expect("addr"));
    let closed_url = format!("http://127.0.0.1:{}/resolve", free_port());
    let cases = [
        (
            "fine",
            json!({"script": "function resolve(ctx) { return {action: 'resolve', item: ctx.existing}; }"}),
            ("script", "resolved"),
        ),
        (
            "slow",
            json!({"script": "function resolve(ctx) { while (true) {} }"}),
            ("script", "timeout"),
        ),
        (
            "broken",
            json!({"script": "function resolve(ctx) { throw new Error('no'); }"}),
            ("script", "error"),
        ),
        (
            "silent",
            json!({"webhook": {"url": silent_url, "timeout_ms": 100}}),
            ("webhook", "timeout"),
        ),
        (
            "closed",
            json!({"webhook": {"url": closed_url, "timeout_ms": 1000}}),
            ("webhook", "error"),
        ),
    ];
    for (collection, handler, _) in &cases {
        let (status, _) = s
            .put(
                &format!("/v1/collections/{collection}"),
                json!({ "handler": handler }),
            )
            .await;
        assert_eq!(status, 200);
        for version in 0..2 {
            let (status, _) = s
                .post(json!({"collection": collection, "key": "k", "op": "put", "value": {"v": version}}))
                .await;
            assert_eq!(status, 200);
        }
        s.post(json!({"collection": collection, "key": "k", "op": "put", "value": {}, "base_version": 1}))
            .await;
    }
    let text = scrape(&s).await;
    for (_, _, (handler, result)) in &cases {
        assert_eq!(
            sample(
                &text,
                &format!("sluice_handler_runs_total{{handler=\"{handler}\",result=\"{result}\"}}")
            ),
            1.0,
            "{handler} {result}"
        );
    }
    assert_eq!(sum(&text, "sluice_handler_runs_total", &[]), 5.0);
    assert_eq!(
        sample(&text, "sluice_handler_seconds_count{handler=\"script\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "sluice_handler_seconds_count{handler=\"webhook\"}"),
        2.0
    );
    // Every failed run rejected its mutation: two scripts, two webhooks.
    for handler in ["script", "webhook"] {
        assert_eq!(
            sum(
                &text,
                "sluice_conflicts_total",
                &[("handler", handler), ("resolution", "rejected")]
            ),
            2.0,
            "{handler}"
        );
    }
    drop(silent);
}

/// The mutations the log tests send: (id, collection, key). The second and
/// the fourth conflict; the fourth's script handler throws.
const LOGGED: [(&str, &str, &str, Option<u64>); 4] = [
    ("log-0", "notes", "a/b", None),
    ("log-1", "notes", "a/b", Some(0)),
    ("log-2", "scripted", "x", None),
    ("log-3", "scripted", "x", Some(0)),
];

/// Runs the real binary at debug level with `args`, sends [`LOGGED`], stops
/// it with SIGTERM and returns what it logged.
async fn logs_of(args: &[&str]) -> String {
    logs_of_with(args, &[]).await
}

/// `logs_of`, sending `extra` mutations after [`LOGGED`].
async fn logs_of_with(args: &[&str], extra: &[Value]) -> String {
    logs_of_configured(args, json!({}), extra).await
}

/// `logs_of_with`, the `scripted` collection configured with `policy` too.
async fn logs_of_configured(args: &[&str], policy: Value, extra: &[Value]) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path())
        .args(args)
        .env("RUST_LOG", "sluice=debug")
        .env("SLUICE_SCRIPT__TIME_MS_MAX", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let http = reqwest::Client::new();
    wait_healthy(&http, &url).await;
    let mut scripted =
        json!({"handler": {"script": "function resolve() { throw new Error('nope'); }"}});
    if let (Some(config), Some(policy)) = (scripted.as_object_mut(), policy.as_object()) {
        config.extend(policy.clone());
    }
    let put = http
        .put(format!("{url}/v1/collections/scripted"))
        .json(&scripted)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    for (i, (id, collection, key, base)) in LOGGED.into_iter().enumerate() {
        let status = http
            .post(format!("{url}/v1/mutations"))
            .json(&json!({"id": id, "collection": collection, "key": key, "op": "put", "value": {"i": i}, "base_version": base}))
            .send()
            .await
            .expect("post")
            .status()
            .as_u16();
        assert!(matches!(status, 200 | 202 | 409), "{status}");
    }
    for mutation in extra {
        let response = http
            .post(format!("{url}/v1/mutations"))
            .json(mutation)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 200);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("sluice exits");
    assert!(output.status.success(), "{:?}", output.status);
    String::from_utf8(output.stderr).expect("utf-8")
}

/// A failed handler's line says what became of the mutation.
#[tokio::test]
async fn a_failed_handler_logs_what_became_of_the_mutation() {
    let failed = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("conflict handler failed"))
            .map(str::to_owned)
            .collect()
    };
    let text = logs_of(&[]).await;
    let lines = failed(&text);
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("the mutation is rejected"),
        "{}",
        lines[0]
    );
    let text = logs_of_configured(&[], json!({"on_handler_failure": "quarantine"}), &[]).await;
    let lines = failed(&text);
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("the mutation is quarantined") && !lines[0].contains("rejected"),
        "{}",
        lines[0]
    );
}

/// By default the logs are for people: one line of text per event, with the
/// mutation's fields as `name=value`.
#[tokio::test]
async fn text_logs_are_human_readable_and_name_the_mutation() {
    let text = logs_of(&[]).await;
    assert!(text.lines().count() >= LOGGED.len(), "{text}");
    for line in text.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "a JSON line in the text log: {line}"
        );
    }
    for (id, collection, key, _) in LOGGED {
        let line = text
            .lines()
            .find(|l| l.contains("mutation decided") && l.contains(&format!("id={id} ")))
            .unwrap_or_else(|| panic!("no decided line for {id}:\n{text}"));
        assert!(
            line.contains(&format!("collection={collection}"))
                && line.contains(&format!("key={key}")),
            "{line}"
        );
    }
}

/// A key holding a newline cannot forge a line of the text log: control
/// characters inside a line are escaped.
#[tokio::test]
async fn a_key_with_a_newline_cannot_forge_a_log_line() {
    let hostile = "k\nINFO sluice: forged line\r\x1b[31m";
    let text = logs_of_with(
        &[],
        &[json!({"id": "forger", "collection": "notes", "key": hostile, "op": "put", "value": {}})],
    )
    .await;
    assert!(
        !text.lines().any(|l| l.starts_with("INFO sluice: forged")),
        "a forged line: {text}"
    );
    assert!(
        !text.contains('\r') && !text.contains('\x1b'),
        "raw control characters: {text:?}"
    );
    let decided = text
        .lines()
        .find(|l| l.contains("mutation decided") && l.contains("id=forger "))
        .unwrap_or_else(|| panic!("no decided line for the forger:\n{text}"));
    assert!(
        decided.contains("key=k\\nINFO sluice: forged line\\r\\x1b[31m"),
        "{decided}"
    );
}

/// With `--log-format json`: every line is a JSON object, and every line
/// about a mutation names its id, collection and key.
#[tokio::test]
async fn json_logs_name_the_mutation_of_every_line_about_one() {
    let text = logs_of(&["--log-format", "json"]).await;
    let mut decided = HashMap::new();
    let mut handler_failed = 0;
    for line in text.lines() {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let fields = &entry["fields"];
        let message = fields["message"].as_str().unwrap_or_default();
        let about_a_mutation = fields.get("id").is_some()
            || message.starts_with("mutation ")
            || message.contains("conflict handler");
        if about_a_mutation {
            for field in ["id", "collection", "key"] {
                assert!(
                    fields.get(field).is_some_and(|v| v.is_string()),
                    "no {field} in {line}"
                );
            }
        }
        if message == "mutation decided" {
            decided.insert(
                fields["id"].as_str().expect("id").to_owned(),
                (
                    fields["collection"].as_str().expect("c").to_owned(),
                    fields["key"].as_str().expect("k").to_owned(),
                ),
            );
        }
        if message.contains("conflict handler failed") {
            handler_failed += 1;
            assert_eq!(fields["id"], "log-3");
        }
    }
    assert_eq!(decided.len(), LOGGED.len(), "{text}");
    for (id, collection, key, _) in LOGGED {
        assert_eq!(decided[id], (collection.to_owned(), key.to_owned()));
    }
    assert_eq!(handler_failed, 1, "{text}");
}
