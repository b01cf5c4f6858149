//! Merge patch and automerge on any two objects: never a panic; a merge
//! patch applied twice is applied once (RFC 7396 is idempotent) and leaves
//! no null; automerge keeps every field the server had that the incoming
//! item did not name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice_server::resolve::merge::{automerge, json_depth, merge_patch};

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(pair)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let [Value::Object(doc), Value::Object(patch), rest @ ..] = pair.as_slice() else {
        return;
    };
    let set_fields: Vec<String> = rest
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let mut once = doc.clone();
    merge_patch(&mut once, patch);
    let mut twice = once.clone();
    merge_patch(&mut twice, patch);
    assert_eq!(once, twice, "a merge patch applied twice differs from once");
    fn no_null_from(
        patch: &serde_json::Map<String, Value>,
        merged: &serde_json::Map<String, Value>,
    ) {
        for (k, v) in patch {
            match (v, merged.get(k)) {
                (Value::Null, found) => assert!(found.is_none(), "null kept for {k}"),
                (Value::Object(p), Some(Value::Object(m))) => no_null_from(p, m),
                (_, found) => assert!(found.is_some(), "patched field {k} missing"),
            }
        }
    }
    no_null_from(patch, &once);
    let merged = automerge(doc, patch, &set_fields);
    for (k, v) in doc {
        if !patch.contains_key(k) {
            assert_eq!(merged.get(k), Some(v), "automerge lost the server's {k}");
        }
    }
    let _ = json_depth(&Value::Object(merged));
});
