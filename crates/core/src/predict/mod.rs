//! Conflict prediction: a probability for every mutation, computed when it is
//! queued, from what is known then, and learned from its outcome afterwards.
//!
//! Plain synchronous code (no IO, no clock: event time comes in with the
//! observation), so it scores in microseconds and tests drive it directly.
//!
//! Invariants:
//! - `score` takes only an [`Observation`], which holds nothing about the
//!   outcome; the outcome reaches the model only through `learn`, which
//!   consumes the [`Scored`] token that `score` produced. A mutation is scored
//!   once, before it is decided.
//! - A mutation without `base_version` can never conflict: it scores exactly 0
//!   and teaches the model nothing about conflicts.
//! - Every map is bounded (`keys_max`, `clients_max`), and odd input (empty
//!   strings, huge versions, time going backwards) cannot panic.

mod ftrl;
pub mod quality;

pub use ftrl::{Ftrl, FtrlParams};
pub use quality::{Quality, QualityReport};

use crate::model::MutationRecord;
use crate::model::{DocKey, Op};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Coordinates of the hashed weight vector: 2^20 (8 MiB of state), so that
/// tens of thousands of keys and clients rarely collide.
pub const DIM_LOG2_DEFAULT: u32 = 20;
/// What the model predicts for a conditional mutation before it has learned
/// anything: a few percent of stale writes is typical of real traffic (3.9%
/// on the rails trace).
pub const PRIOR_DEFAULT: f64 = 0.05;
/// Keys and clients whose statistics are kept; beyond that the least recently
/// seen half is forgotten.
/// Each holds counters and up to 256 recent versions' write times (a few KiB at most).
pub const KEYS_MAX_DEFAULT: usize = 100_000;
pub const CLIENTS_MAX_DEFAULT: usize = 100_000;
/// Pairs in the "recent" quality window.
pub const QUALITY_WINDOW_DEFAULT: usize = 10_000;
/// An hour between scheduled retrainings: the online model keeps learning in
/// between, so retraining mostly refreshes it from a clean pass.
pub const RETRAIN_INTERVAL_S_DEFAULT: u64 = 3_600;
/// As many new outcomes as the window holds: each row is then trained on
/// about once more by retraining, on top of the online learning. A tenth of
/// the window (the first choice) cost a full pass per 100,000 outcomes, and
/// `sluice bench` found those passes among Sluice's hottest functions.
pub const RETRAIN_AFTER_OUTCOMES_DEFAULT: u64 = 1_000_000;
/// A million rows retrain in a few seconds (see the README).
pub const RETRAIN_WINDOW_ROWS_DEFAULT: u64 = 1_000_000;
/// Half-lives of the decaying counters, in event time.
const HOUR_MS: f64 = 3_600_000.0;
const WRITE_HALF_LIVES_MS: [f64; 3] = [HOUR_MS, 24.0 * HOUR_MS, 30.0 * 24.0 * HOUR_MS];
const CONFLICT_HALF_LIFE_MS: f64 = 30.0 * 24.0 * HOUR_MS;
/// Versions whose write time is remembered per key (for "how old is the base").
/// Versions whose write time is remembered per key: those of the last
/// `VERSION_TIMES_HORIZON_MS` of event time, at most `VERSION_TIMES_LEN`. The
/// horizon (not just a count) is what keeps "this base is not remembered" from
/// meaning "this base is many versions old" when the version cache is off: it
/// means "written long ago (or never seen)", which is the base's age, not the
/// key's current version.
const VERSION_TIMES_LEN: usize = 256;
const VERSION_TIMES_HORIZON_MS: i64 = 180 * 24 * 3_600_000;
/// Directory levels of a key that become features.
const DIR_DEPTH_MAX: usize = 3;
/// Fields of a mutation that become features.
const FIELDS_MAX: usize = 8;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictorConfig {
    /// Score mutations and learn from their outcomes. Off, every score is 0
    /// (nothing is prioritized) and the learning loop does not run.
    pub enabled: bool,
    /// Use Sluice's own knowledge of each key's current version (how far the
    /// base is behind it, how old the base is). Off, the model sees only what
    /// it would in a cluster where other writers bypass Sluice.
    pub use_version_cache: bool,
    pub dim_log2: u32,
    pub prior: f64,
    pub ftrl: FtrlParams,
    pub keys_max: usize,
    pub clients_max: usize,
    pub quality_window: usize,
    /// The adaptive learning loop: retrain from the history this often ...
    pub retrain_interval_s: u64,
    /// ... and after this many new outcomes, whichever comes first ...
    pub retrain_after_outcomes: u64,
    /// ... from at most this many of the newest history rows.
    pub retrain_window_rows: u64,
    /// Train from the history at start, so a restart (or a second process on
    /// the same history) starts warm.
    pub retrain_on_start: bool,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig {
            enabled: true,
            use_version_cache: true,
            dim_log2: DIM_LOG2_DEFAULT,
            prior: PRIOR_DEFAULT,
            ftrl: FtrlParams::default(),
            keys_max: KEYS_MAX_DEFAULT,
            clients_max: CLIENTS_MAX_DEFAULT,
            quality_window: QUALITY_WINDOW_DEFAULT,
            retrain_interval_s: RETRAIN_INTERVAL_S_DEFAULT,
            retrain_after_outcomes: RETRAIN_AFTER_OUTCOMES_DEFAULT,
            retrain_window_rows: RETRAIN_WINDOW_ROWS_DEFAULT,
            retrain_on_start: true,
        }
    }
}

impl PredictorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(10..=26).contains(&self.dim_log2) {
            return Err("predictor.dim_log2 must be from 10 to 26".into());
        }
        if !(self.prior > 0.0 && self.prior < 1.0) {
            return Err("predictor.prior must be strictly between 0 and 1".into());
        }
        let p = &self.ftrl;
        if !(p.alpha > 0.0 && p.beta >= 0.0 && p.l1 >= 0.0 && p.l2 >= 0.0) {
            return Err("predictor.ftrl needs alpha > 0 and beta, l1, l2 ≥ 0".into());
        }
        if self.retrain_interval_s == 0
            || self.retrain_after_outcomes == 0
            || self.retrain_window_rows == 0
        {
            return Err("predictor.retrain_interval_s, retrain_after_outcomes and retrain_window_rows must be at least 1".into());
        }
        if self.keys_max == 0 || self.clients_max == 0 || self.quality_window == 0 {
            return Err(
                "predictor.keys_max, clients_max and quality_window must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// What is known about a mutation when it is queued. Nothing here depends on
/// its outcome.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    pub doc: &'a DocKey,
    pub op: Op,
    pub fields: &'a [String],
    pub client: &'a str,
    pub base_version: Option<u64>,
    /// Event time: the client's `ts_ms`, else arrival.
    pub event_ms: i64,
    /// Mutations already waiting in the key's lane.
    pub lane_waiting: usize,
}

/// A score and what is needed to learn from the outcome later.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub probability: f64,
    features: Vec<ftrl::Feature>,
    key: u64,
    client: u64,
    conditional: bool,
    event_ms: i64,
}

/// What the mutation turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub conflict: bool,
    /// The document's version after the mutation (the server's version for a
    /// refused one): what the version cache learns.
    pub version_after: u64,
    pub wrote: bool,
}

#[derive(Clone, Debug, Default)]
struct KeyStats {
    last_ms: i64,
    writes: [f64; 3],
    conflicts: f64,
    version: Option<u64>,
    /// (version, event time it was written), newest last.
    version_times: VecDeque<(u64, i64)>,
}

#[derive(Clone, Debug, Default)]
struct ClientStats {
    last_ms: i64,
    conflicts: f64,
    conditional: f64,
}

fn decay(value: f64, from_ms: i64, to_ms: i64, half_life_ms: f64) -> f64 {
    let dt = (to_ms.saturating_sub(from_ms)).max(0) as f64;
    value * (-dt / half_life_ms * std::f64::consts::LN_2).exp()
}

impl KeyStats {
    fn writes_at(&self, now_ms: i64) -> [f64; 3] {
        let mut out = [0.0; 3];
        for (i, half_life) in WRITE_HALF_LIVES_MS.iter().enumerate() {
            out[i] = decay(self.writes[i], self.last_ms, now_ms, *half_life);
        }
        out
    }

    fn conflicts_at(&self, now_ms: i64) -> f64 {
        decay(self.conflicts, self.last_ms, now_ms, CONFLICT_HALF_LIFE_MS)
    }

    fn advance(&mut self, now_ms: i64) {
        let now_ms = now_ms.max(self.last_ms);
        self.writes = self.writes_at(now_ms);
        self.conflicts = self.conflicts_at(now_ms);
        self.last_ms = now_ms;
    }
}

impl ClientStats {
    fn rates_at(&self, now_ms: i64) -> (f64, f64) {
        (
            decay(self.conflicts, self.last_ms, now_ms, CONFLICT_HALF_LIFE_MS),
            decay(
                self.conditional,
                self.last_ms,
                now_ms,
                CONFLICT_HALF_LIFE_MS,
            ),
        )
    }
}

/// The model, the statistics it reads, and its running quality.
#[derive(Clone, Debug)]
pub struct Predictor {
    config: PredictorConfig,
    model: Ftrl,
    keys: HashMap<u64, KeyStats>,
    clients: HashMap<u64, ClientStats>,
    quality: Quality,
    learned: u64,
    training: Training,
}

/// Where the current model came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Training {
    /// 0 for the model built online since start; +1 at every retraining swap.
    pub model_version: u64,
    pub trained_at_ms: Option<i64>,
    pub trained_rows: u64,
    pub training_ms: Option<f64>,
}

/// `GET /v1/model`'s view of the predictor.
#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    #[serde(flatten)]
    pub training: Training,
    pub use_version_cache: bool,
    pub learned: u64,
    pub features: usize,
    pub dimensions: usize,
    pub keys_tracked: usize,
    pub clients_tracked: usize,
    pub all_time: QualityReport,
    pub recent: QualityReport,
}

/// The model's single-precision probability as the decimal it stands for:
/// widened bit for bit, 0.05f32 reads as 0.05000000074505806, noise a
/// client would store and compare.
fn as_meant(p: f32) -> f64 {
    p.to_string().parse().unwrap_or(f64::from(p))
}

impl Predictor {
    pub fn new(config: PredictorConfig) -> Self {
        let mut model = Ftrl::new(config.dim_log2, config.ftrl);
        // Start the bias at the prior, so an untrained model says "a few
        // percent" instead of a coin flip.
        let x = [(bucket("bias", &[]), 1.0)];
        let prior_logit = (config.prior / (1.0 - config.prior)).ln() as f32;
        model.set_weight(x[0].0, prior_logit);
        // What the version cache knows needs no learning: a base behind the
        // version Sluice last saw conflicts unless only its own client wrote
        // since, a current one rarely does. The model starts from that, so a
        // fresh server scores a known-stale base high from its first mutation.
        if config.use_version_cache {
            let logit = |p: f64| (p / (1.0 - p)).ln() as f32;
            for gap in [0, 1, 2, 3, 5, 9] {
                let p = if gap == 0 {
                    CURRENT_BASE_PRIOR
                } else {
                    STALE_BASE_PRIOR
                };
                model.set_weight(bucket("gap", &[Part::N(gap)]), logit(p) - prior_logit);
            }
        }
        Predictor {
            quality: Quality::new(config.quality_window),
            model,
            keys: HashMap::new(),
            clients: HashMap::new(),
            learned: 0,
            training: Training::default(),
            config,
        }
    }

    /// The conflict probability of a mutation, from what is known now.
    pub fn score(&self, obs: &Observation<'_>) -> Scored {
        let key = xxh3_64(format!("{}\u{0}{}", obs.doc.collection, obs.doc.key).as_bytes());
        let client = xxh3_64(obs.client.as_bytes());
        let Some(base) = obs.base_version else {
            return Scored {
                probability: 0.0,
                features: Vec::new(),
                key,
                client,
                conditional: false,
                event_ms: obs.event_ms,
            };
        };
        let features = self.features(obs, base, key, client);
        let probability = as_meant(self.model.predict(&features));
        Scored {
            probability,
            features,
            key,
            client,
            conditional: true,
            event_ms: obs.event_ms,
        }
    }

    fn features(
        &self,
        obs: &Observation<'_>,
        base: u64,
        key_hash: u64,
        client_hash: u64,
    ) -> Vec<ftrl::Feature> {
        use Part::N;
        let mut row = Row(Vec::with_capacity(48));
        what_it_is(&mut row, obs, base);
        let stats = self.keys.get(&key_hash);
        self.key_history(&mut row, obs, base, stats);
        let client_rates = self
            .clients
            .get(&client_hash)
            .map(|c| c.rates_at(obs.event_ms))
            .unwrap_or((0.0, 0.0));
        let client_rate = (client_rates.0 + 0.05) / (client_rates.1 + 1.0);
        row.add("client_conflict_rate", &[N(rate_bucket(client_rate))]);
        let lane = log_bucket(obs.lane_waiting as f64);
        row.add("lane_waiting", &[N(lane)]);
        // Features that read the current version: only with the version cache.
        if self.config.use_version_cache {
            match stats.and_then(|s| s.version.map(|v| (s, v))) {
                Some((s, current)) => {
                    let gap = gap_bucket(current, base);
                    row.add("gap", &[N(gap)]);
                    row.add("gap_lane", &[N(gap), N(lane)]);
                    row.add(
                        "since_last_write",
                        &[N(age_bucket(obs.event_ms.saturating_sub(s.last_ms)))],
                    );
                }
                None => row.add("gap", &[N(GAP_UNSEEN)]),
            }
        }
        row.0
    }

    /// What the key has seen: its write rates and conflicts, and how old the
    /// base version is against them.
    fn key_history(
        &self,
        row: &mut Row,
        obs: &Observation<'_>,
        base: u64,
        stats: Option<&KeyStats>,
    ) {
        use Part::{N, S};
        let doc = obs.doc;
        let collection = S(&doc.collection);
        let writes = stats.map(|s| s.writes_at(obs.event_ms)).unwrap_or_default();
        let key_conflicts = stats.map(|s| s.conflicts_at(obs.event_ms)).unwrap_or(0.0);
        let write_buckets = writes.map(log_bucket);
        row.add("writes_1h", &[N(write_buckets[0])]);
        row.add("writes_1d", &[N(write_buckets[1])]);
        row.add("writes_30d", &[N(write_buckets[2])]);
        row.add("writes_1d_30d", &[N(write_buckets[1]), N(write_buckets[2])]);
        row.add("key_conflicts", &[N(log_bucket(key_conflicts))]);

        // How long ago the base version was written: what a branch's age is to
        // a merge. It says when version `base` appeared, never whether a newer
        // one exists; "older than remembered" implies a newer one, so it is
        // told apart only with the version cache.
        let remembered = stats.and_then(|s| s.version_times.iter().rev().find(|(v, _)| *v == base));
        let age = match remembered {
            Some((_, written)) => age_bucket(obs.event_ms.saturating_sub(*written)),
            None if self.config.use_version_cache
                && stats
                    .is_some_and(|s| s.version_times.front().is_some_and(|(v, _)| base < *v)) =>
            {
                AGE_OLDER
            }
            None => AGE_UNKNOWN,
        };
        row.add("base_age", &[N(age)]);
        row.add("base_age_writes_1d", &[N(age), N(write_buckets[1])]);
        row.add("base_age_writes_30d", &[N(age), N(write_buckets[2])]);
        row.add("base_age_collection", &[N(age), collection]);
        // The writes to expect since the base, at the key's recent rates: the
        // Poisson intuition (a conflict is "someone wrote in between").
        if let Some((_, written)) = remembered {
            let age_ms = obs.event_ms.saturating_sub(*written).max(0) as f64;
            for (name, (count, half_life)) in ["expected_1h", "expected_1d", "expected_30d"]
                .iter()
                .zip(writes.iter().zip(WRITE_HALF_LIVES_MS))
            {
                // A decayed count over a half-life h estimates a rate of count·ln2/h.
                let expected = count * std::f64::consts::LN_2 / half_life * age_ms;
                row.add(name, &[N(fine_bucket(expected))]);
            }
        }
        if let Some(dir) = doc
            .key
            .split('/')
            .next()
            .filter(|d| d.len() < doc.key.len())
        {
            row.add("base_age_dir", &[N(age), collection, S(dir)]);
        }
    }

    /// Learns from a decided mutation. Takes the token `score` returned, so an
    /// outcome can only ever follow its own score.
    pub fn learn(&mut self, scored: Scored, outcome: Outcome) {
        let now = scored.event_ms;
        if scored.conditional {
            let p = scored.probability as f32;
            self.model.update(&scored.features, p, outcome.conflict);
            self.quality.observe(scored.probability, outcome.conflict);
            self.learned += 1;
            if self.clients.len() >= self.config.clients_max
                && !self.clients.contains_key(&scored.client)
            {
                forget_oldest_half(&mut self.clients, |c| c.last_ms);
            }
            let client = self.clients.entry(scored.client).or_default();
            let (conflicts, conditional) = client.rates_at(now.max(client.last_ms));
            client.last_ms = now.max(client.last_ms);
            client.conflicts = conflicts + f64::from(u8::from(outcome.conflict));
            client.conditional = conditional + 1.0;
        }
        if self.keys.len() >= self.config.keys_max && !self.keys.contains_key(&scored.key) {
            forget_oldest_half(&mut self.keys, |k| k.last_ms);
        }
        let stats = self.keys.entry(scored.key).or_default();
        stats.advance(now);
        if outcome.conflict {
            stats.conflicts += 1.0;
        }
        if outcome.wrote {
            for w in &mut stats.writes {
                *w += 1.0;
            }
            stats.version_times.push_back((outcome.version_after, now));
            let horizon = now.saturating_sub(VERSION_TIMES_HORIZON_MS);
            while stats.version_times.len() > VERSION_TIMES_LEN
                || stats
                    .version_times
                    .front()
                    .is_some_and(|(_, t)| *t < horizon)
            {
                stats.version_times.pop_front();
            }
        }
        stats.version = Some(
            stats
                .version
                .map_or(outcome.version_after, |v| v.max(outcome.version_after)),
        );
    }

    /// Learns from one history record as if it had just arrived: score from
    /// the state so far, then learn its outcome. Replaying a history in order
    /// rebuilds the model and the statistics it reads.
    pub fn train_on(&mut self, record: &MutationRecord) {
        let op = record.op;
        let observation = Observation {
            doc: &record.doc,
            op,
            fields: &record.fields,
            client: &record.client,
            base_version: record.base_version,
            event_ms: record.ts_ms.unwrap_or(record.received_ms),
            lane_waiting: usize::try_from(record.lane_waiting).unwrap_or(usize::MAX),
        };
        let scored = self.score(&observation);
        let outcome = Outcome {
            conflict: record.conflict,
            version_after: record.version_after,
            wrote: record.version_after > record.version_before,
        };
        self.learn(scored, outcome);
        self.training.trained_rows += 1;
    }

    /// Makes this freshly trained predictor the successor of `live`: it keeps
    /// the live quality figures (what clients were actually scored with) and
    /// counts, and takes the next model version.
    pub fn succeed(&mut self, live: &mut Predictor, trained_at_ms: i64, training_ms: f64) {
        self.quality = std::mem::replace(&mut live.quality, Quality::new(1));
        self.learned = live.learned;
        self.training.model_version = live.training.model_version + 1;
        self.training.trained_at_ms = Some(trained_at_ms);
        self.training.training_ms = Some(training_ms);
    }

    pub fn training(&self) -> &Training {
        &self.training
    }

    /// Conditional mutations learned from so far.
    pub fn learned(&self) -> u64 {
        self.learned
    }

    pub fn report(&self) -> ModelReport {
        ModelReport {
            training: self.training.clone(),
            use_version_cache: self.config.use_version_cache,
            learned: self.learned,
            features: self.model.nonzero_weights(),
            dimensions: self.model.dim(),
            keys_tracked: self.keys.len(),
            clients_tracked: self.clients.len(),
            all_time: self.quality.all_time(),
            recent: self.quality.recent(),
        }
    }
}

fn forget_oldest_half<V>(map: &mut HashMap<u64, V>, last_ms: impl Fn(&V) -> i64) {
    let mut times: Vec<i64> = map.values().map(&last_ms).collect();
    let middle = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(middle);
    let median = *median;
    map.retain(|_, v| last_ms(v) > median);
}

/// One part of a feature's value: text, or a number (a bucket, an hour).
#[derive(Clone, Copy)]
enum Part<'a> {
    S(&'a str),
    N(i64),
}

/// The features of one mutation, hashed, each of weight 1.
struct Row(Vec<ftrl::Feature>);

impl Row {
    fn add(&mut self, name: &str, parts: &[Part<'_>]) {
        self.0.push((bucket(name, parts), 1.0f32));
    }
}

/// What the mutation is, whatever was seen before: where (collection, key,
/// its directories and extension), which fields, who, which operation, when.
fn what_it_is(row: &mut Row, obs: &Observation<'_>, base: u64) {
    use Part::{N, S};
    let doc = obs.doc;
    let collection = S(&doc.collection);
    row.add("bias", &[]);
    row.add("collection", &[collection]);
    row.add("key", &[collection, S(&doc.key)]);
    let mut prefix_end = 0;
    for (depth, segment) in doc.key.split('/').enumerate().take(DIR_DEPTH_MAX) {
        prefix_end += segment.len() + usize::from(depth > 0);
        if prefix_end >= doc.key.len() {
            break;
        }
        row.add("dir", &[collection, S(&doc.key[..prefix_end])]);
    }
    if let Some(ext) = doc
        .key
        .rsplit_once('.')
        .map(|(_, e)| e)
        .filter(|e| e.len() <= 8 && !e.contains('/'))
    {
        row.add("ext", &[S(ext)]);
    }
    for field in obs.fields.iter().take(FIELDS_MAX) {
        row.add("field", &[collection, S(field)]);
    }
    row.add("client", &[S(obs.client)]);
    row.add("op", &[S(obs.op.as_str())]);
    let secs = obs.event_ms.div_euclid(1000);
    row.add("hour", &[N(secs.div_euclid(3600).rem_euclid(24))]);
    // 1970-01-01 was a Thursday.
    row.add("weekday", &[N((secs.div_euclid(86_400) + 4).rem_euclid(7))]);
    row.add("base_zero", &[N(i64::from(base == 0))]);
}

/// The hashed coordinate of a named feature with its value parts, chained
/// through xxh3's seed so that nothing is allocated.
fn bucket(name: &str, parts: &[Part<'_>]) -> u32 {
    let mut h = xxh3_64(name.as_bytes());
    for part in parts {
        h = match part {
            Part::S(text) => xxh3_64_with_seed(text.as_bytes(), h),
            // A different seed stream for numbers, so "1" and 1 differ.
            Part::N(n) => xxh3_64_with_seed(&n.to_le_bytes(), !h),
        };
    }
    // The model masks the index to its dimension.
    h as u32
}

const AGE_FUTURE: i64 = -1;
const AGE_OLDER: i64 = -2;
const AGE_UNKNOWN: i64 = -3;
/// Where an untrained model starts for a base the version cache knows is
/// current, and one it knows is behind.
const CURRENT_BASE_PRIOR: f64 = 0.02;
const STALE_BASE_PRIOR: f64 = 0.9;
const GAP_AHEAD: i64 = -1;
const GAP_UNSEEN: i64 = -2;

/// Octaves of a count: 0 for nothing, then log2(1 + x) rounded.
fn log_bucket(x: f64) -> i64 {
    if x.is_nan() || x <= 0.05 {
        return 0;
    }
    (x + 1.0).log2().round().min(16.0) as i64
}

/// Half-octave buckets of a non-negative quantity.
fn fine_bucket(x: f64) -> i64 {
    if x.is_nan() || x <= 0.001 {
        return i64::MIN;
    }
    (2.0 * x.log2()).floor().clamp(-20.0, 40.0) as i64
}

/// Twentieths of a rate in [0, 1].
fn rate_bucket(rate: f64) -> i64 {
    (rate.clamp(0.0, 1.0) * 20.0).round() as i64
}

fn gap_bucket(current: u64, base: u64) -> i64 {
    if base > current {
        return GAP_AHEAD;
    }
    match current - base {
        gap @ 0..=2 => gap as i64,
        3..=4 => 3,
        5..=8 => 5,
        _ => 9,
    }
}

/// Octaves of seconds.
fn age_bucket(ms: i64) -> i64 {
    if ms < 0 {
        return AGE_FUTURE;
    }
    ((ms / 1000) as f64 + 1.0).log2().floor() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs<'a>(doc: &'a DocKey, base: Option<u64>, event_ms: i64) -> Observation<'a> {
        Observation {
            doc,
            op: Op::Patch,
            fields: &[],
            client: "c",
            base_version: base,
            event_ms,
            lane_waiting: 0,
        }
    }

    #[test]
    fn unconditional_mutations_score_zero_and_the_untrained_model_says_the_prior() {
        let p = Predictor::new(PredictorConfig::default());
        let doc = DocKey::new("c", "k");
        assert_eq!(p.score(&obs(&doc, None, 0)).probability, 0.0);
        let prior = p.score(&obs(&doc, Some(0), 0)).probability;
        assert_eq!(
            prior, PRIOR_DEFAULT,
            "the prior, without single-precision noise"
        );
    }

    #[test]
    fn an_untrained_model_knows_a_stale_base_from_a_current_one() {
        let mut p = Predictor::new(PredictorConfig::default());
        let doc = DocKey::new("c", "k");
        // One write teaches the version cache version 1 (and the model a little).
        let scored = p.score(&obs(&doc, None, 0));
        p.learn(
            scored,
            Outcome {
                conflict: false,
                version_after: 1,
                wrote: true,
            },
        );
        let current = p.score(&obs(&doc, Some(1), 10)).probability;
        let stale = p.score(&obs(&doc, Some(0), 10)).probability;
        assert!(current < 0.05, "a current base scores low: {current}");
        assert!(stale > 0.8, "a known-stale base scores high: {stale}");
        let off = Predictor::new(PredictorConfig {
            use_version_cache: false,
            ..PredictorConfig::default()
        });
        assert_eq!(
            off.score(&obs(&doc, Some(0), 10)).probability,
            PRIOR_DEFAULT
        );
    }

    /// Clients that read a key and write it back, some after others wrote it:
    /// with the version cache the gap tells conflicts apart; without it the
    /// model has far less to go on.
    fn stale_writers(use_version_cache: bool) -> QualityReport {
        let mut p = Predictor::new(PredictorConfig {
            use_version_cache,
            ..PredictorConfig::default()
        });
        let mut versions = [0u64; 20];
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            seed >> 33
        };
        for round in 0..6_000i64 {
            let k = (next() % 20) as usize;
            let doc = DocKey::new("c", format!("k{k}"));
            let current = versions[k];
            let base = if next() % 4 == 0 {
                current.saturating_sub(1 + next() % 3)
            } else {
                current
            };
            let scored = p.score(&obs(&doc, Some(base), round * 1_000));
            let conflict = base != current;
            versions[k] += 1;
            p.learn(
                scored,
                Outcome {
                    conflict,
                    version_after: versions[k],
                    wrote: true,
                },
            );
        }
        p.report().recent
    }

    #[test]
    fn the_version_cache_makes_stale_bases_predictable() {
        let with_cache = stale_writers(true).auc.unwrap_or(0.0);
        let without = stale_writers(false).auc.unwrap_or(1.0);
        assert!(with_cache > 0.95, "{with_cache}");
        assert!(without < with_cache, "{without} vs {with_cache}");
    }

    #[test]
    fn odd_input_does_not_panic_and_maps_stay_bounded() {
        let config = PredictorConfig {
            keys_max: 8,
            clients_max: 4,
            ..PredictorConfig::default()
        };
        let mut p = Predictor::new(config);
        for i in 0..100i64 {
            let doc = DocKey::new("", format!("{}/", "/".repeat((i % 5) as usize)));
            let o = Observation {
                doc: &doc,
                op: Op::Put,
                fields: &[String::new()],
                client: &i.to_string(),
                base_version: Some(u64::MAX - i as u64),
                event_ms: if i % 2 == 0 { i64::MIN } else { i64::MAX - i },
                lane_waiting: usize::MAX,
            };
            let s = p.score(&o);
            assert!((0.0..=1.0).contains(&s.probability));
            p.learn(
                s,
                Outcome {
                    conflict: i % 3 == 0,
                    version_after: u64::MAX,
                    wrote: i % 2 == 0,
                },
            );
        }
        let report = p.report();
        assert!(
            report.keys_tracked <= 8 && report.clients_tracked <= 4,
            "{report:?}"
        );
    }
}
