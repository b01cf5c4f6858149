//! The production store: PostgreSQL. Items are `json` (not `jsonb`) so that a
//! document keeps its fields in the order the client wrote them.
//!
//! Schema creation takes a transaction-scoped advisory lock, so several Sluice
//! processes starting against one database do not race each other's DDL.

use super::{StoreError, sql_store};
use sqlx::postgres::{PgPool, PgPoolOptions};

/// Connections Sluice opens to PostgreSQL: reads of the lanes in flight plus
/// the committer's one.
const CONNECTIONS_MAX: u32 = 16;
/// An arbitrary constant naming Sluice's schema lock.
const SCHEMA_LOCK_ID: i64 = 0x511CE;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sluice_documents (
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        version BIGINT NOT NULL,
        item JSON,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (collection, key)
    )",
    "CREATE TABLE IF NOT EXISTS sluice_replies (
        seq BIGSERIAL,
        client TEXT NOT NULL,
        id TEXT NOT NULL,
        fingerprint BIGINT NOT NULL,
        status BIGINT NOT NULL,
        body TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (client, id)
    )",
    "CREATE INDEX IF NOT EXISTS sluice_replies_at ON sluice_replies (at_ms)",
    "CREATE INDEX IF NOT EXISTS sluice_replies_client ON sluice_replies (client, seq)",
    "CREATE TABLE IF NOT EXISTS sluice_accepted (
        seq BIGSERIAL,
        client TEXT NOT NULL,
        id TEXT NOT NULL,
        fingerprint BIGINT NOT NULL,
        mutation TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (client, id)
    )",
    "CREATE TABLE IF NOT EXISTS sluice_collections (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        updated_ms BIGINT NOT NULL
    )",
];

pub struct PostgresStore {
    reader: PgPool,
    writer: PgPool,
}

/// Connects and creates `schema` under Sluice's advisory lock.
pub(crate) async fn connect(url: &str, schema: &[&'static str]) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(CONNECTIONS_MAX)
        .connect(url)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK_ID)
        .execute(&mut *tx)
        .await?;
    for statement in schema {
        sqlx::query(*statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(pool)
}

impl PostgresStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = connect(url, SCHEMA).await?;
        Ok(PostgresStore {
            reader: pool.clone(),
            writer: pool,
        })
    }
}

sql_store!(
    PostgresStore,
    item_param = "$4::json",
    item_select = "item::text AS item",
    seq = "seq",
    accept_seq = "seq"
);
