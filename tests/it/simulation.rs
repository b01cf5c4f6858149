//! A deterministic simulation of the real queue, dispatcher, resolver and
//! controller over an in-memory store, on tokio's paused clock (time moves
//! only when every task waits, and one thread runs them in a fixed order).
//!
//! The store's latency has a knee: 1 ms up to `knee` units of work at once (a
//! read is one, a commit one per lane it writes), growing with the cube of
//! the work beyond. Commits fail now and then, and a
//! writer that bypasses Sluice edits documents between Sluice's reads and
//! writes. Clients append unique elements with stale bases (automerge), and
//! resend with the same id after a 503 until acknowledged.
//!
//! Checked after every event (each store operation and each answer): the
//! engine's own invariants (`Engine::check_invariants`: the queue's
//! bookkeeping and bounds, in-flight lanes never past the concurrency limit
//! at dispatch, the controller's and the door's bounds, the document
//! cache's budget) and the store's (a commit batch's keys sorted and
//! distinct, every write one version past what its lane expected). At the
//! end: every element lands exactly once; each client's elements keep their
//! order; versions count the applied mutations; no mutation waits
//! unboundedly; the concurrency limit settles near the knee.
//!
//! Everything is seeded (the store's faults, the clients' keys, the
//! engine's jitter through the clock), so a seed replays bit for bit: a
//! test runs one twice and compares digests of the event logs. A failure
//! prints its seed and the command that replays it. `SLUICE_SIM_SEEDS=N`
//! runs the fault scenario under N fresh random seeds (the test script sets
//! a budget); `SLUICE_SIM_SEED=S` replays seed S alone.

use serde_json::{Map, Value, json};
use sluice_server::clock::{SharedClock, TokioClock};
use sluice_server::dispatch::{Engine, EngineConfig};
use sluice_server::history::MemoryHistory;
use sluice_server::model::{DocKey, Document, Mutation, Op};
use sluice_server::resolve::{Handler, Resolver, ScriptLimits};
use sluice_server::rng::SplitMix64;
use sluice_server::store::{
    CommitOutcome, LaneCommit, MemoryStore, Store, StoreError, StoredReply,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A run that has not finished in this much simulated time is stuck.
const SIMULATED_TIME_MAX: Duration = Duration::from_secs(3_600);

/// One scenario's shape.
#[derive(Clone, Copy)]
struct Scenario {
    keys: usize,
    clients: usize,
    appends_per_client: usize,
    error_percent: u64,
    /// Units of work the store takes before its latency climbs.
    knee: usize,
    /// The engine's cache of committed documents (0: every lane reads).
    document_cache_bytes: usize,
}

struct SimStore {
    inner: MemoryStore,
    active: AtomicUsize,
    rng: Mutex<SplitMix64>,
    error_percent: u64,
    knee: usize,
    /// The engine, once started: its invariants are checked at every event.
    engine: OnceLock<Engine>,
    log: Mutex<EventLog>,
    started: tokio::time::Instant,
}

/// What happened, in order: a digest of every event (so two runs of one
/// seed can be compared) and the first broken invariant.
#[derive(Default)]
struct EventLog {
    events: u64,
    digest: u64,
    broken: Option<String>,
}

impl SimStore {
    /// One event: folded into the digest, then every invariant checked.
    fn event(&self, what: String, broken_here: Option<String>) {
        let engine_broken = self
            .engine
            .get()
            .and_then(|engine| engine.check_invariants().err());
        let mut log = self.log.lock().expect("log");
        log.events += 1;
        let line = format!("{} {:?} {what}", log.events, self.started.elapsed());
        log.digest = xxhash_rust::xxh3::xxh3_64_with_seed(line.as_bytes(), log.digest);
        if log.broken.is_none()
            && let Some(broken) = broken_here.or(engine_broken)
        {
            log.broken = Some(format!("event {}: {what}: {broken}", log.events));
        }
    }
}

/// The store-side invariants of a commit batch.
fn check_batch(batch: &[LaneCommit]) -> Option<String> {
    if !batch.windows(2).all(|w| w[0].doc < w[1].doc) {
        return Some("a commit batch's keys are not sorted and distinct".into());
    }
    batch.iter().find_map(|lane| match &lane.write {
        Some(write) if write.version <= lane.expected_version => Some(format!(
            "{} written at version {} over expected {}",
            lane.doc, write.version, lane.expected_version
        )),
        _ => None,
    })
}

impl SimStore {
    /// The latency curve with a knee, for `work` more units now: a read is
    /// one unit, a commit one per lane it writes.
    async fn operate(&self, work: usize) {
        let active = self.active.fetch_add(work, Ordering::SeqCst) + work;
        let ms = (active as f64 / self.knee as f64).max(1.0).powi(3);
        tokio::time::sleep(Duration::from_secs_f64(ms.min(5_000.0) / 1000.0)).await;
        self.active.fetch_sub(work, Ordering::SeqCst);
    }

    fn flip(&self, percent: u64) -> bool {
        self.rng.lock().expect("rng").below(100) < percent
    }
}

crate::store_over_memory!(SimStore, {
    async fn get(&self, doc: &DocKey) -> Result<Document, StoreError> {
        self.operate(1).await;
        let read = self.inner.get(doc).await;
        let version = read.as_ref().map(|d| d.version).ok();
        self.event(format!("read {doc} {version:?}"), None);
        read
    }

    async fn commit(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        self.operate(batch.len()).await;
        let lanes: Vec<String> = batch
            .iter()
            .map(|l| format!("{}@{}", l.doc, l.expected_version))
            .collect();
        self.event(format!("commit {}", lanes.join(",")), check_batch(batch));
        if self.flip(self.error_percent) {
            return Err(StoreError::Unavailable("injected fault".into()));
        }
        // The writer that bypasses Sluice: now and then it edits a document of
        // this batch between Sluice's read and its compare-and-set.
        if let Some(lane) = batch.first()
            && self.flip(10)
        {
            let current = self.inner.get(&lane.doc).await?;
            if let Some(mut item) = current.item {
                let edits = item.get("bypass").and_then(Value::as_u64).unwrap_or(0) + 1;
                item.insert("bypass".into(), json!(edits));
                self.inner.write_behind_sluice(&lane.doc, Some(item));
            }
        }
        self.inner.commit(batch).await
    }

    async fn reply(&self, client: &str, id: &str) -> Result<Option<StoredReply>, StoreError> {
        // Instant, so that mutations spawned in order are admitted in order.
        self.inner.reply(client, id).await
    }
});

fn append(client: usize, seq: usize, key: usize) -> Mutation {
    let mut value = Map::new();
    value.insert("items".into(), json!([format!("c{client}-{seq}")]));
    Mutation {
        id: format!("c{client}-{seq}"),
        client: Some(format!("client-{client}")),
        doc: DocKey::new("sim", format!("k{key}")),
        op: Op::Patch,
        value: Some(value),
        // Base 0 on documents created at version 1: always stale, always merged.
        base_version: Some(0),
        ts_ms: None,
        lease: None,
        shadow: false,
        fingerprint: (client * 100_000 + seq) as u64,
    }
}

/// What one run left: the concurrency limits sampled every 5 ms, and the
/// digest of its event log.
struct Run {
    limits: Vec<usize>,
    digest: u64,
}

/// The one command that replays a seed of a simulation test.
fn replay_hint(seed: u64) -> String {
    format!("replay it with: SLUICE_SIM_SEED={seed} cargo nextest run simulation::")
}

/// Runs one seed, bounded in simulated time, and names the seed (with the
/// command that replays it) if anything fails.
async fn simulate(seed: u64, scenario: Scenario) -> Run {
    match tokio::time::timeout(SIMULATED_TIME_MAX, simulate_unbounded(seed, scenario)).await {
        Ok(run) => run,
        Err(_) => panic!(
            "seed {seed}: the run did not finish within {SIMULATED_TIME_MAX:?} of simulated time; {}",
            replay_hint(seed)
        ),
    }
}

/// Runs the clients to completion and checks the invariants.
async fn simulate_unbounded(seed: u64, scenario: Scenario) -> Run {
    let Scenario {
        keys: key_count,
        clients: client_count,
        appends_per_client,
        error_percent,
        knee,
        document_cache_bytes,
    } = scenario;
    let store = Arc::new(SimStore {
        inner: MemoryStore::new(),
        active: AtomicUsize::new(0),
        rng: Mutex::new(SplitMix64::new(seed)),
        error_percent,
        knee,
        engine: OnceLock::new(),
        log: Mutex::new(EventLog::default()),
        started: tokio::time::Instant::now(),
    });
    for k in 0..key_count {
        let doc = DocKey::new("sim", format!("k{k}"));
        store
            .inner
            .write_behind_sluice(&doc, json!({"items": []}).as_object().cloned());
    }
    let clock: SharedClock = TokioClock::shared(1_767_225_600_000);
    // A maximum far above the knee: the limit starts at a quarter of it (64)
    // and has to find the knee by itself.
    let config = EngineConfig {
        default_handler: Handler::Automerge,
        sample_host: false,
        document_cache_bytes,
        lanes_in_flight_max: 256,
        // A target below the knee's latency: the limit is steered by the
        // unloaded baseline (it grows while latency stays within a small
        // multiple of it), which is what finds a knee.
        latency_target_ms: 2.0,
        // The door would shed the clients' load before it reaches the
        // dispatcher; this scenario is about the dispatcher's limit.
        queue_wait_max_ms: 0,
        ..EngineConfig::default()
    };
    let resolver = Resolver::new(clock.clone(), ScriptLimits::default());
    let history = Arc::new(MemoryHistory::new());
    let engine = Engine::start(store.clone(), history, resolver, clock, config)
        .await
        .expect("engine");
    let _ = store.engine.set(engine.clone());

    // Clients: each appends to keys drawn at random, one mutation at a time
    // (so its appends to a key must land in order).
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let mut clients = Vec::new();
    for c in 0..client_count {
        let keys: Vec<usize> = (0..appends_per_client)
            .map(|_| rng.below(key_count as u64) as usize)
            .collect();
        let engine = engine.clone();
        let store = store.clone();
        clients.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            for (seq, key) in keys.into_iter().enumerate() {
                loop {
                    let reply = crate::support::submit(&engine, append(c, seq, key)).await;
                    store.event(format!("answer c{c}-{seq} {}", reply.status), None);
                    let body: Value = serde_json::from_str(&reply.body).expect("JSON");
                    match reply.status {
                        200 => {
                            assert_eq!(body["outcome"], json!("merged"), "seed {seed}: {body}");
                            waits.push(body["queued_ms"].as_f64().unwrap_or(0.0));
                            break;
                        }
                        // A failed commit: nothing was applied; resend the same id.
                        503 => tokio::time::sleep(Duration::from_millis(5)).await,
                        other => panic!("seed {seed}: unexpected {other}: {body}"),
                    }
                }
            }
            waits
        }));
    }
    // Watch the controller while the clients run.
    let (stop_watching, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut limits = Vec::new();
            while stopped.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let stats = engine.stats();
                assert!(
                    (1..=256).contains(&stats.concurrency_limit),
                    "seed {seed}: {stats:?}"
                );
                limits.push(stats.concurrency_limit);
            }
            limits
        })
    };
    let mut longest_wait: f64 = 0.0;
    for client in clients {
        for wait in client.await.expect("client") {
            longest_wait = longest_wait.max(wait);
        }
    }
    let _ = stop_watching.send(());
    let limits = watcher.await.expect("watcher");
    let (events, digest, broken) = {
        let log = store.log.lock().expect("log");
        (log.events, log.digest, log.broken.clone())
    };
    assert!(events > 0, "seed {seed}: events were logged");
    if let Some(broken) = broken {
        panic!(
            "seed {seed}: an invariant broke at {broken}; {}",
            replay_hint(seed)
        );
    }
    let stats = engine.stats();
    assert_eq!(
        (stats.queue_depth, stats.in_flight),
        (0, 0),
        "seed {seed}: all decided"
    );

    // Exactly once, in each client's order, versions counting the mutations.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut applied = 0;
    for k in 0..key_count {
        let doc = store
            .inner
            .get(&DocKey::new("sim", format!("k{k}")))
            .await
            .expect("get");
        let item = doc.item.expect("live document");
        let items = item["items"].as_array().expect("items");
        let bypass = item.get("bypass").and_then(Value::as_u64).unwrap_or(0);
        assert_eq!(
            doc.version,
            1 + items.len() as u64 + bypass,
            "seed {seed}: k{k}'s version counts its writes"
        );
        applied += items.len();
        let mut last_seq: HashMap<&str, usize> = HashMap::new();
        for element in items {
            let text = element.as_str().expect("string");
            *seen.entry(text.to_owned()).or_default() += 1;
            let (client, seq) = text.split_once('-').expect("c-seq");
            let seq: usize = seq.parse().expect("seq");
            if let Some(previous) = last_seq.insert(client, seq) {
                assert!(
                    previous < seq,
                    "seed {seed}: {client}'s appends to k{k} out of order"
                );
            }
        }
    }
    assert_eq!(
        applied,
        client_count * appends_per_client,
        "seed {seed}: nothing lost"
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "seed {seed}: nothing applied twice"
    );
    assert!(
        longest_wait < 10_000.0,
        "seed {seed}: a mutation waited {longest_wait} ms in its lane"
    );
    Run { limits, digest }
}

/// Demand far beyond the knee and no faults: the limit comes down from its
/// start (64) and settles where latency reaches three times the unloaded
/// baseline, past the knee by a margin that depends on the curve's shape,
/// not on the knee: a store with a later knee gets a higher limit.
#[tokio::test(start_paused = true)]
async fn the_concurrency_limit_follows_the_knee() {
    let mut settled = Vec::new();
    for (seed, knee) in [(11, 8), (12, 16), (13, 32)] {
        let scenario = Scenario {
            keys: 400,
            clients: 160,
            appends_per_client: 60,
            error_percent: 0,
            knee,
            // The knee is one of concurrent store calls: every lane reads
            // the store, so the lanes in flight load it as the controller
            // assumes (a lane that starts from the cache of committed
            // documents puts less on the store, and the limit settles
            // elsewhere).
            document_cache_bytes: 0,
        };
        let limits = simulate(seed, scenario).await.limits;
        assert!(limits.len() > 20, "seed {seed}: the run was sampled");
        // The middle of the run: past the start, before the clients thin out.
        let middle = &limits[limits.len() / 4..limits.len() * 3 / 4];
        let mean = middle.iter().sum::<usize>() as f64 / middle.len() as f64;
        assert!(
            (knee as f64 / 2.0..=knee as f64 * 3.0).contains(&mean),
            "seed {seed}: the limit averaged {mean:.1} mid-run, not near the knee {knee}: {limits:?}"
        );
        settled.push(mean);
    }
    assert!(
        settled.windows(2).all(|w| w[0] < w[1]),
        "the limit rises with the knee: {settled:?}"
    );
}

/// The fault scenario: commit faults and a writer behind Sluice's back.
fn faults(document_cache_bytes: usize) -> Scenario {
    Scenario {
        keys: 24,
        clients: 48,
        appends_per_client: 40,
        error_percent: 3,
        knee: 16,
        document_cache_bytes,
    }
}

/// Commit faults and a writer behind Sluice's back: every invariant holds,
/// with lanes that read the store and with lanes that start from the cache
/// of committed documents (which the writer behind Sluice makes stale).
/// Fixed seeds, one of them replayable alone with `SLUICE_SIM_SEED`.
#[tokio::test(start_paused = true)]
async fn the_dispatcher_keeps_its_invariants_under_faults() {
    let seeds = match std::env::var("SLUICE_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SLUICE_SIM_SEED is a number")],
        Err(_) => vec![1u64, 2, 3, 4],
    };
    for seed in seeds {
        // Even seeds read the store, odd ones start lanes from the cache.
        let cache = if seed.is_multiple_of(2) { 0 } else { 1 << 20 };
        simulate(seed, faults(cache)).await;
    }
}

/// `SLUICE_SIM_SEEDS=N`: the fault scenario under N fresh random seeds,
/// each printed before it runs (none without the variable).
#[tokio::test(start_paused = true)]
async fn random_seeds_keep_the_invariants() {
    let n: u64 = std::env::var("SLUICE_SIM_SEEDS")
        .ok()
        .map(|n| n.parse().expect("SLUICE_SIM_SEEDS is a number"))
        .unwrap_or(0);
    let entropy = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut seeds = SplitMix64::new(entropy);
    for _ in 0..n {
        let seed = seeds.below(1 << 48);
        println!("simulation seed {seed}");
        let cache = if seed.is_multiple_of(2) { 0 } else { 1 << 20 };
        simulate(seed, faults(cache)).await;
    }
}

/// A seed replays bit for bit: the same events in the same order at the
/// same simulated times (the document cache's eviction walks a map with a
/// fixed hasher, the engine's jitter is seeded by the clock).
#[tokio::test(start_paused = true)]
async fn a_seed_replays_the_same_run() {
    let first = simulate(7, faults(1 << 20)).await;
    let second = simulate(7, faults(1 << 20)).await;
    assert_eq!(first.digest, second.digest, "seed 7 ran two different ways");
    assert_eq!(first.limits, second.limits);
}
