//! A script handler's ctx in and answer out: any document passes through
//! JavaScript and back as the same value (numbers compared as the doubles
//! JavaScript holds), and any answer is read or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use sluice_server::clock::SystemClock;
use sluice_server::resolve::{HandlerAnswer, ScriptLimits, parse_answer, script};

const ECHO: &str = "function resolve(ctx) { return {action: 'resolve', item: ctx.incoming}; }";
const PASS: &str = "function resolve(ctx) { return ctx.existing; }";

/// Equal as JavaScript sees them: numbers by their double.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = parse_answer(&value);
    let clock = SystemClock::shared();
    let limits = ScriptLimits {
        time_ms_max: 1_000,
        ..ScriptLimits::default()
    };
    // Whatever the value, as an answer handed back by a script.
    let _ = script::run(PASS, &json!({"existing": value}), limits, &clock);
    let Value::Object(item) = &value else { return };
    let ctx = json!({"incoming": value});
    match script::run(ECHO, &ctx, limits, &clock) {
        Ok(HandlerAnswer::Resolve(back)) => assert!(
            same(&Value::Object(back.clone()), &Value::Object(item.clone())),
            "{item:?} came back as {back:?}"
        ),
        // Deep nesting past the sandbox's stack, or past the answer's depth bound.
        Err(_) => {}
        Ok(other) => panic!("{item:?} came back as {other:?}"),
    }
});
