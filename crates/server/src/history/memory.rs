//! In-memory history, for tests and the simulation.

use super::{ConflictPage, ConflictQuery, History, HistoryError, MutationRecord};
use crate::model::{ConflictRecord, DocKey};
use async_trait::async_trait;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryHistory {
    state: Mutex<(Vec<MutationRecord>, Vec<ConflictRecord>)>,
}

impl MemoryHistory {
    pub fn new() -> Self {
        MemoryHistory::default()
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn record(
        &self,
        mutations: &[MutationRecord],
        conflicts: &[ConflictRecord],
    ) -> Result<(), HistoryError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.extend_from_slice(mutations);
        state.1.extend_from_slice(conflicts);
        Ok(())
    }

    async fn conflicts_page(&self, query: &ConflictQuery) -> Result<ConflictPage, HistoryError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut page = ConflictPage::default();
        let mut used = 0;
        let newest_first = state.1.iter().enumerate().rev();
        for (i, c) in newest_first {
            let seq = i64::try_from(i + 1).unwrap_or(i64::MAX);
            let wanted = query.before_seq.is_none_or(|before| seq < before)
                && query
                    .collection
                    .as_ref()
                    .is_none_or(|col| *col == c.doc.collection)
                && query.key.as_ref().is_none_or(|key| *key == c.doc.key);
            if wanted && !page.push(query, &mut used, seq, c.clone(), super::values_len(c)) {
                break;
            }
        }
        Ok(page)
    }

    async fn writers(
        &self,
        doc: &DocKey,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, HistoryError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(state
            .0
            .iter()
            .filter(|m| {
                m.doc == *doc
                    && m.version_after > after_version
                    && m.version_after > m.version_before
            })
            .take(limit as usize)
            .map(|m| (m.version_after, m.client.clone()))
            .collect())
    }

    async fn last_seq(&self) -> Result<i64, HistoryError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(i64::try_from(state.0.len()).unwrap_or(i64::MAX))
    }

    async fn mutations(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, MutationRecord)>, HistoryError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let start = usize::try_from(after_seq.max(0)).unwrap_or(usize::MAX);
        Ok(state
            .0
            .iter()
            .enumerate()
            .skip(start)
            .take(limit as usize)
            .map(|(i, m)| (i64::try_from(i + 1).unwrap_or(i64::MAX), m.clone()))
            .collect())
    }
}
