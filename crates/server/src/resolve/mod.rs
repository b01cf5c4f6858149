//! Deciding mutations: conflict detection at apply time and the three modes of
//! resolution (apply, built-in strategy, custom logic).
//!
//! [`Resolver::decide`] takes the document as it stands and one mutation and
//! returns the verdict and the document after it. It never touches the store:
//! the dispatcher reads, folds a lane's mutations through `decide` one by one
//! (coalescing), and writes the end state with one compare-and-set.
//!
//! Invariants: a conflict is `base_version` given and different from the
//! current version; every write raises the version by exactly one; a handler
//! that fails rejects the mutation and writes nothing.

mod pool;
pub mod script;
mod webhook;

pub use pool::threads_default as script_threads_default;
pub use script::{ScriptError, ScriptLimits};
pub use sluice_core::resolve::{
    CollectionConfig, Handler, HandlerAnswer, OnHandlerFailure, Step, VALUE_DEPTH_MAX,
    WEBHOOK_TIMEOUT_MS_MAX, access, merge, parse_answer, result_too_large,
};
pub use webhook::WebhookPolicy;

use sluice_core::resolve::{
    Conflict, apply, automerge_answer, bounded, resolve_context, stale_reason,
};

use crate::clock::SharedClock;
use crate::model::{Document, Mutation};

pub struct Resolver {
    clock: SharedClock,
    script_limits: ScriptLimits,
    scripts: pool::ScriptPool,
    http: reqwest::Client,
    webhook_policy: WebhookPolicy,
    /// Counts handler runs; the engine sets it, a bare resolver counts nothing.
    telemetry: Option<std::sync::Arc<crate::telemetry::Telemetry>>,
    /// The largest document a handler may make; the engine sets it.
    document_bytes_max: usize,
}

impl Resolver {
    pub fn new(clock: SharedClock, script_limits: ScriptLimits) -> Self {
        let webhook_policy = WebhookPolicy::default();
        Resolver {
            scripts: pool::ScriptPool::new(pool::threads_default(), clock.clone()),
            clock,
            script_limits,
            http: webhook::client(&webhook_policy),
            webhook_policy,
            telemetry: None,
            document_bytes_max: usize::MAX,
        }
    }

    /// Webhooks may reach what `policy` allows (by default, no loopback,
    /// link-local, private or unspecified address).
    pub fn with_webhook_policy(mut self, policy: WebhookPolicy) -> Self {
        self.http = webhook::client(&policy);
        self.webhook_policy = policy;
        self
    }

    /// Scripts run on `threads` threads of their own (at least one).
    pub fn with_script_threads(mut self, threads: usize) -> Self {
        self.scripts = pool::ScriptPool::new(threads, self.clock.clone());
        self
    }

    /// Whether a webhook URL follows the rules (see `WebhookPolicy`).
    pub fn check_webhook(&self, url: &str) -> Result<(), String> {
        self.webhook_policy.check_url(url).map(|_| ())
    }

    /// A handler's result over `max` bytes of JSON is its rejection. A
    /// script's is measured on its own thread, so the engine never handles
    /// the megabytes a script may return.
    pub fn bound_documents(&mut self, max: usize) {
        self.document_bytes_max = max;
    }

    /// Counts this resolver's handler runs in `telemetry`.
    pub fn observe(&mut self, telemetry: std::sync::Arc<crate::telemetry::Telemetry>) {
        self.telemetry = Some(telemetry);
    }

    /// Checks that a script loads and defines `resolve` before it is accepted.
    pub async fn check_script(&self, source: &str) -> Result<(), ScriptError> {
        let (source, limits, clock) = (source.to_owned(), self.script_limits, self.clock.clone());
        // At the engine's priority, not on the script threads: a check is
        // rare and bounded by the same deadline, and a valid script must
        // not fail its configuration because a loaded machine starved a
        // nice thread of its 50 ms.
        tokio::task::spawn_blocking(move || script::check(&source, limits, &clock))
            .await
            .unwrap_or_else(|e| Err(ScriptError::Engine(e.to_string())))
    }

    pub async fn decide(
        &self,
        doc: &Document,
        mutation: &Mutation,
        config: &CollectionConfig,
    ) -> Step {
        match mutation.base_version {
            Some(base) if base != doc.version => {
                self.settle_conflict(doc, mutation, base, config, false)
                    .await
            }
            _ => apply(doc, mutation),
        }
    }

    /// The same decision as a dry run (`POST /v1/mutations:simulate`): a
    /// script or webhook runs with `"dry_run": true` in its context, and
    /// nothing of the run is counted in the metrics.
    pub async fn decide_dry(
        &self,
        doc: &Document,
        mutation: &Mutation,
        config: &CollectionConfig,
    ) -> Step {
        match mutation.base_version {
            Some(base) if base != doc.version => {
                self.settle_conflict(doc, mutation, base, config, true)
                    .await
            }
            _ => apply(doc, mutation),
        }
    }

    /// An operator's discard of a quarantined mutation, or a staged one's
    /// expiry: rejected with `reason`, against the document as it is,
    /// without running the handler.
    pub fn discard(
        &self,
        doc: &Document,
        m: &Mutation,
        config: &CollectionConfig,
        reason: &str,
    ) -> Step {
        let conflict = Conflict {
            doc,
            m,
            base: m.base_version.unwrap_or(doc.version),
            handler: config.handler.name(),
            at_ms: self.clock.now_ms(),
        };
        conflict.settle(HandlerAnswer::Reject(reason.to_owned()), false)
    }

    async fn settle_conflict(
        &self,
        doc: &Document,
        m: &Mutation,
        base: u64,
        config: &CollectionConfig,
        dry_run: bool,
    ) -> Step {
        let handler = &config.handler;
        let started = self.clock.elapsed();
        let (answer, run, run_time) = self.run_handler(doc, m, base, config, dry_run).await;
        let handler_failed = matches!(run, Run::Failed(_));
        let result = match (run, &answer) {
            (Run::BuiltIn, _) => None,
            (Run::Failed(result), _) => Some(result),
            (Run::Answered, HandlerAnswer::Resolve(_)) => Some("resolved"),
            (Run::Answered, HandlerAnswer::Remove) => Some("removed"),
            (Run::Answered, HandlerAnswer::Reject(_)) => Some("rejected"),
        };
        if let (Some(result), Some(telemetry), false) = (result, &self.telemetry, dry_run) {
            let took = run_time.unwrap_or_else(|| self.clock.elapsed().saturating_sub(started));
            telemetry.handler_run(handler.name(), result, took.as_secs_f64());
        }
        let conflict = Conflict {
            doc,
            m,
            base,
            handler: handler.name(),
            at_ms: self.clock.now_ms(),
        };
        conflict.settle(answer, handler_failed)
    }

    /// Asks the collection's handler; for a script, also the run's own time
    /// (waiting for a script thread is not the script's).
    async fn run_handler(
        &self,
        doc: &Document,
        m: &Mutation,
        base: u64,
        config: &CollectionConfig,
        dry_run: bool,
    ) -> (HandlerAnswer, Run, Option<std::time::Duration>) {
        let context = || {
            let mut ctx = resolve_context(doc, m, base);
            if dry_run {
                ctx["dry_run"] = serde_json::Value::Bool(true);
            }
            ctx
        };
        match &config.handler {
            Handler::Optimistic => (
                HandlerAnswer::Reject(stale_reason(base, doc.version)),
                Run::BuiltIn,
                None,
            ),
            Handler::Automerge => (
                automerge_answer(doc, m, base, &config.set_fields),
                Run::BuiltIn,
                None,
            ),
            Handler::Script { source } => {
                let call_ctx = context();
                let (source, limits, clock) =
                    (source.clone(), self.script_limits, self.clock.clone());
                let max = self.document_bytes_max;
                let (ran, took) = self
                    .scripts
                    .run(limits.time_ms_max, move || {
                        script::run(&source, &call_ctx, limits, &clock)
                            .map(|answer| bounded(answer, "script", max))
                    })
                    .await;
                let (answer, run) = match ran {
                    Ok(answer) => (answer, Run::Answered),
                    Err(e @ ScriptError::TimeLimit(_)) => {
                        (HandlerAnswer::Reject(e.to_string()), Run::Failed("timeout"))
                    }
                    Err(e) => (HandlerAnswer::Reject(e.to_string()), Run::Failed("error")),
                };
                (answer, run, Some(took))
            }
            Handler::Webhook {
                url,
                timeout_ms,
                headers,
            } => {
                let call_ctx = context();
                // Checked again at every call: the rules may have changed
                // since the collection was configured.
                let called = match self.webhook_policy.check_url(url) {
                    Ok(_) => webhook::call(&self.http, url, *timeout_ms, headers, &call_ctx).await,
                    Err(why) => Err(webhook::WebhookError::Failed(why)),
                };
                let (answer, run) = match called {
                    Ok(answer) => (
                        bounded(answer, "webhook", self.document_bytes_max),
                        Run::Answered,
                    ),
                    Err(e) => {
                        let result = match e {
                            webhook::WebhookError::TimedOut(_) => "timeout",
                            webhook::WebhookError::Failed(_) => "error",
                        };
                        (HandlerAnswer::Reject(e.message()), Run::Failed(result))
                    }
                };
                (answer, run, None)
            }
        }
    }
}

/// How a handler's run ended, for the metrics.
enum Run {
    /// Optimistic and automerge: decided in place, nothing ran.
    BuiltIn,
    /// A script or webhook answered.
    Answered,
    /// A script or webhook gave no answer: `timeout` or `error`.
    Failed(&'static str),
}
