//! The engine's chores: sampling the host, closing the dashboard's seconds,
//! reading collection settings again, expiring stored replies.

use super::{Engine, Inner, lock};
use crate::resolve::CollectionConfig;
use crate::telemetry::SeriesPoint;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// How often the host's CPU and memory are sampled.
const HOST_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// How often collection settings are read again from the store, so that
/// several Sluice processes on one store converge on what any of them was
/// told.
const COLLECTIONS_REFRESH: Duration = Duration::from_secs(2);

/// Host CPU and memory use, 0–1, sampled by a background task (zero when
/// sampling is off, as in the simulation): the load signal's inputs from
/// outside. The decisions themselves take them as plain numbers (`Signals`).
#[derive(Default)]
pub(super) struct HostLoad {
    cpu: AtomicU64,
    memory: AtomicU64,
}

impl HostLoad {
    pub(super) fn set(&self, cpu: f64, memory: f64) {
        self.cpu.store(cpu.to_bits(), Ordering::Relaxed);
        self.memory.store(memory.to_bits(), Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> (f64, f64) {
        (
            f64::from_bits(self.cpu.load(Ordering::Relaxed)),
            f64::from_bits(self.memory.load(Ordering::Relaxed)),
        )
    }
}

/// Samples the host's CPU and memory into `HostLoad`.
pub(super) async fn sample_host(inner: Arc<Inner>) {
    let mut system = match sysinfo::System::new() {
        Ok(system) => system,
        Err(e) => {
            warn!(error = %e, "cannot read host CPU and memory; the load signal will use the store and the queue only");
            return;
        }
    };
    loop {
        system.refresh_cpu_usage();
        system.refresh_memory();
        let cpu = f64::from(system.global_cpu_usage()) / 100.0;
        let total = system.total_memory();
        let memory = if total == 0 {
            0.0
        } else {
            system.used_memory() as f64 / total as f64
        };
        inner.host.set(cpu, memory);
        tokio::time::sleep(HOST_SAMPLE_INTERVAL).await;
    }
}

/// Closes a second of the dashboard's series every second, and folds the
/// metrics' buffered samples into their buckets every few.
pub(super) async fn sample_board(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let upkeep_every = crate::telemetry::UPKEEP_EVERY.as_secs().max(1);
    let mut seconds = 0u64;
    loop {
        tick.tick().await;
        let stats = inner.stats();
        inner.telemetry.board.tick(SeriesPoint {
            at_ms: inner.clock.now_ms(),
            queue_depth: stats.queue_depth as u64,
            in_flight: stats.in_flight as u64,
            concurrency_limit: stats.concurrency_limit as u64,
            load: stats.load,
            threshold: stats.threshold,
            ..SeriesPoint::default()
        });
        seconds += 1;
        if seconds.is_multiple_of(upkeep_every) {
            inner.telemetry.upkeep();
        }
    }
}

/// Moves the lock threshold once a second by what the lanes of that second
/// showed, the store's latency and the model's calibration; each move is
/// logged.
pub(super) async fn adapt_locking(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let latency_ms = lock(&inner.control).state().store_latency_ms;
        let calibration = inner
            .learning
            .report()
            .recent
            .expected_calibration_error
            .unwrap_or(0.0);
        let target_ms = inner.config.latency_target_ms;
        if let Some(change) = inner.locking.tick(latency_ms, target_ms, calibration) {
            info!(
                from = change.from,
                to = change.to,
                reason = change.reason,
                "lock threshold moved"
            );
        }
        if let Some(change) = inner.leases.tick(latency_ms, target_ms, calibration) {
            info!(
                from = change.from,
                to = change.to,
                reason = change.reason,
                "lease threshold moved"
            );
        }
    }
}

/// Reads the collection settings again now and then: another Sluice process
/// on the same store may have changed them. A setting that no longer parses
/// is logged and the one in use kept.
pub(super) async fn refresh_collections(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(COLLECTIONS_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the engine has just read them.
    tick.tick().await;
    loop {
        tick.tick().await;
        let mark = inner.collections.mark();
        let listed = match inner.store.collections().await {
            Ok(listed) => listed,
            Err(e) => {
                debug!(error = %e, "reading collection settings failed; trying again later");
                continue;
            }
        };
        let mut fresh = Vec::with_capacity(listed.len());
        for (name, text) in listed {
            match serde_json::from_str::<CollectionConfig>(&text) {
                Ok(config) => fresh.push((name, config)),
                Err(e) => {
                    warn!(collection = %name, error = %e, "a stored collection setting does not parse; keeping the one in use")
                }
            }
        }
        inner.collections.refresh(mark, fresh);
    }
}

/// How often the history is checked for being what it opened.
const HISTORY_WATCH: Duration = Duration::from_secs(5);

/// Says, once, when the history stops being what Sluice opened (a file
/// deleted or replaced under it), and when it is again.
pub(super) async fn watch_history(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HISTORY_WATCH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy = true;
    loop {
        tick.tick().await;
        match inner.history.health() {
            Err(e) if was_healthy => {
                error!(error = %e, "the history is degraded: conflicts and the model's training data are being lost; restart Sluice on a history it can keep");
                was_healthy = false;
            }
            Ok(()) if !was_healthy => {
                info!("the history is healthy again");
                was_healthy = true;
            }
            _ => {}
        }
    }
}

pub(super) async fn expire_replies(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let retention_ms =
            i64::try_from(inner.config.idempotency_retention.as_millis()).unwrap_or(i64::MAX);
        let before = inner.clock.now_ms().saturating_sub(retention_ms);
        match inner.store.expire_replies(before).await {
            Ok(n) if n > 0 => info!(expired = n, "expired stored replies"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "expiring stored replies failed"),
        }
    }
}

/// How often a debug build checks the engine's invariants while it serves.
const INVARIANTS_EVERY: Duration = Duration::from_millis(250);

/// Debug builds (every test's server among them) check the engine's
/// invariants while serving, and stop the process at the first one broken:
/// a server that goes on past a broken invariant hides where it broke.
pub(super) async fn check_invariants(engine: Engine) {
    let mut tick = tokio::time::interval(INVARIANTS_EVERY);
    loop {
        tick.tick().await;
        if let Err(broken) = engine.check_invariants() {
            tracing::error!(invariant = %broken, "an engine invariant is broken; stopping");
            eprintln!("sluice: an engine invariant is broken: {broken}");
            std::process::abort();
        }
    }
}
