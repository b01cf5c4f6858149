//! The predictor's speed: scoring one mutation (the goal: ≤ 5 µs median) and
//! retraining from a million history rows in SQLite (the goal: ≤ 10 s).
//!
//! `cargo bench --bench predict` (add `-- score` for the scoring part alone).

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_server::dispatch::train_from_history;
use sluice_server::history::{History, SqliteHistory};
use sluice_server::model::MutationRecord;
use sluice_server::model::{DocKey, Op};
use sluice_server::predict::{Observation, Outcome, Predictor, PredictorConfig};
use std::hint::black_box;
use std::time::Duration;

const KEYS: u64 = 5_000;

fn record(i: u64) -> MutationRecord {
    // A rails-like shape: a few hundred directories, a skewed key popularity,
    // one mutation in twenty-five a stale merge.
    let key = (i * 7_919 % KEYS).min(i % 97 * 53);
    let version = i / KEYS + 1;
    let stale = i.is_multiple_of(25);
    MutationRecord {
        id: format!("m{i}"),
        client: format!("client-{}", i % 1_000),
        doc: DocKey::new(
            "rails",
            format!("dir{}/sub{}/file{key}.rb", key % 40, key % 7),
        ),
        op: sluice_server::model::Op::Patch,
        fields: vec!["commit".into(), "lines".into()],
        base_version: Some(if stale {
            version.saturating_sub(3)
        } else {
            version
        }),
        version_before: version,
        version_after: version + 1,
        outcome: if stale {
            sluice_server::model::RecordedOutcome::Merged
        } else {
            sluice_server::model::RecordedOutcome::Applied
        },
        conflict: stale,
        score: Some(0.04),
        ts_ms: Some(1_325_000_000_000 + i as i64 * 4_000_000),
        received_ms: 0,
        decided_ms: 0,
        queued_us: 10,
        lane_waiting: 0,
    }
}

fn score(c: &mut Criterion) {
    let mut predictor = Predictor::new(PredictorConfig::default());
    for i in 0..100_000 {
        predictor.train_on(&record(i));
    }
    let doc = DocKey::new("rails", "dir3/sub5/file123.rb");
    let fields = vec!["commit".to_string(), "lines".to_string()];
    let observation = Observation {
        doc: &doc,
        op: Op::Patch,
        fields: &fields,
        client: "client-42",
        base_version: Some(17),
        event_ms: 1_325_000_000_000 + 100_000 * 4_000_000,
        lane_waiting: 0,
    };
    c.bench_function("score", |b| {
        b.iter(|| black_box(predictor.score(black_box(&observation))))
    });
    c.bench_function("score_then_learn", |b| {
        b.iter(|| {
            let scored = predictor.score(black_box(&observation));
            predictor.learn(
                scored,
                Outcome {
                    conflict: false,
                    version_after: 18,
                    wrote: true,
                },
            );
        })
    });
}

fn retrain(c: &mut Criterion) {
    const ROWS: u64 = 1_000_000;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let history = runtime.block_on(async {
        let history = SqliteHistory::open(&dir.path().join("history.db"))
            .await
            .expect("open");
        let mut batch: Vec<MutationRecord> = Vec::with_capacity(10_000);
        for i in 0..ROWS {
            batch.push(record(i));
            if batch.len() == 10_000 {
                history.record(&batch, &[]).await.expect("record");
                batch.clear();
            }
        }
        history
    });
    let config = PredictorConfig::default();
    let mut group = c.benchmark_group("retrain");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(60));
    group.bench_function("1m_rows_sqlite", |b| {
        b.iter(|| {
            let trained = runtime
                .block_on(train_from_history(&history, &config))
                .expect("train");
            assert_eq!(trained.map(|p| p.training().trained_rows), Some(ROWS));
        })
    });
    group.finish();
}

criterion_group!(benches, score, retrain);
criterion_main!(benches);
