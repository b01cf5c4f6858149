//! Connections to Sluice's databases, shared by the store and the history
//! (which may live in one database): SQLite files with one writer and a
//! pool of readers, PostgreSQL pools with Sluice's session settings and its
//! schema created under a lock.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Readers in a SQLite pool; reads are short point lookups.
const SQLITE_READERS_MAX: u32 = 4;
/// How long a SQLite statement waits for a lock held by another process on
/// the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections Sluice opens to PostgreSQL: reads of the lanes in flight plus
/// the committer's one.
const CONNECTIONS_MAX: u32 = 16;
/// An arbitrary constant naming Sluice's schema lock.
const SCHEMA_LOCK_ID: i64 = 0x511CE;

/// Opens (creating when missing) a SQLite database for one of Sluice's files.
pub(crate) async fn open_sqlite(path: &Path) -> Result<(SqlitePool, SqlitePool), sqlx::Error> {
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
        .max_connections(SQLITE_READERS_MAX)
        .connect_with(options)
        .await?;
    Ok((reader, writer))
}

/// Connects and creates `schema` under Sluice's advisory lock.
///
/// Every statement Sluice sends to its own tables is a key lookup, an index
/// range or an insert, so its sessions plan with sequential scans disabled
/// (`enable_seqscan = off` only adds a penalty: a query with no index path
/// still runs) and keep the generic plan of each prepared statement
/// (`plan_cache_mode = force_generic_plan`). The tables start empty and grow
/// under load: a plan made while a table was empty preferred a sequential
/// scan and stayed cached for the connection's life, and then every lookup
/// read the whole table — 8.4 of every 10 seconds of PostgreSQL's time went to
/// the resend check alone. Planning every execution instead (custom plans)
/// fixed that but cost a third of PostgreSQL's time in planning.
pub(crate) async fn connect_postgres(
    url: &str,
    schema: &[&'static str],
) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.options([
        ("enable_seqscan", "off"),
        ("plan_cache_mode", "force_generic_plan"),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(CONNECTIONS_MAX)
        .connect_with(options)
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

/// A `WHERE` clause of equalities for the columns given a value, numbered
/// `$1`… in order (both dialects take `$N`), with `extra` conditions that
/// bind nothing; and the values to bind.
pub(crate) fn where_equal<'a>(
    columns: &[(&str, Option<&'a str>)],
    extra: &[String],
) -> (String, Vec<&'a str>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    for (column, value) in columns {
        if let Some(value) = value {
            values.push(*value);
            clauses.push(format!("{column} = ${}", values.len()));
        }
    }
    clauses.extend(extra.iter().cloned());
    let clause = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (clause, values)
}
