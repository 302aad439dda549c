//! `GET /api/v1/projects/{p}/notifications`: the project's recent notification deliveries,
//! newest first, each with its event, target, message and outcome (never a target's URL).

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::api::known_project;
use super::{ApiError, AppState};
use crate::store::notifications::NotificationRecord;

/// The most deliveries one answer lists.
const LIMIT_MAX: i64 = 500;

pub fn routes() -> Router<AppState> {
    Router::new().route("/projects/{project}/notifications", get(list))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    Path(project): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<NotificationRecord>>, ApiError> {
    known_project(&state, &project)?;
    let limit = query.limit.unwrap_or(100).clamp(1, LIMIT_MAX);
    Ok(Json(state.store.list_notifications(&project, limit).await?))
}
