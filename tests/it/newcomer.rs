//! What a new user trips over: a refused mutation that must have no effect
//! anywhere, parameters that must be said rather than assumed, and errors
//! that say what was wrong and what to send instead.

use crate::support::{TestServer, error_code, sample};
use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A webhook that merges and counts its calls.
async fn counting_webhook() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let resolve = move |Json(ctx): Json<Value>| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Json(json!({"action": "resolve", "item": ctx["incoming"]}))
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().route("/r", post(resolve))).await
    });
    (format!("http://{addr}/r"), calls)
}

/// `m1` applied at version 1, another client's write to version 2, then
/// `m1` again with another body and the stale base 1: refused with 422, and
/// its handler never runs.
async fn reuse_m1(s: &TestServer, collection: &str) {
    let id = format!("m1-{collection}");
    let (status, body) = s
        .post(json!({"id": id, "client": "alice", "collection": collection, "key": "k", "op": "put", "value": {"n": 1}}))
        .await;
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    let (status, _) = s
        .post(json!({"client": "bob", "collection": collection, "key": "k", "op": "put", "value": {"n": 2}}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .post(json!({"id": id, "client": "alice", "collection": collection, "key": "k", "op": "put", "value": {"n": 3}, "base_version": 1}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(error_code(&body), "idempotency_key_reused");
    // The document is as bob left it.
    let (_, doc) = s.get(&format!("/v1/documents/{collection}/k")).await;
    assert_eq!(
        (&doc["version"], &doc["item"]),
        (&json!(2), &json!({"n": 2}))
    );
}

#[tokio::test]
async fn a_refused_mutation_never_reaches_a_handler() {
    let s = TestServer::embedded().await;
    let (url, calls) = counting_webhook().await;
    let (status, _) = s
        .put(
            "/v1/collections/hook",
            json!({"handler": {"webhook": {"url": url}}}),
        )
        .await;
    assert_eq!(status, 200);
    reuse_m1(&s, "hook").await;
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the webhook was called");

    let (status, _) = s
        .put(
            "/v1/collections/script",
            json!({"handler": {"script": "function resolve(ctx) { return {action: 'resolve', item: ctx.incoming}; }"}}),
        )
        .await;
    assert_eq!(status, 200);
    reuse_m1(&s, "script").await;
    let runs = sample(
        &s.metrics().await,
        "sluice_handler_seconds_count{handler=\"script\"}",
    );
    assert_eq!(runs, 0.0, "the script ran");

    // A true conflict still reaches both, once each.
    let (status, body) = s
        .post(json!({"client": "carol", "collection": "hook", "key": "k", "op": "put", "value": {"n": 4}, "base_version": 1}))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("merged")),
        "{body}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let (status, body) = s
        .post(json!({"client": "carol", "collection": "script", "key": "k", "op": "put", "value": {"n": 4}, "base_version": 1}))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("merged")),
        "{body}"
    );
    let runs = sample(
        &s.metrics().await,
        "sluice_handler_seconds_count{handler=\"script\"}",
    );
    assert_eq!(runs, 1.0);
}

/// `GET path` answers 400 with a message containing every one of `says`.
async fn refused(s: &TestServer, path: &str, says: &[&str]) {
    let (status, body) = s.get(path).await;
    assert_eq!(status, 400, "{path}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    for part in says {
        assert!(message.contains(part), "{path}: {message:?} lacks {part:?}");
    }
}

#[tokio::test]
async fn queries_are_read_strictly_and_errors_say_what_to_send() {
    let s = TestServer::embedded().await;
    // An answer that belongs to one client needs that client named.
    refused(&s, "/v1/mutations/a1", &["\"client\" is required"]).await;
    refused(
        &s,
        "/v1/mutations?status=queued",
        &["\"client\" is required"],
    )
    .await;
    refused(&s, "/v1/events", &["\"client\" is required"]).await;
    // The anonymous client is named by an empty value.
    let (status, body) = s.get("/v1/mutations/a1?client=").await;
    assert_eq!(status, 404, "{body}");

    // A misspelt filter is refused, naming what the route takes.
    refused(
        &s,
        "/v1/conflicts?colection=notes&limit=1",
        &[
            "unknown query parameter \"colection\"",
            "collection",
            "limit",
        ],
    )
    .await;
    refused(&s, "/v1/stats?verbose=1", &["takes no query parameters"]).await;
    refused(
        &s,
        "/v1/conflicts?limit=abc",
        &["\"limit\" takes a whole number", "got \"abc\""],
    )
    .await;
    refused(&s, "/v1/conflicts?limit=5&limit=6", &["given twice"]).await;

    // `status` is optional: both kinds when absent; a bad limit is named.
    let (status, body) = s.get("/v1/mutations?client=alice").await;
    assert_eq!((status, &body), (200, &json!({"mutations": []})));
    refused(&s, "/v1/mutations?client=alice&limit=0", &["limit"]).await;
    refused(
        &s,
        "/v1/mutations?client=alice&status=done",
        &["queued or quarantined"],
    )
    .await;
}

#[tokio::test]
async fn a_script_with_a_syntax_error_is_refused_with_its_position() {
    let s = TestServer::embedded().await;
    let (status, body) = s
        .put(
            "/v1/collections/broken",
            json!({"handler": {"script": "function resolve(ctx) {\n  return {"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("syntax error at line 2, column 11"),
        "{message}"
    );
}

/// POSTs `body` as JSON to `path`: 400 with a message containing every one
/// of `says`, and no Rust type name.
async fn body_refused(s: &TestServer, path: &str, body: &str, says: &[&str]) {
    let (status, answer) = s.post_raw(path, body.to_owned()).await;
    assert_eq!(status, 400, "{path} {body}: {answer}");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    for part in says {
        assert!(message.contains(part), "{body}: {message:?} lacks {part:?}");
    }
    for rust in [
        "BatchBody",
        "MutationBody",
        "struct ",
        "u64",
        "i64",
        "sequence",
    ] {
        assert!(!message.contains(rust), "{body}: {message:?} says {rust:?}");
    }
}

#[tokio::test]
async fn body_errors_say_what_to_send_instead() {
    let s = TestServer::embedded().await;
    let one = r#"{"collection": "c", "key": "k", "op": "put", "value": {}}"#;
    body_refused(
        &s,
        "/v1/mutations:batch",
        &format!("[{one}]"),
        &["a list", r#"{"mutations": ["#],
    )
    .await;
    body_refused(
        &s,
        "/v1/mutations:batch",
        "[]",
        &["a list", r#"{"mutations": ["#],
    )
    .await;
    body_refused(
        &s,
        "/v1/mutations:batch",
        r#"{"mutations": []}"#,
        &["1 to 1000 mutations, got 0"],
    )
    .await;
    body_refused(
        &s,
        "/v1/mutations:batch",
        &format!(r#"{{"mutations": [{one}, [{one}]]}}"#),
        &["mutations[1]", "a list"],
    )
    .await;
    body_refused(
        &s,
        "/v1/mutations",
        &format!("[{one}]"),
        &["one mutation", "/v1/mutations:batch"],
    )
    .await;
    body_refused(
        &s,
        "/v1/mutations",
        &format!(r#"{{"mutations": [{one}]}}"#),
        &["this is a batch", "/v1/mutations:batch"],
    )
    .await;
    body_refused(
        &s,
        "/v1/mutations",
        r#"{"collection": "c", "key": "k", "op": "put", "value": {}, "base_version": "3"}"#,
        &["base_version must be a JSON number", "got string \"3\""],
    )
    .await;
    body_refused(
        &s,
        "/v1/mutations",
        r#"{"collection": "c", "op": "put", "value": {}}"#,
        &["key is required"],
    )
    .await;
    body_refused(
        &s,
        "/v1/mutations",
        r#"{"collection": "c", "key": "k", "op": "put", "value": {}, "colour": 1}"#,
        &["unknown field \"colour\"", "collection"],
    )
    .await;
}
