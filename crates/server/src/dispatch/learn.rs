//! The adaptive learning loop: the predictor retrained from the history at
//! start, on a schedule and after enough outcomes, and swapped in.

use super::{Inner, lock};
use crate::history::HistoryError;
use crate::model::MutationRecord;
use crate::predict::{Predictor, PredictorConfig};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// History rows fetched per page while retraining.
const RETRAIN_PAGE_ROWS: u32 = 10_000;

/// The adaptive learning loop: retrain from the history at start (a warm
/// start), on a schedule, and after enough new outcomes; swap the new model in
/// atomically.
pub(super) async fn learning_loop(inner: Arc<Inner>) {
    let config = inner.config.predictor.clone();
    if !config.enabled {
        return;
    }
    if config.retrain_on_start {
        retrain(&inner).await;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(config.retrain_interval_s)) => {}
            _ = inner.retrain_wanted.notified() => {}
        }
        retrain(&inner).await;
    }
}

/// Trains a fresh predictor on the newest `retrain_window_rows` of history,
/// page by page on a blocking thread (memory stays one page), and swaps it in
/// under the predictor's lock.
async fn retrain(inner: &Arc<Inner>) {
    let started = inner.clock.elapsed();
    let config = inner.config.predictor.clone();
    let mut fresh = match train_from_history(inner.history.as_ref(), &config).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "retraining skipped: reading the history failed");
            return;
        }
    };
    let training_ms = inner.clock.elapsed().saturating_sub(started).as_secs_f64() * 1000.0;
    let rows = fresh.training().trained_rows;
    {
        let mut live = lock(&inner.predictor);
        fresh.succeed(&mut live, inner.clock.now_ms(), training_ms);
        *live = fresh;
    }
    inner.outcomes_since_retrain.store(0, Ordering::Relaxed);
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
