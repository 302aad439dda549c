//! The release routes under `/api/v1` beyond the list: a release's bake log.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState};
use crate::store::releases::{BakeLogLine, Release};

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/projects/{project}/releases/{version}/bake-log",
        get(bake_log),
    )
}

/// `GET .../releases/{version}/bake-log`: the bake's lines (Packer's and Ansible's), in order.
async fn bake_log(
    State(state): State<AppState>,
    Path((project, version)): Path<(String, String)>,
) -> Result<Json<Vec<BakeLogLine>>, ApiError> {
    let release = find_release(&state, &project, &version).await?;
    Ok(Json(state.store.bake_log_lines(release.id).await?))
}

/// Release `v<N>` (or plain `N`) of a configured project.
async fn find_release(state: &AppState, project: &str, version: &str) -> Result<Release, ApiError> {
    if state.config.project(project).is_none() {
        return Err(ApiError::not_found(format!("no project named `{project}`")));
    }
    let number: i64 = version
        .strip_prefix('v')
        .unwrap_or(version)
        .parse()
        .map_err(|_| {
            ApiError::bad_request(format!("`{version}` is not a release version like v3"))
        })?;
    state
        .store
        .release(project, number)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project `{project}` has no release v{number}")))
}
