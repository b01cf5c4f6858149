//! The group commit's statement: a batch of lanes of distinct documents
//! written in one round trip (`COMMIT_SQL`), with the arrays it binds.

use super::ordinal;
use crate::history::PgQuery;
use crate::model::Document;
use crate::store::{
    CommitOutcome, LaneCommit, Quarantined, StoreError, StoredReply, encode_item, to_sql,
};
use sqlx::Row;
use std::sync::LazyLock;

/// Lanes of distinct documents in one statement (see `COMMIT_SQL`):
/// their rows locked in key order (two Sluice processes cannot
/// deadlock), each lane committed only if its document still has the
/// expected version, and with it its replies, its accept-log deletions
/// and, when the history lives here, its history records. Round trips,
/// not rows, are what a commit costs here: this is one.
pub(super) async fn commit_statement(
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
