//! `[staging]`: shadow writes' staging area (see `dispatch/staging.rs`).

use crate::dispatch::{STAGING_DEFAULT, StagingConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StagingSettings {
    /// Stage, as if sent with `"shadow": true`, a mutation scored below
    /// `shed_below` that arrives while the load is over the threshold.
    pub shed_when_overloaded: bool,
    pub shed_below: f64,
    /// A staged mutation not promoted within this is rejected as expired.
    pub expire_ms: u64,
    /// Mutations staged at once, at most.
    pub staged_max: usize,
    /// How often the validator looks for staged mutations to promote.
    pub validate_every_ms: u64,
}

impl StagingSettings {
    pub fn config(&self) -> StagingConfig {
        StagingConfig {
            shed_when_overloaded: self.shed_when_overloaded,
            shed_below: self.shed_below,
            expire: Duration::from_millis(self.expire_ms),
            staged_max: self.staged_max,
            validate_every: Duration::from_millis(self.validate_every_ms),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if !(self.shed_below.is_finite() && (0.0..=1.0).contains(&self.shed_below)) {
            return Err(format!(
                "staging.shed_below must be from 0 to 1, got {}",
                self.shed_below
            ));
        }
        if self.expire_ms == 0 || self.staged_max == 0 || self.validate_every_ms == 0 {
            return Err(
                "staging.expire_ms, staging.staged_max and staging.validate_every_ms must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for StagingSettings {
    fn default() -> Self {
        let d = STAGING_DEFAULT;
        StagingSettings {
            shed_when_overloaded: d.shed_when_overloaded,
            shed_below: d.shed_below,
            expire_ms: u64::try_from(d.expire.as_millis()).unwrap_or(u64::MAX),
            staged_max: d.staged_max,
            validate_every_ms: u64::try_from(d.validate_every.as_millis()).unwrap_or(u64::MAX),
        }
    }
}
