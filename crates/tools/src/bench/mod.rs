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

mod advanced;
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
mod runs;

pub use crate::trace::TraceLine;
pub use child::{Features, process_cpu_us};
pub use intent::Contender;
pub use plan::{ABLATION, Workload};
pub use report::{BenchReport, RunRecord};

use plan::{Job, Plan, Setting, Subject, schedule, setting_label, subject_name};

/// One run's figures, before the medians over repetitions.
pub type Sample = RunRecord;

use crate::clock::wall_ms;
use crate::generate::Zipf;
use crate::rng::SplitMix64;
use crate::tool::{Context, ToolResult, bail};
use child::SluiceChild;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
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

/// Starts the Sluice of `subject`, if it is one, behind a link of its own.
async fn start_sluice(
    subject: Subject,
    options: &BenchOptions,
    url: &str,
    linked_url: &reqwest::Url,
    relay: &link::Relay,
) -> ToolResult<Option<(SluiceChild, link::Link)>> {
    let features = match subject {
        Subject::Contender(Contender::Sluice) | Subject::OwnTier | Subject::Embedded => {
            Features::ALL
        }
        Subject::Contender(Contender::SluiceFifo) => Features::NONE,
        // Direct, or started elsewhere (the cluster's members).
        Subject::Contender(_) | Subject::Pgbench | Subject::Cluster => return Ok(None),
        Subject::Ablation(i) => ABLATION[i].1,
        Subject::Variant(_) => Features::ALL,
    };
    let env = match subject {
        Subject::Variant(i) => plan::VARIANTS[i].1,
        _ => &[],
    };
    let name = match subject {
        Subject::OwnTier => "sluice-own-tier".to_owned(),
        _ => subject_name(subject).replace(['+', ' '], ""),
    };
    let log = options.out.join(format!("sluice-{name}.log"));
    let store = match subject {
        Subject::OwnTier => Some(linked_url.as_str()),
        Subject::Embedded => None,
        _ => Some(url),
    };
    let child = SluiceChild::start_with(&options.exe, store, features, &log, &[], env).await?;
    let addr: std::net::SocketAddr = child
        .url
        .trim_start_matches("http://")
        .parse()
        .context("the Sluice child's address")?;
    let link = relay.link(addr)?;
    Ok(Some((child, link)))
}

/// The workloads asked for, or all of them; asked for by name, the cluster
/// workload says what it needs.
fn chosen_workloads(options: &BenchOptions) -> Vec<Workload> {
    if !options.workloads.is_empty() {
        return options.workloads.clone();
    }
    let mut all = Workload::ALL.to_vec();
    if options.redis.is_none() && redis::server_bin().is_none() {
        eprintln!(
            "sluice bench: no redis-server here and no --redis: the cluster workload is left out"
        );
        all.retain(|w| *w != Workload::Cluster);
    }
    all
}

pub async fn run(options: BenchOptions) -> ToolResult<BenchReport> {
    let bench_started = Instant::now();
    let plan = Plan::of(&options);
    let workloads = chosen_workloads(&options);
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
    let prefix = format!("b{}", wall_ms());
    let (cluster, cluster_links) = if jobs.iter().any(|j| j.subject == Subject::Cluster) {
        let (cluster, links) =
            cluster::Cluster::start_linked(&options, &url, &prefix, &relay).await?;
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
        children: BTreeMap::new(),
        relay,
        linked_direct,
        sluice_links: BTreeMap::new(),
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
    // Where the bench's time goes, run by run (setup and checks included).
    let mut timings = vec!["setting\tsubject\trtt_ms\tseconds".to_owned()];
    // A Sluice starts before its first run and stops after its last: each
    // holds PostgreSQL connections, and the other runs (pgbench's among
    // them) need them.
    let last_run: BTreeMap<Subject, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| (job.subject, i))
        .collect();
    for (i, job) in jobs.into_iter().enumerate() {
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
        // pgbench opens its clients' connections at once: the Sluice
        // processes' idle pools would take them (one per contender and
        // variant, up to 32 each); each starts again at its next run.
        if subject == Subject::Pgbench {
            bench.children.clear();
            bench.sluice_links.clear();
        }
        let job_started = Instant::now();
        if !bench.children.contains_key(&subject)
            && let Some((child, link)) =
                start_sluice(subject, &options, &url, &linked_url, &bench.relay).await?
        {
            bench.children.insert(subject, child);
            bench.sluice_links.insert(subject, link);
        }
        let sample = bench.run_one(job).await?;
        match (setting, subject) {
            (Setting::Capacity, _) => {
                bench.capacity.insert(rtt_key(rtt_ms), sample.goodput);
                capacity_samples.push(sample);
            }
            (_, Subject::Ablation(_)) => ablation_samples.push(sample),
            _ => samples.push(sample),
        }
        if last_run.get(&subject) == Some(&i) {
            bench.children.remove(&subject);
            bench.sluice_links.remove(&subject);
        }
        timings.push(format!(
            "{}\t{}\t{rtt_ms}\t{:.2}",
            setting_label(setting),
            subject_name(subject),
            job_started.elapsed().as_secs_f64()
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let auth_started = Instant::now();
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
    timings.push(format!(
        "auth\t-\t0\t{:.2}",
        auth_started.elapsed().as_secs_f64()
    ));
    drop(bench);
    drop(temp);
    let timings_file = options.out.join("timings.tsv");
    std::fs::write(&timings_file, timings.join("\n") + "\n")
        .with_context(|| format!("writing {}", timings_file.display()))?;

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
    report.wall_s = bench_started.elapsed().as_secs_f64();
    report.goals.extend(report.time_goal());
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
            at_most: false,
            met: measured >= 0.85,
        };
        let noisy = [goal(0.828)];
        assert!(weak_baseline(&noisy).is_none(), "noise failed the run");
        let far = [goal(0.9), goal(0.41)];
        assert_eq!(weak_baseline(&far).map(|g| g.measured), Some(0.41));
    }
}
