//! The distributed queue: a stream per partition that carries mutations to
//! the partition's owner, and an inbox per member that carries the owner's
//! answers (and doorbells) back.
//!
//! A partition's stream keeps an entry until it is acknowledged: `take`
//! delivers entries nobody has seen, in order, to one member; `claim` hands
//! the entries delivered but not acknowledged (a dead or former owner's) to
//! another; `ack` removes one for good. The owner acknowledges an entry
//! only after its reply is committed, so an owner that dies loses nothing:
//! its successor claims what it had not finished, and the store's stored
//! replies make deciding an entry twice answer the same.

use super::ClusterError;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One entry of a stream or an inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its position (`ms-seq`, Redis's stream ids): later entries sort after.
    pub id: String,
    pub body: String,
}

/// See the module's documentation; `conformance::relay_suite` checks an
/// implementation against these rules.
#[async_trait]
pub trait Relay: Send + Sync + 'static {
    /// Appends `body` to `partition`'s stream; once this returns, the entry
    /// is as durable as the relay (Redis's persistence).
    async fn push(&self, partition: u32, body: &str) -> Result<String, ClusterError>;
    /// Delivers to `member` up to `count` entries of `partition` that no
    /// member was given yet, oldest first.
    async fn take(
        &self,
        partition: u32,
        member: &str,
        count: usize,
    ) -> Result<Vec<Entry>, ClusterError>;
    /// Hands to `member` up to `count` entries of `partition` that were
    /// delivered (to any member) and not acknowledged, oldest first.
    async fn claim(
        &self,
        partition: u32,
        member: &str,
        count: usize,
    ) -> Result<Vec<Entry>, ClusterError>;
    /// Removes an entry for good (it is answered).
    async fn ack(&self, partition: u32, id: &str) -> Result<(), ClusterError>;
    /// Entries of `partition` not acknowledged yet, delivered or not.
    async fn backlog(&self, partition: u32) -> Result<u64, ClusterError>;
    /// Appends `body` to `member`'s inbox (bounded: the oldest are dropped
    /// past `INBOX_LEN`).
    async fn send(&self, member: &str, body: &str) -> Result<(), ClusterError>;
    /// The entries of `member`'s inbox after `after` (`"0-0"` for all),
    /// waiting up to `wait` for one when there is none.
    async fn receive(
        &self,
        member: &str,
        after: &str,
        wait: Duration,
    ) -> Result<Vec<Entry>, ClusterError>;
    /// Deletes `member`'s inbox (it leaves).
    async fn drop_inbox(&self, member: &str) -> Result<(), ClusterError>;
    /// Notes, for `ttl` at most, that `(client, id)` waits in a stream: any
    /// member can then say so (`GET /v1/mutations/{id}`).
    async fn mark_queued(&self, client: &str, id: &str, ttl: Duration) -> Result<(), ClusterError>;
    /// Forgets that note (the mutation's reply is committed).
    async fn unmark_queued(&self, client: &str, id: &str) -> Result<(), ClusterError>;
    /// Whether `(client, id)` is noted as waiting in a stream.
    async fn is_queued(&self, client: &str, id: &str) -> Result<bool, ClusterError>;
}

/// The note of a queued `(client, id)`: the client's length first, so that
/// no two pairs share one.
pub(crate) fn queued_name(client: &str, id: &str) -> String {
    format!("{}:{client}{id}", client.len())
}

pub type SharedRelay = Arc<dyn Relay>;

/// The most messages an inbox keeps: a member that falls this far behind
/// loses the oldest answers, whose requests then time out (and are
/// answered on their resend).
pub const INBOX_LEN: usize = 10_000;

/// `ms-seq` ids in the reference: the sequence alone, with a zero time.
fn format_id(seq: u64) -> String {
    format!("0-{seq}")
}

fn parse_id(id: &str) -> u64 {
    id.rsplit_once('-')
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or(0)
}

/// The reference relay: one process's maps.
#[derive(Default)]
pub struct MemoryRelay {
    state: Mutex<RelayState>,
    /// Wakes inbox readers.
    sent: tokio::sync::Notify,
}

#[derive(Default)]
struct RelayState {
    seq: u64,
    /// partition → seq → (body, delivered).
    streams: HashMap<u32, BTreeMap<u64, (String, bool)>>,
    inboxes: HashMap<String, BTreeMap<u64, String>>,
    /// Queued notes and when they expire.
    queued: HashMap<String, std::time::Instant>,
}

impl MemoryRelay {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RelayState> {
        // Every critical section leaves the maps consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hand_out(&self, partition: u32, count: usize, delivered: bool) -> Vec<Entry> {
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(&partition) else {
            return Vec::new();
        };
        stream
            .iter_mut()
            .filter(|(_, (_, was))| *was == delivered)
            .take(count)
            .map(|(seq, (body, was))| {
                *was = true;
                Entry {
                    id: format_id(*seq),
                    body: body.clone(),
                }
            })
            .collect()
    }
}

#[async_trait]
impl Relay for MemoryRelay {
    async fn push(&self, partition: u32, body: &str) -> Result<String, ClusterError> {
        let mut state = self.lock();
        state.seq += 1;
        let seq = state.seq;
        state
            .streams
            .entry(partition)
            .or_default()
            .insert(seq, (body.to_string(), false));
        Ok(format_id(seq))
    }

    async fn take(
        &self,
        partition: u32,
        _member: &str,
        count: usize,
    ) -> Result<Vec<Entry>, ClusterError> {
        Ok(self.hand_out(partition, count, false))
    }

    async fn claim(
        &self,
        partition: u32,
        _member: &str,
        count: usize,
    ) -> Result<Vec<Entry>, ClusterError> {
        Ok(self.hand_out(partition, count, true))
    }

    async fn ack(&self, partition: u32, id: &str) -> Result<(), ClusterError> {
        if let Some(stream) = self.lock().streams.get_mut(&partition) {
            stream.remove(&parse_id(id));
        }
        Ok(())
    }

    async fn backlog(&self, partition: u32) -> Result<u64, ClusterError> {
        Ok(self
            .lock()
            .streams
            .get(&partition)
            .map_or(0, |s| u64::try_from(s.len()).unwrap_or(u64::MAX)))
    }

    async fn send(&self, member: &str, body: &str) -> Result<(), ClusterError> {
        {
            let mut state = self.lock();
            state.seq += 1;
            let seq = state.seq;
            let inbox = state.inboxes.entry(member.to_string()).or_default();
            inbox.insert(seq, body.to_string());
            while inbox.len() > INBOX_LEN {
                inbox.pop_first();
            }
        }
        self.sent.notify_waiters();
        Ok(())
    }

    async fn receive(
        &self,
        member: &str,
        after: &str,
        wait: Duration,
    ) -> Result<Vec<Entry>, ClusterError> {
        let after = parse_id(after);
        let read = || {
            self.lock()
                .inboxes
                .get(member)
                .map(|inbox| {
                    inbox
                        .range(after + 1..)
                        .map(|(seq, body)| Entry {
                            id: format_id(*seq),
                            body: body.clone(),
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before reading, so a send in between still wakes.
            let sent = self.sent.notified();
            let found = read();
            if !found.is_empty() {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, sent).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn drop_inbox(&self, member: &str) -> Result<(), ClusterError> {
        self.lock().inboxes.remove(member);
        Ok(())
    }

    async fn mark_queued(&self, client: &str, id: &str, ttl: Duration) -> Result<(), ClusterError> {
        let now = std::time::Instant::now();
        let mut state = self.lock();
        // Expired notes go as new ones come: the map stays as large as
        // what is queued.
        state.queued.retain(|_, until| *until > now);
        state.queued.insert(queued_name(client, id), now + ttl);
        Ok(())
    }

    async fn unmark_queued(&self, client: &str, id: &str) -> Result<(), ClusterError> {
        self.lock().queued.remove(&queued_name(client, id));
        Ok(())
    }

    async fn is_queued(&self, client: &str, id: &str) -> Result<bool, ClusterError> {
        let now = std::time::Instant::now();
        Ok(self
            .lock()
            .queued
            .get(&queued_name(client, id))
            .is_some_and(|until| *until > now))
    }
}
