//! The door of every request before its handler runs.
//!
//! Cross-site requests: a web page elsewhere must neither write nor
//! configure through a Sluice the browser can reach (one on the user's own
//! machine included). Requests that change something are refused when
//! they carry an `Origin` that is neither the server's own (the dashboard)
//! nor listed in `cors_origins`, and mutation and configuration bodies must
//! be `application/json` (a form or `text/plain` post, which a page may send
//! without asking, gets 415). Allowed origins get CORS answers, preflights
//! included.
//!
//! Request bodies: a parsed body takes many times its size, so the bytes of
//! bodies being read and decided at once are bounded; a request that finds
//! no room soon gets 503 `bodies_in_flight_full` before its body is read.

use super::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What the guard holds: the origins besides the server's own that may send
/// requests, and the budget of request bodies being read and decided at once.
#[derive(Clone, Debug)]
pub struct Origins {
    allowed: Arc<Vec<String>>,
    bodies: Arc<Semaphore>,
    bodies_max: usize,
}

impl Default for Origins {
    fn default() -> Origins {
        Origins::new(&[], BODY_BYTES_IN_FLIGHT_MAX_DEFAULT)
    }
}

/// Bytes of request bodies read and decided at once, by default. A parsed
/// body takes many times its size in memory (a 1 MiB body of tiny fields
/// took 65 MB), so this is what bounds a burst of large requests.
pub(crate) const BODY_BYTES_IN_FLIGHT_MAX_DEFAULT: usize = 8 << 20;
/// How long a request waits for room in that budget before 503.
const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Origins {
    pub fn new(allowed: &[String], bodies_max: usize) -> Origins {
        let allowed = allowed.iter().map(|o| o.trim_end_matches('/').to_owned());
        let bodies_max = bodies_max.clamp(1, u32::MAX as usize);
        Origins {
            allowed: Arc::new(allowed.collect()),
            bodies: Arc::new(Semaphore::new(bodies_max)),
            bodies_max,
        }
    }

    fn allows(&self, origin: &str, headers: &HeaderMap) -> bool {
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin == format!("http://{host}") || origin == format!("https://{host}")
            });
        own || self
            .allowed
            .iter()
            .any(|allowed| allowed == origin || allowed == "*")
    }
}

/// Whether the route takes a JSON body that must say so.
fn takes_json(method: &Method, path: &str) -> bool {
    (method == Method::POST && (path == "/v1/mutations" || path == "/v1/mutations:batch"))
        || (method == Method::PUT && path.starts_with("/v1/collections/"))
}

/// The body length a request declares, if it declares one.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

pub(crate) async fn guard(
    State(origins): State<Origins>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    if let Some(origin) = &origin
        && !origins.allows(origin, request.headers())
    {
        // Reads have no effect, and without CORS answers the page cannot
        // read them; anything else is refused before it runs.
        if !matches!(method, Method::GET | Method::HEAD) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("requests from {origin} are not allowed; list it in cors_origins"),
            )
            .into_response();
        }
        return next.run(request).await;
    }
    if let Some(origin) = &origin
        && method == Method::OPTIONS
    {
        return cors(StatusCode::NO_CONTENT.into_response(), origin, true);
    }
    if takes_json(&method, request.uri().path()) {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "the body must be sent as Content-Type: application/json, not {:?} (curl --json sends it)",
                    content_type
                ),
            )
            .into_response();
        }
    }
    // A request with a body holds its share of the budget while it is
    // read, parsed and decided (a body without a length counts as the
    // largest one).
    let _room = if matches!(method, Method::POST | Method::PUT) {
        let declared =
            declared_length(request.headers()).unwrap_or(super::wire::BATCH_BODY_BYTES_MAX);
        let weight = u32::try_from(declared.clamp(1, origins.bodies_max)).unwrap_or(u32::MAX);
        match tokio::time::timeout(BODY_WAIT, origins.bodies.clone().acquire_many_owned(weight))
            .await
        {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "bodies_in_flight_full",
                    "too many large requests are being read at once; nothing was done, retry after a moment",
                )
                .into_response();
            }
        }
    } else {
        None
    };
    let response = next.run(request).await;
    match origin {
        Some(origin) => cors(response, &origin, false),
        None => response,
    }
}

/// CORS answers for an allowed origin.
fn cors(mut response: Response, origin: &str, preflight: bool) -> Response {
    let headers = response.headers_mut();
    if let Ok(value) = origin.parse() {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static("GET, POST, PUT"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::HeaderValue::from_static("content-type, authorization, last-event-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            header::HeaderValue::from_static("600"),
        );
    }
    response
}
