//! HTTP API v1: routes, extraction and the mapping of every error to
//! `{"error": {"code", "message"}}` with its status, in one place.

mod answer;
mod caller;
mod contract;
pub(crate) mod dashboard;
mod event_id;
mod events;
mod exact;
pub(crate) mod guard;
mod mutations;
mod quarantine;
mod query;
pub(crate) mod schema;
mod shadow;
mod simulate;
pub mod wire;

pub use answer::{Reply, reply};

use crate::auth::{Action, Authenticator, CollectionAction, Role};
use crate::dispatch::{ConfigureError, Engine, ReadError};
use crate::history::{CONFLICTS_LIMIT_DEFAULT, CONFLICTS_LIMIT_MAX, ConflictQuery};
use crate::model::ConflictRecord;
use crate::model::DocKey;
use crate::resolve::CollectionConfig;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use caller::Caller;
pub use contract::openapi;
use query::{ApiQuery, NoParams, QueryParams};
use serde::Deserialize;
use serde_json::{Value, json};
use std::any::Any;
use std::sync::Arc;
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
    pub(super) fn retry_after(self, seconds: u32) -> Self {
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
        .routes(routes!(
            mutations::post_mutation,
            quarantine::list_mutations
        ))
        .routes(
            routes!(mutations::post_batch).layer(DefaultBodyLimit::max(wire::BATCH_BODY_BYTES_MAX)),
        )
        .routes(routes!(mutations::get_mutation))
        .routes(routes!(simulate::post_simulate))
        .routes(routes!(get_document))
        .routes(routes!(get_collection, put_collection))
        .routes(routes!(get_collection_changes))
        .routes(routes!(get_shadow_report))
        .routes(routes!(get_conflicts))
        .routes(routes!(quarantine::get_quarantine))
        .routes(routes!(shadow::get_shadow))
        .routes(routes!(events::get_events))
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

/// The document's current version and item; with `intent=write`, the
/// forecast for a write based on it and, when the forecast earns one, a
/// write lease.
#[utoipa::path(get, path = "/v1/documents/{collection}/{*key}", tag = "documents",
    params(
        ("collection" = String, Path, description = "The collection"),
        ("key" = String, Path, description = "The document's key; may contain `/`"),
        ("intent" = Option<String>, Query, description = "`write`: the caller means to write the document; the answer carries a forecast and perhaps a lease (`read`, the default: neither)"),
        ("client" = Option<String>, Query, description = "With `intent=write`: the client that will write (absent: the anonymous client, as a mutation without `client`)"),
    ),
    responses(
        (status = 200, description = "The document", body = schema::DocumentBody),
        (status = 400, description = "Not a valid collection, key or query", body = schema::ErrorBody),
        (status = 404, description = "Never written", body = schema::ErrorBody),
        (status = 429, description = "Overloaded", body = schema::ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = "The store is unavailable", body = schema::ErrorBody),
    ))]
async fn get_document(
    State(engine): State<Engine>,
    ApiQuery(query): ApiQuery<DocumentQuery>,
    path: Result<Path<(String, String)>, PathRejection>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let Path((collection, key)) = path?;
    wire::validate_collection(&collection).map_err(ApiError::bad_request)?;
    wire::validate_key(&key).map_err(ApiError::bad_request)?;
    let rules = engine.collection(&collection);
    caller.require_in(&collection, &rules.access, CollectionAction::Read)?;
    let writer = match query.intent {
        Intent::Read => None,
        Intent::Write => {
            caller.require_in(&collection, &rules.access, CollectionAction::Write)?;
            Some(caller.writer()?)
        }
    };
    let doc_key = DocKey::new(collection.clone(), key.clone());
    let doc = engine.document(&doc_key).await.map_err(|e| match e {
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
    let mut body = json!({ "collection": collection, "key": key, "version": doc.version, "item": doc.item_value() });
    if let Some(client) = writer {
        let forecast = engine.forecast(&doc_key, &client, doc.version);
        body["forecast"] = json!({ "conflict_probability": forecast.conflict_probability });
        if let Some(lease) = forecast.lease {
            body["lease"] = json!({ "token": lease.token, "expires_ms": lease.expires_ms });
        }
    }
    Ok(Json(body))
}

/// `GET /v1/documents/{c}/{k}`'s query.
#[derive(serde::Deserialize)]
struct DocumentQuery {
    #[serde(default)]
    intent: Intent,
}

#[derive(serde::Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Intent {
    #[default]
    Read,
    Write,
}

impl QueryParams for DocumentQuery {
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        (
            "intent",
            "read (the default) or write: a write intent is answered with a forecast and perhaps a write lease",
        ),
        caller::CLIENT_PARAM,
    ];
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

/// How often the collection's shadow handler agreed with the live one on
/// real conflicts, and the latest disagreements side by side.
#[utoipa::path(get, path = "/v1/collections/{name}/shadow-report", tag = "documents",
    params(("name" = String, Path, description = "The collection")),
    responses(
        (status = 200, description = "The comparisons since the start (kept in memory)", body = schema::ShadowReportBody),
        (status = 400, description = "Not a valid collection name", body = schema::ErrorBody),
    ))]
async fn get_shadow_report(
    State(engine): State<Engine>,
    _: ApiQuery<NoParams>,
    path: Result<Path<String>, PathRejection>,
    caller: Caller,
) -> Result<Json<crate::dispatch::ShadowReport>, ApiError> {
    let Path(name) = path?;
    wire::validate_collection(&name).map_err(ApiError::bad_request)?;
    caller.require_in(
        &name,
        &engine.collection(&name).access,
        CollectionAction::Configure,
    )?;
    Ok(Json(engine.shadow_report(&name)))
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
