//! The reference store: everything in memory behind one lock. It passes the
//! same conformance suite as the SQL stores and backs the simulation; nothing
//! survives the process.

use super::{CommitOutcome, LaneCommit, Store, StoreError, StoredReply};
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
    replies: HashMap<(String, String), StoredReply>,
    collections: HashMap<String, String>,
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
                state
                    .replies
                    .entry((reply.client.clone(), reply.id.clone()))
                    .or_insert_with(|| reply.clone());
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
            .cloned())
    }

    async fn expire_replies(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut state = self.state();
        let before = state.replies.len();
        state.replies.retain(|_, r| r.at_ms >= before_ms);
        Ok((before - state.replies.len()) as u64)
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
        name: &str,
        config_json: &str,
        _at_ms: i64,
    ) -> Result<(), StoreError> {
        self.state()
            .collections
            .insert(name.to_owned(), config_json.to_owned());
        Ok(())
    }
}
