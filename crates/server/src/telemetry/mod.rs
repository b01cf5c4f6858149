//! What an operator sees: Prometheus metrics and the dashboard's aggregates.
//!
//! Each engine owns its own recorder (not the process-global one of the
//! `metrics` facade), so two engines in one process, as in the tests, never
//! mix their counts. Handles for fixed label sets are registered once;
//! every label value comes from a closed set (outcomes, handler names, error
//! codes), never from a document key or a client id, so the number of series
//! is bounded whatever the traffic.

pub(crate) mod board;
pub mod logs;

use crate::model::RecordedOutcome;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::time::Duration;

pub use board::{Board, ConflictView, HotDocument, SeriesPoint, Snapshot};

/// The `handler` label's values.
pub const HANDLERS: [&str; 4] = ["optimistic", "automerge", "script", "webhook"];
/// The `outcome` label's values of decided mutations.
pub const OUTCOMES: [RecordedOutcome; 4] = RecordedOutcome::ALL;
/// Error codes a mutation can be refused or failed with; anything else is
/// counted as `other` so that the label set stays closed.
pub const REFUSALS: [&str; 13] = [
    "overloaded",
    "queue_full",
    "lane_full",
    "shutting_down",
    "store_unavailable",
    "store_contention",
    "partition_moved",
    "cluster_unavailable",
    "decision_timeout",
    "idempotency_key_reused",
    "quarantine_full",
    "document_too_large",
    "other",
];
/// Why a mutation conflicted: its `base_version` was behind the document's
/// (someone wrote since the client read) or ahead of it (the client saw a
/// version this store never had, as after a restore).
pub const CONFLICT_REASONS: [&str; 2] = ["stale_base", "future_base"];
pub const RESOLUTIONS: [&str; 3] = ["merged", "removed", "rejected"];
/// What a custom handler run ended in.
pub const HANDLER_RESULTS: [&str; 5] = ["resolved", "removed", "rejected", "error", "timeout"];

/// Seconds; from a fast in-memory store to a struggling remote one.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Lanes per group commit, up to the largest batch the controller allows.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Conflict probabilities: finer near 0 and 1, where most scores fall.
const SCORE_BUCKETS: [f64; 12] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99,
];
const RETRAIN_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes: the recorder buffers samples until then, so this bounds its memory.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static META: Metadata<'static> = Metadata::new("sluice", Level::INFO, Some("sluice::telemetry"));

/// The gauges, set from the engine's state when `/metrics` is scraped.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub queue_depth: f64,
    pub lanes: f64,
    pub in_flight: f64,
    pub concurrency_limit: f64,
    pub load: f64,
    pub threshold: f64,
    pub admission_limit: f64,
    pub in_system: f64,
    pub quarantined: f64,
    pub history_degraded: f64,
    pub commit_batch_max: f64,
    pub store_latency_seconds: f64,
    pub conflict_rate: f64,
    pub model_auc: Option<f64>,
    pub model_log_loss: Option<f64>,
    pub model_calibration_error: Option<f64>,
    pub model_version: f64,
    pub lock_threshold: f64,
    pub lease_threshold: f64,
    pub leases_held: f64,
}

pub struct Telemetry {
    /// Owns the registry the handles below count into.
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Registered when the engine joins a cluster.
    cluster: std::sync::OnceLock<ClusterMetrics>,
    decided: Vec<Counter>,
    refused: Vec<Counter>,
    conflicts: Vec<Counter>,
    handler_runs: Vec<Counter>,
    handler_seconds: [Histogram; 2],
    accepted: Counter,
    quarantined: Counter,
    dispatches: Counter,
    dispatched: Counter,
    commits_stale: Counter,
    lanes_locked: Counter,
    lock_hold: Histogram,
    store_errors: [Counter; 2],
    history_failures: Counter,
    queue_wait: Histogram,
    store_seconds: [Histogram; 2],
    commit_batch: Histogram,
    score: Histogram,
    retrains: Counter,
    retrain_seconds: Histogram,
    gauges: Vec<(&'static str, Gauge)>,
    /// The dashboard's aggregates.
    pub board: Board,
}

/// Cluster mode's series.
struct ClusterMetrics {
    members: Gauge,
    owned: Gauge,
    epoch: Vec<Gauge>,
    backlog: Vec<Gauge>,
    forwarded: Counter,
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::from_static_parts(k, v))
            .collect::<Vec<_>>(),
    )
}

/// The position of `value` in `set`, or of the set's last entry, which only
/// a set ending in `other` expects: the others are closed by the code.
fn index_of(set: &[&str], value: &str) -> usize {
    let position = set.iter().position(|v| *v == value);
    debug_assert!(
        position.is_some() || set.last() == Some(&"other"),
        "invariant: {value:?} is one of {set:?}"
    );
    position.unwrap_or(set.len().saturating_sub(1))
}

/// Gauges in the order [`Telemetry::render`] sets them.
const GAUGES: [(&str, &str); 20] = [
    (
        "sluice_queue_depth",
        "Mutations accepted and not yet decided.",
    ),
    (
        "sluice_lanes",
        "Documents with mutations queued or in flight.",
    ),
    (
        "sluice_in_flight_writes",
        "Lanes being decided and committed now.",
    ),
    (
        "sluice_concurrency_limit",
        "The adaptive limit on lanes in flight.",
    ),
    ("sluice_load", "The load signal, 0 to 1."),
    (
        "sluice_load_threshold",
        "The load above which the dispatcher backs off.",
    ),
    (
        "sluice_admission_limit",
        "Requests let into Sluice at once, at most (the door's adaptive limit).",
    ),
    (
        "sluice_in_system_requests",
        "Synchronous mutations and document reads inside Sluice now.",
    ),
    (
        "sluice_quarantined_mutations",
        "Mutations kept in the quarantine after their handler failed.",
    ),
    (
        "sluice_history_degraded",
        "1 while the history is not what Sluice opened or its writes fail (see /healthz).",
    ),
    (
        "sluice_commit_batch_max",
        "The largest group commit the controller allows now, in lanes.",
    ),
    (
        "sluice_store_recent_latency_seconds",
        "The store's recent latency as the controller smooths it.",
    ),
    (
        "sluice_conflict_rate",
        "The recent share of decided mutations that conflicted.",
    ),
    (
        "sluice_model_auc",
        "Rolling AUC of the conflict predictor over its recent window (NaN until both classes are seen).",
    ),
    (
        "sluice_model_log_loss",
        "Rolling log loss of the conflict predictor over its recent window.",
    ),
    (
        "sluice_model_calibration_error",
        "Rolling expected calibration error (10 bins) of the conflict predictor.",
    ),
    (
        "sluice_model_version",
        "How many times the model was retrained and swapped in.",
    ),
    (
        "sluice_lock_threshold",
        "The conflict score at or above which a lane locks its document in the store (pre-emptive locking).",
    ),
    (
        "sluice_lease_threshold",
        "The forecast at or above which a read with intent=write earns a write lease.",
    ),
    ("sluice_leases_held", "Documents held by a write lease now."),
];

impl Telemetry {
    pub fn new() -> Telemetry {
        let builder = PrometheusBuilder::new();
        // Histograms rather than summaries: buckets aggregate across
        // instances, quantiles do not.
        let recorder = [
            ("sluice_queue_wait_seconds", &LATENCY_BUCKETS[..]),
            ("sluice_store_seconds", &LATENCY_BUCKETS[..]),
            ("sluice_handler_seconds", &LATENCY_BUCKETS[..]),
            ("sluice_commit_batch_lanes", &BATCH_BUCKETS[..]),
            ("sluice_conflict_score", &SCORE_BUCKETS[..]),
            ("sluice_model_retrain_seconds", &RETRAIN_BUCKETS[..]),
            ("sluice_lock_hold_seconds", &LATENCY_BUCKETS[..]),
        ]
        .into_iter()
        .fold(builder, |b, (name, buckets)| {
            // Only an empty bucket list is refused, and none of these is empty.
            match b.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets) {
                Ok(b) => b,
                Err(_) => unreachable!("bucket lists are not empty"),
            }
        })
        .build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        let describe_counter = |name: &'static str, help: &'static str| {
            r.describe_counter(name.into(), None, help.into());
        };
        describe_counter(
            "sluice_mutations_decided_total",
            "Mutations decided, by outcome and by the collection's conflict handler.",
        );
        describe_counter(
            "sluice_mutations_refused_total",
            "Mutations answered with an error instead of a decision (429, 503, 422), by error code.",
        );
        describe_counter(
            "sluice_mutations_accepted_total",
            "Mutations answered 202 (durably queued, decided later).",
        );
        describe_counter(
            "sluice_mutations_quarantined_total",
            "Mutations kept in the quarantine because their handler failed (again, for a failed retry).",
        );
        describe_counter(
            "sluice_conflicts_total",
            "Conflicts detected, by handler, reason and resolution.",
        );
        describe_counter(
            "sluice_handler_runs_total",
            "Runs of custom conflict handlers (script, webhook), by result.",
        );
        describe_counter(
            "sluice_lane_dispatches_total",
            "Lanes dispatched to be decided and committed.",
        );
        describe_counter(
            "sluice_mutations_dispatched_total",
            "Mutations dispatched (a lane carries one or more).",
        );
        describe_counter(
            "sluice_commits_stale_total",
            "Lane commits refused by the store's compare-and-set (a writer bypassed Sluice).",
        );
        describe_counter(
            "sluice_lanes_locked_total",
            "Lanes decided and committed under a lock in the store (pre-emptive locking).",
        );
        r.describe_histogram(
            "sluice_lock_hold_seconds".into(),
            Some(Unit::Seconds),
            "How long a locked lane held its document's lock: its decision and its commit.".into(),
        );
        describe_counter(
            "sluice_store_errors_total",
            "Store round trips that failed.",
        );
        describe_counter(
            "sluice_history_write_failures_total",
            "History batches that could not be written after retries.",
        );
        describe_counter(
            "sluice_model_retrains_total",
            "Times the model was retrained from the history.",
        );
        r.describe_histogram(
            "sluice_queue_wait_seconds".into(),
            Some(Unit::Seconds),
            "Time from admission to dispatch.".into(),
        );
        r.describe_histogram(
            "sluice_store_seconds".into(),
            Some(Unit::Seconds),
            "Store round trips: lane reads and group commits.".into(),
        );
        r.describe_histogram(
            "sluice_handler_seconds".into(),
            Some(Unit::Seconds),
            "Runs of custom conflict handlers.".into(),
        );
        r.describe_histogram(
            "sluice_commit_batch_lanes".into(),
            None,
            "Lanes per group commit.".into(),
        );
        r.describe_histogram(
            "sluice_conflict_score".into(),
            None,
            "Predicted conflict probabilities of dispatched mutations.".into(),
        );
        r.describe_histogram(
            "sluice_model_retrain_seconds".into(),
            Some(Unit::Seconds),
            "Duration of retraining runs.".into(),
        );
        for (name, help) in GAUGES {
            r.describe_gauge(name.into(), None, help.into());
        }
        r.describe_gauge(
            "sluice_build_info".into(),
            None,
            "Always 1; the version is in the label.".into(),
        );
        r.register_gauge(
            &key(
                "sluice_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))],
            ),
            &META,
        )
        .set(1.0);

        let counter = |name, labels: &[(&'static str, &'static str)]| {
            r.register_counter(&key(name, labels), &META)
        };
        let histogram = |name, labels: &[(&'static str, &'static str)]| {
            r.register_histogram(&key(name, labels), &META)
        };
        let mut decided = Vec::new();
        for outcome in OUTCOMES {
            for handler in HANDLERS {
                decided.push(counter(
                    "sluice_mutations_decided_total",
                    &[("outcome", outcome.as_str()), ("handler", handler)],
                ));
            }
        }
        let refused = REFUSALS
            .iter()
            .map(|reason| counter("sluice_mutations_refused_total", &[("reason", reason)]))
            .collect();
        let mut conflicts = Vec::new();
        for handler in HANDLERS {
            for reason in CONFLICT_REASONS {
                for resolution in RESOLUTIONS {
                    conflicts.push(counter(
                        "sluice_conflicts_total",
                        &[
                            ("handler", handler),
                            ("reason", reason),
                            ("resolution", resolution),
                        ],
                    ));
                }
            }
        }
        let mut handler_runs = Vec::new();
        for handler in ["script", "webhook"] {
            for result in HANDLER_RESULTS {
                handler_runs.push(counter(
                    "sluice_handler_runs_total",
                    &[("handler", handler), ("result", result)],
                ));
            }
        }
        let gauges = GAUGES
            .iter()
            .map(|(name, _)| (*name, r.register_gauge(&key(name, &[]), &META)))
            .collect();
        Telemetry {
            decided,
            refused,
            conflicts,
            handler_runs,
            handler_seconds: [
                histogram("sluice_handler_seconds", &[("handler", "script")]),
                histogram("sluice_handler_seconds", &[("handler", "webhook")]),
            ],
            accepted: counter("sluice_mutations_accepted_total", &[]),
            quarantined: counter("sluice_mutations_quarantined_total", &[]),
            dispatches: counter("sluice_lane_dispatches_total", &[]),
            dispatched: counter("sluice_mutations_dispatched_total", &[]),
            commits_stale: counter("sluice_commits_stale_total", &[]),
            lanes_locked: counter("sluice_lanes_locked_total", &[]),
            lock_hold: histogram("sluice_lock_hold_seconds", &[]),
            store_errors: [
                counter("sluice_store_errors_total", &[("op", "read")]),
                counter("sluice_store_errors_total", &[("op", "commit")]),
            ],
            history_failures: counter("sluice_history_write_failures_total", &[]),
            queue_wait: histogram("sluice_queue_wait_seconds", &[]),
            store_seconds: [
                histogram("sluice_store_seconds", &[("op", "read")]),
                histogram("sluice_store_seconds", &[("op", "commit")]),
            ],
            commit_batch: histogram("sluice_commit_batch_lanes", &[]),
            score: histogram("sluice_conflict_score", &[]),
            retrains: counter("sluice_model_retrains_total", &[]),
            retrain_seconds: histogram("sluice_model_retrain_seconds", &[]),
            gauges,
            board: Board::new(),
            recorder,
            cluster: std::sync::OnceLock::new(),
            handle,
        }
    }

    /// One mutation decided: `conflict` is `(base_version, server_version,
    /// resolution)` when it conflicted.
    pub fn decided(
        &self,
        outcome: RecordedOutcome,
        handler: &str,
        conflict: Option<(u64, u64, &str)>,
    ) {
        let o = outcome.index();
        let h = index_of(&HANDLERS, handler);
        self.decided[o * HANDLERS.len() + h].increment(1);
        self.board.count_decided(o);
        if let Some((base, server, resolution)) = conflict {
            let reason = usize::from(base > server);
            let r = index_of(&RESOLUTIONS, resolution);
            self.conflicts[(h * CONFLICT_REASONS.len() + reason) * RESOLUTIONS.len() + r]
                .increment(1);
        }
    }

    /// `n` mutations answered with the error `code` instead of a decision.
    pub fn refused(&self, code: &str, n: usize) {
        self.refused[index_of(&REFUSALS, code)].increment(n as u64);
        self.board.count_refused(n as u64);
    }

    /// Registers cluster mode's series: one per partition, so bounded by
    /// the partition count.
    pub fn join_cluster(&self, partitions: u32) {
        let r = &self.recorder;
        r.describe_gauge(
            "sluice_cluster_members".into(),
            None,
            "Live members of the cluster, as this process last saw them.".into(),
        );
        r.describe_gauge(
            "sluice_cluster_partitions_owned".into(),
            None,
            "Partitions this process owns now.".into(),
        );
        r.describe_gauge(
            "sluice_cluster_partition_epoch".into(),
            None,
            "The fencing epoch of each partition this process owns (0: not owned here).".into(),
        );
        r.describe_gauge(
            "sluice_cluster_partition_backlog".into(),
            None,
            "Entries of each owned partition's stream not yet acknowledged (0: not owned here)."
                .into(),
        );
        r.describe_counter(
            "sluice_mutations_forwarded_total".into(),
            None,
            "Mutations this process received and put into another owner's partition stream.".into(),
        );
        let per_partition = |name: &'static str| {
            (0..partitions)
                .map(|p| {
                    r.register_gauge(
                        &Key::from_parts(name, vec![Label::new("partition", p.to_string())]),
                        &META,
                    )
                })
                .collect()
        };
        let _ = self.cluster.set(ClusterMetrics {
            members: r.register_gauge(&key("sluice_cluster_members", &[]), &META),
            owned: r.register_gauge(&key("sluice_cluster_partitions_owned", &[]), &META),
            epoch: per_partition("sluice_cluster_partition_epoch"),
            backlog: per_partition("sluice_cluster_partition_backlog"),
            forwarded: r.register_counter(&key("sluice_mutations_forwarded_total", &[]), &META),
        });
    }

    /// The cluster as this process's last tick saw it: `owned` with epochs,
    /// `backlogs` of the owned partitions.
    pub fn cluster_seen(&self, members: usize, owned: &[(u32, u64)], backlogs: &[(u32, u64)]) {
        let Some(c) = self.cluster.get() else {
            return;
        };
        c.members.set(members as f64);
        c.owned.set(owned.len() as f64);
        let mut epochs = vec![0.0; c.epoch.len()];
        for (p, e) in owned {
            if let Some(slot) = epochs.get_mut(*p as usize) {
                *slot = *e as f64;
            }
        }
        let mut waiting = vec![0.0; c.backlog.len()];
        for (p, b) in backlogs {
            if let Some(slot) = waiting.get_mut(*p as usize) {
                *slot = *b as f64;
            }
        }
        for (gauge, v) in c.epoch.iter().zip(epochs) {
            gauge.set(v);
        }
        for (gauge, v) in c.backlog.iter().zip(waiting) {
            gauge.set(v);
        }
    }

    pub fn forwarded(&self) {
        if let Some(c) = self.cluster.get() {
            c.forwarded.increment(1);
        }
    }

    pub fn accepted(&self) {
        self.accepted.increment(1);
    }

    /// `n` mutations kept in the quarantine (again, for a failed retry).
    pub fn quarantined(&self, n: usize) {
        self.quarantined.increment(n as u64);
    }

    /// A lane of `mutations` dispatched after they waited the given times.
    pub fn dispatched(
        &self,
        mutations: usize,
        waits: impl Iterator<Item = Duration>,
        scores: impl Iterator<Item = f64>,
    ) {
        self.dispatches.increment(1);
        self.dispatched.increment(mutations as u64);
        for wait in waits {
            self.queue_wait.record(wait.as_secs_f64());
        }
        for score in scores {
            self.score.record(score);
        }
    }

    pub fn store_read(&self, seconds: f64, ok: bool) {
        self.store_seconds[0].record(seconds);
        if !ok {
            self.store_errors[0].increment(1);
        }
    }

    pub fn store_commit(&self, seconds: f64, lanes: usize, ok: bool) {
        self.store_seconds[1].record(seconds);
        self.commit_batch.record(lanes as f64);
        if !ok {
            self.store_errors[1].increment(1);
        }
    }

    /// A lane that held its document's lock for `held`.
    pub fn lane_locked(&self, held: Duration) {
        self.lanes_locked.increment(1);
        self.lock_hold.record(held.as_secs_f64());
    }

    pub fn commit_stale(&self) {
        self.commits_stale.increment(1);
    }

    pub fn history_failure(&self) {
        self.history_failures.increment(1);
    }

    /// One run of a script or webhook handler and how it ended.
    pub fn handler_run(&self, handler: &str, result: &str, seconds: f64) {
        let h = usize::from(handler == "webhook");
        self.handler_runs[h * HANDLER_RESULTS.len() + index_of(&HANDLER_RESULTS, result)]
            .increment(1);
        self.handler_seconds[h].record(seconds);
    }

    pub fn retrained(&self, seconds: f64) {
        self.retrains.increment(1);
        self.retrain_seconds.record(seconds);
    }

    /// Folds buffered histogram samples into their buckets.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition, with the gauges set from `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let values = [
            gauges.queue_depth,
            gauges.lanes,
            gauges.in_flight,
            gauges.concurrency_limit,
            gauges.load,
            gauges.threshold,
            gauges.admission_limit,
            gauges.in_system,
            gauges.quarantined,
            gauges.history_degraded,
            gauges.commit_batch_max,
            gauges.store_latency_seconds,
            gauges.conflict_rate,
            gauges.model_auc.unwrap_or(f64::NAN),
            gauges.model_log_loss.unwrap_or(f64::NAN),
            gauges.model_calibration_error.unwrap_or(f64::NAN),
            gauges.model_version,
            gauges.lock_threshold,
            gauges.lease_threshold,
            gauges.leases_held,
        ];
        debug_assert_eq!(values.len(), self.gauges.len());
        for ((_, gauge), value) in self.gauges.iter().zip(values) {
            gauge.set(value);
        }
        self.handle.render()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    /// Prometheus' conventions: a `sluice_` prefix, snake case, `_total` on
    /// counters and only on them, a base unit (`_seconds`) where there is one,
    /// and label names from the closed sets.
    #[test]
    fn names_follow_prometheus_conventions() {
        let t = Telemetry::new();
        t.handler_run("webhook", "error", 0.1);
        t.retrained(1.0);
        let text = t.render(&Gauges::default());
        let mut families = 0;
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().expect("name"), parts.next().expect("type"));
            families += 1;
            assert!(name.starts_with("sluice_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name} is a {kind}"
            );
            assert!(
                !name.contains("_ms") && !name.contains("millis"),
                "{name}: use base units"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        assert!(families >= 30, "{families} families");
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('{'))
        {
            let labels = &line[line.find('{').expect("{") + 1..line.find('}').expect("}")];
            for pair in labels.split(',') {
                let name = pair.split('=').next().expect("label");
                assert!(
                    [
                        "outcome",
                        "handler",
                        "reason",
                        "resolution",
                        "result",
                        "op",
                        "le",
                        "version"
                    ]
                    .contains(&name),
                    "unexpected label {name} in {line}"
                );
            }
        }
    }

    #[test]
    fn counts_land_in_their_labelled_series() {
        let t = Telemetry::new();
        t.decided(RecordedOutcome::Applied, "automerge", None);
        t.decided(RecordedOutcome::Merged, "automerge", Some((1, 3, "merged")));
        t.decided(
            RecordedOutcome::Rejected,
            "optimistic",
            Some((5, 3, "rejected")),
        );
        t.refused("queue_full", 17);
        t.refused("something new", 1);
        t.handler_run("script", "timeout", 0.05);
        t.store_commit(0.002, 3, true);
        let text = t.render(&Gauges {
            queue_depth: 4.0,
            model_auc: Some(0.75),
            ..Gauges::default()
        });
        let at = |s: &str| sample(&text, s);
        assert_eq!(
            at(r#"sluice_mutations_decided_total{outcome="applied",handler="automerge"}"#),
            Some(1.0)
        );
        assert_eq!(
            at(
                r#"sluice_conflicts_total{handler="automerge",reason="stale_base",resolution="merged"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            at(
                r#"sluice_conflicts_total{handler="optimistic",reason="future_base",resolution="rejected"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            at(r#"sluice_mutations_refused_total{reason="queue_full"}"#),
            Some(17.0)
        );
        assert_eq!(
            at(r#"sluice_mutations_refused_total{reason="other"}"#),
            Some(1.0)
        );
        assert_eq!(
            at(r#"sluice_handler_runs_total{handler="script",result="timeout"}"#),
            Some(1.0)
        );
        assert_eq!(at(r#"sluice_commit_batch_lanes_bucket{le="4"}"#), Some(1.0));
        assert_eq!(at("sluice_queue_depth"), Some(4.0));
        assert_eq!(at("sluice_model_auc"), Some(0.75));
        assert!(
            text.contains("# TYPE sluice_store_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# HELP sluice_mutations_decided_total"),
            "{text}"
        );
    }
}
