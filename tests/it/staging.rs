//! Shadow writes: staged beside the live documents, promoted when load
//! allows and decided like any other mutation, or expired.

use crate::support::{TestServer, error_code};
use serde_json::{Value, json};
use sluice_server::store::{SqliteStore, Store};
use std::time::Duration;

/// A validator that never looks again within a test: what is staged stays.
const NEVER_MS: u64 = 600_000;

async fn status_of(s: &TestServer, client: &str, id: &str) -> (u16, Value) {
    s.get(&format!("/v1/mutations/{id}?client={client}")).await
}

/// The mutation's answer once it is decided (no longer staged or queued),
/// as `GET /v1/mutations/{id}` shows it (200, whatever the outcome).
async fn decided(s: &TestServer, client: &str, id: &str) -> (u16, Value) {
    for _ in 0..100 {
        let (status, body) = status_of(s, client, id).await;
        if !matches!(body["status"].as_str(), Some("staged" | "queued")) {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{client}/{id} was never decided");
}

fn shadow_patch(id: &str, base: u64, value: Value) -> Value {
    json!({"id": id, "client": "ann", "collection": "notes", "key": "n", "op": "patch",
           "value": value, "base_version": base, "shadow": true})
}

#[tokio::test]
async fn a_staged_write_waits_beside_live_data_and_is_decided_honestly_after_a_restart() {
    let s = TestServer::with(|c| c.staging.validate_every_ms = NEVER_MS).await;
    let (status, _) = s
        .post(json!({"collection": "notes", "key": "n", "op": "put", "value": {"text": "live"}}))
        .await;
    assert_eq!(status, 200);
    let (status, staged) = s
        .post(shadow_patch("s1", 1, json!({"text": "shadow"})))
        .await;
    assert_eq!(status, 202, "{staged}");
    assert_eq!(staged, json!({"id": "s1", "status": "staged"}));
    // A resend is the same; the same id with another body is refused.
    let (status, again) = s
        .post(shadow_patch("s1", 1, json!({"text": "shadow"})))
        .await;
    assert_eq!(
        (status, again["status"].as_str()),
        (202, Some("staged")),
        "{again}"
    );
    let (status, reused) = s
        .post(shadow_patch("s1", 1, json!({"text": "other"})))
        .await;
    assert_eq!(
        (status, error_code(&reused)),
        (422, "idempotency_key_reused"),
        "{reused}"
    );
    let (status, shown) = status_of(&s, "ann", "s1").await;
    assert_eq!(
        (status, shown["status"].as_str()),
        (200, Some("staged")),
        "{shown}"
    );

    let (status, list) = s.get("/v1/shadow?collection=notes").await;
    assert_eq!(status, 200, "{list}");
    let entry = &list["staged"][0];
    assert_eq!(
        (
            entry["id"].as_str(),
            entry["client"].as_str(),
            entry["current_version"].as_u64()
        ),
        (Some("s1"), Some("ann"), Some(1)),
        "{list}"
    );
    assert_eq!(entry["would_conflict"], false, "{entry}");
    // Live data moves on; the staged write is overtaken, and says so.
    let (status, _) = s
        .post(json!({"client": "bob", "collection": "notes", "key": "n", "op": "patch", "value": {"text": "bob"}}))
        .await;
    assert_eq!(status, 200);
    let (_, list) = s.get("/v1/shadow").await;
    assert_eq!(list["staged"][0]["would_conflict"], true, "{list}");
    assert_eq!(list["staged"][0]["current_version"], 2, "{list}");
    let (_, doc) = s.get("/v1/documents/notes/n").await;
    assert_eq!(
        doc["item"],
        json!({"text": "bob"}),
        "nothing staged is live: {doc}"
    );
    let (_, other) = s.get("/v1/shadow?collection=elsewhere").await;
    assert_eq!(other["staged"], json!([]));

    // After a restart the validator promotes it, once, and it is decided
    // against the live document: a conflict, rejected under optimistic.
    let s = s.restart(|c| c.staging.validate_every_ms = 50).await;
    let (status, answer) = decided(&s, "ann", "s1").await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("rejected")),
        "{answer}"
    );
    assert_eq!(answer["conflict"]["server_version"], 2, "{answer}");
    let (_, list) = s.get("/v1/shadow").await;
    assert_eq!(list["staged"], json!([]), "promoted once, and gone");
    let (status, resent) = s
        .post(shadow_patch("s1", 1, json!({"text": "shadow"})))
        .await;
    assert_eq!(
        (status, resent["outcome"].as_str()),
        (409, Some("rejected")),
        "a resend gets the answer: {resent}"
    );
    let (_, doc) = s.get("/v1/documents/notes/n").await;
    assert_eq!(doc["version"], 2, "{doc}");
}

#[tokio::test]
async fn a_staged_write_is_promoted_when_load_allows_and_applies() {
    let s = TestServer::with(|c| c.staging.validate_every_ms = 20).await;
    let (status, _) = s
        .post(json!({"collection": "notes", "key": "n", "op": "put", "value": {"a": 1}}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = s.post(shadow_patch("s2", 1, json!({"b": 2}))).await;
    assert_eq!(status, 202);
    let (status, answer) = decided(&s, "ann", "s2").await;
    assert_eq!(
        (
            status,
            answer["outcome"].as_str(),
            answer["version"].as_u64()
        ),
        (200, Some("applied"), Some(2)),
        "{answer}"
    );
    let (_, doc) = s.get("/v1/documents/notes/n").await;
    assert_eq!(doc["item"], json!({"a": 1, "b": 2}));

    // A shadow write is staged alone, never in a batch.
    let (status, error) = s
        .post_raw(
            "/v1/mutations:batch",
            json!({"mutations": [shadow_patch("s3", 2, json!({"c": 3}))]}).to_string(),
        )
        .await;
    assert_eq!(
        (status, error_code(&error)),
        (422, "shadow_in_batch"),
        "{error}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("shadow"),
        "{error}"
    );
}

#[tokio::test]
async fn staged_writes_expire_and_are_bounded() {
    let s = TestServer::with(|c| {
        c.staging.validate_every_ms = NEVER_MS;
        c.staging.staged_max = 1;
    })
    .await;
    let (status, _) = s
        .post(json!({"collection": "notes", "key": "n", "op": "put", "value": {"a": 1}}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = s.post(shadow_patch("old", 1, json!({"b": 2}))).await;
    assert_eq!(status, 202);
    let (status, full) = s.post(shadow_patch("more", 1, json!({"c": 3}))).await;
    assert_eq!((status, error_code(&full)), (429, "queue_full"), "{full}");
    assert!(
        full["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("staging"),
        "{full}"
    );
    // Live writes are served meanwhile.
    let (status, _) = s
        .post(json!({"collection": "notes", "key": "other", "op": "put", "value": {"a": 1}}))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = s
        .restart(|c| {
            c.staging.validate_every_ms = 50;
            c.staging.expire_ms = 200;
        })
        .await;
    let (status, answer) = decided(&s, "ann", "old").await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("rejected")),
        "{answer}"
    );
    assert_eq!(
        answer["conflict"]["reason"], "expired in staging",
        "{answer}"
    );
    let (_, doc) = s.get("/v1/documents/notes/n").await;
    assert_eq!(
        (doc["version"].as_u64(), doc["item"].get("b")),
        (Some(1), None),
        "{doc}"
    );

    let mut config = sluice_server::config::Config::default();
    config.staging.shed_below = 2.0;
    let error = config.validate().expect_err("out of range").to_string();
    assert!(error.contains("staging.shed_below"), "{error}");
}

#[tokio::test]
async fn a_crash_between_the_steps_of_a_promotion_applies_nothing_twice() {
    let s = TestServer::with(|c| c.staging.validate_every_ms = NEVER_MS).await;
    let (status, _) = s
        .post(json!({"collection": "notes", "key": "n", "op": "put", "value": {"a": 1}}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(
            json!({"id": "s1", "client": "ann", "collection": "notes", "key": "n",
                     "op": "patch", "value": {"b": 2}, "shadow": true}),
        )
        .await;
    assert_eq!(status, 202);
    let data = s.stop().await;
    // As if the process died after the promotion's first step: the
    // mutation is in the accept log and still staged.
    {
        let store = SqliteStore::open(&data.path().join("store.db"))
            .await
            .expect("open");
        let staged = store
            .staged("ann", "s1")
            .await
            .expect("read")
            .expect("staged");
        assert!(store.accept(&staged).await.expect("accept"));
    }
    let mut config = sluice_server::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        ..sluice_server::config::Config::default()
    };
    config.staging.validate_every_ms = 50;
    let s = TestServer::start_in(config, data).await;
    let (status, answer) = decided(&s, "ann", "s1").await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("applied")),
        "{answer}"
    );
    // The validator finds it staged, promotes it again as a resend, and
    // idempotency answers that: the staging area empties, nothing doubles.
    for _ in 0..100 {
        let (_, list) = s.get("/v1/shadow").await;
        if list["staged"] == json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, list) = s.get("/v1/shadow").await;
    assert_eq!(list["staged"], json!([]), "{list}");
    let (_, doc) = s.get("/v1/documents/notes/n").await;
    assert_eq!(
        (doc["version"].as_u64(), &doc["item"]),
        (Some(2), &json!({"a": 1, "b": 2})),
        "applied once: {doc}"
    );
}

#[tokio::test]
async fn a_staged_write_whose_id_was_used_meanwhile_leaves_and_holds_nothing_up() {
    let s = TestServer::with(|c| c.staging.validate_every_ms = NEVER_MS).await;
    let (status, _) = s
        .post(json!({"collection": "notes", "key": "n", "op": "put", "value": {"a": 1}}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = s.post(shadow_patch("s1", 1, json!({"b": 2}))).await;
    assert_eq!(status, 202);
    let (status, _) = s.post(shadow_patch("s2", 1, json!({"c": 3}))).await;
    assert_eq!(status, 202);
    // The same id, another body, sent live: decided now.
    let (status, live) = s
        .post(
            json!({"id": "s1", "client": "ann", "collection": "notes", "key": "other",
                     "op": "put", "value": {"z": 0}}),
        )
        .await;
    assert_eq!(
        (status, live["outcome"].as_str()),
        (200, Some("applied")),
        "{live}"
    );
    let s = s.restart(|c| c.staging.validate_every_ms = 50).await;
    // s1 can never be accepted; s2, behind it, is promoted all the same.
    let (_, answer) = decided(&s, "ann", "s2").await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    let (_, list) = s.get("/v1/shadow").await;
    assert_eq!(list["staged"], json!([]), "{list}");
    let (_, doc) = s.get("/v1/documents/notes/n").await;
    assert_eq!(doc["item"].get("b"), None, "s1's body never applied: {doc}");
}
