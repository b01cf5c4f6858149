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

mod child;
mod intent;
pub mod link;
mod load;
pub mod postgres;
mod report;

pub use child::{Features, process_cpu_us};
pub use intent::{Contender, TraceLine};
pub use report::{BenchReport, RunRecord};

/// One run's figures, before the medians over repetitions.
pub type Sample = RunRecord;

use crate::clock::wall_ms;
use crate::generate::Zipf;
use crate::replay::percentile;
use crate::rng::SplitMix64;
use crate::tool::{Context, ToolResult, bail};
use child::SluiceChild;
use indicatif::{ProgressBar, ProgressStyle};
use intent::Target;
use load::{
    Tally, closed_loop, external_writer, one_row_commits, open_loop, sluice_writes, trace_run,
};
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
/// Connections of the direct contenders' pool, and of Sluice's own store
/// pool (`store::postgres`): the same for everyone.
pub const POOL_SIZE: u32 = 16;
pub const THINK: Duration = Duration::from_millis(2);
/// An intent answered later than this counts as a time-out: the user gave up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
pub const THETAS: [f64; 5] = [0.0, 0.6, 0.9, 0.99, 1.2];
pub const LOADS: [f64; 3] = [0.5, 1.0, 2.0];
/// A closed-loop client told 429 pauses this long before its next intent,
/// as a client honouring `Retry-After` would (the header has whole seconds;
/// clients that want their work done sooner come back sooner).
const REFUSED_PAUSE: Duration = Duration::from_millis(100);
/// Open-loop intents outstanding at once; an arrival beyond it is a client
/// that gave up at once (a time-out).
const OUTSTANDING_MAX: usize = 4_096;
/// Writes per second of the `external` workload's writer that bypasses Sluice.
const EXTERNAL_RATE: f64 = 200.0;
/// Clients of the group-commit comparison: pgbench-style one-row commits.
const COMMIT_CLIENTS: usize = 32;
/// Mutations per `POST /v1/mutations:batch` in the group-commit comparison,
/// and clients sending them: 400 mutations in flight, about what the
/// admission bound lets in at this machine's rate.
const COMMIT_BATCH: usize = 100;
const BATCH_CLIENTS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    Hot,
    Overload,
    External,
    Trace,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Hot,
        Workload::Overload,
        Workload::External,
        Workload::Trace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Hot => "hot",
            Workload::Overload => "overload",
            Workload::External => "external",
            Workload::Trace => "trace",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }
}

pub struct BenchOptions {
    /// A PostgreSQL to use; a temporary one is started without it.
    pub postgres: Option<String>,
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
}

/// How long and how often.
#[derive(Clone, Copy, Debug)]
struct Plan {
    run: Duration,
    repetitions: usize,
    trace_lines: usize,
}

impl Plan {
    fn of(options: &BenchOptions) -> Plan {
        let mut plan = if options.quick {
            Plan {
                run: Duration::from_millis(1_500),
                repetitions: 1,
                trace_lines: 8_000,
            }
        } else {
            Plan {
                run: Duration::from_secs(4),
                repetitions: 3,
                trace_lines: 25_000,
            }
        };
        if let Some(ms) = options.run_ms {
            plan.run = Duration::from_millis(ms);
        }
        if let Some(n) = options.repetitions {
            plan.repetitions = n;
        }
        if let Some(n) = options.trace_lines {
            plan.trace_lines = n;
        }
        plan
    }
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Setting {
    Hot(f64),
    /// Sluice's capacity on uniform keys: the overload runs' reference.
    Capacity,
    Overload(f64),
    External,
    Trace,
    /// pgbench-style: one-row updates, each its own transaction.
    OneRowCommits,
    /// Unconditional uniform-key writes through Sluice, one per request or
    /// `COMMIT_BATCH` per request.
    SluiceWrites {
        batched: bool,
    },
}

/// Who a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Contender(Contender),
    /// A Sluice with only some features on (`ABLATION[i]`).
    Ablation(usize),
}

/// The features turned on one at a time, from the plain queue to everything.
pub const ABLATION: [(&str, Features); 5] = [
    ("fifo", Features::NONE),
    (
        "+prediction",
        Features {
            prediction: true,
            ..Features::NONE
        },
    ),
    (
        "+priority",
        Features {
            prediction: true,
            priority: true,
            ..Features::NONE
        },
    ),
    (
        "+coalescing",
        Features {
            prediction: true,
            priority: true,
            coalescing: true,
            group_commit: false,
        },
    ),
    ("+group commit", Features::ALL),
];

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
    trace: Arc<Vec<TraceLine>>,
    /// Collections are named `{prefix}-{n}`: unique across invocations on one
    /// database, so nothing of an earlier run is in the way.
    prefix: String,
    runs: usize,
    capacity: Option<f64>,
    seed: u64,
}

pub async fn run(options: BenchOptions) -> ToolResult<BenchReport> {
    let plan = Plan::of(&options);
    let workloads = if options.workloads.is_empty() {
        Workload::ALL.to_vec()
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

    let jobs = schedule(&workloads, plan);
    let mut children = BTreeMap::new();
    let mut subjects: Vec<Subject> = jobs.iter().map(|(_, s)| *s).collect();
    subjects.sort();
    subjects.dedup();
    for subject in subjects {
        let features = match subject {
            Subject::Contender(Contender::Sluice) => Features::ALL,
            Subject::Contender(Contender::SluiceFifo) => Features::NONE,
            Subject::Contender(_) => continue,
            Subject::Ablation(i) => ABLATION[i].1,
        };
        let log = options.out.join(format!(
            "sluice-{}.log",
            subject_name(subject).replace(['+', ' '], "")
        ));
        let child = SluiceChild::start(&options.exe, &url, features, &log).await?;
        children.insert(subject, child);
    }
    let mut bench = Bench {
        plan,
        admin,
        direct,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(2 * CLIENTS)
            .build()?,
        children,
        trace: Arc::new(trace),
        prefix: format!("b{}", wall_ms()),
        runs: 0,
        capacity: None,
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
    let mut commit_samples = Vec::new();
    let mut ablation_samples = Vec::new();
    for (setting, subject) in jobs {
        bar.set_message(format!(
            "{} {}",
            setting_label(setting),
            subject_name(subject)
        ));
        let sample = bench.run_one(setting, subject).await?;
        match (setting, subject) {
            (Setting::Capacity, _) => {
                bench.capacity = Some(sample.goodput);
                capacity_samples.push(sample);
            }
            (Setting::OneRowCommits | Setting::SluiceWrites { .. }, _) => {
                commit_samples.push(sample)
            }
            (_, Subject::Ablation(_)) => ablation_samples.push(sample),
            _ => samples.push(sample),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    drop(bench);
    drop(temp);

    let machine =
        report::Machine::here(postgres_version, options.quick, plan.run, plan.repetitions);
    let report = BenchReport::new(
        machine,
        &samples,
        &capacity_samples,
        &commit_samples,
        &ablation_samples,
    );
    report.write(&options.out)?;
    Ok(report)
}

/// Reads one line of a trace as the `trace` workload does.
pub fn parse_trace_line(text: &str) -> Result<(), String> {
    TraceLine::parse(text).map(|_| ())
}

fn load_trace(path: &std::path::Path, lines: usize) -> ToolResult<Vec<TraceLine>> {
    let reader = crate::replay::open_trace(path).with_context(|| {
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

/// Every run in order: per repetition, per setting, the contenders in an
/// order that rotates, so no contender always runs first or last.
fn schedule(workloads: &[Workload], plan: Plan) -> Vec<(Setting, Subject)> {
    let contenders: Vec<Subject> = Contender::ALL.into_iter().map(Subject::Contender).collect();
    let mut settings = Vec::new();
    for workload in workloads {
        match workload {
            Workload::Hot => settings.extend(THETAS.iter().map(|t| Setting::Hot(*t))),
            Workload::Overload => {
                settings.push(Setting::Capacity);
                settings.extend(LOADS.iter().map(|l| Setting::Overload(*l)));
            }
            Workload::External => settings.push(Setting::External),
            Workload::Trace => settings.push(Setting::Trace),
        }
    }
    if workloads.contains(&Workload::Overload) {
        settings.push(Setting::OneRowCommits);
        settings.push(Setting::SluiceWrites { batched: false });
        settings.push(Setting::SluiceWrites { batched: true });
    }
    let mut jobs = Vec::new();
    let mut turn = 0;
    for repetition in 0..plan.repetitions {
        for setting in &settings {
            let subjects: Vec<Subject> = match setting {
                Setting::Capacity => {
                    if repetition > 0 {
                        continue;
                    }
                    vec![Subject::Contender(Contender::Sluice)]
                }
                Setting::OneRowCommits => vec![Subject::Contender(Contender::DirectOcc)],
                Setting::SluiceWrites { .. } => vec![Subject::Contender(Contender::Sluice)],
                _ => contenders.clone(),
            };
            let n = subjects.len();
            for i in 0..n {
                jobs.push((*setting, subjects[(i + turn) % n]));
            }
            turn += 1;
            // The features one at a time, beside the contenders at θ = 0.99;
            // the two ends are `sluice-fifo` and `sluice` themselves.
            if *setting == Setting::Hot(0.99) {
                for i in 1..ABLATION.len() - 1 {
                    jobs.push((*setting, Subject::Ablation(i)));
                }
            }
        }
    }
    jobs
}

fn subject_name(subject: Subject) -> String {
    match subject {
        Subject::Contender(c) => c.name().to_owned(),
        Subject::Ablation(i) => format!("sluice-{}", ABLATION[i].0.trim_start_matches('+')),
    }
}

fn setting_label(setting: Setting) -> String {
    match setting {
        Setting::Hot(t) => format!("hot θ={t}"),
        Setting::Capacity => "capacity".into(),
        Setting::Overload(l) => format!("overload {l}×"),
        Setting::External => "external".into(),
        Setting::Trace => "trace".into(),
        Setting::OneRowCommits => "one-row commits".into(),
        Setting::SluiceWrites { batched: false } => "sluice writes".into(),
        Setting::SluiceWrites { batched: true } => "sluice batched writes".into(),
    }
}

impl Bench {
    fn target(&self, subject: Subject) -> ToolResult<Target> {
        Ok(match subject {
            Subject::Contender(Contender::DirectOcc) => Target::Direct {
                pool: self.direct.clone(),
                lock: false,
            },
            Subject::Contender(Contender::DirectLock) => Target::Direct {
                pool: self.direct.clone(),
                lock: true,
            },
            other => Target::Sluice {
                http: self.http.clone(),
                url: self
                    .children
                    .get(&other)
                    .context("no Sluice was started for this contender")?
                    .url
                    .clone(),
            },
        })
    }

    async fn run_one(&mut self, setting: Setting, subject: Subject) -> ToolResult<Sample> {
        self.runs += 1;
        self.seed = self.seed.wrapping_add(0x9e37_79b9);
        let collection: Arc<str> = format!("{}-{}", self.prefix, self.runs).into();
        let target = self.target(subject)?;
        let documents = !matches!(setting, Setting::Trace);
        if documents {
            self.load_documents(&collection).await?;
        }
        if let Target::Sluice { url, .. } = &target {
            self.configure(url, &collection).await?;
        }
        let child = self.children.get(&subject);
        let cpu_before = child.and_then(SluiceChild::cpu_us);
        let stale_before = match &target {
            Target::Sluice { url, .. } => Some(self.commits_stale(url).await?),
            Target::Direct { .. } => None,
        };
        let run = self.plan.run;
        let started = Instant::now();
        let mut external_writes = 0;
        let tally = match setting {
            Setting::Hot(theta) => {
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
                let capacity = self
                    .capacity
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
            Setting::Trace => trace_run(target.clone(), &collection, self.trace.clone()).await,
            Setting::OneRowCommits => {
                one_row_commits(self.direct.clone(), &collection, run, self.seed).await
            }
            Setting::SluiceWrites { batched } => {
                sluice_writes(target.clone(), &collection, run, batched, self.seed).await
            }
        };
        let elapsed = started.elapsed().max(Duration::from_millis(1));
        let cpu_after = child.and_then(SluiceChild::cpu_us);
        if let Some(e) = &tally.first_error {
            bail!(
                "{} {}: {} intents failed; the first: {e}",
                setting_label(setting),
                subject_name(subject),
                tally.errors
            );
        }
        let wasted = match (&target, stale_before) {
            (Target::Sluice { url, .. }, Some(before)) => self.commits_stale(url).await? - before,
            _ => tally.wasted,
        };
        self.check_accounting(setting, subject, &collection, &tally, external_writes)
            .await?;
        let mut latencies: Vec<f64> = tally
            .latencies_us
            .iter()
            .map(|us| *us as f64 / 1000.0)
            .collect();
        latencies.sort_by(f64::total_cmp);
        let cpu_us_per_mutation = match (cpu_before, cpu_after) {
            (Some(before), Some(after)) if tally.mutations > 0 => {
                Some((after - before) as f64 / tally.mutations as f64)
            }
            _ => None,
        };
        let (workload, theta, load) = match setting {
            Setting::Hot(t) => ("hot", Some(t), None),
            Setting::Capacity => ("overload", None, None),
            Setting::Overload(l) => ("overload", None, Some(l)),
            Setting::External => ("external", Some(0.99), None),
            Setting::Trace => ("trace", None, None),
            Setting::OneRowCommits | Setting::SluiceWrites { .. } => ("commit", None, None),
        };
        let contender = match setting {
            Setting::OneRowCommits => format!("direct one-row commits ({COMMIT_CLIENTS} clients)"),
            Setting::SluiceWrites { batched: false } => "sluice, one mutation per request".into(),
            Setting::SluiceWrites { batched: true } => {
                format!(
                    "sluice, {BATCH_CLIENTS} clients sending {COMMIT_BATCH} mutations per batch request"
                )
            }
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
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
            p999_ms: percentile(&latencies, 0.999),
            timeouts: tally.timeouts,
            rejected_429: tally.rejected_429,
            cpu_us_per_mutation,
            quantiles_ms: (0..=100)
                .map(|i| percentile(&latencies, f64::from(i) / 100.0))
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

    async fn commits_stale(&self, url: &str) -> ToolResult<u64> {
        let stats: serde_json::Value = self
            .http
            .get(format!("{url}/v1/stats"))
            .send()
            .await?
            .json()
            .await?;
        stats["commits_stale"]
            .as_u64()
            .context("GET /v1/stats has no commits_stale")
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
            Setting::OneRowCommits | Setting::SluiceWrites { .. } => {
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
