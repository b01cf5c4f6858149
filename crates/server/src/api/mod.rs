//! HTTP API v1: routes, extraction and the mapping of every error to
//! `{"error": {"code", "message"}}` with its status, in one place.

mod answer;
mod caller;
mod contract;
pub(crate) mod dashboard;
mod event_id;
mod exact;
pub(crate) mod guard;
mod quarantine;
mod query;
pub(crate) mod schema;
pub mod wire;

pub use answer::{Reply, reply};

use crate::auth::{Action, Authenticator, CollectionAction, Role};
use crate::dispatch::{Answer, ConfigureError, Engine, ReadError};
use crate::history::{CONFLICTS_LIMIT_DEFAULT, CONFLICTS_LIMIT_MAX, ConflictQuery};
use crate::model::ConflictRecord;
use crate::model::{DocKey, Mutation};
use crate::resolve::CollectionConfig;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use caller::{CLIENT_PARAM, Caller, ClientOnly};
pub use contract::openapi;
use query::{ApiQuery, NoParams, QueryParams};
use serde::Deserialize;
use serde_json::{Value, json};
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// An error answer. Built only through [`ApiError::new`] so that every error
/// has a code and a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After`, when not the status's usual.
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, saying when to retry.
    fn retry_after(self, seconds: u32) -> Self {
        ApiError {
            retry_after: Some(seconds),
            ..self
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
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, caller::challenge(self.code));
        }
        if let Some(seconds) = self.retry_after.or(answer::retry_after(self.status)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
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

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(format!("bad path: {}", r.body_text()))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "A data proxy for versioned JSON documents: per-document lanes, compare-and-set writes, conflict resolution and a conflict history.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "mutations", description = "Send mutations and learn their outcomes"),
        (name = "documents", description = "Read documents and configure collections"),
        (name = "observe", description = "Conflicts, statistics, the model, metrics and the dashboard"),
    ),
)]
struct ApiDoc;

/// The quarantine's actions: served by one route that matches the last
/// segment whole (`{id}:retry`), since the router has no parameter with a
/// suffix; described as the two operations they are.
#[derive(OpenApi)]
#[openapi(paths(quarantine::retry_quarantined, quarantine::discard_quarantined))]
struct QuarantineActions;

/// Every route, each with its OpenAPI operation: the server and its
/// description are built from this one list, so neither can lack a route the
/// other has.
fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(dashboard::page))
        .routes(routes!(healthz))
        .routes(routes!(get_metrics))
        .routes(routes!(get_openapi))
        .routes(routes!(post_mutation, quarantine::list_mutations))
        .routes(routes!(post_batch).layer(DefaultBodyLimit::max(wire::BATCH_BODY_BYTES_MAX)))
        .routes(routes!(get_mutation))
        .routes(routes!(get_document))
        .routes(routes!(get_collection, put_collection))
        .routes(routes!(get_collection_changes))
        .routes(routes!(get_conflicts))
        .routes(routes!(quarantine::get_quarantine))
        .routes(routes!(get_events))
        .routes(routes!(get_model))
        .routes(routes!(get_cluster))
        .routes(routes!(get_stats))
        .routes(routes!(dashboard::get_dashboard))
        .routes(routes!(dashboard::get_dashboard_events))
        .merge(
            OpenApiRouter::with_openapi(QuarantineActions::openapi()).route(
                "/v1/quarantine/{client}/{action}",
                axum::routing::post(quarantine::post_quarantine_action),
            ),
        )
}

/// The router with authentication off and only same-origin requests.
pub fn router(engine: Engine) -> Router {
    router_for(
        engine,
        guard::Origins::default(),
        Arc::new(Authenticator::open()),
    )
}

/// The router, allowing cross-site requests from `origins` besides the
/// server's own, and its callers known by `auth`.
pub fn router_for(engine: Engine, origins: guard::Origins, auth: Arc<Authenticator>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(wire::BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            caller::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(origins, guard::guard))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(engine)
}

/// Is the process up? 200 while it serves mutations (so load balancers
/// keep routing), with what is degraded meanwhile.
#[utoipa::path(get, path = "/healthz", tag = "observe",
    responses((status = 200, description = "The process serves HTTP; `degraded` lists what is wrong meanwhile (empty when nothing is)", body = schema::Health)))]
async fn healthz(State(engine): State<Engine>) -> Json<Value> {
    Json(json!({ "status": "ok", "degraded": engine.degraded() }))
}

/// The Prometheus text exposition: outcomes, conflicts, the queue, the
/// dispatcher's limits and load, store latency, the model's quality.
#[utoipa::path(get, path = "/metrics", tag = "observe",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain; version=0.0.4", body = String)))]
async fn get_metrics(State(engine): State<Engine>, caller: Caller) -> Response {
    if let Err(refused) = caller.require(Action::Operate) {
        return refused.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        engine.metrics(),
    )
        .into_response()
}

/// This description, as OpenAPI 3.1 JSON.
#[utoipa::path(get, path = "/openapi.json", tag = "observe",
    responses((status = 200, description = "The OpenAPI 3.1 description of every route",
        content_type = "application/json", body = Object)))]
async fn get_openapi() -> Response {
    static SPEC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = SPEC.get_or_init(|| {
        serde_json::to_string_pretty(&openapi())
            .unwrap_or_else(|e| json!({ "error": e.to_string() }).to_string())
    });
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
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
        (status = 202, description = "Durably queued (`?wait=false`), or quarantined because the collection's handler failed (`on_handler_failure: quarantine`); the outcome comes later", body = schema::NotYetDecided),
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
async fn post_mutation(
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
    let answer = match entered {
        Some(entered) => engine.submit_entered(mutation, entered).await,
        None => engine.accept(mutation).await,
    };
    Ok(reply(answer).into_response())
}

/// Refuses a mutation its caller may not send to its collection.
fn may_write(engine: &Engine, caller: &Caller, mutation: &Mutation) -> Result<(), ApiError> {
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
        (status = 415, description = "The body is not sent as `application/json`", body = schema::ErrorBody),
        (status = 429, description = "The batch does not fit; nothing of it was queued",
            body = schema::ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = "Sluice is shutting down", body = schema::ErrorBody),
    ))]
async fn post_batch(
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
async fn get_mutation(
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
    // The accept log first: a commit stores the answer and removes the entry
    // in one transaction, so once the entry is gone the answer is there.
    // (Asked the other way round, a commit between the two reads answered a
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

/// The document's current version and item.
#[utoipa::path(get, path = "/v1/documents/{collection}/{*key}", tag = "documents",
    params(
        ("collection" = String, Path, description = "The collection"),
        ("key" = String, Path, description = "The document's key; may contain `/`"),
    ),
    responses(
        (status = 200, description = "The document", body = schema::DocumentBody),
        (status = 400, description = "Not a valid collection or key", body = schema::ErrorBody),
        (status = 404, description = "Never written", body = schema::ErrorBody),
        (status = 429, description = "Overloaded", body = schema::ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = "The store is unavailable", body = schema::ErrorBody),
    ))]
async fn get_document(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    path: Result<Path<(String, String)>, PathRejection>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let Path((collection, key)) = path?;
    wire::validate_collection(&collection).map_err(ApiError::bad_request)?;
    wire::validate_key(&key).map_err(ApiError::bad_request)?;
    let rules = engine.collection(&collection);
    caller.require_in(&collection, &rules.access, CollectionAction::Read)?;
    let doc = engine
        .document(&DocKey::new(collection.clone(), key.clone()))
        .await
        .map_err(|e| match e {
            ReadError::Overloaded(refusal) => answer::refusal_error(refusal),
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

/// The collection's conflict handler (the default handler if never set).
#[utoipa::path(get, path = "/v1/collections/{name}", tag = "documents",
    params(("name" = String, Path, description = "The collection")),
    responses(
        (status = 200, description = "Its configuration", body = schema::CollectionBody),
        (status = 400, description = "Not a valid collection name", body = schema::ErrorBody),
    ))]
async fn get_collection(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    path: Result<Path<String>, PathRejection>,
    caller: Caller,
) -> Result<Json<CollectionConfig>, ApiError> {
    let Path(name) = path?;
    wire::validate_collection(&name).map_err(ApiError::bad_request)?;
    let config = engine.collection(&name);
    caller.require_in(&name, &config.access, CollectionAction::Configure)?;
    Ok(Json(config.redacted()))
}

/// Sets the collection's conflict handler; a script must load and define `resolve`.
#[utoipa::path(put, path = "/v1/collections/{name}", tag = "documents",
    params(("name" = String, Path, description = "The collection")),
    request_body(content = schema::CollectionBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored; it decides the next conflicts", body = schema::CollectionBody),
        (status = 400, description = "Not a valid configuration (the message says why)", body = schema::ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = schema::ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = schema::ErrorBody),
        (status = 503, description = "The store is unavailable", body = schema::ErrorBody),
    ))]
async fn put_collection(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    path: Result<Path<String>, PathRejection>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CollectionConfig>, ApiError> {
    let Path(name) = path?;
    wire::validate_collection(&name).map_err(ApiError::bad_request)?;
    let current = engine.collection(&name);
    caller.require_in(&name, &current.access, CollectionAction::Configure)?;
    let body = body?;
    exact::check(&body)
        .map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, "invalid_collection", problem))?;
    let config: CollectionConfig = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_collection",
            format!("not a valid collection configuration: {e}"),
        )
    })?;
    // Who may do what is an admin's to say: a caller the rules let
    // configure must not be able to widen its own rights.
    if let Some(p) = caller.principal()
        && p.role != Role::Admin
        && config.access != current.access
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "only an admin changes who may do what in a collection (access); client {:?} has role {}",
                p.subject, p.role
            ),
        ));
    }
    match engine
        .configure_collection(&name, config.clone(), caller.principal())
        .await
    {
        Ok(()) => Ok(Json(config.redacted())),
        Err(ConfigureError::Invalid(message)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_collection",
            message,
        )),
        Err(ConfigureError::Store(e)) => Err(ApiError::unavailable(e)),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ChangesQuery {
    /// At most this many, newest first (1 to 1,000; default 100).
    limit: Option<u32>,
    /// Only changes older than this cursor: the `next` of the page before.
    before: Option<i64>,
}

impl QueryParams for ChangesQuery {
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        ("limit", "a whole number from 1 to 1000"),
        ("before", "the next cursor of the page before"),
    ];
}

/// Who changed the collection's configuration, when, and to what, newest
/// first (the newest 1,000 are kept).
#[utoipa::path(get, path = "/v1/collections/{name}/changes", tag = "documents",
    params(("name" = String, Path, description = "The collection"), ChangesQuery),
    responses(
        (status = 200, description = "Changes, newest first", body = schema::CollectionChanges),
        (status = 400, description = "Not a valid collection name, or a bad query", body = schema::ErrorBody),
        (status = 503, description = "The store is unavailable", body = schema::ErrorBody),
    ))]
async fn get_collection_changes(
    State(engine): State<Engine>,
    ApiQuery(q): ApiQuery<ChangesQuery>,
    path: Result<Path<String>, PathRejection>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    wire::validate_collection(&name).map_err(ApiError::bad_request)?;
    caller.require_in(
        &name,
        &engine.collection(&name).access,
        CollectionAction::Configure,
    )?;
    let limit = q.limit.unwrap_or(CONFLICTS_LIMIT_DEFAULT);
    if limit == 0 || limit > CONFLICTS_LIMIT_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {CONFLICTS_LIMIT_MAX}"
        )));
    }
    // One more than asked says whether a page follows.
    let mut changes = engine
        .collection_changes(&name, q.before, limit + 1)
        .await
        .map_err(ApiError::unavailable)?;
    let more = changes.len() > limit as usize;
    changes.truncate(limit as usize);
    let next = more.then(|| changes.last().map(|c| c.seq)).flatten();
    let changes: Vec<Value> = changes
        .into_iter()
        .map(|c| {
            let by = match (c.by_client, c.by_role) {
                (Some(client), Some(role)) => json!({ "client": client, "role": role }),
                _ => Value::Null,
            };
            let config: Value = serde_json::from_str(&c.config).unwrap_or(Value::Null);
            json!({ "seq": c.seq, "at_ms": c.at_ms, "by": by, "config": config })
        })
        .collect();
    Ok(Json(match next {
        Some(next) => json!({ "changes": changes, "next": next }),
        None => json!({ "changes": changes }),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ConflictsQuery {
    /// Only this collection's conflicts.
    collection: Option<String>,
    /// Only this document's (with `collection`).
    key: Option<String>,
    /// At most this many, newest first (1 to 1,000; default 100).
    limit: Option<u32>,
    /// Only conflicts older than this cursor: the `next` of the page before.
    before: Option<i64>,
}

impl QueryParams for ConflictsQuery {
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        ("collection", "a collection's name"),
        ("key", "a document's key, with collection"),
        ("limit", "a whole number from 1 to 1000"),
        ("before", "the next cursor of the page before"),
    ];
}

/// What one page of conflicts holds at most, in bytes of their values (one
/// conflict always comes): each holds whole documents, so the count alone
/// let a page of 1,000 reach gigabytes.
const CONFLICTS_PAGE_BYTES_MAX: usize = 4 << 20;

/// The latest conflicts from the history database, newest first.
#[utoipa::path(get, path = "/v1/conflicts", tag = "observe",
    params(ConflictsQuery),
    responses(
        (status = 200, description = "Conflicts, newest first, at most `limit` and about 4 MiB of values; `next`, present when older conflicts remain, is the cursor of the page after", body = schema::Conflicts),
        (status = 400, description = "A bad query", body = schema::ErrorBody),
        (status = 503, description = "The history database is unavailable", body = schema::ErrorBody),
    ))]
async fn get_conflicts(
    State(engine): State<Engine>,
    ApiQuery(q): ApiQuery<ConflictsQuery>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    match q.collection.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => caller.require_in(c, &engine.collection(c).access, CollectionAction::History)?,
        None => caller.require(Action::Operate)?,
    }
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
        before_seq: q.before,
        bytes_max: Some(CONFLICTS_PAGE_BYTES_MAX),
    };
    let page = engine
        .conflicts(&query)
        .await
        .map_err(ApiError::unavailable)?;
    let next = page
        .more
        .then(|| page.conflicts.last().map(|(seq, _)| *seq))
        .flatten();
    let conflicts: Vec<Value> = page
        .conflicts
        .iter()
        .map(|(_, c)| conflict_json(c))
        .collect();
    // `next` only when there is a page after: the last page reads as before.
    Ok(Json(match next {
        Some(next) => json!({ "conflicts": conflicts, "next": next }),
        None => json!({ "conflicts": conflicts }),
    }))
}

/// Streams open at once; each holds a connection and polls the store when
/// commits happen.
const EVENT_STREAMS_MAX: usize = 1_024;
/// Events read from the store per query.
const EVENTS_PAGE: u32 = 256;
/// The shortest gap between two reads of the store by one stream.
const EVENTS_POLL_MIN: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// `start`: every answer still kept first; an event id: the answers
    /// after it. Absent: from now on. `Last-Event-ID`, when sent, wins.
    since: Option<String>,
}

impl QueryParams for EventsQuery {
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        CLIENT_PARAM,
        (
            "since",
            "start (every kept answer) or an event id (the answers after it)",
        ),
    ];
}

/// `GET /v1/events?client=…`: the client's outcomes as Server-Sent Events,
/// one `outcome` event per decided mutation, its id opaque
/// (`event_id.rs`); `Last-Event-ID` or `since` resume after an id.
#[utoipa::path(get, path = "/v1/events", tag = "mutations",
    params(("client" = String, Query, description = "The client whose answers these are, as named in its mutations' bodies (empty: the anonymous client)"), EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (wins over `since`)")),
    responses(
        (status = 200, description = "Server-Sent Events: `event: outcome`, `id:` an opaque event id, `data:` the mutation's answer",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "No `client`, a bad Last-Event-ID, or a parameter the route does not take", body = schema::ErrorBody),
        (status = 503, description = "Too many streams are open", body = schema::ErrorBody),
    ))]
async fn get_events(
    State(engine): State<Engine>,
    ApiQuery(EventsQuery { since }): ApiQuery<EventsQuery>,
    caller: Caller,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let client = caller.client()?.to_owned();
    use axum::response::sse::{Event, KeepAlive, Sse};
    static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let secret = engine
        .events_secret()
        .await
        .map_err(ApiError::unavailable)?;
    let ids = event_id::EventIds::new(&secret);
    let decode = |id: &str, what: &str| {
        ids.decode(id).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{what} must be an event id this server sent (an event's id:), or since=start; got {id:?}"
            ))
        })
    };
    // A reconnecting EventSource sends Last-Event-ID with the URL it began
    // with: the header wins over `since`.
    let last = match (headers.get("last-event-id"), since.as_deref()) {
        (Some(v), _) => decode(v.to_str().unwrap_or(""), "Last-Event-ID")?,
        (None, Some("start")) => 0,
        (None, Some(id)) => decode(id, "query parameter \"since\"")?,
        (None, None) => engine
            .events_head(&client)
            .await
            .map_err(ApiError::unavailable)?,
    };
    let open = dashboard::StreamSlot::take(&OPEN, EVENT_STREAMS_MAX).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many event streams are open",
        )
    })?;
    struct EventStream {
        engine: Engine,
        ids: event_id::EventIds,
        client: String,
        last: i64,
        buffer: std::collections::VecDeque<(i64, String)>,
        signal: tokio::sync::watch::Receiver<u64>,
        _open: dashboard::StreamSlot,
    }
    let state = EventStream {
        signal: engine.commit_signal(),
        engine,
        ids,
        client,
        last,
        buffer: Default::default(),
        _open: open,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some((seq, body)) = st.buffer.pop_front() {
                st.last = seq;
                let event = Event::default()
                    .event("outcome")
                    .id(st.ids.encode(seq))
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

/// The dispatcher's state: load, threshold, limits, queue.
#[utoipa::path(get, path = "/v1/stats", tag = "observe",
    responses(
        (status = 200, description = "A snapshot", body = schema::EngineStats),
        (status = 400, description = "A query parameter (the route takes none)", body = schema::ErrorBody),
    ))]
async fn get_stats(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    caller: Caller,
) -> Result<Json<crate::dispatch::EngineStats>, ApiError> {
    caller.require(Action::Operate)?;
    Ok(Json(engine.stats()))
}

/// The conflict predictor: its training and its quality.
#[utoipa::path(get, path = "/v1/model", tag = "observe",
    responses(
        (status = 200, description = "The model's report", body = schema::ModelReport),
        (status = 400, description = "A query parameter (the route takes none)", body = schema::ErrorBody),
    ))]
async fn get_model(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    caller: Caller,
) -> Result<Json<crate::predict::ModelReport>, ApiError> {
    caller.require(Action::Operate)?;
    Ok(Json(engine.model_report()))
}

/// Cluster mode: the live members, the partitions each owns, their
/// fencing epochs and their streams' backlogs.
#[utoipa::path(get, path = "/v1/cluster", tag = "observe",
    responses(
        (status = 200, description = "The cluster now", body = schema::ClusterView),
        (status = 400, description = "A query parameter (the route takes none)", body = schema::ErrorBody),
        (status = 404, description = "This process is not in a cluster (started without --redis)", body = schema::ErrorBody),
        (status = 503, description = "Redis did not answer", body = schema::ErrorBody),
    ))]
async fn get_cluster(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    caller: Caller,
) -> Result<Json<crate::dispatch::ClusterView>, ApiError> {
    caller.require(Action::Operate)?;
    match engine.cluster_view().await {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_clustered",
            "this Sluice process is not in a cluster; start it with --redis to join one",
        )),
        Some(Ok(view)) => Ok(Json(view)),
        Some(Err(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!("the cluster's Redis did not answer: {e}"),
        )),
    }
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
