//! The quarantine (`on_handler_failure: quarantine`): a mutation whose
//! script or webhook failed is kept with its reason instead of rejected,
//! its lane goes on, resends and `GET /v1/mutations/{id}` say so, an
//! operator retries or discards it, its final answer reaches its client's
//! event stream, it survives a restart, and a full quarantine refuses.
//! Also a client's pending list.

use crate::accepts::read_events;
use crate::openapi::{conforms, description};
use crate::support::{TestServer, error_code};
use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A function service that fails (500) until `healthy` is set, then
/// resolves every conflict by merging the incoming fields over the server's.
async fn flaky_service(healthy: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/resolve", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/resolve",
        post(move |Json(ctx): Json<Value>| {
            let healthy = healthy.clone();
            async move {
                if !healthy.load(Ordering::SeqCst) {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        Json(json!({"error": "down"})),
                    );
                }
                let mut item = ctx["existing"].clone();
                for (k, v) in ctx["incoming"].as_object().cloned().unwrap_or_default() {
                    item[k] = v;
                }
                (
                    axum::http::StatusCode::OK,
                    Json(json!({"action": "resolve", "item": item})),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

fn conflicting(id: &str, value: Value) -> Value {
    json!({"id": id, "client": "ann", "collection": "q", "key": "doc", "op": "patch",
           "value": value, "base_version": 1})
}

/// A server whose collection `q` resolves conflicts through the flaky
/// service and quarantines what it cannot decide; `doc` is at version 2.
async fn quarantining(
    adjust: impl FnOnce(&mut sluice_server::config::Config),
) -> (TestServer, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(false));
    let url = flaky_service(healthy.clone()).await;
    let s = TestServer::with(adjust).await;
    let (status, body) = s
        .put(
            "/v1/collections/q",
            json!({"handler": {"webhook": {"url": url, "timeout_ms": 2000}},
                   "on_handler_failure": "quarantine"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for v in [1, 2] {
        let (status, _) = s
            .post(json!({"collection": "q", "key": "doc", "op": "put", "value": {"v": v}}))
            .await;
        assert_eq!(status, 200);
    }
    (s, healthy)
}

#[tokio::test]
async fn a_failed_webhook_quarantines_and_a_retry_after_it_recovers_merges() {
    let (s, healthy) = quarantining(|_| {}).await;
    let mut events = s
        .http
        .get(format!("{}/v1/events?client=ann", s.url))
        .send()
        .await
        .expect("events");
    let (status, answer) = s.post(conflicting("m1", json!({"note": "hi"}))).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["id"], json!("m1"));
    assert_eq!(answer["status"], json!("quarantined"));
    assert!(
        answer["reason"].as_str().is_some_and(|r| r.contains("500")),
        "{answer}"
    );

    // The lane goes on: the next mutation of the document is decided.
    let (status, next) = s
        .post(json!({"client": "ann", "collection": "q", "key": "doc", "op": "patch", "value": {"v": 3}}))
        .await;
    assert_eq!((status, &next["version"]), (200, &json!(3)), "{next}");

    let (status, looked_up) = s.get("/v1/mutations/m1?client=ann").await;
    assert_eq!((status, &looked_up), (200, &answer), "GET says the same");
    let (status, listed) = s.get("/v1/quarantine?collection=q").await;
    assert_eq!(status, 200);
    let entries = listed["quarantined"].as_array().expect("list");
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["id"], json!("m1"));
    assert_eq!(entries[0]["client"], json!("ann"));
    assert_eq!(entries[0]["mutation"]["value"], json!({"note": "hi"}));
    let (_, pending) = s.get("/v1/mutations?client=ann&status=quarantined").await;
    assert_eq!(pending["mutations"][0]["id"], json!("m1"), "{pending}");
    assert_eq!(pending["mutations"][0]["status"], json!("quarantined"));

    // Still failing: a retry keeps it.
    let (status, again) = s.post_raw("/v1/quarantine/ann/m1:retry", "").await;
    assert_eq!(
        (status, &again["status"]),
        (202, &json!("quarantined")),
        "{again}"
    );

    // Recovered: the retry decides it against the document as it is now.
    healthy.store(true, Ordering::SeqCst);
    let (status, merged) = s.post_raw("/v1/quarantine/ann/m1:retry", "").await;
    assert_eq!(status, 200, "{merged}");
    // Every answer above as the description says.
    let spec = description(&s).await;
    conforms(&spec, "post", "/v1/mutations", 202, &answer);
    conforms(&spec, "get", "/v1/mutations/{id}", 200, &looked_up);
    conforms(&spec, "get", "/v1/quarantine", 200, &listed);
    conforms(&spec, "get", "/v1/mutations", 200, &pending);
    conforms(
        &spec,
        "post",
        "/v1/quarantine/{client}/{id}:retry",
        202,
        &again,
    );
    conforms(
        &spec,
        "post",
        "/v1/quarantine/{client}/{id}:retry",
        200,
        &merged,
    );
    assert_eq!(merged["outcome"], json!("merged"));
    assert_eq!(merged["item"], json!({"v": 3, "note": "hi"}));
    assert_eq!(merged["version"], json!(4));
    let (_, listed) = s.get("/v1/quarantine").await;
    assert_eq!(listed["quarantined"], json!([]), "it left the quarantine");
    let (status, final_answer) = s.get("/v1/mutations/m1?client=ann").await;
    assert_eq!((status, &final_answer), (200, &merged));
    // Its final answer reached ann's stream (after the plain patch's).
    let received = read_events(&mut events, 2).await;
    assert_eq!(received[1].2, merged, "{received:?}");
    let (status, _) = s.post_raw("/v1/quarantine/ann/m1:retry", "").await;
    assert_eq!(status, 404, "nothing left to retry");
}

#[tokio::test]
async fn a_resend_of_a_quarantined_id_says_the_same() {
    let (s, healthy) = quarantining(|_| {}).await;
    let (status, first) = s.post(conflicting("m1", json!({"note": "hi"}))).await;
    assert_eq!(status, 202);
    // Even once the handler would succeed: the resend is not a retry.
    healthy.store(true, Ordering::SeqCst);
    let (status, resent) = s.post(conflicting("m1", json!({"note": "hi"}))).await;
    assert_eq!((status, resent), (202, first));
    let (status, body) = s.post(conflicting("m1", json!({"note": "other"}))).await;
    assert_eq!((status, error_code(&body)), (422, "idempotency_key_reused"));
    let (_, doc) = s.get("/v1/documents/q/doc").await;
    assert_eq!(doc["version"], json!(2), "nothing was applied");
}

#[tokio::test]
async fn a_discard_rejects_with_reason_discarded() {
    let (s, _) = quarantining(|_| {}).await;
    let (status, _) = s.post(conflicting("m1", json!({"note": "hi"}))).await;
    assert_eq!(status, 202);
    let (status, discarded) = s.post_raw("/v1/quarantine/ann/m1:discard", "").await;
    assert_eq!(status, 200, "the discard succeeded: {discarded}");
    let spec = description(&s).await;
    conforms(
        &spec,
        "post",
        "/v1/quarantine/{client}/{id}:discard",
        200,
        &discarded,
    );
    assert_eq!(discarded["outcome"], json!("rejected"));
    assert_eq!(discarded["conflict"]["reason"], json!("discarded"));
    assert_eq!(discarded["version"], json!(2));
    assert_eq!(
        s.get("/v1/mutations/m1?client=ann").await,
        (200, discarded.clone())
    );
    assert_eq!(
        s.post(conflicting("m1", json!({"note": "hi"}))).await,
        (409, discarded),
        "a resend gets the rejection"
    );
    let (status, _) = s.post_raw("/v1/quarantine/ann/m1:discard", "").await;
    assert_eq!(status, 404);
    let (_, conflicts) = s.get("/v1/conflicts?collection=q").await;
    assert_eq!(conflicts["conflicts"][0]["reason"], json!("discarded"));
    let (status, body) = s.post_raw("/v1/quarantine/ann/m1:explode", "").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_full_quarantine_refuses_with_503() {
    let (s, _) = quarantining(|c| c.queue.quarantine_len_max = 1).await;
    let (status, _) = s.post(conflicting("m1", json!({"a": 1}))).await;
    assert_eq!(status, 202);
    let response = s
        .http
        .post(format!("{}/v1/mutations", s.url))
        .json(&conflicting("m2", json!({"b": 2})))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(error_code(&body), "quarantine_full");
    let (_, doc) = s.get("/v1/documents/q/doc").await;
    assert_eq!(doc["version"], json!(2), "nothing was applied");
    assert_eq!(
        s.get("/v1/mutations/m2?client=ann").await.0,
        404,
        "nothing kept"
    );
    let (_, stats) = s.get("/v1/stats").await;
    assert_eq!(stats["quarantined"], json!(1));
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("sluice_quarantined_mutations 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_mutations_quarantined_total 1"));
    assert!(metrics.contains("sluice_mutations_refused_total{reason=\"quarantine_full\"} 1"));
}

#[tokio::test]
async fn quarantined_mutations_survive_a_restart() {
    let (s, healthy) = quarantining(|_| {}).await;
    let (status, kept) = s.post(conflicting("m1", json!({"note": "hi"}))).await;
    assert_eq!(status, 202);
    let s = s
        .restart(|c| c.webhook_allow = vec!["127.0.0.1".into()])
        .await;
    assert_eq!(
        s.get("/v1/mutations/m1?client=ann").await,
        (200, kept.clone())
    );
    assert_eq!(
        s.post(conflicting("m1", json!({"note": "hi"}))).await,
        (202, kept)
    );
    healthy.store(true, Ordering::SeqCst);
    let (status, merged) = s.post_raw("/v1/quarantine/ann/m1:retry", "").await;
    assert_eq!(
        (status, &merged["outcome"]),
        (200, &json!("merged")),
        "{merged}"
    );
    let (status, again) = s.post_raw("/v1/quarantine/ann/m1:retry", "").await;
    assert_eq!(status, 404, "promoted once: {again}");
}

#[tokio::test]
async fn a_throwing_script_quarantines_too() {
    let s = TestServer::embedded().await;
    s.put(
        "/v1/collections/s",
        json!({"handler": {"script": "function resolve(ctx) { throw new Error('nope'); }"},
               "on_handler_failure": "quarantine"}),
    )
    .await;
    for v in [1, 2] {
        s.post(json!({"collection": "s", "key": "k", "op": "put", "value": {"v": v}}))
            .await;
    }
    let (status, answer) = s
        .post(json!({"id": "x", "collection": "s", "key": "k", "op": "put", "value": {}, "base_version": 1}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("nope")),
        "{answer}"
    );
    // Without the setting, the same failure rejects.
    s.put(
        "/v1/collections/s",
        json!({"handler": {"script": "function resolve(ctx) { throw new Error('nope'); }"}}),
    )
    .await;
    let (status, _) = s
        .post(json!({"id": "y", "collection": "s", "key": "k", "op": "put", "value": {}, "base_version": 1}))
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn a_clients_pending_list_shows_what_waits() {
    let s = TestServer::with(|c| c.script.time_ms_max = 5_000).await;
    let blocker = s.hold_lane("held", 1_500).await;
    for id in ["p1", "p2", "p3"] {
        let response = s
            .http
            .post(format!("{}/v1/mutations?wait=false", s.url))
            .json(&json!({"id": id, "client": "ann", "collection": "held", "key": "k", "op": "patch", "value": {"x": 1}}))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 202);
    }
    let (status, pending) = s.get("/v1/mutations?client=ann&status=queued").await;
    assert_eq!(status, 200);
    conforms(
        &description(&s).await,
        "get",
        "/v1/mutations",
        200,
        &pending,
    );
    let listed = pending["mutations"].as_array().expect("list");
    let ids: Vec<&str> = listed.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["p1", "p2", "p3"], "oldest first: {pending}");
    assert!(
        listed
            .iter()
            .all(|m| m["status"] == json!("queued") && m["score"].is_number())
    );
    assert!(
        listed
            .iter()
            .all(|m| m["waited_ms"].as_i64().is_some_and(|w| w >= 0))
    );
    let (_, others) = s.get("/v1/mutations?client=bob&status=queued").await;
    assert_eq!(others["mutations"], json!([]), "only the client's own");
    let (status, body) = s.get("/v1/mutations?client=ann&status=done").await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
    let (status, _) = s.get("/v1/quarantine?limit=0").await;
    assert_eq!(status, 400);
    blocker.await.expect("blocker");
    // Decided: nothing pending.
    for _ in 0..100 {
        let (_, pending) = s.get("/v1/mutations?client=ann&status=queued").await;
        if pending["mutations"] == json!([]) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the pending list never emptied");
}
