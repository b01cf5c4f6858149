//! Shadow writes: a mutation sent with `"shadow": true` (or, with
//! `staging.shed_when_overloaded`, a likely-harmless one that arrives while
//! the dispatcher is over its load threshold) is written to the staging
//! area in the store — beside the live documents, not in them — and
//! answered 202 `staged`. The validator promotes staged mutations, oldest
//! first, while the load is under the threshold: each goes through the
//! accept log into its lane and is decided against the live document like
//! any other, so its client learns the outcome from its event stream or
//! `GET /v1/mutations/{id}`. One staged longer than `staging.expire_ms` is
//! rejected instead (reason `expired in staging`), through the same path.
//!
//! Nothing is lost or promoted twice across a crash: a promotion writes the
//! accept-log entry before it removes the staged one, and a mutation found
//! in both is promoted again as a resend, which idempotency answers.

use super::reply::{Queued, Refusal, RefusalReason, shutting_down, store_error_refusal};
use super::{Answer, Engine, Inner, Origin, lock};
use crate::model::{DocKey, Mutation};
use crate::predict::Observation;
use crate::store::Accepted;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tracing::{info, warn};

/// The reason an expired staged mutation is rejected with.
pub(super) const EXPIRED: &str = "expired in staging";
/// How many the validator promotes at most each time it looks.
const PROMOTE_BATCH: u32 = 64;
/// Staged mutations `GET /v1/shadow` lists at most.
pub const STAGED_LIST_MAX: u32 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StagingConfig {
    /// Stage mutations scored below `shed_below` that arrive while the load
    /// is over the threshold, as if sent with `"shadow": true`.
    pub shed_when_overloaded: bool,
    pub shed_below: f64,
    /// A staged mutation not promoted within this is rejected as expired.
    pub expire: Duration,
    /// Mutations staged at once, at most (429 `queue_full` past it).
    pub staged_max: usize,
    /// How often the validator looks at the staging area.
    pub validate_every: Duration,
}

/// What `GET /v1/shadow` shows of one staged mutation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StagedView {
    pub id: String,
    pub client: String,
    pub collection: String,
    pub key: String,
    pub op: String,
    pub base_version: Option<u64>,
    pub staged_ms: i64,
    pub waited_ms: i64,
    /// The document's version now, whether the mutation's base is behind
    /// it (a conflict if it were decided now), and its score now.
    pub current_version: u64,
    pub would_conflict: bool,
    pub score: f64,
}

/// Staged mutations counted (from the store at start, then kept).
pub(super) struct Staging {
    pub(super) count: AtomicUsize,
}

impl Engine {
    /// Whether this process is in a cluster: shadow writes are not offered
    /// there yet (an expiry could not be told to the document's owner).
    pub fn is_clustered(&self) -> bool {
        self.inner.cluster.get().is_some()
    }

    /// Whether a mutation is staged rather than queued because the load is
    /// over the threshold and its score is low (when configured).
    pub fn sheds(&self, mutation: &Mutation) -> bool {
        let inner = &self.inner;
        let config = inner.config.staging;
        if !config.shed_when_overloaded || inner.cluster.get().is_some() {
            return false;
        }
        self.over_threshold() && score_now(inner, mutation) < config.shed_below
    }

    /// Stages a shadow write; 202 `staged` once it is in the staging area. A
    /// resend of a staged mutation is answered the same; of a queued or
    /// decided one, as that one.
    pub async fn stage(&self, mutation: Mutation) -> Answer {
        let inner = &self.inner;
        if inner.closing.load(Ordering::SeqCst) {
            return inner.refuse(shutting_down(), 1);
        }
        match self.staged_before(&mutation).await {
            Ok(Some(answer)) => return answer,
            Ok(None) => {}
            Err(e) => return inner.refuse(store_error_refusal(&e), 1),
        }
        if inner.staging.count.load(Ordering::Relaxed) >= inner.config.staging.staged_max {
            return inner.refuse(
                Refusal::new(
                    RefusalReason::QueueFull,
                    format!(
                        "the staging area holds {} shadow writes, its bound; retry later or send without \"shadow\"",
                        inner.config.staging.staged_max
                    ),
                ),
                1,
            );
        }
        let entry = Accepted {
            client: mutation.client_name().to_owned(),
            id: mutation.id.clone(),
            fingerprint: mutation.fingerprint,
            mutation: mutation.to_json(),
            score: score_now(inner, &mutation),
            at_ms: inner.clock.now_ms(),
        };
        match inner.store.stage(&entry, &mutation.doc.collection).await {
            Ok(true) => {
                inner.staging.count.fetch_add(1, Ordering::Relaxed);
                staged_answer(&mutation.id)
            }
            // Staged meanwhile by a resend of the same request.
            Ok(false) => staged_answer(&mutation.id),
            Err(e) => inner.refuse(store_error_refusal(&e), 1),
        }
    }

    /// The answer to a resend: decided, queued, or staged already (the same
    /// id with another body is refused); `None` for a new mutation.
    async fn staged_before(
        &self,
        mutation: &Mutation,
    ) -> Result<Option<Answer>, crate::store::StoreError> {
        let store = &self.inner.store;
        let client = mutation.client_name();
        let reused = |fingerprint: u64| {
            (fingerprint != mutation.fingerprint).then(|| {
                Answer::Refused(Refusal::new(
                    RefusalReason::IdempotencyKeyReused,
                    format!(
                        "id {:?} was used by this client for a different mutation",
                        mutation.id
                    ),
                ))
            })
        };
        if let Some(staged) = store.staged(client, &mutation.id).await? {
            return Ok(Some(
                reused(staged.fingerprint).unwrap_or_else(|| staged_answer(&mutation.id)),
            ));
        }
        // Staged, queued, decided: in the order a mutation moves (see
        // `queued_status`), so that one moving meanwhile is still found.
        if let Some(entry) = store.accepted(client, &mutation.id).await? {
            return Ok(Some(Answer::Queued(Queued {
                id: mutation.id.clone(),
                score: Some(entry.score),
                staged: false,
            })));
        }
        if let Some(stored) = store.reply(client, &mutation.id).await? {
            return Ok(Some(
                reused(stored.fingerprint).unwrap_or(Answer::Decided(stored.decision)),
            ));
        }
        Ok(None)
    }

    /// `GET /v1/shadow`: what is staged, oldest first, each with what it
    /// would meet if it were decided now.
    pub async fn staged(
        &self,
        collection: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StagedView>, crate::store::StoreError> {
        let inner = &self.inner;
        let now_ms = inner.clock.now_ms();
        let mut views = Vec::new();
        for entry in inner.store.staged_list(collection, limit).await? {
            let Ok(m) = Mutation::from_json(&entry.mutation, entry.fingerprint) else {
                continue;
            };
            let current = inner.reads.document(&m.doc).await?.version;
            views.push(StagedView {
                id: m.id.clone(),
                client: entry.client.clone(),
                collection: m.doc.collection.clone(),
                key: m.doc.key.clone(),
                op: m.op.as_str().to_owned(),
                base_version: m.base_version,
                staged_ms: entry.at_ms,
                waited_ms: now_ms.saturating_sub(entry.at_ms),
                current_version: current,
                would_conflict: m.base_version.is_some_and(|b| b != current),
                score: score_now(inner, &m),
            });
        }
        Ok(views)
    }
}

fn staged_answer(id: &str) -> Answer {
    Answer::Queued(Queued {
        id: id.to_owned(),
        score: None,
        staged: true,
    })
}

/// The mutation's conflict score if it were queued now.
fn score_now(inner: &Inner, m: &Mutation) -> f64 {
    if !inner.config.predictor.enabled {
        return 0.0;
    }
    let fields = m.fields_touched();
    let observation = Observation {
        doc: &m.doc,
        op: m.op,
        fields: &fields,
        client: m.client_name(),
        base_version: m.base_version,
        event_ms: inner.clock.now_ms(),
        lane_waiting: inner.lanes.waiting_len(&m.doc),
    };
    inner.learning.score(&observation).probability
}

/// Counts what is staged (at start), then promotes staged mutations while
/// the load allows and expires the ones past their bound.
pub(super) async fn validate(inner: Arc<Inner>) {
    let max = u32::try_from(inner.config.staging.staged_max).unwrap_or(u32::MAX);
    match inner.store.staged_list(None, max).await {
        Ok(staged) => inner.staging.count.store(staged.len(), Ordering::Relaxed),
        Err(e) => warn!(error = %e, "could not count the staging area"),
    }
    let engine = Engine {
        inner: inner.clone(),
    };
    let mut tick = tokio::time::interval(inner.config.staging.validate_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.closing.load(Ordering::SeqCst) {
            return;
        }
        if inner.staging.count.load(Ordering::Relaxed) == 0 {
            continue;
        }
        if let Err(e) = engine.promote().await {
            warn!(error = %e, "the staging area could not be read; promotion waits");
        }
    }
}

impl Engine {
    /// One round of the validator: the oldest staged mutations promoted
    /// (or expired) in order while the load is under the threshold.
    async fn promote(&self) -> Result<(), crate::store::StoreError> {
        let inner = &self.inner;
        if self.is_clustered() {
            // Staged before this process joined a cluster: promoting here
            // would decide documents another member may own. They wait for
            // a start outside cluster mode.
            return Ok(());
        }
        let expire_ms = i64::try_from(inner.config.staging.expire.as_millis()).unwrap_or(i64::MAX);
        let counted = inner.staging.count.load(Ordering::SeqCst);
        let staged = inner.store.staged_list(None, PROMOTE_BATCH).await?;
        if staged.is_empty() {
            // Promoted by another process on the store (or counted at start
            // and gone since): nothing to look at until this one stages,
            // unless it staged one meanwhile (the count moved).
            let _ = inner.staging.count.compare_exchange(
                counted,
                0,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        for entry in staged {
            let expired = inner.clock.now_ms().saturating_sub(entry.at_ms) > expire_ms;
            if !expired && !self.load_allows() {
                return Ok(());
            }
            let mutation = match Mutation::from_json(&entry.mutation, entry.fingerprint) {
                Ok(m) => m,
                Err(e) => {
                    warn!(client = %entry.client, id = %entry.id, error = %e, "an unreadable staged mutation is dropped");
                    self.unstaged(&entry).await?;
                    continue;
                }
            };
            let doc: DocKey = mutation.doc.clone();
            let origin = if expired {
                Origin::Expired
            } else {
                Origin::Accepted
            };
            // Into the accept log (and the lane) first, out of staging after:
            // a crash in between promotes it again, as a resend.
            match self.accept_logged(mutation, true, origin).await {
                Answer::Refused(refusal) if refusal.reason.is_transient() => {
                    // No room, or no store, now: it waits in staging, and
                    // so do the ones behind it (they keep their order).
                    info!(id = %entry.id, collection = %doc.collection, key = %doc.key,
                          reason = %refusal.message, "a staged mutation waits for room");
                    return Ok(());
                }
                Answer::Refused(refusal) => {
                    // It will never be accepted (its id was used meanwhile
                    // for another mutation): it leaves, not to hold up the
                    // ones behind it.
                    warn!(id = %entry.id, collection = %doc.collection, key = %doc.key,
                          reason = %refusal.message, "a staged mutation is dropped");
                    self.unstaged(&entry).await?;
                }
                _ => {
                    if expired {
                        info!(id = %entry.id, collection = %doc.collection, key = %doc.key,
                              "a staged mutation expired");
                    }
                    self.unstaged(&entry).await?;
                }
            }
        }
        Ok(())
    }

    async fn unstaged(&self, entry: &Accepted) -> Result<(), crate::store::StoreError> {
        if self.inner.store.unstage(&entry.client, &entry.id).await? {
            let count = &self.inner.staging.count;
            let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        }
        Ok(())
    }

    /// Under the load threshold, and the queue less than half full.
    fn load_allows(&self) -> bool {
        let pending = self.inner.lanes.counts().pending;
        !self.over_threshold() && pending * 2 < self.inner.config.queue.queue_len_max
    }

    /// The load is over the threshold, as the dispatcher judges it: only
    /// with at least the floor of lanes in flight, since the load signals
    /// are refreshed by the lanes, and with fewer the dispatcher goes on
    /// whatever they say (they cannot fall by waiting on ourselves).
    fn over_threshold(&self) -> bool {
        let inner = &self.inner;
        let (state, floor) = {
            let control = lock(&inner.control);
            (control.state(), control.in_flight_floor())
        };
        let in_flight = inner.lanes.in_flight();
        in_flight >= floor
            && super::control::load(&inner.signals(&state, in_flight)) >= state.threshold
    }
}
