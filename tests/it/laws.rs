//! Laws, checked on generated inputs: a mutation without a conflict is a
//! merge patch, and a version rises by exactly one per applied mutation.

use proptest::prelude::*;
use serde_json::{Map, Value};
use sluice_server::clock::{SharedClock, SystemClock};
use sluice_server::dispatch::{Engine, EngineConfig};
use sluice_server::history::MemoryHistory;
use sluice_server::model::{DocKey, Document, Mutation, Op};
use sluice_server::resolve::merge::merge_patch;
use sluice_server::resolve::{CollectionConfig, Handler, Resolver, ScriptLimits};
use sluice_server::store::MemoryStore;
use std::sync::Arc;

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        "[a-c]{0,2}".prop_map(Value::from)
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-d]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-d]", json_value(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn mutation(
    id: usize,
    op: Op,
    value: Option<Map<String, Value>>,
    base_version: Option<u64>,
) -> Mutation {
    Mutation {
        id: format!("m{id}"),
        client: None,
        doc: DocKey::new("c", "k"),
        op,
        value,
        base_version,
        ts_ms: None,
        lease: None,
        shadow: false,
        fingerprint: id as u64,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// With base_version equal to the current version (or absent), every handler
    /// gives exactly the merge patch.
    #[test]
    fn a_merge_without_conflict_is_the_merge_patch(doc in json_object(), patch in json_object(), conditional in any::<bool>(), handler in 0..2usize) {
        let clock: SharedClock = SystemClock::shared();
        let resolver = Resolver::new(clock, ScriptLimits::default());
        let config = CollectionConfig::with_handler([Handler::Optimistic, Handler::Automerge][handler].clone());
        let current = Document { version: 4, item: Some(doc.clone()) };
        let m = mutation(0, Op::Patch, Some(patch.clone()), conditional.then_some(4));
        let step = runtime().block_on(resolver.decide(&current, &m, &config));
        let mut expected = doc;
        merge_patch(&mut expected, &patch);
        prop_assert_eq!(step.after, Document { version: 5, item: Some(expected) });
        prop_assert!(step.conflict.is_none());
    }
}

#[derive(Clone, Debug)]
enum Action {
    Put(Map<String, Value>),
    Patch(Map<String, Value>),
    Delete,
}

fn action() -> impl Strategy<Value = (Action, Option<u64>)> {
    let act = prop_oneof![
        json_object().prop_map(Action::Put),
        json_object().prop_map(Action::Patch),
        Just(Action::Delete)
    ];
    (act, prop::option::of(0u64..6))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Through the real engine (lanes, coalescing, commit), whatever the mix of
    /// ops, bases and handlers: the version equals the number of applied or
    /// merged mutations.
    #[test]
    fn versions_rise_by_one_per_applied_mutation(actions in prop::collection::vec(action(), 1..24), automerge in any::<bool>()) {
        runtime().block_on(async move {
            let clock: SharedClock = SystemClock::shared();
            let store = Arc::new(MemoryStore::new());
            let config = EngineConfig {
                default_handler: if automerge { Handler::Automerge } else { Handler::Optimistic },
                ..EngineConfig::default()
            };
            let engine = Engine::start(store.clone(), Arc::new(MemoryHistory::new()), Resolver::new(clock.clone(), ScriptLimits::default()), clock, config)
                .await
                .expect("engine");
            // Submitted together so that the lane coalesces them.
            let mut pending = Vec::new();
            for (i, (act, base)) in actions.iter().enumerate() {
                let m = match act {
                    Action::Put(v) => mutation(i, Op::Put, Some(v.clone()), *base),
                    Action::Patch(v) => mutation(i, Op::Patch, Some(v.clone()), *base),
                    Action::Delete => mutation(i, Op::Delete, None, *base),
                };
                let engine = engine.clone();
                pending.push(tokio::spawn(async move { crate::support::submit(&engine, m).await }));
            }
            let mut applied = 0u64;
            for reply in pending {
                let reply = reply.await.expect("task");
                let body: Value = serde_json::from_str(&reply.body).expect("JSON");
                match body["outcome"].as_str() {
                    Some("applied") | Some("merged") => applied += 1,
                    Some("rejected") => assert_eq!(reply.status, 409),
                    _ => assert_eq!(reply.status, 404, "{body}"),
                }
            }
            let doc = engine.document(&DocKey::new("c", "k")).await.expect("get");
            assert_eq!(doc.version, applied);
        });
    }
}
