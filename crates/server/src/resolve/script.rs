//! The custom-logic sandbox: a user's JavaScript `resolve(ctx)` in QuickJS.
//!
//! Each call gets a fresh runtime that is dropped after it, so nothing leaks
//! from one call (or one collection) to the next. The runtime has no module
//! loader and none of quickjs-libc's `std`/`os` objects, so a script can reach
//! neither files nor the network. Time is bounded by an interrupt handler that
//! checks a deadline, memory by QuickJS's own allocator limit, stack depth by
//! its stack limit. Scripts are CPU work: the resolver runs them on its script
//! threads (`pool`).

use super::{HandlerAnswer, parse_answer};
use crate::clock::SharedClock;
use rquickjs::allocator::{Allocator, RustAllocator};
use rquickjs::{Context, Ctx, Function, Runtime, Value as JsValue};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Default time limit of one script call.
pub const SCRIPT_TIME_MS_DEFAULT: u64 = 50;
/// Default memory limit of one script runtime.
pub const SCRIPT_MEMORY_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// QuickJS's own stack limit; deep recursion throws instead of crashing the thread.
const SCRIPT_STACK_BYTES_MAX: usize = 512 * 1024;
/// The least wall time a configuration-time check gives a script to load.
const SCRIPT_CHECK_TIME_MS_MIN: u64 = 2_000;

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
    /// `syntax error at line L, column C: what`.
    #[error("script has a {0}")]
    Syntax(String),
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
    // The check measures wall time once, on a machine that may be busy: a
    // valid script refused because the check was descheduled for 50 ms
    // would fail its configuration at random (seen beside a starting
    // browser). It refuses what cannot load at all; a load that needs more
    // than a run's limit fails its runs, which quarantine their mutations.
    let limits = ScriptLimits {
        time_ms_max: limits.time_ms_max.max(SCRIPT_CHECK_TIME_MS_MIN),
        ..limits
    };
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
    let deadline = clock.elapsed() + Duration::from_millis(limits.time_ms_max);
    let refused = Arc::new(AtomicBool::new(false));
    let allocator = DeadlineAllocator {
        clock: clock.clone(),
        deadline,
        in_use: 0,
        limit: limits.memory_bytes_max,
        refused: refused.clone(),
    };
    let runtime =
        Runtime::new_with_alloc(allocator).map_err(|e| ScriptError::Engine(e.to_string()))?;
    runtime.set_max_stack_size(SCRIPT_STACK_BYTES_MAX);
    let handler_clock = clock.clone();
    let out_of_memory = refused.clone();
    // Out of memory ends the script, as it ends a V8 isolate: a script that
    // caught its out-of-memory errors in a loop churned through its whole
    // heap hundreds of times a second, and the page faults and unmaps of
    // that churn slowed every other thread of the process.
    runtime.set_interrupt_handler(Some(Box::new(move || {
        out_of_memory.load(Ordering::Relaxed) || handler_clock.elapsed() >= deadline
    })));
    let context = Context::full(&runtime).map_err(|e| ScriptError::Engine(e.to_string()))?;
    let timed_out = || clock.elapsed() >= deadline;
    // An allocation was refused: a null thrown by the engine is its
    // out-of-memory, not the script's own `throw null`.
    let memory_full = || refused.load(Ordering::Relaxed);
    let fail = |ctx: &Ctx<'_>, e| classify(ctx, e, limits, timed_out(), memory_full());

    context.with(|ctx| {
        let loaded = ctx.eval::<(), _>(source.as_bytes().to_vec());
        if let Err(e) = loaded {
            return Err(fail(&ctx, e));
        }
        let resolve = match ctx.globals().get::<_, JsValue>("resolve") {
            Ok(v) if v.is_function() => match v.into_function() {
                Some(f) => f,
                None => return Err(ScriptError::NoResolve),
            },
            Ok(_) => return Err(ScriptError::NoResolve),
            Err(e) => return Err(fail(&ctx, e)),
        };
        body(&ctx, resolve).map_err(|e| fail(&ctx, e))
    })
}

/// QuickJS's allocator: it enforces the script's memory limit (and says
/// when it refused, which tells the engine's out-of-memory from a script's
/// own `throw null`), and refuses every allocation once the time is up. QuickJS asks its interrupt handler only every ten thousand or so
/// branches, and a script that catches its own out-of-memory errors in a
/// loop (each turn allocating megabytes) passed that many turns only after
/// seconds; now, past the deadline, nothing it tries can allocate, the
/// errors it throws cannot be caught into anything new, and the next check
/// ends it.
struct DeadlineAllocator {
    clock: SharedClock,
    deadline: Duration,
    /// Bytes allocated and not yet freed, and the most there may be.
    in_use: usize,
    limit: usize,
    refused: Arc<AtomicBool>,
}

impl DeadlineAllocator {
    /// Whether `more` bytes may be allocated now.
    fn admits(&self, more: usize) -> bool {
        if self.clock.elapsed() >= self.deadline {
            return false;
        }
        if self.in_use.saturating_add(more) > self.limit {
            self.refused.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts a block that was given out.
    fn given(&mut self, ptr: *mut u8) -> *mut u8 {
        if !ptr.is_null() {
            // SAFETY: a block `RustAllocator` just gave out.
            self.in_use += unsafe { RustAllocator::usable_size(ptr) };
        }
        ptr
    }

    /// Counts a block about to be freed.
    fn taken(&mut self, ptr: *mut u8) {
        if !ptr.is_null() {
            // SAFETY: a live block of `RustAllocator`'s.
            let size = unsafe { RustAllocator::usable_size(ptr) };
            self.in_use = self.in_use.saturating_sub(size);
        }
    }
}

// SAFETY: every call is passed to `RustAllocator` unchanged, or answered
// with a null pointer, which QuickJS handles as an allocation failure (a
// failed `realloc` leaves the old block valid, as it must).
unsafe impl Allocator for DeadlineAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.admits(size) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.alloc(size);
        self.given(ptr)
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        if !self.admits(count.saturating_mul(size)) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.calloc(count, size);
        self.given(ptr)
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        self.taken(ptr);
        // SAFETY: `ptr` came from `RustAllocator` through this allocator.
        unsafe { RustAllocator.dealloc(ptr) }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        let old = if ptr.is_null() {
            0
        } else {
            // SAFETY: a live block of `RustAllocator`'s.
            unsafe { RustAllocator::usable_size(ptr) }
        };
        if !self.admits(new_size.saturating_sub(old)) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `dealloc`.
        let moved = unsafe { RustAllocator.realloc(ptr, new_size) };
        if !moved.is_null() {
            self.in_use = self.in_use.saturating_sub(old);
            self.given(moved);
        }
        moved
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        // SAFETY: as for `dealloc`.
        unsafe { RustAllocator::usable_size(ptr) }
    }
}

/// Turns an engine error into the reason a person reads. An interrupt surfaces
/// as an uncatchable "interrupted" exception, and an allocation over the limit
/// as "out of memory"; both are told apart from a script's own `throw`.
fn classify(
    ctx: &Ctx<'_>,
    error: rquickjs::Error,
    limits: ScriptLimits,
    timed_out: bool,
    memory_full: bool,
) -> ScriptError {
    let message = match error {
        rquickjs::Error::Exception => describe_exception(ctx, memory_full),
        other => other.to_string(),
    };
    if memory_full {
        ScriptError::MemoryLimit(limits.memory_bytes_max)
    } else if timed_out || message.contains("interrupted") {
        ScriptError::TimeLimit(limits.time_ms_max)
    } else if message.contains("out of memory") || message.contains("Allocation") {
        ScriptError::MemoryLimit(limits.memory_bytes_max)
    } else if message.starts_with(SYNTAX_ERROR) {
        ScriptError::Syntax(message)
    } else {
        ScriptError::Threw(message)
    }
}

/// How [`describe_exception`] begins a `SyntaxError`'s description.
const SYNTAX_ERROR: &str = "syntax error at line ";

fn describe_exception(ctx: &Ctx<'_>, memory_full: bool) -> String {
    let caught = ctx.catch();
    if let Some(exception) = caught.as_exception() {
        let message = exception.message().unwrap_or_default();
        let name: Option<String> = exception.get("name").ok();
        if name.as_deref() == Some("SyntaxError") {
            // QuickJS puts the position in the stack: `    at eval_script:2:10`.
            let stack = exception.stack().unwrap_or_default();
            let position = stack
                .lines()
                .find_map(|l| l.trim().strip_prefix("at "))
                .and_then(|at| {
                    let mut parts = at.rsplitn(3, ':');
                    let column = parts.next()?.parse::<u32>().ok()?;
                    let line = parts.next()?.parse::<u32>().ok()?;
                    Some((line, column))
                });
            if let Some((line, column)) = position {
                return format!("{SYNTAX_ERROR}{line}, column {column}: {message}");
            }
        }
        if message.is_empty() {
            return "an exception without a message".into();
        }
        return message;
    }
    if caught.is_null() || caught.is_undefined() {
        // QuickJS throws null when it could not even allocate the error
        // object; with the heap not full, the script threw it.
        if memory_full {
            return "out of memory".into();
        }
        return format!(
            "the script threw {}",
            if caught.is_null() {
                "null"
            } else {
                "undefined"
            }
        );
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
        assert_eq!(
            call("function resolve(ctx) {\n  return {").map_err(|e| e.to_string()),
            Err("script has a syntax error at line 2, column 11: invalid property name".into())
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
            Err(ScriptError::Syntax(_))
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

    /// A script that catches its own out-of-memory errors in a loop ran 2.8
    /// to 4.4 s against a 50 ms limit: QuickJS asked its interrupt handler
    /// only every few thousand turns. Running out of memory now ends it.
    #[test]
    fn a_script_catching_its_out_of_memory_errors_is_ended() {
        let limits = ScriptLimits {
            time_ms_max: 50,
            ..ScriptLimits::default()
        };
        let hostile = "function resolve(ctx){var a=[];for(;;){try{a.push(new Array(100000).fill(1))}catch(e){a=[]}}}";
        let started = Instant::now();
        let result = run(hostile, &json!({}), limits, &SystemClock::shared());
        let took = started.elapsed();
        assert_eq!(
            result,
            Err(ScriptError::MemoryLimit(limits.memory_bytes_max))
        );
        assert!(took.as_millis() < 1_000, "took {took:?}");
        // Never holding much at once: cut off by the clock, however it allocates.
        let quiet = "function resolve(ctx){for(;;){try{new Array(1e6).fill(1)}catch(e){}}}";
        let started = Instant::now();
        let result = run(quiet, &json!({}), limits, &SystemClock::shared());
        assert!(
            matches!(
                result,
                Err(ScriptError::TimeLimit(50) | ScriptError::MemoryLimit(_))
            ),
            "{result:?}"
        );
        assert!(
            started.elapsed().as_millis() < 1_000,
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_thrown_null_is_not_an_out_of_memory() {
        for (thrown, said) in [("null", "threw null"), ("undefined", "threw undefined")] {
            let source = format!("function resolve() {{ throw {thrown}; }}");
            assert!(
                matches!(run(&source, &json!({}), ScriptLimits::default(), &SystemClock::shared()), Err(ScriptError::Threw(m)) if m.contains(said)),
                "{thrown}"
            );
        }
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
            run(
                "while (true) {}",
                &json!({}),
                limits,
                &SystemClock::shared()
            ),
            Err(ScriptError::TimeLimit(20))
        );
        // A configuration check allows a busy machine more time, not forever.
        assert_eq!(
            check("while (true) {}", limits, &SystemClock::shared()),
            Err(ScriptError::TimeLimit(SCRIPT_CHECK_TIME_MS_MIN))
        );
    }
}
