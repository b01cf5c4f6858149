//! HTTP API v1: routes, extraction and the mapping of every error to
//! `{"error": {"code", "message"}}` with its status, in one place.

pub mod wire;

use crate::dispatch::{ConfigureError, Engine, ReadError, Reply};
use crate::history::{CONFLICTS_LIMIT_DEFAULT, CONFLICTS_LIMIT_MAX, ConflictQuery};
use crate::model::{ANONYMOUS_CLIENT, DocKey};
use crate::resolve::{CollectionConfig, ConflictRecord};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::any::Any;
use tower_http::catch_panic::CatchPanicLayer;

/// An error answer. Built only through [`ApiError::new`] so that every error
/// has a code and a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn unavailable(message: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if matches!(self.status.as_u16(), 429 | 503) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {} bytes", wire::BODY_BYTES_MAX),
            )
        } else {
            ApiError::bad_request(format!("the body could not be read: {}", r.body_text()))
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(format!("bad query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(format!("bad path: {}", r.body_text()))
    }
}

fn reply_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        reply.body,
    )
        .into_response();
    if let Some(seconds) = reply.retry_after_s {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/mutations", axum::routing::post(post_mutation))
        .route(
            "/v1/mutations:batch",
            axum::routing::post(post_batch)
                .layer(DefaultBodyLimit::max(wire::BATCH_BODY_BYTES_MAX)),
        )
        .route("/v1/mutations/{id}", get(get_mutation))
        .route("/v1/documents/{collection}/{*key}", get(get_document))
        .route(
            "/v1/collections/{name}",
            get(get_collection).put(put_collection),
        )
        .route("/v1/conflicts", get(get_conflicts))
        .route("/v1/events", get(get_events))
        .route("/v1/model", get(get_model))
        .route("/v1/stats", get(get_stats))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(wire::BODY_BYTES_MAX))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(engine)
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the request failed inside Sluice; nothing was applied by it",
    )
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// `false`: answer 202 once the mutation is durably queued.
    wait: Option<bool>,
}

async fn post_mutation(
    State(engine): State<Engine>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let body = body?;
    let mutation = wire::parse_mutation(&body, || uuid::Uuid::new_v4().simple().to_string())
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "invalid_mutation", message))?;
    let reply = if query.wait == Some(false) {
        engine.accept(mutation).await
    } else {
        engine.submit(mutation).await
    };
    Ok(reply_response(reply))
}

async fn post_batch(
    State(engine): State<Engine>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = match body {
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
    let batch: wire::BatchBody = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the body is not a valid batch: {e}")))?;
    if batch.mutations.is_empty() || batch.mutations.len() > wire::BATCH_LEN_MAX {
        return Err(invalid(format!(
            "a batch holds 1 to {} mutations, got {}",
            wire::BATCH_LEN_MAX,
            batch.mutations.len()
        )));
    }
    // All or nothing: the first bad mutation refuses the whole batch.
    let mut mutations = Vec::with_capacity(batch.mutations.len());
    for (index, value) in batch.mutations.into_iter().enumerate() {
        let mutation =
            wire::parse_mutation_value(value, || uuid::Uuid::new_v4().simple().to_string())
                .map_err(|message| invalid(format!("mutations[{index}]: {message}")))?;
        mutations.push(mutation);
    }
    match engine.submit_batch(mutations).await {
        Ok(replies) => {
            let mut results = String::from("{\"results\":[");
            for (i, reply) in replies.iter().enumerate() {
                if i > 0 {
                    results.push(',');
                }
                results.push_str(&reply.body);
            }
            results.push_str("]}");
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                results,
            )
                .into_response())
        }
        Err(refusal) => Ok(reply_response(refusal)),
    }
}

#[derive(Deserialize)]
struct ClientQuery {
    client: Option<String>,
}

async fn get_mutation(
    State(engine): State<Engine>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ClientQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path?;
    let Query(query) = query?;
    let client = query.client.unwrap_or_else(|| ANONYMOUS_CLIENT.to_owned());
    let json = |body: String| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    if let Some(stored) = engine
        .stored_reply(&client, &id)
        .await
        .map_err(ApiError::unavailable)?
    {
        return Ok(json(stored.body));
    }
    match engine
        .queued_status(&client, &id)
        .await
        .map_err(ApiError::unavailable)?
    {
        Some(queued) => Ok(json(queued.body)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no mutation {id:?} for client {client:?}"),
        )),
    }
}

async fn get_document(
    State(engine): State<Engine>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((collection, key)) = path?;
    wire::validate_collection(&collection).map_err(ApiError::bad_request)?;
    wire::validate_key(&key).map_err(ApiError::bad_request)?;
    let doc = engine
        .document(&DocKey::new(collection.clone(), key.clone()))
        .await
        .map_err(|e| match e {
            ReadError::Overloaded { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string())
            }
            ReadError::Store(e) => ApiError::unavailable(e),
        })?;
    if doc.version == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{collection}/{key} was never written"),
        ));
    }
    Ok(Json(
        json!({ "collection": collection, "key": key, "version": doc.version, "item": doc.item_value() }),
    ))
}

async fn get_collection(
    State(engine): State<Engine>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CollectionConfig>, ApiError> {
    let Path(name) = path?;
    wire::validate_collection(&name).map_err(ApiError::bad_request)?;
    Ok(Json(engine.collection(&name)))
}

async fn put_collection(
    State(engine): State<Engine>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CollectionConfig>, ApiError> {
    let Path(name) = path?;
    wire::validate_collection(&name).map_err(ApiError::bad_request)?;
    let body = body?;
    let config: CollectionConfig = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_collection",
            format!("not a valid collection configuration: {e}"),
        )
    })?;
    match engine.configure_collection(&name, config.clone()).await {
        Ok(()) => Ok(Json(config)),
        Err(ConfigureError::Invalid(message)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_collection",
            message,
        )),
        Err(ConfigureError::Store(e)) => Err(ApiError::unavailable(e)),
    }
}

#[derive(Deserialize)]
struct ConflictsQuery {
    collection: Option<String>,
    key: Option<String>,
    limit: Option<u32>,
}

async fn get_conflicts(
    State(engine): State<Engine>,
    query: Result<Query<ConflictsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(CONFLICTS_LIMIT_DEFAULT);
    if limit == 0 || limit > CONFLICTS_LIMIT_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {CONFLICTS_LIMIT_MAX}"
        )));
    }
    let query = ConflictQuery {
        collection: q.collection.filter(|c| !c.is_empty()),
        key: q.key.filter(|k| !k.is_empty()),
        limit,
    };
    let conflicts = engine
        .conflicts(&query)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(
        json!({ "conflicts": conflicts.iter().map(conflict_json).collect::<Vec<_>>() }),
    ))
}

/// Streams open at once; each holds a connection and polls the store when
/// commits happen.
const EVENT_STREAMS_MAX: usize = 1_024;
/// Events read from the store per query.
const EVENTS_PAGE: u32 = 256;
/// The shortest gap between two reads of the store by one stream.
const EVENTS_POLL_MIN: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Deserialize)]
struct EventsQuery {
    client: Option<String>,
}

/// `GET /v1/events?client=…`: the client's outcomes as Server-Sent Events,
/// one `outcome` event per decided mutation, its id the event number;
/// `Last-Event-ID` resumes after that number.
async fn get_events(
    State(engine): State<Engine>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Query(query) = query?;
    let client = query.client.unwrap_or_else(|| ANONYMOUS_CLIENT.to_owned());
    let last: i64 = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event number"))?,
    };
    if OPEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= EVENT_STREAMS_MAX {
        OPEN.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many event streams are open",
        ));
    }
    /// Decrements the open-stream count when the stream is dropped.
    struct Open;
    impl Drop for Open {
        fn drop(&mut self) {
            OPEN.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    struct State {
        engine: Engine,
        client: String,
        last: i64,
        buffer: std::collections::VecDeque<(i64, String)>,
        signal: tokio::sync::watch::Receiver<u64>,
        _open: Open,
    }
    let state = State {
        signal: engine.commit_signal(),
        engine,
        client,
        last,
        buffer: Default::default(),
        _open: Open,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some((seq, body)) = st.buffer.pop_front() {
                st.last = seq;
                let event = Event::default()
                    .event("outcome")
                    .id(seq.to_string())
                    .data(body);
                return Some((Ok::<Event, std::convert::Infallible>(event), st));
            }
            // Marked seen before the query, so a commit during it is not missed.
            st.signal.mark_unchanged();
            match st
                .engine
                .events_after(&st.client, st.last, EVENTS_PAGE)
                .await
            {
                Ok(events) if !events.is_empty() => st.buffer.extend(events),
                Ok(_) => {
                    if st.signal.changed().await.is_err() {
                        return None;
                    }
                    // Commits come in bursts: look once per burst, not per commit.
                    tokio::time::sleep(EVENTS_POLL_MIN).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event stream could not read the store; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn get_stats(State(engine): State<Engine>) -> Json<crate::dispatch::EngineStats> {
    Json(engine.stats())
}

async fn get_model(State(engine): State<Engine>) -> Json<crate::predict::ModelReport> {
    Json(engine.model_report())
}

fn conflict_json(c: &ConflictRecord) -> Value {
    json!({
        "mutation_id": c.mutation_id,
        "client": if c.client.is_empty() { Value::Null } else { Value::String(c.client.clone()) },
        "collection": c.doc.collection,
        "key": c.doc.key,
        "base_version": c.base_version,
        "server_version": c.server_version,
        "handler": c.handler,
        "resolution": c.resolution.as_str(),
        "reason": c.reason,
        "incoming": c.incoming,
        "existing": c.existing,
        "result": c.result,
        "at": c.at_ms,
    })
}
