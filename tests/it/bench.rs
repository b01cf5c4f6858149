//! `sluice bench` end to end: the real binary, every workload, a PostgreSQL
//! of the test server; runs cut to a fraction of a second, so this checks
//! the harness and its contracts (every run accounted for, `bench.json`'s
//! shape), not the numbers.

use crate::support::{fresh_postgres_database, redis_url};
use serde_json::Value;
use std::io::Write;

/// A small trace of the generator's, in the trace workload's format.
fn small_trace(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("small.trace.jsonl");
    let mut file = std::fs::File::create(&path).expect("create trace");
    let options = sluice_tools::generate::GenOptions {
        mutations: 400,
        keys: 50,
        clients: 20,
        ..sluice_tools::generate::GenOptions::default()
    };
    sluice_tools::generate::generate(&options, &mut file, None, None).expect("generate");
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
        .args(["--redis", &redis_url()])
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
    // The full run's round trips: every workload at 0 (loopback) and 1 ms,
    // `hot` at θ = 0.99 at 5 ms too.
    for rtt in [0.0, 1.0] {
        for theta in [0.0, 0.6, 0.9, 0.99, 1.2] {
            expected.push(("hot", Some(theta), None, rtt));
        }
        for load in [0.5, 1.0, 2.0, 4.0] {
            expected.push(("overload", None, Some(load), rtt));
        }
        expected.push(("external", Some(0.99), None, rtt));
        expected.push(("trace", None, None, rtt));
    }
    expected.push(("hot", Some(0.99), None, 5.0));
    let record = |workload: &str,
                  theta: Option<f64>,
                  load: Option<f64>,
                  rtt: f64,
                  contender: &str,
                  placement: Option<&str>|
     -> Vec<&Value> {
        runs.iter()
            .filter(|r| {
                r["workload"] == workload
                    && r["theta"].as_f64() == theta
                    && r["load"].as_f64() == load
                    && r["rtt_ms"].as_f64() == Some(rtt)
                    && r["contender"] == contender
                    && r["placement"].as_str() == placement
            })
            .collect()
    };
    for (workload, theta, load, rtt) in &expected {
        for contender in contenders {
            let placement = contender.starts_with("sluice").then_some("next-to-store");
            let found = record(workload, *theta, *load, *rtt, contender, placement);
            assert_eq!(
                found.len(),
                1,
                "one entry for {workload} {theta:?} {load:?} R={rtt} {contender}"
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
            let cpu = &run["cpu_us_per_intent"];
            assert_eq!(
                cpu["sluice"].is_number(),
                contender.starts_with("sluice"),
                "{run}"
            );
            // The test's PostgreSQL runs on this machine: its CPU is read.
            assert!(
                cpu["postgres"].is_number() && cpu["client"].is_number(),
                "{run}"
            );
            assert_eq!(
                cpu["relay"].is_number(),
                *rtt > 0.0,
                "the relay only on a link: {run}"
            );
        }
    }
    // Sluice as its own tier, wherever there is a link.
    for rtt in [1.0, 5.0] {
        let found = record("hot", Some(0.99), None, rtt, "sluice", Some("own-tier"));
        assert_eq!(found.len(), 1, "sluice as its own tier at R={rtt}");
        assert!(found[0]["cpu_us_per_intent"]["relay"].is_number());
    }
    // The unconditional writes and the yardstick, at each round trip.
    let others = [
        ("writes", None, "direct-one-row"),
        ("writes", None, "direct-batched"),
        ("writes", None, "sluice"),
        ("writes", None, "sluice-batch"),
        ("yardstick", Some(1.01), "pgbench-lock"),
        ("yardstick", Some(1.01), "direct-lock"),
        ("writes", None, "sqlite-batched"),
        ("writes", None, "sluice-sqlite"),
    ];
    for rtt in [0.0, 1.0] {
        for (workload, theta, contender) in others {
            let through_sluice = workload == "writes" && contender.starts_with("sluice");
            let embedded = contender.contains("sqlite");
            let placement = match (through_sluice, embedded) {
                (true, true) => Some("embedded"),
                (true, false) => Some("next-to-store"),
                (false, _) => None,
            };
            let found = record(workload, theta, None, rtt, contender, placement);
            assert_eq!(
                found.len(),
                1,
                "one entry for {workload} {contender} R={rtt}"
            );
            let run = found[0];
            assert!(run["applied"].as_u64().is_some_and(|n| n > 0), "{run}");
            let cpu = &run["cpu_us_per_intent"];
            assert_eq!(cpu["sluice"].is_number(), through_sluice, "{run}");
            // pgbench is a process of its own, counted as a client;
            // PostgreSQL takes no part in the embedded runs.
            assert_eq!(cpu["postgres"].is_number(), !embedded, "{run}");
            assert!(cpu["client"].is_number(), "{run}");
            assert_eq!(cpu["relay"].is_number(), rtt > 0.0, "{run}");
            if workload == "writes" {
                assert_eq!(
                    run["wal_bytes_per_intent"].is_number(),
                    !embedded,
                    "PostgreSQL's WAL, where it is written: {run}"
                );
            }
        }
    }
    // The refusal-only burst: the held mutations applied once, the burst
    // all refused, Sluice's CPU per refusal read.
    for rtt in [0.0, 1.0] {
        let found = record("refusals", None, None, rtt, "sluice", Some("next-to-store"));
        assert_eq!(found.len(), 1, "one refusal burst at R={rtt}");
        let run = found[0];
        // The door may close before the last of the 100 held mutations
        // get in (they are counted refused); 64 inside are never refused.
        assert!(
            run["applied"]
                .as_u64()
                .is_some_and(|n| (64..=100).contains(&n)),
            "{run}"
        );
        assert!(
            run["rejected_429"].as_u64().is_some_and(|n| n > 100),
            "{run}"
        );
        assert!(run["cpu_us_per_intent"]["sluice"].is_number(), "{run}");
        assert!(run["p99_ms"].as_f64().is_some_and(|p| p < 500.0), "{run}");
    }
    // One process against three in a cluster, the same hot intents.
    for rtt in [0.0, 1.0] {
        for theta in [0.0, 0.99] {
            for contender in ["sluice", "sluice×3"] {
                let found = record(
                    "cluster",
                    Some(theta),
                    None,
                    rtt,
                    contender,
                    Some("next-to-store"),
                );
                assert_eq!(found.len(), 1, "cluster θ={theta} R={rtt} {contender}");
                let run = found[0];
                assert!(run["applied"].as_u64().is_some_and(|n| n > 0), "{run}");
                assert!(run["cpu_us_per_intent"]["sluice"].is_number(), "{run}");
            }
        }
    }
    // The advanced features' settings beside the default, in `external`.
    let variants = [
        "sluice-lock-adaptive",
        "sluice-lock-always",
        "sluice-lock-always-inside",
    ];
    for rtt in [0.0, 1.0] {
        for variant in variants {
            let found = record(
                "external",
                Some(0.99),
                None,
                rtt,
                variant,
                Some("next-to-store"),
            );
            assert_eq!(found.len(), 1, "external R={rtt} {variant}");
            let run = found[0];
            assert!(run["applied"].as_u64().is_some_and(|n| n > 0), "{run}");
            let locked = run["locked_lanes"].as_u64();
            assert!(locked.is_some(), "{run}");
            // Adaptive locking follows the model, which a process started
            // for one short run may not have trained past the threshold;
            // the others lock every lane that writes.
            if variant != "sluice-lock-adaptive" {
                assert!(locked.is_some_and(|n| n > 0), "{run}");
                assert!(
                    run["lock_held_ms"].as_f64().is_some_and(|ms| ms > 0.0),
                    "{run}"
                );
            }
        }
        let plain = record(
            "external",
            Some(0.99),
            None,
            rtt,
            "sluice",
            Some("next-to-store"),
        );
        assert_eq!(plain[0]["locked_lanes"], 0, "locking is off by default");
    }
    // Write leases off and always beside the default (adaptive), in `hot`
    // at both ends of the skew, the clients reading with `intent=write`.
    for rtt in [0.0, 1.0] {
        for theta in [0.0, 0.99] {
            let leases = |contender: &str| {
                let found = record(
                    "hot",
                    Some(theta),
                    None,
                    rtt,
                    contender,
                    Some("next-to-store"),
                );
                assert_eq!(found.len(), 1, "hot θ={theta} R={rtt} {contender}");
                assert!(
                    found[0]["applied"].as_u64().is_some_and(|n| n > 0),
                    "{}",
                    found[0]
                );
                found[0]["leases"].as_u64()
            };
            assert_eq!(
                leases("sluice"),
                Some(0),
                "no lease by default, the clients ask all the same"
            );
            assert!(
                leases("sluice-lease-always").is_some_and(|n| n > 0),
                "leases when always"
            );
            assert!(leases("sluice-lease-adaptive").is_some(), "{theta}");
        }
    }
    // A shadow handler beside the live one, at θ = 0.99.
    for rtt in [0.0, 1.0] {
        let found = record(
            "hot",
            Some(0.99),
            None,
            rtt,
            "sluice-shadow-handler",
            Some("next-to-store"),
        );
        assert_eq!(found.len(), 1, "shadow handler R={rtt}");
        assert!(
            found[0]["applied"].as_u64().is_some_and(|n| n > 0),
            "{}",
            found[0]
        );
    }
    // Shadow writes for what arrives over the threshold, at 2× and 4×:
    // every staged intent is followed to its outcome by the run.
    for rtt in [0.0, 1.0] {
        for load in [2.0, 4.0] {
            let found = record(
                "overload",
                None,
                Some(load),
                rtt,
                "sluice-shed",
                Some("next-to-store"),
            );
            assert_eq!(found.len(), 1, "shed {load}× R={rtt}");
        }
    }
    assert_eq!(
        runs.len(),
        expected.len() * contenders.len()
            + 2
            + 2 * others.len()
            + 2
            + 8
            + 2 * variants.len()
            + 8
            + 2
            + 4
            + 2
    );
    // What a run cost besides CPU: the Sluice's wake-ups and PostgreSQL's
    // WAL, per applied intent; and the whole bench's time.
    let hot = record(
        "hot",
        Some(0.99),
        None,
        0.0,
        "sluice",
        Some("next-to-store"),
    );
    assert!(
        hot[0]["ctx_switches_per_intent"]
            .as_f64()
            .is_some_and(|n| n > 0.0),
        "{}",
        hot[0]
    );
    assert!(
        hot[0]["wal_bytes_per_intent"]
            .as_f64()
            .is_some_and(|n| n > 0.0),
        "{}",
        hot[0]
    );
    let direct = record("hot", Some(0.99), None, 0.0, "direct-occ", None);
    assert!(
        direct[0]["ctx_switches_per_intent"].is_null(),
        "{}",
        direct[0]
    );
    assert!(
        direct[0]["wal_bytes_per_intent"]
            .as_f64()
            .is_some_and(|n| n > 0.0),
        "{}",
        direct[0]
    );
    assert!(
        report["wall_s"].as_f64().is_some_and(|s| s > 1.0),
        "{}",
        report["wall_s"]
    );
    // The floor: requests answered 404 unread, F the CPU of each.
    for rtt in [0.0, 1.0] {
        let floor = record("floor", None, None, rtt, "sluice", Some("next-to-store"));
        assert_eq!(floor.len(), 1, "floor R={rtt}");
        assert!(
            floor[0]["applied"].as_u64().is_some_and(|n| n > 0),
            "{}",
            floor[0]
        );
        assert!(
            floor[0]["cpu_us_per_intent"]["sluice"]
                .as_f64()
                .is_some_and(|f| f > 0.0),
            "{}",
            floor[0]
        );
        assert!(floor[0]["wal_bytes_per_intent"].is_null(), "{}", floor[0]);
    }
    let md = std::fs::read_to_string(out.join("BENCH.md")).expect("BENCH.md");
    assert!(md.contains("## Advanced features, on and off"), "{md}");
    assert!(md.contains("the whole bench took"), "{md}");
    assert!(
        md.contains("- pre-emptive locking, external, R = 0 ms, against sluice:"),
        "{md}"
    );
    assert!(
        md.contains(
            "- deciding before the lock, external, R = 0 ms, against sluice-lock-always-inside:"
        ),
        "{md}"
    );
    assert!(
        md.contains("- write leases, hot θ=0.99, R = 0 ms, against sluice:"),
        "{md}"
    );
    assert!(
        md.contains("- a shadow handler, hot θ=0.99, R = 0 ms, against sluice:"),
        "{md}"
    );
    assert!(
        md.contains("- shadow writes under overload, overload 2×, R = 0 ms, against sluice:"),
        "{md}"
    );
    let links = report["links"].as_array().expect("links");
    let measured: Vec<f64> = links.iter().filter_map(|l| l["rtt_ms"].as_f64()).collect();
    assert_eq!(measured, [1.0, 5.0], "{links:?}");
    for l in links {
        let (rtt, median) = (l["rtt_ms"].as_f64(), l["median_ms"].as_f64());
        assert!(
            rtt.zip(median).is_some_and(|(r, m)| m >= 0.8 * r),
            "a link is never faster than its round trip: {l}"
        );
    }
    // The trace's 400 mutations are all answered (applied, or a delete of
    // nothing, or a rejection), and the accounting check passed to get here.
    let trace_runs = runs.iter().filter(|r| r["workload"] == "trace");
    for run in trace_runs {
        assert!(run["applied"].as_u64().is_some_and(|n| n <= 400));
    }
    assert!(report["capacity"].as_f64().is_some_and(|c| c > 0.0));
    assert_eq!(
        report["capacities"].as_array().map(Vec::len),
        Some(2),
        "a capacity at each round trip"
    );
    assert_eq!(
        report["group_commit"].as_array().map(Vec::len),
        Some(12),
        "the writes workload's records, where an earlier bench.json had them"
    );
    let ablation = report["ablation"].as_array().expect("ablation");
    assert_eq!(
        ablation.len(),
        10,
        "fifo, three steps, everything, at R = 0 and 1"
    );
    let goals = report["goals"].as_array().expect("goals");
    for wanted in [
        "R=0 ms, overload 2×",
        "R=1 ms, overload 4×",
        "R=1 ms, hot θ=0.99",
        "R=0 ms, refusals: Sluice's CPU per refusal / F",
        "R=0 ms, writes: Sluice's CPU per unconditional mutation / F",
        "R=0 ms, hot θ=0: Sluice's CPU per intent / F",
        "R=0 ms, writes: sluice-sqlite / sqlite-batched (the batched ceiling)",
        "R=0 ms, writes: WAL bytes per sluice mutation / per direct-one-row row",
        "the full bench's wall time, s",
        "link",
    ] {
        assert!(
            goals
                .iter()
                .any(|g| g["goal"].as_str().is_some_and(|s| s.contains(wanted))),
            "a goal about {wanted}"
        );
    }

    // What authentication costs: each mode served reads, and its CPU was read.
    let auth = report["auth"].as_array().expect("auth");
    let modes: Vec<&str> = auth.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(modes, ["none", "keys", "jwt"]);
    for r in auth {
        assert!(r["requests"].as_u64().unwrap_or(0) > 0, "{r}");
        assert!(r["cpu_us_per_request"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }

    let markdown = std::fs::read_to_string(out.join("BENCH.md")).expect("BENCH.md");
    for heading in [
        "## Goals",
        "## The link",
        "## hot, R = 0 ms",
        "## hot, R = 1 ms",
        "## hot, R = 5 ms",
        "## overload, R = 1 ms",
        "## external, R = 1 ms",
        "## trace, R = 0 ms",
        "## writes, R = 0 ms",
        "## yardstick, R = 1 ms",
        "## refusals, R = 0 ms",
        "## What authentication costs",
        "## cluster, R = 0 ms",
    ] {
        assert!(markdown.contains(heading), "BENCH.md has {heading}");
    }
    for plot in [
        "goodput-vs-skew.svg",
        "p99-vs-skew.svg",
        "latency-theta-0.99.svg",
        "goodput-vs-skew-r1ms.svg",
        "latency-theta-0.99-r5ms.svg",
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
        // An expected error prints no backtrace, even when one is asked for.
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run sluice bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: unknown workload \"nope\""),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn the_lost_update_check_names_what_went_wrong() {
    assert_eq!(
        sluice_tools::bench::accounting_problem("list entries", 10, 10),
        None
    );
    let lost = sluice_tools::bench::accounting_problem("list entries", 10, 9).expect("a loss");
    assert!(lost.contains("lost"), "{lost}");
    let doubled =
        sluice_tools::bench::accounting_problem("list entries", 10, 11).expect("a double");
    assert!(doubled.contains("twice"), "{doubled}");
}

#[test]
fn bench_refuses_a_round_trip_out_of_range() {
    for bad in ["-1", "1e9", "NaN"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["bench", "--quiet", "--rtt-ms", &format!("0,{bad}")])
            .output()
            .expect("run sluice bench");
        assert!(!output.status.success(), "--rtt-ms {bad} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("a round trip is between 0 and 1000 ms"),
            "{bad}: {stderr}"
        );
    }
}
