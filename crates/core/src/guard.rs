//! When to protect a write before it happens: the threshold on the
//! conflict score above which a lane locks its document in the store
//! (pre-emptive locking), or a read grants a write lease.
//!
//! Protection has a price (a lock holds a store connection and makes other
//! writers wait; a lease makes other clients wait) and a payoff (a write
//! that would have gone stale or conflicted does not). The threshold moves
//! with what each window showed: down when unprotected writes were hit
//! (stale commits, conflicts), up when protection was mostly not needed or
//! the store is slow, and a badly calibrated model earns fewer protections
//! (its calibration error is added to the threshold). Always within the
//! configured bounds; every change is reported for the logs.

use serde::{Deserialize, Serialize};

/// How a protection is decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardMode {
    /// Never.
    Off,
    /// Above the adaptive threshold.
    #[default]
    Adaptive,
    /// Every time (for measuring what protection costs).
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardConfig {
    pub mode: GuardMode,
    /// Where the threshold starts.
    pub threshold: f64,
    pub threshold_min: f64,
    pub threshold_max: f64,
}

/// What one window showed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GuardWindow {
    /// Writes decided without protection, and how many of them were hit
    /// (a stale compare-and-set; a conflict).
    pub unprotected: u64,
    pub hit: u64,
    /// Writes decided under protection, and how many of them it saved
    /// (someone else wrote the document meanwhile, or waited on it).
    pub protected: u64,
    pub needed: u64,
    /// Of those, the marginal ones (`GuardThreshold::is_marginal`: scored
    /// just above the threshold), by which the threshold is judged: the
    /// protections a higher threshold would drop.
    pub marginal: u64,
    pub marginal_needed: u64,
    /// The store's latency against its target: protection held across a
    /// slow store costs more.
    pub store_latency_ms: f64,
    pub latency_target_ms: f64,
    /// The model's calibration error (0 when perfect).
    pub calibration_error: f64,
}

/// A move of the threshold, for the logs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GuardChange {
    pub from: f64,
    pub to: f64,
    pub reason: &'static str,
}

/// How far one hit lowers the threshold (up to `HITS_COUNTED` a window).
const STEP_DOWN: f64 = 0.05;
const HITS_COUNTED: u64 = 4;
/// How far a window of unneeded protection, or a slow store, raises it.
const STEP_UP: f64 = 0.02;
/// Marginal protections a window needs before their payoff is judged.
const MARGINAL_JUDGED_MIN: u64 = 8;
/// Under this share of needed marginal protections, they are waste.
const NEEDED_SHARE_MIN: f64 = 0.1;
/// How far above the threshold a protection is marginal.
const MARGIN: f64 = 0.1;
/// The most a calibration error adds to the threshold.
const CALIBRATION_PENALTY_MAX: f64 = 0.25;
/// Moves smaller than this are not reported.
const REPORTED_MIN: f64 = 0.005;

#[derive(Clone, Debug)]
pub struct GuardThreshold {
    config: GuardConfig,
    value: f64,
    penalty: f64,
}

impl GuardThreshold {
    pub fn new(config: GuardConfig) -> Self {
        GuardThreshold {
            value: config
                .threshold
                .clamp(config.threshold_min, config.threshold_max),
            penalty: 0.0,
            config,
        }
    }

    pub fn mode(&self) -> GuardMode {
        self.config.mode
    }

    /// The score at or above which a write is protected now.
    pub fn threshold(&self) -> f64 {
        (self.value + self.penalty).clamp(self.config.threshold_min, self.config.threshold_max)
    }

    pub fn protects(&self, score: f64) -> bool {
        match self.config.mode {
            GuardMode::Off => false,
            GuardMode::Always => true,
            GuardMode::Adaptive => score >= self.threshold(),
        }
    }

    /// A protection a slightly higher threshold would drop: what judges
    /// whether the threshold is too low.
    pub fn is_marginal(&self, score: f64) -> bool {
        score < self.threshold() + MARGIN
    }

    /// Ends the window gathered in `window` (emptied for the next): the
    /// threshold moves by what it showed, with the store's latency and the
    /// model's calibration error now.
    pub fn close(
        &mut self,
        window: &mut GuardWindow,
        store_latency_ms: f64,
        latency_target_ms: f64,
        calibration_error: f64,
    ) -> Option<GuardChange> {
        let w = GuardWindow {
            store_latency_ms,
            latency_target_ms,
            calibration_error,
            ..std::mem::take(window)
        };
        self.observe(&w)
    }

    /// Moves the threshold by what a window showed; the change, when one
    /// is worth reporting.
    pub fn observe(&mut self, w: &GuardWindow) -> Option<GuardChange> {
        if self.config.mode != GuardMode::Adaptive {
            return None;
        }
        let from = self.threshold();
        self.penalty = if w.calibration_error.is_finite() {
            w.calibration_error.clamp(0.0, CALIBRATION_PENALTY_MAX)
        } else {
            0.0
        };
        let (lo, hi) = (self.config.threshold_min, self.config.threshold_max);
        let mut reason = "calibration";
        if w.hit > 0 {
            self.value -= STEP_DOWN * w.hit.min(HITS_COUNTED) as f64;
            reason = "unprotected writes were hit";
        } else if w.marginal >= MARGINAL_JUDGED_MIN
            && (w.marginal_needed as f64) < NEEDED_SHARE_MIN * w.marginal as f64
        {
            self.value += STEP_UP;
            reason = "protection was rarely needed";
        } else if w.protected > 0
            && w.latency_target_ms > 0.0
            && w.store_latency_ms > w.latency_target_ms
        {
            self.value += STEP_UP;
            reason = "the store is slow";
        }
        self.value = self.value.clamp(lo, hi);
        let to = self.threshold();
        ((to - from).abs() >= REPORTED_MIN).then_some(GuardChange { from, to, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn adaptive(start: f64) -> GuardThreshold {
        GuardThreshold::new(GuardConfig {
            mode: GuardMode::Adaptive,
            threshold: start,
            threshold_min: 0.02,
            threshold_max: 0.98,
        })
    }

    /// A workload with a known optimum: hot documents score 0.8 and are
    /// written behind Sluice's back half the time; cold ones score 0.1 and
    /// never are. Any threshold in (0.1, 0.8] protects exactly the writes
    /// that need it. Returns where the threshold ends, and the hits and
    /// the unneeded protections of the last 100 windows.
    fn settle(start: f64, calibration_error: f64) -> (f64, u64, u64) {
        let mut t = adaptive(start);
        let mut rng = SplitMix64::new(7);
        let (mut late_hits, mut late_waste) = (0, 0);
        for round in 0..600 {
            let mut w = GuardWindow {
                latency_target_ms: 20.0,
                store_latency_ms: 5.0,
                calibration_error,
                ..GuardWindow::default()
            };
            for _ in 0..40 {
                let hot = rng.unit() < 0.3;
                let score = if hot { 0.8 } else { 0.1 };
                let written_behind = hot && rng.unit() < 0.5;
                if t.protects(score) {
                    w.protected += 1;
                    w.needed += u64::from(written_behind);
                    if t.is_marginal(score) {
                        w.marginal += 1;
                        w.marginal_needed += u64::from(written_behind);
                    }
                    if round >= 500 && !hot {
                        late_waste += 1;
                    }
                } else {
                    w.unprotected += 1;
                    w.hit += u64::from(written_behind);
                    if round >= 500 && written_behind {
                        late_hits += 1;
                    }
                }
            }
            t.observe(&w);
        }
        (t.threshold(), late_hits, late_waste)
    }

    #[test]
    fn the_threshold_settles_where_it_protects_what_needs_it() {
        for start in [0.98, 0.5, 0.02] {
            let (end, hits, waste) = settle(start, 0.0);
            assert!(end > 0.1 && end <= 0.8, "from {start}: ended at {end}");
            assert_eq!(hits, 0, "from {start}: hot writes went unprotected");
            assert_eq!(waste, 0, "from {start}: cold writes were protected");
        }
    }

    #[test]
    fn a_badly_calibrated_model_earns_fewer_protections() {
        let mut good = adaptive(0.5);
        let mut bad = adaptive(0.5);
        let window = |e| GuardWindow {
            calibration_error: e,
            ..GuardWindow::default()
        };
        good.observe(&window(0.0));
        let change = bad.observe(&window(0.2));
        assert!(bad.threshold() > good.threshold() + 0.19);
        assert!(!bad.protects(0.6) && good.protects(0.6));
        assert_eq!(change.map(|c| c.reason), Some("calibration"));
    }

    #[test]
    fn a_slow_store_raises_the_threshold_and_bounds_hold() {
        let mut t = adaptive(0.5);
        let slow = GuardWindow {
            protected: 3,
            needed: 3,
            store_latency_ms: 50.0,
            latency_target_ms: 20.0,
            ..GuardWindow::default()
        };
        let change = t.observe(&slow).map(|c| c.reason);
        assert_eq!(change, Some("the store is slow"));
        for _ in 0..100 {
            t.observe(&slow);
        }
        assert!((t.threshold() - 0.98).abs() < 1e-9, "{}", t.threshold());
        let hit = GuardWindow {
            unprotected: 10,
            hit: 10,
            ..GuardWindow::default()
        };
        for _ in 0..100 {
            t.observe(&hit);
        }
        assert!((t.threshold() - 0.02).abs() < 1e-9, "{}", t.threshold());
    }

    #[test]
    fn off_and_always_do_not_move() {
        for (mode, protects) in [(GuardMode::Off, false), (GuardMode::Always, true)] {
            let mut t = GuardThreshold::new(GuardConfig {
                mode,
                threshold: 0.5,
                threshold_min: 0.02,
                threshold_max: 0.98,
            });
            let hit = GuardWindow {
                unprotected: 10,
                hit: 10,
                ..GuardWindow::default()
            };
            assert_eq!(t.observe(&hit), None);
            assert_eq!(t.protects(0.0), protects);
            assert_eq!(t.protects(1.0), protects);
        }
    }
}
