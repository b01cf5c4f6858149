//! The reference store: everything in memory behind one lock. It passes the
//! same conformance suite as the SQL stores and backs the simulation; nothing
//! survives the process.

use super::{
    Accepted, COLLECTION_CHANGES_KEPT, CollectionChange, CommitOutcome, EVENTS_KEPT_MIN, KeyRecord,
    LaneCommit, QuarantineQuery, Quarantined, Store, StoreError, StoredReply,
};
use crate::model::{DocKey, Document};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    documents: HashMap<DocKey, Document>,
    /// Replies with their event numbers.
    replies: HashMap<(String, String), (i64, StoredReply)>,
    next_event: i64,
    accepted: HashMap<(String, String), (u64, Accepted)>,
    next_accept: u64,
    /// Staged shadow writes: (order, collection, entry).
    staged: HashMap<(String, String), (u64, String, Accepted)>,
    collections: HashMap<String, String>,
    secrets: HashMap<String, String>,
    quarantine: HashMap<(String, String), Quarantined>,
    keys: HashMap<String, KeyRecord>,
    changes: HashMap<String, Vec<CollectionChange>>,
    change_seq: i64,
    fences: HashMap<u32, u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps that are still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes a document the way a writer that bypasses Sluice would: for tests
    /// and the simulation.
    pub fn write_behind_sluice(
        &self,
        doc: &DocKey,
        item: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> u64 {
        let mut state = self.state();
        let entry = state.documents.entry(doc.clone()).or_default();
        entry.version += 1;
        entry.item = item;
        entry.version
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, doc: &DocKey) -> Result<Document, StoreError> {
        Ok(self.state().documents.get(doc).cloned().unwrap_or_default())
    }

    async fn commit(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut state = self.state();
        let mut outcomes = Vec::with_capacity(batch.len());
        for lane in batch {
            if let Some(fence) = lane.fence
                && state.fences.get(&fence.partition) != Some(&fence.epoch)
            {
                outcomes.push(CommitOutcome::Fenced);
                continue;
            }
            let ids = lane.replies.iter().map(|r| (&r.client, &r.id));
            let mut ids = ids.chain(lane.quarantine.iter().map(|q| (&q.client, &q.id)));
            let resent =
                ids.any(|(client, id)| state.replies.contains_key(&(client.clone(), id.clone())));
            if resent {
                outcomes.push(CommitOutcome::Resent);
                continue;
            }
            let current = state
                .documents
                .get(&lane.doc)
                .map(|d| d.version)
                .unwrap_or(0);
            if current != lane.expected_version {
                outcomes.push(CommitOutcome::Stale);
                continue;
            }
            if let Some(write) = &lane.write {
                state.documents.insert(lane.doc.clone(), write.clone());
            }
            for reply in &lane.replies {
                let key = (reply.client.clone(), reply.id.clone());
                if !state.replies.contains_key(&key) {
                    state.next_event += 1;
                    let seq = state.next_event;
                    state.replies.insert(key.clone(), (seq, reply.clone()));
                }
                if reply.was_accepted {
                    state.accepted.remove(&key);
                }
                if reply.was_quarantined {
                    state.quarantine.remove(&key);
                }
            }
            for kept in &lane.quarantine {
                let key = (kept.client.clone(), kept.id.clone());
                if kept.was_accepted {
                    state.accepted.remove(&key);
                }
                let entry = state.quarantine.entry(key).or_insert_with(|| Quarantined {
                    was_accepted: false,
                    ..kept.clone()
                });
                entry.reason.clone_from(&kept.reason);
                entry.score = kept.score;
                entry.at_ms = kept.at_ms;
            }
            outcomes.push(CommitOutcome::Committed);
        }
        Ok(outcomes)
    }

    async fn reply(&self, client: &str, id: &str) -> Result<Option<StoredReply>, StoreError> {
        Ok(self
            .state()
            .replies
            .get(&(client.to_owned(), id.to_owned()))
            .map(|(_, reply)| reply.clone()))
    }

    async fn raise_fence(&self, partition: u32, epoch: u64) -> Result<u64, StoreError> {
        let mut state = self.state();
        let fence = state.fences.entry(partition).or_insert(0);
        *fence = (*fence).max(epoch);
        Ok(*fence)
    }

    async fn expire_replies(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut state = self.state();
        let before = state.replies.len();
        let kept_from = state.next_event - EVENTS_KEPT_MIN;
        state
            .replies
            .retain(|_, (seq, r)| r.at_ms >= before_ms || *seq > kept_from);
        Ok((before - state.replies.len()) as u64)
    }

    async fn accept(&self, entry: &Accepted) -> Result<bool, StoreError> {
        let mut state = self.state();
        let key = (entry.client.clone(), entry.id.clone());
        if state.accepted.contains_key(&key) {
            return Ok(false);
        }
        state.next_accept += 1;
        let seq = state.next_accept;
        state.accepted.insert(key, (seq, entry.clone()));
        Ok(true)
    }

    async fn unaccept(&self, client: &str, id: &str) -> Result<(), StoreError> {
        self.state()
            .accepted
            .remove(&(client.to_owned(), id.to_owned()));
        Ok(())
    }

    async fn accepted(&self, client: &str, id: &str) -> Result<Option<Accepted>, StoreError> {
        Ok(self
            .state()
            .accepted
            .get(&(client.to_owned(), id.to_owned()))
            .map(|(_, a)| a.clone()))
    }

    async fn pending_accepted(&self) -> Result<Vec<Accepted>, StoreError> {
        let state = self.state();
        let mut entries: Vec<&(u64, Accepted)> = state.accepted.values().collect();
        entries.sort_by_key(|(seq, _)| *seq);
        Ok(entries.into_iter().map(|(_, a)| a.clone()).collect())
    }

    async fn stage(&self, entry: &Accepted, collection: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        let key = (entry.client.clone(), entry.id.clone());
        if state.staged.contains_key(&key) {
            return Ok(false);
        }
        state.next_accept += 1;
        let seq = state.next_accept;
        state
            .staged
            .insert(key, (seq, collection.to_owned(), entry.clone()));
        Ok(true)
    }

    async fn unstage(&self, client: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .state()
            .staged
            .remove(&(client.to_owned(), id.to_owned()))
            .is_some())
    }

    async fn staged(&self, client: &str, id: &str) -> Result<Option<Accepted>, StoreError> {
        Ok(self
            .state()
            .staged
            .get(&(client.to_owned(), id.to_owned()))
            .map(|(_, _, a)| a.clone()))
    }

    async fn staged_list(
        &self,
        collection: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Accepted>, StoreError> {
        let state = self.state();
        let mut entries: Vec<&(u64, String, Accepted)> = state
            .staged
            .values()
            .filter(|(_, c, _)| collection.is_none_or(|want| c == want))
            .collect();
        entries.sort_by_key(|(seq, _, _)| *seq);
        Ok(entries
            .into_iter()
            .take(limit as usize)
            .map(|(_, _, a)| a.clone())
            .collect())
    }

    async fn events_after(
        &self,
        client: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let state = self.state();
        let mut events: Vec<(i64, String)> = state
            .replies
            .values()
            .filter(|(seq, r)| r.client == client && *seq > after_seq)
            .map(|(seq, r)| (*seq, r.decision.body.clone()))
            .collect();
        events.sort_by_key(|(seq, _)| *seq);
        events.truncate(limit as usize);
        Ok(events)
    }

    async fn events_head(&self, client: &str) -> Result<i64, StoreError> {
        let state = self.state();
        Ok(state
            .replies
            .values()
            .filter(|(_, r)| r.client == client)
            .map(|(seq, _)| *seq)
            .max()
            .unwrap_or(0))
    }

    async fn secret(
        &self,
        name: &str,
        make: &(dyn Fn() -> String + Sync),
    ) -> Result<String, StoreError> {
        Ok(self
            .state()
            .secrets
            .entry(name.to_owned())
            .or_insert_with(make)
            .clone())
    }

    async fn collections(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .state()
            .collections
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn put_collection(
        &self,
        config_json: &str,
        change: &CollectionChange,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        state
            .collections
            .insert(change.collection.clone(), config_json.to_owned());
        state.change_seq += 1;
        let seq = state.change_seq;
        let changes = state.changes.entry(change.collection.clone()).or_default();
        changes.push(CollectionChange {
            seq,
            ..change.clone()
        });
        let kept = COLLECTION_CHANGES_KEPT as usize;
        if changes.len() > kept {
            let dropped = changes.len() - kept;
            changes.drain(..dropped);
        }
        Ok(())
    }

    async fn collection_changes(
        &self,
        collection: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<CollectionChange>, StoreError> {
        let state = self.state();
        let before = before.unwrap_or(i64::MAX);
        Ok(state
            .changes
            .get(collection)
            .map(|changes| {
                changes
                    .iter()
                    .rev()
                    .filter(|c| c.seq < before)
                    .take(limit as usize)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn quarantined(&self, client: &str, id: &str) -> Result<Option<Quarantined>, StoreError> {
        let key = (client.to_owned(), id.to_owned());
        Ok(self.state().quarantine.get(&key).cloned())
    }

    async fn quarantine_list(
        &self,
        query: &QuarantineQuery,
    ) -> Result<Vec<Quarantined>, StoreError> {
        let state = self.state();
        let mut found: Vec<Quarantined> = state
            .quarantine
            .values()
            .filter(|q| {
                query
                    .collection
                    .as_ref()
                    .is_none_or(|c| *c == q.doc.collection)
            })
            .filter(|q| query.client.as_ref().is_none_or(|c| *c == q.client))
            .cloned()
            .collect();
        found.sort_by(|a, b| (a.at_ms, &a.client, &a.id).cmp(&(b.at_ms, &b.client, &b.id)));
        found.truncate(query.limit as usize);
        if !query.with_mutations {
            for q in &mut found {
                q.mutation.clear();
            }
        }
        Ok(found)
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.keys.contains_key(&key.id) {
            // As the SQL stores' primary key would.
            return Err(StoreError::Unavailable(format!("key {} exists", key.id)));
        }
        state.keys.insert(key.id.clone(), key.clone());
        Ok(())
    }

    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.state().keys.get(id).cloned())
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys: Vec<KeyRecord> = self.state().keys.values().cloned().collect();
        keys.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let mut state = self.state();
        match state.keys.get_mut(id) {
            Some(key) if key.revoked_ms.is_none() => {
                key.revoked_ms = Some(at_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
