//! The dispatcher's own guarantees, driven directly (no HTTP), over the
//! in-memory store wrapped to misbehave on cue.

use serde_json::{Value, json};
use sluice_server::clock::{SharedClock, SystemClock};
use sluice_server::dispatch::{Engine, EngineConfig};
use sluice_server::history::MemoryHistory;
use sluice_server::model::{DocKey, Document, Mutation, Op};
use sluice_server::resolve::{Resolver, ScriptLimits};
use sluice_server::store::{
    Accepted, CommitOutcome, LaneCommit, MemoryStore, Store, StoreError, StoredReply,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// A store that can stall its reply lookups, write behind Sluice's back
/// before a commit, or fail commits.
#[derive(Default)]
struct Unruly {
    inner: MemoryStore,
    stall_lookups: AtomicBool,
    foreign_writes_before_commit: AtomicU32,
    /// Percent chance that a commit meets a foreign write first, drawn from a
    /// seeded generator: outcomes nobody can know before the commit.
    foreign_write_percent: AtomicU32,
    coin: std::sync::Mutex<u64>,
    fail_commits: AtomicBool,
}

impl Unruly {
    fn flip(&self, percent: u32) -> bool {
        let mut seed = self.coin.lock().expect("coin");
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((*seed >> 33) % 100) < u64::from(percent)
    }
}

crate::store_over_memory!(Unruly, {
    async fn get(&self, doc: &DocKey) -> Result<Document, StoreError> {
        self.inner.get(doc).await
    }

    async fn commit(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected".into()));
        }
        let percent = self.foreign_write_percent.load(Ordering::SeqCst);
        let forced = self.foreign_writes_before_commit.load(Ordering::SeqCst) > 0;
        if forced || (percent > 0 && batch.iter().any(|l| l.write.is_some()) && self.flip(percent))
        {
            if forced {
                self.foreign_writes_before_commit
                    .fetch_sub(1, Ordering::SeqCst);
            }
            for lane in batch {
                self.inner
                    .write_behind_sluice(&lane.doc, json!({"foreign": true}).as_object().cloned());
            }
        }
        self.inner.commit(batch).await
    }

    async fn reply(&self, client: &str, id: &str) -> Result<Option<StoredReply>, StoreError> {
        if self.stall_lookups.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        self.inner.reply(client, id).await
    }
});

async fn engine(store: Arc<Unruly>) -> Engine {
    engine_with(store, EngineConfig::default()).await
}

async fn engine_with(store: Arc<dyn Store>, config: EngineConfig) -> Engine {
    let clock: SharedClock = SystemClock::shared();
    Engine::start(
        store,
        Arc::new(MemoryHistory::new()),
        Resolver::new(clock.clone(), ScriptLimits::default()),
        clock,
        config,
    )
    .await
    .expect("engine")
}

fn patch(id: &str, base_version: Option<u64>) -> Mutation {
    Mutation {
        id: id.into(),
        client: Some("c".into()),
        doc: DocKey::new("c", "k"),
        op: Op::Patch,
        value: json!({"n": 1}).as_object().cloned(),
        base_version,
        ts_ms: None,
        lease: None,
        shadow: false,
        fingerprint: 42,
    }
}

fn body(reply: &sluice_server::api::Reply) -> Value {
    serde_json::from_str(&reply.body).expect("JSON")
}

/// A resend of a decided mutation reaches its lane, whose commit finds its
/// stored reply and writes nothing; the reply is looked up and answered. A
/// lookup that never answers holds neither the lane nor the id for longer
/// than a client waits: the resend gets 503 ("resend with the same id"), and
/// once the store answers again, the original answer, applied once.
#[tokio::test]
async fn a_stalled_lookup_of_a_resend_frees_its_lane_and_its_id() {
    let store = Arc::new(Unruly::default());
    let clock: SharedClock = SystemClock::shared();
    let engine = Engine::start(
        store.clone(),
        Arc::new(MemoryHistory::new()),
        Resolver::new(clock.clone(), ScriptLimits::default()),
        clock,
        EngineConfig {
            decide_timeout: Duration::from_millis(200),
            ..EngineConfig::default()
        },
    )
    .await
    .expect("engine");
    let original = crate::support::submit(&engine, patch("m1", None)).await;
    assert_eq!(original.status, 200, "{}", original.body);
    store.stall_lookups.store(true, Ordering::SeqCst);
    let stalled = tokio::time::timeout(
        Duration::from_secs(5),
        crate::support::submit(&engine, patch("m1", None)),
    )
    .await
    .expect("a client never waits past its time-out");
    assert_eq!(stalled.status, 503, "{}", stalled.body);
    // The lane is free: another mutation of the document is decided.
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        crate::support::submit(&engine, patch("m2", None)),
    )
    .await
    .expect("the lane is not held by the stalled lookup");
    assert_eq!(
        (next.status, body(&next)["version"].clone()),
        (200, json!(2))
    );
    store.stall_lookups.store(false, Ordering::SeqCst);
    let mut reply = stalled;
    for _ in 0..20 {
        reply = tokio::time::timeout(
            Duration::from_secs(5),
            crate::support::submit(&engine, patch("m1", None)),
        )
        .await
        .expect("the resend is not stuck behind the stalled lookup");
        if reply.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reply, original, "the original answer, applied once");
    assert_eq!(engine.stats().queue_depth, 0);
}

#[tokio::test]
async fn a_writer_behind_sluice_is_detected_and_the_batch_decided_again() {
    let store = Arc::new(Unruly::default());
    let engine = engine(store.clone()).await;
    let first = crate::support::submit(&engine, patch("m1", Some(0))).await;
    assert_eq!(first.status, 200);
    // Two foreign writes land between Sluice's read and its compare-and-set.
    store
        .foreign_writes_before_commit
        .store(2, Ordering::SeqCst);
    let reply = crate::support::submit(&engine, patch("m2", Some(1))).await;
    let answer = body(&reply);
    // Decided again until the version holds still: against version 3, a stale base, rejected.
    assert_eq!(
        (reply.status, answer["version"].clone()),
        (409, json!(3)),
        "{answer}"
    );
    assert_eq!(answer["item"], json!({"foreign": true}));
    let doc = engine.document(&DocKey::new("c", "k")).await.expect("get");
    assert_eq!(
        doc.version, 3,
        "nothing of the rejected mutation was written"
    );
}

#[tokio::test]
async fn a_failed_commit_answers_503_and_a_resend_applies_once() {
    let store = Arc::new(Unruly::default());
    let engine = engine(store.clone()).await;
    store.fail_commits.store(true, Ordering::SeqCst);
    let failed = crate::support::submit(&engine, patch("m1", None)).await;
    assert_eq!((failed.status, failed.retry_after_s), (503, Some(1)));
    assert_eq!(body(&failed)["error"]["code"], json!("store_unavailable"));
    store.fail_commits.store(false, Ordering::SeqCst);
    let applied = crate::support::submit(&engine, patch("m1", None)).await;
    assert_eq!(
        (applied.status, body(&applied)["version"].clone()),
        (200, json!(1))
    );
    let again = crate::support::submit(&engine, patch("m1", None)).await;
    assert_eq!(again, applied);
    assert_eq!(
        engine
            .document(&DocKey::new("c", "k"))
            .await
            .expect("get")
            .version,
        1
    );
}

/// Submits `n` patches to one key, each with the base the previous answer
/// named, and returns (score, conflict) per mutation. `stale_every` makes every
/// k-th base deliberately stale (a signal the model can learn); otherwise
/// conflicts come only from foreign writes the store injects at commit time.
async fn scored_outcomes(
    engine: &Engine,
    n: usize,
    stale_every: Option<usize>,
) -> Vec<(f64, bool)> {
    let mut version = 0;
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let stale = stale_every.is_some_and(|k| i % k == 0) && version > 0;
        let base = if stale { version - 1 } else { version };
        let reply = crate::support::submit(engine, patch(&format!("p{i}"), Some(base))).await;
        let answer = body(&reply);
        version = answer["version"].as_u64().expect("version");
        let score = answer["score"].as_f64().expect("score");
        pairs.push((score, !answer["conflict"].is_null()));
    }
    pairs
}

#[tokio::test]
async fn the_predictor_never_sees_an_outcome_before_scoring_it() {
    // Half the commits meet a foreign write: a coin flipped after the score is
    // fixed. A predictor that peeked would rank them perfectly; one that does
    // not can do no better than chance.
    let store = Arc::new(Unruly::default());
    store.foreign_write_percent.store(50, Ordering::SeqCst);
    let blind = engine(store).await;
    let pairs = scored_outcomes(&blind, 1_500, None).await;
    let conflicts = pairs.iter().filter(|(_, c)| *c).count();
    assert!((600..=900).contains(&conflicts), "{conflicts} conflicts");
    let auc = sluice_server::predict::quality::exact_auc(&pairs).expect("both classes");
    assert!(
        (0.4..0.6).contains(&auc),
        "AUC {auc}: the score knew the coin"
    );

    // Control: when the conflict is knowable before the commit (a stale base),
    // the same machinery does learn it, so the test above could have failed.
    let store = Arc::new(Unruly::default());
    let sighted = engine(store).await;
    let pairs = scored_outcomes(&sighted, 1_500, Some(4)).await;
    let auc = sluice_server::predict::quality::exact_auc(&pairs[500..]).expect("both classes");
    assert!(auc > 0.95, "AUC {auc}");

    // The score an answer carries is the one fixed at enqueue, and the history has it.
    let report = sighted.model_report();
    assert_eq!(report.learned, 1_500);
}

/// A store whose first lookup of a mutation's place, once armed, answers as
/// the store was and then promotes the mutation as the validator does (the
/// accept log written, then the staging area left): a promotion that falls
/// between the status lookup's reads.
#[derive(Default)]
struct PromotedMidLookup {
    inner: MemoryStore,
    armed: AtomicBool,
}

impl PromotedMidLookup {
    async fn promote_once(&self, client: &str, id: &str) -> Result<(), StoreError> {
        if self.armed.swap(false, Ordering::SeqCst)
            && let Some(entry) = self.inner.staged(client, id).await?
        {
            self.inner.accept(&entry).await?;
            self.inner.unstage(client, id).await?;
        }
        Ok(())
    }
}

crate::store_over_memory!(PromotedMidLookup, own_lookups {
    async fn get(&self, doc: &DocKey) -> Result<Document, StoreError> {
        self.inner.get(doc).await
    }

    async fn commit(&self, batch: &[LaneCommit]) -> Result<Vec<CommitOutcome>, StoreError> {
        self.inner.commit(batch).await
    }

    async fn reply(&self, client: &str, id: &str) -> Result<Option<StoredReply>, StoreError> {
        self.inner.reply(client, id).await
    }

    async fn accepted(
        &self,
        client: &str,
        id: &str,
    ) -> Result<Option<Accepted>, StoreError> {
        let before = self.inner.accepted(client, id).await;
        self.promote_once(client, id).await?;
        before
    }

    async fn staged(
        &self,
        client: &str,
        id: &str,
    ) -> Result<Option<Accepted>, StoreError> {
        let before = self.inner.staged(client, id).await;
        self.promote_once(client, id).await?;
        before
    }
});

/// A staged mutation promoted while its status is looked up is found,
/// staged or queued, never nowhere (`GET /v1/mutations/{id}` answered 404
/// for it, and a client following it took it for gone).
#[tokio::test]
async fn a_mutation_promoted_during_its_status_lookup_is_still_found() {
    let store = Arc::new(PromotedMidLookup::default());
    let mut config = EngineConfig::default();
    // The validator stays out of it: the double promotes.
    config.staging.validate_every = Duration::from_secs(3600);
    let engine = engine_with(store.clone(), config).await;
    let m = patch("m1", None);
    let entry = Accepted {
        client: "c".into(),
        id: m.id.clone(),
        fingerprint: m.fingerprint,
        mutation: m.to_json(),
        score: 0.0,
        at_ms: 0,
    };
    assert!(store.inner.stage(&entry, "c").await.expect("stage"));
    store.armed.store(true, Ordering::SeqCst);
    let during = engine.queued_status("c", "m1").await.expect("lookup");
    assert!(
        during.is_some(),
        "a staged mutation on its way into the accept log was found in neither"
    );
    assert!(
        !store.armed.load(Ordering::SeqCst),
        "the promotion happened"
    );
    let after = engine
        .queued_status("c", "m1")
        .await
        .expect("lookup")
        .expect("queued after its promotion");
    assert!(!after.staged, "promoted, it is queued, not staged");
}
