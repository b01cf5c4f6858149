//! `sluice bench` end to end: the real binary, every workload, a PostgreSQL
//! of the test server; runs cut to a fraction of a second, so this checks
//! the harness and its contracts (every run accounted for, `bench.json`'s
//! shape), not the numbers.

use crate::support::fresh_postgres_database;
use serde_json::Value;
use std::io::Write;

/// A small trace of the generator's, in the trace workload's format.
fn small_trace(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("small.trace.jsonl");
    let mut file = std::fs::File::create(&path).expect("create trace");
    let options = sluice::generate::GenOptions {
        mutations: 400,
        keys: 50,
        clients: 20,
        ..sluice::generate::GenOptions::default()
    };
    sluice::generate::generate(&options, &mut file, None, None).expect("generate");
    file.flush().expect("flush");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_workload_and_accounts_for_every_intent() {
    let url = fresh_postgres_database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = small_trace(dir.path());
    let out = dir.path().join("out");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["bench", "--quiet", "--postgres", &url, "--run-ms", "250"])
        .args(["--repetitions", "1", "--trace-lines", "400", "--trace"])
        .arg(&trace)
        .arg("--out")
        .arg(&out);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run sluice bench");
    assert!(
        output.status.success(),
        "sluice bench failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).expect("bench.json"))
            .expect("bench.json is JSON");
    assert!(report["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
    let runs = report["runs"].as_array().expect("runs");
    let contenders = ["direct-occ", "direct-lock", "sluice-fifo", "sluice"];
    let mut expected = Vec::new();
    for theta in [0.0, 0.6, 0.9, 0.99, 1.2] {
        expected.push(("hot", Some(theta), None));
    }
    for load in [0.5, 1.0, 2.0] {
        expected.push(("overload", None, Some(load)));
    }
    expected.push(("external", Some(0.99), None));
    expected.push(("trace", None, None));
    for (workload, theta, load) in &expected {
        for contender in contenders {
            let found: Vec<&Value> = runs
                .iter()
                .filter(|r| {
                    r["workload"] == *workload
                        && r["theta"].as_f64() == *theta
                        && r["load"].as_f64() == *load
                        && r["contender"] == contender
                })
                .collect();
            assert_eq!(
                found.len(),
                1,
                "one entry for {workload} {theta:?} {load:?} {contender}"
            );
            let run = found[0];
            for field in [
                "goodput",
                "applied",
                "wasted_writes",
                "client_conflicts",
                "p50_ms",
                "p99_ms",
                "p999_ms",
                "timeouts",
                "rejected_429",
            ] {
                assert!(run[field].is_number(), "{field} of {run}");
            }
            assert!(
                run["applied"].as_u64().is_some_and(|n| n > 0),
                "something was applied: {run}"
            );
            assert_eq!(
                run["cpu_us_per_mutation"].is_number(),
                contender.starts_with("sluice"),
                "Sluice's CPU is measured, and only Sluice's: {run}"
            );
        }
    }
    assert_eq!(runs.len(), expected.len() * contenders.len());
    // The trace's 400 mutations are all answered (applied, or a delete of
    // nothing, or a rejection), and the accounting check passed to get here.
    let trace_runs = runs.iter().filter(|r| r["workload"] == "trace");
    for run in trace_runs {
        assert!(run["applied"].as_u64().is_some_and(|n| n <= 400));
    }
    assert!(report["capacity"].as_f64().is_some_and(|c| c > 0.0));
    assert_eq!(report["group_commit"].as_array().map(Vec::len), Some(3));
    let ablation = report["ablation"].as_array().expect("ablation");
    assert_eq!(ablation.len(), 5, "fifo, three steps, everything");
    let goals = report["goals"].as_array().expect("goals");
    assert!(goals.iter().any(|g| {
        g["goal"]
            .as_str()
            .is_some_and(|s| s.contains("overload 2×"))
    }));

    let markdown = std::fs::read_to_string(out.join("BENCH.md")).expect("BENCH.md");
    for heading in [
        "## Goals",
        "## hot",
        "## overload",
        "## external",
        "## trace",
    ] {
        assert!(markdown.contains(heading), "BENCH.md has {heading}");
    }
    for plot in [
        "goodput-vs-skew.svg",
        "p99-vs-skew.svg",
        "latency-theta-0.99.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(plot)).expect(plot);
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{plot}"
        );
    }
}

#[test]
fn bench_refuses_an_unknown_workload() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "--workload", "nope", "--quiet"])
        .output()
        .expect("run sluice bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown workload \"nope\""), "{stderr}");
}

#[test]
fn the_lost_update_check_names_what_went_wrong() {
    assert_eq!(
        sluice::bench::accounting_problem("list entries", 10, 10),
        None
    );
    let lost = sluice::bench::accounting_problem("list entries", 10, 9).expect("a loss");
    assert!(lost.contains("lost"), "{lost}");
    let doubled = sluice::bench::accounting_problem("list entries", 10, 11).expect("a double");
    assert!(doubled.contains("twice"), "{doubled}");
}
