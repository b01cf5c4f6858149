//! Shadow handlers: a collection's candidate handler (`shadow_handler`)
//! runs beside the live one on real conflicts, as a dry run, after the
//! lane has moved on: its result is compared with what the live handler
//! decided and kept in the collection's shadow report, never written. An
//! operator tries new conflict logic on live traffic without touching live
//! data. A shadow that throws, times out or answers nonsense is counted as
//! failed; the live outcome is already decided and answered.
//!
//! Bounded: comparisons wait in a channel of `QUEUED_MAX` (past it they are
//! skipped and counted), at most `RUNNING_MAX` run at once, and a report
//! keeps its latest `DISAGREEMENTS_KEPT` disagreements, for at most
//! `COLLECTIONS_MAX` collections.

use super::{Engine, Inner, lock};
use crate::model::{Document, Mutation, Outcome, Verdict};
use crate::resolve::{CollectionConfig, Step};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

const QUEUED_MAX: usize = 256;
const RUNNING_MAX: usize = 4;
const DISAGREEMENTS_KEPT: usize = 20;
const COLLECTIONS_MAX: usize = 1_000;

/// One side of a comparison: what a handler decided.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Side {
    /// `applied`, `merged`, `rejected`, `not_found`, or `failed` (the
    /// handler threw, timed out or answered nonsense).
    pub outcome: String,
    /// The document it would leave (null when deleted, or when rejected).
    pub item: Value,
    pub reason: Option<String>,
}

/// A conflict on which the two handlers decided differently.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Disagreement {
    pub id: String,
    pub client: String,
    pub key: String,
    pub at_ms: i64,
    pub base_version: Option<u64>,
    pub server_version: u64,
    pub live: Side,
    pub shadow: Side,
}

/// `GET /v1/collections/{c}/shadow-report`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ShadowReport {
    pub collection: String,
    /// The shadow handler configured now (`null`: none).
    pub shadow_handler: Option<String>,
    /// Conflicts both handlers decided, those they agreed on (the same
    /// outcome and the same document), and those they did not.
    pub compared: u64,
    pub agreed: u64,
    pub disagreed: u64,
    /// The shadow failed (the live outcome was unaffected).
    pub failed: u64,
    /// Comparisons dropped because too many were waiting.
    pub skipped: u64,
    pub agreement_rate: Option<f64>,
    /// The latest disagreements, newest first.
    pub disagreements: Vec<Disagreement>,
}

struct Job {
    config: CollectionConfig,
    before: Document,
    mutation: Mutation,
    live: Side,
    at_ms: i64,
}

pub(super) struct Shadows {
    reports: Mutex<HashMap<String, Tally>>,
    queue: mpsc::Sender<Job>,
    /// Taken by `run` once, when the engine starts.
    jobs: Mutex<Option<mpsc::Receiver<Job>>>,
}

#[derive(Default)]
struct Tally {
    compared: u64,
    agreed: u64,
    failed: u64,
    skipped: u64,
    latest: VecDeque<Disagreement>,
}

impl Shadows {
    pub(super) fn new() -> Shadows {
        let (queue, jobs) = mpsc::channel(QUEUED_MAX);
        Shadows {
            reports: Mutex::new(HashMap::new()),
            queue,
            jobs: Mutex::new(Some(jobs)),
        }
    }

    /// Hands a decided conflict to the shadow handler, if the collection
    /// has one: the live decision `step`, from the document `before`.
    pub(super) fn offer(
        &self,
        config: &CollectionConfig,
        before: &Document,
        mutation: &Mutation,
        step: &Step,
        at_ms: i64,
    ) {
        let Some(shadow) = &config.shadow_handler else {
            return;
        };
        if step.conflict.is_none() {
            return; // no conflict: the handler did not decide, nothing to compare
        }
        let job = Job {
            config: CollectionConfig {
                handler: shadow.clone(),
                shadow_handler: None,
                ..config.clone()
            },
            before: before.clone(),
            mutation: mutation.clone(),
            live: side(step),
            at_ms,
        };
        if self.queue.try_send(job).is_err() {
            self.tally(&mutation.doc.collection, |t| t.skipped += 1);
        }
    }

    fn tally(&self, collection: &str, f: impl FnOnce(&mut Tally)) {
        let mut reports = lock(&self.reports);
        if !reports.contains_key(collection) && reports.len() >= COLLECTIONS_MAX {
            return;
        }
        f(reports.entry(collection.to_owned()).or_default());
    }

    fn record(&self, job: &Job, shadow: Side) {
        let collection = &job.mutation.doc.collection;
        self.tally(collection, |t| {
            if shadow.outcome == "failed" {
                t.failed += 1;
                return;
            }
            t.compared += 1;
            if same_decision(&job.live, &shadow) {
                t.agreed += 1;
                return;
            }
            t.latest.push_front(Disagreement {
                id: job.mutation.id.clone(),
                client: job.mutation.client_name().to_owned(),
                key: job.mutation.doc.key.clone(),
                at_ms: job.at_ms,
                base_version: job.mutation.base_version,
                server_version: job.before.version,
                live: job.live.clone(),
                shadow,
            });
            t.latest.truncate(DISAGREEMENTS_KEPT);
        });
    }

    fn report(&self, collection: &str, config: &CollectionConfig) -> ShadowReport {
        let reports = lock(&self.reports);
        let t = reports.get(collection);
        let (compared, agreed) = t.map_or((0, 0), |t| (t.compared, t.agreed));
        ShadowReport {
            collection: collection.to_owned(),
            shadow_handler: config.shadow_handler.as_ref().map(|h| h.name().to_owned()),
            compared,
            agreed,
            disagreed: compared - agreed,
            failed: t.map_or(0, |t| t.failed),
            skipped: t.map_or(0, |t| t.skipped),
            agreement_rate: (compared > 0).then(|| agreed as f64 / compared as f64),
            disagreements: t.map_or_else(Vec::new, |t| t.latest.iter().cloned().collect()),
        }
    }
}

/// Runs the comparisons handed over, a few at a time.
pub(super) async fn run(inner: Arc<Inner>) {
    let Some(mut jobs) = lock(&inner.shadows.jobs).take() else {
        return;
    };
    let running = Arc::new(Semaphore::new(RUNNING_MAX));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = running.clone().acquire_owned().await else {
            return;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let step = inner
                .resolver
                .decide_dry(&job.before, &job.mutation, &job.config)
                .await;
            let shadow = if step.handler_failed {
                let reason = step.conflict.as_ref().map(|c| c.reason.clone());
                warn!(
                    id = %job.mutation.id,
                    collection = %job.mutation.doc.collection,
                    key = %job.mutation.doc.key,
                    error = reason.as_deref().unwrap_or(""),
                    "the shadow handler failed; the live outcome stands"
                );
                Side {
                    outcome: "failed".into(),
                    item: Value::Null,
                    reason,
                }
            } else {
                side(&step)
            };
            inner.shadows.record(&job, shadow);
            drop(permit);
        });
    }
}

/// What a step decided, as the report shows it.
fn side(step: &Step) -> Side {
    let reason = step
        .conflict
        .as_ref()
        .map(|c| c.reason.clone())
        .filter(|r| !r.is_empty());
    match &step.verdict {
        Verdict::Outcome { outcome, .. } => Side {
            outcome: outcome.as_str().into(),
            item: match outcome {
                Outcome::Rejected => Value::Null,
                _ => step.after.item_value(),
            },
            reason,
        },
        Verdict::NotFound { .. } => Side {
            outcome: "not_found".into(),
            item: Value::Null,
            reason,
        },
    }
}

/// The same outcome leaving the same document (reasons may differ).
fn same_decision(live: &Side, shadow: &Side) -> bool {
    live.outcome == shadow.outcome && live.item == shadow.item
}

impl Engine {
    /// The collection's shadow report: how often its shadow handler agreed
    /// with the live one, and the latest disagreements side by side.
    pub fn shadow_report(&self, collection: &str) -> ShadowReport {
        let config = self.inner.collection(collection);
        self.inner.shadows.report(collection, &config)
    }
}
