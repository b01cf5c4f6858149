//! Cluster mode through outages: Redis killed and restarted, PostgreSQL
//! restarted, a member joining and one leaving, all under load. Each test
//! runs its own Redis (and PostgreSQL) so that it can stop them.

use crate::failover::{Member, Refused, get, settled, until_answered, until_answered_noting};
use crate::support::{free_port, fresh_postgres_database, redis_prefix};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A Redis of the test's own, with every write in its append-only file
/// before it answers (`appendfsync always`), as `deploy/redis.conf` advises
/// for no loss.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let mut r = OwnRedis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let server = std::env::var("SLUICE_TEST_REDIS_SERVER")
            .expect("SLUICE_TEST_REDIS_SERVER is not set: run the suite with ./scripts/test");
        let child = Command::new(server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_port(self.port);
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing came up on port {port}");
}

/// A PostgreSQL of the test's own, which it may restart.
struct OwnPostgres {
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    fn bin(name: &str) -> std::path::PathBuf {
        Path::new(
            &std::env::var("SLUICE_TEST_PG_BIN")
                .expect("SLUICE_TEST_PG_BIN is not set: run the suite with ./scripts/test"),
        )
        .join(name)
    }

    /// Runs a PostgreSQL program as the user that owns the data (PostgreSQL
    /// refuses to run as root).
    fn run(program: &str, args: &[&str]) {
        let mut command = match std::env::var("SLUICE_TEST_PG_USER") {
            Ok(user) if !user.is_empty() => {
                let mut c = Command::new("runuser");
                c.args(["-u", &user, "--"]).arg(Self::bin(program));
                c
            }
            _ => Command::new(Self::bin(program)),
        };
        let output = command
            .args(args)
            .output()
            .expect("run a PostgreSQL program");
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Ok(user) = std::env::var("SLUICE_TEST_PG_USER")
            && !user.is_empty()
        {
            let status = Command::new("chown")
                .args(["-R", &user])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let pg = OwnPostgres {
            port: free_port(),
            dir,
        };
        let data = pg.data();
        Self::run(
            "initdb",
            &["-D", &data, "-U", "sluice", "--auth=trust", "-E", "UTF8"],
        );
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        Self::run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    fn down(&self) {
        Self::run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://sluice@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.down());
    }
}

/// What the clients saw: each acknowledged append, every refusal.
#[derive(Default)]
struct Seen {
    appends: HashMap<usize, Vec<String>>,
    writes: HashMap<usize, u64>,
    latencies_ms: Vec<f64>,
}

const DOCS: usize = 6;

/// `clients` clients, each appending `ops` times (a stale base, merged by
/// automerge) to the hot documents through the members in turn, resending
/// each refused or unanswered mutation with its id until it is answered.
fn load(
    http: &reqwest::Client,
    urls: &[String],
    clients: usize,
    ops: usize,
    done: Arc<std::sync::atomic::AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    refused: Arc<Refused>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (http, urls, done, seen, refused) = (
                http.clone(),
                urls.to_vec(),
                done.clone(),
                seen.clone(),
                refused.clone(),
            );
            tokio::spawn(async move {
                for k in 0..ops {
                    let doc = (c + k) % DOCS;
                    let tag = format!("c{c}-{k}");
                    let body = json!({"id": tag, "client": format!("c{c}"), "collection": "hot", "key": format!("d{doc}"), "op": "patch", "value": {"items": [tag]}, "base_version": 1});
                    let started = Instant::now();
                    let (status, answer) =
                        until_answered_noting(&http, &urls, c, &body, &refused).await;
                    let took = started.elapsed().as_secs_f64() * 1000.0;
                    assert_eq!(status, 200, "{tag}: {answer}");
                    let mut seen = seen.lock().expect("seen");
                    seen.appends.entry(doc).or_default().push(tag);
                    *seen.writes.entry(doc).or_default() += 1;
                    seen.latencies_ms.push(took);
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect()
}

async fn create_docs(http: &reqwest::Client, urls: &[String]) {
    let r = http
        .put(format!("{}/v1/collections/hot", urls[0]))
        .json(&json!({"handler": "automerge"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status().as_u16(), 200);
    // Every member reads the settings again within 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for d in 0..DOCS {
        let put = json!({"id": format!("init-{d}"), "client": "setup", "collection": "hot", "key": format!("d{d}"), "op": "put", "value": {"items": []}});
        let (status, body) = until_answered(http, urls, d, &put).await;
        assert_eq!((status, body["version"].clone()), (200, json!(1)), "{body}");
    }
}

/// Every acknowledged append is in its document exactly once, and every
/// document's version is one more than its acknowledged writes.
async fn nothing_lost_nothing_twice(http: &reqwest::Client, url: &str, seen: &Seen) {
    for d in 0..DOCS {
        let (status, doc) = get(http, &format!("{url}/v1/documents/hot/d{d}")).await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(
            doc["version"].as_u64(),
            Some(1 + seen.writes.get(&d).copied().unwrap_or(0)),
            "d{d}: {doc}"
        );
        let mut items: Vec<String> = doc["item"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|v| v.as_str().expect("tag").to_string())
            .collect();
        items.sort();
        let mut want = seen.appends.get(&d).cloned().unwrap_or_default();
        want.sort();
        assert_eq!(items, want, "d{d}");
    }
}

async fn wait_for(done: &std::sync::atomic::AtomicUsize, n: usize) {
    while done.load(std::sync::atomic::Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_postgres_restarts_under_load_lose_nothing() {
    let mut redis = OwnRedis::start();
    let pg = OwnPostgres::start();
    let prefix = redis_prefix();
    let mut members = Vec::new();
    for _ in 0..2 {
        members.push(Member::start_on(&pg.url(), &redis.url(), &prefix).await);
    }
    let http = reqwest::Client::new();
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    settled(&http, &urls[0], 2).await;
    create_docs(&http, &urls).await;

    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (clients, ops) = (16, 30);
    let refused = Arc::new(Refused::default());
    let running = load(
        &http,
        &urls,
        clients,
        ops,
        done.clone(),
        seen.clone(),
        refused.clone(),
    );

    // Redis dies (kill -9) and comes back a second later, its append-only
    // file intact: the streams, their pending entries and the epochs.
    wait_for(&done, clients * ops / 4).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    // Then PostgreSQL, stopped hard and started again.
    wait_for(&done, clients * ops / 2).await;
    pg.down();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.up();

    for client in running {
        client.await.expect("client");
    }
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    assert_eq!(seen.latencies_ms.len(), clients * ops);
    nothing_lost_nothing_twice(&http, &urls[1], &seen).await;
    // The outages were felt, and said so properly: every refusal carried a
    // Retry-After (a request may also have failed outright).
    let felt = refused.refusals.load(std::sync::atomic::Ordering::SeqCst)
        + refused.unanswered.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "outages: {} refusals, {} unanswered requests",
        refused.refusals.load(std::sync::atomic::Ordering::SeqCst),
        refused.unanswered.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(
        felt > 0,
        "the clients never noticed Redis or PostgreSQL go away"
    );
    assert_eq!(
        refused
            .without_retry_after
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    settled(&http, &urls[0], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_and_one_leaves_under_load() {
    let store = fresh_postgres_database().await;
    let redis = OwnRedis::start();
    let prefix = redis_prefix();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Member::start_on(&store, &redis.url(), &prefix).await);
    }
    let http = reqwest::Client::new();
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    settled(&http, &urls[0], 3).await;
    create_docs(&http, &urls).await;

    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (clients, ops) = (16, 40);
    // The clients know the first three members only.
    let running = load(
        &http,
        &urls,
        clients,
        ops,
        done.clone(),
        seen.clone(),
        Arc::new(Refused::default()),
    );

    wait_for(&done, clients * ops / 4).await;
    members.push(Member::start_on(&store, &redis.url(), &prefix).await);
    settled(&http, &urls[0], 4).await;
    // Member 1 leaves gracefully (SIGTERM): it drains, then hands over.
    wait_for(&done, clients * ops / 2).await;
    members[1].signal("-TERM");
    members[1].wait_exit();
    settled(&http, &urls[0], 3).await;

    for client in running {
        client.await.expect("client");
    }
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    nothing_lost_nothing_twice(&http, &urls[2], &seen).await;
    let mut latencies = seen.latencies_ms.clone();
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "rebalancing under load: {} mutations, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        latencies[latencies.len() / 2],
        p99,
        latencies[latencies.len() - 1]
    );
    // Bounded: far below the 20 s decision time-out, so no mutation waited
    // for a lease to run out (the figure itself is in the README).
    assert!(p99 < 5000.0, "p99 {p99:.1} ms");
}
