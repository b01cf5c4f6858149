//! Admission: the door, reservations of `(client, id)` (a resend waits for
//! or gets the original's answer), scoring, and synchronous, asynchronous and
//! batch admission into the queue.

use super::quarantine::{QuarantineAction, quarantined_answer};
use super::reply::{
    Answer, Queued, Refusal, RefusalReason, full_refusal, overloaded, reused_key, shutting_down,
    store_error_refusal,
};
use super::{Engine, Inner, LaneEntry, Origin, Pending, lock};
use crate::model::{DocKey, Mutation};
use crate::predict::Observation;
use crate::queue::{Full, LocalReservations, Reservations, Reserve};
use crate::store::StoreError;
use sluice_core::control::{Door, Shut};
use sluice_core::invariant;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

impl Engine {
    /// Decides one mutation and returns what the client is told.
    pub async fn submit(&self, mutation: Mutation) -> Answer {
        match self.enter(1) {
            Ok(entered) => self.submit_as(mutation, Origin::Sent, entered).await,
            Err(refused) => refused,
        }
    }

    /// `submit` for a mutation already let through the door by `enter`.
    pub async fn submit_entered(&self, mutation: Mutation, entered: InSystem) -> Answer {
        self.submit_as(mutation, Origin::Sent, entered).await
    }

    /// Decides a quarantined mutation again, or discards it, through its
    /// lane (see `act_on_quarantined`).
    pub(super) async fn submit_quarantined(
        &self,
        mutation: Mutation,
        action: QuarantineAction,
    ) -> Answer {
        match self.enter(1) {
            Ok(entered) => {
                self.submit_as(mutation, Origin::Quarantine(action), entered)
                    .await
            }
            Err(refused) => refused,
        }
    }

    async fn submit_as(&self, mutation: Mutation, origin: Origin, _entered: InSystem) -> Answer {
        // In cluster mode another process may own the document.
        let mutation = match origin {
            Origin::Sent => match self.route(mutation).await {
                Ok(here) => here,
                Err(answer) => return answer,
            },
            Origin::Accepted | Origin::Quarantine(_) | Origin::Expired => mutation,
        };
        let id = mutation.id.clone();
        match self.admit_as(mutation, origin).await {
            Ok(rx) => {
                self.inner.lanes.wake();
                self.await_answer(rx, &id).await
            }
            Err(answer) => answer,
        }
    }

    /// Claims `(client, id)` and queues the mutation in its lane: the
    /// receiver of its answer (its own, or the one of the same mutation in
    /// flight), or the answer it has already (a resend of a decided one, a
    /// refusal). The caller wakes the lanes.
    pub(super) async fn admit_as(
        &self,
        mutation: Mutation,
        origin: Origin,
    ) -> Result<oneshot::Receiver<Answer>, Answer> {
        let inner = &self.inner;
        let received_ms = inner.clock.now_ms();
        let guard = match self.claim(&mutation, origin).await {
            Claim::Answered(reply) => return Err(reply),
            Claim::Waiting(rx) => return Ok(rx),
            Claim::Fresh(guard) => guard,
        };
        let doc = mutation.doc.clone();
        let (queued, rank, rx) = self.prepare(mutation, received_ms, origin);
        match inner.lanes.admit(&doc, queued, rank) {
            Ok(ended) => ended.into_iter().for_each(|end| inner.leases.ended(end)),
            Err(refusal) => {
                let reply = inner.refuse(full_refusal(refusal, &doc), 1);
                guard.release(&reply);
                return Err(reply);
            }
        }
        // From here the worker that decides the mutation releases the reservation.
        guard.hand_over();
        Ok(rx)
    }

    /// Mutations of `client` being decided or queued now (synchronous ones
    /// and those answered 202 alike).
    pub fn in_flight_of(&self, client: &str) -> usize {
        self.inner.admission.held_by(client)
    }

    /// Accepts a mutation asynchronously: answers 202 once it is durably in the
    /// accept log (and queued); its outcome comes later, by
    /// `GET /v1/mutations/{id}`, a resend, or the client's event stream.
    pub async fn accept(&self, mutation: Mutation) -> Answer {
        if self.inner.closing.load(Ordering::SeqCst) {
            return self.inner.refuse(shutting_down(), 1);
        }
        if let Some(answer) = self.accept_clustered(mutation.clone()).await {
            return answer;
        }
        // On a task of its own: once the entry is in the log, the mutation
        // must also reach the queue, even if the request goes away meanwhile
        // (otherwise it would wait for the next start).
        let engine = self.clone();
        tokio::spawn(async move { engine.accept_logged(mutation, true, Origin::Accepted).await })
            .await
            .unwrap_or_else(|e| {
                Answer::Refused(Refusal::new(
                    RefusalReason::Internal,
                    format!("accepting the mutation failed: {e}"),
                ))
            })
    }

    /// `log`: write the accept-log entry first (a new request); recovery
    /// re-queues entries that are already there.
    pub(super) async fn accept_logged(
        &self,
        mutation: Mutation,
        log: bool,
        origin: Origin,
    ) -> Answer {
        let inner = &self.inner;
        let received_ms = inner.clock.now_ms();
        let guard = match self.claim(&mutation, origin).await {
            Claim::Answered(reply) => return reply,
            // A synchronous request for the same mutation is deciding it: it
            // is as good as queued.
            Claim::Waiting(_) => return queued_answer(&mutation.id, None),
            Claim::Fresh(guard) => guard,
        };
        let doc = mutation.doc.clone();
        let (client, id) = (mutation.client_name().to_owned(), mutation.id.clone());
        let entry = crate::store::Accepted {
            client: client.clone(),
            id: id.clone(),
            fingerprint: mutation.fingerprint,
            mutation: mutation.to_json(),
            score: 0.0,
            at_ms: received_ms,
        };
        let (queued, rank, _) = self.prepare(mutation, received_ms, origin);
        let reply = queued_answer(&id, Some(queued.score));
        if log {
            let entry = crate::store::Accepted {
                score: queued.score,
                ..entry
            };
            if let Err(e) = inner.store.accept(&entry).await {
                let refused = inner.refuse(store_error_refusal(&e), 1);
                guard.release(&refused);
                return refused;
            }
        }
        let admitted = inner.lanes.admit(&doc, queued, rank);
        if let Ok(Some(end)) = admitted {
            inner.leases.ended(end);
        }
        if let Err(refusal) = admitted {
            let refused = inner.refuse(full_refusal(refusal, &doc), 1);
            if log && let Err(e) = inner.store.unaccept(&client, &id).await {
                // Left in the log, it is queued again at the next start: late, not lost.
                warn!(id = %id, collection = %doc.collection, key = %doc.key, error = %e, "could not withdraw a refused accept");
            }
            guard.release(&refused);
            return refused;
        }
        lock(&inner.admission.reservations).mark_queued(&client, &id, reply.clone());
        guard.hand_over();
        inner.lanes.wake();
        if log {
            inner.telemetry.accepted();
        }
        reply
    }

    /// Queues again what the accept log holds: mutations answered 202 before
    /// a crash or a shutdown that did not finish them. Returns how many.
    pub async fn resume_accepted(&self) -> Result<usize, StoreError> {
        let entries = self.inner.store.pending_accepted().await?;
        if let Some(moved) = self.forward_accept_log(entries.clone()).await {
            return Ok(moved);
        }
        let mut resumed = 0;
        for entry in entries {
            match Mutation::from_json(&entry.mutation, entry.fingerprint) {
                Ok(mutation) => {
                    let doc = mutation.doc.clone();
                    let reply = self.accept_logged(mutation, false, Origin::Accepted).await;
                    match reply {
                        Answer::Queued(_) => resumed += 1,
                        // Decided or quarantined meanwhile: nothing to resume.
                        Answer::Decided(_) | Answer::Quarantined { .. } => {}
                        Answer::Refused(refusal) => {
                            warn!(id = %entry.id, collection = %doc.collection, key = %doc.key, reason = refusal.reason.code(), "an accepted mutation could not be queued again; it stays in the log")
                        }
                    }
                }
                Err(e) => {
                    error!(id = %entry.id, error = %e, "an accept-log entry is unreadable; it stays in the log")
                }
            }
        }
        if resumed > 0 {
            info!(
                resumed,
                "queued again the mutations accepted before the last stop"
            );
        }
        Ok(resumed)
    }

    /// The 202 of a mutation still in the accept log or in the staging
    /// area, if it is there.
    pub async fn queued_status(
        &self,
        client: &str,
        id: &str,
    ) -> Result<Option<Queued>, StoreError> {
        // In the order a mutation moves: a promotion writes the accept log
        // before it leaves the staging area, and a commit stores the reply
        // as it leaves the accept log. Asked the other way round, a
        // promotion between the two reads found it in neither, and a staged
        // mutation was answered 404 on its way to its lane.
        let store = &self.inner.store;
        if store.staged(client, id).await?.is_some() {
            return Ok(Some(Queued {
                id: id.to_owned(),
                score: None,
                staged: true,
            }));
        }
        Ok(store.accepted(client, id).await?.map(|entry| Queued {
            id: id.to_owned(),
            score: Some(entry.score),
            staged: false,
        }))
    }

    /// Events of `client` after `after_seq` (see `Store::events_after`).
    pub async fn events_after(
        &self,
        client: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.inner
            .store
            .events_after(client, after_seq, limit)
            .await
    }

    /// Where a stream of `client`'s events that starts now starts.
    pub async fn events_head(&self, client: &str) -> Result<i64, StoreError> {
        self.inner.store.events_head(client).await
    }

    /// The secret that makes event ids opaque: the same for every process
    /// on this store, made on first use.
    pub async fn events_secret(&self) -> Result<Arc<str>, StoreError> {
        self.inner
            .events_secret
            .get_or_try_init(|| async {
                let make = || {
                    // Two v4 UUIDs: 244 random bits from the OS.
                    format!(
                        "{}{}",
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    )
                };
                let secret = self.inner.store.secret("event_ids", &make).await?;
                Ok(Arc::from(secret))
            })
            .await
            .cloned()
    }

    /// A receiver that changes after every commit.
    pub fn commit_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.events.subscribe()
    }

    /// Decides a client's outbox: every mutation is admitted, in order, or
    /// none is (`Err` with the 429 for the whole batch); then each gets the
    /// answer it would have got alone, in the same order.
    pub async fn submit_batch(&self, mutations: Vec<Mutation>) -> Result<Vec<Answer>, Answer> {
        let _entered = self.enter(mutations.len())?;
        if self.spread_over_cluster(&mutations) {
            return Ok(self.submit_spread(mutations).await);
        }
        let inner = &self.inner;
        let received_ms = inner.clock.now_ms();
        let mut slots = Vec::with_capacity(mutations.len());
        for mutation in mutations {
            let id = mutation.id.clone();
            slots.push(match self.claim(&mutation, Origin::Sent).await {
                Claim::Answered(reply) => Slot::Answered(reply),
                Claim::Waiting(rx) => Slot::Waiting(rx, id),
                Claim::Fresh(guard) => {
                    let doc = mutation.doc.clone();
                    let (entry, rank, rx) = self.prepare(mutation, received_ms, Origin::Sent);
                    Slot::Admit(guard, doc, Box::new(entry), rank, rx, id)
                }
            });
        }
        let slots = match admit_all(inner, slots) {
            Ok(slots) => slots,
            Err((full, slots)) => {
                let reply = inner.refuse(batch_refusal(full), slots.len());
                for slot in slots {
                    if let Slot::Admit(guard, ..) = slot {
                        guard.release(&reply);
                    }
                }
                return Err(reply);
            }
        };
        inner.lanes.wake();
        let mut replies = Vec::with_capacity(slots.len());
        for slot in slots {
            replies.push(match slot {
                Slot::Answered(reply) => reply,
                Slot::Waiting(rx, id) => self.await_answer(rx, &id).await,
                Slot::Admit(..) => Answer::Refused(Refusal::new(
                    RefusalReason::Internal,
                    "a batch mutation was neither queued nor refused",
                )),
            });
        }
        Ok(replies)
    }

    /// Reserves `(client, id)`: a resend of a mutation in flight waits for its
    /// answer; a resend of a decided one gets the stored answer; the same id
    /// with another body is refused; otherwise the caller holds the reservation.
    /// An accept looks the store up (its 202 must not be given to a mutation
    /// decided before); for a mutation someone waits on, whether it was
    /// decided before (in another process, or before a restart) is found by
    /// its lane's commit, which writes nothing for a lane with a mutation
    /// already answered (`CommitOutcome::Resent`): a synchronous mutation
    /// costs no store read before it is queued. A quarantined mutation
    /// answers as such, unless this is an operator's action on it.
    async fn claim(&self, mutation: &Mutation, origin: Origin) -> Claim<'_> {
        let inner = &self.inner;
        let wait = !origin.is_accepted();
        let check_store = origin.is_accepted();
        let reservation = (mutation.client_name().to_owned(), mutation.id.clone());
        if !origin.is_from_quarantine()
            && let Some(kept) = inner.quarantine.get(&reservation.0, &reservation.1)
        {
            return Claim::Answered(if kept.fingerprint == mutation.fingerprint {
                quarantined_answer(&mutation.id, &kept.reason)
            } else {
                inner.refuse(reused_key(&mutation.id), 1)
            });
        }
        let in_flight: Option<Result<oneshot::Receiver<Answer>, Answer>> = {
            let mut reservations = lock(&inner.admission.reservations);
            let (client, id) = (&reservation.0, &reservation.1);
            match reservations.reserve(client, id, mutation.fingerprint) {
                Reserve::Reused => Some(Err(inner.refuse(reused_key(&mutation.id), 1))),
                Reserve::Held {
                    queued: Some(queued),
                } if !wait => Some(Err(queued)),
                Reserve::Held { .. } => {
                    let (tx, rx) = oneshot::channel();
                    // Held under this same lock, so the id cannot be released between.
                    let _ = reservations.wait(client, id, tx);
                    Some(Ok(rx))
                }
                Reserve::Fresh => None,
            }
        };
        match in_flight {
            Some(Ok(rx)) => return Claim::Waiting(rx),
            // An async resend of an accepted mutation: its outcome if it is
            // already stored (the reservation outlives the commit by the
            // history write), else its 202.
            Some(Err(reply @ Answer::Queued(_))) => {
                return match inner.reads.reply(&reservation.0, &reservation.1).await {
                    Ok(Some(stored)) => Claim::Answered(Answer::Decided(stored.decision)),
                    _ => Claim::Answered(reply),
                };
            }
            Some(Err(reply)) => return Claim::Answered(reply),
            None => {}
        }
        let guard = ReservationGuard {
            inner,
            reservation: Some(reservation.clone()),
        };
        if !check_store {
            return Claim::Fresh(guard);
        }
        // Under the reservation, a stored reply cannot appear behind our back:
        // only the holder of the reservation can store one.
        match inner.reads.reply(&reservation.0, &reservation.1).await {
            Ok(Some(stored)) => {
                let reply = if stored.fingerprint == mutation.fingerprint {
                    Answer::Decided(stored.decision)
                } else {
                    inner.refuse(reused_key(&mutation.id), 1)
                };
                guard.release(&reply);
                Claim::Answered(reply)
            }
            Ok(None) => Claim::Fresh(guard),
            Err(e) => {
                let reply = inner.refuse(store_error_refusal(&e), 1);
                guard.release(&reply);
                Claim::Answered(reply)
            }
        }
    }

    /// The client's mutations queued or being decided now, oldest first, at
    /// most `limit`: what a client shows as "not yet saved".
    pub fn pending(&self, client: &str, limit: usize) -> Vec<Pending> {
        lock(&self.inner.admission.reservations).pending(client, limit)
    }

    /// Scores the mutation (now, before anything about its outcome exists)
    /// and wraps it for its lane, with its rank and the receiver of its answer.
    fn prepare(
        &self,
        mutation: Mutation,
        received_ms: i64,
        origin: Origin,
    ) -> (LaneEntry, i64, oneshot::Receiver<Answer>) {
        let inner = &self.inner;
        let (tx, rx) = oneshot::channel();
        let lane_waiting = inner.lanes.waiting_len(&mutation.doc);
        let fields = mutation.fields_touched();
        let observation = Observation {
            doc: &mutation.doc,
            op: mutation.op,
            fields: &fields,
            client: mutation.client_name(),
            base_version: mutation.base_version,
            event_ms: mutation.ts_ms.unwrap_or(received_ms),
            lane_waiting,
        };
        let scored = inner
            .config
            .predictor
            .enabled
            .then(|| inner.learning.score(&observation));
        let probability = scored.as_ref().map_or(0.0, |s| s.probability);
        let admitted_at = inner.clock.elapsed();
        let boost_us = inner.config.priority_boost_ms as f64 * 1000.0 * probability;
        let rank = i64::try_from(admitted_at.as_micros()).unwrap_or(i64::MAX) - boost_us as i64;
        let pending = Pending {
            id: mutation.id.clone(),
            doc: mutation.doc.clone(),
            score: probability,
            received_ms,
        };
        lock(&inner.admission.reservations).mark_pending(mutation.client_name(), pending);
        let queued = LaneEntry {
            mutation,
            admitted_at,
            received_ms,
            score: probability,
            lane_waiting,
            origin,
            scored,
            answer: tx,
        };
        (queued, rank, rx)
    }

    pub(super) async fn await_answer(&self, rx: oneshot::Receiver<Answer>, id: &str) -> Answer {
        match tokio::time::timeout(self.inner.config.decide_timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Answer::Refused(Refusal::new(
                RefusalReason::Internal,
                "the mutation's worker stopped without an answer",
            )),
            Err(_) => self.inner.refuse(
                Refusal::new(
                    RefusalReason::DecisionTimeout,
                    format!(
                        "mutation {id} was not decided within {} ms; it stays queued: resend it with the same id to learn its outcome",
                        self.inner.config.decide_timeout.as_millis()
                    ),
                ),
                1,
            ),
        }
    }
}

/// Holds a `(client, id)` reservation until the mutation is queued. If the
/// request goes away first (the client disconnected during the stored-reply
/// lookup), dropping the guard frees the id, so that a resend is not stuck
/// behind a reservation nobody will release.
struct ReservationGuard<'a> {
    inner: &'a Inner,
    reservation: Option<(String, String)>,
}

impl ReservationGuard<'_> {
    fn release(mut self, reply: &Answer) {
        if let Some(reservation) = self.reservation.take() {
            self.inner.release(&reservation, reply);
        }
    }

    fn hand_over(mut self) {
        self.reservation = None;
    }
}

impl Drop for ReservationGuard<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            let reply = Answer::Refused(Refusal::new(
                RefusalReason::RequestAbandoned,
                "the first request with this id went away before its mutation was queued; nothing was applied, resend it",
            ));
            self.inner.release(&reservation, &reply);
        }
    }
}

/// The outcome of reserving a mutation's `(client, id)`.
enum Claim<'a> {
    Answered(Answer),
    Waiting(oneshot::Receiver<Answer>),
    Fresh(ReservationGuard<'a>),
}

fn queued_answer(id: &str, score: Option<f64>) -> Answer {
    Answer::Queued(Queued {
        id: id.to_owned(),
        score,
        staged: false,
    })
}

/// Admission's state: the door, the reservations of `(client, id)`, and
/// the count of requests between arrival and answer that the door judges
/// by. Its fields are this module's alone: other stages release a
/// reservation or read the figures through its methods.
pub(super) struct Admission {
    door: Mutex<Door>,
    /// `(client, id)`s being decided, and the resends waiting on them.
    reservations: Mutex<Box<dyn Reservations<oneshot::Sender<Answer>, Answer>>>,
    in_system: AtomicUsize,
    /// Of `in_system`, the mutations (not reads).
    mutations_in_system: AtomicUsize,
}

impl Admission {
    pub(super) fn new(queue_len_max: usize) -> Admission {
        Admission {
            door: Mutex::new(Door::new(queue_len_max)),
            reservations: Mutex::new(Box::new(LocalReservations::default())),
            in_system: AtomicUsize::new(0),
            mutations_in_system: AtomicUsize::new(0),
        }
    }

    /// Frees a reservation; returns the resends that waited on it.
    pub(super) fn release(&self, client: &str, id: &str) -> Vec<oneshot::Sender<Answer>> {
        lock(&self.reservations).release(client, id)
    }

    /// Mutations of `client` being decided or queued now.
    pub(super) fn held_by(&self, client: &str) -> usize {
        lock(&self.reservations).held_by(client)
    }

    /// Requests between arrival and answer now.
    pub(super) fn in_system(&self) -> usize {
        self.in_system.load(Ordering::Relaxed)
    }

    /// The door's adaptive limit now.
    pub(super) fn limit(&self) -> usize {
        lock(&self.door).limit()
    }

    /// The door's invariants.
    pub(super) fn check(&self) -> Result<(), String> {
        lock(&self.door).check()
    }
}

/// A request inside Sluice (mutations between arrival and answer, or a
/// document read); leaves the count on drop. Owned, so that the API can let
/// a request through the door before it reads its body.
pub struct InSystem {
    inner: Arc<Inner>,
    n: usize,
    /// Mutations (not reads): what a stalled queue is judged by.
    mutations: bool,
    /// When admitted mutations entered: their stay is told to the door.
    entered_at: Option<Duration>,
}

impl InSystem {
    /// Leaves the count only, telling the door nothing of its stay (a check
    /// that is not followed by a decision).
    pub fn without_stay(mut self) -> InSystem {
        self.entered_at = None;
        self
    }
}

impl Drop for InSystem {
    fn drop(&mut self) {
        self.inner
            .admission
            .in_system
            .fetch_sub(self.n, Ordering::SeqCst);
        if self.mutations {
            self.inner
                .admission
                .mutations_in_system
                .fetch_sub(self.n, Ordering::SeqCst);
        }
        if let Some(entered_at) = self.entered_at {
            let inner = &self.inner;
            let now = inner.clock.elapsed();
            let stay_ms = now.saturating_sub(entered_at).as_secs_f64() * 1000.0;
            let depth = inner.admission.in_system.load(Ordering::Relaxed);
            let bound_ms = inner.config.queue_wait_max_ms as f64;
            lock(&inner.admission.door).observe_stay(now, stay_ms, depth, bound_ms);
        }
    }
}

impl Engine {
    /// Lets `n` synchronous mutations through the door, or refuses them
    /// (429 `overloaded`): called by the API before it reads the body, so a
    /// refusal costs no parsing. The entry is handed to `submit_entered`
    /// (a batch is checked for one, then enters whole in `submit_batch`).
    pub fn enter(&self, n: usize) -> Result<InSystem, Answer> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(self.inner.refuse(shutting_down(), n));
        }
        Inner::enter(&self.inner, n, true).map_err(|shut| self.inner.refuse(overloaded(shut), n))
    }
}

impl Inner {
    /// Lets `n` requests in, or refuses them (with the recent queue wait)
    /// when the door's adaptive limit is reached. The limit counts every
    /// request between arrival and answer, not only the queued ones: under
    /// overload requests also pile up on the store's connections (the resend
    /// check, document reads) before they reach the queue.
    ///
    /// Document reads pass the same door (`mutations` false): they count
    /// toward the limit, so an overloaded Sluice refuses a client's read as
    /// fast as its write, but they do not make a queue look stalled.
    pub(super) fn enter(this: &Arc<Inner>, n: usize, mutations: bool) -> Result<InSystem, Shut> {
        let admission = &this.admission;
        let depth = admission.in_system.fetch_add(n, Ordering::SeqCst);
        let inside = if mutations {
            admission.mutations_in_system.fetch_add(n, Ordering::SeqCst)
        } else {
            admission.mutations_in_system.load(Ordering::Relaxed)
        };
        let mut entered = InSystem {
            inner: this.clone(),
            n,
            mutations,
            entered_at: None,
        };
        if this.config.queue_wait_max_ms == 0 {
            return Ok(entered);
        }
        let now = this.clock.elapsed();
        let bound_ms = this.config.queue_wait_max_ms as f64;
        // A refusal leaves only the count: its instant stay must not pull
        // the window's mean down.
        lock(&admission.door).admit(now, depth, inside, n, bound_ms)?;
        entered.entered_at = mutations.then_some(now);
        Ok(entered)
    }

    /// Tells the door how long the mutations a worker just took waited in
    /// the queue.
    pub(super) fn taken(&self, admitted_at: impl Iterator<Item = Duration>) {
        if self.config.queue_wait_max_ms == 0 {
            return;
        }
        let now = self.clock.elapsed();
        let waits = admitted_at.map(|at| now.saturating_sub(at).as_secs_f64() * 1000.0);
        let depth = self.admission.in_system.load(Ordering::Relaxed);
        lock(&self.admission.door).observe(now, waits, depth, self.config.queue_wait_max_ms as f64);
    }

    /// Counts `n` mutations refused and hands the refusal back as their
    /// answer.
    pub(super) fn refuse(&self, refusal: Refusal, n: usize) -> Answer {
        self.telemetry.refused(refusal.reason.code(), n);
        Answer::Refused(refusal)
    }
}

/// A batch mutation on its way: answered already, waiting on an answer, or
/// to be admitted (with its reservation, lane, entry, rank, receiver, id).
enum Slot<'a> {
    Answered(Answer),
    Waiting(oneshot::Receiver<Answer>, String),
    Admit(
        ReservationGuard<'a>,
        DocKey,
        Box<LaneEntry>,
        i64,
        oneshot::Receiver<Answer>,
        String,
    ),
}

/// Admits every `Admit` slot of a batch under one lock, or none of them
/// when the queue or a lane lacks the room (then the bound that refused,
/// and the slots untouched).
fn admit_all<'a>(
    inner: &Inner,
    slots: Vec<Slot<'a>>,
) -> Result<Vec<Slot<'a>>, (Full, Vec<Slot<'a>>)> {
    let (admitted, ended) = inner.lanes.admit_with(|queue| {
        let mut per_lane: HashMap<&DocKey, usize> = HashMap::new();
        for slot in &slots {
            if let Slot::Admit(_, doc, ..) = slot {
                *per_lane.entry(doc).or_default() += 1;
            }
        }
        let admits: usize = per_lane.values().sum();
        let refusal = if !queue.has_room(admits) {
            Some(Full::QueueFull)
        } else {
            per_lane
                .iter()
                .find(|(doc, n)| queue.lane_room(doc) < **n)
                .map(|_| Full::LaneFull)
        };
        drop(per_lane);
        if let Some(full) = refusal {
            return Err((full, slots));
        }
        let mut admitted = Vec::with_capacity(slots.len());
        for slot in slots {
            admitted.push(match slot {
                Slot::Admit(guard, doc, entry, rank, rx, id) => {
                    let fits = queue.admit(&doc, *entry, rank);
                    invariant::hold(fits.is_ok(), "room was checked under the same lock");
                    guard.hand_over();
                    Slot::Waiting(rx, id)
                }
                other => other,
            });
        }
        Ok(admitted)
    });
    for end in ended {
        inner.leases.ended(end);
    }
    admitted
}

/// Why a batch was refused whole.
fn batch_refusal(full: Full) -> Refusal {
    match full {
        Full::QueueFull => Refusal::new(
            RefusalReason::QueueFull,
            "the batch does not fit in the mutation queue; nothing of it was queued, retry after a moment",
        ),
        Full::LaneFull => Refusal::new(
            RefusalReason::LaneFull,
            "the batch would overfill a document's lane; nothing of it was queued, retry after a moment",
        ),
    }
}
