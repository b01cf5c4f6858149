//! The custom-logic sandbox: a user's JavaScript `resolve(ctx)` in QuickJS.
//!
//! Each call gets a fresh runtime that is dropped after it, so nothing leaks
//! from one call (or one collection) to the next. The runtime has no module
//! loader and none of quickjs-libc's `std`/`os` objects, so a script can reach
//! neither files nor the network. Time is bounded by an interrupt handler that
//! checks a deadline, memory by QuickJS's own allocator limit, stack depth by
//! its stack limit. Scripts are CPU work: callers run them on a blocking thread.

use super::{HandlerAnswer, parse_answer};
use crate::clock::SharedClock;
use rquickjs::{Context, Ctx, Function, Runtime, Value as JsValue};
use serde_json::Value;
use std::time::Duration;

/// Default time limit of one script call.
pub const SCRIPT_TIME_MS_DEFAULT: u64 = 50;
/// Default memory limit of one script runtime.
pub const SCRIPT_MEMORY_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// QuickJS's own stack limit; deep recursion throws instead of crashing the thread.
const SCRIPT_STACK_BYTES_MAX: usize = 512 * 1024;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScriptLimits {
    pub time_ms_max: u64,
    pub memory_bytes_max: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            time_ms_max: SCRIPT_TIME_MS_DEFAULT,
            memory_bytes_max: SCRIPT_MEMORY_BYTES_DEFAULT,
        }
    }
}

/// Why a script could not give an answer; the text becomes the rejection reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScriptError {
    #[error("script exceeded its time limit of {0} ms")]
    TimeLimit(u64),
    #[error("script exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    #[error("script threw: {0}")]
    Threw(String),
    #[error("script does not define a function resolve(ctx)")]
    NoResolve,
    #[error("script returned malformed output: {0}")]
    Malformed(String),
    #[error("script engine failed: {0}")]
    Engine(String),
}

/// Loads `source` and checks that it defines `resolve`, under the same limits
/// as a call: what `PUT /v1/collections` runs before accepting a script.
pub fn check(source: &str, limits: ScriptLimits, clock: &SharedClock) -> Result<(), ScriptError> {
    with_sandbox(source, limits, clock, |_ctx, _resolve| Ok(()))
}

/// Runs `resolve(ctx)` and reads its answer.
pub fn run(
    source: &str,
    call_ctx: &Value,
    limits: ScriptLimits,
    clock: &SharedClock,
) -> Result<HandlerAnswer, ScriptError> {
    let input = call_ctx.to_string();
    let output = with_sandbox(source, limits, clock, |ctx, resolve| {
        let arg = ctx.json_parse(input.clone())?;
        let result: JsValue = resolve.call((arg,))?;
        let text = ctx.json_stringify(result)?;
        match text {
            Some(s) => Ok(Some(s.to_string()?)),
            None => Ok(None),
        }
    })?;
    let Some(text) = output else {
        return Err(ScriptError::Malformed("resolve returned undefined".into()));
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|e| ScriptError::Malformed(e.to_string()))?;
    parse_answer(&value).map_err(ScriptError::Malformed)
}

fn with_sandbox<T>(
    source: &str,
    limits: ScriptLimits,
    clock: &SharedClock,
    body: impl for<'js> FnOnce(&Ctx<'js>, Function<'js>) -> rquickjs::Result<T>,
) -> Result<T, ScriptError> {
    let runtime = Runtime::new().map_err(|e| ScriptError::Engine(e.to_string()))?;
    runtime.set_memory_limit(limits.memory_bytes_max);
    runtime.set_max_stack_size(SCRIPT_STACK_BYTES_MAX);
    let deadline = clock.elapsed() + Duration::from_millis(limits.time_ms_max);
    let handler_clock = clock.clone();
    runtime.set_interrupt_handler(Some(Box::new(move || handler_clock.elapsed() >= deadline)));
    let context = Context::full(&runtime).map_err(|e| ScriptError::Engine(e.to_string()))?;
    let timed_out = || clock.elapsed() >= deadline;

    context.with(|ctx| {
        let loaded = ctx.eval::<(), _>(source.as_bytes().to_vec());
        if let Err(e) = loaded {
            return Err(classify(&ctx, e, limits, timed_out()));
        }
        let resolve = match ctx.globals().get::<_, JsValue>("resolve") {
            Ok(v) if v.is_function() => match v.into_function() {
                Some(f) => f,
                None => return Err(ScriptError::NoResolve),
            },
            Ok(_) => return Err(ScriptError::NoResolve),
            Err(e) => return Err(classify(&ctx, e, limits, timed_out())),
        };
        body(&ctx, resolve).map_err(|e| classify(&ctx, e, limits, timed_out()))
    })
}

/// Turns an engine error into the reason a person reads. An interrupt surfaces
/// as an uncatchable "interrupted" exception, and an allocation over the limit
/// as "out of memory"; both are told apart from a script's own `throw`.
fn classify(
    ctx: &Ctx<'_>,
    error: rquickjs::Error,
    limits: ScriptLimits,
    timed_out: bool,
) -> ScriptError {
    let message = match error {
        rquickjs::Error::Exception => describe_exception(ctx),
        other => other.to_string(),
    };
    if timed_out || message.contains("interrupted") {
        ScriptError::TimeLimit(limits.time_ms_max)
    } else if message.contains("out of memory") || message.contains("Allocation") {
        ScriptError::MemoryLimit(limits.memory_bytes_max)
    } else {
        ScriptError::Threw(message)
    }
}

fn describe_exception(ctx: &Ctx<'_>) -> String {
    let caught = ctx.catch();
    if let Some(exception) = caught.as_exception() {
        let message = exception.message().unwrap_or_default();
        if message.is_empty() {
            return "an exception without a message".into();
        }
        return message;
    }
    if caught.is_null() || caught.is_undefined() {
        // QuickJS throws null when it could not even allocate the error object.
        return "out of memory".into();
    }
    ctx.json_stringify(caught)
        .ok()
        .flatten()
        .and_then(|s| s.to_string().ok())
        .unwrap_or_else(|| "a value that is not JSON".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use serde_json::json;

    fn call(source: &str) -> Result<HandlerAnswer, ScriptError> {
        run(
            source,
            &json!({"existing": {"n": 1}, "incoming": {"n": 2}}),
            ScriptLimits::default(),
            &SystemClock::shared(),
        )
    }

    #[test]
    fn a_script_resolves_rejects_or_removes() {
        let merged = call(
            "function resolve(ctx) { return {action: 'resolve', item: {n: ctx.existing.n + ctx.incoming.n}}; }",
        );
        assert_eq!(
            merged,
            Ok(HandlerAnswer::Resolve(
                json!({"n": 3}).as_object().cloned().unwrap_or_default()
            ))
        );
        let rejected = call("function resolve(ctx) { return {action: 'reject', reason: 'no'}; }");
        assert_eq!(rejected, Ok(HandlerAnswer::Reject("no".into())));
        assert_eq!(
            call("function resolve() { return {action: 'remove'}; }"),
            Ok(HandlerAnswer::Remove)
        );
    }

    #[test]
    fn failures_are_reasons() {
        assert!(
            matches!(call("function resolve() { throw new Error('boom'); }"), Err(ScriptError::Threw(m)) if m.contains("boom"))
        );
        assert!(matches!(
            call("function resolve() { return 7; }"),
            Err(ScriptError::Malformed(_))
        ));
        assert!(matches!(
            call("function resolve() { return {action: 'resolve', item: [1]}; }"),
            Err(ScriptError::Malformed(_))
        ));
        assert!(matches!(
            call("function resolve() {}"),
            Err(ScriptError::Malformed(_))
        ));
        assert_eq!(call("var x = 1;"), Err(ScriptError::NoResolve));
        assert!(matches!(
            call("function resolve( {"),
            Err(ScriptError::Threw(_))
        ));
        assert!(matches!(
            call("function resolve() { return resolve(); }"),
            Err(ScriptError::Threw(_))
        ));
    }

    #[test]
    fn no_file_or_network_objects_exist() {
        let probe = "function resolve() { return {action: 'reject', reason: [typeof std, typeof os, typeof require, typeof fetch, typeof XMLHttpRequest].join(',')}; }";
        assert_eq!(
            call(probe),
            Ok(HandlerAnswer::Reject(
                "undefined,undefined,undefined,undefined,undefined".into()
            ))
        );
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use crate::clock::SystemClock;
    use serde_json::json;
    use std::time::Instant;

    #[test]
    fn an_endless_loop_is_cut_off_at_the_time_limit() {
        let limits = ScriptLimits {
            time_ms_max: 50,
            ..ScriptLimits::default()
        };
        let started = Instant::now();
        let result = run(
            "function resolve() { for (;;) {} }",
            &json!({}),
            limits,
            &SystemClock::shared(),
        );
        assert_eq!(result, Err(ScriptError::TimeLimit(50)));
        // Cut off near its limit, not after some much later safety net.
        assert!(
            started.elapsed().as_millis() < 2_000,
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_memory_bomb_is_cut_off_at_the_memory_limit() {
        let limits = ScriptLimits {
            memory_bytes_max: 16 * 1024 * 1024,
            time_ms_max: 5_000,
        };
        let bomb = "function resolve() { let a = []; for (;;) { a.push('x'.repeat(1 << 16) + a.length); } }";
        assert_eq!(
            run(bomb, &json!({}), limits, &SystemClock::shared()),
            Err(ScriptError::MemoryLimit(limits.memory_bytes_max))
        );
        let objects = "function resolve() { const a = []; for (;;) { a.push({i: a.length, s: 'y' + a.length}); } }";
        assert_eq!(
            run(objects, &json!({}), limits, &SystemClock::shared()),
            Err(ScriptError::MemoryLimit(limits.memory_bytes_max))
        );
    }

    #[test]
    fn a_timed_out_script_at_load_is_reported_as_such() {
        let limits = ScriptLimits {
            time_ms_max: 20,
            ..ScriptLimits::default()
        };
        assert_eq!(
            check("while (true) {}", limits, &SystemClock::shared()),
            Err(ScriptError::TimeLimit(20))
        );
    }
}
