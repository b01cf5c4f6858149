//! History in an embedded SQLite file (separate from the store's, so that
//! history writes never queue behind document writes for SQLite's one lock).

use super::{HistoryError, sql_history};
use crate::store::open_sqlite_pools;
use sqlx::sqlite::SqlitePool;
use std::path::Path;

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
    "CREATE INDEX IF NOT EXISTS sluice_mutations_client ON sluice_mutations (client, id)",
    "CREATE INDEX IF NOT EXISTS sluice_mutations_decided ON sluice_mutations (decided_ms)",
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
}

impl SqliteHistory {
    pub async fn open(path: &Path) -> Result<Self, HistoryError> {
        let (reader, writer) = open_sqlite_pools(path).await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&writer).await?;
        }
        Ok(SqliteHistory { reader, writer })
    }
}

sql_history!(SqliteHistory, record = record_rows);
