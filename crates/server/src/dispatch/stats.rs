//! What the operator surface reads: `/v1/stats`, `/metrics`, `/v1/model`
//! and the dashboard's snapshot, assembled from the engine's state.

use super::{Engine, Inner, control, lock};
use crate::predict::ModelReport;
use crate::telemetry::Gauges;
/// A snapshot for `/v1/stats` and the logs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EngineStats {
    pub load: f64,
    pub threshold: f64,
    pub concurrency_limit: usize,
    pub in_flight: usize,
    /// Mutations accepted and not yet decided.
    pub queue_depth: usize,
    pub lanes: usize,
    pub commit_batch_max: usize,
    pub store_latency_ms: f64,
    pub baseline_latency_ms: f64,
    pub conflict_rate: f64,
    pub cpu: f64,
    pub memory: f64,
    /// Mutations decided since the start (applied, merged or rejected).
    pub mutations_decided: u64,
    /// Lane commits the store refused because the version had moved (a
    /// writer that bypassed Sluice): store writes wasted and done again.
    pub commits_stale: u64,
    /// Requests inside Sluice: synchronous mutations between arrival and
    /// answer, and document reads.
    pub in_system: usize,
    /// Requests let into the system at once, at most (the door's adaptive
    /// limit).
    pub admission_limit: usize,
    /// Mutations kept in the quarantine.
    pub quarantined: usize,
    /// Pre-emptive locking: its mode, its threshold now, and what it did.
    pub locking: super::locking::LockingStats,
    /// Read-time forecasts and write leases.
    pub leases: super::leases::LeaseStats,
}

/// `GET /v1/dashboard`: what the dashboard draws.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Dashboard {
    #[serde(flatten)]
    pub board: crate::telemetry::Snapshot,
    pub stats: EngineStats,
    pub model: ModelSummary,
    /// The cluster this process is a member of, as its last tick saw it;
    /// `null` outside cluster mode.
    pub cluster: Option<DashboardCluster>,
}

/// The dashboard's view of the cluster: which member serves the page, and
/// the live members (no Redis round trip: the last tick's view).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DashboardCluster {
    pub member: String,
    /// Partitions this member owns now, of `partitions`.
    pub owned: usize,
    pub partitions: u32,
    pub members: Vec<DashboardMember>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DashboardMember {
    pub id: String,
    pub address: String,
    pub last_seen_ms: i64,
}

/// The predictor's quality over its recent window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ModelSummary {
    pub model_version: u64,
    pub learned: u64,
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub calibration_error: Option<f64>,
    /// Predicted probability against the observed conflict rate, per bin.
    pub calibration: Vec<crate::predict::quality::CalibrationBin>,
}

impl ModelSummary {
    pub(super) fn of(report: ModelReport) -> ModelSummary {
        ModelSummary {
            model_version: report.training.model_version,
            learned: report.learned,
            auc: report.recent.auc,
            log_loss: report.recent.log_loss,
            calibration_error: report.recent.expected_calibration_error,
            calibration: report.recent.calibration,
        }
    }
}
impl Engine {
    pub fn stats(&self) -> EngineStats {
        self.inner.stats()
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let stats = self.inner.stats();
        let report = self.model_report();
        let gauges = Gauges {
            queue_depth: stats.queue_depth as f64,
            lanes: stats.lanes as f64,
            in_flight: stats.in_flight as f64,
            concurrency_limit: stats.concurrency_limit as f64,
            load: stats.load,
            threshold: stats.threshold,
            admission_limit: stats.admission_limit as f64,
            in_system: stats.in_system as f64,
            quarantined: stats.quarantined as f64,
            history_degraded: if self.degraded().is_empty() { 0.0 } else { 1.0 },
            commit_batch_max: stats.commit_batch_max as f64,
            store_latency_seconds: stats.store_latency_ms / 1000.0,
            conflict_rate: stats.conflict_rate,
            model_auc: report.recent.auc,
            model_log_loss: report.recent.log_loss,
            model_calibration_error: report.recent.expected_calibration_error,
            model_version: report.training.model_version as f64,
            lock_threshold: stats.locking.threshold,
            lease_threshold: stats.leases.threshold,
            leases_held: stats.leases.held_now as f64,
        };
        self.inner.telemetry.render(&gauges)
    }

    /// The dashboard's aggregates, leaving out series points up to
    /// `series_after_ms` (what a stream already sent).
    pub fn dashboard(&self, series_after_ms: i64) -> Dashboard {
        Dashboard {
            board: self
                .inner
                .telemetry
                .board
                .snapshot(self.inner.clock.now_ms(), series_after_ms),
            stats: self.inner.stats(),
            model: self.model_summary(),
            cluster: self.cluster_ownership().map(|o| DashboardCluster {
                member: o.member_id().to_string(),
                owned: o.owned().len(),
                partitions: o.config().partitions,
                members: o
                    .members()
                    .into_iter()
                    .map(|m| DashboardMember {
                        id: m.id,
                        address: m.address,
                        last_seen_ms: m.last_seen_ms,
                    })
                    .collect(),
            }),
        }
    }

    fn model_summary(&self) -> ModelSummary {
        self.inner.learning.summary(self.inner.clock.elapsed())
    }
}

impl Engine {
    /// Checks every invariant of the engine's state now, in every build;
    /// `Err` names the first one broken. The simulation calls it after every
    /// event (each store operation and each answer).
    pub fn check_invariants(&self) -> Result<(), String> {
        let inner = &self.inner;
        inner.lanes.check()?;
        lock(&inner.control).check()?;
        inner.admission.check()?;
        inner.quarantine.check()?;
        inner.cache.check()
    }
}

impl Inner {
    pub(super) fn stats(&self) -> EngineStats {
        let control = lock(&self.control).state();
        let counts = self.lanes.counts();
        let (queue_depth, lanes, in_flight) = (counts.pending, counts.lanes, counts.in_flight);
        let (cpu, memory) = self.host.get();
        let signals = self.signals(&control, in_flight);
        EngineStats {
            load: control::load(&signals),
            threshold: control.threshold,
            concurrency_limit: control.concurrency_limit,
            in_flight,
            queue_depth,
            lanes,
            commit_batch_max: control.commit_batch_max,
            store_latency_ms: control.store_latency_ms,
            baseline_latency_ms: control.baseline_latency_ms,
            conflict_rate: control.conflict_rate,
            cpu,
            memory,
            mutations_decided: self.telemetry.board.totals().decided(),
            commits_stale: self.pipeline.commits_stale(),
            in_system: self.admission.in_system(),
            admission_limit: self.admission.limit(),
            quarantined: self.quarantine.len(),
            locking: self.locking.stats(),
            leases: self.leases.stats(self.lanes.held()),
        }
    }
}
