//! The `sluice` binary: parse flags, start logging, run the server.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_server::config::Config;
use std::io::Write;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: `perf` on `sluice bench` put malloc
/// and free at about a sixth of Sluice's CPU (JSON values and strings are
/// allocated and freed per mutation, across threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: a data proxy for versioned JSON documents. It queues mutations in
/// per-document lanes, writes them with a version compare-and-set, resolves
/// conflicts (reject, automerge, a JavaScript function or a webhook) and
/// records every conflict.
#[derive(Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API. With no flags: 127.0.0.1:7070, SQLite files under ./sluice-data.
    #[command(after_help = "Precedence: flags, then SLUICE_* environment variables \
(SLUICE_LISTEN, SLUICE_DATA_DIR, SLUICE_QUEUE__QUEUE_LEN_MAX, ...: the config file's keys, \
upper-cased, `__` between a section and its key), then the --config file, then defaults.")]
    Serve(ServeArgs),
    /// Send a mutation trace (JSON Lines, plain or gzipped) through the HTTP API
    /// and report conflicts, the predictor's quality, throughput and latency.
    Replay(ReplayArgs),
    /// Write a synthetic trace with known structure (Zipf-hot keys, offline
    /// clients, writers without a base, a daily rhythm) and its labels.
    Gen(GenArgs),
    /// Sluice against direct PostgreSQL writes (optimistic and locking), side
    /// by side in one run: BENCH.md, bench.json and SVG plots in --out.
    Bench(BenchArgs),
    /// Make, list and revoke API keys in the store's database (for
    /// `serve --auth keys`); works while servers run on the same store.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(clap::Subcommand)]
enum KeysCommand {
    /// Make a key; it is shown once, alone on the last line of the output
    Create {
        /// The client the key's holder is: its mutations are recorded as this client
        #[arg(long, value_name = "NAME")]
        client: String,
        /// admin (everything), writer (documents, its own answers and events) or reader (documents)
        #[arg(long, value_name = "ROLE", value_parser = ["admin", "writer", "reader"])]
        role: String,
        #[command(flatten)]
        at: StoreArgs,
    },
    /// Every key: id, client, role, when it was made and revoked
    List {
        #[command(flatten)]
        at: StoreArgs,
    },
    /// Revoke a key, named by its id or given whole; servers refuse it within a second
    Revoke {
        /// The key's id (as `list` shows it), or the key
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        at: StoreArgs,
    },
}

/// Which store the keys are in: the same flags as `serve`.
#[derive(clap::Args)]
struct StoreArgs {
    /// Directory of the embedded SQLite files [default: ./sluice-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Document store: sqlite, sqlite:PATH or a postgres:// URL [default: sqlite]
    #[arg(long, value_name = "BACKEND")]
    store: Option<String>,
    /// TOML configuration file, as given to serve
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// A PostgreSQL to run against (its tables are created as needed); without
    /// it a temporary server is started and removed
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// The Redis the cluster workload's processes share (redis://HOST:PORT,
    /// or Redis Cluster seed nodes); without it a temporary redis-server is
    /// started and removed
    #[arg(long, value_name = "URLS")]
    redis: Option<String>,
    /// Every workload and setting, only shorter (1.2 s runs, one repetition)
    #[arg(long)]
    quick: bool,
    /// hot, overload, external, trace, writes, yardstick, refusals, floor, auth or
    /// cluster; repeat for several [default: all]
    #[arg(long, value_name = "NAME")]
    workload: Vec<String>,
    /// Where bench.json, BENCH.md and the plots go
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    out: PathBuf,
    /// The trace of the trace workload
    #[arg(
        long,
        value_name = "FILE",
        default_value = "../shared/traces/rails.trace.jsonl.gz"
    )]
    trace: PathBuf,
    /// Round trips of the simulated network link between the clients and
    /// the service they talk to, in ms, comma-separated; every workload runs
    /// at each (0: loopback) [default: 0,1, and 5 for hot θ=0.99 in the full
    /// run]
    #[arg(long = "rtt-ms", value_name = "MS", value_delimiter = ',')]
    rtt_ms: Vec<f64>,
    /// Hide the progress bar
    #[arg(long)]
    quiet: bool,
    /// Length of each run in ms, overriding --quick's or the full run's
    #[arg(long, value_name = "MS", hide = true)]
    run_ms: Option<u64>,
    /// Repetitions of each run, overriding --quick's or the full run's
    #[arg(long, value_name = "N", hide = true)]
    repetitions: Option<usize>,
    /// Trace lines replayed, overriding --quick's or the full run's
    #[arg(long, value_name = "N", hide = true)]
    trace_lines: Option<usize>,
}

#[derive(clap::Args)]
struct GenArgs {
    /// The trace to write (gzipped when the name ends in .gz)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write {"id", "conflict"} labels here
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Send the writers without a base here instead of into the trace: writes
    /// that bypass Sluice, for a harness to apply to the store directly
    #[arg(long, value_name = "FILE")]
    bypass: Option<PathBuf>,
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    mutations: u64,
    /// Documents
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    keys: u64,
    #[arg(long, value_name = "N", default_value_t = 500)]
    clients: u64,
    /// Zipf exponent of document popularity (0 = uniform)
    #[arg(long, value_name = "THETA", default_value_t = 0.99)]
    zipf: f64,
    /// Share of clients that go offline and write from stale versions
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    offline_fraction: f64,
    /// Share of mutations sent without a base version
    #[arg(long, value_name = "F", default_value_t = 0.05)]
    unconditional_fraction: f64,
    /// Mean mutations per second at the daily peak (event time)
    #[arg(long, value_name = "R", default_value_t = 20.0)]
    peak_rate: f64,
    /// Mean think time of an online client between read and write
    #[arg(long, value_name = "MS", default_value_t = 2_000.0)]
    think_ms: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("pace").args(["speed", "max_speed"])))]
struct ReplayArgs {
    /// The trace to replay
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// A running Sluice to replay against, or several, comma-separated (each
    /// client's mutations go to one of them, by a hash of the client);
    /// without it, an embedded server is started on a temporary data
    /// directory (configured by --config and SLUICE_*)
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Configure every collection of the trace with this handler first
    /// (optimistic, automerge, or a handler's JSON)
    #[arg(long, value_name = "HANDLER")]
    handler: Option<String>,
    /// Keys in flight at once (each key's mutations stay in order)
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: usize,
    /// Pace by event time, X times faster than it happened
    #[arg(long, value_name = "X")]
    speed: Option<f64>,
    /// Send as fast as answers come (the default)
    #[arg(long)]
    max_speed: bool,
    /// Write one result line per mutation here, and the summary next to it as NAME.summary.json
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Compare every conflict flag with these {"id", "conflict"} lines
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Configuration of the embedded server (ignored with --url)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Hide the progress bar
    #[arg(long)]
    quiet: bool,
}

/// Flags override `SLUICE_*` environment variables, which override the config file.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address and port to listen on [default: 127.0.0.1:7070]
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Directory of the embedded SQLite files (store.db, history.db) [default: ./sluice-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file; every key is optional (see README)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Document store: sqlite, sqlite:PATH, memory, or a postgres:// URL [default: sqlite]
    #[arg(long, value_name = "BACKEND")]
    store: Option<String>,
    /// History database: sqlite, sqlite:PATH, memory, or a postgres:// URL [default: sqlite]
    #[arg(long, value_name = "BACKEND")]
    history: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// How clients authenticate: none, keys (made by `sluice keys create`) or jwt [default: none]
    #[arg(long, value_name = "MODE")]
    auth: Option<String>,
    /// Serve without authentication on an address other machines can reach
    #[arg(long)]
    insecure_no_auth: bool,
    /// Serve HTTPS with this certificate chain (PEM; re-read when it changes)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Join a cluster: redis://HOST:PORT of one Redis, or comma-separated
    /// Redis Cluster seed nodes (needs --store postgres://…)
    #[arg(long, value_name = "URLS")]
    redis: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let ran = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Replay(args) => replay(args),
        Command::Gen(args) => generate(args),
        Command::Bench(args) => bench(args),
        Command::Keys(command) => keys(command),
    };
    // An expected error is a sentence for a person, never a backtrace.
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut workloads = Vec::new();
    for name in &args.workload {
        let workload = sluice_tools::bench::Workload::parse(name).with_context(|| {
            format!(
                "unknown workload {name:?}: use hot, overload, external, trace, writes, yardstick, refusals, floor, auth or cluster"
            )
        })?;
        workloads.push(workload);
    }
    if args.run_ms == Some(0) || args.repetitions == Some(0) || args.trace_lines == Some(0) {
        anyhow::bail!("--run-ms, --repetitions and --trace-lines must be at least 1");
    }
    if let Some(bad) = args
        .rtt_ms
        .iter()
        .find(|r| !r.is_finite() || **r < 0.0 || **r > 1_000.0)
    {
        anyhow::bail!("--rtt-ms {bad}: a round trip is between 0 and 1000 ms");
    }
    init_logs_at("text", "warn");
    let options = sluice_tools::bench::BenchOptions {
        postgres: args.postgres,
        redis: args.redis,
        quick: args.quick,
        workloads,
        out: args.out.clone(),
        trace: args.trace,
        exe: std::env::current_exe().context("finding the sluice binary")?,
        progress: !args.quiet,
        run_ms: args.run_ms,
        repetitions: args.repetitions,
        trace_lines: args.trace_lines,
        rtts_ms: (!args.rtt_ms.is_empty()).then(|| args.rtt_ms.clone()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime
        .block_on(sluice_tools::bench::run(options))
        .map_err(tool_error)?;
    for goal in &report.goals {
        println!(
            "{:<4} {:<70} {}",
            if goal.met { "met" } else { "MISS" },
            goal.goal,
            goal.measured
        );
    }
    println!("results          {}", args.out.join("BENCH.md").display());
    Ok(())
}

fn keys(command: KeysCommand) -> anyhow::Result<()> {
    use sluice_server::auth::{Role, keys as api_keys};
    let at = match &command {
        KeysCommand::Create { at, .. }
        | KeysCommand::List { at }
        | KeysCommand::Revoke { at, .. } => at,
    };
    let mut config = Config::load(at.config.as_deref(), std::env::vars())?;
    if let Some(v) = &at.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = &at.store {
        config.store = v.clone();
    }
    let backend = config.store_backend()?;
    if backend == sluice_server::config::Backend::Memory {
        anyhow::bail!(
            "the memory store holds no keys: use sqlite or a postgres:// URL, as serve does"
        );
    }
    init_logs_at("text", "warn");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let store = sluice_server::server::open_store(&backend).await?;
        match command {
            KeysCommand::Create { client, role, .. } => {
                let role = Role::parse(&role).context("unknown role")?;
                let made = api_keys::generate(&client, role, now_ms).map_err(anyhow::Error::msg)?;
                store.put_key(&made.record).await?;
                println!(
                    "created key {} for client {client:?} with role {role}; it is shown once, on the next line",
                    made.record.id
                );
                println!("{}", made.key);
            }
            KeysCommand::List { .. } => {
                println!("{:<16}  {:<7}  {:<20}  {:<20}  CLIENT", "ID", "ROLE", "CREATED", "REVOKED");
                for key in store.keys().await? {
                    let revoked = key.revoked_ms.map(utc).unwrap_or_else(|| "-".into());
                    println!(
                        "{:<16}  {:<7}  {:<20}  {:<20}  {}",
                        key.id,
                        key.role,
                        utc(key.created_ms),
                        revoked,
                        key.client
                    );
                }
            }
            KeysCommand::Revoke { id, .. } => {
                let id = api_keys::id_of(&id).with_context(|| {
                    format!("{id:?} is neither a key id (16 hex digits) nor a key")
                })?;
                if !store.revoke_key(id, now_ms).await? {
                    anyhow::bail!("no key with id {id} that is not already revoked");
                }
                println!("revoked key {id}");
            }
        }
        Ok(())
    })
}

/// `ms` since the epoch as an ISO 8601 UTC time to the second.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.store {
        config.store = v;
    }
    if let Some(v) = args.history {
        config.history = v;
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    if let Some(v) = args.auth {
        config.auth = v;
    }
    config.insecure_no_auth |= args.insecure_no_auth;
    if let Some(v) = args.tls_cert {
        config.tls_cert = Some(v);
    }
    if let Some(v) = args.tls_key {
        config.tls_key = Some(v);
    }
    if let Some(v) = args.redis {
        config.cluster.redis = v;
    }
    config.validate()?;
    init_logs(&config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let running = sluice_server::server::start(config, shutdown_signal()).await?;
        running
            .served
            .await
            .context("server task")?
            .context("serving HTTP")?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    if let Some(speed) = args.speed
        && !(speed.is_finite() && speed > 0.0)
    {
        anyhow::bail!("--speed must be a positive number");
    }
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // An embedded server lives in a temporary data directory that goes with it.
        let mut embedded = None;
        let url = match &args.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
                init_logs_at(&config.log_format, "warn");
                let data_dir =
                    std::env::temp_dir().join(format!("sluice-replay-{}", std::process::id()));
                config.listen = "127.0.0.1:0".into();
                config.data_dir = data_dir.clone();
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let running = sluice_server::server::start(config, async move {
                    let _ = stopped.await;
                })
                .await?;
                let url = format!("http://{}", running.addr);
                embedded = Some((running, stop, data_dir));
                url
            }
        };
        let options = sluice_tools::replay::ReplayOptions {
            trace: args.trace,
            url,
            handler: args.handler,
            concurrency: args.concurrency,
            speed: args.speed,
            out: args.out.clone(),
            labels: args.labels,
            progress: !args.quiet,
        };
        let summary = sluice_tools::replay::replay(&options).await;
        let model = embedded
            .as_ref()
            .map(|(running, _, _)| running.engine.model_report());
        if let Some((running, stop, data_dir)) = embedded {
            let _ = stop.send(());
            let _ = running.served.await;
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        let summary = summary.map_err(tool_error)?;
        print!("{}", summary.render());
        if let Some(model) = &model {
            println!(
                "model            {} features, learned from {} conditional mutations",
                model.features, model.learned
            );
        }
        if let Some(out) = &args.out {
            let path = sluice_tools::replay::summary_path(out);
            std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("results          {} and {}", out.display(), path.display());
        }
        if summary.errors > 0 {
            anyhow::bail!("{} mutations failed", summary.errors);
        }
        Ok(())
    })
}

fn generate(args: GenArgs) -> anyhow::Result<()> {
    let options = sluice_tools::generate::GenOptions {
        mutations: args.mutations,
        keys: args.keys,
        clients: args.clients,
        zipf: args.zipf,
        offline_fraction: args.offline_fraction,
        unconditional_fraction: args.unconditional_fraction,
        peak_rate: args.peak_rate,
        think_ms: args.think_ms,
        seed: args.seed,
    };
    let mut trace = writer(&args.out)?;
    let mut labels = args.labels.as_deref().map(writer).transpose()?;
    let mut bypass = args.bypass.as_deref().map(writer).transpose()?;
    let stats = sluice_tools::generate::generate(
        &options,
        &mut trace,
        labels.as_mut().map(|w| w as &mut dyn Write),
        bypass.as_mut().map(|w| w as &mut dyn Write),
    )
    .map_err(tool_error)?;
    trace.flush()?;
    drop(trace);
    if let Some(mut labels) = labels {
        labels.flush()?;
    }
    if let Some(mut bypass) = bypass {
        bypass.flush()?;
    }
    println!(
        "{} mutations, {} conflicts ({:.2}%) written to {}{}",
        stats.mutations,
        stats.conflicts,
        100.0 * stats.conflicts as f64 / stats.mutations.max(1) as f64,
        args.out.display(),
        if stats.bypassed > 0 {
            format!(", {} bypassing writes beside it", stats.bypassed)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A buffered file writer, gzipped when the name ends in `.gz`.
fn writer(path: &std::path::Path) -> anyhow::Result<Box<dyn Write>> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let buffered = std::io::BufWriter::new(file);
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(flate2::write::GzEncoder::new(
            buffered,
            flate2::Compression::default(),
        )))
    } else {
        Ok(Box::new(buffered))
    }
}

fn init_logs(format: &str) {
    init_logs_at(format, "info");
}

fn init_logs_at(format: &str, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colours only for a terminal: in a file or a pipe they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format == "json" {
        // JSON escapes control characters itself.
        let _ = builder.json().with_writer(std::io::stderr).try_init();
    } else {
        let writer = move || sluice_server::telemetry::logs::Escaping::new(std::io::stderr(), ansi);
        let _ = builder.with_writer(writer).try_init();
    }
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A tool's error as the binary reports it.
fn tool_error(e: sluice_tools::tool::ToolError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn key_times_are_calendar_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_403_132_999), "2026-12-04T16:52:12Z");
        assert_eq!(utc(-1_000), "1969-12-31T23:59:59Z");
    }
}
