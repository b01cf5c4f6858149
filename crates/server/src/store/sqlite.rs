//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through a pool of exactly one connection, so transactions never
//! race each other for SQLite's single write lock (and group commit makes one
//! transaction carry many lanes). Reads use a separate pool and, thanks to WAL,
//! never wait for the writer. `synchronous = FULL`: a committed transaction
//! survives power loss, which is what "acknowledged" promises.

use super::{
    Accepted, COLLECTION_CHANGES_KEPT, CollectionChange, CommitOutcome, EVENTS_KEPT_MIN, KeyRecord,
    LaneCommit, QuarantineQuery, Quarantined, Store, StoreError, StoredReply, accepted_from_row,
    change_from_row, collection_from_row, decode_item, encode_item, event_from_row, from_sql,
    key_from_row, quarantine_select, quarantined_from_row, reply_from_row, sql,
    sql_collection_methods, to_sql,
};
use crate::model::{DocKey, Document};
use sqlx::Row;
use sqlx::SqliteConnection;
use sqlx::sqlite::SqlitePool;
use std::path::Path;

/// SQLite's statements where its dialect differs from PostgreSQL's: rows
/// are numbered by `rowid` (in commit order: the one writer inserts).
const SELECT_DOCUMENT: &str =
    "SELECT version, item FROM sluice_documents WHERE collection = $1 AND key = $2";
const EXPIRE_REPLIES: &str = "DELETE FROM sluice_replies WHERE at_ms < $1 \
     AND rowid <= (SELECT COALESCE(MAX(rowid), 0) FROM sluice_replies) - $2";
/// Staged mutations oldest first, of one collection (`$1`) or all (null).
const STAGED_LIST: &str = "SELECT client, id, fingerprint, mutation, score, at_ms \
     FROM sluice_staged WHERE ($1 IS NULL OR collection = $1) ORDER BY rowid LIMIT $2";
const PENDING_ACCEPTED: &str = "SELECT client, id, fingerprint, mutation, score, at_ms \
     FROM sluice_accepted ORDER BY rowid";
const EVENTS_AFTER: &str = "SELECT rowid AS seq, body FROM sluice_replies \
     WHERE client = $1 AND rowid > $2 ORDER BY rowid LIMIT $3";
const SELECT_REPLIED: &str = "SELECT 1 FROM sluice_replies WHERE client = $1 AND id = $2";
const INSERT_DOCUMENT: &str = "INSERT INTO sluice_documents (collection, key, version, item, updated_ms) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (collection, key) DO NOTHING";
const UPDATE_DOCUMENT: &str = "UPDATE sluice_documents SET version = $3, item = $4, updated_ms = $5 \
     WHERE collection = $1 AND key = $2 AND version = $6";
const SELECT_VERSION: &str =
    "SELECT version FROM sluice_documents WHERE collection = $1 AND key = $2";
const INSERT_REPLY: &str = "INSERT INTO sluice_replies (client, id, fingerprint, status, body, at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (client, id) DO NOTHING";

const RAISE_FENCE: &str = "INSERT INTO sluice_partitions (partition, epoch) VALUES ($1, $2) \
     ON CONFLICT (partition) DO UPDATE SET epoch = MAX(sluice_partitions.epoch, excluded.epoch) \
     RETURNING epoch";

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
    // Shadow writes wait here, beside the live documents, until the
    // validator promotes them (or they expire).
    "CREATE TABLE IF NOT EXISTS sluice_staged (
        client TEXT NOT NULL,
        id TEXT NOT NULL,
        fingerprint INTEGER NOT NULL,
        collection TEXT NOT NULL,
        mutation TEXT NOT NULL,
        score REAL NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (client, id)
    )",
    "CREATE TABLE IF NOT EXISTS sluice_quarantine (
        client TEXT NOT NULL,
        id TEXT NOT NULL,
        fingerprint INTEGER NOT NULL,
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        mutation TEXT NOT NULL,
        reason TEXT NOT NULL,
        score REAL NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (client, id)
    )",
    "CREATE INDEX IF NOT EXISTS sluice_quarantine_at ON sluice_quarantine (at_ms)",
    "CREATE TABLE IF NOT EXISTS sluice_collections (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    )",
    sql::PARTITIONS_TABLE,
    sql::SECRETS_TABLE,
    sql::KEYS_TABLE,
    "CREATE TABLE IF NOT EXISTS sluice_collection_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        config TEXT NOT NULL,
        by_client TEXT,
        by_role TEXT,
        at_ms BIGINT NOT NULL
    )",
    sql::CHANGES_INDEX,
];

pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let (reader, writer) = crate::db::open_sqlite(path).await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&writer).await?;
        }
        Ok(SqliteStore { reader, writer })
    }
}

sql_collection_methods!(SqliteStore);

#[async_trait::async_trait]
impl Store for SqliteStore {
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
        self.commit_rows(batch).await
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

    async fn events_head(&self, _client: &str) -> Result<i64, StoreError> {
        // The newest event of any client: MAX(rowid) is one index step,
        // a client's own newest a scan of its replies.
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(rowid), 0) FROM sluice_replies")
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

impl SqliteStore {
    /// The batch statement by statement: round trips cost little in
    /// process (PostgreSQL commits a batch in one statement instead).
    async fn commit_rows(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        // Fences (cluster mode) and quarantine entries are rare: they take
        // the statement-per-row path.
        if batch
            .iter()
            .all(|lane| lane.fence.is_none() && lane.quarantine.is_empty())
        {
            return self.commit_set(batch).await;
        }
        let mut tx = self.writer.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for lane in batch {
            let outcome = if !fence_holds(&mut tx, lane).await? {
                CommitOutcome::Fenced
            } else if any_replied(&mut tx, lane).await? {
                CommitOutcome::Resent
            } else if !write_document(&mut tx, lane).await? {
                CommitOutcome::Stale
            } else {
                write_replies(&mut tx, lane).await?;
                write_quarantine(&mut tx, lane).await?;
                CommitOutcome::Committed
            };
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

impl SqliteStore {
    /// The batch as one request to the writer's thread (between `BEGIN` and
    /// `COMMIT`): `COMMIT_SET` with the lanes as one JSON array.
    async fn commit_set(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        let lanes: Vec<serde_json::Value> = batch.iter().map(lane_json).collect();
        let lanes = serde_json::Value::Array(lanes).to_string();
        let mut tx = self.writer.begin().await?;
        let statuses: Vec<i64> = sqlx::query_scalar(COMMIT_SET)
            .bind(lanes)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        if statuses.len() != batch.len() {
            return Err(StoreError::Corrupt(format!(
                "a commit of {} lanes answered {} outcomes",
                batch.len(),
                statuses.len()
            )));
        }
        Ok(statuses
            .into_iter()
            .map(|status| match status {
                SET_RESENT => CommitOutcome::Resent,
                SET_STALE => CommitOutcome::Stale,
                _ => CommitOutcome::Committed,
            })
            .collect())
    }
}

/// A lane as `COMMIT_SET` reads it; each reply is
/// `[client, id, fingerprint, status, body, at_ms, was_accepted, was_quarantined]`.
fn lane_json(lane: &LaneCommit) -> serde_json::Value {
    let replies: Vec<serde_json::Value> = lane
        .replies
        .iter()
        .map(|r| {
            serde_json::json!([
                r.client,
                r.id,
                to_sql(r.fingerprint),
                r.decision.kind.stored_code(),
                r.decision.body,
                r.at_ms,
                r.was_accepted,
                r.was_quarantined
            ])
        })
        .collect();
    serde_json::json!({
        "c": lane.doc.collection,
        "k": lane.doc.key,
        "e": to_sql(lane.expected_version),
        "w": lane.write.is_some(),
        "v": lane.write.as_ref().map(|w| to_sql(w.version)),
        "i": lane.write.as_ref().and_then(encode_item),
        "at": lane.at_ms,
        "r": replies,
    })
}

const SET_RESENT: i64 = 1;
const SET_STALE: i64 = 2;

/// A whole commit in one request. sqlx runs a SQLite connection on a thread
/// of its own and every statement is a round trip to it, a wake-up each way:
/// row by row, a mutation cost three of them in the store alone and those
/// hand-offs, not SQLite, were most of the embedded default's CPU. The
/// lanes are judged first against what the transaction reads (a reply of
/// theirs stored already: resent, 1; the document's version moved: stale,
/// 2), then the lanes that hold (0) are written together, in lane order so
/// the replies' rowids (the event stream's order) are the commit's.
const COMMIT_SET: &str = "
CREATE TEMP TABLE IF NOT EXISTS sluice_commit (
    lane INTEGER PRIMARY KEY, collection TEXT, key TEXT, expected INTEGER,
    writes INTEGER, version INTEGER, item TEXT, at_ms INTEGER, replies TEXT,
    status INTEGER);
DELETE FROM temp.sluice_commit;
INSERT INTO temp.sluice_commit
    (lane, collection, key, expected, writes, version, item, at_ms, replies, status)
SELECT j.key, j.value ->> 'c', j.value ->> 'k', j.value ->> 'e', j.value ->> 'w',
    j.value ->> 'v', j.value ->> 'i', j.value ->> 'at', j.value -> 'r',
    CASE
        WHEN EXISTS (SELECT 1 FROM json_each(j.value -> 'r') AS r
            JOIN sluice_replies AS s ON s.client = r.value ->> 0 AND s.id = r.value ->> 1)
        THEN 1
        WHEN COALESCE((SELECT d.version FROM sluice_documents AS d
            WHERE d.collection = j.value ->> 'c' AND d.key = j.value ->> 'k'), 0)
            <> j.value ->> 'e'
        THEN 2
        ELSE 0
    END
FROM json_each($1) AS j;
UPDATE sluice_documents SET version = t.version, item = t.item, updated_ms = t.at_ms
FROM temp.sluice_commit AS t
WHERE t.status = 0 AND t.writes AND t.expected <> 0
    AND sluice_documents.collection = t.collection AND sluice_documents.key = t.key;
INSERT INTO sluice_documents (collection, key, version, item, updated_ms)
SELECT collection, key, version, item, at_ms FROM temp.sluice_commit
WHERE status = 0 AND writes AND expected = 0 ORDER BY lane;
INSERT INTO sluice_replies (client, id, fingerprint, status, body, at_ms)
SELECT r.value ->> 0, r.value ->> 1, r.value ->> 2, r.value ->> 3, r.value ->> 4, r.value ->> 5
FROM temp.sluice_commit AS t, json_each(t.replies) AS r
WHERE t.status = 0 ORDER BY t.lane, r.key
ON CONFLICT (client, id) DO NOTHING;
DELETE FROM sluice_accepted WHERE (client, id) IN (
    SELECT r.value ->> 0, r.value ->> 1 FROM temp.sluice_commit AS t, json_each(t.replies) AS r
    WHERE t.status = 0 AND r.value ->> 6);
DELETE FROM sluice_quarantine WHERE (client, id) IN (
    SELECT r.value ->> 0, r.value ->> 1 FROM temp.sluice_commit AS t, json_each(t.replies) AS r
    WHERE t.status = 0 AND r.value ->> 7);
SELECT status FROM temp.sluice_commit ORDER BY lane;
";

/// Whether the lane's fence, if it has one, is still its partition's. A
/// fence raised by another process after this read makes the transaction's
/// first write fail (SQLite refuses a write on a stale snapshot), so the
/// check holds to the commit.
async fn fence_holds(tx: &mut SqliteConnection, lane: &LaneCommit) -> Result<bool, StoreError> {
    let Some(fence) = lane.fence else {
        return Ok(true);
    };
    let current: Option<i64> = sqlx::query_scalar(sql::SELECT_FENCE)
        .bind(i64::from(fence.partition))
        .fetch_optional(&mut *tx)
        .await?;
    Ok(current == Some(to_sql(fence.epoch)))
}

/// Whether a mutation of the lane has a stored reply already (a resend).
async fn any_replied(tx: &mut SqliteConnection, lane: &LaneCommit) -> Result<bool, StoreError> {
    let ids = lane.replies.iter().map(|r| (&r.client, &r.id));
    let ids = ids.chain(lane.quarantine.iter().map(|q| (&q.client, &q.id)));
    for (client, id) in ids {
        let stored: Option<i64> = sqlx::query_scalar(SELECT_REPLIED)
            .bind(client)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if stored.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes the lane's document if it still has the expected version (or,
/// writing nothing, checks that version); `false`: it moved.
async fn write_document(tx: &mut SqliteConnection, lane: &LaneCommit) -> Result<bool, StoreError> {
    let Some(write) = &lane.write else {
        let version: Option<i64> = sqlx::query_scalar(SELECT_VERSION)
            .bind(&lane.doc.collection)
            .bind(&lane.doc.key)
            .fetch_optional(&mut *tx)
            .await?;
        return Ok(version.map_or(0, from_sql) == lane.expected_version);
    };
    let written = if lane.expected_version == 0 {
        sqlx::query(INSERT_DOCUMENT)
            .bind(&lane.doc.collection)
            .bind(&lane.doc.key)
            .bind(to_sql(write.version))
            .bind(encode_item(write))
            .bind(lane.at_ms)
            .execute(&mut *tx)
            .await?
    } else {
        sqlx::query(UPDATE_DOCUMENT)
            .bind(&lane.doc.collection)
            .bind(&lane.doc.key)
            .bind(to_sql(write.version))
            .bind(encode_item(write))
            .bind(lane.at_ms)
            .bind(to_sql(lane.expected_version))
            .execute(&mut *tx)
            .await?
    };
    Ok(written.rows_affected() == 1)
}

/// Stores the lane's replies; each removes its accept-log entry and its
/// quarantine entry.
async fn write_replies(tx: &mut SqliteConnection, lane: &LaneCommit) -> Result<(), StoreError> {
    for reply in &lane.replies {
        sqlx::query(INSERT_REPLY)
            .bind(&reply.client)
            .bind(&reply.id)
            .bind(to_sql(reply.fingerprint))
            .bind(reply.decision.kind.stored_code())
            .bind(&reply.decision.body)
            .bind(reply.at_ms)
            .execute(&mut *tx)
            .await?;
        if reply.was_accepted {
            sqlx::query(sql::DELETE_ACCEPTED)
                .bind(&reply.client)
                .bind(&reply.id)
                .execute(&mut *tx)
                .await?;
        }
        if reply.was_quarantined {
            sqlx::query(sql::DELETE_QUARANTINED)
                .bind(&reply.client)
                .bind(&reply.id)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

/// Keeps the lane's quarantined mutations; an accepted one leaves the
/// accept log with it.
async fn write_quarantine(tx: &mut SqliteConnection, lane: &LaneCommit) -> Result<(), StoreError> {
    for kept in &lane.quarantine {
        sqlx::query(sql::UPSERT_QUARANTINED)
            .bind(&kept.client)
            .bind(&kept.id)
            .bind(to_sql(kept.fingerprint))
            .bind(&kept.doc.collection)
            .bind(&kept.doc.key)
            .bind(&kept.mutation)
            .bind(&kept.reason)
            .bind(kept.score)
            .bind(kept.at_ms)
            .execute(&mut *tx)
            .await?;
        if kept.was_accepted {
            sqlx::query(sql::DELETE_ACCEPTED)
                .bind(&kept.client)
                .bind(&kept.id)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}
