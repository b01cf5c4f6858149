//! Hostile and careless input: bounds that hold, and values kept exactly
//! or refused. Each test here failed before its bound existed.

use crate::support::{TestServer, error_code};
use serde_json::{Value, json};

/// Patches that only add fields grew one document without bound (12 MB in
/// 20 requests); a script's result bypassed every cap.
#[tokio::test]
async fn a_document_never_grows_past_its_bound() {
    let s = TestServer::with(|c| c.document_bytes_max = 4_096).await;
    let (status, _) = s
        .post(json!({"collection": "c", "key": "k", "op": "put", "value": {"seed": 1}}))
        .await;
    assert_eq!(status, 200);
    let filler = "x".repeat(1_000);
    let mut refused = None;
    for i in 0..10 {
        let (status, body) = s
            .post(json!({"collection": "c", "key": "k", "op": "patch", "value": {format!("f{i}"): filler}}))
            .await;
        if status != 200 {
            refused = Some((i, status, body));
            break;
        }
    }
    let (i, status, body) = refused.expect("a patch past the bound is refused");
    assert_eq!(
        (status, error_code(&body)),
        (413, "document_too_large"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("4096")),
        "{body}"
    );
    let (_, doc) = s.get("/v1/documents/c/k").await;
    assert_eq!(
        doc["version"],
        json!(1 + i),
        "nothing of the refused patch was written"
    );
    assert!(serde_json::to_string(&doc["item"]).expect("json").len() <= 4_096);
    // The lane goes on: a small write still applies.
    let (status, _) = s
        .post(json!({"collection": "c", "key": "k", "op": "patch", "value": {"small": 1}}))
        .await;
    assert_eq!(status, 200);

    // A script's result is bounded too: rejected with the reason.
    s.put(
        "/v1/collections/big",
        json!({"handler": {"script": "function resolve(ctx) { return {action: 'resolve', item: {s: 'x'.repeat(8000)}}; }"}}),
    )
    .await;
    for v in [1, 2] {
        s.post(json!({"collection": "big", "key": "k", "op": "put", "value": {"v": v}}))
            .await;
    }
    let (status, body) = s
        .post(json!({"collection": "big", "key": "k", "op": "put", "value": {}, "base_version": 1}))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (409, &json!("rejected")),
        "{body}"
    );
    let reason = body["conflict"]["reason"].as_str().expect("reason");
    assert!(reason.contains("over the 4096-byte bound"), "{reason}");
    assert_eq!(
        body["item"],
        json!({"v": 2}),
        "the server's item, unchanged"
    );
    let (_, doc) = s.get("/v1/documents/big/k").await;
    assert_eq!(doc["version"], json!(2));
}

/// An integer beyond 64 bits was silently stored as a float, `-0` as
/// `-0.0`, and a key given twice inside a value kept its last value.
#[tokio::test]
async fn numbers_are_kept_exactly_or_refused() {
    let s = TestServer::embedded().await;
    let refused = [
        (
            r#"{"collection":"c","key":"k","op":"put","value":{"n":18446744073709551616}}"#,
            "value.n",
        ),
        (
            r#"{"collection":"c","key":"k","op":"put","value":{"a":[0,-0]}}"#,
            "value.a[1]",
        ),
        (
            r#"{"collection":"c","key":"k","op":"put","value":{"x":{"d":1,"d":2}}}"#,
            "value.x.d",
        ),
    ];
    for (body, path) in refused {
        let (status, answer) = s.post_raw("/v1/mutations", body.to_owned()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_mutation"),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.starts_with(path), "{body}: {message}");
    }
    let batch = r#"{"mutations":[{"collection":"c","key":"k","op":"put","value":{}},{"collection":"c","key":"k","op":"put","value":{"n":-9223372036854775809}}]}"#;
    let (status, answer) = s.post_raw("/v1/mutations:batch", batch.to_owned()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("mutations[1].value.n"))
    );
    let (_, doc) = s.get("/v1/documents/c/k").await;
    assert_eq!(doc["version"], Value::Null, "nothing was written: {doc}");

    // What fits is kept as sent.
    let exact = r#"{"collection":"c","key":"k","op":"put","value":{"max":18446744073709551615,"min":-9223372036854775808,"f":0.1}}"#;
    let (status, _) = s.post_raw("/v1/mutations", exact.to_owned()).await;
    assert_eq!(status, 200);
    let text = s
        .http
        .get(format!("{}/v1/documents/c/k", s.url))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(r#""max":18446744073709551615"#)
            && text.contains(r#""min":-9223372036854775808"#),
        "{text}"
    );
}

/// Webhooks reached anywhere: cloud metadata, the host's loopback in any
/// spelling, credentials in the URL (readable back), and redirects were
/// followed. Now refused at `PUT` (400 naming the rule), checked again at
/// every call, and never redirected.
#[tokio::test]
async fn webhooks_reach_only_what_they_may() {
    let s = TestServer::with(|c| c.webhook_allow.clear()).await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/resolve",
        "http://2130706433/resolve",
        "http://0.0.0.0/resolve",
        "http:///x",
        "http://user:pass@hooks.example.com/resolve",
        "http://127.0.0.1:9/resolve",
        "http://localhost:9/resolve",
    ] {
        let (status, body) = s
            .put(
                "/v1/collections/w",
                json!({"handler": {"webhook": {"url": url}}}),
            )
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_collection"),
            "{url}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("webhook")),
            "{body}"
        );
    }
    let (status, _) = s
        .put(
            "/v1/collections/w",
            json!({"handler": {"webhook": {"url": "https://hooks.example.com/resolve"}}}),
        )
        .await;
    assert_eq!(status, 200, "a public host is fine");
}

#[tokio::test]
async fn a_webhook_redirect_is_not_followed_and_the_rules_hold_at_call_time() {
    // A service that answers every call with a 307 to a second one, which
    // counts what reaches it.
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let target = {
        let reached = reached.clone();
        serve(axum::Router::new().route(
            "/steal",
            axum::routing::post(move || {
                reached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { axum::Json(json!({"action": "resolve", "item": {"stolen": true}})) }
            }),
        ))
        .await
    };
    let redirector = serve(axum::Router::new().route(
        "/resolve",
        axum::routing::post(move || {
            let location = format!("{target}/steal");
            async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [("location", location)],
                    "",
                )
            }
        }),
    ))
    .await;
    let s = TestServer::embedded().await;
    let (status, _) = s
        .put(
            "/v1/collections/w",
            json!({"handler": {"webhook": {"url": format!("{redirector}/resolve")}}}),
        )
        .await;
    assert_eq!(status, 200);
    for v in [1, 2] {
        s.post(json!({"collection": "w", "key": "k", "op": "put", "value": {"v": v}}))
            .await;
    }
    let (status, body) = s
        .post(json!({"collection": "w", "key": "k", "op": "put", "value": {}, "base_version": 1}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["conflict"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("307")),
        "{body}"
    );
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );

    // The same stored setting on a server that no longer allows the
    // loopback: refused at call time, nothing sent.
    let s = s.restart(|_| {}).await;
    let (status, body) = s
        .post(json!({"collection": "w", "key": "k", "op": "put", "value": {}, "base_version": 1}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["conflict"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("webhook_allow")),
        "{body}"
    );
}

/// Serves `app` on a loopback port; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// Deleting `history.db` while serving raised no error, no log line, no
/// metric: writes went to the unlinked file and, after a restart, the
/// conflicts and the model were gone.
#[tokio::test]
async fn a_history_deleted_under_sluice_is_reported() {
    let data = tempfile::tempdir().expect("temp dir");
    let config = sluice_server::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        ..Default::default()
    };
    let history = data.path().join("history.db");
    let s = TestServer::start_in(config, data).await;
    let (status, health) = s.get("/healthz").await;
    assert_eq!((status, &health["degraded"]), (200, &json!([])), "{health}");
    std::fs::remove_file(&history).expect("delete history.db");
    let (status, health) = s.get("/healthz").await;
    assert_eq!(status, 200, "still serving, so load balancers keep routing");
    let degraded = health["degraded"].as_array().expect("list");
    assert!(
        degraded.iter().any(|d| d
            .as_str()
            .is_some_and(|d| d.contains("history.db") && d.contains("deleted"))),
        "{health}"
    );
    let (status, _) = s
        .post(json!({"collection": "c", "key": "k", "op": "put", "value": {}}))
        .await;
    assert_eq!(status, 200, "mutations are still served");
    let metrics = s.metrics().await;
    assert!(metrics.contains("sluice_history_degraded 1"), "{metrics}");
}

/// `POST /v1/mutations` with `Content-Type: text/plain` from a foreign
/// `Origin` was applied: any web page a user opened could write through a
/// Sluice on their machine.
#[tokio::test]
async fn a_page_elsewhere_can_neither_write_nor_configure() {
    let s = TestServer::with(|c| c.cors_origins = vec!["https://app.example.com".into()]).await;
    let mutation = r#"{"collection":"c","key":"k","op":"put","value":{"x":1}}"#;
    let send =
        |method: reqwest::Method, path: &str, content_type: Option<&str>, origin: Option<&str>| {
            let mut request = s
                .http
                .request(method, format!("{}{path}", s.url))
                .body(mutation);
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            request.send()
        };
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let response = send(reqwest::Method::POST, "/v1/mutations", content_type, None)
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 415, "{content_type:?}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(error_code(&body), "unsupported_media_type");
    }
    let response = send(
        reqwest::Method::PUT,
        "/v1/collections/c",
        Some("text/plain"),
        None,
    )
    .await
    .expect("put");
    assert_eq!(response.status().as_u16(), 415);
    for path in ["/v1/mutations", "/v1/mutations:batch"] {
        let response = send(
            reqwest::Method::POST,
            path,
            Some("application/json"),
            Some("https://evil.example"),
        )
        .await
        .expect("post");
        assert_eq!(response.status().as_u16(), 403, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(error_code(&body), "origin_not_allowed");
    }
    let (_, doc) = s.get("/v1/documents/c/k").await;
    assert_eq!(doc["version"], Value::Null, "nothing was written: {doc}");

    // The server's own origin (the dashboard) and a listed one pass.
    let own = s.url.clone();
    let response = send(
        reqwest::Method::POST,
        "/v1/mutations",
        Some("application/json; charset=utf-8"),
        Some(&own),
    )
    .await
    .expect("post");
    assert_eq!(response.status().as_u16(), 200);
    let response = send(
        reqwest::Method::POST,
        "/v1/mutations",
        Some("application/json"),
        Some("https://app.example.com"),
    )
    .await
    .expect("post");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://app.example.com"[..])
    );
    let preflight = send(
        reqwest::Method::OPTIONS,
        "/v1/mutations",
        None,
        Some("https://app.example.com"),
    )
    .await
    .expect("options");
    assert_eq!(preflight.status().as_u16(), 204);
    assert!(
        preflight
            .headers()
            .contains_key("access-control-allow-methods")
    );
    // A foreign page's read has no effect and gets no CORS answer to read it by.
    let read = s
        .http
        .get(format!("{}/v1/documents/c/k", s.url))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("get");
    assert_eq!(read.status().as_u16(), 200);
    assert!(!read.headers().contains_key("access-control-allow-origin"));
}

/// `GET /v1/conflicts?…&limit=1000` over a 3 MB document answered 73.7 MB
/// and took the process to 2.9 GB: conflicts hold whole documents. A page
/// now stops at about 4 MiB of values and says where the next one starts.
#[tokio::test]
async fn a_conflicts_page_is_bounded_in_bytes_and_pages_on() {
    let s = TestServer::embedded().await;
    s.put("/v1/collections/big", json!({"handler": "automerge"}))
        .await;
    let (status, _) = s
        .post(json!({"collection": "big", "key": "k", "op": "put", "value": {"blob": "x".repeat(400_000)}}))
        .await;
    assert_eq!(status, 200);
    let stale = 12;
    for i in 0..stale {
        let (status, body) = s
            .post(json!({"collection": "big", "key": "k", "op": "patch", "value": {format!("f{i}"): i}, "base_version": 0}))
            .await;
        assert_eq!((status, &body["outcome"]), (200, &json!("merged")));
    }
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            None => "/v1/conflicts?collection=big&limit=1000".to_owned(),
            Some(cursor) => format!("/v1/conflicts?collection=big&limit=1000&before={cursor}"),
        };
        let text = s
            .http
            .get(format!("{}{path}", s.url))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        assert!(text.len() < 6 << 20, "a page of {} bytes", text.len());
        let page: Value = serde_json::from_str(&text).expect("json");
        pages += 1;
        for c in page["conflicts"].as_array().expect("list") {
            seen.push(c["mutation_id"].clone());
        }
        match page.get("next").and_then(Value::as_i64) {
            Some(cursor) => before = Some(cursor),
            None => break,
        }
        assert!(pages < 20, "the pages never end");
    }
    assert!(pages >= 2, "{pages} page(s)");
    assert_eq!(seen.len(), stale, "every conflict once: {seen:?}");
    let mut unique = seen.clone();
    unique.sort_by_key(|v| v.to_string());
    unique.dedup();
    assert_eq!(unique.len(), stale);
}

/// A 1 MiB body of tiny fields cost about 65 MB while parsed and decided;
/// 32 of them at once took the process to 1.1 GB. The bytes of bodies
/// read and decided at once are now bounded: past the budget a request
/// waits, then gets 503, while small ones keep passing.
#[tokio::test]
async fn large_bodies_in_flight_are_bounded() {
    let s = TestServer::with(|c| {
        c.body_bytes_in_flight_max = 1 << 20;
        c.script.time_ms_max = 5_000;
    })
    .await;
    let blocker = s.hold_lane("held", 3_500).await;
    let big = |collection: &str| json!({"collection": collection, "key": "k", "op": "patch", "value": {"blob": "x".repeat(700_000)}});
    // Waits in the held lane, holding its share of the budget.
    let first = s.spawn_post(big("held"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, body) = s.post(big("other")).await;
    assert_eq!(
        (status, error_code(&body)),
        (503, "bodies_in_flight_full"),
        "{body}"
    );
    let (status, _) = s
        .post(json!({"collection": "small", "key": "k", "op": "put", "value": {"x": 1}}))
        .await;
    assert_eq!(status, 200, "a small request still fits");
    let (status, _) = blocker.await.expect("blocker");
    assert_eq!(status, 200);
    let (status, _) = first.await.expect("first");
    assert_eq!(status, 200);
    let (status, _) = s.post(big("other")).await;
    assert_eq!(status, 200, "room again once the first was decided");
}

/// Credentials in a webhook URL are refused; a header setting carries them
/// instead, sent with every call and never shown by `GET`.
#[tokio::test]
async fn a_webhook_authenticates_by_a_header_nobody_reads_back() {
    let service = serve(axum::Router::new().route(
        "/resolve",
        axum::routing::post(|headers: axum::http::HeaderMap| async move {
            if headers.get("authorization").map(|v| v.as_bytes()) != Some(b"Bearer s3cret") {
                return (axum::http::StatusCode::UNAUTHORIZED, axum::Json(json!({})));
            }
            (
                axum::http::StatusCode::OK,
                axum::Json(json!({"action": "resolve", "item": {"by": "service"}})),
            )
        }),
    ))
    .await;
    let s = TestServer::embedded().await;
    let hook = |headers: Value| json!({"handler": {"webhook": {"url": format!("{service}/resolve"), "headers": headers}}});
    let (status, shown) = s
        .put(
            "/v1/collections/w",
            hook(json!({"Authorization": "Bearer s3cret"})),
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        shown["handler"]["webhook"]["headers"],
        json!({"Authorization": "<redacted>"})
    );
    let (_, read) = s.get("/v1/collections/w").await;
    assert!(!read.to_string().contains("s3cret"), "{read}");
    for v in [1, 2] {
        s.post(json!({"collection": "w", "key": "k", "op": "put", "value": {"v": v}}))
            .await;
    }
    let (status, merged) = s
        .post(json!({"collection": "w", "key": "k", "op": "put", "value": {}, "base_version": 1}))
        .await;
    assert_eq!(
        (status, &merged["item"]),
        (200, &json!({"by": "service"})),
        "{merged}"
    );
    for bad in [
        json!({"Authorization": "<redacted>"}),
        json!({"Host": "x"}),
        json!({"bad name": "x"}),
        json!({"A": 1}),
    ] {
        let (status, body) = s.put("/v1/collections/w", hook(bad.clone())).await;
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_collection"),
            "{bad}: {body}"
        );
    }
}

/// Connections never timed out: one sending its headers a byte a second
/// stayed open past 90 s, idle keep-alive connections too, and with a low
/// file-descriptor limit idle sockets made every new client time out.
#[tokio::test]
async fn connections_are_bounded_in_number_and_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::with(|c| {
        c.connections_max = 4;
        c.idle_timeout_ms = 31_000;
        c.request_read_timeout_ms = 500;
    })
    .await;
    let addr = s.running.addr;
    // Closed by the server: reads end (EOF or reset) within `within`.
    async fn closed_within(
        stream: &mut tokio::net::TcpStream,
        within: std::time::Duration,
    ) -> bool {
        let mut buf = [0u8; 1024];
        let read = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, read).await.is_ok()
    }

    // Slowloris: a byte every 150 ms is cut off soon after 500 ms.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = std::time::Instant::now();
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa" {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        if started.elapsed() > std::time::Duration::from_secs(5) {
            break;
        }
    }
    assert!(
        closed_within(&mut slow, std::time::Duration::from_secs(2)).await,
        "a request dribbled a byte at a time stayed open"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A cap: four idle connections hold every slot; a fifth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut fifth = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        fifth.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "a connection past the cap was left hanging");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 429 ") && answer.contains("connections_full"),
        "a connection past the cap is told why, then closed: {answer}"
    );
    // An HTTP client sees the same answer.
    let refused = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("an answer, not a reset");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // One slot comes back when an idle connection closes.
    idle.pop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let s = TestServer::with(|c| {
        c.queue.decide_timeout_ms = 500;
        c.idle_timeout_ms = 1_000;
    })
    .await;
    let mut idle = tokio::net::TcpStream::connect(s.running.addr)
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "closed too early"
    );
}

/// A stream whose client stopped reading held its connection and its slot
/// forever (64 dashboards so held shut the dashboard out). Once the
/// buffers are full its writes make no progress, so it is idle, and
/// closed. (The dashboard's stream is the same connection underneath; its
/// second-by-second snapshots take minutes to fill loopback's buffers.)
#[tokio::test]
async fn a_stream_whose_client_stopped_reading_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::with(|c| {
        c.queue.decide_timeout_ms = 500;
        c.idle_timeout_ms = 1_500;
    })
    .await;
    // Small buffers, so a client that does not read stalls the server's writes soon.
    let open = |path: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4_096).expect("rcvbuf");
        let mut stream = socket.connect(s.running.addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("request");
        stream
    };
    let mut events = open("/v1/events?client=reader").await;
    // Outcomes for the event stream, far more than the buffers hold.
    let filler = "x".repeat(2_000);
    for i in 0..300 {
        let (status, _) = s
            .post(json!({"collection": "c", "key": format!("k{i}"), "op": "put", "client": "reader", "value": {"f": filler}}))
            .await;
        assert_eq!(status, 200);
    }
    // The client has not read a byte. Past the idle time-out its stream is
    // closed: reading now drains what was buffered, then ends.
    tokio::time::sleep(std::time::Duration::from_millis(4_000)).await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0usize;
    let drained = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match events.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the event stream is still open after its client stopped reading ({read} bytes read since)"
    );
    assert!(read > 0, "the event stream sent nothing at all");
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
}

/// Under `ulimit -n 256`, 363 idle sockets made every new client time out
/// (`accept error: Too many open files` in a loop). The cap now stays
/// within the file-descriptor limit: past it a new connection is closed at
/// once instead of hanging, and clients are served again as soon as a slot
/// frees. The real binary, started under `ulimit -n 256`.
#[tokio::test]
async fn connections_stay_within_the_file_descriptor_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = tempfile::tempdir().expect("temp dir");
    let port = crate::support::free_port();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" serve --listen \"$1\" --data-dir \"$2\"")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sluice");
    let url = format!("http://127.0.0.1:{port}");
    crate::support::wait_healthy(&reqwest::Client::new(), &url).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // Ask for /healthz on a new connection: the answer's first bytes, or
    // nothing if it was closed; `None` if it hung.
    async fn probe(addr: std::net::SocketAddr) -> Option<Vec<u8>> {
        let mut client = tokio::net::TcpStream::connect(addr).await.ok()?;
        let _ = client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            client.read_to_end(&mut answer),
        )
        .await
        .ok()
        .map(|_| answer)
    }
    // More idle connections than 256 descriptors can hold.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let full = probe(addr).await;
    assert!(
        full.as_ref()
            .is_some_and(|a| !a.starts_with(b"HTTP/1.1 200")),
        "with every slot taken, a new connection should be closed at once: {full:?}"
    );
    idle.clear();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let freed = probe(addr).await.unwrap_or_default();
    assert!(
        freed.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&freed)
    );
    let _ = child.kill();
    let output = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("lowered"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}
