//! The clock seam: the core's clocks, and one on tokio's time for the
//! deterministic simulation (the core depends on no async runtime).

pub use sluice_core::clock::*;

use std::sync::Arc;
use std::time::Duration;

/// A clock on tokio's time, which a paused test runtime advances by itself
/// whenever every task waits: the deterministic simulation's clock.
pub struct TokioClock {
    origin: tokio::time::Instant,
    wall_origin_ms: i64,
}

impl TokioClock {
    pub fn shared(wall_origin_ms: i64) -> SharedClock {
        Arc::new(TokioClock {
            origin: tokio::time::Instant::now(),
            wall_origin_ms,
        })
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let ms = i64::try_from(self.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.wall_origin_ms.saturating_add(ms)
    }

    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}
