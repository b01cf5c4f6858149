//! The quarantine (a collection's `on_handler_failure: quarantine`): a
//! conflicting mutation whose script or webhook failed is kept aside with
//! its reason instead of being rejected, and its lane goes on without it
//! (a poison mutation never blocks the ones behind it). It stays until an
//! operator retries it (decided again against the document as it is then)
//! or discards it (rejected with reason `discarded`); its final answer is a
//! stored reply like any other, so it reaches its client through the event
//! stream.
//!
//! The store holds the entries (written and removed in lane commits, so
//! they survive restarts); this index holds what a resend needs (the
//! fingerprint and the reason) and counts them against
//! `quarantine_len_max`. A slot is reserved when a lane decides to keep a
//! mutation and becomes an entry when the lane commits (or is given back),
//! so the bound holds however many lanes decide at once.

use super::reply::{Answer, Refusal, RefusalReason};
use super::{Engine, FixedMap, lock};
use crate::model::Mutation;
use crate::store::{QuarantineQuery, Quarantined, StoreError};
use sluice_core::invariant;
use std::sync::Mutex;

/// What a resend of a quarantined mutation needs.
#[derive(Clone, Debug)]
pub(super) struct Kept {
    pub(super) fingerprint: u64,
    pub(super) reason: String,
}

pub(super) struct QuarantineIndex {
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    kept: FixedMap<(String, String), Kept>,
    /// Slots promised to lanes that have not committed yet.
    reserved: usize,
}

impl QuarantineIndex {
    pub(super) fn new(max: usize, entries: Vec<Quarantined>) -> QuarantineIndex {
        let mut state = State::default();
        for e in entries {
            let kept = Kept {
                fingerprint: e.fingerprint,
                reason: e.reason,
            };
            state.kept.insert((e.client, e.id), kept);
        }
        QuarantineIndex {
            max,
            state: Mutex::new(state),
        }
    }

    pub(super) fn get(&self, client: &str, id: &str) -> Option<Kept> {
        let key = (client.to_owned(), id.to_owned());
        lock(&self.state).kept.get(&key).cloned()
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.state).kept.len()
    }

    /// A slot for one more entry, if the quarantine has room.
    pub(super) fn reserve(&self) -> bool {
        let mut state = lock(&self.state);
        if state.kept.len() + state.reserved >= self.max {
            return false;
        }
        state.reserved += 1;
        true
    }

    /// Gives back `n` slots whose lane did not commit.
    pub(super) fn unreserve(&self, n: usize) {
        let mut state = lock(&self.state);
        invariant::hold(state.reserved >= n, "only reserved slots come back");
        state.reserved = state.reserved.saturating_sub(n);
    }

    /// A lane committed: `kept` are in the quarantine (`new` of them in
    /// slots it reserved), `released` left it with their final replies.
    pub(super) fn committed(
        &self,
        kept: &[Quarantined],
        new: usize,
        released: &[(String, String)],
    ) {
        let mut state = lock(&self.state);
        state.reserved = state.reserved.saturating_sub(new);
        for e in kept {
            let entry = Kept {
                fingerprint: e.fingerprint,
                reason: e.reason.clone(),
            };
            state.kept.insert((e.client.clone(), e.id.clone()), entry);
        }
        for key in released {
            state.kept.remove(key);
        }
    }

    /// The bound: entries and promised slots never past the maximum.
    pub(super) fn check(&self) -> Result<(), String> {
        let state = lock(&self.state);
        if state.kept.len() + state.reserved > self.max {
            return Err(format!(
                "quarantine holds {} and promised {} > quarantine_len_max {}",
                state.kept.len(),
                state.reserved,
                self.max
            ));
        }
        Ok(())
    }
}

/// What an operator does with a quarantined mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuarantineAction {
    /// Decide it again, against the document as it is now.
    Retry,
    /// Reject it with reason `discarded`.
    Discard,
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("no quarantined mutation {id:?} of client {client:?}")]
    NotFound { client: String, id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer of a quarantined mutation: what it and its resends get.
pub(super) fn quarantined_answer(id: &str, reason: &str) -> Answer {
    Answer::Quarantined {
        id: id.to_owned(),
        reason: reason.to_owned(),
    }
}

pub(super) fn quarantine_full(reason: &str) -> Refusal {
    Refusal::new(
        RefusalReason::QuarantineFull,
        format!(
            "the collection's handler failed ({reason}) and the quarantine is full; nothing was applied, resend with the same id later"
        ),
    )
}

impl Engine {
    /// Retries or discards a quarantined mutation through its lane, like a
    /// mutation of its client's, and returns its answer (quarantined again
    /// if its handler fails again).
    pub async fn act_on_quarantined(
        &self,
        entry: &Quarantined,
        action: QuarantineAction,
    ) -> Result<Answer, QuarantineError> {
        let mutation = Mutation::from_json(&entry.mutation, entry.fingerprint).map_err(|e| {
            StoreError::Corrupt(format!("quarantined mutation {:?}: {e}", entry.id))
        })?;
        Ok(self.submit_quarantined(mutation, action).await)
    }

    /// The quarantined mutation `(client, id)`, with its JSON.
    pub async fn quarantined(
        &self,
        client: &str,
        id: &str,
    ) -> Result<Quarantined, QuarantineError> {
        self.inner
            .store
            .quarantined(client, id)
            .await?
            .ok_or_else(|| QuarantineError::NotFound {
                client: client.to_owned(),
                id: id.to_owned(),
            })
    }

    /// Why `(client, id)` is in the quarantine, if it is.
    pub fn quarantined_reason(&self, client: &str, id: &str) -> Option<String> {
        self.inner
            .quarantine
            .get(client, id)
            .map(|kept| kept.reason)
    }

    /// Quarantined mutations, oldest first, with their JSON.
    pub async fn quarantine_list(
        &self,
        collection: Option<String>,
        client: Option<String>,
        limit: u32,
    ) -> Result<Vec<Quarantined>, StoreError> {
        let query = QuarantineQuery {
            collection,
            client,
            limit,
            with_mutations: true,
        };
        self.inner.store.quarantine_list(&query).await
    }
}
