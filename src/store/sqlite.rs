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

impl SqliteStore {
    /// The batch statement by statement: round trips cost little in
    /// process (PostgreSQL commits a batch in one statement instead).
    async fn commit_rows(
        &self,
        batch: &[crate::store::LaneCommit],
    ) -> Result<Vec<crate::store::CommitOutcome>, crate::store::StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        'lanes: for lane in batch {
            for reply in &lane.replies {
                let stored: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM sluice_replies WHERE client = $1 AND id = $2",
                )
                .bind(&reply.client)
                .bind(&reply.id)
                .fetch_optional(&mut *tx)
                .await?;
                if stored.is_some() {
                    outcomes.push(crate::store::CommitOutcome::Resent);
                    continue 'lanes;
                }
            }
            if let Some(write) = &lane.write {
                let written = if lane.expected_version == 0 {
                    sqlx::query(
                                "INSERT INTO sluice_documents (collection, key, version, item, updated_ms)
                                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (collection, key) DO NOTHING",
                            )
                            .bind(&lane.doc.collection)
                            .bind(&lane.doc.key)
                            .bind(crate::store::to_sql(write.version))
                            .bind(crate::store::encode_item(write))
                            .bind(lane.at_ms)
                            .execute(&mut *tx)
                            .await?
                } else {
                    sqlx::query(
                        "UPDATE sluice_documents SET version = $3, item = $4, updated_ms = $5
                                 WHERE collection = $1 AND key = $2 AND version = $6",
                    )
                    .bind(&lane.doc.collection)
                    .bind(&lane.doc.key)
                    .bind(crate::store::to_sql(write.version))
                    .bind(crate::store::encode_item(write))
                    .bind(lane.at_ms)
                    .bind(crate::store::to_sql(lane.expected_version))
                    .execute(&mut *tx)
                    .await?
                };
                if written.rows_affected() != 1 {
                    outcomes.push(crate::store::CommitOutcome::Stale);
                    continue;
                }
            } else {
                let version: Option<i64> = sqlx::query_scalar(
                    "SELECT version FROM sluice_documents WHERE collection = $1 AND key = $2",
                )
                .bind(&lane.doc.collection)
                .bind(&lane.doc.key)
                .fetch_optional(&mut *tx)
                .await?;
                if version.map_or(0, crate::store::from_sql) != lane.expected_version {
                    outcomes.push(crate::store::CommitOutcome::Stale);
                    continue;
                }
            }
            for reply in &lane.replies {
                sqlx::query(
                    "INSERT INTO sluice_replies (client, id, fingerprint, status, body, at_ms)
                             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (client, id) DO NOTHING",
                )
                .bind(&reply.client)
                .bind(&reply.id)
                .bind(crate::store::to_sql(reply.fingerprint))
                .bind(i64::from(reply.status))
                .bind(&reply.body)
                .bind(reply.at_ms)
                .execute(&mut *tx)
                .await?;
                if reply.was_accepted {
                    sqlx::query("DELETE FROM sluice_accepted WHERE client = $1 AND id = $2")
                        .bind(&reply.client)
                        .bind(&reply.id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            outcomes.push(crate::store::CommitOutcome::Committed);
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}
