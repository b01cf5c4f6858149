//! `POST /v1/mutations:simulate`: what mutations would meet now, decided as
//! their lanes would decide them, writing nothing and recording nothing.
//!
//! Each document is read from the store (not from the cache: in a cluster
//! another member may own it), and the mutations of one document are
//! decided in order, each against the state the previous one would leave,
//! as a lane decides them. Custom handlers run with `"dry_run": true`. The
//! real write may meet another state: its outcome is the one answered and
//! recorded.

use super::{Engine, Inner, ReadError, chain, reply};
use crate::model::{DocKey, Document, Mutation, Verdict, encoded_len};
use crate::predict::Observation;
use serde_json::Value;
use std::collections::HashMap;

/// What one mutation would meet.
#[derive(Clone, Debug, PartialEq)]
pub struct Simulated {
    pub id: String,
    pub doc: DocKey,
    /// The document's version it would be decided against.
    pub current_version: u64,
    /// Its base is not that version: the collection's handler decides.
    pub would_conflict: bool,
    /// `applied`, `merged`, `rejected`, `not_found`, or `refused` (the
    /// document it would leave is over `document_bytes_max`).
    pub outcome: &'static str,
    /// The version and the item it would leave.
    pub version: u64,
    pub item: Value,
    /// The handler that would decide a conflict, and its reason.
    pub handler: Option<String>,
    pub reason: Option<String>,
    /// The predicted conflict probability, as admission would score it.
    pub score: f64,
    /// An estimate of its wait in the lane: the mutations queued before
    /// it, decided a batch at a time, one store round trip a batch.
    pub expected_wait_ms: f64,
}

impl Engine {
    /// Simulates `mutations` in order (see the module's comment).
    pub async fn simulate(&self, mutations: &[Mutation]) -> Result<Vec<Simulated>, ReadError> {
        let inner = &self.inner;
        let _in_system = Inner::enter(&self.inner, mutations.len().max(1), false)
            .map_err(|shut| ReadError::Overloaded(reply::overloaded(shut)))?;
        let mut states: HashMap<DocKey, Document> = HashMap::new();
        let mut ahead: HashMap<DocKey, usize> = HashMap::new();
        let mut results = Vec::with_capacity(mutations.len());
        for m in mutations {
            let state = match states.get(&m.doc) {
                Some(state) => state.clone(),
                None => inner.reads.document(&m.doc).await?,
            };
            let queued = ahead
                .entry(m.doc.clone())
                .or_insert_with(|| inner.lanes.waiting_len(&m.doc));
            let simulated = simulate_one(inner, m, &state, *queued).await;
            *queued += 1;
            let after = if simulated.outcome == "refused" {
                state
            } else {
                Document {
                    version: simulated.version,
                    item: simulated.item.as_object().cloned(),
                }
            };
            states.insert(m.doc.clone(), after);
            results.push(simulated);
        }
        Ok(results)
    }
}

async fn simulate_one(inner: &Inner, m: &Mutation, state: &Document, queued: usize) -> Simulated {
    let config = inner.collection(&m.doc.collection);
    // Chained onto its client's own writes, as a lane would.
    let chained = match m.base_version {
        Some(base) if config.chain_own_writes && base < state.version => {
            chain::only_own_writes(inner, &m.doc, base, state.version, m.client_name(), &[]).await
        }
        _ => false,
    };
    let rebased = chained.then(|| Mutation {
        base_version: Some(state.version),
        ..m.clone()
    });
    let decided_as = rebased.as_ref().unwrap_or(m);
    let step = inner.resolver.decide_dry(state, decided_as, &config).await;
    let (mut outcome, version, handler, reason) = match &step.verdict {
        Verdict::Outcome {
            outcome,
            version,
            conflict,
        } => (
            outcome.as_str(),
            *version,
            conflict.as_ref().map(|c| c.handler.clone()),
            conflict.as_ref().and_then(|c| c.reason.clone()),
        ),
        Verdict::NotFound { version } => ("not_found", *version, None, None),
    };
    let mut reason = reason;
    let too_large = step
        .after
        .item
        .as_ref()
        .is_some_and(|item| encoded_len(item) > inner.config.document_bytes_max);
    if too_large && version > state.version {
        outcome = "refused";
        reason = Some(format!(
            "the document would be larger than {} bytes (document_bytes_max)",
            inner.config.document_bytes_max
        ));
    }
    let score = if inner.config.predictor.enabled {
        let fields = m.fields_touched();
        inner
            .learning
            .score(&Observation {
                doc: &m.doc,
                op: m.op,
                fields: &fields,
                client: m.client_name(),
                base_version: m.base_version,
                event_ms: m.ts_ms.unwrap_or_else(|| inner.clock.now_ms()),
                lane_waiting: queued,
            })
            .probability
    } else {
        0.0
    };
    let batches = queued.div_ceil(inner.config.queue.batch_len_max.max(1));
    let latency_ms = super::lock(&inner.control).state().store_latency_ms;
    Simulated {
        id: m.id.clone(),
        doc: m.doc.clone(),
        current_version: state.version,
        would_conflict: !chained && m.base_version.is_some_and(|b| b != state.version),
        outcome,
        version: if outcome == "refused" {
            state.version
        } else {
            version
        },
        item: if outcome == "refused" {
            state.item_value()
        } else {
            step.after.item_value()
        },
        handler,
        reason,
        score,
        expected_wait_ms: batches as f64 * latency_ms,
    }
}
