//! `GET /v1/shadow`: the shadow writes waiting in the staging area.

use super::caller::Caller;
use super::query::{ApiQuery, QueryParams};
use super::{ApiError, schema};
use crate::auth::{Action, CollectionAction};
use crate::dispatch::{Engine, STAGED_LIST_MAX, StagedView};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ShadowQuery {
    /// Only this collection's.
    collection: Option<String>,
    /// At most this many, oldest first (1 to 1,000; default 100).
    limit: Option<u32>,
}

impl QueryParams for ShadowQuery {
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        ("collection", "a collection's name"),
        ("limit", "a whole number from 1 to 1000"),
    ];
}

/// `GET /v1/shadow`'s answer.
#[derive(serde::Serialize)]
pub(super) struct StagedList {
    staged: Vec<StagedView>,
}

/// Shadow writes waiting in the staging area, oldest first, each with what
/// it would meet if it were decided now.
#[utoipa::path(get, path = "/v1/shadow", tag = "mutations",
    params(ShadowQuery),
    responses(
        (status = 200, description = "Staged mutations, oldest first", body = schema::StagedList),
        (status = 400, description = "A bad query", body = schema::ErrorBody),
        (status = 503, description = "The store is unavailable", body = schema::ErrorBody),
    ))]
pub(super) async fn get_shadow(
    State(engine): State<Engine>,
    ApiQuery(q): ApiQuery<ShadowQuery>,
    caller: Caller,
) -> Result<Json<StagedList>, ApiError> {
    let collection = q.collection.filter(|c| !c.is_empty());
    match &collection {
        Some(c) => {
            super::wire::validate_collection(c).map_err(ApiError::bad_request)?;
            caller.require_in(
                c,
                &engine.collection(c).access,
                CollectionAction::Quarantine,
            )?;
        }
        None => caller.require(Action::Operate)?,
    }
    let limit = match q.limit {
        None => 100,
        Some(n @ 1..=STAGED_LIST_MAX) => n,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "limit must be from 1 to {STAGED_LIST_MAX}"
            )));
        }
    };
    let staged = engine
        .staged(collection.as_deref(), limit)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(StagedList { staged }))
}
