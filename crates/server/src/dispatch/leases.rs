//! Read-time forecasts and write leases. A read with `intent=write` is
//! answered with the conflict probability a write based on it would be
//! scored with now; at or above the lease threshold it also gets a short
//! write lease: until it expires or its holder's mutation (carrying the
//! token) arrives, other mutations of the document wait in its lane's hold
//! (`lanes.rs`), and the holder's goes first. The threshold adapts like the
//! lock threshold (`guard`): down when forecast writes without a lease
//! conflicted, up when marginal leases held nobody back or the store is
//! slow, and by the model's calibration error.
//!
//! Each forecast is remembered (bounded) until its client's write based on
//! the same version is decided, so the forecast's own AUC and calibration
//! are measured against what then happened.
//!
//! Its own lock is a leaf: the lanes' lock is taken before or after it,
//! never while it is held.

use super::lanes::{Hold, HoldEnd, NotHeld};
use super::{Engine, Inner, lock};
use crate::guard::{GuardChange, GuardConfig, GuardMode, GuardThreshold, GuardWindow};
use crate::model::{DocKey, MutationRecord, Op};
use crate::predict::{Observation, Quality, QualityReport};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Recent forecasts the quality's "recent" window covers.
const QUALITY_WINDOW: usize = 10_000;

/// The leases' settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaseConfig {
    pub guard: GuardConfig,
    /// How long a lease lasts unless its holder writes.
    pub duration: Duration,
    /// Documents held by a lease at once, at most.
    pub holds_max: usize,
    /// Forecasts remembered until their write is decided, at most.
    pub forecasts_max: usize,
}

/// What a read with `intent=write` is told.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    pub conflict_probability: f64,
    pub lease: Option<Lease>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub token: String,
    /// When it ends unless its holder writes first (ms since the epoch).
    pub expires_ms: i64,
}

/// `GET /v1/stats`' view of the leases.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LeaseStats {
    pub mode: GuardMode,
    /// The forecast at or above which a read earns a lease now.
    pub threshold: f64,
    pub forecasts: u64,
    pub granted: u64,
    /// Leases ended by their holder's mutation, and by their time.
    pub used: u64,
    pub expired: u64,
    /// Ended leases that held someone else's mutation back.
    pub needed: u64,
    /// Mutations held back by leases, in all.
    pub held_back: u64,
    /// Documents held now, and the mutations waiting on their holders.
    pub held_now: usize,
    pub waiting_now: usize,
    /// The forecasts against what then happened (a write based on the
    /// read, by the same client, decided as a conflict or not).
    pub forecast_quality: QualityReport,
}

pub(super) struct Leases {
    config: LeaseConfig,
    state: Mutex<State>,
    /// Forecasts remembered: read without the lock on the hot path.
    remembered: AtomicUsize,
    forecasts_total: AtomicU64,
    granted_total: AtomicU64,
    used_total: AtomicU64,
    expired_total: AtomicU64,
    needed_total: AtomicU64,
    held_back_total: AtomicU64,
}

struct State {
    threshold: GuardThreshold,
    window: GuardWindow,
    /// (client, document) → (the version read, the forecast, leased),
    /// oldest first in `order` for eviction.
    forecasts: HashMap<(String, DocKey), (u64, f64, bool)>,
    order: VecDeque<(String, DocKey)>,
    quality: Quality,
}

impl Leases {
    pub(super) fn new(config: LeaseConfig) -> Self {
        Leases {
            config,
            state: Mutex::new(State {
                threshold: GuardThreshold::new(config.guard),
                window: GuardWindow::default(),
                forecasts: HashMap::new(),
                order: VecDeque::new(),
                quality: Quality::new(QUALITY_WINDOW),
            }),
            remembered: AtomicUsize::new(0),
            forecasts_total: AtomicU64::new(0),
            granted_total: AtomicU64::new(0),
            used_total: AtomicU64::new(0),
            expired_total: AtomicU64::new(0),
            needed_total: AtomicU64::new(0),
            held_back_total: AtomicU64::new(0),
        }
    }

    fn wants(&self, p: f64) -> bool {
        lock(&self.state).threshold.protects(p)
    }

    /// Remembers a forecast until the write it forecast is decided; the
    /// oldest goes when `forecasts_max` are remembered.
    fn remember(&self, client: &str, doc: &DocKey, version: u64, p: f64, leased: bool) {
        self.forecasts_total.fetch_add(1, Ordering::Relaxed);
        let mut state = lock(&self.state);
        let key = (client.to_owned(), doc.clone());
        if state
            .forecasts
            .insert(key.clone(), (version, p, leased))
            .is_none()
        {
            state.order.push_back(key);
        }
        while state.forecasts.len() > self.config.forecasts_max {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            state.forecasts.remove(&oldest);
        }
        // `order` may keep keys already removed by a decision: bounded too.
        while state.order.len() > 2 * self.config.forecasts_max.max(1) {
            state.order.pop_front();
        }
        self.remembered
            .store(state.forecasts.len(), Ordering::Relaxed);
    }

    /// Decided mutations settle the forecasts made for them: a mutation by
    /// the forecast's client, of its document, based on the version read.
    pub(super) fn observe(&self, records: &[MutationRecord]) {
        if self.remembered.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut state = lock(&self.state);
        for record in records {
            let key = (record.client.clone(), record.doc.clone());
            let Some(&(version, p, leased)) = state.forecasts.get(&key) else {
                continue;
            };
            if record.base_version != Some(version) {
                continue;
            }
            state.forecasts.remove(&key);
            state.quality.observe(p, record.conflict);
            if !leased {
                state.window.unprotected += 1;
                state.window.hit += u64::from(record.conflict);
            }
        }
        self.remembered
            .store(state.forecasts.len(), Ordering::Relaxed);
    }

    /// A lease ended: by its holder's mutation, or by its time.
    pub(super) fn ended(&self, end: HoldEnd) {
        let needed = end.held_back > 0;
        let total = if end.used {
            &self.used_total
        } else {
            &self.expired_total
        };
        total.fetch_add(1, Ordering::Relaxed);
        self.needed_total
            .fetch_add(u64::from(needed), Ordering::Relaxed);
        self.held_back_total
            .fetch_add(end.held_back as u64, Ordering::Relaxed);
        let mut state = lock(&self.state);
        let marginal = state.threshold.is_marginal(end.p);
        let w = &mut state.window;
        w.protected += 1;
        w.needed += u64::from(needed);
        w.marginal += u64::from(marginal);
        w.marginal_needed += u64::from(marginal && needed);
    }

    /// Ends a window: the threshold moves by what it showed.
    pub(super) fn tick(
        &self,
        store_latency_ms: f64,
        latency_target_ms: f64,
        calibration_error: f64,
    ) -> Option<GuardChange> {
        let state = &mut *lock(&self.state);
        state.threshold.close(
            &mut state.window,
            store_latency_ms,
            latency_target_ms,
            calibration_error,
        )
    }

    pub(super) fn stats(&self, (held_now, waiting_now): (usize, usize)) -> LeaseStats {
        let (mode, threshold, forecast_quality) = {
            let state = lock(&self.state);
            (
                state.threshold.mode(),
                state.threshold.threshold(),
                state.quality.all_time(),
            )
        };
        LeaseStats {
            mode,
            threshold,
            forecasts: self.forecasts_total.load(Ordering::Relaxed),
            granted: self.granted_total.load(Ordering::Relaxed),
            used: self.used_total.load(Ordering::Relaxed),
            expired: self.expired_total.load(Ordering::Relaxed),
            needed: self.needed_total.load(Ordering::Relaxed),
            held_back: self.held_back_total.load(Ordering::Relaxed),
            held_now,
            waiting_now,
            forecast_quality,
        }
    }
}

impl Engine {
    /// The forecast for a write by `client` based on version `version` of
    /// the document, read now, and a write lease when the forecast is at or
    /// above the lease threshold and no other client holds one. A client
    /// that holds the document's lease already is told its own again. In
    /// cluster mode no lease is granted: a lease here would not hold back
    /// writes queued at the document's owner.
    pub fn forecast(&self, doc: &DocKey, client: &str, version: u64) -> Forecast {
        let inner = &self.inner;
        let now_ms = inner.clock.now_ms();
        let p = if inner.config.predictor.enabled {
            let observation = Observation {
                doc,
                op: Op::Patch,
                fields: &[],
                client,
                base_version: Some(version),
                event_ms: now_ms,
                lane_waiting: inner.lanes.waiting_len(doc),
            };
            inner.learning.score(&observation).probability
        } else {
            0.0
        };
        let lease = if inner.cluster.get().is_none() && inner.leases.wants(p) {
            grant(inner, doc, client, p, now_ms)
        } else {
            None
        };
        inner
            .leases
            .remember(client, doc, version, p, lease.is_some());
        Forecast {
            conflict_probability: p,
            lease,
        }
    }
}

/// Holds the document's lane for `client` and arms the lease's expiry.
fn grant(inner: &Arc<Inner>, doc: &DocKey, client: &str, p: f64, now_ms: i64) -> Option<Lease> {
    let config = &inner.leases.config;
    let duration_ms = i64::try_from(config.duration.as_millis()).unwrap_or(i64::MAX);
    let token = uuid::Uuid::new_v4().simple().to_string();
    let until_ms = now_ms.saturating_add(duration_ms);
    let hold = Hold::new(token.clone(), client.to_owned(), until_ms, p);
    match inner.lanes.hold(doc, hold, config.holds_max) {
        Ok(()) => {}
        Err(NotHeld::Held {
            client: holder,
            token,
            until_ms,
        }) if holder == client => {
            return Some(Lease {
                token,
                expires_ms: until_ms,
            });
        }
        Err(_) => return None,
    }
    inner.leases.granted_total.fetch_add(1, Ordering::Relaxed);
    let (inner2, doc2, token2) = (inner.clone(), doc.clone(), token.clone());
    let duration = config.duration;
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        if let Some(end) = inner2.lanes.unhold(&doc2, &token2) {
            inner2.leases.ended(end);
        }
    });
    Some(Lease {
        token,
        expires_ms: until_ms,
    })
}
