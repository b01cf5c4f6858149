//! History in an embedded SQLite file (separate from the store's, so that
//! history writes never queue behind document writes for SQLite's one lock).

use super::{
    ConflictPage, ConflictQuery, History, HistoryError, collect_page, conflicts_select,
    mutation_from_row, sql, version_to_sql, writer_from_row,
};
use crate::model::{ConflictRecord, DocKey, MutationRecord};
use sqlx::sqlite::SqlitePool;
use std::path::{Path, PathBuf};

/// A batch of mutation records, from the array `mutation_json` makes.
const INSERT_MUTATIONS: &str = "INSERT INTO sluice_mutations (id, client, collection, key, op, \
     fields, base_version, version_before, version_after, outcome, conflict, score, ts_ms, \
     received_ms, decided_ms, queued_us, lane_waiting) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
     value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, \
     value ->> 12, value ->> 13, value ->> 14, value ->> 15, value ->> 16 \
     FROM json_each($1) ORDER BY key";

/// A batch of conflict records, from the array `conflict_json` makes.
const INSERT_CONFLICTS: &str = "INSERT INTO sluice_conflicts (mutation_id, client, collection, \
     key, base_version, server_version, handler, resolution, reason, incoming, existing, \
     result, at_ms) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
     value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, \
     value ->> 12 \
     FROM json_each($1) ORDER BY key";

fn mutation_json(m: &MutationRecord) -> serde_json::Value {
    serde_json::json!([
        m.id,
        m.client,
        m.doc.collection,
        m.doc.key,
        m.op.as_str(),
        serde_json::to_string(&m.fields).unwrap_or_else(|_| "[]".into()),
        m.base_version.map(version_to_sql),
        version_to_sql(m.version_before),
        version_to_sql(m.version_after),
        m.outcome.as_str(),
        i64::from(m.conflict),
        m.score,
        m.ts_ms,
        m.received_ms,
        m.decided_ms,
        version_to_sql(m.queued_us),
        version_to_sql(m.lane_waiting)
    ])
}

fn conflict_json(c: &ConflictRecord) -> serde_json::Value {
    serde_json::json!([
        c.mutation_id,
        c.client,
        c.doc.collection,
        c.doc.key,
        version_to_sql(c.base_version),
        version_to_sql(c.server_version),
        c.handler,
        c.resolution.as_str(),
        c.reason,
        c.incoming.to_string(),
        c.existing.to_string(),
        c.result.to_string(),
        c.at_ms
    ])
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sluice_mutations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        client TEXT NOT NULL,
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        op TEXT NOT NULL,
        fields TEXT NOT NULL,
        base_version INTEGER,
        version_before INTEGER NOT NULL,
        version_after INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        conflict INTEGER NOT NULL,
        score REAL,
        ts_ms INTEGER,
        received_ms INTEGER NOT NULL,
        decided_ms INTEGER NOT NULL,
        queued_us INTEGER NOT NULL,
        lane_waiting INTEGER NOT NULL DEFAULT 0
    )",
    "CREATE INDEX IF NOT EXISTS sluice_mutations_doc ON sluice_mutations (collection, key, seq)",
    // Indexes only where a query needs one: each costs every record a
    // write (and on PostgreSQL its WAL). Nothing looks records up by
    // (client, id) or by decision time; databases made before go without.
    "DROP INDEX IF EXISTS sluice_mutations_client",
    "DROP INDEX IF EXISTS sluice_mutations_decided",
    "CREATE TABLE IF NOT EXISTS sluice_conflicts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        mutation_id TEXT NOT NULL,
        client TEXT NOT NULL,
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        base_version INTEGER NOT NULL,
        server_version INTEGER NOT NULL,
        handler TEXT NOT NULL,
        resolution TEXT NOT NULL,
        reason TEXT NOT NULL,
        incoming TEXT,
        existing TEXT,
        result TEXT,
        at_ms INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS sluice_conflicts_doc ON sluice_conflicts (collection, key, seq)",
];

pub struct SqliteHistory {
    reader: SqlitePool,
    writer: SqlitePool,
    /// The file opened, and its identity then: a file deleted or replaced
    /// while open takes every later record with it (SQLite keeps writing
    /// the unlinked one).
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl SqliteHistory {
    pub async fn open(path: &Path) -> Result<Self, HistoryError> {
        let (reader, writer) = crate::db::open_sqlite(path).await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&writer).await?;
        }
        Ok(SqliteHistory {
            reader,
            writer,
            path: path.to_path_buf(),
            identity: identity(path),
        })
    }
}

#[async_trait::async_trait]
impl History for SqliteHistory {
    fn health(&self) -> Result<(), String> {
        match identity(&self.path) {
            None => Err(format!(
                "the history file {} is gone (deleted while open): records go to the deleted file and are lost",
                self.path.display()
            )),
            Some(now) if Some(now) != self.identity => Err(format!(
                "the history file {} was replaced while open: records go to the old file",
                self.path.display()
            )),
            Some(_) => Ok(()),
        }
    }

    /// One statement per kind of record, each reading its rows from one
    /// JSON array: sqlx runs every SQLite statement as a round trip to the
    /// connection's own thread, and row by row those hand-offs cost more
    /// than the inserts.
    async fn record(
        &self,
        mutations: &[MutationRecord],
        conflicts: &[ConflictRecord],
    ) -> Result<(), HistoryError> {
        let mutations = serde_json::Value::Array(mutations.iter().map(mutation_json).collect());
        let insert = sqlx::query(INSERT_MUTATIONS).bind(mutations.to_string());
        if conflicts.is_empty() {
            // One statement: atomic without a transaction around it.
            insert.execute(&self.writer).await?;
            return Ok(());
        }
        let conflicts = serde_json::Value::Array(conflicts.iter().map(conflict_json).collect());
        let mut tx = self.writer.begin().await?;
        insert.execute(&mut *tx).await?;
        sqlx::query(INSERT_CONFLICTS)
            .bind(conflicts.to_string())
            .execute(&mut *tx)
            .await?;
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
