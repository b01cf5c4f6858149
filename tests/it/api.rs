//! The HTTP contract of API v1, as a client meets it.

use crate::support::{TestServer, error_code};
use serde_json::json;

#[tokio::test]
async fn put_patch_delete_walk_versions_and_tombstones() {
    let s = TestServer::embedded().await;
    let (status, body) = s.get("/v1/documents/notes/a%2Fb").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));

    let (status, body) = s
        .post(
            json!({"collection": "notes", "key": "a/b", "op": "put", "value": {"t": 1, "l": [1]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["outcome"].clone(), body["version"].clone()),
        (json!("applied"), json!(1))
    );
    assert!(
        body["id"].as_str().is_some_and(|id| !id.is_empty()),
        "an id is generated: {body}"
    );
    assert_eq!(
        (body["conflict"].clone(), body["score"].clone()),
        (json!(null), json!(0.0)),
        "an unconditional mutation can never conflict: its score is 0"
    );
    assert!(body["queued_ms"].as_f64().is_some());

    let (_, body) = s.post(json!({"collection": "notes", "key": "a/b", "op": "patch", "value": {"t": null, "n": {"x": 1}}, "base_version": 1})).await;
    assert_eq!(
        (body["version"].clone(), body["item"].clone()),
        (json!(2), json!({"l": [1], "n": {"x": 1}}))
    );

    let (status, body) = s.get("/v1/documents/notes/a%2Fb").await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"collection": "notes", "key": "a/b", "version": 2, "item": {"l": [1], "n": {"x": 1}}})
        )
    );
    // The key may also be written with a literal slash.
    assert_eq!(
        s.get("/v1/documents/notes/a/b").await.1["version"],
        json!(2)
    );

    let (status, body) = s
        .post(json!({"collection": "notes", "key": "a/b", "op": "delete", "base_version": 2}))
        .await;
    assert_eq!(
        (
            status,
            body["outcome"].clone(),
            body["version"].clone(),
            body["item"].clone()
        ),
        (200, json!("applied"), json!(3), json!(null))
    );
    let (status, body) = s.get("/v1/documents/notes/a%2Fb").await;
    assert_eq!(
        (status, body["version"].clone(), body["item"].clone()),
        (200, json!(3), json!(null))
    );

    // Deleting a tombstone or a document never written: 404, version unchanged.
    let (status, body) = s
        .post(json!({"collection": "notes", "key": "a/b", "op": "delete"}))
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = s
        .post(json!({"collection": "notes", "key": "never", "op": "delete", "base_version": 0}))
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    assert_eq!(
        s.get("/v1/documents/notes/a%2Fb").await.1["version"],
        json!(3)
    );

    // A patch of a tombstone applies to {}.
    let (_, body) = s
        .post(json!({"collection": "notes", "key": "a/b", "op": "patch", "value": {"z": 1}}))
        .await;
    assert_eq!(
        (body["version"].clone(), body["item"].clone()),
        (json!(4), json!({"z": 1}))
    );
}

#[tokio::test]
async fn stale_and_future_bases_are_conflicts_and_absent_bases_never_are() {
    let s = TestServer::embedded().await;
    s.post(json!({"collection": "c", "key": "k", "op": "put", "value": {"v": 1}}))
        .await;
    s.post(json!({"collection": "c", "key": "k", "op": "put", "value": {"v": 2}}))
        .await;
    let (status, body) = s.post(json!({"collection": "c", "key": "k", "op": "put", "value": {"v": 3}, "base_version": 1})).await;
    assert_eq!(status, 409);
    assert_eq!(body["outcome"], json!("rejected"));
    assert_eq!(
        (body["version"].clone(), body["item"].clone()),
        (json!(2), json!({"v": 2}))
    );
    let conflict = &body["conflict"];
    assert_eq!(
        (
            conflict["base_version"].clone(),
            conflict["server_version"].clone(),
            conflict["handler"].clone()
        ),
        (json!(1), json!(2), json!("optimistic"))
    );
    assert!(
        conflict["reason"]
            .as_str()
            .is_some_and(|r| r.contains("behind")),
        "{body}"
    );

    let (status, body) = s.post(json!({"collection": "c", "key": "k", "op": "put", "value": {"v": 3}, "base_version": 9})).await;
    assert_eq!(status, 409);
    assert!(
        body["conflict"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ahead")),
        "{body}"
    );

    let (status, body) = s
        .post(json!({"collection": "c", "key": "k", "op": "put", "value": {"v": 3}}))
        .await;
    assert_eq!(
        (status, body["version"].clone(), body["conflict"].clone()),
        (200, json!(3), json!(null))
    );
    // base 0 on an existing document is a conflict ("it did not exist" is stale).
    let (status, _) = s
        .post(json!({"collection": "c", "key": "k", "op": "put", "value": {}, "base_version": 0}))
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let s = TestServer::embedded().await;
    let bad = [
        json!({"collection": "c", "key": "k", "op": "put", "value": {}, "extra": true}),
        json!({"collection": "c", "key": "k", "op": "merge", "value": {}}),
        json!({"collection": "c", "key": "k", "op": "put", "value": {}, "base_version": -1}),
        json!({"collection": "c", "key": "k", "op": "put", "value": "text"}),
        json!({"collection": "c", "key": "", "op": "put", "value": {}}),
        json!({"collection": "c", "key": "k".repeat(513), "op": "put", "value": {}}),
        json!({"collection": "no spaces", "key": "k", "op": "put", "value": {}}),
        json!({"collection": "c", "key": "k", "op": "patch"}),
        json!({"collection": "c", "key": "k", "op": "put", "value": {}, "ts_ms": "yesterday"}),
        json!({"id": "x".repeat(129), "collection": "c", "key": "k", "op": "put", "value": {}}),
    ];
    for body in bad {
        let (status, answer) = s.post(body.clone()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_mutation"),
            "{body}"
        );
    }
    let deep = format!(
        r#"{{"collection":"c","key":"k","op":"put","value":{}1{}}}"#,
        r#"{"a":"#.repeat(65),
        "}".repeat(65)
    );
    let (status, answer) = s.post_raw("/v1/mutations", deep).await;
    assert_eq!((status, error_code(&answer)), (400, "invalid_mutation"));
    let (status, answer) = s.post_raw("/v1/mutations", "{not json").await;
    assert_eq!((status, error_code(&answer)), (400, "invalid_mutation"));

    let value = "x".repeat(1_048_576);
    let (status, answer) = s
        .post_raw(
            "/v1/mutations",
            format!(r#"{{"collection":"c","key":"k","op":"put","value":{{"v":"{value}"}}}}"#),
        )
        .await;
    assert_eq!((status, error_code(&answer)), (413, "payload_too_large"));

    // Nothing of the above was applied, and the server still answers.
    assert_eq!(s.get("/v1/documents/c/k").await.0, 404);
    let (status, _) = s
        .post(json!({"collection": "c", "key": "k", "op": "put", "value": {"ok": true}}))
        .await;
    assert_eq!(status, 200);
    let (status, answer) = s.get("/v1/conflicts?limit=0").await;
    assert_eq!((status, error_code(&answer)), (400, "invalid_request"));
    let (status, answer) = s.get("/v1/conflicts?limit=many").await;
    assert_eq!((status, error_code(&answer)), (400, "invalid_request"));
    assert_eq!(s.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_resend_returns_the_original_answer_and_applies_nothing() {
    let s = TestServer::embedded().await;
    let first = json!({"id": "op-1", "client": "alice", "collection": "c", "key": "k", "op": "patch", "value": {"n": 1}});
    let (status, original) = s.post(first.clone()).await;
    assert_eq!(status, 200);
    // Field order does not make a different body.
    let reordered = json!({"value": {"n": 1}, "op": "patch", "key": "k", "collection": "c", "client": "alice", "id": "op-1"});
    for resend in [first.clone(), reordered] {
        assert_eq!(s.post(resend).await, (200, original.clone()));
    }
    assert_eq!(
        s.get("/v1/documents/c/k").await.1["version"],
        json!(1),
        "applied once"
    );

    let (status, body) = s.post(json!({"id": "op-1", "client": "alice", "collection": "c", "key": "k", "op": "patch", "value": {"n": 2}})).await;
    assert_eq!((status, error_code(&body)), (422, "idempotency_key_reused"));
    // Scoped to the client: bob and the anonymous client may use the same id.
    let (status, bob) = s.post(json!({"id": "op-1", "client": "bob", "collection": "c", "key": "k", "op": "patch", "value": {"n": 2}})).await;
    assert_eq!((status, bob["version"].clone()), (200, json!(2)));
    let (status, anon) = s
        .post(
            json!({"id": "op-1", "collection": "c", "key": "k", "op": "patch", "value": {"n": 3}}),
        )
        .await;
    assert_eq!((status, anon["version"].clone()), (200, json!(3)));

    assert_eq!(
        s.get("/v1/mutations/op-1?client=alice").await,
        (200, original)
    );
    assert_eq!(s.get("/v1/mutations/op-1?client=").await, (200, anon));
    let (status, body) = s.get("/v1/mutations/op-1?client=carol").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));

    // A rejection is a final answer too, and so is a 404 of a delete.
    let stale = json!({"id": "op-2", "client": "alice", "collection": "c", "key": "k", "op": "put", "value": {}, "base_version": 1});
    let (status, rejected) = s.post(stale.clone()).await;
    assert_eq!(status, 409);
    assert_eq!(s.post(stale).await, (409, rejected));
    let delete = json!({"id": "op-3", "collection": "c", "key": "gone", "op": "delete"});
    let (status, missing) = s.post(delete.clone()).await;
    assert_eq!(status, 404);
    assert_eq!(s.post(delete).await, (404, missing));
}

#[tokio::test]
async fn concurrent_resends_of_one_mutation_apply_it_once() {
    let s = TestServer::embedded().await;
    let body = json!({"id": "dup", "client": "c1", "collection": "c", "key": "k", "op": "patch", "value": {"l": [1]}});
    let sends: Vec<_> = (0..16).map(|_| s.spawn_post(body.clone())).collect();
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.expect("task"));
    }
    let first = answers[0].clone();
    assert_eq!(first.0, 200);
    assert!(
        answers.iter().all(|a| *a == first),
        "every resend gets the original answer"
    );
    assert_eq!(s.get("/v1/documents/c/k").await.1["version"], json!(1));
}

#[tokio::test]
async fn acknowledged_mutations_and_replies_survive_a_restart() {
    let s = TestServer::embedded().await;
    let body = json!({"id": "keep", "client": "c", "collection": "c", "key": "k", "op": "put", "value": {"v": 1}});
    let (status, original) = s.post(body.clone()).await;
    assert_eq!(status, 200);
    s.put(
        "/v1/collections/c",
        json!({"handler": "automerge", "set_fields": ["tags"]}),
    )
    .await;
    let data = s.stop().await;

    let mut config = sluice_server::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        ..Default::default()
    };
    config.shutdown_deadline_ms = 1_000;
    let s = TestServer::start_in(config, data).await;
    assert_eq!(s.get("/v1/documents/c/k").await.1["version"], json!(1));
    assert_eq!(
        s.post(body).await,
        (200, original),
        "the stored reply outlives the process"
    );
    assert_eq!(
        s.get("/v1/documents/c/k").await.1["version"],
        json!(1),
        "and the resend applied nothing"
    );
    assert_eq!(
        s.get("/v1/collections/c").await.1,
        json!({"handler": "automerge", "set_fields": ["tags"]})
    );
}

#[tokio::test]
async fn conflicts_are_listed_newest_first_and_filtered() {
    let s = TestServer::embedded().await;
    for key in ["a", "b"] {
        s.post(json!({"collection": "c", "key": key, "op": "put", "value": {"v": 0}}))
            .await;
        s.post(json!({"collection": "c", "key": key, "op": "put", "value": {"v": 1}}))
            .await;
        for i in 0..3 {
            s.post(json!({"id": format!("{key}{i}"), "client": "z", "collection": "c", "key": key, "op": "put", "value": {"v": i}, "base_version": 1})).await;
        }
    }
    let (status, body) = s.get("/v1/conflicts").await;
    assert_eq!(status, 200);
    let all = body["conflicts"].as_array().expect("a list");
    let ids: Vec<&str> = all
        .iter()
        .map(|c| c["mutation_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["b2", "b1", "b0", "a2", "a1", "a0"]);
    let one = &all[0];
    assert_eq!(
        (
            one["client"].clone(),
            one["collection"].clone(),
            one["key"].clone(),
            one["base_version"].clone(),
            one["server_version"].clone()
        ),
        (json!("z"), json!("c"), json!("b"), json!(1), json!(2))
    );
    assert_eq!(
        (
            one["handler"].clone(),
            one["resolution"].clone(),
            one["result"].clone()
        ),
        (json!("optimistic"), json!("rejected"), json!(null))
    );
    assert_eq!(
        (one["incoming"].clone(), one["existing"].clone()),
        (json!({"v": 2}), json!({"v": 1}))
    );
    assert!(one["at"].as_i64().is_some_and(|t| t > 0) && one["reason"].as_str().is_some());

    let (_, body) = s.get("/v1/conflicts?collection=c&key=a&limit=2").await;
    let ids: Vec<&str> = body["conflicts"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["mutation_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["a2", "a1"]);
    let (_, body) = s.get("/v1/conflicts?collection=other").await;
    assert_eq!(body, json!({"conflicts": []}));
}

#[tokio::test]
async fn collections_default_to_optimistic_and_refuse_bad_configurations() {
    let s = TestServer::embedded().await;
    assert_eq!(
        s.get("/v1/collections/fresh").await,
        (200, json!({"handler": "optimistic"}))
    );
    let bad = [
        json!({"handler": "pessimistic"}),
        json!({"handler": {"script": "function resolve( {"}}),
        json!({"handler": {"script": "var notAFunction = 1;"}}),
        json!({"handler": {"webhook": {"url": "not a url"}}}),
        json!({"handler": "automerge", "unknown": 1}),
        json!({"set_fields": ["x"]}),
    ];
    for body in bad {
        let (status, answer) = s.put("/v1/collections/fresh", body.clone()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_collection"),
            "{body}"
        );
    }
    let (status, answer) = s
        .put(
            "/v1/collections/bad%20name",
            json!({"handler": "automerge"}),
        )
        .await;
    assert_eq!((status, error_code(&answer)), (400, "invalid_request"));
    assert_eq!(
        s.get("/v1/collections/fresh").await.1["handler"],
        json!("optimistic"),
        "nothing half-applied"
    );

    let hook =
        json!({"handler": {"webhook": {"url": "http://127.0.0.1:9/resolve"}}, "set_fields": []});
    let (status, body) = s.put("/v1/collections/hooked", hook).await;
    // Defaults read back absent.
    assert_eq!(
        (status, body),
        (
            200,
            json!({"handler": {"webhook": {"url": "http://127.0.0.1:9/resolve"}}})
        )
    );
}

#[tokio::test]
async fn a_configured_default_handler_applies_to_unconfigured_collections() {
    let s =
        TestServer::with(|c| c.default_handler = sluice_server::resolve::Handler::Automerge).await;
    assert_eq!(
        s.get("/v1/collections/any").await.1["handler"],
        json!("automerge")
    );
    s.post(json!({"collection": "any", "key": "k", "op": "put", "value": {"l": [1]}}))
        .await;
    s.post(json!({"collection": "any", "key": "k", "op": "put", "value": {"l": [1]}}))
        .await;
    let (status, body) = s.post(json!({"collection": "any", "key": "k", "op": "patch", "value": {"l": [2]}, "base_version": 1})).await;
    assert_eq!(
        (status, body["outcome"].clone(), body["item"].clone()),
        (200, json!("merged"), json!({"l": [1, 2]}))
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let s = TestServer::with(|c| {
        c.queue.lane_len_max = 1;
        c.queue.lanes_in_flight_max = 1;
        c.script.time_ms_max = 5_000;
    })
    .await;
    // A slow script holds the only worker, so later mutations of the key wait in its lane.
    let blocker = s.hold_lane("slow", 1_000).await;
    let waiting =
        s.spawn_post(json!({"collection": "slow", "key": "k", "op": "patch", "value": {"a": 1}}));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let response = s
        .http
        .post(format!("{}/v1/mutations", s.url))
        .json(&json!({"collection": "slow", "key": "k", "op": "patch", "value": {"b": 1}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(error_code(&body), "lane_full");
    assert_eq!(blocker.await.expect("task").0, 200);
    assert_eq!(waiting.await.expect("task").0, 200);
    // Refused means not applied: 2 puts, the merged one, the waiting patch.
    assert_eq!(s.get("/v1/documents/slow/k").await.1["version"], json!(4));
}

#[tokio::test]
async fn a_base_is_checked_when_applied_not_when_it_arrives() {
    // The client sends base 3 right behind its own queued mutation that will make version 3.
    let s = TestServer::with(|c| c.script.time_ms_max = 5_000).await;
    let first = s.hold_lane("q", 1_000).await;
    assert_eq!(
        s.get("/v1/documents/q/k").await.1["version"],
        json!(2),
        "the first is still being decided"
    );
    let (status, second) = s.post(json!({"collection": "q", "key": "k", "op": "patch", "value": {"m": 2}, "base_version": 3})).await;
    assert_eq!(
        (
            status,
            second["outcome"].clone(),
            second["conflict"].clone()
        ),
        (200, json!("applied"), json!(null)),
        "{second}"
    );
    assert_eq!(second["version"], json!(4));
    assert_eq!(first.await.expect("task").1["outcome"], json!("merged"));
}

#[tokio::test]
async fn stats_report_the_dispatcher_state() {
    let s = TestServer::embedded().await;
    for i in 0..20 {
        s.post(json!({"collection": "c", "key": format!("k{}", i % 3), "op": "patch", "value": {"i": i}})).await;
    }
    let (status, stats) = s.get("/v1/stats").await;
    assert_eq!(status, 200);
    for field in [
        "load",
        "threshold",
        "concurrency_limit",
        "in_flight",
        "queue_depth",
        "lanes",
    ] {
        assert!(stats[field].is_number(), "{field} in {stats}");
    }
    assert_eq!(
        (
            stats["queue_depth"].clone(),
            stats["in_flight"].clone(),
            stats["lanes"].clone()
        ),
        (json!(0), json!(0), json!(0))
    );
    let load = stats["load"].as_f64().expect("load");
    let threshold = stats["threshold"].as_f64().expect("threshold");
    assert!(
        (0.0..=1.0).contains(&load) && (0.5..=0.95).contains(&threshold),
        "{stats}"
    );
    assert!(
        stats["concurrency_limit"]
            .as_u64()
            .is_some_and(|l| (1..=64).contains(&l))
    );
    assert!(
        stats["store_latency_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "commits were timed: {stats}"
    );
}
