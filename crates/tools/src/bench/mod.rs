//! `sluice bench`: Sluice against what an application does without it
//! (optimistic and pessimistic writes straight to PostgreSQL), side by side in
//! one run against one database, with the same client code, the same number
//! of client tasks and the same connection pool size.
//!
//! Every run gets a collection of its own (fresh documents, no state carried
//! from the run before), contenders are interleaved and their order rotates
//! with each repetition so that drift of the machine cancels, and every run
//! ends with an accounting check: the intents the clients were told were
//! applied are exactly the entries found in the database.

mod auth;
mod child;
mod cluster;
mod goals;
mod intent;
pub mod link;
mod load;
mod pgbench;
mod plan;
mod plot;
pub mod postgres;
mod redis;
mod report;

pub use crate::trace::TraceLine;
pub use child::{Features, process_cpu_us};
pub use intent::Contender;
pub use plan::{ABLATION, Workload};
pub use report::{BenchReport, RunRecord};

use plan::{Job, Plan, Setting, Subject, Writer, schedule, setting_label, subject_name};

/// One run's figures, before the medians over repetitions.
pub type Sample = RunRecord;

use crate::clock::wall_ms;
use crate::generate::Zipf;
use crate::rng::SplitMix64;
use crate::tool::{Context, ToolResult, bail};
use child::SluiceChild;
use indicatif::{ProgressBar, ProgressStyle};
use intent::Target;
use load::{
    Tally, closed_loop, direct_batched, external_writer, one_row_commits, open_loop, refusal_burst,
    sluice_writes, stall, trace_run,
};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Documents of the `hot`, `overload` and `external` workloads.
pub const DOCS: u64 = 10_000;
/// Closed-loop client tasks of every contender.
pub const CLIENTS: usize = 64;
/// Connections of the direct contenders' pool on loopback, and of Sluice's own store
/// pool (`store::postgres`): the same for everyone.
pub const POOL_SIZE: u32 = 16;
/// Connections of the direct contenders' pool over a link: one per client.
pub const LINKED_POOL_SIZE: u32 = CLIENTS as u32;
/// The yardstick ratio (the bench's `direct-lock` over pgbench's) below
/// which a run fails: far below the goal, not noise.
pub const YARDSTICK_FAIL_BELOW: f64 = 0.6;
pub const THINK: Duration = Duration::from_millis(2);
/// An intent answered later than this counts as a time-out: the user gave up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
pub const THETAS: [f64; 5] = [0.0, 0.6, 0.9, 0.99, 1.2];
pub const LOADS: [f64; 4] = [0.5, 1.0, 2.0, 4.0];
/// The link's round trips every workload runs at (ms): loopback, and about
/// what a client pays across availability zones.
pub const RTTS_MS: [f64; 2] = [0.0, 1.0];
/// Processes of the `cluster` workload's cluster, and the skews it runs at.
pub const CLUSTER_MEMBERS: usize = 3;
pub const CLUSTER_THETAS: [f64; 2] = [0.0, 0.99];
/// A far link, for `hot` at θ = 0.99 in the full run.
pub const FAR_RTT_MS: f64 = 5.0;
/// Ping-pongs through the link that measure its round trip.
pub const LINK_PINGS: usize = 400;
/// A closed-loop client told 429 pauses this long before its next intent,
/// as a client honouring `Retry-After` would (the header has whole seconds;
/// clients that want their work done sooner come back sooner).
const REFUSED_PAUSE: Duration = Duration::from_millis(100);
/// Open-loop intents outstanding at once; an arrival beyond it is a client
/// that gave up at once (a time-out).
const OUTSTANDING_MAX: usize = 4_096;
/// Requests in flight at once in the open loop: the connections of a fleet
/// of clients' pools, below Sluice's default cap of 768 connections (an
/// arrival waits for one, and the wait counts in its latency).
const OPEN_LOOP_CONNECTIONS: usize = 512;
/// Writes per second of the `external` workload's writer that bypasses Sluice.
const EXTERNAL_RATE: f64 = 200.0;
/// Clients of the group-commit comparison: pgbench-style one-row commits.
const COMMIT_CLIENTS: usize = 32;
/// Mutations per `POST /v1/mutations:batch` in the group-commit comparison,
/// and clients sending them: 400 mutations in flight, about what the
/// admission bound lets in at this machine's rate.
const COMMIT_BATCH: usize = 100;
const BATCH_CLIENTS: usize = 4;
/// How long the refusal burst waits, once the store is locked, for the
/// door to close on the queue that stopped moving (two of its windows).
const STALL_SETTLE: Duration = Duration::from_millis(300);

pub struct BenchOptions {
    /// A PostgreSQL to use; a temporary one is started without it.
    pub postgres: Option<String>,
    /// The Redis of the `cluster` workload; a temporary `redis-server` is
    /// started without it.
    pub redis: Option<String>,
    pub quick: bool,
    /// The workloads to run; empty: all of them.
    pub workloads: Vec<Workload>,
    pub out: PathBuf,
    pub trace: PathBuf,
    /// The `sluice` binary to start (the running one).
    pub exe: PathBuf,
    pub progress: bool,
    /// Overrides the length of each run and the repetitions (for tests of
    /// the harness itself; the published numbers use the defaults).
    pub run_ms: Option<u64>,
    pub repetitions: Option<usize>,
    pub trace_lines: Option<usize>,
    /// The link's round trips in ms, overriding the plan's (each workload
    /// runs at each of them; 0 is loopback, no link).
    pub rtts_ms: Option<Vec<f64>>,
}

/// What the database holds of one run's collection.
struct Found {
    docs: i64,
    entries: i64,
    versions: i64,
}

struct Bench {
    plan: Plan,
    /// Accounting queries and document loading.
    admin: PgPool,
    /// The direct contenders' pool.
    direct: PgPool,
    http: reqwest::Client,
    children: BTreeMap<Subject, SluiceChild>,
    /// The links, the direct contenders' pool through it, and a link to
    /// each Sluice child (by the child's subject).
    relay: link::Relay,
    linked_direct: PgPool,
    sluice_links: BTreeMap<Subject, link::Link>,
    /// The `cluster` workload's members, and a link to each.
    cluster: Option<cluster::Cluster>,
    cluster_links: Vec<link::Link>,
    _postgres_link: link::Link,
    /// PostgreSQL's postmaster, when the server runs on this machine.
    postmaster: Option<u32>,
    /// PostgreSQL's URL, and the same through the link.
    url: String,
    linked_url: String,
    pgbench: PathBuf,
    /// Where pgbench's scripts and logs go for a while.
    out: PathBuf,
    trace: Arc<Vec<TraceLine>>,
    /// Collections are named `{prefix}-{n}`: unique across invocations on one
    /// database, so nothing of an earlier run is in the way.
    prefix: String,
    runs: usize,
    /// Sluice's capacity at each round trip (µs), measured first.
    capacity: BTreeMap<u64, f64>,
    seed: u64,
}

fn rtt_key(rtt_ms: f64) -> u64 {
    (rtt_ms * 1000.0).round() as u64
}

fn rtt_duration(rtt_ms: f64) -> Duration {
    Duration::from_secs_f64(rtt_ms.max(0.0) / 1000.0)
}

pub async fn run(options: BenchOptions) -> ToolResult<BenchReport> {
    let plan = Plan::of(&options);
    let workloads = if options.workloads.is_empty() {
        let mut all = Workload::ALL.to_vec();
        // Asked for by name, the cluster workload says what it needs.
        if options.redis.is_none() && redis::server_bin().is_none() {
            eprintln!(
                "sluice bench: no redis-server here and no --redis: the cluster workload is left out"
            );
            all.retain(|w| *w != Workload::Cluster);
        }
        all
    } else {
        options.workloads.clone()
    };
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let trace = if workloads.contains(&Workload::Trace) {
        load_trace(&options.trace, plan.trace_lines)?
    } else {
        Vec::new()
    };

    let (temp, url) = match &options.postgres {
        Some(url) => (None, url.clone()),
        None => {
            let pg = tokio::task::spawn_blocking(postgres::TempPostgres::start).await??;
            let url = pg.url.clone();
            (Some(pg), url)
        }
    };
    // Sluice's own schema: the direct contenders write the same table.
    crate::store::PostgresStore::connect(&url)
        .await
        .context("connecting to PostgreSQL")?;
    let admin = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let direct = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect(&url)
        .await?;
    let postgres_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&admin)
        .await?;
    let postmaster = postgres::postmaster_pid(&admin).await;

    // The link: bytes to PostgreSQL (for the direct contenders and pgbench)
    // and to each Sluice go through the relay when a run's round trip is
    // not zero.
    let relay = link::Relay::new(Duration::ZERO)?;
    let pg_options: sqlx::postgres::PgConnectOptions = url.parse().context("the PostgreSQL URL")?;
    let pg_addr = tokio::net::lookup_host((pg_options.get_host(), pg_options.get_port()))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .context("the link needs PostgreSQL over TCP (a host and a port in its URL)")?;
    let postgres_link = relay.link(pg_addr)?;
    // Over a link a connection is busy for all of its transaction's round
    // trips, so 16 would leave most clients waiting on the pool: the direct
    // clients get one each, as pgbench's do.
    let linked_direct = PgPoolOptions::new()
        .max_connections(LINKED_POOL_SIZE)
        .connect_with(
            pg_options
                .clone()
                .host("127.0.0.1")
                .port(postgres_link.addr.port()),
        )
        .await?;
    let mut linked_url = reqwest::Url::parse(&url).context("the PostgreSQL URL")?;
    let rewritten = linked_url.set_host(Some("127.0.0.1")).is_ok()
        && linked_url.set_port(Some(postgres_link.addr.port())).is_ok();
    if !rewritten {
        bail!("cannot rewrite the PostgreSQL URL {url} to go through the link");
    }
    let mut link_rtts: Vec<(f64, Duration, Duration)> = Vec::new();
    for rtt_ms in plan.rtts_ms.iter().chain(plan.far_rtt_ms.iter()) {
        if *rtt_ms > 0.0 {
            relay.set_rtt(rtt_duration(*rtt_ms));
            let (median, p99) = link::measure(&relay, LINK_PINGS).await?;
            link_rtts.push((*rtt_ms, median, p99));
        }
    }
    relay.set_rtt(Duration::ZERO);

    let jobs = schedule(&workloads, &plan);
    let mut children = BTreeMap::new();
    let mut sluice_links = BTreeMap::new();
    let mut subjects: Vec<Subject> = jobs.iter().map(|j| j.subject).collect();
    subjects.sort();
    subjects.dedup();
    for subject in subjects {
        let features = match subject {
            Subject::Contender(Contender::Sluice) | Subject::OwnTier => Features::ALL,
            Subject::Contender(Contender::SluiceFifo) => Features::NONE,
            // Direct, or started below (the cluster's members).
            Subject::Contender(_) | Subject::Pgbench | Subject::Cluster => continue,
            Subject::Ablation(i) => ABLATION[i].1,
        };
        let name = match subject {
            Subject::OwnTier => "sluice-own-tier".to_owned(),
            _ => subject_name(subject).replace(['+', ' '], ""),
        };
        let log = options.out.join(format!("sluice-{name}.log"));
        let store = match subject {
            Subject::OwnTier => linked_url.as_str(),
            _ => url.as_str(),
        };
        let child = SluiceChild::start(&options.exe, store, features, &log).await?;
        let addr: std::net::SocketAddr = child
            .url
            .trim_start_matches("http://")
            .parse()
            .context("the Sluice child's address")?;
        sluice_links.insert(subject, relay.link(addr)?);
        children.insert(subject, child);
    }
    let prefix = format!("b{}", wall_ms());
    let (cluster, cluster_links) = if jobs.iter().any(|j| j.subject == Subject::Cluster) {
        let cluster = cluster::Cluster::start(
            &options.exe,
            &url,
            options.redis.as_deref(),
            &options.out,
            &prefix,
        )
        .await?;
        let mut links = Vec::new();
        for member in &cluster.members {
            let addr: std::net::SocketAddr = member
                .url
                .trim_start_matches("http://")
                .parse()
                .context("a cluster member's address")?;
            links.push(relay.link(addr)?);
        }
        (Some(cluster), links)
    } else {
        (None, Vec::new())
    };
    let mut bench = Bench {
        plan: plan.clone(),
        admin,
        direct,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(2 * CLIENTS)
            .build()?,
        children,
        relay,
        linked_direct,
        sluice_links,
        cluster,
        cluster_links,
        _postgres_link: postgres_link,
        postmaster,
        url: url.clone(),
        linked_url: linked_url.to_string(),
        pgbench: postgres::pgbench_path(),
        out: options.out.clone(),
        trace: Arc::new(trace),
        prefix,
        runs: 0,
        capacity: BTreeMap::new(),
        seed: 1,
    };

    let bar = if options.progress {
        ProgressBar::new(jobs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut samples = Vec::new();
    let mut capacity_samples = Vec::new();
    let mut ablation_samples = Vec::new();
    for job in jobs {
        let Job {
            setting,
            subject,
            rtt_ms,
        } = job;
        bar.set_message(format!(
            "{} {} R={rtt_ms} ms",
            setting_label(setting),
            subject_name(subject)
        ));
        let sample = bench.run_one(job).await?;
        match (setting, subject) {
            (Setting::Capacity, _) => {
                bench.capacity.insert(rtt_key(rtt_ms), sample.goodput);
                capacity_samples.push(sample);
            }
            (_, Subject::Ablation(_)) => ablation_samples.push(sample),
            _ => samples.push(sample),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let auth = if workloads.contains(&Workload::Auth) {
        auth::measure(
            &options.exe,
            &url,
            &options.out,
            &bench.prefix,
            plan.run,
            plan.repetitions,
        )
        .await?
    } else {
        Vec::new()
    };
    drop(bench);
    drop(temp);

    let machine =
        report::Machine::here(postgres_version, options.quick, plan.run, plan.repetitions);
    let links = link_rtts
        .into_iter()
        .map(|(rtt_ms, median, p99)| report::LinkRecord {
            rtt_ms,
            median_ms: median.as_secs_f64() * 1000.0,
            p99_ms: p99.as_secs_f64() * 1000.0,
        })
        .collect();
    let mut report = BenchReport::new(
        machine,
        links,
        &samples,
        &capacity_samples,
        &ablation_samples,
    );
    report.auth = auth;
    report.write(&options.out)?;
    // Runs under a second (the harness's own tests) are too short to judge
    // the baseline by; the report says what they measured. A shortfall of
    // the goal is run-to-run noise as often as not (the goal table shows
    // it); only a baseline far off makes the comparison meaningless.
    if plan.run >= Duration::from_secs(1)
        && let Some(weak) = weak_baseline(&report.goals)
    {
        bail!(
            "{}: {:.3}, below {YARDSTICK_FAIL_BELOW}; the bench's direct baseline is too weak to compare against (the report is in {})",
            weak.goal,
            weak.measured,
            options.out.display()
        );
    }
    Ok(report)
}

/// The yardstick goal whose shortfall fails the run, if any.
fn weak_baseline(goals: &[report::Goal]) -> Option<&report::Goal> {
    goals
        .iter()
        .find(|g| g.goal.contains(report::YARDSTICK_GOAL) && g.measured < YARDSTICK_FAIL_BELOW)
}

fn load_trace(path: &std::path::Path, lines: usize) -> ToolResult<Vec<TraceLine>> {
    let reader = crate::trace::open_trace(path).with_context(|| {
        format!(
            "the trace workload needs {} (pass --trace FILE, or leave the workload out)",
            path.display()
        )
    })?;
    let mut trace = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        if trace.len() >= lines {
            break;
        }
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = TraceLine::parse(&line).map_err(|e| {
            crate::tool::ToolError::new(format!("{} line {}: {e}", path.display(), number + 1))
        })?;
        trace.push(parsed);
    }
    Ok(trace)
}

impl Bench {
    /// Who the clients talk to, through the link when it has a round trip.
    fn target(&self, subject: Subject, rtt_ms: f64) -> ToolResult<Target> {
        let linked = rtt_ms > 0.0;
        let pool = if linked {
            &self.linked_direct
        } else {
            &self.direct
        };
        Ok(match subject {
            Subject::Contender(Contender::DirectOcc) => Target::Direct {
                pool: pool.clone(),
                lock: false,
            },
            Subject::Contender(Contender::DirectLock) | Subject::Pgbench => Target::Direct {
                pool: pool.clone(),
                lock: true,
            },
            Subject::Cluster => {
                let cluster = self.cluster.as_ref().context("no cluster was started")?;
                let urls: Vec<String> = if linked {
                    self.cluster_links
                        .iter()
                        .map(|l| format!("http://{}", l.addr))
                        .collect()
                } else {
                    cluster.members.iter().map(|m| m.url.clone()).collect()
                };
                Target::round_robin(
                    urls.into_iter()
                        .map(|url| Target::Sluice {
                            http: self.http.clone(),
                            url,
                        })
                        .collect(),
                )
            }
            other => {
                let url = if linked {
                    let link = self
                        .sluice_links
                        .get(&other)
                        .context("no link was made to this contender")?;
                    format!("http://{}", link.addr)
                } else {
                    self.children
                        .get(&other)
                        .context("no Sluice was started for this contender")?
                        .url
                        .clone()
                };
                Target::Sluice {
                    http: self.http.clone(),
                    url,
                }
            }
        })
    }

    /// CPU of each part of the machine so far (µs): Sluice (the run's
    /// child), PostgreSQL, the load generator (this process but its relay
    /// threads) and the relay.
    fn cpu(&self, subject: Subject) -> [Option<u64>; 4] {
        // A cluster's cost is its members' and its Redis's.
        let sluice = match subject {
            Subject::Cluster => self.cluster.as_ref().and_then(cluster::Cluster::cpu_us),
            _ => self.children.get(&subject).and_then(SluiceChild::cpu_us),
        };
        let postgres = self.postmaster.and_then(postgres::server_cpu_us);
        let relay = link::relay_cpu_us();
        // With the children it has reaped: pgbench, a client of its own.
        let client = child::stat_fields(Path::new("/proc/self/stat"), &[11, 12, 13, 14])
            .map(|all| all.saturating_sub(relay.unwrap_or(0)));
        [sluice, postgres, client, relay]
    }

    async fn run_one(&mut self, job: Job) -> ToolResult<Sample> {
        let Job {
            setting,
            subject,
            rtt_ms,
        } = job;
        self.runs += 1;
        self.seed = self.seed.wrapping_add(0x9e37_79b9);
        let collection: Arc<str> = format!("{}-{}", self.prefix, self.runs).into();
        self.relay.set_rtt(rtt_duration(rtt_ms));
        let target = self.target(subject, rtt_ms)?;
        let documents = !matches!(setting, Setting::Trace);
        if documents {
            self.load_documents(&collection).await?;
        }
        for url in target.sluice_urls() {
            self.configure(url, &collection).await?;
        }
        let cpu_before = self.cpu(subject);
        let stale_before = self.commits_stale(&target).await?;
        let run = self.plan.run;
        let started = Instant::now();
        let mut external_writes = 0;
        // The refusal burst's CPU is read around the burst alone.
        let mut burst_cpu = None;
        let tally = match setting {
            Setting::Hot(theta) | Setting::Cluster(theta) => {
                closed_loop(
                    target.clone(),
                    &collection,
                    CLIENTS,
                    theta,
                    run,
                    THINK,
                    self.seed,
                )
                .await
            }
            Setting::Capacity => {
                closed_loop(
                    target.clone(),
                    &collection,
                    CLIENTS,
                    0.0,
                    run,
                    Duration::ZERO,
                    self.seed,
                )
                .await
            }
            Setting::Overload(load) => {
                let capacity = *self
                    .capacity
                    .get(&rtt_key(rtt_ms))
                    .context("overload runs after the capacity run")?;
                open_loop(
                    target.clone(),
                    &collection,
                    load * capacity,
                    run,
                    THINK,
                    self.seed,
                )
                .await
            }
            Setting::External => {
                let stop = Arc::new(AtomicBool::new(false));
                let writes = Arc::new(AtomicU64::new(0));
                let writer = tokio::spawn(external_writer(
                    self.admin.clone(),
                    collection.clone(),
                    stop.clone(),
                    writes.clone(),
                ));
                let tally = closed_loop(
                    target.clone(),
                    &collection,
                    CLIENTS,
                    0.99,
                    run,
                    THINK,
                    self.seed,
                )
                .await;
                stop.store(true, Ordering::Relaxed);
                writer.await.context("external writer")??;
                external_writes = writes.load(Ordering::Relaxed);
                tally
            }
            Setting::Trace => trace_run(target.clone(), &collection, self.trace.clone(), run).await,
            Setting::Writes(writer) => {
                let pool = match &target {
                    Target::Direct { pool, .. } => pool.clone(),
                    Target::Sluice { .. } | Target::RoundRobin { .. } => self.direct.clone(),
                };
                match writer {
                    Writer::DirectOneRow => {
                        one_row_commits(pool, &collection, run, self.seed).await
                    }
                    Writer::DirectBatched => {
                        direct_batched(pool, &collection, run, self.seed).await
                    }
                    Writer::Sluice | Writer::SluiceBatch => {
                        let batched = writer == Writer::SluiceBatch;
                        sluice_writes(target.clone(), &collection, run, batched, self.seed).await
                    }
                }
            }
            Setting::Refusals => {
                let Target::Sluice { http, url } = &target else {
                    bail!("the refusal burst needs a Sluice");
                };
                // The store stalls: Sluice's commits wait on the lock (its
                // reads do not), mutations stop leaving the queue, and the
                // door closes.
                let mut lock = self.admin.begin().await?;
                sqlx::query("LOCK TABLE sluice_documents IN EXCLUSIVE MODE")
                    .execute(&mut *lock)
                    .await
                    .context("locking the documents")?;
                let stalled = stall(http, url, &collection);
                tokio::time::sleep(STALL_SETTLE).await;
                let before = self.cpu(subject);
                let mut tally = refusal_burst(http, url, &collection, run).await;
                tally.duration = Some(started.elapsed());
                burst_cpu = Some((before, self.cpu(subject)));
                lock.rollback().await.context("unlocking the documents")?;
                for status in stalled.join_all().await {
                    match status? {
                        200 => {
                            tally.applied += 1;
                            tally.in_time += 1;
                        }
                        429 => tally.rejected_429 += 1,
                        other => bail!("a stalled mutation was answered {other}"),
                    }
                }
                tally
            }
            Setting::Yardstick => match subject {
                Subject::Pgbench => {
                    let url = if rtt_ms > 0.0 {
                        &self.linked_url
                    } else {
                        &self.url
                    };
                    pgbench::run(&self.pgbench, url, &collection, run, &self.out).await?
                }
                _ => {
                    closed_loop(
                        target.clone(),
                        &collection,
                        CLIENTS,
                        pgbench::YARDSTICK_THETA,
                        run,
                        Duration::ZERO,
                        self.seed,
                    )
                    .await
                }
            },
        };
        let elapsed = tally
            .duration
            .unwrap_or_else(|| started.elapsed())
            .max(Duration::from_millis(1));
        let cpu_after = self.cpu(subject);
        let ((cpu_before, cpu_after), per_intent) = match burst_cpu {
            Some(burst) => (burst, tally.rejected_429),
            None => ((cpu_before, cpu_after), tally.applied),
        };
        if let Some(e) = &tally.first_error {
            bail!(
                "{} {}: {} intents failed; the first: {e}",
                setting_label(setting),
                subject_name(subject),
                tally.errors
            );
        }
        let wasted = match (self.commits_stale(&target).await?, stale_before) {
            (Some(after), Some(before)) => after.saturating_sub(before),
            _ => tally.wasted,
        };
        self.check_accounting(setting, subject, &collection, &tally, external_writes)
            .await?;
        let per = |i: usize, n: u64| match (cpu_before[i], cpu_after[i]) {
            (Some(before), Some(after)) if n > 0 => {
                Some(after.saturating_sub(before) as f64 / n as f64)
            }
            _ => None,
        };
        let cpu_us_per_mutation = per(0, tally.mutations);
        let relay_ran = rtt_ms > 0.0;
        // Per applied intent; for the refusal burst, per refusal.
        let cpu_us_per_intent = report::CpuPerIntent {
            sluice: per(0, per_intent),
            postgres: per(1, per_intent),
            client: per(2, per_intent),
            relay: per(3, per_intent).filter(|_| relay_ran),
        };
        let placement = match subject {
            Subject::OwnTier => Some("own-tier".to_owned()),
            Subject::Contender(c) if !c.is_sluice() => None,
            Subject::Pgbench => None,
            _ => Some("next-to-store".to_owned()),
        };
        let (workload, theta, load) = match setting {
            Setting::Hot(t) => ("hot", Some(t), None),
            Setting::Capacity => ("overload", None, None),
            Setting::Overload(l) => ("overload", None, Some(l)),
            Setting::External => ("external", Some(0.99), None),
            Setting::Trace => ("trace", None, None),
            Setting::Writes(_) => ("writes", None, None),
            Setting::Yardstick => ("yardstick", Some(pgbench::YARDSTICK_THETA), None),
            Setting::Refusals => ("refusals", None, None),
            Setting::Cluster(t) => ("cluster", Some(t), None),
        };
        let contender = match setting {
            Setting::Writes(writer) => writer.name().to_owned(),
            _ => subject_name(subject),
        };
        Ok(Sample {
            workload: workload.to_owned(),
            theta,
            load,
            contender,
            goodput: tally.in_time as f64 / elapsed.as_secs_f64(),
            applied: tally.applied,
            wasted_writes: wasted,
            client_conflicts: tally.conflicts,
            p50_ms: tally.latency_ms(0.5),
            p99_ms: tally.latency_ms(0.99),
            p999_ms: tally.latency_ms(0.999),
            timeouts: tally.timeouts,
            rejected_429: tally.rejected_429,
            cpu_us_per_mutation,
            rtt_ms,
            placement,
            cpu_us_per_intent,
            quantiles_ms: (0..=100)
                .map(|i| tally.latency_ms(f64::from(i) / 100.0))
                .collect(),
        })
    }

    /// `DOCS` documents at version 1, each `{"owner": null, "entries": []}`.
    async fn load_documents(&self, collection: &str) -> ToolResult<()> {
        sqlx::query(
            "INSERT INTO sluice_documents (collection, key, version, item, updated_ms)
             SELECT $1, 'doc-' || g, 1, '{\"owner\": null, \"entries\": []}'::json, $2
             FROM generate_series(0, $3 - 1) AS g",
        )
        .bind(collection)
        .bind(wall_ms())
        .bind(DOCS as i64)
        .execute(&self.admin)
        .await
        .context("loading the documents")?;
        Ok(())
    }

    /// Automerge, with `entries` a set: a stale append keeps every entry once.
    async fn configure(&self, url: &str, collection: &str) -> ToolResult<()> {
        let response = self
            .http
            .put(format!("{url}/v1/collections/{collection}"))
            .json(&serde_json::json!({"handler": "automerge", "set_fields": ["entries"]}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "configuring {collection}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The stale commits of every Sluice behind `target` so far; `None`
    /// for the direct contenders.
    async fn commits_stale(&self, target: &Target) -> ToolResult<Option<u64>> {
        let urls = target.sluice_urls();
        if urls.is_empty() {
            return Ok(None);
        }
        let mut total = 0;
        for url in urls {
            let stats: serde_json::Value = self
                .http
                .get(format!("{url}/v1/stats"))
                .send()
                .await?
                .json()
                .await?;
            total += stats["commits_stale"]
                .as_u64()
                .context("GET /v1/stats has no commits_stale")?;
        }
        Ok(Some(total))
    }

    async fn found(&self, collection: &str) -> ToolResult<Found> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS docs,
                    COALESCE(SUM(json_array_length(item->'entries')), 0)::BIGINT AS entries,
                    COALESCE(SUM(version), 0)::BIGINT AS versions
             FROM sluice_documents WHERE collection = $1",
        )
        .bind(collection)
        .fetch_one(&self.admin)
        .await?;
        Ok(Found {
            docs: sqlx::Row::try_get(&row, "docs")?,
            entries: sqlx::Row::try_get(&row, "entries")?,
            versions: sqlx::Row::try_get(&row, "versions")?,
        })
    }

    /// Every intent reported applied is in the database exactly once, and
    /// nothing else is: a lost or doubled update fails the benchmark.
    async fn check_accounting(
        &self,
        setting: Setting,
        subject: Subject,
        collection: &str,
        tally: &Tally,
        external_writes: u64,
    ) -> ToolResult<()> {
        let found = self.found(collection).await?;
        let applied = i64::try_from(tally.applied)?;
        let problem = match setting {
            Setting::Trace => accounting_problem("version increments", applied, found.versions),
            Setting::Writes(_) | Setting::Refusals => {
                accounting_problem("version increments", applied, found.versions - found.docs)
            }
            Setting::External => accounting_problem("list entries", applied, found.entries)
                .or_else(|| {
                    accounting_problem(
                        "version increments (with the external writer's)",
                        applied + i64::try_from(external_writes).unwrap_or(i64::MAX),
                        found.versions - found.docs,
                    )
                }),
            _ => accounting_problem("list entries", applied, found.entries).or_else(|| {
                accounting_problem("version increments", applied, found.versions - found.docs)
            }),
        };
        match problem {
            Some(problem) => bail!(
                "lost-update check failed for {} {} (collection {collection}): {problem}",
                setting_label(setting),
                subject_name(subject)
            ),
            None => Ok(()),
        }
    }
}

/// `None` when the database holds exactly what the clients were told.
pub fn accounting_problem(what: &str, reported: i64, found: i64) -> Option<String> {
    (reported != found).then(|| {
        format!(
            "clients were told {reported} intents were applied, the database holds {found} {what} ({})",
            if found < reported {
                "updates were lost"
            } else {
                "updates were applied that nobody was told about, or twice"
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_baseline_far_off_fails_the_run() {
        let goal = |measured: f64| report::Goal {
            goal: format!("R=1 ms, yardstick: {}", report::YARDSTICK_GOAL),
            measured,
            target: 0.85,
            met: measured >= 0.85,
        };
        let noisy = [goal(0.828)];
        assert!(weak_baseline(&noisy).is_none(), "noise failed the run");
        let far = [goal(0.9), goal(0.41)];
        assert_eq!(weak_baseline(&far).map(|g| g.measured), Some(0.41));
    }
}
