//! The adaptive learning loop: the predictor retrained from the history at
//! start, on a schedule and after enough outcomes, and swapped in.

use super::{Inner, ModelSummary, lock};
use crate::history::HistoryError;
use crate::model::MutationRecord;
use crate::predict::{self, ModelReport, Observation, Predictor, PredictorConfig, Scored};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

/// History rows fetched per page while retraining.
const RETRAIN_PAGE_ROWS: u32 = 10_000;
/// How often (in learned outcomes) the model's quality is logged.
const QUALITY_LOG_EVERY: u64 = 10_000;
/// How stale the dashboards' model summary may be.
const MODEL_SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// The learning stage's state: the live predictor, when to retrain it, and
/// the dashboards' summary of it. Its fields are this module's alone, so
/// every other stage goes through these methods, and the one place two of
/// its locks nest (the summary over the predictor) is written once, here.
pub(super) struct Learning {
    predictor: Mutex<Predictor>,
    /// Outcomes learned online since the last retraining.
    outcomes_since_retrain: AtomicU64,
    pub(super) retrain_wanted: Notify,
    /// The model's quality for dashboards and when it was computed:
    /// computing it sorts the recent window under the predictor's lock, so
    /// it is done at most once a second, and only while someone looks.
    summary: Mutex<Option<(Duration, ModelSummary)>>,
}

impl Learning {
    pub(super) fn new(config: &PredictorConfig) -> Learning {
        Learning {
            predictor: Mutex::new(Predictor::new(config.clone())),
            outcomes_since_retrain: AtomicU64::new(0),
            retrain_wanted: Notify::new(),
            summary: Mutex::new(None),
        }
    }

    /// Scores a mutation before anything about its outcome exists.
    pub(super) fn score(&self, observation: &Observation<'_>) -> Scored {
        lock(&self.predictor).score(observation)
    }

    /// The predictor's state and quality, for `GET /v1/model`.
    pub(super) fn report(&self) -> ModelReport {
        lock(&self.predictor).report()
    }

    /// Teaches the predictor a lane's outcomes, each through its own
    /// score's token; `settled` mutations count towards the next retraining
    /// (asked for past `retrain_after`).
    pub(super) fn learn(
        &self,
        outcomes: impl Iterator<Item = (Scored, predict::Outcome)>,
        settled: u64,
        retrain_after: u64,
    ) {
        let mut predictor = lock(&self.predictor);
        for (scored, outcome) in outcomes {
            predictor.learn(scored, outcome);
        }
        let since = self
            .outcomes_since_retrain
            .fetch_add(settled, Ordering::Relaxed)
            + settled;
        if since >= retrain_after {
            self.outcomes_since_retrain.store(0, Ordering::Relaxed);
            self.retrain_wanted.notify_one();
        }
        let learned = predictor.learned();
        if learned > 0 && learned % QUALITY_LOG_EVERY < settled {
            let report = predictor.report();
            info!(
                learned,
                auc_all = ?report.all_time.auc,
                auc_recent = ?report.recent.auc,
                log_loss_recent = ?report.recent.log_loss,
                ece_recent = ?report.recent.expected_calibration_error,
                features = report.features,
                "model quality"
            );
        }
    }

    /// The model's quality for dashboards, at most a second old at `now`:
    /// computed when someone looks, once for every viewer.
    pub(super) fn summary(&self, now: Duration) -> ModelSummary {
        let mut cached = lock(&self.summary);
        match &*cached {
            Some((at, summary)) if now.saturating_sub(*at) < MODEL_SUMMARY_EVERY => summary.clone(),
            _ => {
                let summary = ModelSummary::of(self.report());
                *cached = Some((now, summary.clone()));
                summary
            }
        }
    }

    /// Swaps a freshly trained predictor in, keeping the live quality figures.
    fn swap(&self, mut fresh: Predictor, now_ms: i64, training_ms: f64) {
        {
            let mut live = lock(&self.predictor);
            fresh.succeed(&mut live, now_ms, training_ms);
            *live = fresh;
        }
        self.outcomes_since_retrain.store(0, Ordering::Relaxed);
    }
}

/// The adaptive learning loop: retrain from the history at start (a warm
/// start), on a schedule, and after enough new outcomes; swap the new model in
/// atomically.
pub(super) async fn learning_loop(inner: Arc<Inner>) {
    let config = inner.config.predictor.clone();
    if !config.enabled {
        return;
    }
    let mut trained_to = 0;
    if config.retrain_on_start {
        trained_to = inner.history.last_seq().await.unwrap_or(0);
        retrain(&inner).await;
    }
    let interval = Duration::from_secs(config.retrain_interval_s);
    loop {
        // In a cluster, what the other members decided is only in the
        // shared history: retraining from it more often is how their
        // outcomes reach this model and its client statistics.
        let shared = inner.cluster.get().map(|role| role.retrain_every);
        let every = shared.map_or(interval, |s| s.min(interval));
        let wanted = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = inner.learning.retrain_wanted.notified() => true,
        };
        let last = inner.history.last_seq().await.unwrap_or(0);
        if !wanted && shared.is_some() && last == trained_to {
            continue;
        }
        trained_to = last;
        retrain(&inner).await;
    }
}

/// Trains a fresh predictor on the newest `retrain_window_rows` of history,
/// page by page on a blocking thread (memory stays one page), and swaps it in
/// under the predictor's lock.
async fn retrain(inner: &Arc<Inner>) {
    let started = inner.clock.elapsed();
    let config = inner.config.predictor.clone();
    let fresh = match train_from_history(inner.history.as_ref(), &config).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "retraining skipped: reading the history failed");
            return;
        }
    };
    let training_ms = inner.clock.elapsed().saturating_sub(started).as_secs_f64() * 1000.0;
    let rows = fresh.training().trained_rows;
    inner
        .learning
        .swap(fresh, inner.clock.now_ms(), training_ms);
    inner.telemetry.retrained(training_ms / 1000.0);
    info!(
        rows,
        training_ms, "retrained the predictor from the history"
    );
}

/// A predictor trained on the newest `config.retrain_window_rows` rows of
/// `history`, in order, including rows recorded while it trained; `None` for
/// an empty history.
pub async fn train_from_history(
    history: &dyn crate::history::History,
    config: &PredictorConfig,
) -> Result<Option<Predictor>, HistoryError> {
    let last = history.last_seq().await?;
    if last == 0 {
        return Ok(None);
    }
    let window = i64::try_from(config.retrain_window_rows).unwrap_or(i64::MAX);
    // Reading the next page overlaps training on the last one.
    let (pages_tx, mut pages_rx) = mpsc::channel::<Vec<(i64, MutationRecord)>>(2);
    let read = async move {
        let mut cursor = last.saturating_sub(window).max(0);
        let mut caught_up = false;
        loop {
            let page = history.mutations(cursor, RETRAIN_PAGE_ROWS).await?;
            let Some((page_last, _)) = page.last() else {
                break;
            };
            cursor = *page_last;
            if pages_tx.send(page).await.is_err() {
                break;
            }
            // Past the window's end, one more page catches up on what was
            // recorded during training.
            if cursor >= last {
                if caught_up {
                    break;
                }
                caught_up = true;
            }
        }
        Ok::<(), HistoryError>(())
    };
    let train = async {
        let mut fresh = Predictor::new(config.clone());
        while let Some(page) = pages_rx.recv().await {
            fresh = tokio::task::spawn_blocking(move || {
                for (_, record) in &page {
                    fresh.train_on(record);
                }
                fresh
            })
            .await
            .map_err(|e| HistoryError::Unavailable(format!("the training thread failed: {e}")))?;
        }
        Ok::<Predictor, HistoryError>(fresh)
    };
    let (read, fresh) = tokio::join!(read, train);
    read?;
    let fresh = fresh?;
    Ok(Some(fresh))
}
