//! One conformance suite per backend trait, run against every implementation:
//! the in-memory reference, SQLite, and PostgreSQL.

use crate::support::fresh_postgres_database;
use serde_json::{Map, Value, json};
use sluice_server::history::{
    ConflictQuery, History, MemoryHistory, PostgresHistory, SqliteHistory,
};
use sluice_server::model::{ConflictRecord, Decision, DecisionKind, MutationRecord};
use sluice_server::model::{DocKey, Document, Resolution};
use sluice_server::store::{
    Accepted, COLLECTION_CHANGES_KEPT, CollectionChange, CommitOutcome, EVENTS_KEPT_MIN, Fence,
    LaneCommit, LaneHistory, MemoryStore, PostgresStore, QuarantineQuery, Quarantined, SqliteStore,
    Store, StoredReply,
};

pub(crate) fn item(v: Value) -> Option<Map<String, Value>> {
    v.as_object().cloned()
}

pub(crate) fn reply(client: &str, id: &str, at_ms: i64) -> StoredReply {
    StoredReply {
        client: client.into(),
        was_accepted: false,
        was_quarantined: false,
        id: id.into(),
        fingerprint: u64::MAX - 7,
        decision: Decision {
            kind: DecisionKind::Written,
            body: format!("{{\"id\":\"{id}\"}}"),
        },
        at_ms,
    }
}

pub(crate) fn lane(
    doc: &DocKey,
    expected: u64,
    write: Option<Document>,
    replies: Vec<StoredReply>,
) -> LaneCommit {
    LaneCommit {
        doc: doc.clone(),
        expected_version: expected,
        write,
        replies,
        quarantine: Vec::new(),
        at_ms: 1,
        history: LaneHistory::default(),
        fence: None,
    }
}

fn kept(client: &str, id: &str, key: &str, at_ms: i64, reason: &str) -> Quarantined {
    Quarantined {
        client: client.into(),
        id: id.into(),
        fingerprint: u64::MAX - 3,
        doc: DocKey::new("q", key),
        mutation: format!(r#"{{"id":"{id}"}}"#),
        reason: reason.into(),
        score: 0.5,
        at_ms,
        was_accepted: false,
    }
}

async fn store_conformance(store: &dyn Store) {
    let a = DocKey::new("c", "a/with/slashes");
    let b = DocKey::new("c", "b");
    assert_eq!(
        store.get(&a).await.expect("get"),
        Document::absent(),
        "never written is version 0"
    );

    // Create with expected version 0, fields keep their order.
    let v1 = Document {
        version: 1,
        item: item(json!({"z": 1, "a": {"y": [1, "two", null]}})),
    };
    let outcomes = store
        .commit(&[lane(&a, 0, Some(v1.clone()), vec![reply("c1", "m1", 10)])])
        .await
        .expect("commit");
    assert_eq!(outcomes, [CommitOutcome::Committed]);
    let read = store.get(&a).await.expect("get");
    assert_eq!(read, v1);
    let keys: Vec<&String> = read.item.as_ref().expect("item").keys().collect();
    assert_eq!(keys, ["z", "a"], "field order is kept");

    // Reads of several at once answer each in order, absent ones included.
    let (many, replies) = store
        .read_many(
            &[b.clone(), a.clone(), b.clone()],
            &[
                ("c1".to_owned(), "nope".to_owned()),
                ("c1".to_owned(), "m1".to_owned()),
            ],
        )
        .await
        .expect("read_many");
    assert_eq!(many, [Document::absent(), v1.clone(), Document::absent()]);
    let (only_docs, none) = store
        .read_many(std::slice::from_ref(&a), &[])
        .await
        .expect("read_many");
    assert_eq!((only_docs, none.len()), (vec![v1.clone()], 0));
    let (no_docs, only_replies) = store
        .read_many(&[], &[("c1".to_owned(), "m1".to_owned())])
        .await
        .expect("read_many");
    assert_eq!(no_docs.len(), 0);
    assert!(only_replies[0].is_some());
    assert_eq!(replies[0], None);
    let m1 = store.reply("c1", "m1").await.expect("reply");
    assert!(m1.is_some());

    // A lane with a mutation decided before (its reply is stored) writes
    // nothing, whatever else it carries.
    let resent = store
        .commit(&[lane(
            &b,
            0,
            Some(v1.clone()),
            vec![reply("c1", "fresh", 10), reply("c1", "m1", 11)],
        )])
        .await
        .expect("commit");
    assert_eq!(resent, [CommitOutcome::Resent]);
    assert_eq!(store.get(&b).await.expect("get"), Document::absent());
    assert_eq!(store.reply("c1", "fresh").await.expect("reply"), None);
    assert_eq!(store.reply("c1", "m1").await.expect("reply"), m1);
    assert_eq!(replies[1], m1);

    // A second create and a stale update are refused, with nothing of their lane kept.
    let again = store
        .commit(&[lane(
            &a,
            0,
            Some(Document {
                version: 1,
                item: item(json!({})),
            }),
            vec![reply("c1", "lost1", 10)],
        )])
        .await;
    assert_eq!(again.expect("commit"), [CommitOutcome::Stale]);
    let stale = store
        .commit(&[lane(
            &a,
            5,
            Some(Document {
                version: 6,
                item: item(json!({})),
            }),
            vec![reply("c1", "lost2", 10)],
        )])
        .await;
    assert_eq!(stale.expect("commit"), [CommitOutcome::Stale]);
    assert_eq!(store.get(&a).await.expect("get"), v1);
    assert_eq!(store.reply("c1", "lost1").await.expect("reply"), None);
    assert_eq!(store.reply("c1", "lost2").await.expect("reply"), None);

    // One batch: a stale lane does not stop the others; a lane without a write stores its replies.
    let v2 = Document {
        version: 2,
        item: None,
    };
    let b1 = Document {
        version: 1,
        item: item(json!({"b": true})),
    };
    let outcomes = store
        .commit(&[
            lane(&a, 1, Some(v2.clone()), vec![reply("c1", "m2", 20)]),
            lane(
                &b,
                3,
                Some(Document {
                    version: 4,
                    item: None,
                }),
                vec![reply("c2", "lost3", 20)],
            ),
            lane(
                &b,
                0,
                Some(b1.clone()),
                vec![reply("c2", "m3", 20), reply("", "m4", 30)],
            ),
            lane(
                &DocKey::new("c", "untouched"),
                0,
                None,
                vec![reply("c3", "rejected", 40)],
            ),
            lane(
                &DocKey::new("c", "b"),
                7,
                None,
                vec![reply("c3", "stale-rejection", 40)],
            ),
        ])
        .await
        .expect("commit");
    assert_eq!(
        outcomes,
        [
            CommitOutcome::Committed,
            CommitOutcome::Stale,
            CommitOutcome::Committed,
            CommitOutcome::Committed,
            CommitOutcome::Stale
        ]
    );
    assert_eq!(
        store.get(&a).await.expect("get"),
        v2,
        "a tombstone keeps its version"
    );
    assert_eq!(store.get(&b).await.expect("get"), b1);
    assert_eq!(
        store
            .get(&DocKey::new("c", "untouched"))
            .await
            .expect("get"),
        Document::absent()
    );
    assert_eq!(store.reply("c2", "lost3").await.expect("reply"), None);
    assert_eq!(
        store.reply("c3", "stale-rejection").await.expect("reply"),
        None,
        "a lane without a write still checks the version"
    );
    assert_eq!(
        store.reply("c3", "rejected").await.expect("reply"),
        Some(reply("c3", "rejected", 40))
    );
    assert_eq!(
        store.reply("", "m4").await.expect("reply"),
        Some(reply("", "m4", 30))
    );
    assert_eq!(
        store.reply("c1", "m2").await.expect("reply"),
        Some(reply("c1", "m2", 20)),
        "fingerprints round-trip"
    );

    // Events: a client's replies in commit order, numbered, resumable.
    let c2_events = store.events_after("c2", 0, 10).await.expect("events");
    assert_eq!(
        c2_events
            .iter()
            .map(|(_, body)| body.as_str())
            .collect::<Vec<_>>(),
        [r#"{"id":"m3"}"#]
    );
    let all_c3 = store.events_after("c3", 0, 10).await.expect("events");
    assert_eq!(all_c3.len(), 1);
    assert_eq!(
        store
            .events_after("c3", all_c3[0].0, 10)
            .await
            .expect("events"),
        []
    );

    // A stream that starts now starts at or past the client's newest event.
    let head = store.events_head("c3").await.expect("head");
    assert!(head >= all_c3[0].0, "{head}");
    assert_eq!(
        store.events_after("c3", head, 10).await.expect("events"),
        []
    );
    // A secret is made once and read back the same, whoever asks next.
    let made = store.secret("s", &|| "first".into()).await.expect("secret");
    let again = store
        .secret("s", &|| "second".into())
        .await
        .expect("secret");
    assert_eq!((made.as_str(), again.as_str()), ("first", "first"));
    assert_eq!(
        store.secret("t", &|| "other".into()).await.expect("secret"),
        "other"
    );

    // Expiry forgets old replies, but never the newest EVENTS_KEPT_MIN (an
    // event stream may still resume across them).
    assert_eq!(
        store.expire_replies(21).await.expect("expire"),
        0,
        "all among the newest"
    );
    let filler: Vec<StoredReply> = (0..EVENTS_KEPT_MIN)
        .map(|i| reply("bulk", &format!("b{i}"), 100))
        .collect();
    let outcomes = store
        .commit(&[lane(&DocKey::new("c", "bulk"), 0, None, filler)])
        .await
        .expect("commit");
    assert_eq!(outcomes, [CommitOutcome::Committed]);
    assert_eq!(
        store.expire_replies(21).await.expect("expire"),
        3,
        "m1 and the two at 20"
    );
    assert_eq!(store.reply("c1", "m1").await.expect("reply"), None);
    assert!(
        store
            .reply("c3", "rejected")
            .await
            .expect("reply")
            .is_some()
    );
    let bulk = store.events_after("bulk", 0, 3).await.expect("events");
    assert_eq!(bulk.len(), 3);
    assert!(
        bulk.windows(2).all(|w| w[0].0 < w[1].0) && bulk[0].0 > all_c3[0].0,
        "event numbers rise in commit order"
    );

    // The accept log: append once, read, list in order, and leave with the reply.
    let entry = |id: &str| Accepted {
        client: "async".into(),
        id: id.into(),
        fingerprint: u64::MAX - 1,
        mutation: format!(r#"{{"id":"{id}"}}"#),
        score: 0.25,
        at_ms: 7,
    };
    assert!(store.accept(&entry("a1")).await.expect("accept"));
    assert!(store.accept(&entry("a2")).await.expect("accept"));
    assert!(
        !store.accept(&entry("a1")).await.expect("accept"),
        "a second append of one id is refused"
    );
    assert_eq!(
        store.accepted("async", "a1").await.expect("read"),
        Some(entry("a1"))
    );
    assert_eq!(
        store.pending_accepted().await.expect("list"),
        [entry("a1"), entry("a2")]
    );
    store.unaccept("async", "a2").await.expect("unaccept");
    let decided = StoredReply {
        was_accepted: true,
        ..reply("async", "a1", 50)
    };
    store
        .commit(&[lane(&DocKey::new("c", "async"), 0, None, vec![decided])])
        .await
        .expect("commit");
    assert_eq!(
        store.pending_accepted().await.expect("list"),
        [],
        "the reply's commit removes its entry"
    );
    assert!(store.reply("async", "a1").await.expect("reply").is_some());

    // The quarantine: entries go in and out with their lane's commit.
    let q = DocKey::new("q", "k1");
    let quarantining = |expected, entries: Vec<Quarantined>, replies| LaneCommit {
        quarantine: entries,
        ..lane(&q, expected, None, replies)
    };
    assert!(
        store
            .accept(&Accepted {
                client: "ann".into(),
                ..entry("q1")
            })
            .await
            .expect("accept")
    );
    let accepted_q1 = Quarantined {
        was_accepted: true,
        ..kept("ann", "q1", "k1", 10, "the script threw")
    };
    let outcomes = store
        .commit(&[
            quarantining(
                0,
                vec![accepted_q1, kept("bob", "q2", "k1", 11, "timed out")],
                vec![],
            ),
            LaneCommit {
                quarantine: vec![kept("ann", "stale", "k2", 12, "x")],
                ..lane(&DocKey::new("q", "k2"), 5, None, vec![])
            },
        ])
        .await
        .expect("commit");
    assert_eq!(outcomes, [CommitOutcome::Committed, CommitOutcome::Stale]);
    assert_eq!(
        store.quarantined("ann", "q1").await.expect("read"),
        Some(kept("ann", "q1", "k1", 10, "the script threw")),
        "an entry round-trips"
    );
    assert_eq!(
        store.accepted("ann", "q1").await.expect("read"),
        None,
        "its accept-log entry left with it"
    );
    assert_eq!(
        store.quarantined("ann", "stale").await.expect("read"),
        None,
        "a stale lane keeps nothing"
    );
    let list = |collection: Option<&str>, client: Option<&str>, with_mutations| {
        let query = QuarantineQuery {
            collection: collection.map(Into::into),
            client: client.map(Into::into),
            limit: 10,
            with_mutations,
        };
        async move { store.quarantine_list(&query).await.expect("list") }
    };
    let ids = |entries: Vec<Quarantined>| entries.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(list(None, None, true).await),
        ["q1", "q2"],
        "oldest first"
    );
    assert_eq!(ids(list(None, Some("bob"), true).await), ["q2"]);
    assert_eq!(
        ids(list(Some("other"), None, true).await),
        Vec::<String>::new()
    );
    assert!(
        list(None, None, false)
            .await
            .iter()
            .all(|e| e.mutation.is_empty())
    );
    // Kept again: the reason is the new one.
    store
        .commit(&[quarantining(
            0,
            vec![kept("bob", "q2", "k1", 20, "unreachable")],
            vec![],
        )])
        .await
        .expect("commit");
    assert_eq!(
        store
            .quarantined("bob", "q2")
            .await
            .expect("read")
            .expect("kept")
            .reason,
        "unreachable"
    );
    // Its final reply removes it, in the same commit.
    let final_reply = StoredReply {
        was_quarantined: true,
        ..reply("ann", "q1", 30)
    };
    store
        .commit(&[quarantining(0, vec![], vec![final_reply])])
        .await
        .expect("commit");
    assert_eq!(store.quarantined("ann", "q1").await.expect("read"), None);
    assert!(store.reply("ann", "q1").await.expect("reply").is_some());
    // A lane that would keep a mutation already answered wrote nothing.
    let outcomes = store
        .commit(&[quarantining(
            0,
            vec![kept("ann", "q1", "k1", 40, "again")],
            vec![],
        )])
        .await
        .expect("commit");
    assert_eq!(outcomes, [CommitOutcome::Resent]);
    assert_eq!(store.quarantined("ann", "q1").await.expect("read"), None);

    // Collections: upsert, each change recorded with who made it.
    let change = |config: &str, by: Option<&str>, at_ms| CollectionChange {
        seq: 0,
        collection: "notes".into(),
        config: config.into(),
        by_client: by.map(str::to_owned),
        by_role: by.map(|_| "admin".to_owned()),
        at_ms,
    };
    let automerge = r#"{"handler":"automerge","set_fields":[]}"#;
    let optimistic = r#"{"handler":"optimistic","set_fields":[]}"#;
    store
        .put_collection(automerge, &change(automerge, None, 1))
        .await
        .expect("put");
    store
        .put_collection(optimistic, &change(optimistic, Some("root"), 2))
        .await
        .expect("put");
    assert_eq!(
        store.collections().await.expect("list"),
        [("notes".to_string(), optimistic.to_string())]
    );
    let changes = store
        .collection_changes("notes", None, 10)
        .await
        .expect("changes");
    let seen: Vec<_> = changes
        .iter()
        .map(|c| (c.config.as_str(), c.by_client.as_deref(), c.at_ms))
        .collect();
    assert_eq!(
        seen,
        [(optimistic, Some("root"), 2), (automerge, None, 1)],
        "newest first"
    );
    assert!(changes[0].seq > changes[1].seq);
    let older = store
        .collection_changes("notes", Some(changes[0].seq), 10)
        .await
        .expect("page");
    assert_eq!(older, changes[1..]);
    assert_eq!(
        store
            .collection_changes("notes", None, 1)
            .await
            .expect("one")
            .len(),
        1
    );
    assert!(
        store
            .collection_changes("other", None, 10)
            .await
            .expect("none")
            .is_empty()
    );
    // Bounded: only the newest are kept.
    for at_ms in 0..COLLECTION_CHANGES_KEPT + 5 {
        store
            .put_collection(optimistic, &change(optimistic, None, 10 + at_ms))
            .await
            .expect("put");
    }
    let kept = store
        .collection_changes("notes", None, 2_000)
        .await
        .expect("all");
    assert_eq!(kept.len() as i64, COLLECTION_CHANGES_KEPT);
    assert_eq!(kept[0].at_ms, 10 + COLLECTION_CHANGES_KEPT + 4);
    keys_conformance(store).await;
    staging_conformance(store).await;
}

/// The staging area: a mutation staged once, read, listed oldest first
/// (all, or one collection's, at most `limit`), and taken out once.
async fn staging_conformance(store: &dyn Store) {
    let entry = |id: &str, at_ms| Accepted {
        client: "shadow".into(),
        id: id.into(),
        fingerprint: u64::MAX - 2,
        mutation: format!(r#"{{"id":"{id}"}}"#),
        score: 0.5,
        at_ms,
    };
    assert!(store.stage(&entry("s1", 1), "notes").await.expect("stage"));
    assert!(store.stage(&entry("s2", 2), "tasks").await.expect("stage"));
    assert!(store.stage(&entry("s3", 3), "notes").await.expect("stage"));
    assert!(
        !store.stage(&entry("s1", 9), "notes").await.expect("stage"),
        "a second stage of one id is refused"
    );
    assert_eq!(
        store.staged("shadow", "s1").await.expect("read"),
        Some(entry("s1", 1))
    );
    assert_eq!(store.staged("shadow", "nope").await.expect("read"), None);
    assert_eq!(
        store.staged_list(None, 10).await.expect("list"),
        [entry("s1", 1), entry("s2", 2), entry("s3", 3)]
    );
    assert_eq!(
        store.staged_list(Some("notes"), 10).await.expect("list"),
        [entry("s1", 1), entry("s3", 3)]
    );
    assert_eq!(
        store.staged_list(None, 2).await.expect("list"),
        [entry("s1", 1), entry("s2", 2)]
    );
    assert!(store.unstage("shadow", "s1").await.expect("unstage"));
    assert!(
        !store.unstage("shadow", "s1").await.expect("unstage"),
        "once"
    );
    assert_eq!(
        store.staged_list(None, 10).await.expect("list"),
        [entry("s2", 2), entry("s3", 3)]
    );
    assert_eq!(
        store.accepted("shadow", "s2").await.expect("read"),
        None,
        "staged is not accepted"
    );
}

/// API keys: stored once per id, found by id, listed oldest first,
/// revoked once.
async fn keys_conformance(store: &dyn Store) {
    let key = |id: &str, created_ms| sluice_server::store::KeyRecord {
        id: id.into(),
        client: format!("client of {id}"),
        role: "writer".into(),
        hash: "ab".repeat(32),
        created_ms,
        revoked_ms: None,
    };
    assert_eq!(store.key("00").await.expect("get"), None);
    assert!(store.keys().await.expect("list").is_empty());
    store.put_key(&key("02", 20)).await.expect("put");
    store.put_key(&key("01", 10)).await.expect("put");
    assert!(
        store.put_key(&key("01", 30)).await.is_err(),
        "an id is never reused"
    );
    assert_eq!(store.key("02").await.expect("get"), Some(key("02", 20)));
    let listed: Vec<_> = store.keys().await.expect("list");
    assert_eq!(listed, [key("01", 10), key("02", 20)]);
    assert!(store.revoke_key("01", 40).await.expect("revoke"));
    assert!(!store.revoke_key("01", 50).await.expect("again"), "once");
    assert!(!store.revoke_key("03", 50).await.expect("unknown"));
    let revoked = store.key("01").await.expect("get").expect("kept");
    assert_eq!(revoked.revoked_ms, Some(40));
}

/// Cluster mode's fence: a lane decided under a partition's lease commits
/// only while that lease's epoch is the partition's fence.
async fn fence_conformance(store: &dyn Store) {
    use CommitOutcome::{Committed, Fenced, Stale};
    let doc = DocKey::new("fenced", "k");
    let under = |doc: &DocKey, expected: u64, fence: Option<Fence>, id: &str| LaneCommit {
        fence,
        ..lane(
            doc,
            expected,
            Some(Document {
                version: expected + 1,
                item: item(json!({"n": expected + 1})),
            }),
            vec![reply("ann", id, 1)],
        )
    };
    let at = |partition, epoch| Some(Fence { partition, epoch });
    let commit =
        |lanes: Vec<LaneCommit>| async move { store.commit(&lanes).await.expect("commit") };

    assert_eq!(
        commit(vec![under(&doc, 0, at(7, 1), "f0")]).await,
        [Fenced],
        "a partition nobody fenced takes no fenced lane"
    );
    assert_eq!(store.raise_fence(7, 0).await.expect("read"), 0);
    assert_eq!(store.raise_fence(7, 1).await.expect("raise"), 1);
    assert_eq!(
        commit(vec![under(&doc, 0, at(7, 1), "f1")]).await,
        [Committed]
    );
    assert_eq!(store.raise_fence(7, 3).await.expect("raise"), 3);
    assert_eq!(
        store.raise_fence(7, 2).await.expect("raise"),
        3,
        "a fence never goes down"
    );

    // The former owner's lane: nothing of it is kept, not even its reply.
    assert_eq!(commit(vec![under(&doc, 1, at(7, 1), "f2")]).await, [Fenced]);
    assert_eq!(store.get(&doc).await.expect("get").version, 1);
    assert_eq!(store.reply("ann", "f2").await.expect("reply"), None);

    // One batch: the fenced-off lane, the owner's, one with no fence, and
    // the owner's stale lane, each with its own outcome.
    let other = DocKey::new("fenced", "other");
    let free = DocKey::new("fenced", "free");
    let stale = DocKey::new("fenced", "stale");
    let outcomes = commit(vec![
        under(&doc, 1, at(7, 2), "f3"),
        under(&other, 0, at(7, 3), "f4"),
        under(&free, 0, None, "f5"),
        under(&stale, 4, at(7, 3), "f6"),
    ])
    .await;
    assert_eq!(outcomes, [Fenced, Committed, Committed, Stale]);
    assert_eq!(store.get(&doc).await.expect("get").version, 1);
    assert_eq!(store.get(&other).await.expect("get").version, 1);
    assert!(store.reply("ann", "f3").await.expect("reply").is_none());
    assert!(store.reply("ann", "f4").await.expect("reply").is_some());

    // Each partition has its own fence.
    assert_eq!(store.raise_fence(8, 1).await.expect("raise"), 1);
    let outcomes = commit(vec![
        under(&doc, 1, at(8, 1), "f7"),
        under(&DocKey::new("fenced", "k8"), 0, at(7, 1), "f8"),
    ])
    .await;
    assert_eq!(outcomes, [Committed, Fenced]);
}

#[tokio::test]
async fn memory_store_conforms() {
    store_conformance(&MemoryStore::new()).await;
    fence_conformance(&MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    store_conformance(
        &SqliteStore::open(&dir.path().join("store.db"))
            .await
            .expect("open"),
    )
    .await;
    fence_conformance(
        &SqliteStore::open(&dir.path().join("fences.db"))
            .await
            .expect("open"),
    )
    .await;
}

#[tokio::test]
async fn postgres_store_conforms() {
    let url = fresh_postgres_database().await;
    store_conformance(&PostgresStore::connect(&url).await.expect("connect")).await;
    fence_conformance(&PostgresStore::connect(&url).await.expect("connect")).await;
    let with_history = fresh_postgres_database().await;
    fence_conformance(
        &PostgresStore::connect_with_history(&with_history)
            .await
            .expect("connect"),
    )
    .await;
    // Opening again over the existing schema works (restart).
    PostgresStore::connect(&url).await.expect("reconnect");
}

fn mutation(
    id: &str,
    key: &str,
    base: Option<u64>,
    before: u64,
    after: u64,
    outcome: &str,
) -> MutationRecord {
    MutationRecord {
        id: id.into(),
        client: "cl".into(),
        doc: DocKey::new("c", key),
        op: sluice_server::model::Op::Patch,
        fields: vec!["x".into(), "y".into()],
        base_version: base,
        version_before: before,
        version_after: after,
        outcome: sluice_server::model::RecordedOutcome::parse(outcome).expect("an outcome"),
        conflict: base.is_some_and(|b| b != before),
        score: base.map(|_| 0.25),
        ts_ms: Some(1_700_000_000_000),
        received_ms: 5,
        decided_ms: 6,
        queued_us: 120,
        lane_waiting: 3,
    }
}

fn conflict(id: &str, key: &str, resolution: Resolution) -> ConflictRecord {
    ConflictRecord {
        mutation_id: id.into(),
        client: "cl".into(),
        doc: DocKey::new("c", key),
        base_version: 1,
        server_version: 2,
        handler: "automerge".into(),
        resolution,
        reason: "because".into(),
        incoming: json!({"i": 1}),
        existing: json!({"e": [1]}),
        result: if resolution == Resolution::Rejected {
            Value::Null
        } else {
            json!({"r": true})
        },
        at_ms: 99,
    }
}

async fn history_conformance(history: &dyn History) {
    assert_eq!(
        history.last_seq().await.expect("last seq"),
        0,
        "an empty history"
    );
    let m1 = mutation("m1", "a", None, 0, 1, "applied");
    let m2 = mutation("m2", "a", Some(0), 1, 2, "merged");
    let m3 = mutation("m3", "b", Some(0), 3, 3, "rejected");
    history
        .record(std::slice::from_ref(&m1), &[])
        .await
        .expect("record");
    history
        .record(
            &[m2.clone(), m3.clone()],
            &[
                conflict("m2", "a", Resolution::Merged),
                conflict("m3", "b", Resolution::Rejected),
            ],
        )
        .await
        .expect("record");
    history
        .record(&[], &[conflict("m4", "a", Resolution::Removed)])
        .await
        .expect("record");

    let all = history.mutations(0, 10).await.expect("mutations");
    assert_eq!(history.last_seq().await.expect("last seq"), all[2].0);
    assert_eq!(
        all.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        [m1, m2, m3.clone()]
    );
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "sequence numbers rise"
    );
    let rest = history.mutations(all[1].0, 10).await.expect("mutations");
    assert_eq!(rest.into_iter().map(|(_, m)| m).collect::<Vec<_>>(), [m3]);

    // Who wrote a document's versions: records that wrote, oldest first.
    let a = DocKey::new("c", "a");
    let writers = |doc: DocKey, after: u64, limit: u32| async move {
        history.writers(&doc, after, limit).await.expect("writers")
    };
    assert_eq!(
        writers(a.clone(), 0, 10).await,
        [(1, "cl".to_string()), (2, "cl".to_string())]
    );
    assert_eq!(writers(a.clone(), 1, 10).await, [(2, "cl".to_string())]);
    assert_eq!(writers(a, 0, 1).await, [(1, "cl".to_string())]);
    assert_eq!(
        writers(DocKey::new("c", "b"), 0, 10).await,
        [],
        "a rejection wrote no version"
    );

    let newest_first = history
        .conflicts(&ConflictQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("conflicts");
    let ids: Vec<&str> = newest_first
        .iter()
        .map(|c| c.mutation_id.as_str())
        .collect();
    assert_eq!(ids, ["m4", "m3", "m2"]);
    assert_eq!(
        newest_first[1],
        conflict("m3", "b", Resolution::Rejected),
        "a conflict round-trips in full"
    );
    let on_a = history
        .conflicts(&ConflictQuery {
            collection: Some("c".into()),
            key: Some("a".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("conflicts");
    assert_eq!(on_a, [conflict("m4", "a", Resolution::Removed)]);
    let elsewhere = history
        .conflicts(&ConflictQuery {
            collection: Some("d".into()),
            key: None,
            limit: 10,
            ..Default::default()
        })
        .await;
    assert_eq!(elsewhere.expect("conflicts"), []);

    // Pages: by count, by bytes (one always comes), from a cursor.
    let page = |limit, before_seq, bytes_max| {
        let query = ConflictQuery {
            limit,
            before_seq,
            bytes_max,
            ..Default::default()
        };
        async move { history.conflicts_page(&query).await.expect("page") }
    };
    let ids = |p: &sluice_server::history::ConflictPage| {
        p.conflicts
            .iter()
            .map(|(_, c)| c.mutation_id.clone())
            .collect::<Vec<_>>()
    };
    let first = page(2, None, None).await;
    assert_eq!(
        (ids(&first), first.more),
        (vec!["m4".to_string(), "m3".into()], true)
    );
    let cursor = first.conflicts.last().map(|(seq, _)| *seq);
    let rest = page(2, cursor, None).await;
    assert_eq!((ids(&rest), rest.more), (vec!["m2".to_string()], false));
    let tight = page(10, None, Some(1)).await;
    assert_eq!(
        (tight.conflicts.len(), tight.more),
        (1, true),
        "one conflict always comes"
    );
}

#[tokio::test]
async fn memory_history_conforms() {
    history_conformance(&MemoryHistory::new()).await;
}

#[tokio::test]
async fn sqlite_history_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    history_conformance(
        &SqliteHistory::open(&dir.path().join("history.db"))
            .await
            .expect("open"),
    )
    .await;
}

#[tokio::test]
async fn postgres_history_conforms() {
    let url = fresh_postgres_database().await;
    history_conformance(&PostgresHistory::connect(&url).await.expect("connect")).await;
}

/// With the history in the store's database, a commit writes its lanes'
/// records in its own transaction: those of committed lanes, and only those.
#[tokio::test]
async fn postgres_store_writes_the_history_of_what_it_commits() {
    let url = fresh_postgres_database().await;
    let store = PostgresStore::connect_with_history(&url)
        .await
        .expect("connect");
    assert!(store.writes_history());
    store_conformance(&store).await;
    let history = PostgresHistory::connect(&url).await.expect("connect");
    let last = history.last_seq().await.expect("last seq");

    let (a, b) = (DocKey::new("c", "h-a"), DocKey::new("c", "h-b"));
    let v = |version: u64| Document {
        version,
        item: item(json!({"v": version})),
    };
    let with_history = |mut lane: LaneCommit, records: Vec<MutationRecord>, conflicts| {
        lane.history = LaneHistory {
            mutations: records,
            conflicts,
        };
        lane
    };
    let outcomes = store
        .commit(&[
            with_history(
                lane(&a, 0, Some(v(1)), vec![reply("cl", "h1", 10)]),
                vec![mutation("h1", "h-a", Some(0), 0, 1, "merged")],
                vec![conflict("h1", "h-a", Resolution::Merged)],
            ),
            // Stale: the document does not have version 5.
            with_history(
                lane(&b, 5, Some(v(6)), vec![reply("cl", "h2", 10)]),
                vec![mutation("h2", "h-b", Some(4), 5, 6, "merged")],
                vec![conflict("h2", "h-b", Resolution::Merged)],
            ),
            // Two lanes of one document in one batch commit in order.
            with_history(
                lane(&a, 1, Some(v(2)), vec![reply("cl", "h3", 10)]),
                vec![mutation("h3", "h-a", None, 1, 2, "applied")],
                vec![],
            ),
        ])
        .await
        .expect("commit");
    assert_eq!(
        outcomes,
        [
            CommitOutcome::Committed,
            CommitOutcome::Stale,
            CommitOutcome::Committed
        ]
    );
    assert_eq!(store.get(&a).await.expect("get"), v(2));
    let recorded: Vec<String> = history
        .mutations(last, 100)
        .await
        .expect("mutations")
        .into_iter()
        .map(|(_, m)| m.id)
        .collect();
    assert_eq!(
        recorded,
        ["h1", "h3"],
        "the committed lanes' records, in order"
    );
    let conflicts = history
        .conflicts(&ConflictQuery {
            collection: Some("c".into()),
            key: None,
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("conflicts");
    let ids: Vec<&str> = conflicts.iter().map(|c| c.mutation_id.as_str()).collect();
    assert_eq!(ids, ["h1"], "the stale lane's conflict is not kept");
}

/// The same `(client, id)` decided at once on two documents (by two
/// processes): the reply stored first gates the other's write, which is
/// refused whole rather than applied without its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_reply_stored_meanwhile_keeps_the_write_out() {
    let url = fresh_postgres_database().await;
    let store = std::sync::Arc::new(PostgresStore::connect(&url).await.expect("connect"));
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let mut other = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO sluice_replies (client, id, fingerprint, status, body, at_ms) \
         VALUES ('c', 'twice', 1, 0, '{}', 1)",
    )
    .execute(&mut *other)
    .await
    .expect("the other's reply");
    let doc = DocKey::new("gate", "b");
    let write = Document {
        version: 1,
        item: item(json!({"n": 1})),
    };
    let committing = {
        let (store, doc) = (store.clone(), doc.clone());
        tokio::spawn(async move {
            store
                .commit(&[lane(&doc, 0, Some(write), vec![reply("c", "twice", 5)])])
                .await
        })
    };
    // The commit waits on the other's uncommitted reply, then finds it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    other.commit().await.expect("the other commits");
    let result = committing.await.expect("join");
    assert!(result.is_err(), "the commit is refused whole: {result:?}");
    assert_eq!(
        store.get(&doc).await.expect("get"),
        Document::absent(),
        "nothing of it was written"
    );
    // Its resend finds the stored reply.
    let again = store
        .commit(&[lane(
            &doc,
            0,
            Some(Document {
                version: 1,
                item: item(json!({"n": 1})),
            }),
            vec![reply("c", "twice", 6)],
        )])
        .await
        .expect("commit");
    assert_eq!(again, [CommitOutcome::Resent]);
}

/// Pre-emptive locking on PostgreSQL: a writer that bypasses Sluice waits
/// while a lane holds its document, so the lane's commit is not stale; a
/// lock dropped without a commit writes nothing and frees the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_locked_document_makes_an_outside_writer_wait() {
    let url = fresh_postgres_database().await;
    let store = PostgresStore::connect(&url).await.expect("connect");
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let doc = DocKey::new("locked", "a");
    let first = Document {
        version: 1,
        item: item(json!({"n": 1})),
    };
    let outcome = store
        .commit(&[lane(&doc, 0, Some(first.clone()), vec![reply("c", "1", 1)])])
        .await
        .expect("commit");
    assert_eq!(outcome, [CommitOutcome::Committed]);

    let held = store
        .lock(&doc)
        .await
        .expect("lock")
        .expect("PostgreSQL locks");
    assert_eq!(held.document(), &first);
    let outside = {
        let pool = pool.clone();
        tokio::spawn(async move {
            sqlx::query(
                "UPDATE sluice_documents SET version = version + 1 \
                 WHERE collection = 'locked' AND key = 'a'",
            )
            .execute(&pool)
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !outside.is_finished(),
        "the outside writer waits for the lock"
    );
    let second = Document {
        version: 2,
        item: item(json!({"n": 2})),
    };
    let outcome = held
        .commit(&lane(
            &doc,
            1,
            Some(second.clone()),
            vec![reply("c", "2", 2)],
        ))
        .await
        .expect("locked commit");
    assert_eq!(
        outcome,
        CommitOutcome::Committed,
        "not stale: it held the row"
    );
    outside
        .await
        .expect("join")
        .expect("the outside write, after");
    assert_eq!(store.get(&doc).await.expect("get").version, 3);
    assert!(store.reply("c", "2").await.expect("reply").is_some());

    // Dropped without a commit: nothing written, the row free again.
    let held = store.lock(&doc).await.expect("lock").expect("locks");
    assert_eq!(held.document().version, 3);
    drop(held);
    let freed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sqlx::query(
            "UPDATE sluice_documents SET version = version + 1 \
             WHERE collection = 'locked' AND key = 'a'",
        )
        .execute(&pool),
    )
    .await;
    assert!(
        matches!(freed, Ok(Ok(_))),
        "the row was released: {freed:?}"
    );
    assert_eq!(store.get(&doc).await.expect("get").version, 4);

    // Under a lock the commit still checks its version: a lane decided
    // against an older one is stale, and writes nothing.
    let held = store.lock(&doc).await.expect("lock").expect("locks");
    let outcome = held
        .commit(&lane(&doc, 3, Some(second), vec![reply("c", "3", 3)]))
        .await
        .expect("locked commit");
    assert_eq!(outcome, CommitOutcome::Stale);
    assert!(store.reply("c", "3").await.expect("reply").is_none());
}

/// The embedded stores have no lock to offer: lanes keep their
/// compare-and-set.
#[tokio::test]
async fn embedded_stores_offer_no_lock() {
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = SqliteStore::open(&dir.path().join("s.db"))
        .await
        .expect("sqlite");
    let doc = DocKey::new("c", "k");
    assert!(sqlite.lock(&doc).await.expect("lock").is_none());
    let memory = MemoryStore::new();
    assert!(memory.lock(&doc).await.expect("lock").is_none());
}
