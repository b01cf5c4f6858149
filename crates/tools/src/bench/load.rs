//! The load the bench puts on the contenders: closed loops of read-think-
//! write intents, open-loop Poisson arrivals, a writer behind Sluice's back,
//! trace replay, and unconditional writes (one-row commits, Sluice single
//! and batched), each tallied per client task and merged.

use super::intent::{Append, Ended, Target};
use super::*;
use hdrhistogram::Histogram;
use sqlx::sqlite::SqlitePool;

/// The tally of one run, merged from its client tasks.
#[derive(Debug)]
pub(super) struct Tally {
    pub(super) applied: u64,
    /// Applied within `CLIENT_TIMEOUT`: goodput.
    pub(super) in_time: u64,
    pub(super) conflicts: u64,
    pub(super) wasted: u64,
    pub(super) timeouts: u64,
    pub(super) rejected_429: u64,
    /// Requests that reached Sluice (for CPU per mutation).
    pub(super) mutations: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    /// Per intent, 429s excepted: the admitted intents' latency, every
    /// sample, in bounded memory (three significant digits).
    pub(super) latencies_us: Histogram<u64>,
    /// The run's length when the driver measured it itself (pgbench).
    pub(super) duration: Option<Duration>,
    /// Sluice's read-time forecasts and whether each write then conflicted,
    /// and the reads that earned a write lease.
    pub(super) forecasts: Vec<(f64, bool)>,
    pub(super) leases: u64,
    /// Intents staged as shadow writes (their (client, id)), and those of
    /// them applied once promoted, after the run.
    pub(super) staged: Vec<(String, String)>,
    pub(super) staged_applied: u64,
    /// The appends (client, entry) the clients were told were not applied,
    /// and how each ended: what a failed lost-update check looks them up by.
    pub(super) unapplied: Vec<(String, String, &'static str)>,
}

/// Latencies from 1 µs to an hour; a longer one is recorded as an hour.
const LATENCY_US_MAX: u64 = 3_600_000_000;

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            applied: 0,
            in_time: 0,
            conflicts: 0,
            wasted: 0,
            timeouts: 0,
            rejected_429: 0,
            mutations: 0,
            errors: 0,
            first_error: None,
            latencies_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect(
                "invariant: 1 ≤ low, high ≥ 2 × low and 3 significant digits are valid bounds",
            ),
            duration: None,
            forecasts: Vec::new(),
            leases: 0,
            staged: Vec::new(),
            staged_applied: 0,
            unapplied: Vec::new(),
        }
    }
}

impl Tally {
    /// One append intent: tallied, and remembered by its entry when the
    /// client was not told it was applied.
    pub(super) fn add_append(&mut self, client: &str, entry: &str, ended: Ended, took: Duration) {
        if !ended.applied && ended.error.is_none() {
            let how = if ended.rejected_429 {
                "answered 429"
            } else if ended.staged.is_some() {
                "staged"
            } else if ended.conflict {
                "answered 409"
            } else {
                "answered 404"
            };
            self.unapplied
                .push((client.to_owned(), entry.to_owned(), how));
        }
        self.add(ended, took);
    }

    pub(super) fn add(&mut self, ended: Ended, latency: Duration) {
        self.mutations += 1;
        if let Some(e) = ended.error {
            self.errors += 1;
            self.first_error.get_or_insert(e);
            return;
        }
        self.wasted += u64::from(ended.wasted);
        if ended.rejected_429 {
            self.rejected_429 += 1;
            return;
        }
        let timed_out = latency > CLIENT_TIMEOUT;
        self.timeouts += u64::from(timed_out);
        self.conflicts += u64::from(ended.conflict);
        self.leases += u64::from(ended.leased);
        if let Some(staged) = ended.staged {
            self.staged.push(staged);
        }
        if let Some(p) = ended.forecast {
            self.forecasts.push((p, ended.conflict));
        }
        if ended.applied {
            self.applied += 1;
            self.in_time += u64::from(!timed_out);
        }
        self.record_latency(latency);
    }

    pub(super) fn record_latency(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies_us
            .saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    /// The latency at quantile `q` (0 to 1), in ms; 0 without samples.
    pub(super) fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.value_at_quantile(q) as f64 / 1000.0
    }

    pub(super) fn merge(&mut self, other: Tally) {
        self.applied += other.applied;
        self.in_time += other.in_time;
        self.conflicts += other.conflicts;
        self.wasted += other.wasted;
        self.timeouts += other.timeouts;
        self.rejected_429 += other.rejected_429;
        self.mutations += other.mutations;
        self.errors += other.errors;
        self.leases += other.leases;
        self.forecasts.extend(other.forecasts);
        self.staged.extend(other.staged);
        self.staged_applied += other.staged_applied;
        self.unapplied.extend(other.unapplied);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latencies_us.add(&other.latencies_us);
    }
}

/// `clients` tasks, each: pick a document (Zipf θ), read, think, write;
/// again until the run's time is up.
pub(super) async fn closed_loop(
    target: Target,
    collection: &Arc<str>,
    clients: usize,
    theta: f64,
    run: Duration,
    think: Duration,
    seed: u64,
) -> Tally {
    let zipf = Arc::new(Zipf::new(DOCS, theta));
    let deadline = Instant::now() + run;
    let mut tasks = JoinSet::new();
    for c in 0..clients {
        let (target, zipf, collection) = (target.clone(), zipf.clone(), collection.clone());
        tasks.spawn(async move {
            let mut rng = SplitMix64::new(seed ^ (c as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let client = format!("c{c}");
            let mut tally = Tally::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let key = format!("doc-{}", zipf.draw(&mut rng));
                let entry = format!("{client}.{seq}");
                let (ended, took) =
                    timed_append(&target, &collection, &key, &client, &entry, think).await;
                let refused = ended.rejected_429;
                tally.add_append(&client, &entry, ended, took);
                if refused {
                    tokio::time::sleep(REFUSED_PAUSE).await;
                }
            }
            tally
        });
    }
    join(tasks).await
}

/// One `hot` intent and how long it took, retries and think time included.
pub(super) async fn timed_append(
    target: &Target,
    collection: &str,
    key: &str,
    client: &str,
    entry: &str,
    think: Duration,
) -> (Ended, Duration) {
    let started = Instant::now();
    let ended = target
        .append(&Append {
            collection,
            key,
            client,
            entry,
            think,
        })
        .await;
    (ended, started.elapsed())
}

pub(super) async fn join(mut tasks: JoinSet<Tally>) -> Tally {
    let mut total = Tally::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(tally) => total.merge(tally),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    total
}

/// Poisson arrivals at `rate` per second on uniform keys, each an intent of
/// its own, whatever the answers do (an open loop: the load does not wait).
pub(super) async fn open_loop(
    target: Target,
    collection: &Arc<str>,
    rate: f64,
    run: Duration,
    think: Duration,
    seed: u64,
) -> Tally {
    let zipf = Arc::new(Zipf::new(DOCS, 0.0));
    let mut rng = SplitMix64::new(seed);
    let outstanding = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_CONNECTIONS));
    let mut tasks = JoinSet::new();
    let mut total = Tally::default();
    let start = tokio::time::Instant::now();
    let mut at = 0.0;
    let mut n = 0u64;
    loop {
        at += rng.exponential(1.0 / rate.max(1.0));
        if at >= run.as_secs_f64() {
            break;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
        while let Some(done) = tasks.try_join_next() {
            if let Ok(tally) = done {
                total.merge(tally);
            }
        }
        n += 1;
        if outstanding.load(Ordering::Relaxed) >= OUTSTANDING_MAX {
            total.timeouts += 1;
            continue;
        }
        outstanding.fetch_add(1, Ordering::Relaxed);
        let key = format!("doc-{}", zipf.draw(&mut rng));
        let (target, collection, outstanding) =
            (target.clone(), collection.clone(), outstanding.clone());
        let connections = connections.clone();
        tasks.spawn(async move {
            let client = format!("o{}", n % 1024);
            let entry = format!("o{n}");
            let arrived = Instant::now();
            // Waiting for a connection is part of the intent's latency.
            let connection = connections.acquire_owned().await;
            let (ended, _) = timed_append(&target, &collection, &key, &client, &entry, think).await;
            drop(connection);
            let took = arrived.elapsed();
            outstanding.fetch_sub(1, Ordering::Relaxed);
            let mut tally = Tally::default();
            tally.add_append(&client, &entry, ended, took);
            tally
        });
    }
    total.merge(join(tasks).await);
    total
}

/// Writes the hottest 1% of the documents straight into PostgreSQL, around
/// Sluice, `EXTERNAL_RATE` times a second, keeping their entries.
pub(super) async fn external_writer(
    pool: PgPool,
    collection: Arc<str>,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> ToolResult<()> {
    let hottest = DOCS / 100;
    let interval = Duration::from_secs_f64(1.0 / EXTERNAL_RATE);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("doc-{}", n % hottest);
        sqlx::query(
            "UPDATE sluice_documents
             SET version = version + 1,
                 item = (item::jsonb || jsonb_build_object('external', $3::BIGINT))::json
             WHERE collection = $1 AND key = $2",
        )
        .bind(&*collection)
        .bind(&key)
        .bind(n as i64)
        .execute(&pool)
        .await
        .context("the external writer's update")?;
        writes.fetch_add(1, Ordering::Relaxed);
        n += 1;
        tokio::time::sleep(interval).await;
    }
    Ok(())
}

/// The trace at full speed for the run's length (lines not sent by then are
/// not sent): `CLIENTS` workers, each trace client's mutations
/// in order on one worker.
pub(super) async fn trace_run(
    target: Target,
    collection: &Arc<str>,
    trace: Arc<Vec<TraceLine>>,
    run: Duration,
) -> Tally {
    let deadline = Instant::now() + run;
    let mut shares: Vec<Vec<usize>> = vec![Vec::new(); CLIENTS];
    for (i, line) in trace.iter().enumerate() {
        let h = xxhash_rust::xxh3::xxh3_64(line.client.as_bytes());
        shares[(h % CLIENTS as u64) as usize].push(i);
    }
    let mut tasks = JoinSet::new();
    for share in shares {
        let (target, collection, trace) = (target.clone(), collection.clone(), trace.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            for i in share {
                let started = Instant::now();
                if started >= deadline {
                    break;
                }
                let ended = target.trace(&collection, &trace[i]).await;
                tally.add(ended, started.elapsed());
            }
            tally
        });
    }
    join(tasks).await
}

/// pgbench-style: `COMMIT_CLIENTS` clients, each committing one-row updates
/// of uniform keys, no read, no think.
pub(super) async fn one_row_commits(
    pool: PgPool,
    collection: &Arc<str>,
    run: Duration,
    seed: u64,
) -> Tally {
    let deadline = Instant::now() + run;
    let mut tasks = JoinSet::new();
    for c in 0..COMMIT_CLIENTS {
        let (pool, collection) = (pool.clone(), collection.clone());
        tasks.spawn(async move {
            let mut rng = SplitMix64::new(seed ^ c as u64);
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let key = format!("doc-{}", rng.below(DOCS));
                let started = Instant::now();
                let done = sqlx::query(
                    "UPDATE sluice_documents SET version = version + 1,
                         item = json_build_object('owner', $3::TEXT, 'entries', item->'entries')
                     WHERE collection = $1 AND key = $2",
                )
                .bind(&*collection)
                .bind(&key)
                .bind(format!("c{c}"))
                .execute(&pool)
                .await;
                let ended = match done {
                    Ok(r) => Ended {
                        applied: r.rows_affected() == 1,
                        ..Ended::default()
                    },
                    Err(e) => Ended {
                        error: Some(e.to_string()),
                        ..Ended::default()
                    },
                };
                tally.add(ended, started.elapsed());
            }
            tally
        });
    }
    join(tasks).await
}

/// The batched ceiling: one client writing uniform keys straight to
/// PostgreSQL, `COMMIT_BATCH` distinct rows per transaction.
pub(super) async fn direct_batched(
    pool: PgPool,
    collection: &Arc<str>,
    run: Duration,
    seed: u64,
) -> Tally {
    let deadline = Instant::now() + run;
    let mut rng = SplitMix64::new(seed);
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let mut keys = std::collections::BTreeSet::new();
        while keys.len() < COMMIT_BATCH {
            keys.insert(format!("doc-{}", rng.below(DOCS)));
        }
        let keys: Vec<String> = keys.into_iter().collect();
        let started = Instant::now();
        let done = sqlx::query(
            "UPDATE sluice_documents SET version = version + 1,
                 item = json_build_object('owner', 'batched', 'entries', item->'entries')
             WHERE collection = $1 AND key = ANY($2)",
        )
        .bind(&**collection)
        .bind(&keys)
        .execute(&pool)
        .await;
        let latency = started.elapsed();
        match done {
            Ok(r) => {
                for i in 0..keys.len() as u64 {
                    tally.add(
                        Ended {
                            applied: i < r.rows_affected(),
                            ..Ended::default()
                        },
                        latency,
                    );
                }
            }
            Err(e) => tally.add(Ended::failed(e), latency),
        }
    }
    tally
}

/// The embedded default's ceiling: one writer on Sluice's own SQLite file
/// (`pool`, opened with Sluice's settings), `COMMIT_BATCH` distinct rows per
/// transaction in one statement, as `direct_batched` writes PostgreSQL.
pub(super) async fn sqlite_batched(
    pool: SqlitePool,
    collection: &Arc<str>,
    run: Duration,
    seed: u64,
) -> Tally {
    let deadline = Instant::now() + run;
    let mut rng = SplitMix64::new(seed);
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let mut keys = std::collections::BTreeSet::new();
        while keys.len() < COMMIT_BATCH {
            keys.insert(format!("doc-{}", rng.below(DOCS)));
        }
        let keys = serde_json::Value::from(keys.into_iter().collect::<Vec<String>>()).to_string();
        let started = Instant::now();
        let done = sqlx::query(
            "UPDATE sluice_documents SET version = version + 1, updated_ms = $3,
                 item = json_object('owner', 'batched', 'entries', json(item -> '$.entries'))
             WHERE collection = $1 AND key IN (SELECT value FROM json_each($2))",
        )
        .bind(&**collection)
        .bind(&keys)
        .bind(crate::clock::wall_ms())
        .execute(&pool)
        .await;
        let latency = started.elapsed();
        match done {
            Ok(r) => {
                for i in 0..COMMIT_BATCH as u64 {
                    tally.add(
                        Ended {
                            applied: i < r.rows_affected(),
                            ..Ended::default()
                        },
                        latency,
                    );
                }
            }
            Err(e) => tally.add(Ended::failed(e), latency),
        }
    }
    tally
}

/// Unconditional uniform-key writes through Sluice: what group commit is for.
pub(super) async fn sluice_writes(
    target: Target,
    collection: &Arc<str>,
    run: Duration,
    batched: bool,
    seed: u64,
) -> Tally {
    let Target::Sluice { http, url } = target else {
        return Tally {
            errors: 1,
            first_error: Some("sluice writes need a Sluice".into()),
            ..Tally::default()
        };
    };
    let deadline = Instant::now() + run;
    let mut tasks = JoinSet::new();
    let clients = if batched { BATCH_CLIENTS } else { CLIENTS };
    for c in 0..clients {
        let (http, url, collection) = (http.clone(), url.clone(), collection.clone());
        tasks.spawn(async move {
            let mut rng = SplitMix64::new(seed ^ c as u64);
            let mut tally = Tally::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let n = if batched { COMMIT_BATCH } else { 1 };
                let mutations: Vec<serde_json::Value> = (0..n)
                    .map(|_| {
                        seq += 1;
                        serde_json::json!({
                            "id": format!("{collection}:w{c}.{seq}"),
                            "client": format!("w{c}"),
                            "collection": &*collection,
                            "key": format!("doc-{}", rng.below(DOCS)),
                            "op": "patch",
                            "value": {"owner": format!("w{c}")},
                        })
                    })
                    .collect();
                let started = Instant::now();
                let results = send_writes(&http, &url, mutations, batched).await;
                let latency = started.elapsed();
                if results.as_ref().is_ok_and(|r| r.contains(&429)) {
                    tokio::time::sleep(REFUSED_PAUSE).await;
                }
                match results {
                    Ok(statuses) => {
                        for status in statuses {
                            let ended = match status {
                                200 => Ended {
                                    applied: true,
                                    ..Ended::default()
                                },
                                429 => Ended {
                                    rejected_429: true,
                                    ..Ended::default()
                                },
                                other => Ended {
                                    error: Some(format!("answer {other}")),
                                    ..Ended::default()
                                },
                            };
                            tally.add(ended, latency);
                        }
                    }
                    Err(e) => tally.add(
                        Ended {
                            error: Some(e.to_string()),
                            ..Ended::default()
                        },
                        latency,
                    ),
                }
            }
            tally
        });
    }
    join(tasks).await
}

/// Sends one mutation and returns its answer's status, the answer read to
/// its end so the connection goes back to the pool instead of being closed.
async fn post_mutation(
    http: &reqwest::Client,
    url: &str,
    mutation: &serde_json::Value,
) -> ToolResult<u16> {
    let response = http
        .post(format!("{url}/v1/mutations"))
        .json(mutation)
        .send()
        .await?;
    let status = response.status().as_u16();
    response.bytes().await?;
    Ok(status)
}

/// The status of each mutation sent.
pub(super) async fn send_writes(
    http: &reqwest::Client,
    url: &str,
    mutations: Vec<serde_json::Value>,
    batched: bool,
) -> ToolResult<Vec<u16>> {
    if !batched {
        let mut statuses = Vec::new();
        for m in mutations {
            statuses.push(post_mutation(http, url, &m).await?);
        }
        return Ok(statuses);
    }
    let n = mutations.len();
    let response = http
        .post(format!("{url}/v1/mutations:batch"))
        .json(&serde_json::json!({ "mutations": mutations }))
        .send()
        .await?;
    let status = response.status().as_u16();
    if status != 200 {
        return Ok(vec![status; n]);
    }
    let body: serde_json::Value = response.json().await?;
    let results = body["results"]
        .as_array()
        .context("a batch answer without results")?;
    // Each result is the body a single mutation would get: an outcome is a
    // 200 (a rejection would say so; unconditional writes have none).
    Ok(results
        .iter()
        .map(|r| if r.get("outcome").is_some() { 200 } else { 500 })
        .collect())
}

/// Mutations held inside Sluice while the store is locked, so that the door
/// closes on a queue that stopped moving.
pub(super) const STALLED: usize = 100;
/// Clients of the refusal-only burst, each sending as fast as it is answered.
const BURST_CLIENTS: usize = 32;
/// A refusal is fast; a request that waits this long was let in.
const BURST_ANSWER_MAX: Duration = Duration::from_millis(500);

/// Sends `STALLED` patches that wait on the locked store; each task answers
/// with its status once the store is unlocked.
pub(super) fn stall(
    http: &reqwest::Client,
    url: &str,
    collection: &Arc<str>,
) -> JoinSet<ToolResult<u16>> {
    let mut tasks = JoinSet::new();
    for i in 0..STALLED {
        let (http, url) = (http.clone(), url.to_owned());
        let body = serde_json::json!({
            "id": format!("{collection}:stalled.{i}"),
            "client": "stalled",
            "collection": &**collection,
            "key": format!("doc-{i}"),
            "op": "patch",
            "value": {"owner": "stalled"},
        });
        tasks.spawn(async move { post_mutation(&http, &url, &body).await });
    }
    tasks
}

/// The path the `floor` workload posts to: no route, so Sluice answers 404
/// without reading the body.
const FLOOR_PATH: &str = "/v1/floor";

/// `CLIENTS` clients post the `writes` workload's body to `FLOOR_PATH` back
/// to back for `run`; every answer must be a 404. Each counts as an
/// applied intent, so the CPU per intent is F, the floor.
pub(super) async fn floor_requests(
    http: &reqwest::Client,
    url: &str,
    collection: &Arc<str>,
    run: Duration,
) -> Tally {
    let deadline = Instant::now() + run;
    let mut tasks = JoinSet::new();
    for c in 0..CLIENTS {
        let (http, url, collection) = (http.clone(), url.to_owned(), collection.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let body = serde_json::json!({
                    "id": format!("{collection}:f{c}.{seq}"),
                    "client": format!("f{c}"),
                    "collection": &*collection,
                    "key": format!("doc-{}", seq % DOCS),
                    "op": "patch",
                    "value": {"owner": format!("f{c}")},
                });
                let started = Instant::now();
                let sent = http
                    .post(format!("{url}{FLOOR_PATH}"))
                    .json(&body)
                    .send()
                    .await;
                let latency = started.elapsed();
                tally.mutations += 1;
                match sent.map(|r| r.status().as_u16()) {
                    Ok(404) => {
                        tally.applied += 1;
                        tally.in_time += 1;
                        tally.record_latency(latency);
                    }
                    Ok(status) => {
                        tally.errors += 1;
                        tally
                            .first_error
                            .get_or_insert(format!("{FLOOR_PATH} answered {status}, not 404"));
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(e.to_string());
                    }
                }
            }
            tally
        });
    }
    join(tasks).await
}

/// A refusal-only burst against a closed door: `BURST_CLIENTS` clients send
/// mutations back to back for `run`. Every answer must be a fast 429 (its
/// latency is recorded); anything else is an error of the run.
pub(super) async fn refusal_burst(
    http: &reqwest::Client,
    url: &str,
    collection: &Arc<str>,
    run: Duration,
) -> Tally {
    let deadline = Instant::now() + run;
    let mut tasks = JoinSet::new();
    for c in 0..BURST_CLIENTS {
        let (http, url, collection) = (http.clone(), url.to_owned(), collection.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let body = serde_json::json!({
                    "id": format!("{collection}:burst{c}.{seq}"),
                    "client": format!("burst{c}"),
                    "collection": &*collection,
                    "key": format!("doc-{}", STALLED as u64 + seq % (DOCS - STALLED as u64)),
                    "op": "patch",
                    "value": {"owner": format!("burst{c}")},
                });
                let started = Instant::now();
                let sent = post_mutation(&http, &url, &body);
                let answered = tokio::time::timeout(BURST_ANSWER_MAX, sent).await;
                let latency = started.elapsed();
                tally.mutations += 1;
                match answered {
                    Ok(Ok(429)) => {
                        tally.rejected_429 += 1;
                        tally.record_latency(latency);
                    }
                    Ok(Ok(status)) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(format!(
                            "the door let a request in during the refusal burst: {status}"
                        ));
                    }
                    Ok(Err(e)) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(e.to_string());
                    }
                    Err(_) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(format!(
                            "a request of the refusal burst waited past {BURST_ANSWER_MAX:?}: the door let it in"
                        ));
                        // Let in, it waits on the locked store: stop here.
                        break;
                    }
                }
            }
            tally
        });
    }
    join(tasks).await
}
