//! The engine in cluster mode: which process decides a mutation, and how
//! the mutation and its answer travel.
//!
//! A mutation of a partition this process owns is decided here, as on one
//! node, once the partition's stream has been read: a mutation another
//! process forwarded (and perhaps answered 202) before this one arrived is
//! queued first, so a client's edits keep their order whichever process
//! they reach. Any other mutation goes into its partition's stream; the
//! member the partition is placed on is rung through its inbox and admits
//! the stream's entries in order; a synchronous mutation's answer comes
//! back through the receiving process's inbox, and the entry is
//! acknowledged only after that (its reply is committed by then). An entry
//! whose owner dies unacknowledged is claimed by the next owner; deciding
//! it again answers what was stored. `?wait=false` mutations go into the
//! stream wherever they arrive: the 202 is given once Redis has them.

use super::reply::{Answer, Queued, Refusal, RefusalReason};
use super::{Engine, Origin, lock};
use crate::cluster::{ClusterError, Entry, Ownership, SharedRelay, TickReport};
use crate::model::{Decision, DecisionKind, Mutation};
use crate::store::Fence;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

/// Entries admitted per read of a stream.
const READ_BATCH: usize = 100;
/// How long an inbox read waits before it looks at the shutdown flag.
const INBOX_WAIT: Duration = Duration::from_secs(1);

pub(super) struct ClusterRole {
    pub(super) ownership: Arc<Ownership>,
    relay: SharedRelay,
    /// Forwarded synchronous mutations waiting for their owner's answer,
    /// by token: at most one per request let through the door.
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    /// One reader per partition's stream at a time, so its entries are
    /// admitted in the stream's order.
    readers: Vec<tokio::sync::Mutex<()>>,
    tokens: AtomicU64,
    left: AtomicBool,
    /// How often the learning loop retrains from the shared history.
    pub(super) retrain_every: Duration,
}

/// A stream entry: a mutation on its way to its partition's owner.
#[derive(Serialize, Deserialize)]
struct Forwarded {
    /// The token its answer comes back under.
    t: String,
    /// The member whose inbox the answer goes to.
    r: String,
    /// Whether a caller waits for the answer (`false`: answered 202).
    w: bool,
    /// The mutation's fingerprint, as its receiver computed it.
    f: u64,
    /// The mutation, as the accept log keeps it.
    m: String,
}

/// An inbox message.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Message {
    /// A partition's stream has new entries.
    Ring { p: u32 },
    /// The answer to a forwarded mutation.
    Answer { t: String, a: WireAnswer },
}

/// An engine's answer as it travels between processes.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum WireAnswer {
    Decided { code: i64, body: String },
    Queued { id: String, score: Option<f64> },
    Quarantined { id: String, reason: String },
    Refused { code: String, message: String },
}

impl From<&Answer> for WireAnswer {
    fn from(answer: &Answer) -> WireAnswer {
        match answer {
            Answer::Decided(d) => WireAnswer::Decided {
                code: d.kind.stored_code(),
                body: d.body.clone(),
            },
            Answer::Queued(q) => WireAnswer::Queued {
                id: q.id.clone(),
                score: q.score,
            },
            Answer::Quarantined { id, reason } => WireAnswer::Quarantined {
                id: id.clone(),
                reason: reason.clone(),
            },
            Answer::Refused(r) => WireAnswer::Refused {
                code: r.reason.code().to_string(),
                message: r.message.clone(),
            },
        }
    }
}

impl From<WireAnswer> for Answer {
    fn from(wire: WireAnswer) -> Answer {
        match wire {
            WireAnswer::Decided { code, body } => match DecisionKind::from_stored_code(code) {
                Some(kind) => Answer::Decided(Decision { kind, body }),
                None => internal(format!("an answer of unknown kind {code} came back")),
            },
            WireAnswer::Queued { id, score } => Answer::Queued(Queued {
                id,
                score,
                staged: false,
            }),
            WireAnswer::Quarantined { id, reason } => Answer::Quarantined { id, reason },
            WireAnswer::Refused { code, message } => match RefusalReason::from_code(&code) {
                Some(reason) => Answer::Refused(Refusal::new(reason, message)),
                None => internal(format!("a refusal of unknown code {code:?} came back")),
            },
        }
    }
}

fn internal(message: String) -> Answer {
    Answer::Refused(Refusal::new(RefusalReason::Internal, message))
}

/// How long a `?wait=false` mutation is known as queued at most: a day
/// (the note is removed when it is decided; this bounds a lost removal).
const QUEUED_NOTE_TTL: Duration = Duration::from_secs(24 * 3600);

fn unavailable(e: &ClusterError) -> Refusal {
    Refusal::new(
        RefusalReason::ClusterUnavailable,
        format!(
            "the cluster's Redis did not take the mutation ({e}); nothing was applied, resend it with the same id"
        ),
    )
}

/// Whether an answer means "not decided by this owner": left in the
/// stream for the next owner.
fn left_for_next_owner(answer: &Answer) -> bool {
    matches!(answer, Answer::Refused(r) if matches!(r.reason, RefusalReason::PartitionMoved | RefusalReason::ShuttingDown))
}

/// See `Engine::cluster_view`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterView {
    pub partitions: u32,
    pub members: Vec<ClusterMember>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterMember {
    pub id: String,
    pub address: String,
    pub last_seen_ms: i64,
    pub partitions: Vec<OwnedPartition>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OwnedPartition {
    pub partition: u32,
    pub epoch: u64,
    /// Entries of its stream not yet acknowledged.
    pub backlog: u64,
}

impl ClusterRole {
    async fn view(&self) -> Result<ClusterView, ClusterError> {
        let partitions = self.ownership.config().partitions;
        let holders = self.ownership.holders().await?;
        let backlogs: Vec<u64> =
            futures_util::future::join_all((0..partitions).map(|p| self.relay.backlog(p)))
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
        let members = self
            .ownership
            .members()
            .into_iter()
            .map(|m| ClusterMember {
                partitions: (0..partitions)
                    .zip(&holders)
                    .zip(&backlogs)
                    .filter_map(|((partition, holder), backlog)| {
                        let holder = holder.as_ref().filter(|h| h.member == m.id)?;
                        Some(OwnedPartition {
                            partition,
                            epoch: holder.epoch,
                            backlog: *backlog,
                        })
                    })
                    .collect(),
                id: m.id,
                address: m.address,
                last_seen_ms: m.last_seen_ms,
            })
            .collect();
        Ok(ClusterView {
            partitions,
            members,
        })
    }

    fn new(ownership: Arc<Ownership>, relay: SharedRelay, retrain_every: Duration) -> ClusterRole {
        let partitions = ownership.config().partitions;
        ClusterRole {
            ownership,
            relay,
            waiting: Mutex::new(HashMap::new()),
            readers: (0..partitions)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            tokens: AtomicU64::new(0),
            left: AtomicBool::new(false),
            retrain_every,
        }
    }

    fn me(&self) -> &str {
        self.ownership.member_id()
    }

    /// The fence a lane of this partition commits under: its lease's epoch,
    /// or 0 (which no store accepts) when this process may not decide it.
    pub(super) fn fence_for(&self, doc: &crate::model::DocKey) -> Fence {
        let partition = self.ownership.partition_of(doc);
        self.ownership.fence_of(partition).unwrap_or(Fence {
            partition,
            epoch: 0,
        })
    }

    fn reader(&self, partition: u32) -> Option<&tokio::sync::Mutex<()>> {
        self.readers.get(usize::try_from(partition).ok()?)
    }

    /// Puts a mutation into its partition's stream and rings the member it
    /// is placed on; the receiver of its answer when someone waits for it.
    async fn push(
        &self,
        partition: u32,
        mutation: &Mutation,
        wait: bool,
    ) -> Result<Option<(String, oneshot::Receiver<Answer>)>, Refusal> {
        let token = format!(
            "{}.{}",
            self.me(),
            self.tokens.fetch_add(1, Ordering::Relaxed)
        );
        let body = serde_json::to_string(&Forwarded {
            t: token.clone(),
            r: self.me().to_string(),
            w: wait,
            f: mutation.fingerprint,
            m: mutation.to_json(),
        })
        .map_err(|e| Refusal::new(RefusalReason::Internal, e.to_string()))?;
        let rx = wait.then(|| {
            let (tx, rx) = oneshot::channel();
            lock(&self.waiting).insert(token.clone(), tx);
            rx
        });
        if let Err(e) = self.relay.push(partition, &body).await {
            lock(&self.waiting).remove(&token);
            return Err(unavailable(&e));
        }
        if let Some(owner) = self.ownership.placed_on(partition) {
            let ring = serde_json::to_string(&Message::Ring { p: partition }).unwrap_or_default();
            // A lost ring delays the entry to the owner's next sweep.
            if let Err(e) = self.relay.send(&owner, &ring).await {
                warn!(partition, owner = %owner, error = %e, "could not ring a partition's owner");
            }
        }
        Ok(rx.map(|rx| (token, rx)))
    }

    /// `push` of a `?wait=false` mutation, noted as queued first (so that a
    /// member asked about it before it is decided says so, and the note is
    /// never younger than the entry whose answer removes it).
    async fn push_accepted(&self, partition: u32, mutation: &Mutation) -> Result<(), Refusal> {
        self.relay
            .mark_queued(mutation.client_name(), &mutation.id, QUEUED_NOTE_TTL)
            .await
            .map_err(|e| unavailable(&e))?;
        if let Err(refusal) = self.push(partition, mutation, false).await {
            // Not in the stream: not queued (the store's reply, if any,
            // answers before a note does anyway).
            let _ = self
                .relay
                .unmark_queued(mutation.client_name(), &mutation.id)
                .await;
            return Err(refusal);
        }
        Ok(())
    }

    /// Tells the receiver of a forwarded mutation its answer, removes the
    /// queued note of an accepted one (`note`: its client and id), then
    /// drops the entry from the stream.
    async fn finish(
        &self,
        partition: u32,
        entry_id: &str,
        forwarded: &Forwarded,
        note: Option<&(String, String)>,
        answer: &Answer,
    ) {
        if left_for_next_owner(answer) {
            return;
        }
        if let Some((client, id)) = note
            && let Err(e) = self.relay.unmark_queued(client, id).await
        {
            // Harmless: the stored reply answers before the note does, and
            // the note expires.
            warn!(partition, error = %e, "could not remove a decided mutation's queued note");
        }
        if forwarded.w {
            let message = Message::Answer {
                t: forwarded.t.clone(),
                a: WireAnswer::from(answer),
            };
            let sent = match serde_json::to_string(&message) {
                Ok(text) => self.relay.send(&forwarded.r, &text).await,
                Err(e) => Err(ClusterError::Invalid(e.to_string())),
            };
            if let Err(e) = sent {
                // Unacknowledged, the entry is decided again at the next
                // sweep, and its stored answer sent then.
                warn!(partition, error = %e, "could not send a forwarded mutation's answer");
                return;
            }
        }
        if let Err(e) = self.relay.ack(partition, entry_id).await {
            warn!(partition, error = %e, "could not acknowledge a stream entry; it will be answered again");
        }
    }
}

impl Engine {
    /// Joins a cluster: places this process among the live members (the
    /// first tick), then keeps its leases, reads its inbox and sweeps its
    /// partitions' streams until `leave_cluster`; its predictor is retrained
    /// from the shared history every `retrain_every` when that grew.
    pub async fn join_cluster(
        &self,
        ownership: Arc<Ownership>,
        relay: SharedRelay,
        retrain_every: Duration,
    ) -> Result<(), ClusterError> {
        let role = Arc::new(ClusterRole::new(ownership, relay, retrain_every));
        if self.inner.cluster.set(role.clone()).is_err() {
            return Err(ClusterError::Invalid(
                "this engine is already in a cluster".to_string(),
            ));
        }
        self.inner
            .telemetry
            .join_cluster(role.ownership.config().partitions);
        let first = role.ownership.tick().await?;
        self.after_tick(&role, &first);
        tokio::spawn(keep_ticking(self.clone(), role.clone()));
        tokio::spawn(read_inbox(self.clone(), role));
        // Wakes the learning loop: it retrains from the shared history now
        // and from then on at the cluster's pace, not the single node's.
        self.inner.learning.retrain_wanted.notify_one();
        Ok(())
    }

    /// Hands this process's partitions over and leaves (a graceful exit).
    pub async fn leave_cluster(&self) {
        let Some(role) = self.inner.cluster.get() else {
            return;
        };
        role.left.store(true, Ordering::SeqCst);
        if let Err(e) = role.ownership.leave().await {
            warn!(error = %e, "could not hand the partitions over; the others take them when the leases run out");
        }
        if let Err(e) = role.relay.drop_inbox(role.me()).await {
            warn!(error = %e, "could not delete this member's inbox");
        }
    }

    /// The cluster's member id of this process, when it is in one.
    pub fn cluster_ownership(&self) -> Option<Arc<Ownership>> {
        self.inner.cluster.get().map(|r| r.ownership.clone())
    }

    /// The cluster as `GET /v1/cluster` shows it: every live member with
    /// the partitions it holds, their epochs and their streams' backlogs;
    /// `None` outside cluster mode.
    pub async fn cluster_view(&self) -> Option<Result<ClusterView, ClusterError>> {
        let role = self.inner.cluster.get()?;
        Some(role.view().await)
    }

    fn after_tick(&self, role: &Arc<ClusterRole>, report: &TickReport) {
        if !report.gained.is_empty() || !report.lost.is_empty() {
            info!(gained = ?report.gained, lost = ?report.lost, owned = report.owned, "partitions moved");
        }
        // Every partition owned is swept: what a former owner left is
        // claimed, and an entry whose ring was lost is read.
        let owned = role.ownership.owned();
        for (partition, _) in &owned {
            let (engine, role, partition) = (self.clone(), role.clone(), *partition);
            tokio::spawn(async move { engine.read_stream(&role, partition, true).await });
        }
        let (engine, role) = (self.clone(), role.clone());
        tokio::spawn(async move {
            let backlogs =
                futures_util::future::join_all(owned.iter().map(|(p, _)| role.relay.backlog(*p)))
                    .await;
            let backlogs: Vec<(u32, u64)> = owned
                .iter()
                .zip(backlogs)
                .filter_map(|((p, _), b)| Some((*p, b.ok()?)))
                .collect();
            engine
                .inner
                .telemetry
                .cluster_seen(role.ownership.members().len(), &owned, &backlogs);
        });
    }

    /// Where a synchronous mutation is decided: `Ok` to decide it here
    /// (this process owns its partition, whose stream has been read), or
    /// the answer it got from its owner.
    pub(super) async fn route(&self, mutation: Mutation) -> Result<Mutation, Answer> {
        let Some(role) = self.inner.cluster.get().cloned() else {
            return Ok(mutation);
        };
        let partition = role.ownership.partition_of(&mutation.doc);
        if role.ownership.fence_of(partition).is_some() {
            self.read_stream(&role, partition, false).await;
            return Ok(mutation);
        }
        self.inner.telemetry.forwarded();
        match role.push(partition, &mutation, true).await {
            Ok(Some((token, rx))) => {
                Err(self.await_forwarded(&role, &token, rx, &mutation.id).await)
            }
            Ok(None) => Err(internal("a forwarded mutation lost its answer".to_string())),
            Err(refusal) => Err(self.inner.refuse(refusal, 1)),
        }
    }

    /// A batch in cluster mode: each mutation decided where its partition
    /// is, in order; the batch is not admitted all or nothing across
    /// processes.
    pub(super) async fn submit_spread(&self, mutations: Vec<Mutation>) -> Vec<Answer> {
        let Some(role) = self.inner.cluster.get().cloned() else {
            return Vec::new();
        };
        enum Slot {
            Here(Result<oneshot::Receiver<Answer>, Answer>, String),
            There(Result<(String, oneshot::Receiver<Answer>), Answer>, String),
        }
        let mut slots = Vec::with_capacity(mutations.len());
        for mutation in mutations {
            let id = mutation.id.clone();
            let partition = role.ownership.partition_of(&mutation.doc);
            if role.ownership.fence_of(partition).is_some() {
                self.read_stream(&role, partition, false).await;
                slots.push(Slot::Here(self.admit_as(mutation, Origin::Sent).await, id));
            } else {
                self.inner.telemetry.forwarded();
                let pushed = match role.push(partition, &mutation, true).await {
                    Ok(Some(waiting)) => Ok(waiting),
                    Ok(None) => Err(internal("a forwarded mutation lost its answer".to_string())),
                    Err(refusal) => Err(self.inner.refuse(refusal, 1)),
                };
                slots.push(Slot::There(pushed, id));
            }
        }
        self.inner.lanes.wake();
        let mut answers = Vec::with_capacity(slots.len());
        for slot in slots {
            answers.push(match slot {
                Slot::Here(Ok(rx), id) => self.await_answer(rx, &id).await,
                Slot::There(Ok((token, rx)), id) => {
                    self.await_forwarded(&role, &token, rx, &id).await
                }
                Slot::Here(Err(answer), _) | Slot::There(Err(answer), _) => answer,
            });
        }
        answers
    }

    /// Whether a batch has a mutation another process decides.
    pub(super) fn spread_over_cluster(&self, mutations: &[Mutation]) -> bool {
        self.inner.cluster.get().is_some_and(|role| {
            mutations
                .iter()
                .any(|m| role.ownership.fence_for(&m.doc).is_none())
        })
    }

    /// An asynchronous mutation in cluster mode: into its partition's
    /// stream, answered 202 once Redis has it.
    pub(super) async fn accept_clustered(&self, mutation: Mutation) -> Option<Answer> {
        let role = self.inner.cluster.get()?.clone();
        let partition = role.ownership.partition_of(&mutation.doc);
        Some(match role.push_accepted(partition, &mutation).await {
            Ok(_) => {
                self.inner.telemetry.accepted();
                if role.ownership.fence_of(partition).is_some() {
                    let engine = self.clone();
                    tokio::spawn(async move { engine.read_stream(&role, partition, false).await });
                } else {
                    self.inner.telemetry.forwarded();
                }
                Answer::Queued(Queued {
                    id: mutation.id,
                    score: None,
                    staged: false,
                })
            }
            Err(refusal) => self.inner.refuse(refusal, 1),
        })
    }

    /// Whether `(client, id)` waits in a partition's stream, accepted with
    /// `?wait=false` by any member; `false` outside a cluster.
    pub async fn queued_in_stream(&self, client: &str, id: &str) -> Result<bool, ClusterError> {
        match self.inner.cluster.get() {
            Some(role) => role.relay.is_queued(client, id).await,
            None => Ok(false),
        }
    }

    /// Moves what the accept log holds into the streams (it was accepted on
    /// one node, or before this process joined): returns how many.
    pub(super) async fn forward_accept_log(
        &self,
        entries: Vec<crate::store::Accepted>,
    ) -> Option<usize> {
        let role = self.inner.cluster.get()?.clone();
        let mut moved = 0;
        for entry in entries {
            let Ok(mutation) = Mutation::from_json(&entry.mutation, entry.fingerprint) else {
                error!(id = %entry.id, "an accept-log entry is unreadable; it stays in the log");
                continue;
            };
            let partition = role.ownership.partition_of(&mutation.doc);
            match role.push_accepted(partition, &mutation).await {
                Ok(_) => {
                    if let Err(e) = self.inner.store.unaccept(&entry.client, &entry.id).await {
                        // Both in the stream and the log: decided once, the
                        // second answered from its stored reply.
                        warn!(id = %entry.id, error = %e, "could not remove a forwarded entry from the accept log");
                    }
                    moved += 1;
                }
                Err(refusal) => {
                    warn!(id = %entry.id, reason = refusal.reason.code(), "an accepted mutation stays in the accept log");
                }
            }
        }
        Some(moved)
    }

    async fn await_forwarded(
        &self,
        role: &ClusterRole,
        token: &str,
        rx: oneshot::Receiver<Answer>,
        id: &str,
    ) -> Answer {
        match tokio::time::timeout(self.inner.config.decide_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            _ => {
                lock(&role.waiting).remove(token);
                self.inner.refuse(
                    Refusal::new(
                        RefusalReason::DecisionTimeout,
                        format!(
                            "mutation {id} was not decided within {} ms by its partition's owner; it stays queued: resend it with the same id to learn its outcome",
                            self.inner.config.decide_timeout.as_millis()
                        ),
                    ),
                    1,
                )
            }
        }
    }

    /// Admits a partition's stream entries in order: the unacknowledged
    /// ones first when `claim` (a former owner's, or this process's own that
    /// are still undecided), then the ones nobody was given. Stops where an
    /// entry cannot be queued yet; the next sweep goes on from there.
    async fn read_stream(&self, role: &Arc<ClusterRole>, partition: u32, claim: bool) {
        let Some(reader) = role.reader(partition) else {
            return;
        };
        let _one = reader.lock().await;
        let mut claiming = claim;
        loop {
            // A closing process leaves what it has not read to the next
            // owner, so its drain ends.
            if role.ownership.fence_of(partition).is_none()
                || self.inner.closing.load(Ordering::SeqCst)
            {
                return;
            }
            let read = if claiming {
                role.relay.claim(partition, role.me(), READ_BATCH).await
            } else {
                role.relay.take(partition, role.me(), READ_BATCH).await
            };
            let entries = match read {
                Ok(entries) => entries,
                Err(e) => {
                    warn!(partition, error = %e, "could not read a partition's stream");
                    return;
                }
            };
            let full_batch = entries.len() == READ_BATCH;
            for entry in entries {
                if !self.admit_entry(role, partition, entry).await {
                    return;
                }
            }
            self.inner.lanes.wake();
            if !full_batch {
                if !claiming {
                    return;
                }
                claiming = false;
            }
        }
    }

    /// Queues one forwarded mutation and answers it when decided; `false`
    /// when it could not be queued yet (its lane or the queue is full) and
    /// must be read again, in order, later.
    async fn admit_entry(&self, role: &Arc<ClusterRole>, partition: u32, entry: Entry) -> bool {
        let parsed = serde_json::from_str::<Forwarded>(&entry.body)
            .map_err(|e| e.to_string())
            .and_then(|f| Mutation::from_json(&f.m, f.f).map(|m| (f, m)));
        let (forwarded, mutation) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                error!(partition, entry = %entry.id, error = %e, "an unreadable stream entry is dropped");
                let _ = role.relay.ack(partition, &entry.id).await;
                return true;
            }
        };
        let origin = if forwarded.w {
            Origin::Sent
        } else {
            Origin::Accepted
        };
        // Taken before the mutation moves into its lane: an accepted one's
        // queued note is removed by its client and id once decided.
        let note = (!forwarded.w).then(|| (mutation.client_name().to_owned(), mutation.id.clone()));
        match self.admit_as(mutation, origin).await {
            Ok(rx) => {
                let role = role.clone();
                tokio::spawn(async move {
                    let answer = rx.await.unwrap_or_else(|_| {
                        internal("the mutation's worker stopped without an answer".to_string())
                    });
                    role.finish(partition, &entry.id, &forwarded, note.as_ref(), &answer)
                        .await;
                });
                true
            }
            // Being decided already (a resend, or this entry read again):
            // that decision answers it.
            Err(Answer::Queued(_)) => true,
            Err(Answer::Refused(r))
                if !forwarded.w
                    && matches!(r.reason, RefusalReason::QueueFull | RefusalReason::LaneFull) =>
            {
                false
            }
            Err(answer) => {
                role.finish(partition, &entry.id, &forwarded, note.as_ref(), &answer)
                    .await;
                true
            }
        }
    }
}

async fn keep_ticking(engine: Engine, role: Arc<ClusterRole>) {
    let every = role.ownership.config().tick_every();
    loop {
        tokio::time::sleep(every).await;
        if role.left.load(Ordering::SeqCst) {
            return;
        }
        match role.ownership.tick().await {
            Ok(report) => engine.after_tick(&role, &report),
            Err(e) => {
                warn!(error = %e, "could not renew this process's partitions; it stops deciding them when their leases run out");
            }
        }
    }
}

async fn read_inbox(engine: Engine, role: Arc<ClusterRole>) {
    let mut cursor = "0-0".to_string();
    while !role.left.load(Ordering::SeqCst) {
        let entries = match role.relay.receive(role.me(), &cursor, INBOX_WAIT).await {
            Ok(entries) => entries,
            Err(e) => {
                warn!(error = %e, "could not read this member's inbox");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        for entry in entries {
            cursor = entry.id;
            match serde_json::from_str::<Message>(&entry.body) {
                Ok(Message::Ring { p }) => {
                    let engine = engine.clone();
                    let role = role.clone();
                    tokio::spawn(async move { engine.read_stream(&role, p, false).await });
                }
                Ok(Message::Answer { t, a }) => {
                    if let Some(tx) = lock(&role.waiting).remove(&t) {
                        let _ = tx.send(a.into());
                    }
                }
                Err(e) => warn!(error = %e, "an unreadable inbox message is skipped"),
            }
        }
    }
}
