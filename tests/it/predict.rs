//! The predictor through the API: scores in answers, `GET /v1/model`, the
//! adaptive learning loop (retraining from history) and a warm restart.

use crate::support::TestServer;
use serde_json::{Value, json};
use std::time::Duration;

/// Writes `rounds` stale-or-fresh conditional patches over a few keys and
/// returns the answers: every third is stale (a conflict).
async fn traffic(s: &TestServer, rounds: usize) -> Vec<Value> {
    let mut versions = [0u64; 4];
    let mut answers = Vec::new();
    for i in 0..rounds {
        let k = i % 4;
        let stale = i % 3 == 0 && versions[k] > 0;
        let base = if stale { versions[k] - 1 } else { versions[k] };
        let (_, answer) = s
            .post(json!({"id": format!("t{i}"), "client": format!("c{}", i % 5), "collection": "docs", "key": format!("k{k}"),
                         "op": "patch", "value": {"n": i}, "base_version": base, "ts_ms": 1_700_000_000_000i64 + i as i64 * 60_000}))
            .await;
        versions[k] = answer["version"].as_u64().expect("version");
        answers.push(answer);
    }
    answers
}

#[tokio::test]
async fn answers_carry_scores_and_the_model_reports_its_quality() {
    let s =
        TestServer::with(|c| c.default_handler = sluice_server::resolve::Handler::Automerge).await;
    let answers = traffic(&s, 300).await;
    assert!(answers.iter().all(|a| {
        a["score"]
            .as_f64()
            .is_some_and(|p| (0.0..=1.0).contains(&p))
    }));
    let (status, model) = s.get("/v1/model").await;
    assert_eq!(status, 200);
    assert_eq!(model["learned"], json!(300));
    assert_eq!(model["model_version"], json!(0));
    assert_eq!(model["use_version_cache"], json!(true));
    assert!(model["features"].as_u64().is_some_and(|n| n > 0));
    let all = &model["all_time"];
    assert_eq!(all["count"], json!(300));
    assert!(all["positives"].as_u64().is_some_and(|n| n >= 90), "{all}");
    assert!(all["auc"].as_f64().is_some_and(|auc| auc > 0.8), "{all}");
    assert_eq!(all["calibration"].as_array().map(Vec::len), Some(10));
    assert!(model["recent"]["log_loss"].as_f64().is_some());
}

#[tokio::test]
async fn the_learning_loop_retrains_after_enough_outcomes() {
    let s = TestServer::with(|c| {
        c.default_handler = sluice_server::resolve::Handler::Automerge;
        c.predictor.retrain_after_outcomes = 100;
    })
    .await;
    traffic(&s, 250).await;
    let mut model = Value::Null;
    for _ in 0..100 {
        model = s.get("/v1/model").await.1;
        if model["model_version"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(model["model_version"].as_u64().unwrap_or(0) >= 2, "{model}");
    assert!(
        model["trained_rows"].as_u64().is_some_and(|n| n >= 100),
        "{model}"
    );
    assert!(model["trained_at_ms"].as_i64().is_some() && model["training_ms"].as_f64().is_some());
    assert_eq!(
        model["learned"],
        json!(250),
        "live counts carry over the swap"
    );
}

#[tokio::test]
async fn a_restart_starts_warm_from_the_history() {
    let s =
        TestServer::with(|c| c.default_handler = sluice_server::resolve::Handler::Automerge).await;
    traffic(&s, 400).await;
    let probe = json!({"client": "c1", "collection": "docs", "key": "k1", "op": "patch", "value": {"n": 0},
                       "base_version": 99, "ts_ms": 1_700_000_000_000i64 + 400 * 60_000});
    let warm_before = s.get("/v1/model").await.1;
    let data = s.stop().await;

    let config = sluice_server::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        ..Default::default()
    };
    let s = TestServer::start_in(config, data).await;
    let mut model = Value::Null;
    for _ in 0..100 {
        model = s.get("/v1/model").await.1;
        if model["model_version"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        model["model_version"],
        json!(1),
        "retrained from the history at start: {model}"
    );
    assert_eq!(model["trained_rows"], json!(400));
    assert_eq!(
        model["features"], warm_before["features"],
        "the same history gives the same model"
    );
    // One version behind, as every stale write it learned from was: the warm
    // model knows it is likely a conflict (a cold one would say the 5% prior).
    let (status, answer) = s.post(probe).await;
    assert_eq!(
        status, 409,
        "the restarted server runs the default handler, optimistic"
    );
    assert!(
        answer["score"].as_f64().is_some_and(|p| p > 0.5),
        "{answer}"
    );
}
