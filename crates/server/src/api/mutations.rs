//! The mutation routes: one, a batch, and a mutation's answer by id.

use super::caller::{Caller, ClientOnly};
use super::query::{ApiQuery, NoParams, QueryParams};
use super::{ApiError, answer, exact, guard, reply, schema, wire};
use crate::auth::CollectionAction;
use crate::dispatch::{Answer, Engine};
use crate::model::Mutation;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WaitQuery {
    /// `false`: answer 202 once the mutation is durably queued.
    wait: Option<bool>,
}

impl QueryParams for WaitQuery {
    const PARAMS: &'static [(&'static str, &'static str)] = &[("wait", "true or false")];
}

/// Sends one mutation and, by default, waits for its outcome. A resend with
/// the same `(client, id)` gets the same answer and is never applied twice.
#[utoipa::path(post, path = "/v1/mutations", tag = "mutations",
    params(WaitQuery),
    request_body(content = wire::MutationBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied, or merged by the collection's handler", body = schema::MutationResult),
        (status = 202, description = "Durably queued (`?wait=false`), staged (`\"shadow\": true`: `{\"id\", \"status\": \"staged\"}`), or quarantined because the collection's handler failed (`on_handler_failure: quarantine`); the outcome comes later", body = schema::NotYetDecided),
        (status = 400, description = "Not a valid mutation", body = schema::ErrorBody),
        (status = 404, description = "A delete of a document that does not exist", body = schema::ErrorBody),
        (status = 409, description = "Rejected: it conflicted and the handler refused it", body = schema::MutationResult),
        (status = 413, description = "The body is larger than 1 MiB (`payload_too_large`), or the mutation would leave a document over `document_bytes_max` (`document_too_large`); nothing was applied", body = schema::ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = schema::ErrorBody),
        (status = 422, description = "The id was already used by this client for another mutation", body = schema::ErrorBody),
        (status = 429, description = "Overloaded, or the queue or the document's lane is full; nothing was queued",
            body = schema::ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = "The store is unavailable, Sluice is shutting down, or the decision timed out",
            body = schema::ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    ))]
pub(super) async fn post_mutation(
    State(engine): State<Engine>,
    ApiQuery(query): ApiQuery<WaitQuery>,
    caller: Caller,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // The client's own bound, then the door: a refusal under overload must
    // cost almost nothing, so it reads and parses no body.
    let _held = caller.hold(1)?;
    let entered = if query.wait == Some(false) {
        // Queued mutations outlive the request that holds the guard above:
        // the engine's count of the client's undecided ones bounds them.
        caller.may_queue(|client| engine.in_flight_of(client))?;
        None
    } else {
        match engine.enter(1) {
            Ok(entered) => Some(entered),
            Err(refused) => return Ok(refuse_unparsed(request, refused).await),
        }
    };
    let body = Bytes::from_request(request, &engine).await?;
    let mut mutation = wire::parse_mutation(&body, || uuid::Uuid::new_v4().simple().to_string())
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "invalid_mutation", message))?;
    mutation.client = caller.sender(mutation.client.take())?;
    may_write(&engine, &caller, &mutation)?;
    if mutation.shadow && engine.is_clustered() {
        return Err(ApiError::bad_request(
            "shadow writes are not offered in cluster mode yet; send the mutation without \"shadow\"",
        ));
    }
    if mutation.shadow || engine.sheds(&mutation) {
        return Ok(reply(engine.stage(mutation).await).into_response());
    }
    let answer = match entered {
        Some(entered) => engine.submit_entered(mutation, entered).await,
        None => engine.accept(mutation).await,
    };
    Ok(reply(answer).into_response())
}

/// Refuses a mutation its caller may not send to its collection.
pub(super) fn may_write(
    engine: &Engine,
    caller: &Caller,
    mutation: &Mutation,
) -> Result<(), ApiError> {
    if caller.principal().is_none() {
        return Ok(());
    }
    let collection = &mutation.doc.collection;
    let config = engine.collection(collection);
    caller.require_in(collection, &config.access, CollectionAction::Write)
}

/// A small body that has arrived is drained unparsed before a refusal, so
/// the connection stays usable (a server that answers without reading the
/// body must close the connection, and a client reusing it races the
/// close); a larger one, or one that does not arrive at once, is not
/// waited for.
const REFUSED_DRAIN_BYTES_MAX: usize = 64 << 10;
const REFUSED_DRAIN_WAIT: Duration = Duration::from_millis(20);

/// The answer to a request refused at the door, decided before its body
/// was read: the body is never parsed.
async fn refuse_unparsed(request: axum::extract::Request, refused: Answer) -> Response {
    let drained = match guard::declared_length(request.headers()) {
        Some(n) if n <= REFUSED_DRAIN_BYTES_MAX => {
            let body = axum::body::to_bytes(request.into_body(), REFUSED_DRAIN_BYTES_MAX);
            matches!(
                tokio::time::timeout(REFUSED_DRAIN_WAIT, body).await,
                Ok(Ok(_))
            )
        }
        _ => false,
    };
    let mut response = reply(refused).into_response();
    if !drained {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Decides a client's outbox of up to 1,000 mutations, in order: all are
/// admitted or none (400 names the first bad index; 429 for the whole batch).
#[utoipa::path(post, path = "/v1/mutations:batch", tag = "mutations",
    request_body(content = wire::BatchBody, content_type = "application/json"),
    responses(
        (status = 200, description = "One answer per mutation, in the same order", body = schema::BatchResult),
        (status = 400, description = "A mutation is not valid (the message names its index), or the batch is empty or too long", body = schema::ErrorBody),
        (status = 413, description = "The body is larger than 16 MiB", body = schema::ErrorBody),
        (status = 422, description = "A mutation is a shadow write (`shadow_in_batch`: send it alone), or reuses an id", body = schema::ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = schema::ErrorBody),
        (status = 429, description = "The batch does not fit; nothing of it was queued",
            body = schema::ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = "Sluice is shutting down", body = schema::ErrorBody),
    ))]
pub(super) async fn post_batch(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    caller: Caller,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // A batch's length is known only once it is parsed; a door that would
    // refuse even one mutation refuses the batch before its body is read.
    match engine.enter(1) {
        Ok(checked) => drop(checked.without_stay()),
        Err(refused) => return Ok(refuse_unparsed(request, refused).await),
    }
    let body = match Bytes::from_request(request, &engine).await {
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the batch body is larger than {} bytes",
                    wire::BATCH_BODY_BYTES_MAX
                ),
            ));
        }
        other => other?,
    };
    let invalid =
        |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_mutation", message);
    exact::check(&body).map_err(invalid)?;
    let batch = wire::parse_batch(&body).map_err(invalid)?;
    // All or nothing: the first bad mutation refuses the whole batch.
    let mut mutations = Vec::with_capacity(batch.len());
    for (index, value) in batch.into_iter().enumerate() {
        let mut mutation =
            wire::parse_mutation_value(value, || uuid::Uuid::new_v4().simple().to_string())
                .map_err(|message| invalid(format!("mutations[{index}]: {message}")))?;
        if mutation.shadow {
            // Well formed, and not something a batch does: 422.
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "shadow_in_batch",
                format!(
                    "mutations[{index}]: a shadow write is staged alone: send it to POST /v1/mutations"
                ),
            ));
        }
        mutation.client = caller.sender(mutation.client.take())?;
        may_write(&engine, &caller, &mutation).map_err(|mut refused| {
            refused.message = format!("mutations[{index}]: {}", refused.message);
            refused
        })?;
        mutations.push(mutation);
    }
    let _held = caller.hold(mutations.len())?;
    match engine.submit_batch(mutations).await {
        Ok(answers) => {
            let mut results = String::from("{\"results\":[");
            for (i, answer) in answers.into_iter().enumerate() {
                if i > 0 {
                    results.push(',');
                }
                results.push_str(&reply(answer).body);
            }
            results.push_str("]}");
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                results,
            )
                .into_response())
        }
        Err(refusal) => Ok(reply(refusal).into_response()),
    }
}

/// A mutation's outcome, or its queued status while it waits.
#[utoipa::path(get, path = "/v1/mutations/{id}", tag = "mutations",
    params(("id" = String, Path, description = "The mutation's id"), ("client" = String, Query, description = "The client whose answers these are, as named in its mutations' bodies (empty: the anonymous client)")),
    responses(
        (status = 200, description = "Its answer: the outcome once decided (the body a resend gets), else `queued`",
            body = schema::MutationStatus),
        (status = 400, description = "No `client`, or a parameter the route does not take", body = schema::ErrorBody),
        (status = 404, description = "No such mutation for this client", body = schema::ErrorBody),
        (status = 503, description = "The store is unavailable, or in a cluster Redis", body = schema::ErrorBody),
    ))]
pub(super) async fn get_mutation(
    State(engine): State<Engine>,
    path: Result<Path<String>, PathRejection>,
    _: ApiQuery<ClientOnly>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let Path(id) = path?;
    let client = caller.client()?;
    let json = |body: String| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    // The staging area, the accept log, then the stored answer: the order a
    // mutation moves in (a commit stores the answer and removes the entry
    // in one transaction), so once it has left one place it is in the next.
    // (Asked the other way round, a move between two reads answered a
    // queued mutation with 404.)
    if let Some(queued) = engine
        .queued_status(client, &id)
        .await
        .map_err(ApiError::unavailable)?
    {
        return Ok(json(answer::queued_body(&queued)));
    }
    // In a cluster, a `?wait=false` mutation waits in a partition's stream,
    // noted in Redis until its reply is committed: the note is read first
    // for the same reason, and a stored reply wins over it.
    let in_stream = engine.queued_in_stream(client, &id).await;
    match engine
        .stored_reply(client, &id)
        .await
        .map_err(ApiError::unavailable)?
    {
        Some(stored) => Ok(json(stored.decision.body)),
        None if matches!(in_stream, Ok(true)) => {
            Ok(json(answer::queued_body(&crate::dispatch::Queued {
                id: id.clone(),
                score: None,
                staged: false,
            })))
        }
        None if in_stream.is_err() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!(
                "the cluster's Redis did not answer whether {id:?} is queued ({}); ask again",
                in_stream.err().map(|e| e.to_string()).unwrap_or_default()
            ),
        )),
        None => match engine.quarantined_reason(client, &id) {
            Some(reason) => Ok(json(answer::quarantined_body(&id, &reason))),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no mutation {id:?} for client {client:?}"),
            )),
        },
    }
}
