//! Custom handlers cannot stall anyone else. Six hostile scripts at once ran
//! 15–16 s each against a 50 ms limit, and a write to an unrelated
//! `optimistic` collection waited 14.8 s behind them.

use crate::support::TestServer;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Each hostile script, and what its rejection may say. A memory bomb
/// starved of CPU can reach its time limit before its memory limit: both
/// are true; a reason that is neither (`throw null` as out of memory) fails.
const HOSTILE: [(&str, &[&str]); 6] = [
    (
        "function resolve(ctx){var a=[];for(;;){try{a.push(new Array(100000).fill(1))}catch(e){a=[]}}}",
        &["memory limit", "time limit"],
    ),
    ("function resolve(ctx){for(;;){}}", &["time limit"]),
    (
        "function resolve(ctx){var a=[];for(;;){a.push('x'.repeat(1<<22)+a.length)}}",
        &["memory limit", "time limit"],
    ),
    ("function resolve(ctx){throw null}", &["threw null"]),
    (
        "function resolve(ctx){return resolve(ctx)}",
        &["script threw"],
    ),
    (
        "function resolve(ctx){return {action:'resolve',item:{s:'x'.repeat(1200000)}}}",
        &["-byte bound"],
    ),
];

/// The latencies of `n` sequential unconditional writes to `plain`.
async fn plain_writes(s: &TestServer, n: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let (status, body) = s
            .post(json!({"collection": "plain", "key": format!("k{}", i % 16), "op": "put", "value": {"i": i}}))
            .await;
        took.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
    }
    took
}

fn p99(mut took: Vec<Duration>) -> Duration {
    took.sort();
    took[took.len() * 99 / 100]
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// The server's runtime as it runs in production: several worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_scripts_stall_only_their_own_lanes() {
    // Long enough that a memory bomb starved of CPU by the other tests
    // still runs out of memory before it runs out of time.
    let s = Arc::new(TestServer::with(|c| c.script.time_ms_max = 250).await);
    for (i, (script, _)) in HOSTILE.iter().enumerate() {
        let (status, body) = s
            .put(
                &format!("/v1/collections/h{i}"),
                json!({"handler": {"script": script}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        for v in [1, 2] {
            let (status, _) = s
                .post(json!({"collection": format!("h{i}"), "key": "k", "op": "put", "value": {"v": v}}))
                .await;
            assert_eq!(status, 200);
        }
    }
    // Six hostile conflicts at a time, again and again, in turns with
    // quiet spells: the writes measured in both alternate, so the
    // machine's drift falls on both alike.
    let (stop, quiet) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let storms: Vec<_> = (0..HOSTILE.len())
        .map(|i| {
            let (s, stop, quiet) = (s.clone(), stop.clone(), quiet.clone());
            tokio::spawn(async move {
                let mut answers: Vec<(u16, Value)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if quiet.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let (status, body) = s
                        .post(json!({"collection": format!("h{i}"), "key": "k", "op": "put", "value": {"v": 3}, "base_version": 1}))
                        .await;
                    answers.push((status, body));
                }
                answers
            })
        })
        .collect();
    plain_writes(&s, 50).await;
    let (mut unloaded, mut loaded) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        unloaded.extend(plain_writes(&s, 50).await);
        quiet.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(150)).await;
        loaded.extend(plain_writes(&s, 50).await);
        quiet.store(true, Ordering::Relaxed);
        // The hostile runs under way end within 500 ms.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (unloaded, loaded) = (p99(unloaded), p99(loaded));

    for (i, storm) in storms.into_iter().enumerate() {
        let answers = storm.await.expect("storm");
        assert!(answers.len() >= 2, "h{i}: {} runs", answers.len());
        for (status, body) in &answers {
            assert_eq!(
                (status, &body["outcome"]),
                (&409, &json!("rejected")),
                "h{i}: {body}"
            );
            let reason = body["conflict"]["reason"].as_str().unwrap_or_default();
            assert!(
                HOSTILE[i].1.iter().any(|r| reason.contains(r)),
                "h{i} was rejected for the wrong reason: {reason}"
            );
        }
        // Nothing was written by any of them.
        let (_, doc) = s.get(&format!("/v1/documents/h{i}/k")).await;
        assert_eq!(
            (&doc["version"], &doc["item"]),
            (&json!(2), &json!({"v": 2}))
        );
    }
    // Every run ended within twice its limit: the script's own time, not
    // the wait for a script thread.
    let metrics = s.metrics().await;
    let runs = metric(&metrics, "sluice_handler_seconds_count{handler=\"script\"}");
    let within = metric(
        &metrics,
        "sluice_handler_seconds_bucket{handler=\"script\",le=\"0.5\"}",
    );
    assert!(runs >= 12.0, "{runs} script runs");
    assert_eq!(within, runs, "runs over 500 ms:\n{metrics}");
    // A write stalled behind a script waits for its run (250 ms here; the
    // finding was 14.8 s): 100 ms of slack over twice the unloaded p99
    // catches that and leaves the machine's own noise (a neighbouring test
    // took p99 from 6 to 27 ms) to the benchmark, `bench/hostile_scripts.py`,
    // which measures the 2× goal.
    assert!(
        loaded <= unloaded * 2 + Duration::from_millis(100),
        "an optimistic collection's p99 went from {unloaded:?} unloaded to {loaded:?} beside six hostile scripts"
    );
}
