//! `[leases]`: when a read with `intent=write` earns a write lease (see
//! `dispatch/leases.rs`), how long one lasts, and how many there may be.

use super::locking::LockingSettings;
use crate::dispatch::{LEASE_MS_MAX, LEASES_DEFAULT, LeaseConfig};
use crate::guard::GuardMode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseSettings {
    /// `adaptive` (a forecast above the threshold, which moves), `off`
    /// (forecasts only), or `always`.
    pub mode: GuardMode,
    /// Where the threshold starts, a conflict probability from 0 to 1.
    pub threshold: f64,
    /// The bounds it moves within.
    pub threshold_min: f64,
    pub threshold_max: f64,
    /// How long a lease holds the document unless its holder writes first.
    pub duration_ms: u64,
    /// Documents held by a lease at once; past it, reads get no lease.
    pub leases_max: usize,
    /// Forecasts remembered until their write is decided (for the
    /// forecast's own quality); past it, the oldest is forgotten.
    pub forecasts_max: usize,
}

impl LeaseSettings {
    pub fn config(&self) -> LeaseConfig {
        LeaseConfig {
            guard: self.guard().config(),
            duration: Duration::from_millis(self.duration_ms),
            holds_max: self.leases_max,
            forecasts_max: self.forecasts_max,
        }
    }

    /// The threshold's settings, shaped as locking's (the same rules).
    fn guard(&self) -> LockingSettings {
        LockingSettings {
            mode: self.mode,
            threshold: self.threshold,
            threshold_min: self.threshold_min,
            threshold_max: self.threshold_max,
            decide_first: true,
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        self.guard().validate("leases")?;
        if !(1..=LEASE_MS_MAX).contains(&self.duration_ms) {
            return Err(format!(
                "leases.duration_ms must be from 1 to {LEASE_MS_MAX}, got {}: a holder that never writes costs the others this long",
                self.duration_ms
            ));
        }
        if self.leases_max == 0 || self.forecasts_max == 0 {
            return Err("leases.leases_max and leases.forecasts_max must be at least 1 (mode = \"off\" turns leases off)".into());
        }
        Ok(())
    }
}

impl Default for LeaseSettings {
    fn default() -> Self {
        let d = LEASES_DEFAULT;
        LeaseSettings {
            mode: d.guard.mode,
            threshold: d.guard.threshold,
            threshold_min: d.guard.threshold_min,
            threshold_max: d.guard.threshold_max,
            duration_ms: u64::try_from(d.duration.as_millis()).unwrap_or(u64::MAX),
            leases_max: d.holds_max,
            forecasts_max: d.forecasts_max,
        }
    }
}
