//! The run plan: which workloads, settings and subjects, at which round
//! trips, in which order.

use super::{
    BenchOptions, CLUSTER_MEMBERS, CLUSTER_THETAS, Contender, FAR_RTT_MS, Features, LOADS, RTTS_MS,
    THETAS,
};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    Hot,
    Overload,
    External,
    Trace,
    Writes,
    Yardstick,
    Refusals,
    Auth,
    Cluster,
    Floor,
}

impl Workload {
    pub const ALL: [Workload; 10] = [
        Workload::Hot,
        Workload::Overload,
        Workload::External,
        Workload::Trace,
        Workload::Writes,
        Workload::Yardstick,
        Workload::Refusals,
        Workload::Auth,
        Workload::Cluster,
        Workload::Floor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Hot => "hot",
            Workload::Overload => "overload",
            Workload::External => "external",
            Workload::Trace => "trace",
            Workload::Writes => "writes",
            Workload::Yardstick => "yardstick",
            Workload::Refusals => "refusals",
            Workload::Auth => "auth",
            Workload::Cluster => "cluster",
            Workload::Floor => "floor",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }
}

/// How long and how often.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub run: Duration,
    pub repetitions: usize,
    pub trace_lines: usize,
    /// Every workload runs at each of these round trips (ms).
    pub rtts_ms: Vec<f64>,
    /// `hot` at θ = 0.99 runs at this one too.
    pub far_rtt_ms: Option<f64>,
}

impl Plan {
    pub(super) fn of(options: &BenchOptions) -> Plan {
        let mut plan = if options.quick {
            Plan {
                run: Duration::from_millis(1_200),
                repetitions: 1,
                trace_lines: 8_000,
                rtts_ms: RTTS_MS.to_vec(),
                far_rtt_ms: None,
            }
        } else {
            Plan {
                run: Duration::from_millis(2_500),
                repetitions: 3,
                trace_lines: 25_000,
                rtts_ms: RTTS_MS.to_vec(),
                far_rtt_ms: Some(FAR_RTT_MS),
            }
        };
        if let Some(ms) = options.run_ms {
            plan.run = Duration::from_millis(ms);
        }
        if let Some(n) = options.repetitions {
            plan.repetitions = n;
        }
        if let Some(n) = options.trace_lines {
            plan.trace_lines = n;
        }
        if let Some(rtts) = &options.rtts_ms {
            plan.rtts_ms = rtts.clone();
            plan.far_rtt_ms = None;
        }
        plan
    }
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Setting {
    Hot(f64),
    /// Sluice's capacity on uniform keys: the overload runs' reference.
    Capacity,
    Overload(f64),
    External,
    Trace,
    /// Unconditional writes over uniform keys, no read, no think.
    Writes(Writer),
    /// The `direct-lock` transaction at θ = 1.01 without think time, by
    /// pgbench and by the bench.
    Yardstick,
    /// A refusal-only burst against a door closed by a stalled store.
    Refusals,
    /// The `hot` intents at this θ, against one process and against a
    /// cluster of `CLUSTER_MEMBERS` behind a client-side round robin.
    Cluster(f64),
    /// The writes' bodies posted to a route that answers 404 unread: what a
    /// request costs Sluice before any of its own work (F).
    Floor,
}

/// Who writes in the `writes` workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Writer {
    /// `COMMIT_CLIENTS` clients, one-row transactions straight to PostgreSQL.
    DirectOneRow,
    /// The ceiling: one client, `COMMIT_BATCH`-row transactions.
    DirectBatched,
    /// Through Sluice, one mutation per request.
    Sluice,
    /// Through Sluice, `COMMIT_BATCH` mutations per `POST /v1/mutations:batch`.
    SluiceBatch,
    /// The embedded default's ceiling: one writer, `COMMIT_BATCH`-row
    /// transactions into Sluice's own SQLite file with its settings.
    SqliteBatched,
    /// Sluice on its default SQLite store and history, the clients of `Sluice`.
    SluiceSqlite,
}

impl Writer {
    pub(super) const ALL: [Writer; 6] = [
        Writer::DirectOneRow,
        Writer::DirectBatched,
        Writer::Sluice,
        Writer::SluiceBatch,
        Writer::SqliteBatched,
        Writer::SluiceSqlite,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Writer::DirectOneRow => "direct-one-row",
            Writer::DirectBatched => "direct-batched",
            Writer::Sluice => "sluice",
            Writer::SluiceBatch => "sluice-batch",
            Writer::SqliteBatched => "sqlite-batched",
            Writer::SluiceSqlite => "sluice-sqlite",
        }
    }

    pub(super) fn subject(self) -> Subject {
        match self {
            Writer::DirectOneRow | Writer::DirectBatched => {
                Subject::Contender(Contender::DirectOcc)
            }
            Writer::Sluice | Writer::SluiceBatch => Subject::Contender(Contender::Sluice),
            // The ceiling writes the embedded Sluice's own file while it idles.
            Writer::SqliteBatched | Writer::SluiceSqlite => Subject::Embedded,
        }
    }
}

/// Who a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Subject {
    Contender(Contender),
    /// A Sluice with only some features on (`ABLATION[i]`).
    Ablation(usize),
    /// A Sluice with an advanced feature set otherwise (`VARIANTS[i]`).
    Variant(usize),
    /// `sluice` deployed as its own tier: the link between it and
    /// PostgreSQL too.
    OwnTier,
    /// `sluice` on its embedded default: SQLite files in its data directory.
    Embedded,
    /// PostgreSQL's own pgbench (the yardstick).
    Pgbench,
    /// `CLUSTER_MEMBERS` Sluice processes joined in a cluster on one Redis,
    /// each intent sent to the next of them.
    Cluster,
}

/// One run: what, who, and over which link.
#[derive(Clone, Copy, Debug)]
pub(super) struct Job {
    pub setting: Setting,
    pub subject: Subject,
    pub rtt_ms: f64,
}

/// The features turned on one at a time, from the plain queue to everything.
pub const ABLATION: [(&str, Features); 5] = [
    ("fifo", Features::NONE),
    (
        "+prediction",
        Features {
            prediction: true,
            ..Features::NONE
        },
    ),
    (
        "+priority",
        Features {
            prediction: true,
            priority: true,
            ..Features::NONE
        },
    ),
    (
        "+coalescing",
        Features {
            prediction: true,
            priority: true,
            coalescing: true,
            group_commit: false,
        },
    ),
    ("+group commit", Features::ALL),
];

/// Sluice with one advanced feature's setting changed from its default,
/// beside the default: the settings each is measured against.
pub(super) const VARIANTS: [(&str, &[(&str, &str)]); 7] = [
    (
        "sluice-lock-adaptive",
        &[("SLUICE_LOCKING__MODE", "adaptive")],
    ),
    ("sluice-lock-always", &[("SLUICE_LOCKING__MODE", "always")]),
    (
        "sluice-lock-always-inside",
        &[
            ("SLUICE_LOCKING__MODE", "always"),
            ("SLUICE_LOCKING__DECIDE_FIRST", "false"),
        ],
    ),
    (
        "sluice-lease-adaptive",
        &[("SLUICE_LEASES__MODE", "adaptive")],
    ),
    ("sluice-lease-always", &[("SLUICE_LEASES__MODE", "always")]),
    // Its collections get a shadow handler (`SHADOW_VARIANT`).
    ("sluice-shadow-handler", &[]),
    (
        "sluice-shed",
        &[("SLUICE_STAGING__SHED_WHEN_OVERLOADED", "true")],
    ),
];

/// The variant whose collections are configured with a shadow handler.
pub(super) const SHADOW_VARIANT: usize = 5;

/// The shadow handler of `SHADOW_VARIANT`: the live `automerge` with
/// `entries` a set, written as a script for these documents (a field both
/// sides changed keeps the server's value, as AppSync's automerge does; the
/// entries are a union), as an operator would try a custom handler before
/// switching to it. The shadow report measures how far it agrees.
pub(super) const SHADOW_SCRIPT: &str = "function resolve(ctx) { \
    const item = Object.assign({}, ctx.incoming, ctx.existing); \
    const seen = new Set(); \
    item.entries = (ctx.existing.entries || []).concat(ctx.incoming.entries || []) \
        .filter(e => { const k = JSON.stringify(e); if (seen.has(k)) return false; seen.add(k); return true; }); \
    return {action: 'resolve', item: item}; }";

/// The variants measured in a setting, beside the default Sluice.
fn variants_of(setting: Setting) -> Vec<Subject> {
    match setting {
        // Pre-emptive locking: off (the default), adaptive and always,
        // against a writer that bypasses Sluice.
        // Deciding before the lock: always locking, deciding inside it.
        Setting::External => vec![
            Subject::Variant(0),
            Subject::Variant(1),
            Subject::Variant(2),
        ],
        // Write leases: off (the default), adaptive and always, where
        // conflicts are rare and where they are the rule.
        // A shadow handler beside the live one where conflicts are the rule.
        Setting::Hot(0.99) => vec![
            Subject::Variant(3),
            Subject::Variant(4),
            Subject::Variant(SHADOW_VARIANT),
        ],
        Setting::Hot(0.0) => vec![Subject::Variant(3), Subject::Variant(4)],
        // Shadow writes for what arrives over the load threshold, where the
        // load is over it.
        Setting::Overload(load) if load >= 2.0 => vec![Subject::Variant(6)],
        _ => Vec::new(),
    }
}

/// Whether a run is repeated: the contenders of the headline comparisons
/// are, for their medians and the goals; the variants, the ablation, Sluice
/// as its own tier, the cluster, the trace, the yardstick and the refusal
/// burst run once, read as a direction beside the default rather than to a
/// few percent. That keeps the full bench within its 20 minutes.
fn repeated(setting: Setting, subject: Subject) -> bool {
    let headline = matches!(
        setting,
        Setting::Hot(_)
            | Setting::Overload(_)
            | Setting::External
            | Setting::Writes(_)
            | Setting::Floor
    );
    headline && matches!(subject, Subject::Contender(_) | Subject::Embedded)
}

/// Every run in order: per repetition, per round trip, per setting, the
/// contenders in an order that rotates, so no contender always runs first
/// or last.
pub(super) fn schedule(workloads: &[Workload], plan: &Plan) -> Vec<Job> {
    let contenders: Vec<Subject> = Contender::ALL.into_iter().map(Subject::Contender).collect();
    let mut settings = Vec::new();
    for workload in workloads {
        match workload {
            Workload::Hot => settings.extend(THETAS.iter().map(|t| Setting::Hot(*t))),
            Workload::Overload => {
                settings.push(Setting::Capacity);
                settings.extend(LOADS.iter().map(|l| Setting::Overload(*l)));
            }
            Workload::External => settings.push(Setting::External),
            Workload::Trace => settings.push(Setting::Trace),
            Workload::Writes => settings.extend(Writer::ALL.map(Setting::Writes)),
            Workload::Yardstick => settings.push(Setting::Yardstick),
            Workload::Refusals => settings.push(Setting::Refusals),
            // Runs apart, on Sluice processes of its own (`auth.rs`).
            Workload::Auth => {}
            Workload::Cluster => settings.extend(CLUSTER_THETAS.map(Setting::Cluster)),
            Workload::Floor => settings.push(Setting::Floor),
        }
    }
    let mut jobs = Vec::new();
    let mut turn = 0;
    for repetition in 0..plan.repetitions {
        for &rtt_ms in &plan.rtts_ms {
            for setting in &settings {
                let subjects: Vec<Subject> = match setting {
                    Setting::Capacity => {
                        if repetition > 0 {
                            continue;
                        }
                        vec![Subject::Contender(Contender::Sluice)]
                    }
                    Setting::Writes(writer) => vec![writer.subject()],
                    Setting::Refusals | Setting::Floor => {
                        vec![Subject::Contender(Contender::Sluice)]
                    }
                    Setting::Cluster(_) => {
                        vec![Subject::Contender(Contender::Sluice), Subject::Cluster]
                    }
                    Setting::Yardstick => {
                        vec![Subject::Pgbench, Subject::Contender(Contender::DirectLock)]
                    }
                    _ => contenders.clone(),
                };
                let mut subjects = subjects;
                subjects.extend(variants_of(*setting));
                // The features one at a time, beside the contenders at
                // θ = 0.99 (the two ends are `sluice-fifo` and `sluice`
                // themselves), and Sluice as its own tier where there is a
                // link to put between it and PostgreSQL.
                if *setting == Setting::Hot(0.99) {
                    subjects.extend((1..ABLATION.len() - 1).map(Subject::Ablation));
                    if rtt_ms > 0.0 {
                        subjects.push(Subject::OwnTier);
                    }
                }
                if repetition > 0 {
                    subjects.retain(|s| repeated(*setting, *s));
                }
                let n = subjects.len();
                for i in 0..n {
                    jobs.push(Job {
                        setting: *setting,
                        subject: subjects[(i + turn) % n],
                        rtt_ms,
                    });
                }
                turn += 1;
            }
        }
        if let Some(rtt_ms) = plan
            .far_rtt_ms
            .filter(|_| workloads.contains(&Workload::Hot) && repetition == 0)
        {
            let mut subjects = contenders.clone();
            subjects.push(Subject::OwnTier);
            let n = subjects.len();
            for i in 0..n {
                jobs.push(Job {
                    setting: Setting::Hot(0.99),
                    subject: subjects[(i + turn) % n],
                    rtt_ms,
                });
            }
            turn += 1;
        }
    }
    jobs
}

pub(super) fn subject_name(subject: Subject) -> String {
    match subject {
        Subject::Contender(c) => c.name().to_owned(),
        Subject::Ablation(i) => format!("sluice-{}", ABLATION[i].0.trim_start_matches('+')),
        Subject::Variant(i) => VARIANTS[i].0.to_owned(),
        Subject::OwnTier => Contender::Sluice.name().to_owned(),
        Subject::Embedded => "sluice-sqlite".to_owned(),
        Subject::Pgbench => "pgbench-lock".to_owned(),
        Subject::Cluster => format!("sluice×{CLUSTER_MEMBERS}"),
    }
}

pub(super) fn setting_label(setting: Setting) -> String {
    match setting {
        Setting::Hot(t) => format!("hot θ={t}"),
        Setting::Capacity => "capacity".into(),
        Setting::Overload(l) => format!("overload {l}×"),
        Setting::External => "external".into(),
        Setting::Trace => "trace".into(),
        Setting::Writes(writer) => format!("writes {}", writer.name()),
        Setting::Yardstick => "yardstick".into(),
        Setting::Refusals => "refusals".into(),
        Setting::Floor => "floor".into(),
        Setting::Cluster(t) => format!("cluster θ={t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(quick: bool) -> BenchOptions {
        BenchOptions {
            postgres: None,
            redis: None,
            quick,
            workloads: Vec::new(),
            out: "out".into(),
            trace: "trace".into(),
            exe: "sluice".into(),
            progress: false,
            run_ms: None,
            repetitions: None,
            trace_lines: None,
            rtts_ms: None,
        }
    }

    /// Runs of every workload against a budget: the full bench within 20
    /// minutes and the quick one within 5, with 0.5 s per run for its
    /// setup and checks (quick runs measured 0.35–0.5 s, `timings.tsv`)
    /// and 20 s for what runs apart (the start, authentication).
    #[test]
    fn the_plans_fit_their_budgets() {
        for (quick, budget_s) in [(false, 1200.0), (true, 300.0)] {
            let plan = Plan::of(&options(quick));
            let jobs = schedule(&Workload::ALL, &plan);
            let estimate = jobs.len() as f64 * (plan.run.as_secs_f64() + 0.5) + 20.0;
            eprintln!("quick={quick}: {} runs, about {estimate:.0} s", jobs.len());
            assert!(
                estimate <= budget_s,
                "quick={quick}: {} runs, about {estimate:.0} s",
                jobs.len()
            );
        }
    }

    #[test]
    fn the_headline_contenders_run_every_repetition_and_the_rest_once() {
        let plan = Plan::of(&options(false));
        let jobs = schedule(&Workload::ALL, &plan);
        let count = |setting: Setting, subject: Subject, rtt: f64| {
            jobs.iter()
                .filter(|j| j.setting == setting && j.subject == subject && j.rtt_ms == rtt)
                .count()
        };
        let sluice = Subject::Contender(Contender::Sluice);
        assert_eq!(count(Setting::Hot(0.99), sluice, 0.0), plan.repetitions);
        assert_eq!(
            count(
                Setting::Writes(Writer::SluiceSqlite),
                Subject::Embedded,
                0.0
            ),
            plan.repetitions
        );
        assert_eq!(count(Setting::Hot(0.99), Subject::Variant(3), 1.0), 1);
        assert_eq!(count(Setting::Hot(0.99), Subject::Ablation(1), 0.0), 1);
        assert_eq!(count(Setting::Hot(0.99), sluice, FAR_RTT_MS), 1);
        assert_eq!(count(Setting::Capacity, sluice, 0.0), 1);
        assert_eq!(count(Setting::Yardstick, Subject::Pgbench, 1.0), 1);
    }
}
