//! `[locking]`: when a lane locks its document in the store before deciding
//! (see `dispatch/locking.rs`), and the bounds its threshold adapts within.

use crate::guard::{GuardConfig, GuardMode};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockingSettings {
    /// `adaptive` (above the threshold, which moves), `off`, or `always`.
    pub mode: GuardMode,
    /// Where the threshold starts, a conflict probability from 0 to 1.
    pub threshold: f64,
    /// The bounds it moves within.
    pub threshold_min: f64,
    pub threshold_max: f64,
    /// A locking lane decides before it takes the lock, and takes none
    /// when it writes nothing: the lock then holds only the
    /// compare-and-set (and a decision again if the document moved).
    pub decide_first: bool,
}

impl LockingSettings {
    pub fn from_config(config: GuardConfig) -> Self {
        LockingSettings {
            mode: config.mode,
            threshold: config.threshold,
            threshold_min: config.threshold_min,
            threshold_max: config.threshold_max,
            decide_first: true,
        }
    }

    pub fn config(&self) -> GuardConfig {
        GuardConfig {
            mode: self.mode,
            threshold: self.threshold,
            threshold_min: self.threshold_min,
            threshold_max: self.threshold_max,
        }
    }

    /// `section`: where the settings are, for the message.
    pub(super) fn validate(&self, section: &str) -> Result<(), String> {
        let in_unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(in_unit(self.threshold) && in_unit(self.threshold_min) && in_unit(self.threshold_max))
        {
            return Err(format!(
                "{section}.threshold, threshold_min and threshold_max must be from 0 to 1"
            ));
        }
        if !(self.threshold_min <= self.threshold && self.threshold <= self.threshold_max) {
            return Err(format!(
                "{section}: threshold_min <= threshold <= threshold_max, got {} <= {} <= {}",
                self.threshold_min, self.threshold, self.threshold_max
            ));
        }
        Ok(())
    }
}

impl Default for LockingSettings {
    fn default() -> Self {
        LockingSettings::from_config(crate::dispatch::LOCKING_DEFAULT)
    }
}
