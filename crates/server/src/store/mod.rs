//! The document store: versioned JSON documents, written only by
//! compare-and-set, plus the two small tables that must commit atomically with
//! the documents: the replies kept for idempotent resends, and the collection
//! configurations.
//!
//! Guarantees every backend gives (checked by one conformance suite):
//! - `commit` runs its whole batch in one transaction: after a crash either all
//!   of its committed lanes are there, or none is.
//! - A lane commits only if the document's version is still
//!   `expected_version`, whether or not it writes (so a rejection's answer names
//!   the version that is current when it commits); otherwise nothing of that
//!   lane (write or replies) is kept and the lane is reported `Stale`, while the
//!   other lanes commit.
//! - A reply is stored in the same transaction as the write it describes, so a
//!   mutation is never applied without its reply, nor its reply kept without it:
//!   this is what makes resends exactly-once.
//! - `get` after a successful `commit` sees it.
//! - A lane carrying a `Fence` commits only if its epoch is its partition's
//!   fence when it commits (checked in the commit's own statement or
//!   transaction); a fence only rises (`raise_fence`).

mod memory;
mod postgres;
mod sqlite;

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::model::ConflictRecord;
use crate::model::MutationRecord;
use crate::model::{Decision, DecisionKind, DocKey, Document};
use async_trait::async_trait;
use std::sync::Arc;

/// What a client was told about one mutation, kept for resends and
/// `GET /v1/mutations/{id}`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredReply {
    pub client: String,
    pub id: String,
    pub fingerprint: u64,
    /// What the client was told, exactly as it was sent.
    pub decision: Decision,
    pub at_ms: i64,
    /// The mutation was accepted asynchronously: its entry in the accept log
    /// goes in the same transaction as this reply.
    pub was_accepted: bool,
    /// The mutation was quarantined: its quarantine entry goes in the same
    /// transaction as this reply.
    pub was_quarantined: bool,
}

/// A mutation kept aside because its collection's custom handler failed
/// (`on_handler_failure: quarantine`): written by the commit that kept it
/// (again, with a new reason, by one that kept it again), removed by the
/// commit that stores its final reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Quarantined {
    pub client: String,
    pub id: String,
    pub fingerprint: u64,
    pub doc: DocKey,
    /// The mutation as JSON (see `Mutation::to_json`); empty when a listing
    /// asked without it.
    pub mutation: String,
    pub reason: String,
    pub score: f64,
    pub at_ms: i64,
    /// It was accepted asynchronously: its accept-log entry goes in the same
    /// transaction.
    pub was_accepted: bool,
}

/// Which quarantined mutations to list, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuarantineQuery {
    pub collection: Option<String>,
    pub client: Option<String>,
    pub limit: u32,
    /// With each mutation's JSON (a listing for people), or without (what a
    /// start loads into its index).
    pub with_mutations: bool,
}

/// A mutation answered 202: durably logged before the answer, removed in the
/// transaction that stores its reply, replayed after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub client: String,
    pub id: String,
    pub fingerprint: u64,
    /// The mutation as JSON (see `Mutation::to_json`).
    pub mutation: String,
    pub score: f64,
    pub at_ms: i64,
}

/// Replies are kept for resends for the retention period, and in any case
/// the newest this many, so that an event stream can resume across them.
pub const EVENTS_KEPT_MIN: i64 = 10_000;

/// The end state of one lane's coalesced batch.
#[derive(Clone, Debug, PartialEq)]
pub struct LaneCommit {
    pub doc: DocKey,
    /// The version the batch was decided against.
    pub expected_version: u64,
    /// The document to write, or `None` when every mutation was refused (the
    /// version is still checked).
    pub write: Option<Document>,
    pub replies: Vec<StoredReply>,
    /// Mutations the lane keeps in the quarantine; like the replies, kept
    /// only if the lane commits.
    pub quarantine: Vec<Quarantined>,
    pub at_ms: i64,
    /// The lane's history records, for a store that writes the history in the
    /// commit's own transaction (`Store::writes_history`); empty otherwise.
    /// Like the replies, they are kept only if the lane commits.
    pub history: LaneHistory,
    /// In cluster mode, the lease the lane was decided under: the lane is
    /// kept only if its epoch is still its partition's fence. `None` outside
    /// cluster mode: nothing is checked.
    pub fence: Option<Fence>,
}

/// A partition's lease epoch, as a commit carries it (see `Store::raise_fence`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub partition: u32,
    pub epoch: u64,
}

/// What the history keeps of one lane: a record per mutation, and the
/// conflicts in full.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LaneHistory {
    pub mutations: Vec<MutationRecord>,
    pub conflicts: Vec<ConflictRecord>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// The document no longer had `expected_version`: someone else wrote it.
    Stale,
    /// A reply of one of the lane's mutations (replies and quarantine
    /// entries alike) is already stored: it was decided before (a resend, after a restart or through another process).
    /// Nothing of the lane was written; the engine answers the resends from
    /// their stored replies and decides the rest again.
    Resent,
    /// The lane's fence is no longer its partition's: a later owner raised
    /// it. Nothing of the lane was written; this process no longer decides
    /// that partition.
    Fenced,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// A document locked in the store for one lane's read-decide-write
/// (pre-emptive locking): a writer that bypasses Sluice waits until the
/// lane commits, so the lane's compare-and-set cannot go stale. Dropped
/// without `commit`, it rolls back: nothing is written, the lock is gone.
#[async_trait]
pub trait LockedDoc: Send {
    /// The document as it stands under the lock.
    fn document(&self) -> &Document;
    /// Commits the lane in the lock's own transaction, with every check
    /// `Store::commit` makes, and releases the lock.
    async fn commit(self: Box<Self>, lane: &LaneCommit) -> Result<CommitOutcome, StoreError>;
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The document as it stands; `Document::absent()` when never written.
    async fn get(&self, doc: &DocKey) -> Result<Document, StoreError>;
    /// Locks `doc` for one lane's read-decide-write; `None` when this store
    /// has no lock to offer, and the lane reads and commits by
    /// compare-and-set as always. A document never written has no row to
    /// lock: its insert is still checked by the commit.
    async fn lock(&self, _doc: &DocKey) -> Result<Option<Box<dyn LockedDoc>>, StoreError> {
        Ok(None)
    }
    /// Commits a batch of lanes in one transaction; one outcome per lane, in order.
    async fn commit(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError>;
    async fn reply(&self, client: &str, id: &str) -> Result<Option<StoredReply>, StoreError>;
    /// Raises `partition`'s fence to `epoch` if it is lower, and returns the
    /// fence as it then stands (above `epoch` if a later owner raised it
    /// first; `raise_fence(p, 0)` reads it). It waits for commits checking
    /// the fence it replaces: once it returns, no lane decided under an older
    /// epoch can commit.
    async fn raise_fence(&self, partition: u32, epoch: u64) -> Result<u64, StoreError>;
    /// Whether `commit` writes each committed lane's `history` in its own
    /// transaction (the history lives in the store's database): then the
    /// engine does not write those records to the history again.
    fn writes_history(&self) -> bool {
        false
    }
    /// Whether `read_many` takes one round trip for many: then the engine
    /// gathers concurrent point reads into batches.
    fn batches_reads(&self) -> bool {
        false
    }
    /// Several documents and several stored replies (by `(client, id)`),
    /// each answered in order, absent ones included: one round trip where
    /// the backend can.
    async fn read_many(
        &self,
        docs: &[DocKey],
        replies: &[(String, String)],
    ) -> Result<(Vec<Document>, Vec<Option<StoredReply>>), StoreError> {
        let mut found_docs = Vec::with_capacity(docs.len());
        for doc in docs {
            found_docs.push(self.get(doc).await?);
        }
        let mut found_replies = Vec::with_capacity(replies.len());
        for (client, id) in replies {
            found_replies.push(self.reply(client, id).await?);
        }
        Ok((found_docs, found_replies))
    }
    /// Forgets replies stored before `before_ms`, except the newest
    /// `EVENTS_KEPT_MIN`; returns how many.
    async fn expire_replies(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Appends to the accept log; `false` when `(client, id)` is already there.
    async fn accept(&self, entry: &Accepted) -> Result<bool, StoreError>;
    /// Removes an entry whose mutation was refused after all (a full queue).
    async fn unaccept(&self, client: &str, id: &str) -> Result<(), StoreError>;
    async fn accepted(&self, client: &str, id: &str) -> Result<Option<Accepted>, StoreError>;
    /// Every entry still in the accept log, oldest first: what a restart resumes.
    async fn pending_accepted(&self) -> Result<Vec<Accepted>, StoreError>;
    /// Stages a shadow write (beside the live documents, not in them) in
    /// `collection`; `false` when `(client, id)` is staged already.
    async fn stage(&self, entry: &Accepted, collection: &str) -> Result<bool, StoreError>;
    /// Takes a staged mutation out of the staging area; `false` when it was
    /// not there.
    async fn unstage(&self, client: &str, id: &str) -> Result<bool, StoreError>;
    async fn staged(&self, client: &str, id: &str) -> Result<Option<Accepted>, StoreError>;
    /// Staged mutations, oldest first, of one collection or all, at most
    /// `limit`.
    async fn staged_list(
        &self,
        collection: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Accepted>, StoreError>;
    /// The client's answers stored after event `after_seq`, oldest first, with
    /// their event numbers: the outcome stream.
    async fn events_after(
        &self,
        client: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError>;
    /// An event number at or past the client's newest: where a stream that
    /// starts now starts.
    async fn events_head(&self, client: &str) -> Result<i64, StoreError>;
    /// The secret named `name`, made (by `make`) and stored on first use, so
    /// that every process on this store reads the same one.
    async fn secret(
        &self,
        name: &str,
        make: &(dyn Fn() -> String + Sync),
    ) -> Result<String, StoreError>;
    /// Every configured collection: `(name, configuration JSON)`.
    async fn collections(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Stores `change.collection`'s configuration, `config_json`, and
    /// records `change` in its audit, at once; only the newest
    /// [`COLLECTION_CHANGES_KEPT`] changes of a collection are kept.
    async fn put_collection(
        &self,
        config_json: &str,
        change: &CollectionChange,
    ) -> Result<(), StoreError>;
    /// A collection's changes, newest first: at most `limit`, and only those
    /// before the change numbered `before` when given.
    async fn collection_changes(
        &self,
        collection: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<CollectionChange>, StoreError>;
    async fn quarantined(&self, client: &str, id: &str) -> Result<Option<Quarantined>, StoreError>;
    /// Quarantined mutations matching the query, oldest first.
    async fn quarantine_list(
        &self,
        query: &QuarantineQuery,
    ) -> Result<Vec<Quarantined>, StoreError>;
    /// Stores a new API key (its id must be new).
    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Every key, revoked ones too, oldest first.
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Marks a key revoked at `at_ms`; `false` if no live key has this id.
    async fn revoke_key(&self, id: &str, at_ms: i64) -> Result<bool, StoreError>;
}

/// One change of a collection's configuration, as its audit keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionChange {
    /// Its place in the store's order of changes (the store numbers it).
    pub seq: i64,
    pub collection: String,
    /// The configuration it set, as `GET` shows it (secrets redacted).
    pub config: String,
    /// Who made it; `None` when authentication is off.
    pub by_client: Option<String>,
    pub by_role: Option<String>,
    pub at_ms: i64,
}

/// How many changes of one collection its audit keeps.
pub const COLLECTION_CHANGES_KEPT: i64 = 1_000;

/// An API key as stored: never the key itself, only its secret's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    /// The client the key's holder is.
    pub client: String,
    pub role: String,
    /// SHA-256 of the key's secret, in hex.
    pub hash: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

pub type SharedStore = Arc<dyn Store>;

/// Parses the stored item text; a tombstone is SQL NULL.
fn decode_item(version: i64, item: Option<String>) -> Result<Document, StoreError> {
    let version = u64::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("negative version {version}")))?;
    let item = match item {
        None => None,
        Some(text) => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            Ok(_) => {
                return Err(StoreError::Corrupt(
                    "stored item is not a JSON object".into(),
                ));
            }
            Err(e) => return Err(StoreError::Corrupt(format!("stored item is not JSON: {e}"))),
        },
    };
    Ok(Document { version, item })
}

/// Decodes an accept-log row of either backend.
fn accepted_from_row<R>(row: &R) -> Result<Accepted, StoreError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Accepted {
        client: row.try_get("client")?,
        id: row.try_get("id")?,
        fingerprint: from_sql(row.try_get("fingerprint")?),
        mutation: row.try_get("mutation")?,
        score: row.try_get("score")?,
        at_ms: row.try_get("at_ms")?,
    })
}

fn encode_item(doc: &Document) -> Option<String> {
    doc.item
        .as_ref()
        .map(|m| serde_json::Value::Object(m.clone()).to_string())
}

/// SQL has no unsigned 64-bit integer: versions and fingerprints are stored as
/// i64. Versions never reach 2^63; fingerprints round-trip bit for bit.
fn to_sql(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

fn from_sql(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// Statements both SQL backends send, the same text in either dialect
/// (`$N` placeholders work on both); where the dialects differ (how an item
/// is selected, the column that numbers rows) each backend has its own.
pub(crate) mod sql {
    pub(crate) const SELECT_REPLY: &str =
        "SELECT fingerprint, status, body, at_ms FROM sluice_replies WHERE client = $1 AND id = $2";
    pub(crate) const INSERT_ACCEPTED: &str = "INSERT INTO sluice_accepted (client, id, fingerprint, mutation, score, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (client, id) DO NOTHING";
    pub(crate) const DELETE_ACCEPTED: &str =
        "DELETE FROM sluice_accepted WHERE client = $1 AND id = $2";
    pub(crate) const SELECT_ACCEPTED: &str = "SELECT client, id, fingerprint, mutation, score, at_ms \
         FROM sluice_accepted WHERE client = $1 AND id = $2";
    pub(crate) const INSERT_STAGED: &str = "INSERT INTO sluice_staged (client, id, fingerprint, collection, mutation, score, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (client, id) DO NOTHING";
    pub(crate) const DELETE_STAGED: &str =
        "DELETE FROM sluice_staged WHERE client = $1 AND id = $2";
    pub(crate) const SELECT_STAGED: &str = "SELECT client, id, fingerprint, mutation, score, at_ms \
         FROM sluice_staged WHERE client = $1 AND id = $2";
    pub(crate) const SELECT_QUARANTINED: &str = "SELECT client, id, fingerprint, collection, key, mutation, \
         reason, score, at_ms FROM sluice_quarantine WHERE client = $1 AND id = $2";
    pub(crate) const UPSERT_QUARANTINED: &str = "INSERT INTO sluice_quarantine (client, id, fingerprint, \
         collection, key, mutation, reason, score, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (client, id) DO UPDATE SET reason = excluded.reason, score = excluded.score, \
         at_ms = excluded.at_ms";
    pub(crate) const DELETE_QUARANTINED: &str =
        "DELETE FROM sluice_quarantine WHERE client = $1 AND id = $2";
    pub(crate) const PARTITIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS sluice_partitions (\
         partition INTEGER PRIMARY KEY, epoch BIGINT NOT NULL)";
    pub(crate) const SELECT_FENCE: &str =
        "SELECT epoch FROM sluice_partitions WHERE partition = $1";
    pub(crate) const SECRETS_TABLE: &str = "CREATE TABLE IF NOT EXISTS sluice_secrets (\
         name TEXT PRIMARY KEY, value TEXT NOT NULL)";
    pub(crate) const INSERT_SECRET: &str =
        "INSERT INTO sluice_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
    pub(crate) const SELECT_SECRET: &str = "SELECT value FROM sluice_secrets WHERE name = $1";
    pub(crate) const KEYS_TABLE: &str = "CREATE TABLE IF NOT EXISTS sluice_keys (\
         id TEXT PRIMARY KEY, client TEXT NOT NULL, role TEXT NOT NULL, hash TEXT NOT NULL, \
         created_ms BIGINT NOT NULL, revoked_ms BIGINT)";
    pub(crate) const INSERT_KEY: &str =
        "INSERT INTO sluice_keys (id, client, role, hash, created_ms) VALUES ($1, $2, $3, $4, $5)";
    pub(crate) const SELECT_KEY: &str =
        "SELECT id, client, role, hash, created_ms, revoked_ms FROM sluice_keys WHERE id = $1";
    pub(crate) const SELECT_KEYS: &str = "SELECT id, client, role, hash, created_ms, revoked_ms \
         FROM sluice_keys ORDER BY created_ms, id";
    pub(crate) const REVOKE_KEY: &str =
        "UPDATE sluice_keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL";
    pub(crate) const SELECT_COLLECTIONS: &str =
        "SELECT name, config FROM sluice_collections ORDER BY name";
    pub(crate) const INSERT_CHANGE: &str = "INSERT INTO sluice_collection_changes \
         (name, config, by_client, by_role, at_ms) VALUES ($1, $2, $3, $4, $5)";
    pub(crate) const PRUNE_CHANGES: &str = "DELETE FROM sluice_collection_changes \
         WHERE name = $1 AND seq <= (SELECT seq FROM sluice_collection_changes WHERE name = $1 \
         ORDER BY seq DESC LIMIT 1 OFFSET $2)";
    pub(crate) const SELECT_CHANGES: &str = "SELECT seq, name, config, by_client, by_role, at_ms \
         FROM sluice_collection_changes WHERE name = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3";
    pub(crate) const CHANGES_INDEX: &str = "CREATE INDEX IF NOT EXISTS sluice_collection_changes_name \
         ON sluice_collection_changes (name, seq)";
    pub(crate) const UPSERT_COLLECTION: &str = "INSERT INTO sluice_collections (name, config, updated_ms) \
         VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_ms = excluded.updated_ms";
}

/// Decodes a `sql::SELECT_REPLY` row of either backend.
fn reply_from_row<R>(row: &R, client: &str, id: &str) -> Result<StoredReply, StoreError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let code: i64 = row.try_get("status")?;
    let kind = DecisionKind::from_stored_code(code)
        .ok_or_else(|| StoreError::Corrupt(format!("reply kind {code}")))?;
    Ok(StoredReply {
        client: client.to_owned(),
        id: id.to_owned(),
        fingerprint: from_sql(row.try_get("fingerprint")?),
        decision: Decision {
            kind,
            body: row.try_get("body")?,
        },
        at_ms: row.try_get("at_ms")?,
        was_accepted: false,
        was_quarantined: false,
    })
}

/// The quarantine listing's statement and the values it binds, for either
/// dialect (`$N` placeholders; the limit is a number, not a value).
fn quarantine_select(query: &QuarantineQuery) -> (String, Vec<&str>) {
    let (filter, values) = crate::db::where_equal(
        &[
            ("collection", query.collection.as_deref()),
            ("client", query.client.as_deref()),
        ],
        &[],
    );
    let mutation = if query.with_mutations {
        "mutation"
    } else {
        "'' AS mutation"
    };
    let sql = format!(
        "SELECT client, id, fingerprint, collection, key, {mutation}, reason, score, at_ms \
         FROM sluice_quarantine {filter} ORDER BY at_ms, client, id LIMIT {}",
        query.limit
    );
    (sql, values)
}

/// Decodes a quarantine row of either backend.
fn quarantined_from_row<R>(row: &R) -> Result<Quarantined, StoreError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Quarantined {
        client: row.try_get("client")?,
        id: row.try_get("id")?,
        fingerprint: from_sql(row.try_get("fingerprint")?),
        doc: DocKey::new(
            row.try_get::<String, _>("collection")?,
            row.try_get::<String, _>("key")?,
        ),
        mutation: row.try_get("mutation")?,
        reason: row.try_get("reason")?,
        score: row.try_get("score")?,
        at_ms: row.try_get("at_ms")?,
        was_accepted: false,
    })
}

/// Decodes a `(name, config)` row of either backend.
fn collection_from_row<R>(row: &R) -> Result<(String, String), StoreError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((row.try_get("name")?, row.try_get("config")?))
}

/// Decodes a `sql::SELECT_CHANGES` row of either backend.
fn change_from_row<R>(row: &R) -> Result<CollectionChange, StoreError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(CollectionChange {
        seq: row.try_get("seq")?,
        collection: row.try_get("name")?,
        config: row.try_get("config")?,
        by_client: row.try_get("by_client")?,
        by_role: row.try_get("by_role")?,
        at_ms: row.try_get("at_ms")?,
    })
}

/// The body of `put_collection` and `collection_changes` on either SQL
/// backend (their pools differ in type, their statements do not).
macro_rules! sql_collection_methods {
    ($store:ty) => {
        impl $store {
            async fn put_collection_rows(
                &self,
                config_json: &str,
                change: &CollectionChange,
            ) -> Result<(), StoreError> {
                let mut tx = self.writer.begin().await?;
                sqlx::query(sql::UPSERT_COLLECTION)
                    .bind(&change.collection)
                    .bind(config_json)
                    .bind(change.at_ms)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::INSERT_CHANGE)
                    .bind(&change.collection)
                    .bind(&change.config)
                    .bind(&change.by_client)
                    .bind(&change.by_role)
                    .bind(change.at_ms)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::PRUNE_CHANGES)
                    .bind(&change.collection)
                    .bind(COLLECTION_CHANGES_KEPT)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn collection_change_rows(
                &self,
                collection: &str,
                before: Option<i64>,
                limit: u32,
            ) -> Result<Vec<CollectionChange>, StoreError> {
                let rows = sqlx::query(sql::SELECT_CHANGES)
                    .bind(collection)
                    .bind(before.unwrap_or(i64::MAX))
                    .bind(i64::from(limit))
                    .fetch_all(&self.writer)
                    .await?;
                rows.iter().map(change_from_row).collect()
            }
        }
    };
}
pub(crate) use sql_collection_methods;

/// Decodes a `sql::SELECT_KEY` row of either backend.
fn key_from_row<R>(row: &R) -> Result<KeyRecord, StoreError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(KeyRecord {
        id: row.try_get("id")?,
        client: row.try_get("client")?,
        role: row.try_get("role")?,
        hash: row.try_get("hash")?,
        created_ms: row.try_get("created_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
    })
}

/// Decodes an event-stream row (`seq`, `body`) of either backend.
fn event_from_row<R>(row: &R) -> Result<(i64, String), StoreError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((row.try_get("seq")?, row.try_get("body")?))
}
