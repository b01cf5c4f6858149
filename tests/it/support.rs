//! Test support: real servers on ephemeral ports, real databases.

use serde_json::Value;
use sluice_server::config::Config;
use sluice_server::server::{Running, start};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

/// The PostgreSQL server that `scripts/test` started. A test that needs it
/// fails, loudly, when it is absent: run the suite through `scripts/test`.
pub fn postgres_admin_url() -> String {
    std::env::var("SLUICE_TEST_POSTGRES_URL")
        .expect("SLUICE_TEST_POSTGRES_URL is not set: run the suite with ./scripts/test, which starts PostgreSQL")
}

/// A fresh, empty database on the test server; returns its URL.
pub async fn fresh_postgres_database() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let admin = postgres_admin_url();
    let name = format!(
        "sluice_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create a test database");
    pool.close().await;
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base)
        .expect("URL has a database path");
    format!("{base}/{name}")
}

/// A Sluice server on an ephemeral port, stopped when dropped.
pub struct TestServer {
    pub url: String,
    pub running: Running,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    /// The embedded default (SQLite files in a temporary data directory).
    pub async fn embedded() -> TestServer {
        TestServer::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: data.path().to_path_buf(),
            // The tests' function services listen on the loopback.
            webhook_allow: vec!["127.0.0.1".into()],
            ..Config::default()
        };
        adjust(&mut config);
        TestServer::start_in(config, data).await
    }

    pub async fn start_in(config: Config, data: tempfile::TempDir) -> TestServer {
        let (stop, stopped) = oneshot::channel::<()>();
        let running = start(config, async move {
            let _ = stopped.await;
        })
        .await
        .expect("server starts");
        TestServer {
            url: format!("http://{}", running.addr),
            running,
            http: reqwest::Client::new(),
            stop: Some(stop),
            _data: data,
        }
    }

    /// Stops serving and waits until the server has drained and exited.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = std::mem::replace(&mut self.running.served, tokio::spawn(async { Ok(()) }));
        served.await.expect("server task").expect("server ran");
        let data = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self._data, data)
    }

    /// Stops the server and starts another on the same data directory, from
    /// the defaults adjusted by `adjust`, on an ephemeral port.
    pub async fn restart(self, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data = self.stop().await;
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: data.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        TestServer::start_in(config, data).await
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text")
    }

    pub async fn post(&self, body: Value) -> (u16, Value) {
        exchange(
            self.http
                .post(format!("{}/v1/mutations", self.url))
                .json(&body),
        )
        .await
    }

    /// POSTs a mutation from a task of its own, for tests that keep a request
    /// in flight while they do something else.
    pub fn spawn_post(&self, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
        let request = self
            .http
            .post(format!("{}/v1/mutations", self.url))
            .json(&body);
        tokio::spawn(exchange(request))
    }

    /// Holds the lane of `collection/k` busy for about `hold_ms`: configures a
    /// script that spins that long, writes versions 1 and 2, sends a
    /// conflicting put (base 1) that runs the script, and returns its answer
    /// to come once it is under way. The server's script time limit must
    /// allow `hold_ms`.
    pub async fn hold_lane(
        &self,
        collection: &str,
        hold_ms: u64,
    ) -> tokio::task::JoinHandle<(u16, Value)> {
        let script = format!(
            "function resolve(ctx) {{ const end = Date.now() + {hold_ms}; while (Date.now() < end) {{}} return {{action: 'resolve', item: ctx.existing}}; }}"
        );
        let (status, _) = self
            .put(
                &format!("/v1/collections/{collection}"),
                serde_json::json!({"handler": {"script": script}}),
            )
            .await;
        assert_eq!(status, 200);
        for _ in 0..2 {
            let (status, _) = self.post(serde_json::json!({"collection": collection, "key": "k", "op": "put", "value": {}})).await;
            assert_eq!(status, 200);
        }
        let blocker = self.spawn_post(serde_json::json!({"collection": collection, "key": "k", "op": "put", "value": {}, "base_version": 1}));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        blocker
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        exchange(
            self.http
                .post(format!("{}{path}", self.url))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        exchange(self.http.get(format!("{}{path}", self.url))).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        exchange(self.http.put(format!("{}{path}", self.url)).json(&body)).await
    }
}

/// Sends a request and reads its status and JSON body; every answer of the
/// API is JSON, errors included.
async fn exchange(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request sent");
    (
        response.status().as_u16(),
        response.json().await.expect("JSON body"),
    )
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of one series of a Prometheus text exposition (0 if absent:
/// a counter never incremented may not be listed).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().expect("a number"))
        })
        .unwrap_or(0.0)
}

/// Asserts the error shape of the contract and returns the code.
pub fn error_code(body: &Value) -> &str {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a message: {body}"));
    assert!(!message.is_empty(), "empty error message: {body}");
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a code: {body}"))
}

/// Implements `Store` for a test double that wraps a `MemoryStore` in its
/// `inner` field: the methods given are its own, every other one goes
/// straight to `inner`; with `own_lookups`, `accepted` and `staged` are
/// the double's own too (one that moves a mutation between the two).
#[macro_export]
macro_rules! store_over_memory {
    ($ty:ty, own_lookups { $($own:tt)* }) => {
        $crate::store_over_memory!(@impl $ty, { $($own)* });
    };
    ($ty:ty, { $($own:tt)* }) => {
        $crate::store_over_memory!(@impl $ty, {
            $($own)*
            async fn accepted(&self, client: &str, id: &str) -> Result<Option<sluice_server::store::Accepted>, sluice_server::store::StoreError> {
                self.inner.accepted(client, id).await
            }
            async fn staged(&self, client: &str, id: &str) -> Result<Option<sluice_server::store::Accepted>, sluice_server::store::StoreError> {
                self.inner.staged(client, id).await
            }
        });
    };
    (@impl $ty:ty, { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl sluice_server::store::Store for $ty {
            $($own)*

            async fn expire_replies(&self, before_ms: i64) -> Result<u64, sluice_server::store::StoreError> {
                self.inner.expire_replies(before_ms).await
            }
            async fn events_head(&self, client: &str) -> Result<i64, sluice_server::store::StoreError> {
                self.inner.events_head(client).await
            }
            async fn secret(&self, name: &str, make: &(dyn Fn() -> String + Sync)) -> Result<String, sluice_server::store::StoreError> {
                self.inner.secret(name, make).await
            }
            async fn collections(&self) -> Result<Vec<(String, String)>, sluice_server::store::StoreError> {
                self.inner.collections().await
            }
            async fn put_collection(&self, config_json: &str, change: &sluice_server::store::CollectionChange) -> Result<(), sluice_server::store::StoreError> {
                self.inner.put_collection(config_json, change).await
            }
            async fn collection_changes(&self, collection: &str, before: Option<i64>, limit: u32) -> Result<Vec<sluice_server::store::CollectionChange>, sluice_server::store::StoreError> {
                self.inner.collection_changes(collection, before, limit).await
            }
            async fn accept(&self, entry: &sluice_server::store::Accepted) -> Result<bool, sluice_server::store::StoreError> {
                self.inner.accept(entry).await
            }
            async fn unaccept(&self, client: &str, id: &str) -> Result<(), sluice_server::store::StoreError> {
                self.inner.unaccept(client, id).await
            }
            async fn pending_accepted(&self) -> Result<Vec<sluice_server::store::Accepted>, sluice_server::store::StoreError> {
                self.inner.pending_accepted().await
            }
            async fn events_after(&self, client: &str, after_seq: i64, limit: u32) -> Result<Vec<(i64, String)>, sluice_server::store::StoreError> {
                self.inner.events_after(client, after_seq, limit).await
            }
            async fn quarantined(&self, client: &str, id: &str) -> Result<Option<sluice_server::store::Quarantined>, sluice_server::store::StoreError> {
                self.inner.quarantined(client, id).await
            }
            async fn quarantine_list(&self, query: &sluice_server::store::QuarantineQuery) -> Result<Vec<sluice_server::store::Quarantined>, sluice_server::store::StoreError> {
                self.inner.quarantine_list(query).await
            }
            async fn put_key(&self, key: &sluice_server::store::KeyRecord) -> Result<(), sluice_server::store::StoreError> {
                self.inner.put_key(key).await
            }
            async fn key(&self, id: &str) -> Result<Option<sluice_server::store::KeyRecord>, sluice_server::store::StoreError> {
                self.inner.key(id).await
            }
            async fn keys(&self) -> Result<Vec<sluice_server::store::KeyRecord>, sluice_server::store::StoreError> {
                self.inner.keys().await
            }
            async fn revoke_key(&self, id: &str, at_ms: i64) -> Result<bool, sluice_server::store::StoreError> {
                self.inner.revoke_key(id, at_ms).await
            }
            async fn raise_fence(&self, partition: u32, epoch: u64) -> Result<u64, sluice_server::store::StoreError> {
                self.inner.raise_fence(partition, epoch).await
            }
            async fn stage(&self, entry: &sluice_server::store::Accepted, collection: &str) -> Result<bool, sluice_server::store::StoreError> {
                self.inner.stage(entry, collection).await
            }
            async fn unstage(&self, client: &str, id: &str) -> Result<bool, sluice_server::store::StoreError> {
                self.inner.unstage(client, id).await
            }
            async fn staged_list(&self, collection: Option<&str>, limit: u32) -> Result<Vec<sluice_server::store::Accepted>, sluice_server::store::StoreError> {
                self.inner.staged_list(collection, limit).await
            }
        }
    };
}

/// A port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until `GET {url}/healthz` answers 200 (10 s at most).
pub async fn wait_healthy(http: &reqwest::Client, url: &str) {
    for _ in 0..200 {
        if http
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("sluice did not come up at {url}");
}

/// Submits a mutation to an engine and renders the answer as the API sends
/// it: what the engine-level tests assert on.
pub async fn submit(
    engine: &sluice_server::dispatch::Engine,
    mutation: sluice_server::model::Mutation,
) -> sluice_server::api::Reply {
    sluice_server::api::reply(engine.submit(mutation).await)
}

/// The single Redis that `scripts/test` started.
pub fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS_URL").expect(
        "SLUICE_TEST_REDIS_URL is not set: run the suite with ./scripts/test, which starts Redis",
    )
}

/// The seed nodes of the three-master Redis Cluster that `scripts/test`
/// started, comma-separated.
pub fn redis_cluster_urls() -> String {
    std::env::var("SLUICE_TEST_REDIS_CLUSTER_URLS").expect(
        "SLUICE_TEST_REDIS_CLUSTER_URLS is not set: run the suite with ./scripts/test, which starts a Redis Cluster",
    )
}

/// A key prefix no other test uses, so tests share one Redis.
pub fn redis_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}-{}:",
        std::process::id(),
        sluice_server::clock::wall_ms(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Serves `handler` at `/resolve` on a free port of this machine and gives
/// its URL: a collection's webhook.
pub async fn webhook(handler: axum::routing::MethodRouter) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().route("/resolve", handler)).await
    });
    format!("http://{addr}/resolve")
}
