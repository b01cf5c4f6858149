//! A mutation's body as the API reads it: never a panic, and what is
//! accepted can be written back out and is accepted again, unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_server::api::wire::{parse_mutation, parse_mutation_value, validate_collection, validate_key};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = parse_mutation(data, || "generated".into()) else {
        // A batch's element goes through the same checks after a plain parse.
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
            let _ = parse_mutation_value(value, || "generated".into());
        }
        return;
    };
    assert!(validate_collection(&m.doc.collection).is_ok());
    assert!(validate_key(&m.doc.key).is_ok());
    let again = m.to_json().into_bytes();
    let back = parse_mutation(&again, || "generated".into())
        .unwrap_or_else(|e| panic!("accepted, written out, refused: {e}"));
    assert_eq!(back.value, m.value, "the value changed on the way back");
    assert_eq!(back.fingerprint, m.fingerprint);
});
