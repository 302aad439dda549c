//! The release routes under `/api/v1` beyond the list: the bake log of a release's image, and
//! rebakes.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::tokens_api::audit;
use super::{ApiError, AppState};
use crate::store::audit::NewAuditEvent;
use crate::store::release_images::{ImageSlot, AMI, DOCKER};
use crate::store::releases::{BakeLogLine, Release};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/projects/{project}/releases/{version}/bake-log",
            get(bake_log),
        )
        .route(
            "/projects/{project}/releases/{version}/rebake",
            post(rebake),
        )
}

/// Which image's bake log: `?kind=docker` (the default) or `?kind=ami&region=eu-west-1`.
#[derive(Debug, Deserialize)]
struct LogQuery {
    kind: Option<String>,
    region: Option<String>,
}

/// `GET .../releases/{version}/bake-log`: the lines (Packer's and Ansible's) of the bake of one
/// of the release's images, in order; the Docker image's unless the query names another.
async fn bake_log(
    State(state): State<AppState>,
    Path((project, version)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<Json<Vec<BakeLogLine>>, ApiError> {
    let slot = match (query.kind.as_deref().unwrap_or(DOCKER), query.region) {
        (DOCKER, None) => ImageSlot::docker(),
        (DOCKER, Some(_)) => {
            return Err(ApiError::bad_request(
                "query `region`: the Docker image has no region; drop it".to_string(),
            ))
        }
        (AMI, Some(region)) if !region.is_empty() && region.len() <= 64 => ImageSlot {
            kind: AMI.to_string(),
            region,
        },
        (AMI, _) => return Err(ApiError::bad_request(
            "query `region`: an AMI's bake log needs its region, e.g. ?kind=ami&region=eu-west-1"
                .to_string(),
        )),
        (other, _) => {
            return Err(ApiError::bad_request(format!(
                "query `kind`: expected `docker` or `ami`, got {:?}",
                other.chars().take(64).collect::<String>()
            )))
        }
    };
    let release = find_release(&state, &project, &version).await?;
    Ok(Json(state.store.bake_log_lines(release.id, &slot).await?))
}

/// `POST .../releases/{version}/rebake`: queues a bake of the release's Docker image, which runs
/// even when an image with an equal bake key exists, and answers 202 with the release (now
/// `queued`); the new image replaces the recorded one when the bake ends. 404 for an unknown
/// release and 409 for one that cannot be rebaked (no published package or no recorded recipe)
/// or is queued or baking; both name the releases that can be rebaked.
async fn rebake(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, version)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    if state.config.project(&project).is_none() {
        return Err(ApiError::not_found(format!("no project named `{project}`")));
    }
    let number = version
        .strip_prefix('v')
        .unwrap_or(&version)
        .parse::<i64>()
        .ok();
    let found = match number {
        Some(number) => state.store.release(&project, number).await?,
        None => None,
    };
    let Some(release) = found else {
        let listed = rebakeable(&state, &project).await?;
        return Err(ApiError::not_found(format!(
            "project `{project}` has no release {version:?}; releases that can be rebaked: {listed}"
        )));
    };
    let Some(claimed) = state.store.claim_rebake(release.id).await? else {
        let why = match release.bake_status.as_deref() {
            Some("baking") => "is baking; wait for its bake to end",
            Some("queued") => "is queued to bake; wait for its bake to end",
            _ => "cannot be rebaked: it published no package or records no bake recipe",
        };
        let listed = rebakeable(&state, &project).await?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "release {} of `{project}` {why}; releases that can be rebaked: {listed}",
                release.version
            ),
        ));
    };
    let event = NewAuditEvent {
        action: "rebake",
        project: Some(&project),
        environment: None,
        subject: claimed.version.clone(),
        deployment_id: None,
        detail: json!({}),
    };
    audit(&state, &caller, event).await;
    state.bakes.wake();
    Ok((StatusCode::ACCEPTED, Json(claimed)))
}

/// The versions of `project`'s releases that can be rebaked, for refusals.
async fn rebakeable(state: &AppState, project: &str) -> Result<String, ApiError> {
    let releases = state.store.rebakeable_releases(project).await?;
    let versions: Vec<&str> = releases.iter().map(|r| r.version.as_str()).collect();
    Ok(match versions.is_empty() {
        true => "none yet".to_owned(),
        false => versions.join(", "),
    })
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
