//! Shadow handlers: a candidate handler runs beside the live one on real
//! conflicts, its result compared and never written.

use crate::support::TestServer;
use serde_json::{Value, json};
use std::time::Duration;

/// The collection's shadow report once it has `n` comparisons or failures.
async fn report_after(s: &TestServer, collection: &str, n: u64) -> Value {
    for _ in 0..100 {
        let (status, report) = s
            .get(&format!("/v1/collections/{collection}/shadow-report"))
            .await;
        assert_eq!(status, 200, "{report}");
        let seen =
            report["compared"].as_u64().unwrap_or(0) + report["failed"].as_u64().unwrap_or(0);
        if seen >= n {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the shadow report never reached {n}");
}

/// Versions 1 and 2 of `collection/k`, then a patch based on 1: a conflict.
async fn conflict(s: &TestServer, collection: &str, key: &str) -> (u16, Value) {
    for value in [json!({"a": 1, "tags": ["x"]}), json!({"a": 2})] {
        let (status, answer) = s
            .post(json!({"collection": collection, "key": key, "op": "patch", "value": value}))
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let (_, doc) = s.get(&format!("/v1/documents/{collection}/{key}")).await;
    let base = doc["version"].as_u64().expect("version") - 1;
    s.post(
        json!({"client": "bob", "collection": collection, "key": key, "op": "patch",
                  "value": {"b": 1}, "base_version": base}),
    )
    .await
}

#[tokio::test]
async fn a_shadow_handler_is_compared_on_conflicts_and_never_written() {
    let s = TestServer::embedded().await;
    let (status, body) = s
        .put(
            "/v1/collections/notes",
            json!({"handler": "automerge", "shadow_handler": "optimistic"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, shown) = s.get("/v1/collections/notes").await;
    assert_eq!(shown["shadow_handler"], "optimistic", "{shown}");

    // No conflict, nothing to compare.
    let (status, _) = s
        .post(json!({"collection": "notes", "key": "calm", "op": "put", "value": {"a": 1}}))
        .await;
    assert_eq!(status, 200);
    let (status, live) = conflict(&s, "notes", "k").await;
    assert_eq!(
        (status, live["outcome"].as_str()),
        (200, Some("merged")),
        "{live}"
    );
    let report = report_after(&s, "notes", 1).await;
    assert_eq!(
        (
            &report["compared"],
            &report["agreed"],
            &report["disagreed"],
            &report["failed"]
        ),
        (&json!(1), &json!(0), &json!(1), &json!(0)),
        "{report}"
    );
    let d = &report["disagreements"][0];
    assert_eq!(
        (d["key"].as_str(), d["client"].as_str()),
        (Some("k"), Some("bob")),
        "{d}"
    );
    assert_eq!(d["live"]["outcome"], "merged", "{d}");
    assert_eq!(d["live"]["item"]["b"], 1, "{d}");
    assert_eq!(d["shadow"]["outcome"], "rejected", "{d}");
    assert!(d["shadow"]["item"].is_null(), "{d}");
    // The live data is the live handler's.
    let (_, doc) = s.get("/v1/documents/notes/k").await;
    assert_eq!(
        (doc["item"]["b"].as_i64(), doc["version"].as_u64()),
        (Some(1), Some(3)),
        "{doc}"
    );

    // The same logic as a shadow agrees.
    let (status, _) = s
        .put(
            "/v1/collections/same",
            json!({"handler": "automerge", "shadow_handler": "automerge"}),
        )
        .await;
    assert_eq!(status, 200);
    conflict(&s, "same", "k").await;
    let report = report_after(&s, "same", 1).await;
    assert_eq!(
        (&report["agreed"], &report["disagreed"]),
        (&json!(1), &json!(0)),
        "{report}"
    );
    assert_eq!(report["agreement_rate"], 1.0);
    assert_eq!(report["disagreements"], json!([]));
}

#[tokio::test]
async fn a_shadow_handler_that_throws_leaves_the_live_outcome_alone() {
    let s = TestServer::embedded().await;
    let (status, error) = s
        .put("/v1/collections/notes", json!({"handler": "optimistic", "shadow_handler": {"script": "function resolve(ctx) {"}}))
        .await;
    assert_eq!(status, 400, "{error}");
    let message = error["error"]["message"].as_str().unwrap_or("");
    assert!(message.starts_with("shadow_handler: "), "{error}");

    let (status, body) = s
        .put("/v1/collections/notes", json!({"handler": "optimistic",
             "shadow_handler": {"script": "function resolve(ctx) { throw new Error('not yet'); }"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, live) = conflict(&s, "notes", "k").await;
    assert_eq!(
        (status, live["outcome"].as_str()),
        (409, Some("rejected")),
        "{live}"
    );
    assert!(
        live["conflict"]["reason"]
            .as_str()
            .is_some_and(|r| !r.contains("not yet")),
        "the live rejection is the live handler's: {live}"
    );
    let report = report_after(&s, "notes", 1).await;
    assert_eq!(
        (&report["failed"], &report["compared"]),
        (&json!(1), &json!(0)),
        "{report}"
    );
    let (_, doc) = s.get("/v1/documents/notes/k").await;
    assert_eq!(doc["version"], 2, "nothing of the shadow written: {doc}");

    // Without a shadow handler the report is empty, and says so.
    let (_, report) = s.get("/v1/collections/plain/shadow-report").await;
    assert_eq!(
        (&report["shadow_handler"], &report["compared"]),
        (&Value::Null, &json!(0)),
        "{report}"
    );
}
