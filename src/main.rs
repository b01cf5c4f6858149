//! The `sluice` binary: parse flags, start logging, run the server.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::config::Config;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
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
    config.validate()?;
    init_logs(&config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let running = sluice::server::start(config, shutdown_signal()).await?;
        running
            .served
            .await
            .context("server task")?
            .context("serving HTTP")?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn init_logs(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
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
