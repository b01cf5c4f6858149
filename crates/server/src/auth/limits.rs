//! Fair limits per authenticated client: a token bucket on requests (GCRA,
//! `governor`) and a bound on the mutations a client has in flight, each
//! set per role. One noisy client meets its own limits and is refused 429;
//! the queue and the dispatcher stay for everyone else.

use super::{Principal, Role};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Clients whose buckets are kept before idle (full) ones are dropped.
const BUCKETS_KEPT: usize = 10_000;

/// One role's limits; 0 is no limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientLimits {
    /// Requests a client may make per second, sustained.
    pub requests_per_s: u32,
    /// Requests it may make at once after being idle.
    pub burst: u32,
    /// Mutations of its requests being decided at once (a batch counts
    /// each of its mutations).
    pub mutations_in_flight_max: u32,
}

/// `[limits.admin]`, `[limits.writer]`, `[limits.reader]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub admin: ClientLimits,
    pub writer: ClientLimits,
    pub reader: ClientLimits,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let client = ClientLimits {
            requests_per_s: 1_000,
            burst: 2_000,
            mutations_in_flight_max: 1_000,
        };
        LimitsConfig {
            admin: ClientLimits {
                requests_per_s: 0,
                burst: 0,
                mutations_in_flight_max: 0,
            },
            writer: client.clone(),
            reader: client,
        }
    }
}

impl LimitsConfig {
    fn of(&self, role: Role) -> &ClientLimits {
        match role {
            Role::Admin => &self.admin,
            Role::Writer => &self.writer,
            Role::Reader => &self.reader,
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    /// Over the request rate: retry after this long.
    Rate(Duration),
    /// As many mutations in flight as the role allows.
    InFlight(u32),
}

impl Limited {
    pub fn code(&self) -> &'static str {
        match self {
            Limited::Rate(_) => "client_rate_limited",
            Limited::InFlight(_) => "client_in_flight_limited",
        }
    }

    /// Whole seconds to wait before retrying, at least one.
    pub fn retry_after_s(&self) -> u32 {
        match self {
            Limited::Rate(wait) => u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX),
            Limited::InFlight(_) => 1,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Limited::Rate(_) => {
                "this client sends requests faster than its role's rate allows; nothing was applied, retry after Retry-After".into()
            }
            Limited::InFlight(max) => format!(
                "this client has {max} mutations being decided, as many as its role allows; nothing was applied, retry once some are answered"
            ),
        }
    }
}

/// The limits of every authenticated client; one per server.
pub struct ClientLimiter {
    config: LimitsConfig,
    buckets: [Option<DefaultKeyedRateLimiter<String>>; 3],
    in_flight: Arc<Mutex<HashMap<String, u32>>>,
}

/// A client's mutations in flight, given back on drop.
#[derive(Debug)]
pub struct InFlight {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    client: String,
    n: u32,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(&self.client) {
            *count = count.saturating_sub(self.n);
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

fn lock(m: &Mutex<HashMap<String, u32>>) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
    // Every critical section leaves the counts whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientLimiter {
    pub fn new(config: LimitsConfig) -> ClientLimiter {
        let bucket = |limits: &ClientLimits| {
            let rate = NonZeroU32::new(limits.requests_per_s)?;
            let burst = NonZeroU32::new(limits.burst.max(limits.requests_per_s))?;
            Some(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        };
        let buckets = Role::ALL.map(|role| bucket(config.of(role)));
        ClientLimiter {
            config,
            buckets,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes one request from the caller's bucket.
    pub fn request(&self, caller: &Principal) -> Result<(), Limited> {
        let Some(bucket) = &self.buckets[role_index(caller.role)] else {
            return Ok(());
        };
        if bucket.len() > BUCKETS_KEPT {
            bucket.retain_recent();
        }
        bucket.check_key(&caller.subject).map_err(|not_until| {
            Limited::Rate(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }

    /// Counts `n` more mutations in flight for the caller, until the guard
    /// is dropped.
    pub fn mutations(&self, caller: &Principal, n: usize) -> Result<Option<InFlight>, Limited> {
        let max = self.config.of(caller.role).mutations_in_flight_max;
        if max == 0 {
            return Ok(None);
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let mut counts = lock(&self.in_flight);
        let count = counts.entry(caller.subject.clone()).or_default();
        if count.saturating_add(n) > max {
            if *count == 0 {
                counts.remove(&caller.subject);
            }
            return Err(Limited::InFlight(max));
        }
        *count += n;
        Ok(Some(InFlight {
            counts: self.in_flight.clone(),
            client: caller.subject.clone(),
            n,
        }))
    }
}

impl ClientLimiter {
    /// Refuses one more queued (`?wait=false`) mutation of a caller that
    /// has `held` being decided or queued already, over its role's bound.
    pub fn queued(&self, caller: &Principal, held: usize) -> Result<(), Limited> {
        let max = self.config.of(caller.role).mutations_in_flight_max;
        if max > 0 && held >= max as usize {
            return Err(Limited::InFlight(max));
        }
        Ok(())
    }
}

fn role_index(role: Role) -> usize {
    match role {
        Role::Admin => 0,
        Role::Writer => 1,
        Role::Reader => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(name: &str) -> Principal {
        Principal {
            subject: name.into(),
            role: Role::Writer,
        }
    }

    #[test]
    fn a_client_spends_its_own_bucket_only() {
        let limits = ClientLimiter::new(LimitsConfig {
            writer: ClientLimits {
                requests_per_s: 1,
                burst: 3,
                mutations_in_flight_max: 0,
            },
            ..LimitsConfig::default()
        });
        let (noisy, quiet) = (writer("noisy"), writer("quiet"));
        for _ in 0..3 {
            assert_eq!(limits.request(&noisy), Ok(()));
        }
        let refused = limits.request(&noisy).expect_err("the burst is spent");
        assert_eq!(refused.code(), "client_rate_limited");
        assert!(refused.retry_after_s() >= 1);
        assert_eq!(
            limits.request(&quiet),
            Ok(()),
            "another client is untouched"
        );
        let admin = Principal {
            subject: "root".into(),
            role: Role::Admin,
        };
        for _ in 0..100 {
            assert_eq!(
                limits.request(&admin),
                Ok(()),
                "admins are not limited by default"
            );
        }
    }

    #[test]
    fn mutations_in_flight_are_given_back() {
        let limits = ClientLimiter::new(LimitsConfig {
            writer: ClientLimits {
                requests_per_s: 0,
                burst: 0,
                mutations_in_flight_max: 10,
            },
            ..LimitsConfig::default()
        });
        let alice = writer("alice");
        let batch = limits.mutations(&alice, 8).expect("fits");
        let refused = limits.mutations(&alice, 3).expect_err("11 > 10");
        assert_eq!(refused, Limited::InFlight(10));
        assert!(limits.mutations(&writer("bob"), 10).is_ok());
        drop(batch);
        assert!(limits.mutations(&alice, 10).is_ok(), "given back on drop");
        assert!(lock(&limits.in_flight).is_empty(), "no count left behind");
    }
}
