//! The history database: every mutation's outcome and every conflict in full.
//! It is the predictor's training data, so it is complete and indexed by
//! document and by time.
//!
//! Guarantees: `record` writes its batch in one transaction; sequence numbers
//! rise in the order batches are recorded, so "newest first" is `seq` descending.
//! History is written after the store commit and before the client is answered,
//! so a client that reads `/v1/conflicts` after its answer sees its conflict.

mod memory;
mod postgres;
mod sqlite;

pub use memory::MemoryHistory;
pub use postgres::PostgresHistory;
pub(crate) use postgres::{
    PgQuery, SCHEMA as POSTGRES_SCHEMA, bind_conflicts, bind_mutations, conflicts_insert,
    mutations_insert,
};
pub use sqlite::SqliteHistory;

use crate::model::{ConflictRecord, DocKey, MutationRecord, Op, RecordedOutcome};
use async_trait::async_trait;
use std::sync::Arc;

/// Largest page of conflicts one query returns.
pub const CONFLICTS_LIMIT_MAX: u32 = 1_000;
/// Page size when the caller names none.
pub const CONFLICTS_LIMIT_DEFAULT: u32 = 100;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConflictQuery {
    pub collection: Option<String>,
    pub key: Option<String>,
    pub limit: u32,
    /// Only conflicts older than this sequence number (a page's cursor).
    pub before_seq: Option<i64>,
    /// Stop once the conflicts read hold this many bytes of JSON values
    /// (one conflict always comes): a conflict holds whole documents, so a
    /// count alone does not bound a page.
    pub bytes_max: Option<usize>,
}

/// One page of conflicts, newest first, with their sequence numbers, and
/// whether older ones remain.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConflictPage {
    pub conflicts: Vec<(i64, ConflictRecord)>,
    pub more: bool,
}

impl ConflictPage {
    /// Takes rows (newest first, up to `limit + 1`) while they fit the
    /// query's budget.
    fn push(
        &mut self,
        query: &ConflictQuery,
        used: &mut usize,
        seq: i64,
        record: ConflictRecord,
        bytes: usize,
    ) -> bool {
        let full = self.conflicts.len() >= query.limit as usize
            || (!self.conflicts.is_empty()
                && query.bytes_max.is_some_and(|max| *used + bytes > max));
        if full {
            self.more = true;
            return false;
        }
        *used += bytes;
        self.conflicts.push((seq, record));
        true
    }
}

/// The bytes a conflict's values take, the part that can be large.
fn values_len(record: &ConflictRecord) -> usize {
    [&record.incoming, &record.existing, &record.result]
        .iter()
        .map(|v| serde_json::to_string(v).map_or(0, |t| t.len()))
        .sum()
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history unavailable: {0}")]
    Unavailable(String),
    #[error("history data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for HistoryError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => HistoryError::Corrupt(e.to_string()),
            other => HistoryError::Unavailable(other.to_string()),
        }
    }
}

#[async_trait]
pub trait History: Send + Sync + 'static {
    async fn record(
        &self,
        mutations: &[MutationRecord],
        conflicts: &[ConflictRecord],
    ) -> Result<(), HistoryError>;
    /// Conflicts matching the query, newest first.
    async fn conflicts(&self, query: &ConflictQuery) -> Result<Vec<ConflictRecord>, HistoryError> {
        let page = self.conflicts_page(query).await?;
        Ok(page.conflicts.into_iter().map(|(_, c)| c).collect())
    }
    /// A page of conflicts matching the query, newest first, read no
    /// further than the query's count and byte budget allow.
    async fn conflicts_page(&self, query: &ConflictQuery) -> Result<ConflictPage, HistoryError>;
    /// Mutation records after sequence number `after_seq`, oldest first, with
    /// their sequence numbers: the learner's cursor.
    async fn mutations(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, MutationRecord)>, HistoryError>;
    /// The sequence number of the newest mutation record, 0 when there is none.
    async fn last_seq(&self) -> Result<i64, HistoryError>;
    /// Whether the history is still what it opened, cheaply (no IO beyond a
    /// file's metadata): `Err` says what is wrong.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// Who wrote the document's versions after `after_version`: `(version,
    /// client)` of the recorded mutations that wrote, oldest first, at most
    /// `limit`. A version written behind Sluice has no record.
    async fn writers(
        &self,
        doc: &DocKey,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, HistoryError>;
}

pub type SharedHistory = Arc<dyn History>;

fn parse_json(text: Option<String>) -> Result<serde_json::Value, HistoryError> {
    match text {
        None => Ok(serde_json::Value::Null),
        Some(t) => serde_json::from_str(&t).map_err(|e| HistoryError::Corrupt(e.to_string())),
    }
}

fn non_negative(v: i64, what: &str) -> Result<u64, HistoryError> {
    u64::try_from(v).map_err(|_| HistoryError::Corrupt(format!("negative {what}: {v}")))
}

pub(crate) fn version_to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The columns both SQL backends select, decoded once for either driver.
pub(crate) fn conflict_from_row<R>(row: &R) -> Result<ConflictRecord, HistoryError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let resolution: String = row.try_get("resolution")?;
    Ok(ConflictRecord {
        mutation_id: row.try_get("mutation_id")?,
        client: row.try_get("client")?,
        doc: DocKey::new(
            row.try_get::<String, _>("collection")?,
            row.try_get::<String, _>("key")?,
        ),
        base_version: non_negative(row.try_get("base_version")?, "base_version")?,
        server_version: non_negative(row.try_get("server_version")?, "server_version")?,
        handler: row.try_get("handler")?,
        resolution: crate::model::Resolution::parse(&resolution)
            .ok_or_else(|| HistoryError::Corrupt(format!("unknown resolution {resolution:?}")))?,
        reason: row.try_get("reason")?,
        incoming: parse_json(row.try_get("incoming")?)?,
        existing: parse_json(row.try_get("existing")?)?,
        result: parse_json(row.try_get("result")?)?,
        at_ms: row.try_get("at_ms")?,
    })
}

/// Decodes a `sql::WRITERS` row of either backend.
pub(crate) fn writer_from_row<R>(row: &R) -> Result<(u64, String), HistoryError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        non_negative(row.try_get("version_after")?, "version_after")?,
        row.try_get("client")?,
    ))
}

pub(crate) fn mutation_from_row<R>(row: &R) -> Result<(i64, MutationRecord), HistoryError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let fields: String = row.try_get("fields")?;
    let base_version: Option<i64> = row.try_get("base_version")?;
    let record = MutationRecord {
        id: row.try_get("id")?,
        client: row.try_get("client")?,
        doc: DocKey::new(
            row.try_get::<String, _>("collection")?,
            row.try_get::<String, _>("key")?,
        ),
        op: {
            let op: String = row.try_get("op")?;
            Op::parse(&op).ok_or_else(|| HistoryError::Corrupt(format!("unknown op {op:?}")))?
        },
        fields: serde_json::from_str(&fields).map_err(|e| HistoryError::Corrupt(e.to_string()))?,
        base_version: base_version
            .map(|v| non_negative(v, "base_version"))
            .transpose()?,
        version_before: non_negative(row.try_get("version_before")?, "version_before")?,
        version_after: non_negative(row.try_get("version_after")?, "version_after")?,
        outcome: {
            let outcome: String = row.try_get("outcome")?;
            RecordedOutcome::parse(&outcome)
                .ok_or_else(|| HistoryError::Corrupt(format!("unknown outcome {outcome:?}")))?
        },
        conflict: row.try_get::<i64, _>("conflict")? != 0,
        score: row.try_get("score")?,
        ts_ms: row.try_get("ts_ms")?,
        received_ms: row.try_get("received_ms")?,
        decided_ms: row.try_get("decided_ms")?,
        queued_us: non_negative(row.try_get("queued_us")?, "queued_us")?,
        lane_waiting: non_negative(row.try_get("lane_waiting")?, "lane_waiting")?,
    };
    Ok((row.try_get("seq")?, record))
}

pub(crate) const CONFLICT_COLUMNS: &str = "mutation_id, client, collection, key, base_version, server_version, handler, \
     resolution, reason, incoming, existing, result, at_ms";

/// `WHERE` clause and the values it binds, for a conflict query; both SQL
/// dialects accept `$N` placeholders.
fn conflict_filter(query: &ConflictQuery) -> (String, Vec<&str>) {
    // The cursor is a number, not text: written into the statement.
    let before: Vec<String> = query
        .before_seq
        .map(|b| format!("seq < {b}"))
        .into_iter()
        .collect();
    crate::db::where_equal(
        &[
            ("collection", query.collection.as_deref()),
            ("key", query.key.as_deref()),
        ],
        &before,
    )
}

/// Statements both SQL backends send, the same text in either dialect.
pub(crate) mod sql {
    pub(crate) const MUTATIONS_AFTER: &str = "SELECT seq, id, client, collection, key, op, fields, base_version, \
         version_before, version_after, outcome, conflict, score, ts_ms, received_ms, decided_ms, \
         queued_us, lane_waiting FROM sluice_mutations WHERE seq > $1 ORDER BY seq LIMIT $2";
    pub(crate) const LAST_SEQ: &str = "SELECT MAX(seq) FROM sluice_mutations";
    pub(crate) const WRITERS: &str = "SELECT version_after, client FROM sluice_mutations \
         WHERE collection = $1 AND key = $2 AND version_after > $3 AND version_after > version_before \
         ORDER BY seq LIMIT $4";
}

/// The conflicts query and the values it binds, in order.
pub(crate) fn conflicts_select(query: &ConflictQuery) -> (String, Vec<&str>) {
    let (where_clause, values) = conflict_filter(query);
    let sql = format!(
        "SELECT seq, {CONFLICT_COLUMNS} FROM sluice_conflicts {where_clause} ORDER BY seq DESC LIMIT {}",
        u64::from(query.limit) + 1
    );
    (sql, values)
}

/// Reads a conflicts statement's rows one at a time into a page, so that a
/// page never holds (or reads) more than its budget and one row.
pub(crate) async fn collect_page<'a, R>(
    mut rows: futures_util::stream::BoxStream<'a, Result<R, sqlx::Error>>,
    query: &ConflictQuery,
) -> Result<ConflictPage, HistoryError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    use futures_util::TryStreamExt;
    let mut page = ConflictPage::default();
    let mut used = 0;
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.try_get("seq")?;
        let record = conflict_from_row(&row)?;
        let bytes = values_len(&record);
        if !page.push(query, &mut used, seq, record, bytes) {
            break;
        }
    }
    Ok(page)
}
