//! `POST /hooks/bitbucket`: turns a signed Bitbucket delivery into queued builds.
//!
//! The answer comes at once: builds run from the persistent queue. Unknown repositories and
//! events get a 2xx that says they were ignored and why (Bitbucket retries non-2xx answers);
//! a missing or wrong signature gets 401 and queues nothing. A signed delivery with a field
//! Slipway refuses (a commit that is not a full hex id, a bad branch name, a control
//! character, an oversized delivery id) gets 400 naming the field, and nothing is queued or
//! recorded as seen, so a corrected redelivery is accepted.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::store::builds::NewBuild;
use crate::webhook::{self, Delivery};

pub async fn bitbucket(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let event = header("X-Event-Key")
        .ok_or_else(|| ApiError::bad_request("missing X-Event-Key header"))?
        .to_string();
    if event == "diagnostics:ping" {
        return Ok(accepted(json!({ "result": "pong" })));
    }
    let repository =
        webhook::repository_of(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Some(repository) = repository else {
        return Ok(ignored(format!("event `{event}` names no repository")));
    };
    let Some(project) = state
        .config
        .projects
        .iter()
        .find(|p| p.repository.eq_ignore_ascii_case(&repository))
    else {
        return Ok(ignored(format!(
            "no project is configured for repository `{repository}`"
        )));
    };
    let Some(secret) = &project.webhook_secret else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "project `{}` has no webhook secret configured, so no delivery can be trusted",
                project.name
            ),
        ));
    };
    if let Err(e) =
        webhook::verify_signature(secret.expose().as_bytes(), &body, header("X-Hub-Signature"))
    {
        tracing::warn!(project = %project.name, error = %e, "rejected a webhook delivery");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    let delivery_id = delivery_id(&headers)?;
    let push =
        match webhook::parse(&event, &body).map_err(|e| ApiError::bad_request(e.to_string()))? {
            Delivery::Push(push) => push,
            Delivery::Ping => return Ok(accepted(json!({ "result": "pong" }))),
            Delivery::Ignored(event) => {
                return Ok(ignored(format!("event `{event}` does not start builds")))
            }
        };

    let mut builds = Vec::new();
    let mut skipped = Vec::new();
    for change in push.refs {
        match change.commit {
            None => skipped.push(json!({ "branch": change.branch, "reason": "branch deleted" })),
            Some(_) if !project.branches.is_match(&change.branch) => skipped.push(json!({
                "branch": change.branch,
                "reason": format!("branch does not match the project's pattern `{}`", project.branches.as_str()),
            })),
            Some(commit) => builds.push(NewBuild {
                project: project.name.clone(),
                branch: change.branch,
                commit,
                event: "push".to_string(),
            }),
        }
    }
    if builds.is_empty() {
        return Ok(accepted(json!({ "queued": [], "skipped": skipped })));
    }
    let Some(queued) = state.store.enqueue_builds(delivery_id, &builds).await? else {
        return Ok(ignored(format!(
            "delivery {} was already received",
            delivery_id.unwrap_or_default()
        )));
    };
    state.queue.wake();
    for build in &queued {
        tracing::info!(project = %build.project, build = build.number, branch = %build.branch, commit = %build.commit, "queued a build");
    }
    let queued: Vec<Value> = queued
        .iter()
        .map(|b| json!({ "number": b.number, "branch": b.branch, "commit": b.commit }))
        .collect();
    Ok(accepted(json!({ "queued": queued, "skipped": skipped })))
}

/// Longest delivery id kept to recognise redeliveries (Bitbucket sends a 36-character UUID).
const MAX_DELIVERY_ID_BYTES: usize = 128;

/// The delivery's id (Cloud `X-Request-UUID`, Data Center `X-Request-Id`), if it sent one.
fn delivery_id(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some((name, value)) = ["X-Request-UUID", "X-Request-Id"]
        .into_iter()
        .find_map(|name| headers.get(name).map(|value| (name, value)))
    else {
        return Ok(None);
    };
    let printable = value.as_bytes().iter().all(|b| b.is_ascii_graphic());
    match value.to_str() {
        Ok(id) if printable && !id.is_empty() && id.len() <= MAX_DELIVERY_ID_BYTES => Ok(Some(id)),
        _ => Err(ApiError::bad_request(format!(
            "header {name}: expected 1 to {MAX_DELIVERY_ID_BYTES} printable ASCII characters without spaces, got {} bytes",
            value.len()
        ))),
    }
}

fn accepted(body: Value) -> (StatusCode, Json<Value>) {
    (StatusCode::ACCEPTED, Json(body))
}

fn ignored(reason: String) -> (StatusCode, Json<Value>) {
    tracing::info!(%reason, "ignored a webhook delivery");
    (StatusCode::OK, Json(json!({ "ignored": reason })))
}
