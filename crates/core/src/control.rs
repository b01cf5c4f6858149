//! Load control, as plain decisions: the load signal, the adaptive
//! concurrency limit (AIMD on store latency, as in Vector's adaptive request
//! concurrency), the dynamic dispatch threshold, the group-commit batch size
//! and the dispatcher's back-off. No IO and no clock: callers pass samples
//! in, so tests and the simulation drive it directly.
//!
//! Invariants: `limit()` stays within `[1, limit_max]`; `batch_max()` within
//! `[1, commit_batch_max]`; the threshold within `[THRESHOLD_MIN, THRESHOLD_MAX]`;
//! `load` is in `[0, 1]`.

use serde::Serialize;
use std::time::Duration;

/// Latency within this multiple of the unloaded baseline counts as "near the
/// baseline" even above the configured target (a store whose unloaded round
/// trip is already slow): the limit grows; beyond both, it shrinks.
const LATENCY_TOLERANCE: f64 = 3.0;
/// Samples between two multiplicative decreases, so that one burst of slow
/// commits does not collapse the limit before the lower concurrency shows.
const DECREASE_SPACING: u32 = 8;
/// The share of the limit that is dispatched whatever the load: the gate
/// throttles growth beyond it. A host whose CPU is busy (often with Sluice
/// itself) must still move its queue.
const IN_FLIGHT_FLOOR_SHARE: f64 = 0.25;
/// Multiplicative decrease on high latency, and on a store error.
const DECREASE_ON_LATENCY: f64 = 0.9;
const DECREASE_ON_ERROR: f64 = 0.7;
/// Weight of a new sample in the latency average.
const LATENCY_EWMA_WEIGHT: f64 = 0.1;
/// How fast the baseline forgets a minimum (per sample), so a store that
/// became slower for good is eventually taken as the new normal.
const BASELINE_DRIFT: f64 = 1.000_01;
const CONFLICT_EWMA_WEIGHT: f64 = 0.01;
pub const THRESHOLD_MIN: f64 = 0.5;
pub const THRESHOLD_MAX: f64 = 0.95;
/// The threshold with a store at its target latency and no conflicts.
const THRESHOLD_BASE: f64 = 0.9;
pub const BACKOFF_MIN_MS: f64 = 1.0;
pub const BACKOFF_MAX_MS: f64 = 50.0;

/// What the load signal is made of, each already measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Signals {
    /// Host CPU busy, 0–1.
    pub cpu: f64,
    /// Host memory used, 0–1.
    pub memory: f64,
    pub in_flight: usize,
    pub limit: usize,
    /// Recent store latency and its target.
    pub store_latency_ms: f64,
    pub latency_target_ms: f64,
}

/// The load, 0–1: the most constrained of the host's CPU and memory, the
/// writes in flight against the limit, and the store's latency against twice
/// its target. The maximum, not an average: one saturated resource is enough
/// to make more dispatching useless.
///
/// The CPU counts in proportion to how far the store's latency has come
/// towards its target: a busy CPU that the store does not feel (Sluice's own
/// work, its clients') is no reason to hold writes back, and holding them
/// back would not make that work smaller; `sluice bench` measured half the
/// throughput when the CPU counted alone (eight lanes in flight, a hundred
/// queued, the store answering in 3 ms). A co-located store that suffers
/// from the CPU shows it in its latency, and then the CPU counts in full.
pub fn load(s: &Signals) -> f64 {
    let clamp = |x: f64| {
        if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            1.0
        }
    };
    let in_flight = if s.limit == 0 {
        1.0
    } else {
        s.in_flight as f64 / s.limit as f64
    };
    let latency = if s.latency_target_ms > 0.0 {
        s.store_latency_ms / (2.0 * s.latency_target_ms)
    } else {
        0.0
    };
    let felt = if s.latency_target_ms > 0.0 {
        clamp(s.store_latency_ms / s.latency_target_ms)
    } else {
        1.0
    };
    [clamp(s.cpu) * felt, s.memory, in_flight, latency]
        .into_iter()
        .map(clamp)
        .fold(0.0, f64::max)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ControlConfig {
    pub limit_max: usize,
    pub commit_batch_max: usize,
    pub latency_target_ms: f64,
}

/// The adaptive state: concurrency limit, batch size, threshold.
#[derive(Clone, Debug)]
pub struct Controller {
    config: ControlConfig,
    limit: f64,
    batch_max: f64,
    latency_ewma_ms: Option<f64>,
    baseline_ms: Option<f64>,
    conflict_ewma: f64,
    since_decrease: u32,
}

/// A snapshot for `/v1/stats` and the logs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ControlState {
    pub concurrency_limit: usize,
    pub commit_batch_max: usize,
    pub threshold: f64,
    pub store_latency_ms: f64,
    pub baseline_latency_ms: f64,
    pub conflict_rate: f64,
}

impl Controller {
    /// Starts cautious: a quarter of the maximum concurrency, growing as the
    /// store shows it can take more.
    pub fn new(config: ControlConfig) -> Self {
        Controller {
            limit: (config.limit_max as f64 / 4.0).max(1.0),
            batch_max: config.commit_batch_max as f64,
            latency_ewma_ms: None,
            baseline_ms: None,
            conflict_ewma: 0.0,
            since_decrease: DECREASE_SPACING,
            config,
        }
    }

    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).clamp(1, self.config.limit_max.max(1))
    }

    pub fn batch_max(&self) -> usize {
        (self.batch_max.floor() as usize).clamp(1, self.config.commit_batch_max.max(1))
    }

    pub fn latency_ms(&self) -> f64 {
        self.latency_ewma_ms.unwrap_or(0.0)
    }

    /// One store round trip of `batch` lanes that took `latency_ms` (or failed).
    /// `in_flight` is the lanes in flight when the operation ended: the limit
    /// grows only when it is being used (at least half of it in flight), so
    /// an idle period cannot inflate it.
    pub fn on_store(&mut self, latency_ms: f64, batch: usize, ok: bool, in_flight: usize) {
        let max = self.config.limit_max.max(1) as f64;
        if !ok {
            self.limit = (self.limit * DECREASE_ON_ERROR).max(1.0);
            self.batch_max = (self.batch_max * DECREASE_ON_ERROR).max(1.0);
            return;
        }
        if !latency_ms.is_finite() || latency_ms < 0.0 {
            return;
        }
        let ewma = match self.latency_ewma_ms {
            None => latency_ms,
            Some(old) => old + LATENCY_EWMA_WEIGHT * (latency_ms - old),
        };
        self.latency_ewma_ms = Some(ewma);
        let baseline = self
            .baseline_ms
            .map_or(latency_ms, |b| (b * BASELINE_DRIFT).min(latency_ms))
            .max(0.001);
        self.baseline_ms = Some(baseline);
        self.since_decrease = self.since_decrease.saturating_add(1);
        if ewma <= self.effective_target_ms() {
            // Additive increase: about one more per limit's worth of samples.
            if in_flight * 2 >= self.limit() {
                self.limit = (self.limit + 1.0 / self.limit).min(max);
            }
            self.batch_max = (self.batch_max + batch.max(1) as f64 / self.batch_max)
                .min(self.config.commit_batch_max as f64);
        } else if self.since_decrease >= DECREASE_SPACING {
            self.since_decrease = 0;
            self.limit = (self.limit * DECREASE_ON_LATENCY).max(1.0);
            self.batch_max = (self.batch_max * DECREASE_ON_LATENCY).max(1.0);
        }
    }

    /// The latency under which the limit grows: the configured target, or a
    /// small multiple of the unloaded baseline when that is higher.
    pub fn effective_target_ms(&self) -> f64 {
        self.config
            .latency_target_ms
            .max(self.baseline_ms.unwrap_or(0.0) * LATENCY_TOLERANCE)
    }

    /// Writes in flight below which the load gate does not apply.
    pub fn in_flight_floor(&self) -> usize {
        ((self.limit() as f64 * IN_FLIGHT_FLOOR_SHARE).floor() as usize).max(1)
    }

    /// Decided mutations and how many of them conflicted.
    pub fn on_outcomes(&mut self, decided: usize, conflicts: usize) {
        for i in 0..decided {
            let y = if i < conflicts { 1.0 } else { 0.0 };
            self.conflict_ewma += CONFLICT_EWMA_WEIGHT * (y - self.conflict_ewma);
        }
    }

    /// The load above which the dispatcher backs off. It drops as the store's
    /// latency passes its target (the store is struggling: dispatch less) and
    /// as conflicts grow (concurrent writes to contended keys are wasted work).
    pub fn threshold(&self) -> f64 {
        let over_target = (self.latency_ms() / self.effective_target_ms() - 1.0).max(0.0);
        (THRESHOLD_BASE - 0.2 * over_target.min(2.0) - 0.3 * self.conflict_ewma)
            .clamp(THRESHOLD_MIN, THRESHOLD_MAX)
    }

    /// The controller's invariants, checked by the simulation after every
    /// event: the limit and the batch size within their bounds, in every
    /// build (the accessors clamp, so this reads the raw state).
    pub fn check(&self) -> Result<(), String> {
        let max = self.config.limit_max.max(1) as f64;
        if !(1.0..=max).contains(&self.limit) {
            return Err(format!(
                "concurrency limit {} outside [1, {max}]",
                self.limit
            ));
        }
        let batch = self.config.commit_batch_max.max(1) as f64;
        if !(1.0..=batch).contains(&self.batch_max) {
            return Err(format!(
                "commit batch {} outside [1, {batch}]",
                self.batch_max
            ));
        }
        let threshold = self.threshold();
        if !(THRESHOLD_MIN..=THRESHOLD_MAX).contains(&threshold) {
            return Err(format!("threshold {threshold} outside its bounds"));
        }
        Ok(())
    }

    pub fn state(&self) -> ControlState {
        ControlState {
            concurrency_limit: self.limit(),
            commit_batch_max: self.batch_max(),
            threshold: self.threshold(),
            store_latency_ms: self.latency_ms(),
            baseline_latency_ms: self.baseline_ms.unwrap_or(0.0),
            conflict_rate: self.conflict_ewma,
        }
    }
}

/// The next back-off: exponential, capped, with "equal jitter" (half fixed,
/// half random) so that waiting dispatchers do not wake in lockstep.
/// `unit` is a uniform draw in [0, 1) from the caller's seeded source.
pub fn backoff_ms(attempt: u32, unit: f64) -> f64 {
    let ceiling = (BACKOFF_MIN_MS * 2f64.powi(attempt.min(16) as i32)).min(BACKOFF_MAX_MS);
    ceiling / 2.0 + ceiling / 2.0 * unit.clamp(0.0, 1.0)
}

/// Admission at the door, an AIMD limit on what is in the system, driven by
/// what queueing costs: the wait of mutations in Sluice's own queue, from
/// admission until a worker takes their lane. When the mutations taken in a
/// window waited longer than `queue_wait_max_ms` on average, there is a
/// standing queue, and the limit comes down; while they do not and the limit
/// was what refused or bounded the window, it goes back up. A queue that
/// stopped moving (no lane taken for a whole window while many mutations are
/// inside: a stalled store) counts as a standing queue too, since nothing
/// taken means nothing observed. And a window whose answered mutations
/// stayed, arrival to answer, more than five times the bound on average
/// closes it as well: `sluice bench` at twice and four times the capacity
/// on two shared cores showed requests piling up before the queue (the
/// load generator taking the CPU) with short queue waits, and walking into
/// their time-outs.
///
/// The wait in the queue, not the whole stay: a stay also grows when the
/// host's CPU is starved by someone else or the store is slow to commit,
/// and refusing then does not shorten anything a client waits for. (CoDel's
/// minimum over the window was the first choice: with many lanes in
/// parallel one lucky mutation kept it low while the rest queued, and
/// `sluice bench` measured an admitted p99 nine times the unloaded one at
/// twice the capacity.)
/// The longest `Retry-After` Sluice tells a refused client, in seconds: past
/// it, an estimate of the drain says more about the last window than about
/// the next one.
pub const RETRY_AFTER_MAX_S: u32 = 30;

/// Why the door refused: the last window's mean queue wait (for the
/// message) and how long what is inside would take to drain at the pace
/// the queue moved in the last window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shut {
    pub wait_ms: u64,
    pub drain_ms: f64,
}

impl Shut {
    /// The whole seconds of `Retry-After` that match the drain: a client
    /// that comes back then finds the queue that refused it gone.
    pub fn retry_after_s(&self) -> u32 {
        let seconds = (self.drain_ms / 1000.0).ceil();
        if seconds.is_finite() {
            seconds.clamp(1.0, f64::from(RETRY_AFTER_MAX_S)) as u32
        } else {
            RETRY_AFTER_MAX_S
        }
    }
}

#[derive(Debug)]
pub struct Door {
    limit: f64,
    window_start: Duration,
    window_waits_ms: f64,
    window_count: u32,
    /// Whole stays (arrival to answer) of the mutations answered in the
    /// window: the backstop for what piles up outside the queue.
    window_stays_ms: f64,
    window_stay_count: u32,
    window_max_depth: usize,
    /// When a worker last took a lane.
    last_take: Duration,
    /// The mean wait of the last full window, for the refusal's message.
    last_mean_ms: f64,
    /// Mutations taken per ms in the last full window: the drain's pace.
    last_rate_per_ms: f64,
    refused: bool,
    limit_max: f64,
}

const DOOR_WINDOW: Duration = Duration::from_millis(100);
/// A window's mean stay past this many times the queue's bound closes the
/// door too, whatever the queue wait.
const STAY_BOUND_FACTOR: f64 = 5.0;
/// The limit never goes below this: a handful of clients is never refused.
const DOOR_LIMIT_MIN: usize = 64;

impl Door {
    /// Whether `n` more may come in with `depth` already inside, of which
    /// `mutations` are mutations: `Err` says why not and for how long. A
    /// handful of requests is never refused, whatever the limit.
    pub fn admit(
        &mut self,
        now: Duration,
        depth: usize,
        mutations: usize,
        n: usize,
        bound_ms: f64,
    ) -> Result<(), Shut> {
        if mutations >= DOOR_LIMIT_MIN
            && now.saturating_sub(self.last_take) >= DOOR_WINDOW
            && now.saturating_sub(self.window_start) >= DOOR_WINDOW
        {
            // Nothing taken for a window with this many inside: as long a
            // wait as the window, at least.
            let waited_ms = now.saturating_sub(self.last_take).as_secs_f64() * 1000.0;
            self.close_window(now, waited_ms.max(bound_ms + 1.0), depth, bound_ms);
        }
        if depth + n > self.limit.max(n as f64) as usize && depth >= DOOR_LIMIT_MIN {
            self.refused = true;
            return Err(Shut {
                wait_ms: self.last_mean_ms.round() as u64,
                drain_ms: self.drain_ms(now, depth),
            });
        }
        Ok(())
    }

    /// How long `depth` requests would take to leave at the last window's
    /// pace; with nothing taken lately (a stalled store), as long again as
    /// the queue has stood still.
    fn drain_ms(&self, now: Duration, depth: usize) -> f64 {
        let stalled_ms = now.saturating_sub(self.last_take).as_secs_f64() * 1000.0;
        if self.last_rate_per_ms > 0.0 && stalled_ms < DOOR_WINDOW.as_secs_f64() * 1000.0 {
            depth as f64 / self.last_rate_per_ms
        } else {
            stalled_ms
        }
    }

    /// The current limit on requests inside at once.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// The door's invariant: its limit between the floor and the maximum.
    pub fn check(&self) -> Result<(), String> {
        let floor = (DOOR_LIMIT_MIN as f64).min(self.limit_max);
        if !(floor..=self.limit_max).contains(&self.limit) {
            return Err(format!(
                "door limit {} outside [{floor}, {}]",
                self.limit, self.limit_max
            ));
        }
        Ok(())
    }

    pub fn new(limit_max: usize) -> Door {
        Door {
            limit: limit_max as f64,
            window_start: Duration::ZERO,
            window_waits_ms: 0.0,
            window_count: 0,
            window_stays_ms: 0.0,
            window_stay_count: 0,
            window_max_depth: 0,
            last_take: Duration::ZERO,
            last_mean_ms: 0.0,
            last_rate_per_ms: 0.0,
            refused: false,
            limit_max: limit_max as f64,
        }
    }

    /// A worker took mutations that waited `waits_ms` in the queue, with
    /// `depth` requests inside.
    pub fn observe(
        &mut self,
        now: Duration,
        waits_ms: impl IntoIterator<Item = f64>,
        depth: usize,
        bound_ms: f64,
    ) {
        self.last_take = now;
        for wait in waits_ms {
            self.window_waits_ms += wait;
            self.window_count += 1;
        }
        self.window_max_depth = self.window_max_depth.max(depth);
        self.maybe_close(now, depth, bound_ms);
    }

    /// A mutation was answered after staying `stay_ms` in the system.
    pub fn observe_stay(&mut self, now: Duration, stay_ms: f64, depth: usize, bound_ms: f64) {
        self.window_stays_ms += stay_ms;
        self.window_stay_count += 1;
        self.window_max_depth = self.window_max_depth.max(depth + 1);
        self.maybe_close(now, depth, bound_ms);
    }

    fn maybe_close(&mut self, now: Duration, depth: usize, bound_ms: f64) {
        if now.saturating_sub(self.window_start) < DOOR_WINDOW
            || self.window_count + self.window_stay_count == 0
        {
            return;
        }
        let mean = |sum: f64, n: u32| if n == 0 { 0.0 } else { sum / f64::from(n) };
        let wait_ms = mean(self.window_waits_ms, self.window_count);
        let stay_ms = mean(self.window_stays_ms, self.window_stay_count);
        // A stay far past the queue's bound means requests pile up outside
        // the queue (a host whose CPU the clients take, a slow store):
        // admitting more would only walk them into their time-outs.
        let waited_ms = if stay_ms > STAY_BOUND_FACTOR * bound_ms {
            wait_ms.max(stay_ms)
        } else {
            wait_ms
        };
        self.close_window(now, waited_ms, depth, bound_ms);
    }

    fn close_window(&mut self, now: Duration, mean_ms: f64, depth: usize, bound_ms: f64) {
        // A door whose maximum is below the floor (a small queue) stays at
        // its maximum.
        let floor = (DOOR_LIMIT_MIN as f64).min(self.limit_max);
        let max_depth = self.window_max_depth.max(depth);
        if mean_ms > bound_ms {
            // Start from what was actually in the system, not from a limit
            // far above it, so one window is enough to bite.
            let from = self.limit.min(max_depth as f64);
            self.limit = (from * 0.9).max(floor);
        } else if self.refused || max_depth as f64 >= self.limit * 0.9 {
            self.limit = (self.limit * 1.1 + 1.0).min(self.limit_max);
        }
        self.last_mean_ms = mean_ms;
        let window_ms = now.saturating_sub(self.window_start).as_secs_f64() * 1000.0;
        self.last_rate_per_ms = if window_ms > 0.0 {
            f64::from(self.window_count) / window_ms
        } else {
            0.0
        };
        self.window_start = now;
        self.window_waits_ms = 0.0;
        self.window_count = 0;
        self.window_stays_ms = 0.0;
        self.window_stay_count = 0;
        self.window_max_depth = 0;
        self.refused = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_matches_the_drain_of_what_is_inside() {
        let at = Duration::from_millis;
        let mut door = Door::new(10_000);
        // Windows of 100 ms taking 50 mutations each, each of which waited
        // 200 ms (over the 20 ms bound): the limit comes down to what was
        // inside, 1,000, and the queue drains at 0.5 mutations per ms.
        for w in 1..=40u64 {
            door.observe(at(w * 100), std::iter::repeat_n(200.0, 50), 1_000, 20.0);
        }
        let shut = door
            .admit(at(4_050), 2_000, 2_000, 1, 20.0)
            .expect_err("2,000 inside, over the limit");
        assert_eq!(shut.wait_ms, 200);
        // 2,000 inside at 0.5 per ms: 4 s.
        assert!((shut.drain_ms - 4_000.0).abs() < 1.0, "{shut:?}");
        assert_eq!(shut.retry_after_s(), 4);
        // A quick drain still says one second (whole seconds only); a long
        // one is capped.
        let quick = Shut {
            wait_ms: 30,
            drain_ms: 120.0,
        };
        assert_eq!(quick.retry_after_s(), 1);
        let long = Shut {
            wait_ms: 30,
            drain_ms: 1e9,
        };
        assert_eq!(long.retry_after_s(), RETRY_AFTER_MAX_S);
        // The queue stops moving: the estimate is how long it has stood.
        let shut = door
            .admit(at(7_000), 2_000, 2_000, 1, 20.0)
            .expect_err("still over the limit");
        assert!((shut.drain_ms - 3_000.0).abs() < 1.0, "{shut:?}");
        assert_eq!(shut.retry_after_s(), 3);
    }

    #[test]
    fn a_door_smaller_than_the_floor_keeps_its_limit_when_it_bites() {
        let mut door = Door::new(32);
        let mut now = Duration::ZERO;
        for _ in 0..5 {
            now += DOOR_WINDOW;
            // A slow window, with more inside than the door lets in.
            door.close_window(now, 500.0, 40, 10.0);
            assert_eq!(door.check(), Ok(()));
            assert_eq!(door.limit(), 32);
        }
    }

    fn controller() -> Controller {
        Controller::new(ControlConfig {
            limit_max: 64,
            commit_batch_max: 256,
            latency_target_ms: 20.0,
        })
    }

    #[test]
    fn load_is_the_most_constrained_resource() {
        let base = Signals {
            cpu: 0.2,
            memory: 0.3,
            in_flight: 2,
            limit: 8,
            store_latency_ms: 4.0,
            latency_target_ms: 20.0,
        };
        assert_eq!(load(&base), 0.3);
        assert_eq!(
            load(&Signals {
                in_flight: 8,
                ..base
            }),
            1.0
        );
        assert_eq!(
            load(&Signals {
                store_latency_ms: 30.0,
                ..base
            }),
            0.75
        );
        assert_eq!(
            load(&Signals {
                cpu: f64::NAN,
                store_latency_ms: 20.0,
                ..base
            }),
            1.0,
            "an unknown reading counts as saturated"
        );
        // A busy CPU counts as far as the store feels it.
        let busy = Signals { cpu: 0.95, ..base };
        assert_eq!(load(&busy), 0.3, "store at a fifth of its target");
        assert_eq!(
            load(&Signals {
                store_latency_ms: 20.0,
                ..busy
            }),
            0.95
        );
        assert_eq!(
            load(&Signals {
                limit: 0,
                in_flight: 0,
                ..base
            }),
            1.0
        );
    }

    #[test]
    fn the_limit_rises_near_the_baseline_and_falls_when_latency_climbs() {
        let mut c = controller();
        let start = c.limit();
        for _ in 0..2_000 {
            c.on_store(2.0, 4, true, 64);
        }
        assert_eq!(
            c.limit(),
            64,
            "grows to the maximum while latency stays at the baseline"
        );
        for _ in 0..200 {
            c.on_store(40.0, 4, true, 64);
        }
        assert!(c.limit() < 16, "falls when latency climbs: {}", c.limit());
        let before = c.limit();
        c.on_store(0.0, 1, false, 64);
        assert!(c.limit() < before, "an error lowers it");
        assert!(start >= 1);
    }

    #[test]
    fn the_threshold_follows_latency_and_conflicts() {
        let mut c = controller();
        for _ in 0..100 {
            c.on_store(5.0, 1, true, 64);
        }
        let calm = c.threshold();
        assert!((calm - THRESHOLD_BASE).abs() < 1e-9);
        for _ in 0..100 {
            c.on_store(50.0, 1, true, 64);
        }
        let slow = c.threshold();
        assert!(slow < calm);
        c.on_outcomes(1_000, 1_000);
        assert!(c.threshold() < slow);
        assert!(c.threshold() >= THRESHOLD_MIN);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_cap() {
        assert_eq!(backoff_ms(0, 0.0), 0.5);
        assert_eq!(backoff_ms(0, 1.0), 1.0);
        assert_eq!(backoff_ms(3, 0.0), 4.0);
        assert_eq!(backoff_ms(30, 1.0), BACKOFF_MAX_MS);
        assert!(backoff_ms(30, 0.0) >= BACKOFF_MAX_MS / 2.0);
    }

    /// Windows of `DOOR_WINDOW` one after another.
    struct Windows {
        door: Door,
        next_ms: u64,
    }

    impl Windows {
        /// One window: lanes taken after these waits (ms) at this depth,
        /// then its close.
        fn window(&mut self, waits: &[f64], depth: usize) -> f64 {
            let start = self.next_ms;
            self.door.observe(
                Duration::from_millis(start + 1),
                waits.iter().copied(),
                depth,
                20.0,
            );
            self.next_ms = start + 100;
            let last = waits.iter().copied().fold(f64::MAX, f64::min);
            self.door
                .observe(Duration::from_millis(self.next_ms), [last], depth, 20.0);
            self.door.limit
        }
    }

    #[test]
    fn the_door_closes_on_a_standing_queue_and_reopens_when_it_drains() {
        let mut w = Windows {
            door: Door::new(10_000),
            next_ms: 0,
        };
        // Quick answers on average, the limit far from used: nothing changes.
        assert_eq!(w.window(&[3.0, 5.0, 40.0], 100), 10_000.0);
        // They stayed 30 ms and more: down to 90% of what was in the
        // system, at once, however high the limit was.
        let limit = w.window(&[30.0, 80.0], 499);
        assert!((limit - 450.0).abs() < 1.0, "{limit}");
        let limit = w.window(&[25.0], 399);
        assert!((limit - 360.0).abs() < 1.0, "{limit}");
        // Never below the floor.
        for _ in 0..100 {
            w.window(&[50.0], 10);
        }
        assert_eq!(w.door.limit, DOOR_LIMIT_MIN as f64);
        // Drained, and used up to the limit: it grows back, 10% a window,
        // up to the queue's bound and not beyond.
        let before = w.door.limit;
        let limit = w.window(&[2.0], DOOR_LIMIT_MIN);
        assert!(limit > before * 1.09, "{limit}");
        for _ in 0..200 {
            let depth = w.door.limit as usize;
            w.window(&[2.0], depth);
        }
        assert_eq!(w.door.limit, 10_000.0);
        // Drained but far from used: it stays where it is.
        w.door.limit = 1_000.0;
        assert_eq!(w.window(&[2.0], 10), 1_000.0);
    }

    #[test]
    fn long_stays_close_the_door_whatever_the_queue_wait() {
        let mut door = Door::new(10_000);
        let at = Duration::from_millis;
        // Lanes taken at once, but mutations answered after 300 ms: the
        // requests wait somewhere before the queue.
        door.observe(at(10), [0.5], 400, 20.0);
        for ms in 11..=110 {
            door.observe_stay(at(ms), 300.0, 400, 20.0);
        }
        assert!(door.limit() < 400, "{}", door.limit());
        // Stays a little over the queue's bound alone change nothing.
        let mut calm = Door::new(10_000);
        calm.observe(at(10), [0.5], 400, 20.0);
        for ms in 11..=110 {
            calm.observe_stay(at(ms), 60.0, 400, 20.0);
        }
        assert_eq!(calm.limit(), 10_000);
    }

    #[test]
    fn a_queue_that_stopped_moving_closes_the_door() {
        let mut door = Door::new(10_000);
        let at = Duration::from_millis;
        door.observe(at(5), [1.0], 10, 20.0);
        // Many inside and nothing taken for a whole window: the limit comes
        // down to below what is inside, and the next one is refused.
        assert!(
            door.admit(at(50), 500, 500, 1, 20.0).is_ok(),
            "not yet a window"
        );
        assert!(door.admit(at(120), 500, 500, 1, 20.0).is_err());
        assert!(door.limit() < 500, "{}", door.limit());
        // Reads inside are no stall of the queue: few mutations, no change.
        let mut reads = Door::new(10_000);
        for ms in (0..1_000).step_by(50) {
            assert!(reads.admit(at(ms), 500, 3, 1, 20.0).is_ok());
        }
        assert_eq!(reads.limit(), 10_000);
        // A handful inside is never refused, even by a stalled queue.
        let mut few = Door::new(10_000);
        assert!(few.admit(at(500), 10, 10, 1, 20.0).is_ok());
    }
}
