//! Wiring: backends from the configuration, the engine, the HTTP server.
//! Used by the binary and by the integration tests alike, so that the tests
//! run exactly what users run.

use crate::api;
use crate::auth::{AuthMode, Authenticator};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Backend, Config, ConfigError};
use crate::dispatch::Engine;
use crate::history::{MemoryHistory, PostgresHistory, SharedHistory, SqliteHistory};
use crate::resolve::Resolver;
use crate::store::{MemoryStore, PostgresStore, SharedStore, SqliteStore};
use crate::tls::{Reloading, TlsListener};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot open the history: {0}")]
    History(#[from] crate::history::HistoryError),
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

async fn ensure_parent(path: &std::path::Path) -> Result<(), StartError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| StartError::DataDir {
                path: parent.display().to_string(),
                source,
            })?;
    }
    Ok(())
}

pub async fn open_store(backend: &Backend) -> Result<SharedStore, StartError> {
    Ok(match backend {
        Backend::Memory => Arc::new(MemoryStore::new()),
        Backend::Sqlite(path) => {
            ensure_parent(path).await?;
            Arc::new(SqliteStore::open(path).await?)
        }
        Backend::Postgres(url) => Arc::new(PostgresStore::connect(url).await?),
    })
}

pub async fn open_history(backend: &Backend) -> Result<SharedHistory, StartError> {
    Ok(match backend {
        Backend::Memory => Arc::new(MemoryHistory::new()),
        Backend::Sqlite(path) => {
            ensure_parent(path).await?;
            Arc::new(SqliteHistory::open(path).await?)
        }
        Backend::Postgres(url) => Arc::new(PostgresHistory::connect(url).await?),
    })
}

/// A bound, running server.
pub struct Running {
    pub addr: SocketAddr,
    pub engine: Engine,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Validates the configuration, opens the backends, binds and starts serving
/// until `shutdown` completes; then drains the queue (up to the configured
/// deadline) while refusing new mutations.
/// What the server accepts connections from.
enum Listener {
    Plain(crate::connections::Bounded),
    Tls(TlsListener),
}

/// Binds the listen address, with its connection bounds and, when `certs`
/// are given, TLS.
async fn listen(
    config: &Config,
    certs: Option<Arc<Reloading>>,
) -> Result<(Listener, SocketAddr), StartError> {
    let failed = |source| StartError::Listen {
        addr: config.listen.clone(),
        source,
    };
    let listener = TcpListener::bind(&config.listen).await.map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    let limits = crate::connections::Limits {
        connections_max: crate::connections::within_descriptors(config.connections_max),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        request_read_timeout: Duration::from_millis(config.request_read_timeout_ms),
    };
    let bounded = crate::connections::Bounded::new(listener, limits);
    let listener = match certs {
        Some(certs) => {
            info!(%addr, "serving HTTPS (HTTP/2 and HTTP/1.1)");
            Listener::Tls(
                TlsListener::new(bounded, certs, limits.request_read_timeout)
                    .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?,
            )
        }
        None => Listener::Plain(bounded),
    };
    Ok((listener, addr))
}

pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    config.validate()?;
    let clock: SharedClock = SystemClock::shared();
    let (store_backend, history_backend) = (config.store_backend()?, config.history_backend()?);
    let store = match (&store_backend, &history_backend) {
        // One PostgreSQL database for both: the history is written in each
        // commit's own transaction.
        (Backend::Postgres(store_url), Backend::Postgres(history_url))
            if store_url == history_url =>
        {
            Arc::new(PostgresStore::connect_with_history(store_url).await?)
        }
        _ => open_store(&store_backend).await?,
    };
    let history = open_history(&history_backend).await?;
    let resolver = Resolver::new(clock.clone(), config.script_limits())
        .with_script_threads(config.script_threads())
        .with_webhook_policy(config.webhook_policy());
    let auth = Arc::new(
        match AuthMode::parse(&config.auth) {
            Some(AuthMode::Keys) => Authenticator::with_keys(store.clone(), clock.clone()),
            Some(AuthMode::Jwt) => Authenticator::with_jwt(config.jwt.clone(), clock.clone())
                .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?,
            _ => Authenticator::open(),
        }
        .with_limits(config.limits.clone())
        .with_exempt(&config.auth_exempt),
    );
    // Read before anything starts: a certificate that does not load is a
    // configuration error, said at once.
    let certs = config
        .tls_files()?
        .map(Reloading::open)
        .transpose()
        .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?;
    let cluster_store = store.clone();
    let engine = Engine::start(
        store,
        history,
        resolver,
        clock.clone(),
        config.engine_config(),
    )
    .await?;
    let (listener, addr) = listen(&config, certs).await?;
    if config.cluster.enabled() {
        join_cluster(&config, &engine, cluster_store, clock, addr).await?;
    }
    // Mutations answered 202 before the last stop are queued again (in
    // cluster mode: moved into their partitions' streams) before anything
    // new is accepted.
    engine.resume_accepted().await?;
    info!(%addr, store = %config.store, history = %config.history, "sluice is listening");
    if auth.mode() == AuthMode::None {
        tracing::warn!(
            %addr,
            "no authentication is configured: every client that reaches this address may read and write every document"
        );
    }
    let app = api::router_for(
        engine.clone(),
        api::guard::Origins::new(&config.cors_origins, config.body_bytes_in_flight_max),
        auth,
    );
    let drain_engine = engine.clone();
    let deadline = Duration::from_millis(config.shutdown_deadline_ms);
    let served = tokio::spawn(async move {
        let graceful = async move {
            shutdown.await;
            info!("shutting down: refusing new mutations, draining the queue");
            let left = drain_engine.shutdown(deadline).await;
            if left > 0 {
                tracing::warn!(left, "shutdown deadline passed with mutations still queued");
            }
            // The partitions go to the other members now, not a lease later.
            drain_engine.leave_cluster().await;
        };
        match listener {
            Listener::Tls(tls) => axum::serve(tls, app).with_graceful_shutdown(graceful).await,
            Listener::Plain(plain) => {
                axum::serve(plain, app)
                    .with_graceful_shutdown(graceful)
                    .await
            }
        }
    });
    Ok(Running {
        addr,
        engine,
        served,
    })
}

/// Joins the cluster `config.cluster` names: the partition count agreed in
/// the store, a member id of this incarnation, the first tick.
async fn join_cluster(
    config: &Config,
    engine: &Engine,
    store: SharedStore,
    clock: SharedClock,
    addr: SocketAddr,
) -> Result<(), StartError> {
    use crate::cluster::{Ownership, OwnershipConfig, RedisCoordinator, RedisRelay, RedisTarget};
    let cluster = &config.cluster;
    let recorded = store
        .secret("cluster_partitions", &|| cluster.partitions.to_string())
        .await?;
    if recorded != cluster.partitions.to_string() {
        return Err(StartError::Config(ConfigError::Invalid(format!(
            "this store's cluster splits documents into {recorded} partitions, and every process must agree: set cluster.partitions = {recorded} (it is {})",
            cluster.partitions
        ))));
    }
    let target = RedisTarget::parse(&cluster.redis)?;
    let coordinator = Arc::new(RedisCoordinator::connect(&target, &cluster.prefix).await?);
    let relay = Arc::new(RedisRelay::connect(&target, &cluster.prefix).await?);
    let address = if cluster.advertise.is_empty() {
        addr.to_string()
    } else {
        cluster.advertise.clone()
    };
    // A fresh id per start: a restarted process is a new member, so nothing
    // addressed to its former self reaches it.
    let mut nonce = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).map_err(|_| {
        StartError::Config(ConfigError::Invalid(
            "the system's random number generator failed".into(),
        ))
    })?;
    let member = format!("{address}-{:08x}", u32::from_le_bytes(nonce));
    let ownership = Arc::new(Ownership::new(
        coordinator,
        store,
        clock,
        member.clone(),
        address,
        OwnershipConfig {
            partitions: cluster.partitions,
            lease: Duration::from_millis(cluster.lease_ms),
        },
    ));
    engine
        .join_cluster(
            ownership.clone(),
            relay,
            Duration::from_secs(cluster.retrain_interval_s),
        )
        .await?;
    info!(member = %member, partitions = cluster.partitions, owned = ownership.owned().len(), "joined the cluster");
    Ok(())
}
