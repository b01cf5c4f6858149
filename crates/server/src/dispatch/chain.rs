//! Own-write chaining (a collection's `chain_own_writes`): a mutation whose
//! base version is stale only because of its own client's earlier writes —
//! every version after its base was written by that client — is no
//! conflict; it applies as if based on the current version. This is the
//! case of two quick edits sent with the same base (amplify-js #6363).
//!
//! Who wrote which recent versions comes from the lane itself (earlier
//! mutations of the same batch), then from what this process committed
//! (bounded), then from the history (after a restart, or another process's
//! writes). A version with no known writer — written behind Sluice, or
//! forgotten — is not the client's: the mutation takes the conflict path.

use super::{FixedMap, Inner};
use crate::model::DocKey;
use std::collections::VecDeque;
use std::sync::Mutex;
use tracing::debug;

/// How far behind a base may be and still chain: further back, the
/// mutation takes the conflict path without asking anyone.
pub(super) const CHAIN_VERSIONS_MAX: u64 = 32;
/// Documents whose recent writers are remembered; past it the memory
/// starts again (the history still answers).
const DOCS_MAX: usize = 10_000;

#[derive(Default)]
pub(super) struct RecentWriters {
    docs: Mutex<FixedMap<DocKey, VecDeque<(u64, String)>>>,
}

impl RecentWriters {
    /// `client` committed `version` of `doc`.
    pub(super) fn record(&self, doc: &DocKey, version: u64, client: &str) {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        if docs.len() >= DOCS_MAX && !docs.contains_key(doc) {
            docs.clear();
        }
        let writes = docs.entry(doc.clone()).or_default();
        writes.push_back((version, client.to_owned()));
        while writes.len() as u64 > CHAIN_VERSIONS_MAX {
            writes.pop_front();
        }
    }

    /// The remembered writers of `doc`'s versions after `after`.
    fn after(&self, doc: &DocKey, after: u64) -> Vec<(u64, String)> {
        let docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        docs.get(doc).map_or_else(Vec::new, |writes| {
            writes.iter().filter(|(v, _)| *v > after).cloned().collect()
        })
    }
}

/// Whether every version of `doc` in `(base, current]` was written by
/// `client`. `in_lane` holds the versions the lane's earlier mutations
/// wrote. The history is read only when the lane and the memory do not
/// know every version; a history that cannot be read knows nothing.
pub(super) async fn only_own_writes(
    inner: &Inner,
    doc: &DocKey,
    base: u64,
    current: u64,
    client: &str,
    in_lane: &[(u64, String)],
) -> bool {
    if base >= current || current - base > CHAIN_VERSIONS_MAX {
        return false;
    }
    let mut known: FixedMap<u64, Vec<String>> = FixedMap::default();
    let mut note = |version: u64, writer: String| known.entry(version).or_default().push(writer);
    for (version, writer) in in_lane
        .iter()
        .cloned()
        .chain(inner.writers.after(doc, base))
    {
        note(version, writer);
    }
    let complete =
        |known: &FixedMap<u64, Vec<String>>| (base + 1..=current).all(|v| known.contains_key(&v));
    if !complete(&known) {
        let limit = u32::try_from(CHAIN_VERSIONS_MAX * 2).unwrap_or(u32::MAX);
        match inner.history.writers(doc, base, limit).await {
            Ok(recorded) => {
                for (version, writer) in recorded {
                    known.entry(version).or_default().push(writer);
                }
            }
            Err(e) => {
                debug!(collection = %doc.collection, key = %doc.key, error = %e, "the history could not say who wrote the document; no chaining");
                return false;
            }
        }
    }
    (base + 1..=current).all(|v| {
        known
            .get(&v)
            .is_some_and(|writers| writers.iter().all(|w| w == client))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_bounded_window_of_writers() {
        let writers = RecentWriters::default();
        let doc = DocKey::new("c", "k");
        for v in 1..=CHAIN_VERSIONS_MAX + 5 {
            writers.record(&doc, v, if v % 2 == 0 { "a" } else { "b" });
        }
        let after = writers.after(&doc, 0);
        assert_eq!(after.len() as u64, CHAIN_VERSIONS_MAX);
        assert_eq!(after[0].0, 6, "the oldest are forgotten");
        assert_eq!(writers.after(&doc, CHAIN_VERSIONS_MAX + 3).len(), 2);
    }
}
