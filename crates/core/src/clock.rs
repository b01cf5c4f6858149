//! The one seam through which library code learns the time.
//!
//! Decisions (deadlines, timings, retention) take a [`Clock`] so that tests and
//! the simulation can drive time by hand. Nothing else in the library calls
//! `Instant::now()` or `SystemTime::now()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, epoch milliseconds: what is stored and shown.
    fn now_ms(&self) -> i64;
    /// Monotonic time since an arbitrary origin: what durations are measured with.
    fn elapsed(&self) -> Duration;
}

pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock {
            origin: Instant::now(),
        })
    }
}

/// The wall clock in epoch milliseconds, for code that has no `Clock` to
/// ask (tools, not the engine).
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        wall_ms()
    }

    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Default)]
pub struct ManualClock {
    wall_ms: AtomicI64,
    mono_ns: AtomicU64,
}

impl ManualClock {
    pub fn new(wall_ms: i64) -> Arc<Self> {
        Arc::new(ManualClock {
            wall_ms: AtomicI64::new(wall_ms),
            mono_ns: AtomicU64::new(0),
        })
    }

    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.mono_ns.fetch_add(ns, Ordering::SeqCst);
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.wall_ms.load(Ordering::SeqCst)
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.mono_ns.load(Ordering::SeqCst))
    }
}
