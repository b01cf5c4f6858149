//! The production store: PostgreSQL. Items are `json` (not `jsonb`) so that a
//! document keeps its fields in the order the client wrote them.
//!
//! Schema creation takes a transaction-scoped advisory lock, so several Sluice
//! processes starting against one database do not race each other's DDL.

use super::{
    Accepted, COLLECTION_CHANGES_KEPT, CollectionChange, CommitOutcome, EVENTS_KEPT_MIN, KeyRecord,
    LaneCommit, LockedDoc, QuarantineQuery, Quarantined, Store, StoreError, StoredReply,
    accepted_from_row, change_from_row, collection_from_row, decode_item, event_from_row, from_sql,
    key_from_row, quarantine_select, quarantined_from_row, reply_from_row, sql,
    sql_collection_methods, to_sql,
};
use crate::model::{DocKey, Document};
use commit::commit_statement;
use sqlx::Row;
use sqlx::postgres::PgPool;
use std::collections::HashSet;

mod commit;

/// PostgreSQL's statements where its dialect differs from SQLite's: items
/// are `json`, read back as text; rows are numbered by `seq`.
const SELECT_DOCUMENT: &str =
    "SELECT version, item::text AS item FROM sluice_documents WHERE collection = $1 AND key = $2";
/// A lane's read under pre-emptive locking: the row stays locked until the
/// lane's commit in the same transaction.
const LOCK_DOCUMENT: &str = "SELECT version, item::text AS item FROM sluice_documents \
     WHERE collection = $1 AND key = $2 FOR UPDATE";
const EXPIRE_REPLIES: &str = "DELETE FROM sluice_replies WHERE at_ms < $1 \
     AND seq <= (SELECT COALESCE(MAX(seq), 0) FROM sluice_replies) - $2";
/// Staged mutations oldest first, of one collection (`$1`) or all (null).
const STAGED_LIST: &str = "SELECT client, id, fingerprint, mutation, score, at_ms \
     FROM sluice_staged WHERE ($1 IS NULL OR collection = $1) ORDER BY seq LIMIT $2";
const PENDING_ACCEPTED: &str = "SELECT client, id, fingerprint, mutation, score, at_ms \
     FROM sluice_accepted ORDER BY seq";
const EVENTS_AFTER: &str = "SELECT seq, body FROM sluice_replies \
     WHERE client = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// Takes the partition's row lock, so it waits for the commits that hold
/// it shared (`COMMIT_SQL`'s `fence`) to finish.
const RAISE_FENCE: &str = "INSERT INTO sluice_partitions (partition, epoch) VALUES ($1, $2) \
     ON CONFLICT (partition) DO UPDATE SET epoch = GREATEST(sluice_partitions.epoch, excluded.epoch) \
     RETURNING epoch";

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
    // Replies arrive in time order, so a block-range index finds the
    // expired ones: it keeps a summary per range of blocks, mostly left to
    // vacuum, where a B-tree takes an entry (and its WAL) per reply.
    "DROP INDEX IF EXISTS sluice_replies_at",
    "CREATE INDEX IF NOT EXISTS sluice_replies_at_brin ON sluice_replies USING brin (at_ms)",
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
    // Shadow writes wait here, beside the live documents, until the
    // validator promotes them (or they expire).
    "CREATE TABLE IF NOT EXISTS sluice_staged (
        seq BIGSERIAL,
        client TEXT NOT NULL,
        id TEXT NOT NULL,
        fingerprint BIGINT NOT NULL,
        collection TEXT NOT NULL,
        mutation TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (client, id)
    )",
    "CREATE INDEX IF NOT EXISTS sluice_staged_seq ON sluice_staged (seq)",
    "CREATE TABLE IF NOT EXISTS sluice_quarantine (
        client TEXT NOT NULL,
        id TEXT NOT NULL,
        fingerprint BIGINT NOT NULL,
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        mutation TEXT NOT NULL,
        reason TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (client, id)
    )",
    "CREATE INDEX IF NOT EXISTS sluice_quarantine_at ON sluice_quarantine (at_ms)",
    "CREATE TABLE IF NOT EXISTS sluice_collections (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        updated_ms BIGINT NOT NULL
    )",
    sql::PARTITIONS_TABLE,
    sql::SECRETS_TABLE,
    sql::KEYS_TABLE,
    "CREATE TABLE IF NOT EXISTS sluice_collection_changes (
        seq BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        config TEXT NOT NULL,
        by_client TEXT,
        by_role TEXT,
        at_ms BIGINT NOT NULL
    )",
    sql::CHANGES_INDEX,
];

pub struct PostgresStore {
    reader: PgPool,
    writer: PgPool,
    /// The history lives in this database: commits write it (see
    /// `connect_with_history`).
    history: bool,
}

impl PostgresStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = crate::db::connect_postgres(url, SCHEMA).await?;
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
        let pool = crate::db::connect_postgres(url, &schema).await?;
        Ok(PostgresStore {
            reader: pool.clone(),
            writer: pool,
            history: true,
        })
    }
}

sql_collection_methods!(PostgresStore);

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn get(&self, doc: &DocKey) -> Result<Document, StoreError> {
        let row = sqlx::query(SELECT_DOCUMENT)
            .bind(&doc.collection)
            .bind(&doc.key)
            .fetch_optional(&self.reader)
            .await?;
        match row {
            None => Ok(Document::absent()),
            Some(row) => decode_item(row.try_get("version")?, row.try_get("item")?),
        }
    }

    async fn commit(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        self.commit_unnest(batch).await
    }

    async fn lock(&self, doc: &DocKey) -> Result<Option<Box<dyn LockedDoc>>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query(LOCK_DOCUMENT)
            .bind(&doc.collection)
            .bind(&doc.key)
            .fetch_optional(&mut *tx)
            .await?;
        let document = match row {
            None => Document::absent(),
            Some(row) => decode_item(row.try_get("version")?, row.try_get("item")?)?,
        };
        Ok(Some(Box::new(PgLocked {
            tx,
            document,
            history: self.history,
        })))
    }

    fn writes_history(&self) -> bool {
        self.history
    }

    fn batches_reads(&self) -> bool {
        true
    }

    async fn read_many(
        &self,
        docs: &[DocKey],
        replies: &[(String, String)],
    ) -> Result<(Vec<Document>, Vec<Option<StoredReply>>), StoreError> {
        self.read_unnest(docs, replies).await
    }

    async fn reply(&self, client: &str, id: &str) -> Result<Option<StoredReply>, StoreError> {
        let row = sqlx::query(sql::SELECT_REPLY)
            .bind(client)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|row| reply_from_row(&row, client, id)).transpose()
    }

    async fn raise_fence(&self, partition: u32, epoch: u64) -> Result<u64, StoreError> {
        let fence: i64 = sqlx::query_scalar(RAISE_FENCE)
            .bind(i64::from(partition))
            .bind(to_sql(epoch))
            .fetch_one(&self.writer)
            .await?;
        Ok(from_sql(fence))
    }

    async fn expire_replies(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(EXPIRE_REPLIES)
            .bind(before_ms)
            .bind(EVENTS_KEPT_MIN)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn accept(&self, entry: &Accepted) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::INSERT_ACCEPTED)
            .bind(&entry.client)
            .bind(&entry.id)
            .bind(to_sql(entry.fingerprint))
            .bind(&entry.mutation)
            .bind(entry.score)
            .bind(entry.at_ms)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn unaccept(&self, client: &str, id: &str) -> Result<(), StoreError> {
        sqlx::query(sql::DELETE_ACCEPTED)
            .bind(client)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn accepted(&self, client: &str, id: &str) -> Result<Option<Accepted>, StoreError> {
        let row = sqlx::query(sql::SELECT_ACCEPTED)
            .bind(client)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| accepted_from_row(&r)).transpose()
    }

    async fn pending_accepted(&self) -> Result<Vec<Accepted>, StoreError> {
        let rows = sqlx::query(PENDING_ACCEPTED)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(accepted_from_row).collect()
    }

    async fn stage(&self, entry: &Accepted, collection: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::INSERT_STAGED)
            .bind(&entry.client)
            .bind(&entry.id)
            .bind(to_sql(entry.fingerprint))
            .bind(collection)
            .bind(&entry.mutation)
            .bind(entry.score)
            .bind(entry.at_ms)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn unstage(&self, client: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::DELETE_STAGED)
            .bind(client)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn staged(&self, client: &str, id: &str) -> Result<Option<Accepted>, StoreError> {
        let row = sqlx::query(sql::SELECT_STAGED)
            .bind(client)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| accepted_from_row(&r)).transpose()
    }

    async fn staged_list(
        &self,
        collection: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Accepted>, StoreError> {
        let rows = sqlx::query(STAGED_LIST)
            .bind(collection)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(accepted_from_row).collect()
    }

    async fn events_after(
        &self,
        client: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(EVENTS_AFTER)
            .bind(client)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn events_head(&self, client: &str) -> Result<i64, StoreError> {
        let head: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0)::BIGINT FROM sluice_replies WHERE client = $1",
        )
        .bind(client)
        .fetch_one(&self.reader)
        .await?;
        Ok(head)
    }

    async fn secret(
        &self,
        name: &str,
        make: &(dyn Fn() -> String + Sync),
    ) -> Result<String, StoreError> {
        sqlx::query(sql::INSERT_SECRET)
            .bind(name)
            .bind(make())
            .execute(&self.writer)
            .await?;
        // Read from the writer: the row just written, or the one another
        // process wrote first.
        let value: String = sqlx::query_scalar(sql::SELECT_SECRET)
            .bind(name)
            .fetch_one(&self.writer)
            .await?;
        Ok(value)
    }

    async fn collections(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(sql::SELECT_COLLECTIONS)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(collection_from_row).collect()
    }

    async fn put_collection(
        &self,
        config_json: &str,
        change: &CollectionChange,
    ) -> Result<(), StoreError> {
        self.put_collection_rows(config_json, change).await
    }

    async fn collection_changes(
        &self,
        collection: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<CollectionChange>, StoreError> {
        self.collection_change_rows(collection, before, limit).await
    }

    async fn quarantined(&self, client: &str, id: &str) -> Result<Option<Quarantined>, StoreError> {
        let row = sqlx::query(sql::SELECT_QUARANTINED)
            .bind(client)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| quarantined_from_row(&r)).transpose()
    }

    async fn quarantine_list(
        &self,
        query: &QuarantineQuery,
    ) -> Result<Vec<Quarantined>, StoreError> {
        let (statement, values) = quarantine_select(query);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(statement));
        for value in values {
            q = q.bind(value);
        }
        let rows = q.fetch_all(&self.reader).await?;
        rows.iter().map(quarantined_from_row).collect()
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_KEY)
            .bind(&key.id)
            .bind(&key.client)
            .bind(&key.role)
            .bind(&key.hash)
            .bind(key.created_ms)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        // From the writer: a key made a moment ago by `sluice keys` must be
        // found, and a revocation seen, without a replica's lag.
        let row = sqlx::query(sql::SELECT_KEY)
            .bind(id)
            .fetch_optional(&self.writer)
            .await?;
        row.map(|r| key_from_row(&r)).transpose()
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(sql::SELECT_KEYS)
            .fetch_all(&self.writer)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::REVOKE_KEY)
            .bind(id)
            .bind(at_ms)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

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
            found_replies[i] = Some(reply_from_row(&row, &replies[i].0, &replies[i].1)?);
        }
        Ok((found_docs, found_replies))
    }

    /// The batch in one statement, so in one round trip and its own
    /// transaction (`commit_statement`). Two lanes of one document (the
    /// engine never sends them; the order between them matters) go in
    /// successive runs of distinct documents, inside one transaction.
    async fn commit_unnest(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut runs = Vec::new();
        let mut start = 0;
        while start < batch.len() {
            let mut seen: HashSet<&DocKey> = HashSet::new();
            let end = start
                + batch[start..]
                    .iter()
                    .take_while(|lane| seen.insert(&lane.doc))
                    .count();
            runs.push(&batch[start..end]);
            start = end;
        }
        if let [only] = runs.as_slice() {
            let mut conn = self.writer.acquire().await?;
            return commit_statement(&mut conn, only, self.history).await;
        }
        let mut tx = self.writer.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for run in runs {
            outcomes.extend(commit_statement(&mut tx, run, self.history).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// A lane's document locked with `SELECT … FOR UPDATE`, in the
/// transaction its commit runs in.
struct PgLocked {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    document: Document,
    history: bool,
}

#[async_trait::async_trait]
impl LockedDoc for PgLocked {
    fn document(&self) -> &Document {
        &self.document
    }

    async fn commit(mut self: Box<Self>, lane: &LaneCommit) -> Result<CommitOutcome, StoreError> {
        let outcomes =
            commit_statement(&mut self.tx, std::slice::from_ref(lane), self.history).await?;
        self.tx.commit().await?;
        outcomes
            .first()
            .copied()
            .ok_or_else(|| StoreError::Corrupt("a locked lane's commit returned no row".into()))
    }
}
