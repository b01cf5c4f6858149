//! BENCH.md's "Advanced features, on and off": each feature's settings
//! from the same run, a row per setting and a verdict line per place.

use super::report::RunRecord;
use std::fmt::Write as _;

/// Each advanced feature against its default: a row per setting and
/// round trip, and a verdict line for each (what it changed, what it cost).
pub(super) fn section(md: &mut String, runs: &[RunRecord], rtts: &[f64]) {
    // (feature, workload, the setting compared against, the settings).
    const FEATURES: [(&str, &str, &str, &[&str]); 5] = [
        (
            "pre-emptive locking",
            "external",
            "sluice",
            &["sluice", "sluice-lock-adaptive", "sluice-lock-always"],
        ),
        (
            "deciding before the lock",
            "external",
            "sluice-lock-always-inside",
            &["sluice-lock-always-inside", "sluice-lock-always"],
        ),
        (
            "write leases",
            "hot",
            "sluice",
            &["sluice", "sluice-lease-adaptive", "sluice-lease-always"],
        ),
        (
            "a shadow handler",
            "hot",
            "sluice",
            &["sluice", "sluice-shadow-handler"],
        ),
        (
            "shadow writes under overload",
            "overload",
            "sluice",
            &["sluice", "sluice-shed"],
        ),
    ];
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    let opt = |v: Option<f64>, digits: usize| v.map_or("–".into(), |v| format!("{v:.digits$}"));
    for (feature, workload, base, settings) in FEATURES {
        // Where the feature ran: each skew or load of its workload.
        let mut wheres: Vec<(Option<f64>, Option<f64>)> = Vec::new();
        for r in runs.iter().filter(|r| {
            r.workload == workload && settings.iter().any(|s| *s != base && r.contender == *s)
        }) {
            if !wheres.contains(&(r.theta, r.load)) {
                wheres.push((r.theta, r.load));
            }
        }
        for (theta, load) in wheres {
            for &rtt in rtts {
                let find = |contender: &str| {
                    runs.iter().find(|r| {
                        r.workload == workload
                            && r.contender == contender
                            && r.rtt_ms == rtt
                            && r.theta == theta
                            && r.load == load
                    })
                };
                let Some(off) = find(base) else { continue };
                let at = match (theta, load) {
                    (_, Some(l)) => format!("{workload} {l}×, R = {rtt} ms"),
                    (Some(t), _) if workload == "hot" => format!("{workload} θ={t}, R = {rtt} ms"),
                    _ => format!("{workload}, R = {rtt} ms"),
                };
                let mut changes = Vec::new();
                for setting in settings {
                    let Some(r) = find(setting) else { continue };
                    rows.push(format!(
                        "| {feature} | {at} | {setting} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {:.0} | {:.1} |",
                        r.wasted_writes,
                        r.client_conflicts,
                        r.locked_lanes.map_or("–".into(), |n| n.to_string()),
                        opt(r.lock_held_ms, 2),
                        r.leases.map_or("–".into(), |n| n.to_string()),
                        opt(r.forecast_auc, 3),
                        opt(r.forecast_ece, 3),
                        opt(r.shadow_agreement, 3),
                        r.staged.map_or("–".into(), |n| format!("{n} / {}", r.staged_applied.unwrap_or(0))),
                        r.rejected_429,
                        r.goodput,
                        r.p99_ms,
                    ));
                    if *setting != base {
                        changes.push(format!(
                            "{setting}: wasted writes {} → {}, client conflicts {} → {}, goodput ×{:.2}, p99 ×{:.2}",
                            off.wasted_writes,
                            r.wasted_writes,
                            off.client_conflicts,
                            r.client_conflicts,
                            r.goodput / off.goodput.max(f64::MIN_POSITIVE),
                            r.p99_ms / off.p99_ms.max(f64::MIN_POSITIVE)
                        ));
                    }
                }
                if !changes.is_empty() {
                    verdicts.push(format!(
                        "- {feature}, {at}, against {base}: {}.",
                        changes.join("; ")
                    ));
                }
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Advanced features, on and off\n\nEach feature's settings in the same run (their rows are in the workload's table above too). Pre-emptive locking: `sluice` (off, the default), `sluice-lock-adaptive` (above the adaptive threshold), `sluice-lock-always`; deciding before the lock: `sluice-lock-always` (the default) against `sluice-lock-always-inside` (read, decide and commit all under the lock); write leases: `sluice` (off, the default), `sluice-lease-adaptive`, `sluice-lease-always`, with clients that read with `intent=write` and send the lease they get. A lane's wasted writes are its stale commits; *lock held* is the mean time a lane held its document's lock; *leases* the reads that earned one; *forecast AUC / ECE* the read-time forecasts against whether the write then conflicted; a shadow handler: `sluice-shadow-handler` runs the live `automerge` written as a script beside it, *shadow agreed* the share of compared conflicts on which the two decided the same; shadow writes under overload: `sluice-shed` stages what arrives while the load is over the threshold (`staging.shed_when_overloaded`), *staged / applied later* the intents answered 202 `staged` and those of them applied once promoted after the run (not in goodput).\n\n| feature | where | setting | wasted writes | client conflicts | locked lanes | lock held ms | leases | forecast AUC / ECE | shadow agreed | staged / applied later | 429s | goodput/s | p99 ms |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(md);
    for verdict in verdicts {
        let _ = writeln!(md, "{verdict}");
    }
}
