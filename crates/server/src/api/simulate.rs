//! `POST /v1/mutations:simulate`: what mutations would meet now, as a dry
//! run that writes nothing and records nothing (see `dispatch/simulate.rs`).

use super::caller::Caller;
use super::query::{ApiQuery, NoParams};
use super::{ApiError, answer, exact, mutations::may_write, schema, wire};
use crate::auth::CollectionAction;
use crate::dispatch::{Engine, ReadError, Simulated};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// Mutations one simulation takes at most.
const SIMULATE_LEN_MAX: usize = 100;

/// `POST /v1/mutations:simulate` as sent: one mutation, or a batch.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = SimulateRequest)]
#[allow(dead_code)] // Describes the body; parsed by `wire`.
pub(super) enum SimulateBody {
    One(Box<wire::MutationBody>),
    Batch(SimulateBatch),
}

/// A batch to simulate, in order.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the body; parsed by `wire`.
pub(super) struct SimulateBatch {
    /// 1 to 100 mutations, decided in this order per document.
    #[schema(value_type = Vec<wire::MutationBody>, min_items = 1, max_items = 100)]
    mutations: Vec<Value>,
}

/// What mutations would meet now, decided as their lanes would decide
/// them against the documents as they are, handlers included (a webhook
/// receives `"dry_run": true`); nothing is written or recorded, and the
/// real write may meet another state.
#[utoipa::path(post, path = "/v1/mutations:simulate", tag = "mutations",
    request_body(content = SimulateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "One result per mutation, in the same order; nothing was written", body = schema::SimulateResult),
        (status = 400, description = "A mutation is not valid (a batch's message names its index), or the batch is empty or longer than 100", body = schema::ErrorBody),
        (status = 403, description = "The caller may not write, or read, a mutation's collection", body = schema::ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = schema::ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = schema::ErrorBody),
        (status = 429, description = "Overloaded", body = schema::ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = "The store is unavailable", body = schema::ErrorBody),
    ))]
pub(super) async fn post_simulate(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    caller: Caller,
    request: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    let body = Bytes::from_request(request, &engine).await?;
    let invalid =
        |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_mutation", message);
    exact::check(&body).map_err(invalid)?;
    let sent: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the body is not valid JSON: {e}")))?;
    let batched = sent.get("mutations").is_some();
    let values = if batched {
        let values = wire::parse_batch(&body).map_err(invalid)?;
        if values.len() > SIMULATE_LEN_MAX {
            return Err(invalid(format!(
                "a simulation holds 1 to {SIMULATE_LEN_MAX} mutations, got {}",
                values.len()
            )));
        }
        values
    } else {
        vec![sent]
    };
    let mut mutations = Vec::with_capacity(values.len());
    for (index, value) in values.into_iter().enumerate() {
        let at = |message: String| {
            if batched {
                format!("mutations[{index}]: {message}")
            } else {
                message
            }
        };
        let mut mutation =
            wire::parse_mutation_value(value, || uuid::Uuid::new_v4().simple().to_string())
                .map_err(|message| invalid(at(message)))?;
        mutation.client = caller.sender(mutation.client.take())?;
        // The answer shows the document: a simulation needs both rights.
        let collection = mutation.doc.collection.clone();
        let rules = engine.collection(&collection);
        may_write(&engine, &caller, &mutation)
            .and_then(|()| caller.require_in(&collection, &rules.access, CollectionAction::Read))
            .map_err(|mut refused| {
                refused.message = at(refused.message);
                refused
            })?;
        mutations.push(mutation);
    }
    let results = engine.simulate(&mutations).await.map_err(|e| match e {
        ReadError::Overloaded(refusal) => answer::refusal_error(refusal),
        ReadError::Store(e) => ApiError::unavailable(e),
    })?;
    Ok(Json(json!({
        "results": results.iter().map(result_json).collect::<Vec<_>>()
    })))
}

fn result_json(s: &Simulated) -> Value {
    json!({
        "id": s.id,
        "collection": s.doc.collection,
        "key": s.doc.key,
        "would_conflict": s.would_conflict,
        "outcome": s.outcome,
        "version": s.version,
        "current_version": s.current_version,
        "item": s.item,
        "handler": s.handler,
        "reason": s.reason,
        "score": s.score,
        "expected_wait_ms": s.expected_wait_ms,
    })
}
