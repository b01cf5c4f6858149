//! Domain types shared by every part: documents, mutations and their outcomes.
//!
//! These are not wire types (those live in `api::wire`); they hold values that
//! have already been validated.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// A document's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocKey {
    pub collection: String,
    pub key: String,
}

impl DocKey {
    pub fn new(collection: impl Into<String>, key: impl Into<String>) -> Self {
        DocKey {
            collection: collection.into(),
            key: key.into(),
        }
    }
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.collection, self.key)
    }
}

/// A document as the store holds it. Version 0 with no item: never written.
/// A version above 0 with no item: a tombstone.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Document {
    pub version: u64,
    pub item: Option<Map<String, Value>>,
}

impl Document {
    pub fn absent() -> Self {
        Document::default()
    }

    /// True when there is no live item: never written, or deleted.
    pub fn is_gone(&self) -> bool {
        self.item.is_none()
    }

    pub fn item_value(&self) -> Value {
        self.item.clone().map(Value::Object).unwrap_or(Value::Null)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Patch,
    Delete,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "put" => Some(Op::Put),
            "patch" => Some(Op::Patch),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Patch => "patch",
            Op::Delete => "delete",
        }
    }
}

/// The anonymous client's name in idempotency and history records.
pub const ANONYMOUS_CLIENT: &str = "";

/// A validated mutation. `value` is an object for put and patch, `None` for delete.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    pub id: String,
    pub client: Option<String>,
    pub doc: DocKey,
    pub op: Op,
    pub value: Option<Map<String, Value>>,
    pub base_version: Option<u64>,
    pub ts_ms: Option<i64>,
    /// The write lease its client was granted when it read the document:
    /// the holder's mutation goes before the others the lease held back.
    /// Not part of the fingerprint: a resend with or without it is the same.
    pub lease: Option<String>,
    /// A shadow write: staged beside the live documents and promoted when
    /// load allows (only `POST /v1/mutations` looks at it; not part of the
    /// fingerprint, and not kept: a promoted mutation is a live one).
    pub shadow: bool,
    /// Stable hash of the request body without its id: what "the same body" means
    /// for an idempotent resend.
    pub fingerprint: u64,
}

impl Mutation {
    pub fn client_name(&self) -> &str {
        self.client.as_deref().unwrap_or(ANONYMOUS_CLIENT)
    }

    /// The mutation as JSON, in the API's field names: how the accept log
    /// keeps it. The fingerprint is kept beside it, not in it.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "id": self.id,
            "client": self.client,
            "collection": self.doc.collection,
            "key": self.doc.key,
            "op": self.op,
            "value": self.value,
            "base_version": self.base_version,
            "ts_ms": self.ts_ms,
            "lease": self.lease,
        })
        .to_string()
    }

    /// Reads back what `to_json` wrote.
    pub fn from_json(text: &str, fingerprint: u64) -> Result<Mutation, String> {
        #[derive(Deserialize)]
        struct Stored {
            id: String,
            client: Option<String>,
            collection: String,
            key: String,
            op: Op,
            value: Option<Map<String, Value>>,
            base_version: Option<u64>,
            ts_ms: Option<i64>,
            #[serde(default)]
            lease: Option<String>,
        }
        let s: Stored = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(Mutation {
            id: s.id,
            client: s.client,
            doc: DocKey::new(s.collection, s.key),
            op: s.op,
            value: s.value,
            base_version: s.base_version,
            ts_ms: s.ts_ms,
            lease: s.lease,
            shadow: false,
            fingerprint,
        })
    }

    /// Top-level fields the mutation writes, in the order it names them.
    pub fn fields_touched(&self) -> Vec<String> {
        self.value
            .as_ref()
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Applied,
    Merged,
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Merged => "merged",
            Outcome::Rejected => "rejected",
        }
    }
}

/// What became of a decided mutation, as the history records it: its
/// outcome, or a delete of a document that was not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordedOutcome {
    Applied,
    Merged,
    Rejected,
    NotFound,
}

impl RecordedOutcome {
    /// Every value, in the order metrics count them.
    pub const ALL: [RecordedOutcome; 4] = [
        RecordedOutcome::Applied,
        RecordedOutcome::Merged,
        RecordedOutcome::Rejected,
        RecordedOutcome::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordedOutcome::Applied => "applied",
            RecordedOutcome::Merged => "merged",
            RecordedOutcome::Rejected => "rejected",
            RecordedOutcome::NotFound => "not_found",
        }
    }

    pub fn parse(s: &str) -> Option<RecordedOutcome> {
        RecordedOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Its place in [`RecordedOutcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl From<Outcome> for RecordedOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Applied => RecordedOutcome::Applied,
            Outcome::Merged => RecordedOutcome::Merged,
            Outcome::Rejected => RecordedOutcome::Rejected,
        }
    }
}

/// How a conflict ended, as the conflict history names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    Merged,
    Rejected,
    Removed,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Merged => "merged",
            Resolution::Rejected => "rejected",
            Resolution::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "merged" => Some(Resolution::Merged),
            "rejected" => Some(Resolution::Rejected),
            "removed" => Some(Resolution::Removed),
            _ => None,
        }
    }
}

/// The `conflict` object of a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictInfo {
    pub base_version: u64,
    pub server_version: u64,
    pub handler: String,
    pub reason: Option<String>,
}

/// A decided mutation, before it is rendered for the wire. Its item is the
/// document the mutation left (`Step::after`), not repeated here: a hot
/// document can be large, and a coalesced batch decides many mutations of it.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Decided as `outcome`, leaving the document at `version`.
    Outcome {
        outcome: Outcome,
        version: u64,
        conflict: Option<ConflictInfo>,
    },
    /// A delete of a document that does not exist (never written, or deleted).
    NotFound { version: u64 },
}

/// A conflict in full, as the history keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConflictRecord {
    pub mutation_id: String,
    pub client: String,
    pub doc: DocKey,
    pub base_version: u64,
    pub server_version: u64,
    pub handler: String,
    pub resolution: Resolution,
    pub reason: String,
    pub incoming: Value,
    pub existing: Value,
    pub result: Value,
    pub at_ms: i64,
}

/// One decided mutation.
#[derive(Clone, Debug, PartialEq)]
pub struct MutationRecord {
    pub id: String,
    pub client: String,
    pub doc: DocKey,
    pub op: Op,
    pub fields: Vec<String>,
    pub base_version: Option<u64>,
    pub version_before: u64,
    pub version_after: u64,
    pub outcome: RecordedOutcome,
    pub conflict: bool,
    /// The conflict probability computed at enqueue; `None` until a predictor runs.
    pub score: Option<f64>,
    pub ts_ms: Option<i64>,
    pub received_ms: i64,
    pub decided_ms: i64,
    pub queued_us: u64,
    /// Mutations already waiting in the key's lane when this one arrived (a
    /// predictor feature, kept so retraining sees what scoring saw).
    pub lane_waiting: u64,
}

/// A decided mutation's answer, as stored for resends.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub kind: DecisionKind,
    /// The answer's JSON text, exactly as every later reader gets it.
    pub body: String,
}

/// What a decision was, as far as the caller's protocol cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionKind {
    /// Applied or merged: the mutation's effect is in the document.
    Written,
    /// It conflicted and the handler refused it; nothing was written.
    Rejected,
    /// A delete of a document that does not exist.
    NotFound,
}

impl DecisionKind {
    /// The number the store keeps for the kind. These are the HTTP statuses
    /// earlier versions stored in the same column, so their rows read back.
    pub fn stored_code(self) -> i64 {
        match self {
            DecisionKind::Written => 200,
            DecisionKind::Rejected => 409,
            DecisionKind::NotFound => 404,
        }
    }

    pub fn from_stored_code(code: i64) -> Option<DecisionKind> {
        match code {
            200 => Some(DecisionKind::Written),
            409 => Some(DecisionKind::Rejected),
            404 => Some(DecisionKind::NotFound),
            _ => None,
        }
    }
}

/// The length of a document's JSON, counted without building it.
pub fn encoded_len(item: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, item);
    count.0
}
