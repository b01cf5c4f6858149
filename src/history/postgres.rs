//! History in PostgreSQL. Column types are chosen so that rows decode to the
//! same Rust types as SQLite's (`BIGINT` for flags and versions, `TEXT` for
//! JSON), which lets both backends share one implementation.

use super::{HistoryError, sql_history};
use crate::store::connect_postgres;
use sqlx::postgres::PgPool;

const SCHEMA: &[&str] = &[
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
    "CREATE INDEX IF NOT EXISTS sluice_mutations_client ON sluice_mutations (client, id)",
    "CREATE INDEX IF NOT EXISTS sluice_mutations_decided ON sluice_mutations (decided_ms)",
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
        let pool = connect_postgres(url, SCHEMA).await?;
        Ok(PostgresHistory {
            reader: pool.clone(),
            writer: pool,
        })
    }
}

sql_history!(PostgresHistory);
