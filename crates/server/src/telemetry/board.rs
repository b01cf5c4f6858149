//! The dashboard's aggregates: a per-second series of the last minutes, the
//! hottest documents, and the latest conflicts. All of it is bounded, so the
//! page costs the same with a hundred documents or a hundred thousand and
//! with ten mutations a second or ten thousand.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::DocKey;

/// Seconds of history the series keeps: five minutes.
pub(crate) const SERIES_POINTS: usize = 300;
/// Documents tracked as candidates for the hottest list (Space-Saving: a
/// document that is truly hot cannot be pushed out by a stream of cold ones).
pub(crate) const HOT_TRACKED: usize = 256;
/// Documents the dashboard shows.
pub(crate) const HOT_SHOWN: usize = 10;
/// Conflicts the dashboard shows, newest first.
pub(crate) const CONFLICTS_SHOWN: usize = 10;
/// Longest JSON text shown for one value of a conflict; longer is cut.
pub(crate) const VALUE_CHARS_SHOWN: usize = 1_000;
/// Every second, counts of the hot list decay by this factor, so "hot"
/// means the last several seconds (half-life about 7 s).
const HOT_DECAY: f64 = 0.9;

/// One second of the series: rates are per second over that second.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SeriesPoint {
    pub at_ms: i64,
    pub applied: u64,
    pub merged: u64,
    pub rejected: u64,
    pub not_found: u64,
    pub refused: u64,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub concurrency_limit: u64,
    pub load: f64,
    pub threshold: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HotDocument {
    pub collection: String,
    pub key: String,
    /// Decayed count of recent mutations (about the last 10 s), a lower
    /// bound: what the document surely had since it was last tracked.
    pub recent_mutations: f64,
    /// Share of those that conflicted.
    pub conflict_rate: f64,
    /// The predicted conflict probability of its latest mutation.
    pub score: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConflictView {
    pub at_ms: i64,
    pub mutation_id: String,
    pub collection: String,
    pub key: String,
    pub handler: String,
    pub resolution: String,
    pub reason: String,
    pub base_version: u64,
    pub server_version: u64,
    /// JSON text, cut to [`VALUE_CHARS_SHOWN`] characters.
    pub incoming: String,
    pub existing: String,
    pub result: String,
}

/// What the dashboard draws, as `GET /v1/dashboard` answers it.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub at_ms: i64,
    pub totals: Totals,
    pub series: Vec<SeriesPoint>,
    pub hot: Vec<HotDocument>,
    pub conflicts: Vec<ConflictView>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    pub applied: u64,
    pub merged: u64,
    pub rejected: u64,
    pub not_found: u64,
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Hot {
    weight: f64,
    /// The weight inherited from the entry it evicted: `weight - inherited`
    /// is what this document surely had, and what the dashboard shows.
    inherited: f64,
    conflicts: f64,
    score: f64,
}

pub struct Board {
    /// applied, merged, rejected, not_found (in `OUTCOMES` order), refused.
    counts: [AtomicU64; 5],
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    series: VecDeque<SeriesPoint>,
    last_counts: [u64; 5],
    hot: HashMap<DocKey, Hot>,
    /// The next entries to evict, coldest last: found a batch at a time, so
    /// a stream of new documents does not scan the whole table per mutation.
    coldest: Vec<DocKey>,
    conflicts: VecDeque<ConflictView>,
}

/// Eviction candidates chosen per scan of the hot table.
const EVICT_BATCH: usize = 32;

/// The `n` coldest keys of `hot`, coldest last.
fn coldest(hot: &HashMap<DocKey, Hot>, n: usize) -> Vec<DocKey> {
    let mut all: Vec<(f64, &DocKey)> = hot.iter().map(|(k, h)| (h.weight, k)).collect();
    let n = n.min(all.len());
    if n < all.len() {
        all.select_nth_unstable_by(n, |a, b| a.0.total_cmp(&b.0));
        all.truncate(n);
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all.into_iter().map(|(_, k)| k.clone()).collect()
}

/// Items of an array, characters of a string and levels shown before the
/// rest is summarized: the view stays valid JSON, so the page can lay it out.
const ARRAY_ITEMS_SHOWN: usize = 12;
const STRING_CHARS_SHOWN: usize = 120;
const DEPTH_SHOWN: usize = 6;

fn shrink(value: &serde_json::Value, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    match value {
        _ if depth >= DEPTH_SHOWN && (value.is_array() || value.is_object()) => {
            Value::String("…".into())
        }
        Value::String(text) => match text.char_indices().nth(STRING_CHARS_SHOWN) {
            Some((at, _)) => Value::String(format!("{}…", &text[..at])),
            None => value.clone(),
        },
        Value::Array(items) => {
            let mut shown: Vec<Value> = items
                .iter()
                .take(ARRAY_ITEMS_SHOWN)
                .map(|v| shrink(v, depth + 1))
                .collect();
            if items.len() > ARRAY_ITEMS_SHOWN {
                shown.push(Value::String(format!(
                    "… {} more",
                    items.len() - ARRAY_ITEMS_SHOWN
                )));
            }
            Value::Array(shown)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), shrink(v, depth + 1)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

/// A value as the dashboard shows it: long arrays and strings summarized,
/// and at most [`VALUE_CHARS_SHOWN`] characters in all (cut if it is still
/// longer, as with very many fields).
fn cut(value: &serde_json::Value) -> String {
    let text = shrink(value, 0).to_string();
    match text.char_indices().nth(VALUE_CHARS_SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

impl Totals {
    /// Mutations decided: everything but the refused.
    pub fn decided(&self) -> u64 {
        self.applied + self.merged + self.rejected + self.not_found
    }
}

impl Board {
    pub fn new() -> Board {
        Board {
            counts: Default::default(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn count_decided(&self, outcome_index: usize) {
        if let Some(c) = self.counts.get(outcome_index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn count_refused(&self, n: u64) {
        self.counts[4].fetch_add(n, Ordering::Relaxed);
    }

    /// A decided mutation of `doc`, with its score and whether it conflicted.
    pub fn touch(&self, doc: &DocKey, score: f64, conflicted: bool) {
        let mut state = self.state();
        if let Some(hot) = state.hot.get_mut(doc) {
            hot.weight += 1.0;
            hot.conflicts += f64::from(u8::from(conflicted));
            hot.score = score;
            return;
        }
        // Space-Saving: when the table is full, the newcomer replaces the
        // coldest entry and inherits its count, so a document's weight
        // overestimates by at most the evicted weight and a hot document is
        // never pushed out by a stream of cold ones. The candidates were the
        // coldest when chosen; one that grew hot since may be evicted once and
        // start counting again, which a dashboard can bear.
        let state = &mut *state;
        let mut inherited = 0.0;
        if state.hot.len() >= HOT_TRACKED {
            loop {
                if state.coldest.is_empty() {
                    state.coldest = coldest(&state.hot, EVICT_BATCH);
                }
                let Some(key) = state.coldest.pop() else {
                    break;
                };
                // Always there: the list is cleared when entries decay away.
                if let Some(evicted) = state.hot.remove(&key) {
                    inherited = evicted.weight;
                    break;
                }
            }
        }
        state.hot.insert(
            doc.clone(),
            Hot {
                weight: inherited + 1.0,
                inherited,
                conflicts: f64::from(u8::from(conflicted)),
                score,
            },
        );
    }

    pub fn conflict(&self, view: ConflictView) {
        let mut state = self.state();
        if state.conflicts.len() >= CONFLICTS_SHOWN {
            state.conflicts.pop_back();
        }
        state.conflicts.push_front(view);
    }

    /// Builds the view of a conflict from its record.
    pub fn view(record: &crate::model::ConflictRecord) -> ConflictView {
        ConflictView {
            at_ms: record.at_ms,
            mutation_id: record.mutation_id.clone(),
            collection: record.doc.collection.clone(),
            key: record.doc.key.clone(),
            handler: record.handler.clone(),
            resolution: record.resolution.as_str().to_owned(),
            reason: record.reason.clone(),
            base_version: record.base_version,
            server_version: record.server_version,
            incoming: cut(&record.incoming),
            existing: cut(&record.existing),
            result: cut(&record.result),
        }
    }

    /// Closes one second: appends a point of the series from the counts
    /// since the last one and `point`'s gauges, and ages the hot list.
    pub fn tick(&self, mut point: SeriesPoint) {
        let counts: [u64; 5] = std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed));
        let mut state = self.state();
        let delta: [u64; 5] =
            std::array::from_fn(|i| counts[i].saturating_sub(state.last_counts[i]));
        state.last_counts = counts;
        [
            point.applied,
            point.merged,
            point.rejected,
            point.not_found,
            point.refused,
        ] = delta;
        if state.series.len() >= SERIES_POINTS {
            state.series.pop_front();
        }
        state.series.push_back(point);
        state.hot.retain(|_, h| {
            h.weight *= HOT_DECAY;
            h.inherited *= HOT_DECAY;
            h.conflicts *= HOT_DECAY;
            h.weight >= 0.01
        });
        state.coldest.clear();
    }

    pub fn totals(&self) -> Totals {
        let c: [u64; 5] = std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed));
        Totals {
            applied: c[0],
            merged: c[1],
            rejected: c[2],
            not_found: c[3],
            refused: c[4],
        }
    }

    /// The dashboard's view; `series_after_ms` leaves out the points a
    /// stream already sent.
    pub fn snapshot(&self, at_ms: i64, series_after_ms: i64) -> Snapshot {
        let state = self.state();
        let series = state
            .series
            .iter()
            .filter(|p| p.at_ms > series_after_ms)
            .cloned()
            .collect();
        let mut hot: Vec<HotDocument> = state
            .hot
            .iter()
            .map(|(doc, h)| {
                let surely = (h.weight - h.inherited).max(0.0);
                HotDocument {
                    collection: doc.collection.clone(),
                    key: doc.key.clone(),
                    recent_mutations: (surely * 10.0).round() / 10.0,
                    conflict_rate: if surely > 0.0 {
                        (h.conflicts / surely).clamp(0.0, 1.0)
                    } else {
                        0.0
                    },
                    score: h.score,
                }
            })
            .collect();
        hot.sort_by(|a, b| b.recent_mutations.total_cmp(&a.recent_mutations));
        hot.truncate(HOT_SHOWN);
        Snapshot {
            at_ms,
            totals: self.totals(),
            series,
            hot,
            conflicts: state.conflicts.iter().cloned().collect(),
        }
    }
}

impl Default for Board {
    fn default() -> Self {
        Board::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_document_survives_a_stream_of_cold_ones() {
        let board = Board::new();
        let hot = DocKey::new("c", "hot");
        for i in 0..20_000 {
            board.touch(&DocKey::new("c", format!("cold-{i}")), 0.1, false);
            if i % 10 == 0 {
                board.touch(&hot, 0.9, i % 20 == 0);
            }
        }
        let snapshot = board.snapshot(0, 0);
        assert_eq!(snapshot.hot.len(), HOT_SHOWN);
        assert_eq!(snapshot.hot[0].key, "hot");
        assert!((snapshot.hot[0].conflict_rate - 0.5).abs() < 0.2);
        assert!(board.state().hot.len() <= HOT_TRACKED);
    }

    #[test]
    fn the_series_and_the_conflicts_stay_bounded() {
        let board = Board::new();
        for s in 0..(SERIES_POINTS as i64 + 50) {
            board.count_decided(0);
            board.count_decided(0);
            board.tick(SeriesPoint {
                at_ms: s * 1000,
                ..Default::default()
            });
        }
        let snapshot = board.snapshot(0, 0);
        assert_eq!(snapshot.series.len(), SERIES_POINTS);
        assert!(snapshot.series.iter().all(|p| p.applied == 2));
        assert_eq!(board.snapshot(0, 348_000).series.len(), 1);
        let record = crate::model::ConflictRecord {
            mutation_id: "m".into(),
            client: String::new(),
            doc: DocKey::new("c", "k"),
            base_version: 1,
            server_version: 2,
            handler: "automerge".into(),
            resolution: crate::model::Resolution::Merged,
            reason: "r".into(),
            incoming: serde_json::json!({ "big": "x".repeat(10_000) }),
            existing: serde_json::json!({ "list": (0..100).collect::<Vec<u32>>() }),
            result: serde_json::json!({}),
            at_ms: 0,
        };
        for _ in 0..CONFLICTS_SHOWN * 3 {
            board.conflict(Board::view(&record));
        }
        let snapshot = board.snapshot(0, 0);
        assert_eq!(snapshot.conflicts.len(), CONFLICTS_SHOWN);
        // Long strings and arrays are summarized and the view stays JSON.
        let incoming: serde_json::Value =
            serde_json::from_str(&snapshot.conflicts[0].incoming).expect("valid JSON");
        assert_eq!(
            incoming["big"].as_str().map(|s| s.chars().count()),
            Some(STRING_CHARS_SHOWN + 1)
        );
        let existing: serde_json::Value =
            serde_json::from_str(&snapshot.conflicts[0].existing).expect("valid JSON");
        assert_eq!(
            existing["list"].as_array().map(Vec::len),
            Some(ARRAY_ITEMS_SHOWN + 1)
        );
        assert_eq!(existing["list"][ARRAY_ITEMS_SHOWN], "… 88 more");
        // Still too long after that (very many fields): cut.
        let wide: serde_json::Map<String, serde_json::Value> = (0..500)
            .map(|i| (format!("field{i}"), serde_json::json!(i)))
            .collect();
        assert_eq!(
            cut(&serde_json::Value::Object(wide)).chars().count(),
            VALUE_CHARS_SHOWN + 1
        );
    }
}
