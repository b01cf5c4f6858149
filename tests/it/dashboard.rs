//! The dashboard, end to end in headless Chromium driven by chromedriver:
//! the page loads from the binary alone, and while a workload runs its charts
//! show throughput and its list shows conflicts.

use crate::support::{TestServer, free_port};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// chromedriver on a port of its own, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let binary = std::env::var("SLUICE_TEST_CHROMEDRIVER").expect(
            "SLUICE_TEST_CHROMEDRIVER is not set: run the suite with ./scripts/test, which installs chromium and chromedriver",
        );
        let port = free_port();
        // A process group of its own, so that dropping the driver also ends
        // the Chromium it started, even if the test failed before closing it.
        let child = Command::new(binary)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        // From here the driver is reaped on drop, whatever happens.
        let driver = Driver { child, url };
        for _ in 0..100 {
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
                && let Ok(status) = r.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not become ready at {}", driver.url);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // `--` first: a negative number is a process group, not an option.
        let _ = Command::new("/bin/kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writers until `stop`: half on a few hot documents with stale versions
/// (conflicts, merged by automerge), half spread over 100,000 documents.
fn workload(url: String, stop: Arc<AtomicBool>, seed: u64) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut sent = 0u64;
        let mut rng = sluice_server::rng::SplitMix64::new(seed);
        while !stop.load(Ordering::Relaxed) {
            let x = rng.next_u64();
            let body = if x.is_multiple_of(2) {
                json!({"collection": "board", "key": format!("hot-{}", x % 5), "op": "patch",
                       "value": {"by": seed, "tags": [sent]}, "base_version": 1})
            } else {
                json!({"collection": "board", "key": format!("doc-{}", x % 100_000), "op": "patch",
                       "value": {"n": sent}})
            };
            let r = http
                .post(format!("{url}/v1/mutations"))
                .json(&body)
                .send()
                .await;
            if r.is_ok() {
                sent += 1;
            }
        }
        sent
    })
}

/// A headless Chromium session: its driver and profile live as long as it.
async fn browser(chromium: &str) -> (Driver, tempfile::TempDir, fantoccini::Client) {
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().expect("temp dir");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.path().display()),
                "--window-size=1440,1100",
            ],
        }),
    );
    let browser =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .expect("a Chromium session through chromedriver");
    (driver, profile, browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_live_throughput_and_conflicts_in_chromium() {
    let chromium =
        std::env::var("SLUICE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let s = TestServer::embedded().await;
    let (status, _) = s
        .put(
            "/v1/collections/board",
            json!({"handler": "automerge", "set_fields": ["tags"]}),
        )
        .await;
    assert_eq!(status, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=6)
        .map(|seed| workload(s.url.clone(), stop.clone(), seed))
        .collect();

    let page = s
        .http
        .get(format!("{}/", s.url))
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("<title>Sluice</title>")
    );

    let (_driver, _profile, browser) = browser(&chromium).await;
    browser
        .goto(&format!("{}/", s.url))
        .await
        .expect("load the dashboard");

    // Everything the page needs is in the page: no script, style or image
    // from anywhere else.
    let external = browser
        .execute(
            "return document.querySelectorAll('script[src], link[href], img[src]').length",
            vec![],
        )
        .await
        .expect("execute");
    assert_eq!(external, json!(0));

    let probe = "return {
        status: document.getElementById('status').textContent,
        peak: Number(document.getElementById('throughput').dataset.peak),
        conflicts: document.querySelectorAll('#conflicts .conflict').length,
        sides: document.querySelectorAll('#conflicts .conflict pre').length,
        hot: document.querySelectorAll('#hot tr.doc').length,
        bins: document.querySelectorAll('#calibration circle.bin').length,
        decided: document.getElementById('kpi-decided').textContent,
    }";
    let started = Instant::now();
    let seen = loop {
        let seen = browser.execute(probe, vec![]).await.expect("execute");
        let ready = seen["status"] == "live"
            && seen["peak"].as_f64().unwrap_or(0.0) > 0.0
            && seen["conflicts"].as_u64().unwrap_or(0) > 0
            && seen["hot"].as_u64().unwrap_or(0) > 0
            && seen["bins"].as_u64().unwrap_or(0) > 0;
        if ready {
            break seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the dashboard never showed throughput and a conflict: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Each conflict shows the incoming value, the server's item and the result.
    assert_eq!(
        seen["sides"].as_u64(),
        seen["conflicts"].as_u64().map(|n| n * 3),
        "{seen}"
    );
    // The hottest documents are the contended ones, not the 100,000 cold ones.
    let first_hot = browser
        .execute(
            "return document.querySelector('#hot tr.doc td.key').textContent",
            vec![],
        )
        .await
        .expect("execute");
    assert!(
        first_hot
            .as_str()
            .is_some_and(|k| k.starts_with("board/hot-")),
        "{first_hot}"
    );
    // Let a few more seconds draw, then keep a picture of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cost = browser
        .execute(
            "return [document.body.dataset.renderMs, document.body.dataset.snapshotBytes]",
            vec![],
        )
        .await
        .expect("execute");
    eprintln!("last snapshot: drawn in {} ms, {} bytes", cost[0], cost[1]);
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).expect("save the screenshot");
    eprintln!("dashboard screenshot: {}", out.display());

    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for w in writers {
        sent += w.await.expect("writer");
    }
    assert!(sent > 0);
    browser.close().await.expect("close the browser");
}

/// With authentication on, the page is served to anyone (it is code) and
/// asks for a credential; its data needs an admin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_the_dashboard_asks_for_an_admin_credential() {
    let chromium =
        std::env::var("SLUICE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().to_path_buf();
    let config = sluice_server::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.clone(),
        auth: "keys".into(),
        ..Default::default()
    };
    let s = TestServer::start_in(config, data).await;
    let writer = crate::auth::create(&dir, "alice", "writer");
    let admin = crate::auth::create(&dir, "root", "admin");
    let (_driver, _profile, browser) = browser(&chromium).await;
    browser
        .goto(&format!("{}/", s.url))
        .await
        .expect("load the dashboard");
    let probe = "return {
        status: document.getElementById('status').textContent,
        login: !document.getElementById('login').hidden,
    }";
    let wait_for = |status: &'static str, login: bool| {
        let browser = browser.clone();
        async move {
            let started = Instant::now();
            loop {
                let seen = browser.execute(probe, vec![]).await.expect("execute");
                let text = seen["status"].as_str().unwrap_or("");
                if text.contains(status) && seen["login"] == login {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "waited for {status:?} (login {login}): {seen}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let submit = "document.getElementById('credential').value = arguments[0];
        document.getElementById('login').requestSubmit();";
    wait_for("needs an admin", true).await;
    browser
        .execute(submit, vec![json!(writer)])
        .await
        .expect("submit");
    wait_for("may not read the dashboard", true).await;
    browser
        .execute(submit, vec![json!(admin)])
        .await
        .expect("submit");
    wait_for("live", false).await;
    let drawn = browser
        .execute(
            "return document.getElementById('kpi-decided').textContent",
            vec![],
        )
        .await
        .expect("execute");
    assert_ne!(drawn, json!("–"), "a snapshot was drawn");
    browser.close().await.expect("close the browser");
    s.stop().await;
}
