//! The live dashboard: one page embedded in the binary (no CDN: its script
//! and styles are inline), fed by a snapshot stream over Server-Sent Events.

use super::ApiError;
use super::caller::Caller;
use crate::auth::Action;
use crate::dispatch::{Dashboard, Engine};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The page, its script and its styles.
const PAGE: &str = include_str!("dashboard.html");
/// Dashboards watching at once; each costs one snapshot a second.
pub(crate) const DASHBOARD_STREAMS_MAX: usize = 64;
/// How often a stream sends a snapshot: the board closes a second at a time.
const DASHBOARD_EVERY: Duration = Duration::from_secs(1);

/// The dashboard page.
#[utoipa::path(get, path = "/", tag = "observe",
    responses((status = 200, description = "The live dashboard (HTML, self-contained)",
        content_type = "text/html", body = String)))]
pub(crate) async fn page() -> Response {
    // Keys and values on the page are users' data: the page escapes them,
    // and the policy lets nothing but its own inline script, its styles and
    // its feed run or load, should an escape ever be missed.
    let policy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                  connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'";
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(policy),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// What the dashboard draws, once: the series of the last five minutes
/// (per second), the hottest documents, the latest conflicts, the
/// dispatcher's state and the model's calibration.
#[utoipa::path(get, path = "/v1/dashboard", tag = "observe",
    responses((status = 200, description = "A snapshot", body = super::schema::Dashboard)))]
pub(super) async fn get_dashboard(
    State(engine): State<Engine>,
    caller: Caller,
) -> Result<Json<Dashboard>, ApiError> {
    caller.require(Action::Operate)?;
    Ok(Json(engine.dashboard(0)))
}

/// A count of open streams, released on drop.
pub(super) struct StreamSlot(&'static AtomicUsize);

impl StreamSlot {
    /// Takes one of `max` slots, or `None` when all are taken.
    pub(super) fn take(open: &'static AtomicUsize, max: usize) -> Option<StreamSlot> {
        if open.fetch_add(1, Ordering::SeqCst) >= max {
            open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(StreamSlot(open))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The dashboard's feed: an `event: snapshot` every second, `data:` a
/// snapshot as `GET /v1/dashboard` gives it, except that the series holds
/// only the points the stream has not sent yet (all of them first).
#[utoipa::path(get, path = "/v1/dashboard/events", tag = "observe",
    responses(
        (status = 200, description = "Server-Sent Events, one `snapshot` a second",
            content_type = "text/event-stream", body = String),
        (status = 503, description = "Too many dashboards are open", body = super::schema::ErrorBody),
    ))]
pub(super) async fn get_dashboard_events(
    State(engine): State<Engine>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Action::Operate)?;
    static OPEN: AtomicUsize = AtomicUsize::new(0);
    let slot = StreamSlot::take(&OPEN, DASHBOARD_STREAMS_MAX).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{DASHBOARD_STREAMS_MAX} dashboards are open already"),
        )
    })?;
    struct Feed {
        engine: Engine,
        sent_through_ms: i64,
        first: bool,
        _slot: StreamSlot,
    }
    let feed = Feed {
        engine,
        sent_through_ms: 0,
        first: true,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        if !feed.first {
            tokio::time::sleep(DASHBOARD_EVERY).await;
        }
        feed.first = false;
        let snapshot = feed.engine.dashboard(feed.sent_through_ms);
        if let Some(last) = snapshot.board.series.last() {
            feed.sent_through_ms = last.at_ms;
        }
        let event = match serde_json::to_string(&snapshot) {
            Ok(data) => Event::default().event("snapshot").data(data),
            Err(e) => Event::default().event("error").data(e.to_string()),
        };
        Some((Ok::<Event, std::convert::Infallible>(event), feed))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
