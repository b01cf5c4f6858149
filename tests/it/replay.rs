//! `sluice gen` and `sluice replay` together: a generated trace with known
//! conflicts goes through a real server and every conflict flag comes back
//! as labelled.

use crate::support::TestServer;
use sluice_tools::generate::{GenOptions, generate};
use sluice_tools::replay::{ReplayOptions, replay, summary_path};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_trace_replays_with_exactly_its_labelled_conflicts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (trace, labels, out) = (
        dir.path().join("t.jsonl.gz"),
        dir.path().join("l.jsonl"),
        dir.path().join("r.jsonl"),
    );
    let options = GenOptions {
        mutations: 3_000,
        keys: 300,
        clients: 60,
        zipf: 1.1,
        ..GenOptions::default()
    };
    {
        let file = std::fs::File::create(&trace).expect("create");
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut label_file = std::fs::File::create(&labels).expect("create");
        let stats = generate(&options, &mut gz, Some(&mut label_file), None).expect("generate");
        gz.finish().expect("finish gzip");
        assert!(stats.conflicts > 100, "{stats:?}");
    }

    let s = TestServer::embedded().await;
    let summary = replay(&ReplayOptions {
        trace,
        url: s.url.clone(),
        handler: Some("automerge".into()),
        concurrency: 16,
        speed: None,
        out: Some(out.clone()),
        labels: Some(labels),
        progress: false,
    })
    .await
    .expect("replay");
    assert_eq!((summary.mutations, summary.errors), (3_000, 0));
    assert_eq!(
        summary.label_mismatches,
        Some(0),
        "every conflict flag equals its label"
    );
    assert_eq!(summary.unlabeled, Some(0));
    assert!(summary.conflicts > 100);
    assert!(summary.auc.is_some_and(|auc| auc > 0.9), "{summary:?}");
    assert!(summary.latency_p99_ms >= summary.latency_p50_ms);

    let lines = std::fs::read_to_string(&out).expect("results");
    assert_eq!(lines.lines().count(), 3_000);
    let first: serde_json::Value =
        serde_json::from_str(lines.lines().next().expect("a line")).expect("JSON");
    for field in [
        "id",
        "outcome",
        "version",
        "score",
        "conflict",
        "queued_ms",
        "latency_ms",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
    // The summary file is the caller's to write; its name sits next to --out.
    assert_eq!(summary_path(&out), dir.path().join("r.summary.json"));
}

#[test]
fn the_replay_command_runs_an_embedded_server_and_writes_its_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("t.jsonl");
    let mut file = std::fs::File::create(&trace).expect("create");
    generate(
        &GenOptions {
            mutations: 400,
            keys: 20,
            ..GenOptions::default()
        },
        &mut file,
        None,
        None,
    )
    .expect("generate");
    let out = dir.path().join("results.jsonl");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["replay", "--trace"])
        .arg(&trace)
        .args([
            "--handler",
            "automerge",
            "--concurrency",
            "8",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .env_remove("SLUICE_TEST_POSTGRES_URL")
        .output()
        .expect("run sluice replay");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("mutations        400"), "{stdout}");
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("results.summary.json")).expect("summary"),
    )
    .expect("JSON");
    assert_eq!(summary["mutations"], serde_json::json!(400));
    assert_eq!(summary["errors"], serde_json::json!(0));
}

/// With `--bypass`, the writers without a base go around Sluice: applied to
/// the store directly, interleaved by event time, they make the labelled
/// conflicts happen, and Sluice's compare-and-set notices every one.
#[tokio::test]
async fn bypassing_writes_cause_exactly_the_labelled_conflicts() {
    use sluice_server::clock::{SharedClock, SystemClock};
    use sluice_server::dispatch::{Engine, EngineConfig};
    use sluice_server::history::MemoryHistory;
    use sluice_server::model::{DocKey, Mutation};
    use sluice_server::resolve::{Handler, Resolver, ScriptLimits};
    use sluice_server::store::MemoryStore;
    use std::sync::Arc;

    let options = GenOptions {
        mutations: 2_000,
        keys: 30,
        unconditional_fraction: 0.2,
        ..GenOptions::default()
    };
    let (mut trace, mut labels, mut bypass) = (Vec::new(), Vec::new(), Vec::new());
    let stats =
        generate(&options, &mut trace, Some(&mut labels), Some(&mut bypass)).expect("generate");
    assert!(stats.bypassed > 200, "{stats:?}");
    let parse = |bytes: &[u8]| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    };
    let (trace, labels, bypass) = (parse(&trace), parse(&labels), parse(&bypass));
    assert_eq!(trace.len() as u64 + stats.bypassed, 2_000);
    assert!(
        trace.iter().all(|l| l.get("base_version").is_some()),
        "the trace keeps only conditional writers"
    );

    let store = Arc::new(MemoryStore::new());
    let clock: SharedClock = SystemClock::shared();
    let config = EngineConfig {
        default_handler: Handler::Automerge,
        sample_host: false,
        ..EngineConfig::default()
    };
    let engine = Engine::start(
        store.clone(),
        Arc::new(MemoryHistory::new()),
        Resolver::new(clock.clone(), ScriptLimits::default()),
        clock,
        config,
    )
    .await
    .expect("engine");
    let (mut t, mut b) = (0, 0);
    let mut flags = Vec::new();
    while t < trace.len() {
        // Whatever bypassing write came first in event time lands first.
        if b < bypass.len() && bypass[b]["ts_ms"].as_i64() <= trace[t]["ts_ms"].as_i64() {
            let doc = DocKey::new("gen", bypass[b]["key"].as_str().expect("key"));
            store.write_behind_sluice(&doc, bypass[b]["value"].as_object().cloned());
            b += 1;
            continue;
        }
        let line = &trace[t];
        let mutation = Mutation::from_json(&line.to_string(), t as u64).expect("mutation");
        let reply = crate::support::submit(&engine, mutation).await;
        let body: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
        flags.push(!body["conflict"].is_null());
        t += 1;
    }
    let expected: Vec<bool> = labels
        .iter()
        .map(|l| l["conflict"].as_bool().expect("flag"))
        .collect();
    assert_eq!(flags, expected);
    assert!(
        expected.iter().filter(|c| **c).count() as u64 == stats.conflicts && stats.conflicts > 50
    );
}

/// `--speed X` paces by event time: two seconds of trace at 4× take at least
/// half a second; at maximum speed they do not wait.
#[tokio::test]
async fn speed_paces_by_event_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("paced.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| json_line(i, 1_700_000_000_000 + i * 500))
        .collect();
    std::fs::write(&trace, lines.join("\n")).expect("write");
    let s = TestServer::embedded().await;
    let options = |speed| ReplayOptions {
        trace: trace.clone(),
        url: s.url.clone(),
        handler: None,
        concurrency: 4,
        speed,
        out: None,
        labels: None,
        progress: false,
    };
    let paced = replay(&options(Some(4.0))).await.expect("replay");
    assert_eq!(paced.mutations, 5);
    assert!(
        paced.seconds >= 0.45,
        "2 s of events at 4× took only {} s",
        paced.seconds
    );
    let fast = replay(&options(None)).await.expect("replay");
    assert!(
        fast.seconds < paced.seconds,
        "{} vs {}",
        fast.seconds,
        paced.seconds
    );
}

fn json_line(i: i64, ts_ms: i64) -> String {
    serde_json::json!({"id": format!("p{i}"), "ts_ms": ts_ms, "client": "c", "collection": "paced", "key": format!("k{i}"),
                       "op": "put", "value": {"i": i}})
    .to_string()
}
