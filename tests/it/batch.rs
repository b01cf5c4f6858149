//! `POST /v1/mutations:batch`: an offline client's outbox, in order, all or nothing.

use crate::support::{TestServer, error_code};
use serde_json::{Value, json};

fn outbox(key: &str, n: u64) -> Vec<Value> {
    let mut mutations = vec![
        json!({"id": format!("{key}-0"), "client": "phone", "collection": "c", "key": key,
                                    "op": "put", "value": {"items": []}, "base_version": 0}),
    ];
    for i in 1..n {
        mutations.push(
            json!({"id": format!("{key}-{i}"), "client": "phone", "collection": "c", "key": key,
                              "op": "patch", "value": {"last": i}, "base_version": i}),
        );
    }
    mutations
}

#[tokio::test]
async fn a_batch_applies_in_order_and_answers_each_as_alone() {
    let s = TestServer::embedded().await;
    let mut mutations = outbox("a", 5);
    mutations.push(json!({"collection": "c", "key": "nothing-here", "op": "delete"}));
    mutations.push(json!({"id": "a-1", "client": "phone", "collection": "c", "key": "a", "op": "patch", "value": {"last": 1}, "base_version": 1}));
    let (status, body) = s
        .post_raw(
            "/v1/mutations:batch",
            json!({"mutations": mutations}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 7);
    for (i, result) in results.iter().take(5).enumerate() {
        // Each base is the version the previous mutation of the outbox makes: applied in order.
        assert_eq!(
            (result["outcome"].clone(), result["version"].clone()),
            (json!("applied"), json!(i + 1)),
            "{result}"
        );
        assert_eq!(result["id"], json!(format!("a-{i}")));
    }
    assert_eq!(error_code(&results[5]), "not_found");
    assert_eq!(
        results[6], results[1],
        "a repeated id within the batch gets the original's answer"
    );
    assert_eq!(s.get("/v1/documents/c/a").await.1["version"], json!(5));

    // The same outbox again (a client that never heard back): the same answers, nothing applied twice.
    let (status, again) = s
        .post_raw(
            "/v1/mutations:batch",
            json!({"mutations": outbox("a", 5)}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        again["results"].as_array().map(|r| r[..5].to_vec()),
        Some(results[..5].to_vec())
    );
    assert_eq!(s.get("/v1/documents/c/a").await.1["version"], json!(5));
}

#[tokio::test]
async fn validation_and_admission_are_all_or_nothing() {
    let s = TestServer::with(|c| c.queue.lane_len_max = 3).await;
    let mut bad = outbox("b", 4);
    bad[2]["op"] = json!("upsert");
    let (status, body) = s
        .post_raw("/v1/mutations:batch", json!({"mutations": bad}).to_string())
        .await;
    assert_eq!((status, error_code(&body)), (400, "invalid_mutation"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("mutations[2]")),
        "{body}"
    );
    assert_eq!(
        s.get("/v1/documents/c/b").await.0,
        404,
        "nothing of a refused batch is applied"
    );

    // Five mutations for one document do not fit a lane of three: the whole batch is refused.
    let response = s
        .http
        .post(format!("{}/v1/mutations:batch", s.url))
        .header("content-type", "application/json")
        .body(json!({"mutations": outbox("b", 5)}).to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(error_code(&body), "lane_full");
    assert_eq!(s.get("/v1/documents/c/b").await.0, 404);
    // A batch that fits goes through, and the ids of the refused one were freed.
    let (status, body) = s
        .post_raw(
            "/v1/mutations:batch",
            json!({"mutations": outbox("b", 3)}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/v1/documents/c/b").await.1["version"], json!(3));

    for body in [
        json!({"mutations": []}),
        json!({"mutations": vec![json!({"collection": "c", "key": "k", "op": "delete"}); 1_001]}),
        json!({"items": []}),
    ] {
        let (status, answer) = s.post_raw("/v1/mutations:batch", body.to_string()).await;
        assert_eq!((status, error_code(&answer)), (400, "invalid_mutation"));
    }
}
