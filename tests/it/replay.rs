//! `sluice gen` and `sluice replay` together: a generated trace with known
//! conflicts goes through a real server and every conflict flag comes back
//! as labelled.

use crate::support::TestServer;
use sluice::generate::{GenOptions, generate};
use sluice::replay::{ReplayOptions, replay, summary_path};

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
        let stats = generate(&options, &mut gz, Some(&mut label_file)).expect("generate");
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
