//! `POST /v1/mutations:simulate`: decided as a lane would, nothing written
//! or recorded, handlers run as a dry run.

use crate::support::{TestServer, error_code};
use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

async fn simulate(s: &TestServer, body: Value) -> (u16, Value) {
    s.post_raw("/v1/mutations:simulate", body.to_string()).await
}

/// The document's version and the stored answer of `id`, to show that a
/// simulation changed nothing.
async fn untouched(s: &TestServer, collection: &str, version: u64, id: &str) {
    let (_, doc) = s.get(&format!("/v1/documents/{collection}/k")).await;
    assert_eq!(doc["version"], json!(version), "{doc}");
    let (status, _) = s.get(&format!("/v1/mutations/{id}?client=alice")).await;
    assert_eq!(status, 404, "{id} has no answer: nothing was recorded");
}

#[tokio::test]
async fn a_simulation_says_what_would_happen_and_writes_nothing() {
    let s = TestServer::embedded().await;
    for (id, value) in [
        ("b1", json!({"n": 1, "tags": ["a"]})),
        ("b2", json!({"n": 2})),
    ] {
        let (status, body) = s
            .post(json!({"id": id, "client": "bob", "collection": "notes", "key": "k", "op": "patch", "value": value}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Optimistic: a stale base would be rejected.
    let stale = json!({"id": "a1", "client": "alice", "collection": "notes", "key": "k", "op": "patch",
                       "value": {"n": 9}, "base_version": 1});
    let (status, body) = simulate(&s, stale.clone()).await;
    assert_eq!(status, 200, "{body}");
    let r = &body["results"][0];
    assert_eq!(r["would_conflict"], json!(true), "{r}");
    assert_eq!(r["outcome"], json!("rejected"));
    assert_eq!(
        (r["version"].clone(), r["current_version"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(r["handler"], json!("optimistic"));
    assert!(
        r["reason"].as_str().is_some_and(|t| t.contains("behind")),
        "{r}"
    );
    assert!(
        r["score"]
            .as_f64()
            .is_some_and(|p| (0.0..=1.0).contains(&p)),
        "{r}"
    );
    assert!(
        r["expected_wait_ms"].as_f64().is_some_and(|w| w >= 0.0),
        "{r}"
    );
    untouched(&s, "notes", 2, "a1").await;

    // Automerge: the merged item (tags a set: the union with what version 2
    // holds, a patch having replaced the list), still nothing written.
    s.put(
        "/v1/collections/merged",
        json!({"handler": "automerge", "set_fields": ["tags"]}),
    )
    .await;
    for value in [json!({"tags": ["a"]}), json!({"tags": ["b"]})] {
        let (status, _) = s
            .post(json!({"collection": "merged", "key": "k", "op": "patch", "value": value}))
            .await;
        assert_eq!(status, 200);
    }
    let (_, body) = simulate(
        &s,
        json!({"id": "a2", "client": "alice", "collection": "merged", "key": "k", "op": "patch",
               "value": {"tags": ["c"]}, "base_version": 1}),
    )
    .await;
    let r = &body["results"][0];
    assert_eq!(r["outcome"], json!("merged"), "{r}");
    assert_eq!(r["version"], json!(3));
    assert_eq!(r["item"]["tags"], json!(["b", "c"]));
    untouched(&s, "merged", 2, "a2").await;

    // A batch is decided in order: the second sees what the first would leave.
    let (status, body) = simulate(
        &s,
        json!({"mutations": [
            {"id": "a3", "client": "alice", "collection": "notes", "key": "k", "op": "patch", "value": {"x": 1}, "base_version": 2},
            {"id": "a4", "client": "alice", "collection": "notes", "key": "k", "op": "patch", "value": {"y": 1}, "base_version": 2},
            {"id": "a5", "client": "alice", "collection": "notes", "key": "new", "op": "delete"}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(
        (results[0]["outcome"].clone(), results[0]["version"].clone()),
        (json!("applied"), json!(3))
    );
    assert_eq!(results[1]["current_version"], json!(3), "{}", results[1]);
    assert_eq!(
        results[1]["outcome"],
        json!("rejected"),
        "its base is behind the first"
    );
    assert_eq!(results[2]["outcome"], json!("not_found"));
    untouched(&s, "notes", 2, "a3").await;
}

#[tokio::test]
async fn a_simulation_refuses_what_it_would_refuse_and_is_bounded() {
    let s = TestServer::embedded().await;
    let one = |i: usize| json!({"id": format!("m{i}"), "collection": "c", "key": "k", "op": "put", "value": {"i": i}});
    let (status, body) = simulate(
        &s,
        json!({"mutations": (0..101).map(one).collect::<Vec<_>>()}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 to 100")),
        "{body}"
    );
    let (status, body) = simulate(
        &s,
        json!({"mutations": (0..100).map(one).collect::<Vec<_>>()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(100));
    let (status, body) = simulate(
        &s,
        json!({"mutations": [one(0), {"collection": "c", "op": "put"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "invalid_mutation");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("mutations[1]")),
        "{body}"
    );
    let (status, body) = simulate(
        &s,
        json!({"collection": "c", "key": "k", "op": "put", "value": {}, "typo": 1}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = s.get("/v1/documents/c/k").await;
    assert_eq!(status, 404, "nothing of it was written");
}

#[tokio::test]
async fn a_webhook_runs_as_a_dry_run_and_the_real_write_may_differ() {
    let s = TestServer::embedded().await;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let url = {
        let seen = seen.clone();
        crate::support::webhook(post(move |Json(ctx): Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push(ctx["dry_run"].clone());
                Json(json!({"action": "resolve", "item": {"merged": true}}))
            }
        }))
        .await
    };
    let (status, _) = s
        .put(
            "/v1/collections/hook",
            json!({"handler": {"webhook": {"url": url, "timeout_ms": 2000}}}),
        )
        .await;
    assert_eq!(status, 200);
    for n in 1..=2 {
        s.post(json!({"collection": "hook", "key": "k", "op": "put", "value": {"n": n}}))
            .await;
    }
    let stale = json!({"id": "w1", "client": "alice", "collection": "hook", "key": "k", "op": "patch",
                       "value": {"n": 0}, "base_version": 1});
    let (_, body) = simulate(&s, stale.clone()).await;
    assert_eq!(body["results"][0]["outcome"], json!("merged"), "{body}");
    assert_eq!(body["results"][0]["handler"], json!("webhook"));
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![json!(true)],
        "the webhook was told"
    );
    untouched(&s, "hook", 2, "w1").await;
    let (status, body) = s.post(stale).await;
    assert_eq!(
        (status, body["outcome"].clone()),
        (200, json!("merged")),
        "{body}"
    );
    assert_eq!(
        seen.lock().expect("lock")[1],
        Value::Null,
        "a real run is not a dry run"
    );

    // Simulated as applying, contradicted by a write in between: the real
    // outcome is the one answered and recorded.
    let (_, body) = simulate(
        &s,
        json!({"id": "o1", "client": "alice", "collection": "plain", "key": "k", "op": "put", "value": {"v": 1}, "base_version": 0}),
    )
    .await;
    assert_eq!(body["results"][0]["outcome"], json!("applied"), "{body}");
    s.post(
        json!({"client": "bob", "collection": "plain", "key": "k", "op": "put", "value": {"v": 2}}),
    )
    .await;
    let (status, body) = s
        .post(json!({"id": "o1", "client": "alice", "collection": "plain", "key": "k", "op": "put", "value": {"v": 1}, "base_version": 0}))
        .await;
    assert_eq!(
        (status, body["outcome"].clone()),
        (409, json!("rejected")),
        "{body}"
    );
    let (_, stored) = s.get("/v1/mutations/o1?client=alice").await;
    assert_eq!(stored["outcome"], json!("rejected"), "{stored}");
}
