//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through a pool of exactly one connection, so transactions never
//! race each other for SQLite's single write lock (and group commit makes one
//! transaction carry many lanes). Reads use a separate pool and, thanks to WAL,
//! never wait for the writer. `synchronous = FULL`: a committed transaction
//! survives power loss, which is what "acknowledged" promises.

use super::{StoreError, sql_store};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::time::Duration;

/// Readers in the pool; reads are short point lookups.
const READ_CONNECTIONS_MAX: u32 = 4;
/// How long a statement waits for a lock held by another process on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sluice_documents (
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER NOT NULL,
        item TEXT,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (collection, key)
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS sluice_replies (
        client TEXT NOT NULL,
        id TEXT NOT NULL,
        fingerprint INTEGER NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (client, id)
    )",
    "CREATE INDEX IF NOT EXISTS sluice_replies_at ON sluice_replies (at_ms)",
    // No index of its own for the event stream: it finds a client's replies
    // through the primary key's (client, id) prefix. An index on client costs
    // every commit random page writes (about 15% of replay throughput,
    // measured), while streams are few and poll at most every 50 ms.
    "CREATE TABLE IF NOT EXISTS sluice_accepted (
        client TEXT NOT NULL,
        id TEXT NOT NULL,
        fingerprint INTEGER NOT NULL,
        mutation TEXT NOT NULL,
        score REAL NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (client, id)
    )",
    "CREATE TABLE IF NOT EXISTS sluice_collections (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    )",
];

pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
}

/// Opens (creating when missing) a SQLite database for one of Sluice's files.
pub(crate) async fn open_pools(path: &Path) -> Result<(SqlitePool, SqlitePool), sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(false);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(READ_CONNECTIONS_MAX)
        .connect_with(options)
        .await?;
    Ok((reader, writer))
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let (reader, writer) = open_pools(path).await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&writer).await?;
        }
        Ok(SqliteStore { reader, writer })
    }
}

sql_store!(
    SqliteStore,
    item_param = "$4",
    item_select = "item",
    seq = "rowid",
    accept_seq = "rowid",
    commit = commit_rows
);
