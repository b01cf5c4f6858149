//! `GET /v1/events`: a client's answers as Server-Sent Events.

use super::caller::{CLIENT_PARAM, Caller};
use super::query::{ApiQuery, QueryParams};
use super::{ApiError, dashboard, event_id, schema};
use crate::dispatch::Engine;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// Streams open at once; each holds a connection and polls the store when
/// commits happen.
const EVENT_STREAMS_MAX: usize = 1_024;
/// Events read from the store per query.
const EVENTS_PAGE: u32 = 256;
/// The shortest gap between two reads of the store by one stream.
const EVENTS_POLL_MIN: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
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
pub(super) async fn get_events(
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
