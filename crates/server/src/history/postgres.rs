//! History in PostgreSQL. Column types are chosen so that rows decode to the
//! same Rust types as SQLite's (`BIGINT` for flags and versions, `TEXT` for
//! JSON), which lets both backends share one implementation.

use super::{
    ConflictPage, ConflictQuery, History, HistoryError, collect_page, conflicts_select,
    mutation_from_row, sql, version_to_sql, writer_from_row,
};
use crate::model::{ConflictRecord, DocKey, MutationRecord};
use sqlx::postgres::PgPool;
use std::sync::LazyLock;

pub(crate) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sluice_mutations (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL,
        client TEXT NOT NULL,
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        op TEXT NOT NULL,
        fields TEXT NOT NULL,
        base_version BIGINT,
        version_before BIGINT NOT NULL,
        version_after BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        conflict BIGINT NOT NULL,
        score DOUBLE PRECISION,
        ts_ms BIGINT,
        received_ms BIGINT NOT NULL,
        decided_ms BIGINT NOT NULL,
        queued_us BIGINT NOT NULL,
        lane_waiting BIGINT NOT NULL DEFAULT 0
    )",
    "CREATE INDEX IF NOT EXISTS sluice_mutations_doc ON sluice_mutations (collection, key, seq)",
    // Indexes only where a query needs one: each costs every record a
    // write (and on PostgreSQL its WAL). Nothing looks records up by
    // (client, id) or by decision time; databases made before go without.
    "DROP INDEX IF EXISTS sluice_mutations_client",
    "DROP INDEX IF EXISTS sluice_mutations_decided",
    "CREATE TABLE IF NOT EXISTS sluice_conflicts (
        seq BIGSERIAL PRIMARY KEY,
        mutation_id TEXT NOT NULL,
        client TEXT NOT NULL,
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        base_version BIGINT NOT NULL,
        server_version BIGINT NOT NULL,
        handler TEXT NOT NULL,
        resolution TEXT NOT NULL,
        reason TEXT NOT NULL,
        incoming TEXT,
        existing TEXT,
        result TEXT,
        at_ms BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS sluice_conflicts_doc ON sluice_conflicts (collection, key, seq)",
];

pub struct PostgresHistory {
    reader: PgPool,
    writer: PgPool,
}

impl PostgresHistory {
    pub async fn connect(url: &str) -> Result<Self, HistoryError> {
        let pool = crate::db::connect_postgres(url, SCHEMA).await?;
        Ok(PostgresHistory {
            reader: pool.clone(),
            writer: pool,
        })
    }
}

#[async_trait::async_trait]
impl History for PostgresHistory {
    /// Two statements whatever the batch's size (see `insert_records`).
    async fn record(
        &self,
        mutations: &[MutationRecord],
        conflicts: &[ConflictRecord],
    ) -> Result<(), HistoryError> {
        let mut tx = self.writer.begin().await?;
        let mutations: Vec<&MutationRecord> = mutations.iter().collect();
        let conflicts: Vec<&ConflictRecord> = conflicts.iter().collect();
        insert_records(&mut tx, &mutations, &conflicts).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn conflicts_page(&self, query: &ConflictQuery) -> Result<ConflictPage, HistoryError> {
        let (sql, values) = conflicts_select(query);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in values {
            q = q.bind(v);
        }
        collect_page(q.fetch(&self.reader), query).await
    }

    async fn mutations(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, MutationRecord)>, HistoryError> {
        let rows = sqlx::query(sql::MUTATIONS_AFTER)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(mutation_from_row).collect()
    }

    async fn last_seq(&self) -> Result<i64, HistoryError> {
        let seq: Option<i64> = sqlx::query_scalar(sql::LAST_SEQ)
            .fetch_one(&self.reader)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn writers(
        &self,
        doc: &DocKey,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, HistoryError> {
        let rows = sqlx::query(sql::WRITERS)
            .bind(&doc.collection)
            .bind(&doc.key)
            .bind(version_to_sql(after_version))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(writer_from_row).collect()
    }
}

/// A statement being bound.
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

const MUTATION_COLUMNS: &str = "id, client, collection, key, op, fields, base_version, version_before, \
     version_after, outcome, conflict, score, ts_ms, received_ms, decided_ms, queued_us, lane_waiting";
const MUTATION_TYPES: &[&str] = &[
    "TEXT",
    "TEXT",
    "TEXT",
    "TEXT",
    "TEXT",
    "TEXT",
    "BIGINT",
    "BIGINT",
    "BIGINT",
    "TEXT",
    "BIGINT",
    "DOUBLE PRECISION",
    "BIGINT",
    "BIGINT",
    "BIGINT",
    "BIGINT",
    "BIGINT",
];
const CONFLICT_COLUMNS: &str = "mutation_id, client, collection, key, base_version, server_version, \
     handler, resolution, reason, incoming, existing, result, at_ms";
const CONFLICT_TYPES: &[&str] = &[
    "TEXT", "TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT",
    "TEXT", "BIGINT",
];

/// `INSERT INTO table … SELECT … FROM UNNEST(…)`: one statement for any
/// number of rows, inserted in the arrays' order (so `seq` follows record
/// order), parameters numbered from `first`. With `lane_filter`, a leading
/// `BIGINT[]` array (`lane`) comes first and only rows whose lane passes the
/// filter are inserted. Returns the SQL and the number of parameters used.
fn unnest_insert(
    table: &str,
    columns: &str,
    types: &[&str],
    first: usize,
    lane_filter: Option<&str>,
) -> (String, usize) {
    let leading = usize::from(lane_filter.is_some());
    let arrays: Vec<String> = std::iter::repeat_n("BIGINT", leading)
        .chain(types.iter().copied())
        .enumerate()
        .map(|(i, ty)| format!("${}::{ty}[]", first + i))
        .collect();
    let (lane, filter) = match lane_filter {
        Some(filter) => ("lane, ", format!("WHERE {filter} ")),
        None => ("", String::new()),
    };
    let sql = format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM UNNEST({}) \
         WITH ORDINALITY AS u({lane}{columns}, n) {filter}ORDER BY n",
        arrays.join(", ")
    );
    (sql, arrays.len())
}

/// The insert of mutation records (see `unnest_insert`); bind with
/// `bind_mutations`.
pub(crate) fn mutations_insert(first: usize, lane_filter: Option<&str>) -> (String, usize) {
    unnest_insert(
        "sluice_mutations",
        MUTATION_COLUMNS,
        MUTATION_TYPES,
        first,
        lane_filter,
    )
}

/// The insert of conflict records (see `unnest_insert`); bind with
/// `bind_conflicts`.
pub(crate) fn conflicts_insert(first: usize, lane_filter: Option<&str>) -> (String, usize) {
    unnest_insert(
        "sluice_conflicts",
        CONFLICT_COLUMNS,
        CONFLICT_TYPES,
        first,
        lane_filter,
    )
}

/// Binds the columns of `mutations_insert`, in order.
pub(crate) fn bind_mutations<'q>(q: PgQuery<'q>, ms: &[&'q MutationRecord]) -> PgQuery<'q> {
    let text = |f: fn(&MutationRecord) -> &str| ms.iter().map(|m| f(m)).collect::<Vec<_>>();
    let number = |f: fn(&MutationRecord) -> i64| ms.iter().map(|m| f(m)).collect::<Vec<_>>();
    q.bind(text(|m| &m.id))
        .bind(text(|m| &m.client))
        .bind(text(|m| &m.doc.collection))
        .bind(text(|m| &m.doc.key))
        .bind(text(|m| m.op.as_str()))
        .bind(
            ms.iter()
                .map(|m| serde_json::to_string(&m.fields).unwrap_or_else(|_| "[]".into()))
                .collect::<Vec<_>>(),
        )
        .bind(
            ms.iter()
                .map(|m| m.base_version.map(version_to_sql))
                .collect::<Vec<_>>(),
        )
        .bind(number(|m| version_to_sql(m.version_before)))
        .bind(number(|m| version_to_sql(m.version_after)))
        .bind(text(|m| m.outcome.as_str()))
        .bind(number(|m| i64::from(m.conflict)))
        .bind(ms.iter().map(|m| m.score).collect::<Vec<_>>())
        .bind(ms.iter().map(|m| m.ts_ms).collect::<Vec<_>>())
        .bind(number(|m| m.received_ms))
        .bind(number(|m| m.decided_ms))
        .bind(number(|m| version_to_sql(m.queued_us)))
        .bind(number(|m| version_to_sql(m.lane_waiting)))
}

/// Binds the columns of `conflicts_insert`, in order.
pub(crate) fn bind_conflicts<'q>(q: PgQuery<'q>, cs: &[&'q ConflictRecord]) -> PgQuery<'q> {
    let text = |f: fn(&ConflictRecord) -> &str| cs.iter().map(|c| f(c)).collect::<Vec<_>>();
    q.bind(text(|c| &c.mutation_id))
        .bind(text(|c| &c.client))
        .bind(text(|c| &c.doc.collection))
        .bind(text(|c| &c.doc.key))
        .bind(
            cs.iter()
                .map(|c| version_to_sql(c.base_version))
                .collect::<Vec<_>>(),
        )
        .bind(
            cs.iter()
                .map(|c| version_to_sql(c.server_version))
                .collect::<Vec<_>>(),
        )
        .bind(text(|c| &c.handler))
        .bind(text(|c| c.resolution.as_str()))
        .bind(text(|c| &c.reason))
        .bind(
            cs.iter()
                .map(|c| c.incoming.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            cs.iter()
                .map(|c| c.existing.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(cs.iter().map(|c| c.result.to_string()).collect::<Vec<_>>())
        .bind(cs.iter().map(|c| c.at_ms).collect::<Vec<_>>())
}

static MUTATIONS_INSERT: LazyLock<String> = LazyLock::new(|| mutations_insert(1, None).0);
static CONFLICTS_INSERT: LazyLock<String> = LazyLock::new(|| conflicts_insert(1, None).0);

/// Inserts history records inside the caller's transaction: one statement for
/// the mutations and one for the conflicts, however many (the history is
/// written on every mutation's path).
async fn insert_records(
    tx: &mut sqlx::PgConnection,
    mutations: &[&MutationRecord],
    conflicts: &[&ConflictRecord],
) -> Result<(), sqlx::Error> {
    if !mutations.is_empty() {
        bind_mutations(
            sqlx::query(sqlx::AssertSqlSafe(MUTATIONS_INSERT.as_str())),
            mutations,
        )
        .execute(&mut *tx)
        .await?;
    }
    if !conflicts.is_empty() {
        bind_conflicts(
            sqlx::query(sqlx::AssertSqlSafe(CONFLICTS_INSERT.as_str())),
            conflicts,
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
