//! `[cluster]`: the settings of a process in a cluster.

use super::Backend;
use serde::{Deserialize, Serialize};

/// Cluster mode; off while `redis` is empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT` of one Redis, or comma-separated seed nodes of a
    /// Redis Cluster (`--redis`).
    pub redis: String,
    /// Starts every key Sluice keeps in Redis (several clusters may share
    /// one Redis under different prefixes).
    pub prefix: String,
    /// Documents are split into this many partitions, each owned by one
    /// process at a time. Every process of a cluster uses the same number;
    /// the first one to start records it in the store.
    pub partitions: u32,
    /// A partition's lease: a process that stops renewing loses its
    /// partitions this long after its last renewal.
    pub lease_ms: u64,
    /// The address the other members and operators know this process by;
    /// the listen address by default.
    pub advertise: String,
    /// How often each member retrains its predictor from the shared
    /// history (when it grew), so that what the others decided reaches
    /// its model and its client statistics.
    pub retrain_interval_s: u64,
}

pub const CLUSTER_PARTITIONS_DEFAULT: u32 = 64;
pub const CLUSTER_LEASE_MS_DEFAULT: u64 = 3_000;
pub const CLUSTER_RETRAIN_INTERVAL_S_DEFAULT: u64 = 60;

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: String::new(),
            prefix: "sluice:".into(),
            partitions: CLUSTER_PARTITIONS_DEFAULT,
            lease_ms: CLUSTER_LEASE_MS_DEFAULT,
            advertise: String::new(),
            retrain_interval_s: CLUSTER_RETRAIN_INTERVAL_S_DEFAULT,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.redis.trim().is_empty()
    }

    pub(super) fn validate(&self, store: &Backend) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        crate::cluster::RedisTarget::parse(&self.redis)
            .map_err(|e| format!("cluster.redis: {e}"))?;
        if !matches!(store, Backend::Postgres(_)) {
            return Err(
                "cluster mode (--redis) needs a store every process shares: --store postgres://…"
                    .into(),
            );
        }
        if !(1..=4096).contains(&self.partitions) {
            return Err("cluster.partitions must be from 1 to 4096".into());
        }
        if !(300..=60_000).contains(&self.lease_ms) {
            return Err("cluster.lease_ms must be from 300 to 60000".into());
        }
        if self.prefix.contains(['{', '}']) {
            return Err("cluster.prefix may not hold braces (Redis Cluster's hash tags)".into());
        }
        if self.retrain_interval_s == 0 {
            return Err("cluster.retrain_interval_s must be at least 1".into());
        }
        if self.advertise.contains(char::is_whitespace) {
            return Err("cluster.advertise may not hold spaces".into());
        }
        Ok(())
    }
}
