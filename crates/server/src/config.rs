//! Configuration: one serde tree with `deny_unknown_fields`, read from an
//! optional TOML file, overridden by `SLUICE_*` environment variables, then by
//! command-line flags, and validated without side effects before anything
//! starts.
//!
//! Environment names map onto the tree with `__` between levels:
//! `SLUICE_LISTEN=…` sets `listen`, `SLUICE_QUEUE__QUEUE_LEN_MAX=…` sets
//! `queue.queue_len_max`. `SLUICE_TEST_*` and `SLUICE_SIM_*` (the
//! simulation's seeds) are left to the test suite.

mod cluster;
mod explain;
mod leases;
mod locking;
mod staging;

pub use cluster::{
    CLUSTER_LEASE_MS_DEFAULT, CLUSTER_PARTITIONS_DEFAULT, CLUSTER_RETRAIN_INTERVAL_S_DEFAULT,
    ClusterConfig,
};
use explain::{Source, env_value, explain, set_path};
pub use leases::LeaseSettings;
pub use locking::LockingSettings;
pub use staging::StagingSettings;

use crate::auth::AuthMode;
use crate::auth::jwt::JwtConfig;
use crate::auth::limits::LimitsConfig;
use crate::dispatch::{
    COMMIT_BATCH_MAX_DEFAULT, DECIDE_TIMEOUT_MS_DEFAULT, DOCUMENT_BYTES_MAX_DEFAULT,
    DOCUMENT_CACHE_MB_DEFAULT, EngineConfig, IDEMPOTENCY_RETENTION_HOURS_DEFAULT,
    LANES_IN_FLIGHT_MAX_DEFAULT, LATENCY_TARGET_MS_DEFAULT, PRIORITY_BOOST_MS_DEFAULT,
    QUARANTINE_LEN_MAX_DEFAULT, QUEUE_WAIT_MAX_MS_DEFAULT,
};
use crate::predict::PredictorConfig;
use crate::queue::QueueLimits;
use crate::resolve::{Handler, ScriptLimits, WebhookPolicy};
use crate::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Loopback only: a proxy that accepts writes should not face a network
/// until someone decides it should.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7070";
pub const DATA_DIR_DEFAULT: &str = "./sluice-data";
/// Queued mutations across all lanes: about 10 MB of typical documents.
pub const QUEUE_LEN_MAX_DEFAULT: usize = 10_000;
/// Queued mutations for one document: a hot key cannot take the whole queue.
pub const LANE_LEN_MAX_DEFAULT: usize = 1_000;
/// Mutations of one lane folded into one read-merge-write.
pub const BATCH_LEN_MAX_DEFAULT: usize = 256;
/// How long SIGTERM waits for queued mutations to drain.
pub const SHUTDOWN_DEADLINE_MS_DEFAULT: u64 = 30_000;
/// Connections at once: well under the usual 1,024 file descriptors a
/// process may open, with room for the store's and the history's.
pub const CONNECTIONS_MAX_DEFAULT: usize = 768;
/// Idle connections live this long: over the 30 s a request may wait for
/// its decision.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Time to send a request (its headers and a 1 MiB body at 100 KB/s).
pub const REQUEST_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
const ENV_PREFIX: &str = "SLUICE_";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address and port the HTTP API listens on.
    pub listen: String,
    /// Where the embedded SQLite files live.
    pub data_dir: PathBuf,
    /// `sqlite` (the file `store.db` in the data directory), `sqlite:PATH`,
    /// `memory` (nothing persists), or a `postgres://` URL.
    pub store: String,
    /// Same choices as `store`; the SQLite default is `history.db`.
    pub history: String,
    /// The handler of collections that were never configured.
    pub default_handler: Handler,
    /// `text` or `json`.
    pub log_format: String,
    pub queue: QueueConfig,
    pub script: ScriptConfig,
    pub predictor: PredictorConfig,
    /// How long replies are kept for idempotent resends.
    pub idempotency_retention_hours: u64,
    /// How long SIGTERM waits for queued mutations before exiting.
    pub shutdown_deadline_ms: u64,
    /// The largest document, in encoded JSON bytes: a mutation whose result
    /// would be larger is refused (413 `document_too_large`), or rejected
    /// when a conflict handler produced it.
    pub document_bytes_max: usize,
    /// Addresses or ranges webhooks may call although they are loopback,
    /// link-local, private or unspecified (`["127.0.0.1", "10.0.0.0/8"]`).
    pub webhook_allow: Vec<String>,
    /// Web origins besides Sluice's own that may send requests that change
    /// something (`["https://app.example.com"]`); none by default, so a page
    /// elsewhere can neither write nor configure.
    pub cors_origins: Vec<String>,
    /// Bytes of request bodies read, parsed and decided at once; a request
    /// that finds no room within 2 s gets 503 `bodies_in_flight_full`.
    pub body_bytes_in_flight_max: usize,
    /// Connections open at once; past it a new one is closed at once.
    pub connections_max: usize,
    /// A connection with no traffic either way this long is closed (an idle
    /// keep-alive, a stream whose client stopped reading). Above
    /// `queue.decide_timeout_ms`, so a request waiting for its decision is
    /// never cut.
    pub idle_timeout_ms: u64,
    /// A request must have arrived this long after its first byte.
    pub request_read_timeout_ms: u64,
    /// How clients authenticate: `none`, `keys` (API keys made by
    /// `sluice keys create`) or `jwt` (bearer tokens, as `jwt` says).
    pub auth: String,
    /// Serve with `auth = "none"` on an address other machines can reach;
    /// without it such a server refuses to start.
    pub insecure_no_auth: bool,
    /// What is served without a credential when authentication is on,
    /// besides `/healthz`, `/openapi.json` and the dashboard's page:
    /// `"metrics"` (`/metrics`, for a scraper that sends no bearer) and
    /// `"dashboard"` (its snapshot and feed).
    pub auth_exempt: Vec<String>,
    /// Serve HTTPS with this certificate chain (PEM), re-read when it
    /// changes; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// How JWT bearer tokens are checked, with `auth = "jwt"`.
    pub jwt: JwtConfig,
    /// Each authenticated client's request rate and mutations in flight,
    /// per role.
    pub limits: LimitsConfig,
    /// Cluster mode: several processes on one PostgreSQL store, coordinated
    /// through Redis.
    pub cluster: ClusterConfig,
    /// Pre-emptive locking: lanes likely to conflict read, decide and
    /// commit their document under a lock in the store (PostgreSQL).
    pub locking: LockingSettings,
    /// Read-time forecasts and write leases (`GET
    /// /v1/documents/{c}/{k}?intent=write`).
    pub leases: LeaseSettings,
    /// Shadow writes' staging area.
    pub staging: StagingSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub queue_len_max: usize,
    pub lane_len_max: usize,
    pub batch_len_max: usize,
    pub lanes_in_flight_max: usize,
    pub commit_batch_max: usize,
    pub decide_timeout_ms: u64,
    /// How many milliseconds of waiting a conflict probability of 1 is worth
    /// in the order lanes are dispatched.
    pub priority_boost_ms: u64,
    /// The store latency the adaptive concurrency limit aims under.
    pub latency_target_ms: f64,
    /// The door refuses requests over its adaptive limit (429) and lowers
    /// the limit while mutations wait longer than this in the queue on
    /// average; 0 turns the door off.
    pub queue_wait_max_ms: u64,
    /// Documents as Sluice last committed them, kept so the next lane of a
    /// document starts without a store read (its commit still checks the
    /// version); 0 turns the cache off. Counted by an estimate of the parsed
    /// documents' memory.
    pub document_cache_mb: usize,
    /// Mutations whose handler failed kept for an operator at most
    /// (collections with `on_handler_failure: quarantine`).
    pub quarantine_len_max: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptConfig {
    pub time_ms_max: u64,
    pub memory_bytes_max: usize,
    /// Threads that run scripts, at a lower priority than the engine's; 0:
    /// half the cores, at least one. A conflict that needs a script while
    /// all are busy waits in its own lane.
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: LISTEN_DEFAULT.into(),
            data_dir: DATA_DIR_DEFAULT.into(),
            store: "sqlite".into(),
            history: "sqlite".into(),
            default_handler: Handler::Optimistic,
            log_format: "text".into(),
            queue: QueueConfig::default(),
            script: ScriptConfig::default(),
            predictor: PredictorConfig::default(),
            idempotency_retention_hours: IDEMPOTENCY_RETENTION_HOURS_DEFAULT,
            shutdown_deadline_ms: SHUTDOWN_DEADLINE_MS_DEFAULT,
            document_bytes_max: DOCUMENT_BYTES_MAX_DEFAULT,
            webhook_allow: Vec::new(),
            cors_origins: Vec::new(),
            body_bytes_in_flight_max: crate::api::guard::BODY_BYTES_IN_FLIGHT_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            request_read_timeout_ms: REQUEST_READ_TIMEOUT_MS_DEFAULT,
            auth: "none".into(),
            insecure_no_auth: false,
            auth_exempt: Vec::new(),
            tls_cert: None,
            tls_key: None,
            jwt: JwtConfig::default(),
            limits: LimitsConfig::default(),
            cluster: ClusterConfig::default(),
            locking: LockingSettings::default(),
            leases: LeaseSettings::default(),
            staging: StagingSettings::default(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            queue_len_max: QUEUE_LEN_MAX_DEFAULT,
            lane_len_max: LANE_LEN_MAX_DEFAULT,
            batch_len_max: BATCH_LEN_MAX_DEFAULT,
            lanes_in_flight_max: LANES_IN_FLIGHT_MAX_DEFAULT,
            commit_batch_max: COMMIT_BATCH_MAX_DEFAULT,
            decide_timeout_ms: DECIDE_TIMEOUT_MS_DEFAULT,
            priority_boost_ms: PRIORITY_BOOST_MS_DEFAULT,
            latency_target_ms: LATENCY_TARGET_MS_DEFAULT,
            queue_wait_max_ms: QUEUE_WAIT_MAX_MS_DEFAULT,
            document_cache_mb: DOCUMENT_CACHE_MB_DEFAULT,
            quarantine_len_max: QUARANTINE_LEN_MAX_DEFAULT,
        }
    }
}

impl Default for ScriptConfig {
    fn default() -> Self {
        let limits = ScriptLimits::default();
        ScriptConfig {
            time_ms_max: limits.time_ms_max,
            memory_bytes_max: limits.memory_bytes_max,
            threads: 0,
        }
    }
}

/// What `auth_exempt` may list.
pub const AUTH_EXEMPTABLE: [&str; 2] = ["metrics", "dashboard"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not a `source`: the message says it once, and a chain printer would
    // say it again.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where a backend lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite(PathBuf),
    Postgres(String),
}

impl Config {
    /// File, then environment (`vars`, usually `std::env::vars()`), then validation.
    pub fn load(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                        path: path.into(),
                        error,
                    })?,
                )
            }
            None => None,
        };
        let mut table = match (&text, file) {
            (Some(text), Some(path)) => {
                text.parse::<toml::Table>().map_err(|e| ConfigError::Toml {
                    path: path.into(),
                    message: e.to_string(),
                })?
            }
            _ => toml::Table::new(),
        };
        // Which setting each environment variable set, to name it in errors.
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest.starts_with("TEST_") || rest.starts_with("SIM_") || rest.is_empty() {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            set_path(&mut table, &path, env_value(&value))
                .map_err(|e| ConfigError::Invalid(format!("{name} (from the environment): {e}")))?;
            from_env.push((path.join("."), name));
        }
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| {
                let path = e.path().to_string();
                let message = e.into_inner().message().to_owned();
                let source = Source {
                    file: file.zip(text.as_deref()),
                    from_env: &from_env,
                };
                ConfigError::Invalid(explain(&path, &message, &source))
            },
        )
    }

    /// Who may call, and from where: the `auth` settings and the listen
    /// address they must suit.
    fn validate_auth(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let Some(mode) = AuthMode::parse(&self.auth) else {
            return invalid(format!(
                "auth must be \"none\", \"keys\" or \"jwt\", got {:?}",
                self.auth
            ));
        };
        if mode == AuthMode::Keys && self.store_backend()? == Backend::Memory {
            return invalid(
                "auth \"keys\" needs a store that `sluice keys create` can reach (sqlite or postgres); the memory store holds no keys".into(),
            );
        }
        if mode == AuthMode::Jwt {
            self.jwt.validate().map_err(ConfigError::Invalid)?;
        }
        if mode == AuthMode::None && !listen.ip().is_loopback() && !self.insecure_no_auth {
            return invalid(format!(
                "listen {} can be reached from other machines, and no authentication is configured: anyone reaching it could read and write every document. Listen on a loopback address (127.0.0.1), or pass --insecure-no-auth (insecure_no_auth = true) to serve openly anyway",
                self.listen
            ));
        }
        if let Some(bad) = self
            .auth_exempt
            .iter()
            .find(|e| !AUTH_EXEMPTABLE.contains(&e.as_str()))
        {
            return invalid(format!(
                "auth_exempt lists {bad:?}: only \"metrics\" and \"dashboard\" may be served without a credential"
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let Ok(listen) = self.listen.parse::<SocketAddr>() else {
            return invalid(format!(
                "listen must be ADDRESS:PORT, got {:?}",
                self.listen
            ));
        };
        self.validate_auth(listen)?;
        self.tls_files()?;
        self.store_backend()?;
        self.history_backend()?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return invalid(format!(
                "log_format must be \"text\" or \"json\", got {:?}",
                self.log_format
            ));
        }
        let q = &self.queue;
        for (name, value) in [
            ("queue.queue_len_max", q.queue_len_max),
            ("queue.lane_len_max", q.lane_len_max),
            ("queue.batch_len_max", q.batch_len_max),
            ("queue.lanes_in_flight_max", q.lanes_in_flight_max),
            ("queue.commit_batch_max", q.commit_batch_max),
            ("script.memory_bytes_max", self.script.memory_bytes_max),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        if self.script.time_ms_max == 0 || self.script.time_ms_max > 60_000 {
            return invalid("script.time_ms_max must be from 1 to 60000".into());
        }
        if self.script.threads > 256 {
            return invalid("script.threads must be at most 256 (0: half the cores)".into());
        }
        if self.script.memory_bytes_max < 1024 * 1024 {
            return invalid("script.memory_bytes_max must be at least 1048576 (1 MiB)".into());
        }
        if let Err(e) = WebhookPolicy::new(&self.webhook_allow) {
            return invalid(e);
        }
        if self.connections_max == 0 || self.request_read_timeout_ms == 0 {
            return invalid(
                "connections_max and request_read_timeout_ms must be at least 1".into(),
            );
        }
        if self.idle_timeout_ms <= q.decide_timeout_ms {
            return invalid(format!(
                "idle_timeout_ms ({}) must be longer than queue.decide_timeout_ms ({}), or waiting requests would be cut",
                self.idle_timeout_ms, q.decide_timeout_ms
            ));
        }
        if self.body_bytes_in_flight_max < 1 << 20 {
            return invalid("body_bytes_in_flight_max must be at least 1048576 (one body)".into());
        }
        if self.document_bytes_max < 1024 || self.document_bytes_max > 64 << 20 {
            return invalid("document_bytes_max must be from 1024 to 67108864 (64 MiB)".into());
        }
        if q.quarantine_len_max > 1_000_000 {
            return invalid("queue.quarantine_len_max must be at most 1000000".into());
        }
        if !(q.latency_target_ms > 0.0 && q.latency_target_ms.is_finite()) {
            return invalid("queue.latency_target_ms must be a positive number".into());
        }
        if q.decide_timeout_ms == 0 {
            return invalid("queue.decide_timeout_ms must be at least 1".into());
        }
        if self.idempotency_retention_hours < 24 {
            return invalid(
                "idempotency_retention_hours must be at least 24: resends are promised a day"
                    .into(),
            );
        }
        if let Handler::Script { .. } | Handler::Webhook { .. } = self.default_handler {
            return invalid("default_handler must be \"optimistic\" or \"automerge\"".into());
        }
        self.predictor.validate().map_err(ConfigError::Invalid)?;
        self.locking
            .validate("locking")
            .map_err(ConfigError::Invalid)?;
        self.leases.validate().map_err(ConfigError::Invalid)?;
        self.staging.validate().map_err(ConfigError::Invalid)?;
        self.cluster
            .validate(&self.store_backend()?)
            .map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The certificate and key to serve HTTPS with, if configured: both or
    /// neither.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (Some(_), None) => Err(ConfigError::Invalid(
                "tls_cert needs tls_key (--tls-key), its private key".into(),
            )),
            (None, Some(_)) => Err(ConfigError::Invalid(
                "tls_key needs tls_cert (--tls-cert), its certificate".into(),
            )),
        }
    }

    pub fn store_backend(&self) -> Result<Backend, ConfigError> {
        backend(&self.store, &self.data_dir, "store.db", "store")
    }

    pub fn history_backend(&self) -> Result<Backend, ConfigError> {
        backend(&self.history, &self.data_dir, "history.db", "history")
    }

    pub fn engine_config(&self) -> EngineConfig {
        let q = &self.queue;
        EngineConfig {
            queue: QueueLimits {
                queue_len_max: q.queue_len_max,
                lane_len_max: q.lane_len_max,
                batch_len_max: q.batch_len_max,
            },
            lanes_in_flight_max: q.lanes_in_flight_max,
            commit_batch_max: q.commit_batch_max,
            decide_timeout: Duration::from_millis(q.decide_timeout_ms),
            default_handler: self.default_handler.clone(),
            idempotency_retention: Duration::from_secs(self.idempotency_retention_hours * 3600),
            priority_boost_ms: q.priority_boost_ms,
            latency_target_ms: q.latency_target_ms,
            queue_wait_max_ms: q.queue_wait_max_ms,
            document_cache_bytes: q.document_cache_mb.saturating_mul(1 << 20),
            quarantine_len_max: q.quarantine_len_max,
            document_bytes_max: self.document_bytes_max,
            sample_host: true,
            predictor: self.predictor.clone(),
            locking: self.locking.config(),
            lock_decides_first: self.locking.decide_first,
            leases: self.leases.config(),
            staging: self.staging.config(),
        }
    }

    pub fn webhook_policy(&self) -> WebhookPolicy {
        // Validated before anything starts; an invalid list allows nothing.
        WebhookPolicy::new(&self.webhook_allow).unwrap_or_default()
    }

    pub fn script_limits(&self) -> ScriptLimits {
        ScriptLimits {
            time_ms_max: self.script.time_ms_max,
            memory_bytes_max: self.script.memory_bytes_max,
        }
    }

    /// The script threads to start: as configured, or half the cores.
    pub fn script_threads(&self) -> usize {
        match self.script.threads {
            0 => crate::resolve::script_threads_default(),
            n => n,
        }
    }
}

fn backend(spec: &str, data_dir: &Path, file: &str, what: &str) -> Result<Backend, ConfigError> {
    if spec == "sqlite" {
        Ok(Backend::Sqlite(data_dir.join(file)))
    } else if let Some(path) = spec.strip_prefix("sqlite:") {
        Ok(Backend::Sqlite(PathBuf::from(path)))
    } else if spec == "memory" {
        Ok(Backend::Memory)
    } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        Ok(Backend::Postgres(spec.to_owned()))
    } else {
        Err(ConfigError::Invalid(format!(
            "{what} must be \"sqlite\", \"sqlite:PATH\", \"memory\" or a postgres:// URL, got {spec:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("sluice-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("sluice.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[queue]\nqueue_len_max = 5\nlane_len_max = 2\n",
        )
        .expect("write");
        let vars = [
            ("SLUICE_QUEUE__QUEUE_LEN_MAX".to_string(), "7".to_string()),
            (
                "SLUICE_DEFAULT_HANDLER".to_string(),
                "automerge".to_string(),
            ),
            (
                "SLUICE_TEST_POSTGRES_URL".to_string(),
                "postgres://ignored".to_string(),
            ),
            ("SLUICE_SIM_SEEDS".to_string(), "16".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let config = Config::load(Some(&file), vars).expect("loads");
        assert_eq!(config.listen, "127.0.0.1:9000");
        assert_eq!(
            (config.queue.queue_len_max, config.queue.lane_len_max),
            (7, 2)
        );
        assert_eq!(config.default_handler, Handler::Automerge);
        config.validate().expect("valid");
    }

    #[test]
    fn a_list_comes_from_the_environment_as_toml() {
        let vars = [(
            "SLUICE_WEBHOOK_ALLOW".to_string(),
            r#"["127.0.0.1", "10.0.0.0/8"]"#.to_string(),
        )];
        let config = Config::load(None, vars).expect("loads");
        assert_eq!(config.webhook_allow, ["127.0.0.1", "10.0.0.0/8"]);
        config.validate().expect("valid");
        let bad = Config {
            webhook_allow: vec!["everywhere".into()],
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn mistakes_are_named() {
        let err = Config::load(
            None,
            [("SLUICE_QUEUE__QUEUE_LEN".to_string(), "7".to_string())],
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("queue_len"), "{err}");
        assert!(err.to_string().contains("SLUICE_QUEUE__QUEUE_LEN"), "{err}");
        let mut config = Config {
            listen: "nowhere".into(),
            ..Config::default()
        };
        assert!(config.validate().is_err());
        config.listen = LISTEN_DEFAULT.into();
        config.store = "mysql://x".into();
        assert!(config.validate().is_err());
        config.store = "postgres://u@h/db".into();
        assert_eq!(
            config.store_backend().expect("valid"),
            Backend::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(
            config.history_backend().expect("valid"),
            Backend::Sqlite(PathBuf::from("./sluice-data/history.db"))
        );
    }

    /// Each error names the setting, where it came from and a valid example.
    #[test]
    fn errors_name_the_setting_its_source_and_an_example() {
        let env = |name: &str, value: &str| {
            let err =
                Config::load(None, [(name.to_string(), value.to_string())]).expect_err("invalid");
            err.to_string()
        };
        let said = env("SLUICE_QUEUE__QUEUE_LEN_MAX", "abc");
        for part in [
            "queue.queue_len_max",
            "the environment variable SLUICE_QUEUE__QUEUE_LEN_MAX",
            "expected a whole number",
            &format!("SLUICE_QUEUE__QUEUE_LEN_MAX={QUEUE_LEN_MAX_DEFAULT}"),
        ] {
            assert!(said.contains(part), "{said:?} lacks {part:?}");
        }
        let said = env("SLUICE_WEBHOOK_ALLOW", "127.0.0.1");
        assert!(said.contains("expected a list"), "{said}");
        assert!(
            said.contains(r#"SLUICE_WEBHOOK_ALLOW='["127.0.0.1", "10.0.0.0/8"]'"#),
            "{said}"
        );
        let said = env("SLUICE_QUEU_LEN_MAX", "5");
        assert!(
            said.contains("unknown setting \"queu_len_max\" (from the environment variable SLUICE_QUEU_LEN_MAX)"),
            "{said}"
        );

        let dir = tempfile_dir("errors");
        let file = dir.join("sluice.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\nqueue_len_max = 5\n").expect("write");
        let said = Config::load(Some(&file), Vec::new())
            .expect_err("misplaced")
            .to_string();
        assert!(
            said.contains(&format!("(from {}, line 2)", file.display()))
                && said.contains("belongs under [queue]")
                && said.contains("SLUICE_QUEUE__QUEUE_LEN_MAX"),
            "{said}"
        );
        std::fs::write(&file, "[queue]\n\nqueue_len_max = \"abc\"\n").expect("write");
        let said = Config::load(Some(&file), Vec::new())
            .expect_err("a string")
            .to_string();
        assert!(
            said.contains(&format!("(from {}, line 3)", file.display()))
                && said.contains(&format!(
                    "queue_len_max = {QUEUE_LEN_MAX_DEFAULT} under [queue]"
                )),
            "{said}"
        );
        // A missing file: its OS error once, also through a chain printer.
        let missing = dir.join("absent.toml");
        let err = Config::load(Some(&missing), Vec::new()).expect_err("missing");
        let chained = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(chained.matches("No such file").count(), 1, "{chained}");
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Without authentication, only a loopback address serves unless the
    /// operator says it may be open.
    #[test]
    fn an_open_address_needs_authentication_or_consent() {
        let open = Config {
            listen: "0.0.0.0:7070".into(),
            ..Config::default()
        };
        let refused = open.validate().expect_err("refused").to_string();
        assert!(
            refused.contains("--insecure-no-auth") && refused.contains("0.0.0.0:7070"),
            "{refused}"
        );
        let consented = Config {
            insecure_no_auth: true,
            ..open
        };
        consented.validate().expect("served openly when asked");
        for loopback in ["127.0.0.1:7070", "[::1]:7070"] {
            let config = Config {
                listen: loopback.into(),
                ..Config::default()
            };
            config
                .validate()
                .expect("loopback serves without authentication");
        }
        let unknown = Config {
            auth: "magic".into(),
            ..Config::default()
        };
        assert!(unknown.validate().is_err());
        let keys = Config {
            listen: "0.0.0.0:7070".into(),
            auth: "keys".into(),
            ..Config::default()
        };
        keys.validate().expect("with keys, any address serves");
        let keyless = Config {
            store: "memory".into(),
            ..keys
        };
        let refused = keyless
            .validate()
            .expect_err("no keys in memory")
            .to_string();
        assert!(refused.contains("memory store holds no keys"), "{refused}");
    }

    /// The README lists every key with its default: it must parse, and say
    /// exactly what the defaults are.
    #[test]
    fn the_readme_example_is_the_default_configuration() {
        let readme = include_str!("../../../README.md");
        let block = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README has a toml block");
        let dir = std::env::temp_dir().join(format!("sluice-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("sluice.toml");
        std::fs::write(&file, block).expect("write");
        let config = Config::load(Some(&file), Vec::<(String, String)>::new())
            .expect("the README's config parses");
        config.validate().expect("and is valid");
        assert_eq!(config, Config::default());
    }
}
