//! The documents as Sluice last committed them, so that the next lane of a
//! document starts without a store read. A lane's commit checks the version
//! in the store whatever the cache said: an entry made stale by a writer
//! behind Sluice (or another Sluice process) costs one stale commit, after
//! which the lane reads the store and the entry is replaced. Document reads
//! of the API always go to the store.
//!
//! A document found stale is not cached again for its next `SHUN_LANES`
//! lanes: something else writes it, and its lanes read the store rather than
//! pay a stale commit each time.
//!
//! Bounded by an estimate of the documents' size in memory (`memory_estimate`:
//! their JSON plus a parsed value's overhead for each element, since a
//! document of many tiny fields takes some 60 times its JSON once parsed);
//! over the budget, arbitrary entries go (in an order fixed for every run).

use super::FixedMap;
use crate::model::{DocKey, Document};
use sluice_core::invariant;
use std::sync::Mutex;

/// Lanes of a document that read the store after one of its cached states
/// turned out stale.
const SHUN_LANES: u32 = 32;
/// Documents remembered as written behind Sluice, at most.
const SHUNNED_MAX: usize = 10_000;

/// What a parsed JSON element costs beyond its text (a map entry's key
/// string and value, the ordered map's index): measured about 70 bytes for
/// a document of 93,000 one-digit fields.
const PARSED_BYTES_PER_ELEMENT: usize = 64;

/// The memory a document takes once parsed, estimated from its JSON text:
/// the text, and each element's overhead (elements counted by the commas
/// and brackets that separate and open them).
pub(super) fn memory_estimate(json: &str) -> usize {
    let elements = json
        .bytes()
        .filter(|b| matches!(b, b',' | b'{' | b'['))
        .count();
    json.len() + elements * PARSED_BYTES_PER_ELEMENT
}

pub(super) struct DocCache {
    budget: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    docs: FixedMap<DocKey, (Document, usize)>,
    bytes: usize,
    /// Documents found stale, with the lanes left before they are cached
    /// again.
    shunned: FixedMap<DocKey, u32>,
}

impl DocCache {
    pub(super) fn new(budget: usize) -> DocCache {
        DocCache {
            budget,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, doc: &DocKey) -> Option<Document> {
        if self.budget == 0 {
            return None;
        }
        self.state().docs.get(doc).map(|(d, _)| d.clone())
    }

    /// The version of the document Sluice last committed, when kept.
    pub(super) fn version(&self, doc: &DocKey) -> Option<u64> {
        if self.budget == 0 {
            return None;
        }
        self.state().docs.get(doc).map(|(d, _)| d.version)
    }

    /// Keeps `value` as the document's committed state; `size` estimates its
    /// memory (`memory_estimate`). An older version never replaces a newer one, and a
    /// document too large for a quarter of the budget is not kept.
    pub(super) fn put(&self, doc: &DocKey, value: Document, size: usize) {
        let mut state = self.state();
        if let Some(left) = state.shunned.get_mut(doc) {
            *left -= 1;
            if *left == 0 {
                state.shunned.remove(doc);
            }
            return;
        }
        if let Some((kept, _)) = state.docs.get(doc)
            && kept.version > value.version
        {
            return;
        }
        if let Some((_, old)) = state.docs.remove(doc) {
            state.bytes -= old;
        }
        if size > self.budget / 4 {
            return;
        }
        state.bytes += size;
        state.docs.insert(doc.clone(), (value, size));
        if state.bytes > self.budget {
            let target = self.budget / 10 * 9;
            let victims: Vec<DocKey> = state
                .docs
                .iter()
                .scan(state.bytes, |bytes, (key, (_, size))| {
                    (*bytes > target).then(|| {
                        *bytes -= size;
                        key.clone()
                    })
                })
                .collect();
            for key in victims {
                if let Some((_, size)) = state.docs.remove(&key) {
                    state.bytes -= size;
                }
            }
        }
        invariant::hold(
            state.bytes <= self.budget,
            "the cache stays within its budget",
        );
    }

    /// The cache's bound: what it holds never exceeds its budget.
    pub(super) fn check(&self) -> Result<(), String> {
        let state = self.state();
        let counted: usize = state.docs.values().map(|(_, size)| size).sum();
        if counted != state.bytes || state.bytes > self.budget {
            return Err(format!(
                "document cache holds {} bytes (counted {counted}) of a {} budget",
                state.bytes, self.budget
            ));
        }
        Ok(())
    }

    pub(super) fn forget(&self, doc: &DocKey) {
        let mut state = self.state();
        if let Some((_, size)) = state.docs.remove(doc) {
            state.bytes -= size;
        }
    }

    /// Forgets a document whose cached state was stale (written behind
    /// Sluice), and keeps it out of the cache for its next lanes.
    pub(super) fn stale(&self, doc: &DocKey) {
        self.forget(doc);
        let mut state = self.state();
        if state.shunned.len() >= SHUNNED_MAX {
            state.shunned.clear();
        }
        state.shunned.insert(doc.clone(), SHUN_LANES);
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.state().bytes
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn many_small_elements_weigh_more_than_their_text() {
        let text = format!(
            "{{{}}}",
            (0..1000)
                .map(|i| format!("\"f{i}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(
            memory_estimate(&text) > text.len() * 5,
            "tiny fields cost far more parsed"
        );
        let blob = format!("{{\"b\":\"{}\"}}", "x".repeat(10_000));
        assert!(
            memory_estimate(&blob) < blob.len() + 200,
            "one long string costs its text"
        );
    }
    use super::*;
    use serde_json::json;

    fn doc(version: u64) -> Document {
        Document {
            version,
            item: json!({"v": version}).as_object().cloned(),
        }
    }

    #[test]
    fn keeps_the_newest_version_and_forgets_on_request() {
        let cache = DocCache::new(1_000);
        let k = DocKey::new("c", "k");
        assert_eq!(cache.get(&k), None);
        cache.put(&k, doc(2), 10);
        cache.put(&k, doc(1), 10);
        assert_eq!(cache.get(&k), Some(doc(2)), "an older version never wins");
        cache.put(&k, doc(3), 20);
        assert_eq!((cache.get(&k), cache.bytes()), (Some(doc(3)), 20));
        cache.forget(&k);
        assert_eq!((cache.get(&k), cache.bytes()), (None, 0));
    }

    #[test]
    fn stays_within_its_budget() {
        let cache = DocCache::new(1_000);
        for i in 0..500 {
            cache.put(&DocKey::new("c", format!("k{i}")), doc(1), 30);
            assert!(cache.bytes() <= 1_000, "{} bytes", cache.bytes());
        }
        let kept = (0..500)
            .filter(|i| cache.get(&DocKey::new("c", format!("k{i}"))).is_some())
            .count();
        assert!((20..=34).contains(&kept), "{kept} kept");
        cache.put(&DocKey::new("c", "huge"), doc(1), 251);
        assert_eq!(
            cache.get(&DocKey::new("c", "huge")),
            None,
            "over a quarter of the budget"
        );
    }

    #[test]
    fn a_document_found_stale_is_left_to_the_store_for_a_while() {
        let cache = DocCache::new(1_000);
        let k = DocKey::new("c", "k");
        cache.put(&k, doc(1), 10);
        cache.stale(&k);
        assert_eq!(cache.get(&k), None);
        for v in 2..2 + u64::from(SHUN_LANES) {
            cache.put(&k, doc(v), 10);
            assert_eq!(cache.get(&k), None, "lane {v} reads the store");
        }
        cache.put(&k, doc(100), 10);
        assert_eq!(cache.get(&k), Some(doc(100)), "cached again");
    }
}
