//! The production store: PostgreSQL. Items are `json` (not `jsonb`) so that a
//! document keeps its fields in the order the client wrote them.
//!
//! Schema creation takes a transaction-scoped advisory lock, so several Sluice
//! processes starting against one database do not race each other's DDL.

use super::{
    CommitOutcome, LaneCommit, StoreError, StoredReply, decode_item, encode_item, from_sql,
    sql_store, to_sql,
};
use crate::history::MutationRecord;
use crate::model::{DocKey, Document};
use crate::resolve::ConflictRecord;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::collections::HashSet;
use std::str::FromStr;

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
    /// The history lives in this database: commits write it (see
    /// `connect_with_history`).
    history: bool,
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
pub(crate) async fn connect(url: &str, schema: &[&'static str]) -> Result<PgPool, sqlx::Error> {
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

impl PostgresStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = connect(url, SCHEMA).await?;
        Ok(PostgresStore {
            reader: pool.clone(),
            writer: pool,
            history: false,
        })
    }

    /// A store whose database also holds the history: each commit writes its
    /// lanes' history records in the same transaction. A decided mutation's
    /// record is then never missing (not even after a crash between the two
    /// writes), and a batch costs one transaction, not two.
    pub async fn connect_with_history(url: &str) -> Result<Self, StoreError> {
        let schema: Vec<&'static str> = SCHEMA
            .iter()
            .chain(crate::history::POSTGRES_SCHEMA)
            .copied()
            .collect();
        let pool = connect(url, &schema).await?;
        Ok(PostgresStore {
            reader: pool.clone(),
            writer: pool,
            history: true,
        })
    }
}

sql_store!(
    PostgresStore,
    item_param = "$4::json",
    item_select = "item::text AS item",
    seq = "seq",
    accept_seq = "seq",
    commit = commit_unnest,
    extra = {
        fn batches_reads(&self) -> bool {
            true
        }

        fn writes_history(&self) -> bool {
            self.history
        }

        async fn read_many(
            &self,
            docs: &[DocKey],
            replies: &[(String, String)],
        ) -> Result<(Vec<Document>, Vec<Option<StoredReply>>), StoreError> {
            self.read_unnest(docs, replies).await
        }
    }
);

/// The 0-based position in the request of a row numbered `n` by
/// `UNNEST … WITH ORDINALITY`.
fn ordinal(row: &sqlx::postgres::PgRow, len: usize) -> Result<usize, StoreError> {
    let n: i64 = row.try_get("n")?;
    usize::try_from(n - 1)
        .ok()
        .filter(|i| *i < len)
        .ok_or_else(|| StoreError::Corrupt(format!("row number {n} out of range")))
}

impl PostgresStore {
    /// Documents and stored replies in one statement: a read batch is one
    /// round trip whatever its mix. Rows say which request they answer by
    /// `kind` (0 a document, 1 a reply) and their ordinal in its list.
    async fn read_unnest(
        &self,
        docs: &[DocKey],
        replies: &[(String, String)],
    ) -> Result<(Vec<Document>, Vec<Option<StoredReply>>), StoreError> {
        let rows = sqlx::query(
            "SELECT 0 AS kind, u.n, d.version, d.item::text AS item,
                    NULL::BIGINT AS fingerprint, NULL::BIGINT AS status, NULL::TEXT AS body, NULL::BIGINT AS at_ms
             FROM UNNEST($1::TEXT[], $2::TEXT[]) WITH ORDINALITY AS u(collection, key, n)
             JOIN sluice_documents d ON d.collection = u.collection AND d.key = u.key
             UNION ALL
             SELECT 1, u.n, NULL, NULL, r.fingerprint, r.status, r.body, r.at_ms
             FROM UNNEST($3::TEXT[], $4::TEXT[]) WITH ORDINALITY AS u(client, id, n)
             JOIN sluice_replies r ON r.client = u.client AND r.id = u.id",
        )
        .bind(
            docs.iter()
                .map(|d| d.collection.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(docs.iter().map(|d| d.key.as_str()).collect::<Vec<_>>())
        .bind(replies.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())
        .bind(replies.iter().map(|(_, i)| i.as_str()).collect::<Vec<_>>())
        .fetch_all(&self.reader)
        .await?;
        let mut found_docs = vec![Document::absent(); docs.len()];
        let mut found_replies: Vec<Option<StoredReply>> = vec![None; replies.len()];
        for row in rows {
            let kind: i32 = row.try_get("kind")?;
            if kind == 0 {
                let i = ordinal(&row, docs.len())?;
                found_docs[i] = decode_item(row.try_get("version")?, row.try_get("item")?)?;
                continue;
            }
            let i = ordinal(&row, replies.len())?;
            let status: i64 = row.try_get("status")?;
            found_replies[i] = Some(StoredReply {
                client: replies[i].0.clone(),
                id: replies[i].1.clone(),
                fingerprint: from_sql(row.try_get("fingerprint")?),
                status: u16::try_from(status)
                    .map_err(|_| StoreError::Corrupt(format!("reply status {status}")))?,
                body: row.try_get("body")?,
                at_ms: row.try_get("at_ms")?,
                was_accepted: false,
            });
        }
        Ok((found_docs, found_replies))
    }

    /// The batch in one transaction: its lanes in a fixed number of
    /// statements whatever their number (`commit_distinct`), then, when the
    /// history lives here, the committed lanes' records. Two lanes of one
    /// document (the engine never sends them; the order between them
    /// matters) go in successive runs of distinct documents.
    async fn commit_unnest(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            let mut seen: HashSet<&DocKey> = HashSet::new();
            let end = start
                + batch[start..]
                    .iter()
                    .take_while(|lane| seen.insert(&lane.doc))
                    .count();
            outcomes.extend(self.commit_distinct(&mut tx, &batch[start..end]).await?);
            start = end;
        }
        if self.history {
            let committed = || {
                batch
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, outcome)| **outcome == CommitOutcome::Committed)
                    .map(|(lane, _)| &lane.history)
            };
            let mutations: Vec<&MutationRecord> =
                committed().flat_map(|h| h.mutations.iter()).collect();
            let conflicts: Vec<&ConflictRecord> =
                committed().flat_map(|h| h.conflicts.iter()).collect();
            crate::history::insert_postgres_records(&mut tx, &mutations, &conflicts).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Lanes of distinct documents: lock their rows in key order (two Sluice
    /// processes cannot deadlock) and read their versions, then one
    /// statement each for updates, inserts, replies and accept-log entries.
    /// Round trips, not rows, are what a commit costs here.
    async fn commit_distinct(
        &self,
        tx: &mut sqlx::PgConnection,
        batch: &[LaneCommit],
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let collections: Vec<&str> = batch.iter().map(|l| l.doc.collection.as_str()).collect();
        let names: Vec<&str> = batch.iter().map(|l| l.doc.key.as_str()).collect();
        let rows = sqlx::query(
            "SELECT u.n, d.version FROM sluice_documents d
             JOIN UNNEST($1::TEXT[], $2::TEXT[]) WITH ORDINALITY AS u(collection, key, n)
               ON d.collection = u.collection AND d.key = u.key
             ORDER BY d.collection, d.key FOR UPDATE OF d",
        )
        .bind(&collections)
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
        // Each lane's current version, by its position in the batch (0: absent).
        let mut current = vec![0u64; batch.len()];
        for row in rows {
            current[ordinal(&row, batch.len())?] = from_sql(row.try_get("version")?);
        }
        let mut outcomes: Vec<CommitOutcome> = batch
            .iter()
            .zip(&current)
            .map(|(lane, version)| {
                if *version == lane.expected_version {
                    CommitOutcome::Committed
                } else {
                    CommitOutcome::Stale
                }
            })
            .collect();

        // Rows that exist are locked and current: every update sticks.
        let updates: Vec<(&LaneCommit, &Document)> = batch
            .iter()
            .zip(&outcomes)
            .filter(|(lane, outcome)| {
                **outcome == CommitOutcome::Committed && lane.expected_version > 0
            })
            .filter_map(|(lane, _)| lane.write.as_ref().map(|w| (lane, w)))
            .collect();
        if !updates.is_empty() {
            sqlx::query(
                "UPDATE sluice_documents d
                 SET version = u.version, item = u.item::json, updated_ms = u.at_ms
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[])
                   AS u(collection, key, version, item, at_ms)
                 WHERE d.collection = u.collection AND d.key = u.key",
            )
            .bind(
                updates
                    .iter()
                    .map(|(l, _)| l.doc.collection.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                updates
                    .iter()
                    .map(|(l, _)| l.doc.key.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                updates
                    .iter()
                    .map(|(_, w)| to_sql(w.version))
                    .collect::<Vec<_>>(),
            )
            .bind(
                updates
                    .iter()
                    .map(|(_, w)| encode_item(w))
                    .collect::<Vec<_>>(),
            )
            .bind(updates.iter().map(|(l, _)| l.at_ms).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        // Absent rows have nothing to lock: an insert can lose to a
        // concurrent one, and then its lane is stale.
        let inserts: Vec<(usize, &Document)> = batch
            .iter()
            .enumerate()
            .filter(|(i, lane)| {
                outcomes[*i] == CommitOutcome::Committed && lane.expected_version == 0
            })
            .filter_map(|(i, lane)| lane.write.as_ref().map(|w| (i, w)))
            .collect();
        if !inserts.is_empty() {
            let inserted = sqlx::query(
                "INSERT INTO sluice_documents (collection, key, version, item, updated_ms)
                 SELECT u.collection, u.key, u.version, u.item::json, u.at_ms
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[])
                   AS u(collection, key, version, item, at_ms)
                 ON CONFLICT (collection, key) DO NOTHING
                 RETURNING collection, key",
            )
            .bind(
                inserts
                    .iter()
                    .map(|(i, _)| batch[*i].doc.collection.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                inserts
                    .iter()
                    .map(|(i, _)| batch[*i].doc.key.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                inserts
                    .iter()
                    .map(|(_, w)| to_sql(w.version))
                    .collect::<Vec<_>>(),
            )
            .bind(
                inserts
                    .iter()
                    .map(|(_, w)| encode_item(w))
                    .collect::<Vec<_>>(),
            )
            .bind(
                inserts
                    .iter()
                    .map(|(i, _)| batch[*i].at_ms)
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await?;
            let mut won: HashSet<DocKey> = HashSet::with_capacity(inserted.len());
            for row in inserted {
                won.insert(DocKey::new(
                    row.try_get::<String, _>("collection")?,
                    row.try_get::<String, _>("key")?,
                ));
            }
            for (i, _) in &inserts {
                if !won.contains(&batch[*i].doc) {
                    outcomes[*i] = CommitOutcome::Stale;
                }
            }
        }
        let replies: Vec<&StoredReply> = batch
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == CommitOutcome::Committed)
            .flat_map(|(lane, _)| &lane.replies)
            .collect();
        if !replies.is_empty() {
            // Ordered by the batch, so event numbers follow decision order.
            sqlx::query(
                "INSERT INTO sluice_replies (client, id, fingerprint, status, body, at_ms)
                 SELECT client, id, fingerprint, status, body, at_ms
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[], $6::BIGINT[])
                 WITH ORDINALITY AS u(client, id, fingerprint, status, body, at_ms, n)
                 ORDER BY n
                 ON CONFLICT (client, id) DO NOTHING",
            )
            .bind(replies.iter().map(|r| r.client.as_str()).collect::<Vec<_>>())
            .bind(replies.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
            .bind(replies.iter().map(|r| to_sql(r.fingerprint)).collect::<Vec<_>>())
            .bind(replies.iter().map(|r| i64::from(r.status)).collect::<Vec<_>>())
            .bind(replies.iter().map(|r| r.body.as_str()).collect::<Vec<_>>())
            .bind(replies.iter().map(|r| r.at_ms).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            let accepted: Vec<&&StoredReply> = replies.iter().filter(|r| r.was_accepted).collect();
            if !accepted.is_empty() {
                sqlx::query(
                    "DELETE FROM sluice_accepted a USING UNNEST($1::TEXT[], $2::TEXT[]) AS u(client, id)
                     WHERE a.client = u.client AND a.id = u.id",
                )
                .bind(accepted.iter().map(|r| r.client.as_str()).collect::<Vec<_>>())
                .bind(accepted.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(outcomes)
    }
}
