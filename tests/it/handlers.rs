//! The three resolution modes through the API: built-in strategies, a
//! sandboxed script, and a webhook served by a real HTTP server.

use crate::support::TestServer;
use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Writes version 1 and 2 of `c/k`, so that base 1 is stale.
async fn two_versions(s: &TestServer, collection: &str, first: Value, second: Value) {
    let (status, _) = s
        .post(json!({"collection": collection, "key": "k", "op": "put", "value": first}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(json!({"collection": collection, "key": "k", "op": "put", "value": second}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn automerge_follows_appsync_rules_and_rejects_deletes_and_tombstones() {
    let s = TestServer::embedded().await;
    s.put(
        "/v1/collections/m",
        json!({"handler": "automerge", "set_fields": ["tags"]}),
    )
    .await;
    two_versions(
        &s,
        "m",
        json!({}),
        json!({"title": "server", "tags": ["a"], "list": [1], "empty": null}),
    )
    .await;
    let incoming = json!({"title": "mine", "tags": ["a", "b"], "list": [1], "empty": 5, "extra": null, "new": true});
    let (status, body) = s.post(json!({"collection": "m", "key": "k", "op": "put", "value": incoming, "base_version": 1})).await;
    assert_eq!(
        (status, body["outcome"].clone(), body["version"].clone()),
        (200, json!("merged"), json!(3))
    );
    assert_eq!(
        body["item"],
        json!({"title": "server", "tags": ["a", "b"], "list": [1, 1], "empty": 5, "extra": null, "new": true})
    );
    assert_eq!(body["conflict"]["handler"], json!("automerge"));

    let (status, body) = s
        .post(json!({"collection": "m", "key": "k", "op": "delete", "base_version": 1}))
        .await;
    assert_eq!((status, body["outcome"].clone()), (409, json!("rejected")));
    assert!(
        body["conflict"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("delete")),
        "{body}"
    );

    s.post(json!({"collection": "m", "key": "k", "op": "delete"}))
        .await;
    let (status, body) = s.post(json!({"collection": "m", "key": "k", "op": "patch", "value": {"x": 1}, "base_version": 2})).await;
    assert_eq!(
        (status, body["item"].clone(), body["version"].clone()),
        (409, json!(null), json!(4))
    );
    assert!(
        body["conflict"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("deleted")),
        "{body}"
    );
}

#[tokio::test]
async fn a_script_can_resolve_reject_or_remove() {
    let s = TestServer::embedded().await;
    let script = r#"
        function resolve(ctx) {
            if (ctx.incoming && ctx.incoming.mode === "sum") {
                return {action: "resolve", item: {n: ctx.existing.n + ctx.incoming.n, by: ctx.client, key: ctx.key, v: ctx.existing_version, base: ctx.base_version, op: ctx.op}};
            }
            if (ctx.op === "delete") return {action: "remove"};
            return {action: "reject", reason: "mode " + (ctx.incoming && ctx.incoming.mode) + " is not mergeable"};
        }"#;
    let (status, body) = s
        .put("/v1/collections/js", json!({"handler": {"script": script}}))
        .await;
    assert_eq!(status, 200, "{body}");
    two_versions(&s, "js", json!({"n": 1}), json!({"n": 10})).await;

    let (status, body) = s.post(json!({"client": "ann", "collection": "js", "key": "k", "op": "patch", "value": {"mode": "sum", "n": 5}, "base_version": 1})).await;
    assert_eq!(
        (status, body["outcome"].clone(), body["version"].clone()),
        (200, json!("merged"), json!(3))
    );
    assert_eq!(
        body["item"],
        json!({"n": 15, "by": "ann", "key": "k", "v": 2, "base": 1, "op": "patch"})
    );
    assert_eq!(body["conflict"]["handler"], json!("script"));

    let (status, body) = s.post(json!({"collection": "js", "key": "k", "op": "patch", "value": {"mode": "max"}, "base_version": 1})).await;
    assert_eq!(
        (status, body["conflict"]["reason"].clone()),
        (409, json!("mode max is not mergeable"))
    );

    let (status, body) = s
        .post(json!({"collection": "js", "key": "k", "op": "delete", "base_version": 1}))
        .await;
    assert_eq!(
        (
            status,
            body["outcome"].clone(),
            body["item"].clone(),
            body["version"].clone()
        ),
        (200, json!("merged"), json!(null), json!(4))
    );

    let (_, body) = s.get("/v1/conflicts?collection=js").await;
    let resolutions: Vec<Value> = body["conflicts"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["resolution"].clone())
        .collect();
    assert_eq!(
        resolutions,
        [json!("removed"), json!("rejected"), json!("merged")]
    );
}

#[tokio::test]
async fn runaway_scripts_are_cut_off_and_the_server_keeps_serving() {
    let s = TestServer::embedded().await;
    let cases = [
        ("loop", "function resolve() { for (;;) {} }", "time limit"),
        (
            "bomb",
            // 4 MiB a step: the 16 MiB limit is reached in a few steps, long
            // before the time limit even on a machine busy with other tests.
            "function resolve() { const a = []; for (;;) a.push(new ArrayBuffer(1 << 22)); }",
            "memory limit",
        ),
        (
            "throws",
            "function resolve() { throw new Error('no way'); }",
            "no way",
        ),
        (
            "garbage",
            "function resolve() { return {action: 'explode'}; }",
            "malformed",
        ),
        (
            "escape",
            "function resolve() { return {action: 'resolve', item: {t: typeof require + typeof std + typeof os}}; }",
            "",
        ),
    ];
    for (name, script, reason) in cases {
        let (status, body) = s
            .put(
                &format!("/v1/collections/{name}"),
                json!({"handler": {"script": script}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        two_versions(&s, name, json!({"v": 1}), json!({"v": 2})).await;
        let started = Instant::now();
        let (status, body) = s.post(json!({"collection": name, "key": "k", "op": "put", "value": {"v": 3}, "base_version": 1})).await;
        if name == "escape" {
            assert_eq!(
                (status, body["item"].clone()),
                (200, json!({"t": "undefinedundefinedundefined"}))
            );
            continue;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            (status, body["outcome"].clone()),
            (409, json!("rejected")),
            "{name}: {body}"
        );
        assert!(
            body["conflict"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason)),
            "{name}: {body}"
        );
        assert_eq!(
            s.get(&format!("/v1/documents/{name}/k")).await.1["version"],
            json!(2),
            "{name}: nothing written"
        );
    }
    assert_eq!(s.get("/healthz").await.0, 200);
}

/// A user's function service: merges by taking the larger `n`, rejects when
/// asked, hangs when asked, fails when asked.
async fn function_service() -> String {
    async fn resolve(Json(ctx): Json<Value>) -> (axum::http::StatusCode, Json<Value>) {
        let mode = ctx["incoming"]["mode"].as_str().unwrap_or("").to_owned();
        match mode.as_str() {
            "hang" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                (
                    axum::http::StatusCode::OK,
                    Json(json!({"action": "remove"})),
                )
            }
            "fail" => (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"oops": true})),
            ),
            "junk" => (
                axum::http::StatusCode::OK,
                Json(json!({"action": "resolve", "item": "not an object"})),
            ),
            "reject" => (
                axum::http::StatusCode::OK,
                Json(json!({"action": "reject", "reason": "the service said no"})),
            ),
            _ => {
                let n = ctx["existing"]["n"]
                    .as_i64()
                    .unwrap_or(0)
                    .max(ctx["incoming"]["n"].as_i64().unwrap_or(0));
                let echo = json!({"n": n, "collection": ctx["collection"], "existing_version": ctx["existing_version"]});
                (
                    axum::http::StatusCode::OK,
                    Json(json!({"action": "resolve", "item": echo})),
                )
            }
        }
    }
    crate::support::webhook(post(resolve)).await
}

#[tokio::test]
async fn a_webhook_resolves_and_its_failures_reject() {
    let s = TestServer::embedded().await;
    let url = function_service().await;
    let (status, _) = s
        .put(
            "/v1/collections/hook",
            json!({"handler": {"webhook": {"url": url, "timeout_ms": 300}}}),
        )
        .await;
    assert_eq!(status, 200);
    two_versions(&s, "hook", json!({"n": 1}), json!({"n": 7})).await;

    let (status, body) = s.post(json!({"collection": "hook", "key": "k", "op": "patch", "value": {"n": 3}, "base_version": 1})).await;
    assert_eq!(
        (status, body["outcome"].clone()),
        (200, json!("merged")),
        "{body}"
    );
    assert_eq!(
        body["item"],
        json!({"n": 7, "collection": "hook", "existing_version": 2})
    );
    assert_eq!(body["conflict"]["handler"], json!("webhook"));

    for (mode, reason) in [
        ("reject", "the service said no"),
        ("fail", "HTTP 500"),
        ("junk", "malformed"),
        ("hang", "time limit"),
    ] {
        let started = Instant::now();
        let (status, body) = s.post(json!({"collection": "hook", "key": "k", "op": "patch", "value": {"mode": mode}, "base_version": 1})).await;
        assert_eq!(status, 409, "{mode}: {body}");
        assert!(
            body["conflict"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason)),
            "{mode}: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(s.get("/v1/documents/hook/k").await.1["version"], json!(3));

    // A service that is not there rejects too.
    s.put(
        "/v1/collections/gone",
        json!({"handler": {"webhook": {"url": "http://127.0.0.1:9/resolve"}}}),
    )
    .await;
    two_versions(&s, "gone", json!({}), json!({})).await;
    let (status, body) = s
        .post(
            json!({"collection": "gone", "key": "k", "op": "put", "value": {}, "base_version": 1}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["conflict"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("webhook")),
        "{body}"
    );
}
