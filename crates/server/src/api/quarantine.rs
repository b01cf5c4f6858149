//! The quarantine's routes and a client's pending list: what is kept aside
//! because a handler failed, what an operator does with it, and what a
//! client has not seen decided yet.

use super::caller::{CLIENT_PARAM, Caller};
use super::query::{ApiQuery, NoParams, QueryParams};
use super::{ApiError, reply, schema};
use crate::auth::{Action, CollectionAction};
use crate::dispatch::{Answer, Engine, QuarantineAction, QuarantineError};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest page of a listing, and the page when none is asked for.
pub(super) const LIST_LIMIT_MAX: u32 = 1_000;
pub(super) const LIST_LIMIT_DEFAULT: u32 = 100;

fn limit(asked: Option<u32>) -> Result<u32, ApiError> {
    match asked.unwrap_or(LIST_LIMIT_DEFAULT) {
        n @ 1..=LIST_LIMIT_MAX => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit must be from 1 to {LIST_LIMIT_MAX}"
        ))),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct QuarantineQuery {
    /// Only this collection's.
    collection: Option<String>,
    /// Only this client's.
    client: Option<String>,
    /// At most this many, oldest first (1 to 1,000; default 100).
    limit: Option<u32>,
}

/// What a `limit` parameter of a listing takes, as errors say it.
const LIMIT_PARAM: (&str, &str) = ("limit", "a whole number from 1 to 1000");

impl QueryParams for QuarantineQuery {
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        ("collection", "a collection's name"),
        ("client", "a client's name"),
        LIMIT_PARAM,
    ];
}

/// Mutations kept aside because their collection's script or webhook
/// failed (`on_handler_failure: quarantine`), oldest first.
#[utoipa::path(get, path = "/v1/quarantine", tag = "mutations",
    params(QuarantineQuery),
    responses(
        (status = 200, description = "Quarantined mutations, oldest first", body = schema::QuarantineList),
        (status = 400, description = "A bad query", body = schema::ErrorBody),
        (status = 503, description = "The store is unavailable", body = schema::ErrorBody),
    ))]
pub(super) async fn get_quarantine(
    State(engine): State<Engine>,
    ApiQuery(q): ApiQuery<QuarantineQuery>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let collection = q.collection.filter(|c| !c.is_empty());
    match &collection {
        Some(c) => caller.require_in(
            c,
            &engine.collection(c).access,
            CollectionAction::Quarantine,
        )?,
        None => caller.require(Action::Operate)?,
    }
    let limit = limit(q.limit)?;
    let kept = engine
        .quarantine_list(collection, q.client.filter(|c| !c.is_empty()), limit)
        .await
        .map_err(ApiError::unavailable)?;
    let now_ms = engine.now_ms();
    let entries: Vec<Value> = kept
        .into_iter()
        .map(|e| {
            let mutation: Value = serde_json::from_str(&e.mutation).unwrap_or(Value::Null);
            json!({
                "client": e.client,
                "id": e.id,
                "collection": e.doc.collection,
                "key": e.doc.key,
                "reason": e.reason,
                "score": e.score,
                "quarantined_at_ms": e.at_ms,
                "waited_ms": now_ms.saturating_sub(e.at_ms).max(0),
                "mutation": mutation,
            })
        })
        .collect();
    Ok(Json(json!({ "quarantined": entries })))
}

/// What `POST /v1/quarantine/{client}/{id}:retry` and `…:discard` share: the
/// router matches the last segment whole (`{id}:retry`), the description
/// names the two operations.
pub(super) async fn post_quarantine_action(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    path: Result<Path<(String, String)>, PathRejection>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let Path((client, last)) = path?;
    let (id, action) = match last.rsplit_once(':') {
        Some((id, "retry")) => (id, QuarantineAction::Retry),
        Some((id, "discard")) => (id, QuarantineAction::Discard),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "POST /v1/quarantine/{client}/{id}:retry or …:discard",
            ));
        }
    };
    let acted = match engine.quarantined(&client, id).await {
        Ok(entry) => {
            let c = &entry.doc.collection;
            caller.require_in(
                c,
                &engine.collection(c).access,
                CollectionAction::Quarantine,
            )?;
            engine.act_on_quarantined(&entry, action).await
        }
        Err(e) => Err(e),
    };
    match acted {
        // The operator's discard succeeded: 200, with the rejection its
        // client gets.
        Ok(Answer::Decided(decision)) if action == QuarantineAction::Discard => {
            let mut discarded = reply(Answer::Decided(decision));
            discarded.status = StatusCode::OK.as_u16();
            Ok(discarded.into_response())
        }
        Ok(answer) => Ok(reply(answer).into_response()),
        Err(e @ QuarantineError::NotFound { .. }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            e.to_string(),
        )),
        Err(QuarantineError::Store(e)) => Err(ApiError::unavailable(e)),
    }
}

/// Decides a quarantined mutation again, against the document as it is now,
/// through its lane; answers as its client would be answered (quarantined
/// again if the handler fails again). Its final answer also reaches its
/// client's event stream.
#[utoipa::path(post, path = "/v1/quarantine/{client}/{id}:retry", tag = "mutations",
    params(("client" = String, Path, description = "The mutation's client"),
           ("id" = String, Path, description = "The mutation's id")),
    responses(
        (status = 200, description = "Applied, or merged by the collection's handler", body = schema::MutationResult),
        (status = 202, description = "The handler failed again: still quarantined", body = schema::QuarantinedStatus),
        (status = 400, description = "A query parameter (the route takes none)", body = schema::ErrorBody),
        (status = 404, description = "No such quarantined mutation", body = schema::ErrorBody),
        (status = 409, description = "Rejected by the handler", body = schema::MutationResult),
        (status = 503, description = "The store is unavailable, or the decision timed out",
            body = schema::ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    ))]
#[expect(
    dead_code,
    reason = "its description only: `post_quarantine_action` serves it"
)]
pub(super) async fn retry_quarantined() {}

/// Rejects a quarantined mutation with reason `discarded`, without running
/// its handler; its client learns it through its event stream and
/// `GET /v1/mutations/{id}` (a resend gets 409).
#[utoipa::path(post, path = "/v1/quarantine/{client}/{id}:discard", tag = "mutations",
    params(("client" = String, Path, description = "The mutation's client"),
           ("id" = String, Path, description = "The mutation's id")),
    responses(
        (status = 200, description = "Discarded: the mutation's answer (rejected, reason `discarded`), as its client gets it with 409", body = schema::MutationResult),
        (status = 400, description = "A query parameter (the route takes none)", body = schema::ErrorBody),
        (status = 404, description = "No such quarantined mutation", body = schema::ErrorBody),
        (status = 503, description = "The store is unavailable, or the decision timed out",
            body = schema::ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    ))]
#[expect(
    dead_code,
    reason = "its description only: `post_quarantine_action` serves it"
)]
pub(super) async fn discard_quarantined() {}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PendingQuery {
    /// `queued` (accepted, not yet decided) or `quarantined`; both when absent.
    status: Option<String>,
    /// At most this many of each status, oldest first (1 to 1,000; default 100).
    limit: Option<u32>,
}

impl QueryParams for PendingQuery {
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        CLIENT_PARAM,
        ("status", "queued or quarantined (both when absent)"),
        LIMIT_PARAM,
    ];
}

/// A client's mutations not yet decided: queued (in its lane, or being
/// decided now) or quarantined, oldest first, each with its score and how
/// long it has waited.
#[utoipa::path(get, path = "/v1/mutations", tag = "mutations",
    params(("client" = String, Query, description = "The client whose mutations these are, as named in their bodies (empty: the anonymous client)"), PendingQuery),
    responses(
        (status = 200, description = "The client's pending mutations, oldest first", body = schema::PendingList),
        (status = 400, description = "A bad query (status must be queued or quarantined)", body = schema::ErrorBody),
        (status = 503, description = "The store is unavailable", body = schema::ErrorBody),
    ))]
pub(super) async fn list_mutations(
    State(engine): State<Engine>,
    ApiQuery(q): ApiQuery<PendingQuery>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let client = caller.client()?.to_owned();
    let limit = limit(q.limit)?;
    let (queued, quarantined) = match q.status.as_deref() {
        None => (true, true),
        Some("queued") => (true, false),
        Some("quarantined") => (false, true),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "query parameter \"status\" takes queued or quarantined (both when absent); got {other:?}"
            )));
        }
    };
    let now_ms = engine.now_ms();
    let waited = |since_ms: i64| now_ms.saturating_sub(since_ms).max(0);
    // (since when, the entry), merged oldest first.
    let mut listed: Vec<(i64, Value)> = Vec::new();
    if queued {
        listed.extend(
            engine
                .pending(&client, limit as usize)
                .into_iter()
                .map(|p| {
                    let entry = json!({
                        "id": p.id,
                        "collection": p.doc.collection,
                        "key": p.doc.key,
                        "status": "queued",
                        "score": p.score,
                        "waited_ms": waited(p.received_ms),
                    });
                    (p.received_ms, entry)
                }),
        );
    }
    if quarantined {
        listed.extend(
            engine
                .quarantine_list(None, Some(client), limit)
                .await
                .map_err(ApiError::unavailable)?
                .into_iter()
                .map(|e| {
                    let entry = json!({
                        "id": e.id,
                        "collection": e.doc.collection,
                        "key": e.doc.key,
                        "status": "quarantined",
                        "score": e.score,
                        "waited_ms": waited(e.at_ms),
                        "reason": e.reason,
                    });
                    (e.at_ms, entry)
                }),
        );
    }
    listed.sort_by_key(|(since, _)| *since);
    listed.truncate(limit as usize);
    let mutations: Vec<Value> = listed.into_iter().map(|(_, entry)| entry).collect();
    Ok(Json(json!({ "mutations": mutations })))
}
