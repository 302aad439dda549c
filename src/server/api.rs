//! The JSON API under `/api/v1` (bearer-token protected) and `/healthz`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::auth::Caller;
use super::tokens_api::audit;
use super::{ApiError, AppState};
use crate::queue::LiveEvent;
use crate::store::audit::NewAuditEvent;
use crate::store::builds::{Build, NewBuild};

/// The largest request body the API reads: its requests are a few small fields.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/projects", get(list_projects))
        .route("/projects/{project}/builds", get(list_builds))
        .route("/projects/{project}/builds/{number}", get(get_build))
        .route("/projects/{project}/builds/{number}/logs", get(build_logs))
        .route(
            "/projects/{project}/builds/{number}/cancel",
            post(cancel_build),
        )
        .route("/projects/{project}/builds/{number}/rebuild", post(rebuild))
        .route("/projects/{project}/releases", get(list_releases))
        .merge(super::releases_api::routes())
        .merge(super::deploy_api::routes())
        .merge(super::tokens_api::routes())
        .layer(middleware::from_fn_with_state(
            state,
            super::auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
}

/// The JSON body of a request, or a 400 that says why not (too large, not the JSON asked for).
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::bad_request(format!(
            "the request body is over {MAX_REQUEST_BYTES} bytes, the most an API request may carry"
        )),
        _ => ApiError::bad_request("the request body could not be read"),
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not what was expected: {e}"))
    })
}

/// `GET /healthz`: 200 when the store and Docker answer, 503 (with which one failed) otherwise.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let store = match state.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("unreachable: {e}"),
    };
    let docker = match state.queue.docker_ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("unreachable: {e}"),
    };
    let healthy = store == "ok" && docker == "ok";
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "store": store,
        "docker": docker,
        "version": env!("CARGO_PKG_VERSION"),
    });
    (status, Json(body)).into_response()
}

async fn list_projects(State(state): State<AppState>) -> Json<serde_json::Value> {
    let projects: Vec<_> = state
        .config
        .projects
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "repository": p.repository,
                "deploy_branch": p.deploy_branch,
                "environments": p.environments.iter().map(|e| &e.name).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!(projects))
}

fn known_project(state: &AppState, project: &str) -> Result<(), ApiError> {
    if state.config.project(project).is_some() {
        Ok(())
    } else {
        let names: Vec<&str> = state
            .config
            .projects
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        Err(ApiError::not_found(format!(
            "no project named `{project}`; projects: {}",
            if names.is_empty() {
                "none configured".to_string()
            } else {
                names.join(", ")
            }
        )))
    }
}

async fn find_build(state: &AppState, project: &str, number: i64) -> Result<Build, ApiError> {
    known_project(state, project)?;
    state
        .store
        .build(project, number)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project `{project}` has no build {number}")))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list_builds(
    State(state): State<AppState>,
    Path(project): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<Build>>, ApiError> {
    known_project(&state, &project)?;
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(state.store.list_builds(&project, limit).await?))
}

async fn get_build(
    State(state): State<AppState>,
    Path((project, number)): Path<(String, i64)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let build = find_build(&state, &project, number).await?;
    let steps = state.store.steps(build.id).await?;
    let mut body = serde_json::to_value(&build).expect("builds serialize");
    body["steps"] = json!(steps);
    Ok(Json(body))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
}

/// The whole log as JSON lines, or with `?follow=true` a server-sent event stream: the lines
/// so far, then new ones as they come, then an `end` event with the build's final status.
async fn build_logs(
    State(state): State<AppState>,
    Path((project, number)): Path<(String, i64)>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let build = find_build(&state, &project, number).await?;
    if !query.follow {
        let lines = state.store.log_lines(build.id, 0).await?;
        return Ok(Json(lines).into_response());
    }
    Ok(Sse::new(follow_logs(state, build))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn follow_logs(state: AppState, build: Build) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        // Subscribe before reading the store, then skip what was already sent by seq.
        let mut live = state.queue.subscribe(build.id);
        let mut last_seq = 0;
        if let Ok(lines) = state.store.log_lines(build.id, 0).await {
            for line in lines {
                last_seq = line.seq;
                if tx.send(line_event(&line)).await.is_err() {
                    return;
                }
            }
        }
        if let Some(live) = live.as_mut() {
            loop {
                let lines = match live.recv().await {
                    Ok(LiveEvent::Line(line)) => vec![line],
                    Ok(LiveEvent::Finished) | Err(RecvError::Closed) => break,
                    // A slow reader fell behind the live channel: catch up from the store.
                    Err(RecvError::Lagged(_)) => {
                        match state.store.log_lines(build.id, last_seq).await {
                            Ok(lines) => lines,
                            Err(_) => break,
                        }
                    }
                };
                for line in lines {
                    if line.seq <= last_seq {
                        continue;
                    }
                    last_seq = line.seq;
                    if tx.send(line_event(&line)).await.is_err() {
                        return;
                    }
                }
            }
        }
        // Lines stored after the live channel closed, if any.
        if let Ok(lines) = state.store.log_lines(build.id, last_seq).await {
            for line in lines {
                if tx.send(line_event(&line)).await.is_err() {
                    return;
                }
            }
        }
        let status = match state.store.build_by_id(build.id).await {
            Ok(Some(b)) => b.status.as_str(),
            _ => "unknown",
        };
        let _ = tx
            .send(
                Event::default()
                    .event("end")
                    .data(json!({ "status": status }).to_string()),
            )
            .await;
    })
}

fn line_event(line: &crate::store::builds::LogLineRecord) -> Event {
    Event::default()
        .event("line")
        .data(serde_json::to_string(line).expect("log lines serialize"))
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(producer(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

async fn cancel_build(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, number)): Path<(String, i64)>,
) -> Result<Json<Build>, ApiError> {
    let before = find_build(&state, &project, number).await?;
    let build = state
        .store
        .request_cancel(&project, number)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project `{project}` has no build {number}")))?;
    state.queue.cancel(build.id);
    let event = NewAuditEvent {
        action: "cancel",
        project: Some(&project),
        environment: None,
        subject: format!("build {number}"),
        deployment_id: None,
        detail: json!({ "status_before": before.status }),
    };
    audit(&state, &caller, event).await;
    Ok(Json(build))
}

async fn rebuild(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, number)): Path<(String, i64)>,
) -> Result<(StatusCode, Json<Build>), ApiError> {
    let old = find_build(&state, &project, number).await?;
    let new = NewBuild {
        project: old.project,
        branch: old.branch,
        commit: old.commit,
        event: "rebuild".to_string(),
    };
    let queued = state
        .store
        .enqueue_builds(None, std::slice::from_ref(&new))
        .await?
        .unwrap_or_default();
    state.queue.wake();
    let build = queued
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "nothing was queued"))?;
    let event = NewAuditEvent {
        action: "rebuild",
        project: Some(&project),
        environment: None,
        subject: format!("build {number}"),
        deployment_id: None,
        detail: json!({ "queued": build.number }),
    };
    audit(&state, &caller, event).await;
    Ok((StatusCode::CREATED, Json(build)))
}

async fn list_releases(
    State(state): State<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Vec<crate::store::releases::Release>>, ApiError> {
    known_project(&state, &project)?;
    Ok(Json(state.store.list_releases(&project).await?))
}
