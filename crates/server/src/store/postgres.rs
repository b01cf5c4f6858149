//! The production store: PostgreSQL. Items are `json` (not `jsonb`) so that a
//! document keeps its fields in the order the client wrote them.
//!
//! Schema creation takes a transaction-scoped advisory lock, so several Sluice
//! processes starting against one database do not race each other's DDL.

use super::{
    Accepted, COLLECTION_CHANGES_KEPT, CollectionChange, CommitOutcome, EVENTS_KEPT_MIN, KeyRecord,
    LaneCommit, LockedDoc, QuarantineQuery, Quarantined, Store, StoreError, StoredReply,
    accepted_from_row, change_from_row, collection_from_row, decode_item, encode_item,
    event_from_row, from_sql, key_from_row, quarantine_select, quarantined_from_row,
    reply_from_row, sql, sql_collection_methods, to_sql,
};
use crate::history::PgQuery;
use crate::model::{DocKey, Document};
use sqlx::Row;
use sqlx::postgres::PgPool;
use std::collections::HashSet;
use std::sync::LazyLock;

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

/// Lanes of distinct documents in one statement (see `COMMIT_SQL`):
/// their rows locked in key order (two Sluice processes cannot
/// deadlock), each lane committed only if its document still has the
/// expected version, and with it its replies, its accept-log deletions
/// and, when the history lives here, its history records. Round trips,
/// not rows, are what a commit costs here: this is one.
async fn commit_statement(
    conn: &mut sqlx::PgConnection,
    batch: &[LaneCommit],
    history: bool,
) -> Result<Vec<CommitOutcome>, StoreError> {
    // Lanes are numbered from 1 (`WITH ORDINALITY`); replies and records
    // name their lane.
    let lane_of = |i: usize| i64::try_from(i + 1).unwrap_or(i64::MAX);
    let writes: Vec<Option<&Document>> = batch.iter().map(|l| l.write.as_ref()).collect();
    let replies: Vec<(i64, &StoredReply)> = batch
        .iter()
        .enumerate()
        .flat_map(|(i, lane)| lane.replies.iter().map(move |r| (lane_of(i), r)))
        .collect();
    let kept: Vec<(i64, &Quarantined)> = batch
        .iter()
        .enumerate()
        .flat_map(|(i, lane)| lane.quarantine.iter().map(move |q| (lane_of(i), q)))
        .collect();
    // Accept-log entries leave with their final reply, or with their
    // mutation into the quarantine.
    let accepted: Vec<(i64, &str, &str)> = replies
        .iter()
        .filter(|(_, r)| r.was_accepted)
        .map(|(lane, r)| (*lane, r.client.as_str(), r.id.as_str()))
        .chain(
            kept.iter()
                .filter(|(_, q)| q.was_accepted)
                .map(|(lane, q)| (*lane, q.client.as_str(), q.id.as_str())),
        )
        .collect();
    let released: Vec<&(i64, &StoredReply)> =
        replies.iter().filter(|(_, r)| r.was_quarantined).collect();
    let sql = if history {
        COMMIT_WITH_HISTORY_SQL.as_str()
    } else {
        COMMIT_SQL.as_str()
    };
    let query = sqlx::query(sqlx::AssertSqlSafe(sql));
    let query = bind_lanes(query, batch, &writes);
    let query = bind_replies(query, &replies);
    let query = query
        .bind(accepted.iter().map(|a| a.0).collect::<Vec<_>>())
        .bind(accepted.iter().map(|a| a.1).collect::<Vec<_>>())
        .bind(accepted.iter().map(|a| a.2).collect::<Vec<_>>());
    let query = bind_kept(query, &kept);
    let query = bind_released(query, &released);
    let query = bind_fences(query, batch);
    let query = if history {
        bind_history(query, batch)
    } else {
        query
    };
    let rows = query.fetch_all(&mut *conn).await?;
    let mut outcomes = vec![CommitOutcome::Stale; batch.len()];
    for row in rows {
        let resent: i32 = row.try_get("resent")?;
        // A fenced lane's row comes last: it is neither resent nor kept.
        outcomes[ordinal(&row, batch.len())?] = match resent {
            0 => CommitOutcome::Committed,
            1 => CommitOutcome::Resent,
            _ => CommitOutcome::Fenced,
        };
    }
    Ok(outcomes)
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

/// The replies that release a quarantined mutation: their lane, client
/// and id.
fn bind_released<'q>(q: PgQuery<'q>, released: &[&(i64, &'q StoredReply)]) -> PgQuery<'q> {
    q.bind(released.iter().map(|(lane, _)| *lane).collect::<Vec<_>>())
        .bind(
            released
                .iter()
                .map(|(_, r)| r.client.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            released
                .iter()
                .map(|(_, r)| r.id.as_str())
                .collect::<Vec<_>>(),
        )
}

/// Each lane's fence (partition and epoch), null outside a cluster.
fn bind_fences<'q>(q: PgQuery<'q>, batch: &[LaneCommit]) -> PgQuery<'q> {
    q.bind(
        batch
            .iter()
            .map(|l| l.fence.map(|f| i64::from(f.partition)))
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|l| l.fence.map(|f| to_sql(f.epoch)))
            .collect::<Vec<_>>(),
    )
}

/// The lanes' history records, each numbered with its lane (from 1).
fn bind_history<'q>(q: PgQuery<'q>, batch: &'q [LaneCommit]) -> PgQuery<'q> {
    let (mut mutation_lanes, mut mutations) = (Vec::new(), Vec::new());
    let (mut conflict_lanes, mut conflicts) = (Vec::new(), Vec::new());
    for (i, lane) in batch.iter().enumerate() {
        let lane_no = i64::try_from(i + 1).unwrap_or(i64::MAX);
        for m in &lane.history.mutations {
            mutation_lanes.push(lane_no);
            mutations.push(m);
        }
        for c in &lane.history.conflicts {
            conflict_lanes.push(lane_no);
            conflicts.push(c);
        }
    }
    let q = crate::history::bind_mutations(q.bind(mutation_lanes), &mutations);
    crate::history::bind_conflicts(q.bind(conflict_lanes), &conflicts)
}

/// The lanes' parameters of `COMMIT_SQL`, in its order: documents, the
/// versions expected and written, the items, the times.
fn bind_lanes<'q>(
    q: PgQuery<'q>,
    batch: &'q [LaneCommit],
    writes: &[Option<&'q Document>],
) -> PgQuery<'q> {
    q.bind(
        batch
            .iter()
            .map(|l| l.doc.collection.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(batch.iter().map(|l| l.doc.key.as_str()).collect::<Vec<_>>())
    .bind(
        batch
            .iter()
            .map(|l| to_sql(l.expected_version))
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|w| w.map(|w| to_sql(w.version)))
            .collect::<Vec<_>>(),
    )
    .bind(
        writes
            .iter()
            .map(|w| w.and_then(encode_item))
            .collect::<Vec<_>>(),
    )
    .bind(batch.iter().map(|l| l.at_ms).collect::<Vec<_>>())
}

/// The replies' parameters of `COMMIT_SQL`, each with its lane.
fn bind_replies<'q>(q: PgQuery<'q>, replies: &[(i64, &'q StoredReply)]) -> PgQuery<'q> {
    q.bind(replies.iter().map(|(lane, _)| *lane).collect::<Vec<_>>())
        .bind(
            replies
                .iter()
                .map(|(_, r)| r.client.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            replies
                .iter()
                .map(|(_, r)| r.id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            replies
                .iter()
                .map(|(_, r)| to_sql(r.fingerprint))
                .collect::<Vec<_>>(),
        )
        .bind(
            replies
                .iter()
                .map(|(_, r)| r.decision.kind.stored_code())
                .collect::<Vec<_>>(),
        )
        .bind(
            replies
                .iter()
                .map(|(_, r)| r.decision.body.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(replies.iter().map(|(_, r)| r.at_ms).collect::<Vec<_>>())
}

/// The quarantine entries' parameters of `COMMIT_SQL`, each with its lane.
fn bind_kept<'q>(q: PgQuery<'q>, kept: &[(i64, &'q Quarantined)]) -> PgQuery<'q> {
    q.bind(kept.iter().map(|(lane, _)| *lane).collect::<Vec<_>>())
        .bind(
            kept.iter()
                .map(|(_, q)| q.client.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(kept.iter().map(|(_, q)| q.id.as_str()).collect::<Vec<_>>())
        .bind(
            kept.iter()
                .map(|(_, q)| to_sql(q.fingerprint))
                .collect::<Vec<_>>(),
        )
        .bind(
            kept.iter()
                .map(|(_, q)| q.doc.collection.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            kept.iter()
                .map(|(_, q)| q.doc.key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            kept.iter()
                .map(|(_, q)| q.mutation.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            kept.iter()
                .map(|(_, q)| q.reason.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(kept.iter().map(|(_, q)| q.score).collect::<Vec<_>>())
        .bind(kept.iter().map(|(_, q)| q.at_ms).collect::<Vec<_>>())
}

/// A batch's commit as one statement. `lane` lists the lanes (a NULL
/// `version` for a lane that only rejects: its version is checked, nothing
/// written). `locked` locks the rows that exist, in key order, and reads
/// their current versions (a row changed since the statement's snapshot is
/// read as it is now); `fit` keeps the lanes whose document has the expected
/// version (0: absent), none of whose mutations has a stored reply
/// (`resent`: they were decided before; the statement answers those lanes
/// too), and whose fence, in cluster mode, is still its partition's
/// (`fence` holds the partitions' rows shared to the end of the commit, so a
/// new owner's `RAISE_FENCE` waits for it, and a commit after the raise sees
/// the new epoch; lanes that fail it are answered `2`). Updates of locked rows always stick; an insert can
/// lose to a concurrent one (`ON CONFLICT DO NOTHING`), and then its lane is
/// stale. A reply gates its lane's write: one that another transaction
/// stored after this statement's snapshot (the same `(client, id)` decided
/// at once elsewhere, on another document) fails the whole commit (`gate`;
/// the cast's message says why, computed so the planner cannot fold it),
/// and its resend is answered from that reply. `committed` is what stuck; replies, accept-log deletions and
/// history records are kept for those lanes only, and the statement answers
/// their numbers. Materialized CTEs run before the writes that read them, so
/// every lock is taken, in order, before the first write.
static COMMIT_SQL: LazyLock<String> = LazyLock::new(|| commit_sql(false));
/// `COMMIT_SQL` that also inserts the committed lanes' history records.
static COMMIT_WITH_HISTORY_SQL: LazyLock<String> = LazyLock::new(|| commit_sql(true));

/// The parameters of `commit_sql`'s own part (`$1` to `$31`); the history
/// records' arrays are numbered after them.
const COMMIT_PARAMS: usize = 31;

fn commit_sql(history: bool) -> String {
    let filter = "u.lane IN (SELECT n FROM committed)";
    let records = if history {
        let first = COMMIT_PARAMS + 1;
        let (mutations, used) = crate::history::mutations_insert(first, Some(filter));
        let (conflicts, _) = crate::history::conflicts_insert(first + used, Some(filter));
        format!(",\n         recorded AS ({mutations}),\n         conflicted AS ({conflicts})")
    } else {
        String::new()
    };
    format!(
        "WITH lane AS MATERIALIZED (
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[], $6::BIGINT[],
                                  $30::BIGINT[], $31::BIGINT[])
               WITH ORDINALITY AS l(collection, key, expected, version, item, at_ms, part, epoch, n)
         ),
         fence AS MATERIALIZED (
             SELECT p.partition, p.epoch FROM sluice_partitions p
             WHERE p.partition IN (SELECT part FROM lane WHERE epoch IS NOT NULL)
             ORDER BY p.partition FOR SHARE OF p
         ),
         unfenced AS MATERIALIZED (
             SELECT l.n FROM lane l
             WHERE l.epoch IS NULL
                OR EXISTS (SELECT 1 FROM fence f WHERE f.partition = l.part AND f.epoch = l.epoch)
         ),
         locked AS MATERIALIZED (
             SELECT l.n, d.version FROM lane l
             JOIN sluice_documents d ON d.collection = l.collection AND d.key = l.key
             ORDER BY d.collection, d.key FOR UPDATE OF d
         ),
         resent AS MATERIALIZED (
             SELECT u.lane FROM UNNEST($7::BIGINT[], $8::TEXT[], $9::TEXT[]) AS u(lane, client, id)
             JOIN sluice_replies r ON r.client = u.client AND r.id = u.id
             UNION
             SELECT q.lane FROM UNNEST($17::BIGINT[], $18::TEXT[], $19::TEXT[]) AS q(lane, client, id)
             JOIN sluice_replies r ON r.client = q.client AND r.id = q.id
         ),
         fit AS MATERIALIZED (
             SELECT l.* FROM lane l LEFT JOIN locked k ON k.n = l.n
             WHERE COALESCE(k.version, 0) = l.expected AND l.n NOT IN (SELECT lane FROM resent)
               AND l.n IN (SELECT n FROM unfenced)
         ),
         updated AS (
             UPDATE sluice_documents d
             SET version = f.version, item = f.item::json, updated_ms = f.at_ms
             FROM fit f
             WHERE f.version IS NOT NULL AND f.expected > 0
               AND d.collection = f.collection AND d.key = f.key
             RETURNING f.n
         ),
         inserted AS (
             INSERT INTO sluice_documents (collection, key, version, item, updated_ms)
             SELECT f.collection, f.key, f.version, f.item::json, f.at_ms FROM fit f
             WHERE f.version IS NOT NULL AND f.expected = 0
             ON CONFLICT (collection, key) DO NOTHING
             RETURNING collection, key
         ),
         committed AS MATERIALIZED (
             SELECT n FROM updated
             UNION ALL
             SELECT f.n FROM fit f JOIN inserted i ON i.collection = f.collection AND i.key = f.key
             UNION ALL
             SELECT f.n FROM fit f WHERE f.version IS NULL
         ),
         replied AS (
             INSERT INTO sluice_replies (client, id, fingerprint, status, body, at_ms)
             SELECT client, id, fingerprint, status, body, at_ms
             FROM UNNEST($7::BIGINT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::BIGINT[], $12::TEXT[], $13::BIGINT[])
               WITH ORDINALITY AS u(lane, client, id, fingerprint, status, body, at_ms, n)
             WHERE u.lane IN (SELECT n FROM committed)
             ORDER BY n
             ON CONFLICT (client, id) DO NOTHING
             RETURNING 1
         ),
         gate AS MATERIALIZED (
             SELECT CASE WHEN (SELECT count(*) FROM replied)
                            = (SELECT count(*) FROM UNNEST($7::BIGINT[]) AS u(lane)
                               WHERE u.lane IN (SELECT n FROM committed))
                    THEN 0
                    ELSE CAST('a reply of this commit was stored by another meanwhile: '
                              || (SELECT count(*) FROM replied) AS INT) END AS ok
         ),
         unaccepted AS (
             DELETE FROM sluice_accepted a
             USING UNNEST($14::BIGINT[], $15::TEXT[], $16::TEXT[]) AS u(lane, client, id)
             WHERE u.lane IN (SELECT n FROM committed) AND a.client = u.client AND a.id = u.id
         ),
         kept AS (
             INSERT INTO sluice_quarantine (client, id, fingerprint, collection, key, mutation, reason, score, at_ms)
             SELECT client, id, fingerprint, collection, key, mutation, reason, score, at_ms
             FROM UNNEST($17::BIGINT[], $18::TEXT[], $19::TEXT[], $20::BIGINT[], $21::TEXT[], $22::TEXT[],
                         $23::TEXT[], $24::TEXT[], $25::DOUBLE PRECISION[], $26::BIGINT[])
               AS q(lane, client, id, fingerprint, collection, key, mutation, reason, score, at_ms)
             WHERE q.lane IN (SELECT n FROM committed)
             ON CONFLICT (client, id) DO UPDATE
               SET reason = excluded.reason, score = excluded.score, at_ms = excluded.at_ms
         ),
         released AS (
             DELETE FROM sluice_quarantine s
             USING UNNEST($27::BIGINT[], $28::TEXT[], $29::TEXT[]) AS u(lane, client, id)
             WHERE u.lane IN (SELECT n FROM committed) AND s.client = u.client AND s.id = u.id
         ){records}
         SELECT n, g.ok AS resent FROM committed CROSS JOIN gate g
         UNION ALL
         SELECT lane, 1 FROM resent
         UNION ALL
         SELECT n, 2 FROM lane WHERE n NOT IN (SELECT n FROM unfenced)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest `$N` in a statement.
    fn last_param(sql: &str) -> usize {
        sql.split('$')
            .skip(1)
            .filter_map(|s| {
                let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_history_arrays_are_numbered_after_the_commits_own() {
        assert_eq!(last_param(&commit_sql(false)), COMMIT_PARAMS);
        let (_, mutations) = crate::history::mutations_insert(1, Some("true"));
        let (_, conflicts) = crate::history::conflicts_insert(1, Some("true"));
        assert_eq!(
            last_param(&commit_sql(true)),
            COMMIT_PARAMS + mutations + conflicts
        );
    }
}
