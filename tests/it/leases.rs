//! Read-time forecasts and write leases: a read with `intent=write` is
//! told how likely a write based on it is to conflict, and, above the
//! lease threshold, holds the document for its writer a short while.

use crate::support::{TestServer, error_code, sample};
use serde_json::{Value, json};
use sluice_server::guard::GuardMode;
use std::time::{Duration, Instant};

/// A server whose reads with `intent=write` always earn a lease of `ms`.
async fn leasing(ms: u64, adjust: impl FnOnce(&mut sluice_server::config::Config)) -> TestServer {
    TestServer::with(|c| {
        c.leases.mode = GuardMode::Always;
        c.leases.duration_ms = ms;
        adjust(c);
    })
    .await
}

async fn put_first(s: &TestServer, key: &str) {
    let (status, answer) = s
        .post(json!({"collection": "notes", "key": key, "op": "put", "value": {"text": "first"}}))
        .await;
    assert_eq!(status, 200, "{answer}");
}

async fn read_for(s: &TestServer, key: &str, client: &str) -> Value {
    let (status, doc) = s
        .get(&format!(
            "/v1/documents/notes/{key}?intent=write&client={client}"
        ))
        .await;
    assert_eq!(status, 200, "{doc}");
    doc
}

#[tokio::test]
async fn a_write_intent_is_answered_with_a_forecast_and_its_query_checked() {
    let s = TestServer::with(|c| c.leases.mode = GuardMode::Off).await;
    put_first(&s, "n").await;
    let (status, plain) = s.get("/v1/documents/notes/n").await;
    assert_eq!(status, 200);
    assert!(
        plain.get("forecast").is_none() && plain.get("lease").is_none(),
        "{plain}"
    );

    let doc = read_for(&s, "n", "alice").await;
    let p = doc["forecast"]["conflict_probability"]
        .as_f64()
        .unwrap_or_else(|| panic!("a forecast: {doc}"));
    assert!((0.0..=1.0).contains(&p), "{doc}");
    assert!(doc.get("lease").is_none(), "leases off: {doc}");
    assert_eq!(doc["version"], 1);

    // Without a client: the anonymous client's, as a mutation without one.
    let (status, anonymous) = s.get("/v1/documents/notes/n?intent=write").await;
    assert_eq!(status, 200, "{anonymous}");
    assert!(
        anonymous["forecast"]["conflict_probability"].is_number(),
        "{anonymous}"
    );
    let (status, error) = s.get("/v1/documents/notes/n?intent=delete&client=a").await;
    assert_eq!(status, 400, "{error}");
    let message = error["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("intent") && message.contains("write"),
        "{error}"
    );

    let (_, stats) = s.get("/v1/stats").await;
    assert_eq!(stats["leases"]["mode"], "off");
    assert_eq!(stats["leases"]["forecasts"], 2, "{}", stats["leases"]);
    assert_eq!(stats["leases"]["granted"], 0);
}

#[tokio::test]
async fn a_lease_holds_others_back_and_its_holder_goes_first() {
    let s = leasing(5_000, |_| {}).await;
    put_first(&s, "n").await;
    let before_ms = chrono_ms();
    let doc = read_for(&s, "n", "alice").await;
    let token = doc["lease"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("a lease: {doc}"))
        .to_owned();
    let expires = doc["lease"]["expires_ms"].as_i64().expect("expires_ms");
    assert!(
        (before_ms + 4_000..=chrono_ms() + 5_000).contains(&expires),
        "about 5 s from now: {doc}"
    );
    // Never to two clients at once; its holder is told its own again.
    let other = read_for(&s, "n", "bob").await;
    assert!(other.get("lease").is_none(), "{other}");
    assert!(other["forecast"]["conflict_probability"].is_number());
    assert_eq!(
        read_for(&s, "n", "alice").await["lease"]["token"],
        json!(token)
    );

    // Bob's write, based on what he read, waits in the lane ...
    let bob = s.spawn_post(
        json!({"id": "b1", "client": "bob", "collection": "notes", "key": "n",
                                  "op": "patch", "value": {"text": "bob"}, "base_version": 1}),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !bob.is_finished(),
        "another client's write waits while the lease holds"
    );
    let (_, stats) = s.get("/v1/stats").await;
    assert_eq!(stats["leases"]["held_now"], 1, "{}", stats["leases"]);
    assert_eq!(stats["leases"]["waiting_now"], 1, "{}", stats["leases"]);
    assert_eq!(sample(&s.metrics().await, "sluice_leases_held"), 1.0);

    // ... and Alice's, carrying the token, goes first and meets no conflict.
    let (status, alice) = s
        .post(
            json!({"id": "a1", "client": "alice", "collection": "notes", "key": "n",
                     "op": "patch", "value": {"text": "alice"}, "base_version": 1, "lease": token}),
        )
        .await;
    assert_eq!(status, 200, "{alice}");
    assert_eq!(
        (alice["outcome"].as_str(), alice["version"].as_u64()),
        (Some("applied"), Some(2)),
        "{alice}"
    );
    assert!(alice.get("conflict").is_none_or(Value::is_null), "{alice}");
    let (status, bob) = bob.await.expect("bob's request");
    assert_eq!(status, 409, "{bob}");
    assert_eq!(
        bob["outcome"], "rejected",
        "Bob's base is behind now, honestly: {bob}"
    );
    assert_eq!(bob["conflict"]["server_version"], 2, "{bob}");

    let (_, stats) = s.get("/v1/stats").await;
    let leases = &stats["leases"];
    assert_eq!(
        (
            &leases["granted"],
            &leases["used"],
            &leases["expired"],
            &leases["needed"],
            &leases["held_back"]
        ),
        (&json!(1), &json!(1), &json!(0), &json!(1), &json!(1)),
        "{leases}"
    );
    assert_eq!(leases["held_now"], 0);
    // Alice's write settled her forecast; Bob's settled his.
    assert_eq!(leases["forecast_quality"]["count"], 2, "{leases}");
    assert_eq!(leases["forecast_quality"]["positives"], 1, "{leases}");
}

#[tokio::test]
async fn a_lease_nobody_uses_expires_and_costs_the_others_its_time_at_most() {
    let s = leasing(500, |_| {}).await;
    put_first(&s, "n").await;
    let token = read_for(&s, "n", "alice").await["lease"]["token"].clone();
    assert!(token.is_string());
    let started = Instant::now();
    let (status, bob) = s
        .post(json!({"client": "bob", "collection": "notes", "key": "n", "op": "patch", "value": {"b": 1}}))
        .await;
    let waited = started.elapsed();
    assert_eq!(
        (status, bob["outcome"].as_str()),
        (200, Some("applied")),
        "{bob}"
    );
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(2_500),
        "held until the lease ended, then decided: {waited:?}"
    );
    // A write with the spent token is a write like any other.
    let (status, late) = s
        .post(
            json!({"client": "alice", "collection": "notes", "key": "n", "op": "patch",
                     "value": {"a": 1}, "lease": token}),
        )
        .await;
    assert_eq!(
        (status, late["outcome"].as_str()),
        (200, Some("applied")),
        "{late}"
    );
    let (_, stats) = s.get("/v1/stats").await;
    let leases = &stats["leases"];
    assert_eq!(
        (&leases["expired"], &leases["used"]),
        (&json!(1), &json!(0)),
        "{leases}"
    );
}

#[tokio::test]
async fn leases_are_bounded_in_number_length_and_what_they_hold_back() {
    let s = leasing(5_000, |c| {
        c.leases.leases_max = 1;
        c.queue.lane_len_max = 2;
    })
    .await;
    put_first(&s, "one").await;
    put_first(&s, "two").await;
    assert!(read_for(&s, "one", "alice").await["lease"].is_object());
    let second = read_for(&s, "two", "alice").await;
    assert!(second.get("lease").is_none(), "one lease at most: {second}");
    assert!(second["forecast"].is_object(), "still a forecast: {second}");

    // The lane's bound counts what the lease holds back.
    let held: Vec<_> = (0..2)
        .map(|i| s.spawn_post(json!({"client": "bob", "collection": "notes", "key": "one", "op": "patch", "value": {"i": i}})))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, refused) = s
        .post(json!({"client": "bob", "collection": "notes", "key": "one", "op": "patch", "value": {"i": 2}}))
        .await;
    assert_eq!(
        (status, error_code(&refused)),
        (429, "lane_full"),
        "{refused}"
    );
    // Others' documents are served meanwhile.
    let (status, other) = s
        .post(json!({"client": "bob", "collection": "notes", "key": "two", "op": "patch", "value": {"x": 1}}))
        .await;
    assert_eq!(
        (status, other["outcome"].as_str()),
        (200, Some("applied")),
        "{other}"
    );
    // Stopping releases the lease: the held-back writes are decided, not lost.
    let data = s.stop().await;
    for h in held {
        let (status, answer) = h.await.expect("held request");
        assert_eq!(
            (status, answer["outcome"].as_str()),
            (200, Some("applied")),
            "{answer}"
        );
    }
    drop(data);

    let mut config = sluice_server::config::Config::default();
    config.leases.duration_ms = 60_000;
    let error = config.validate().expect_err("too long").to_string();
    assert!(
        error.contains("leases.duration_ms") && error.contains("30000"),
        "{error}"
    );
    config.leases.duration_ms = 2_000;
    config.leases.leases_max = 0;
    let error = config.validate().expect_err("none").to_string();
    assert!(error.contains("leases_max"), "{error}");
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
