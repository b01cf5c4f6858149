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
    SCHEMA as POSTGRES_SCHEMA, bind_conflicts, bind_mutations, conflicts_insert, mutations_insert,
};
pub use sqlite::SqliteHistory;

use crate::model::DocKey;
use crate::resolve::ConflictRecord;
use async_trait::async_trait;
use std::sync::Arc;

/// Largest page of conflicts one query returns.
pub const CONFLICTS_LIMIT_MAX: u32 = 1_000;
/// Page size when the caller names none.
pub const CONFLICTS_LIMIT_DEFAULT: u32 = 100;

/// One decided mutation.
#[derive(Clone, Debug, PartialEq)]
pub struct MutationRecord {
    pub id: String,
    pub client: String,
    pub doc: DocKey,
    pub op: String,
    pub fields: Vec<String>,
    pub base_version: Option<u64>,
    pub version_before: u64,
    pub version_after: u64,
    /// `applied`, `merged`, `rejected`, or `not_found`.
    pub outcome: String,
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

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConflictQuery {
    pub collection: Option<String>,
    pub key: Option<String>,
    pub limit: u32,
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
    async fn conflicts(&self, query: &ConflictQuery) -> Result<Vec<ConflictRecord>, HistoryError>;
    /// Mutation records after sequence number `after_seq`, oldest first, with
    /// their sequence numbers: the learner's cursor.
    async fn mutations(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, MutationRecord)>, HistoryError>;
    /// The sequence number of the newest mutation record, 0 when there is none.
    async fn last_seq(&self) -> Result<i64, HistoryError>;
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
        op: row.try_get("op")?,
        fields: serde_json::from_str(&fields).map_err(|e| HistoryError::Corrupt(e.to_string()))?,
        base_version: base_version
            .map(|v| non_negative(v, "base_version"))
            .transpose()?,
        version_before: non_negative(row.try_get("version_before")?, "version_before")?,
        version_after: non_negative(row.try_get("version_after")?, "version_after")?,
        outcome: row.try_get("outcome")?,
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

pub(crate) const MUTATION_COLUMNS: &str = "seq, id, client, collection, key, op, fields, base_version, version_before, \
     version_after, outcome, conflict, score, ts_ms, received_ms, decided_ms, queued_us, lane_waiting";
pub(crate) const CONFLICT_COLUMNS: &str = "mutation_id, client, collection, key, base_version, server_version, handler, \
     resolution, reason, incoming, existing, result, at_ms";

/// `WHERE` clause and the values it binds, for a conflict query; both SQL
/// dialects accept `$N` placeholders.
pub(crate) fn conflict_filter(query: &ConflictQuery) -> (String, Vec<&str>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    if let Some(collection) = &query.collection {
        values.push(collection.as_str());
        clauses.push(format!("collection = ${}", values.len()));
    }
    if let Some(key) = &query.key {
        values.push(key.as_str());
        clauses.push(format!("key = ${}", values.len()));
    }
    let where_clause = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (where_clause, values)
}

/// The `History` implementation both SQL backends share: the statements are
/// the same text in either dialect, only the connection types differ.
macro_rules! sql_history {
    ($ty:ty, record = $record:ident) => {
        impl $ty {
            /// Row by row: cheap in process (SQLite); a network backend may
            /// batch instead.
            #[allow(dead_code)]
            async fn record_rows(&self, mutations: &[$crate::history::MutationRecord], conflicts: &[$crate::resolve::ConflictRecord]) -> Result<(), $crate::history::HistoryError> {
                let mut tx = self.writer.begin().await?;
                for m in mutations {
                    sqlx::query(
                        "INSERT INTO sluice_mutations (id, client, collection, key, op, fields, base_version, version_before,
                             version_after, outcome, conflict, score, ts_ms, received_ms, decided_ms, queued_us, lane_waiting)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
                    )
                    .bind(&m.id)
                    .bind(&m.client)
                    .bind(&m.doc.collection)
                    .bind(&m.doc.key)
                    .bind(&m.op)
                    .bind(serde_json::to_string(&m.fields).unwrap_or_else(|_| "[]".into()))
                    .bind(m.base_version.map($crate::history::version_to_sql))
                    .bind($crate::history::version_to_sql(m.version_before))
                    .bind($crate::history::version_to_sql(m.version_after))
                    .bind(&m.outcome)
                    .bind(i64::from(m.conflict))
                    .bind(m.score)
                    .bind(m.ts_ms)
                    .bind(m.received_ms)
                    .bind(m.decided_ms)
                    .bind($crate::history::version_to_sql(m.queued_us))
                    .bind($crate::history::version_to_sql(m.lane_waiting))
                    .execute(&mut *tx)
                    .await?;
                }
                for c in conflicts {
                    sqlx::query(
                        "INSERT INTO sluice_conflicts (mutation_id, client, collection, key, base_version, server_version,
                             handler, resolution, reason, incoming, existing, result, at_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    )
                    .bind(&c.mutation_id)
                    .bind(&c.client)
                    .bind(&c.doc.collection)
                    .bind(&c.doc.key)
                    .bind($crate::history::version_to_sql(c.base_version))
                    .bind($crate::history::version_to_sql(c.server_version))
                    .bind(&c.handler)
                    .bind(c.resolution.as_str())
                    .bind(&c.reason)
                    .bind(c.incoming.to_string())
                    .bind(c.existing.to_string())
                    .bind(c.result.to_string())
                    .bind(c.at_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::history::History for $ty {
            async fn record(&self, mutations: &[$crate::history::MutationRecord], conflicts: &[$crate::resolve::ConflictRecord]) -> Result<(), $crate::history::HistoryError> {
                self.$record(mutations, conflicts).await
            }

            async fn conflicts(&self, query: &$crate::history::ConflictQuery) -> Result<Vec<$crate::resolve::ConflictRecord>, $crate::history::HistoryError> {
                let (where_clause, values) = $crate::history::conflict_filter(query);
                let sql = format!(
                    "SELECT {} FROM sluice_conflicts {where_clause} ORDER BY seq DESC LIMIT {}",
                    $crate::history::CONFLICT_COLUMNS, query.limit
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for v in values {
                    q = q.bind(v);
                }
                q.fetch_all(&self.reader).await?.iter().map($crate::history::conflict_from_row).collect()
            }

            async fn mutations(&self, after_seq: i64, limit: u32) -> Result<Vec<(i64, $crate::history::MutationRecord)>, $crate::history::HistoryError> {
                let sql = format!("SELECT {} FROM sluice_mutations WHERE seq > $1 ORDER BY seq LIMIT $2", $crate::history::MUTATION_COLUMNS);
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after_seq).bind(i64::from(limit)).fetch_all(&self.reader).await?;
                rows.iter().map($crate::history::mutation_from_row).collect()
            }

            async fn last_seq(&self) -> Result<i64, $crate::history::HistoryError> {
                let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM sluice_mutations")
                    .fetch_one(&self.reader)
                    .await?;
                Ok(seq.unwrap_or(0))
            }
        }
    };
}
pub(crate) use sql_history;
