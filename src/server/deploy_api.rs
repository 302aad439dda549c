//! The deployment API under `/api/v1`: promote and rollback (answered with a server-sent
//! event stream of the deployment's steps, ending with its final state), each environment's
//! live release, fleet health and history, and one deployment with its steps.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::api::json_body;
use super::auth::Caller;
use super::tokens_api::audit;
use super::{ApiError, AppState};
use crate::config::Project;
use crate::deploy::progress::Progress;
use crate::deploy::{EnvironmentHandle, Operation};
use crate::store::audit::NewAuditEvent;
use crate::store::deployments::DeployableRelease;
use crate::store::release_images::ReleaseImage;

/// How many past deployments `GET .../environments` shows per environment.
const HISTORY: i64 = 10;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{project}/environments", get(environments))
        .route(
            "/projects/{project}/environments/{environment}/promote",
            post(promote),
        )
        .route(
            "/projects/{project}/environments/{environment}/rollback",
            post(rollback),
        )
        .route("/projects/{project}/deployments/{id}", get(deployment))
}

#[derive(Deserialize, Default)]
struct PromoteRequest {
    release: Option<String>,
    /// Deploy even when the release expects an older schema than the environment has.
    #[serde(default)]
    allow_older_schema: bool,
}

#[derive(Deserialize)]
struct RollbackRequest {
    to: String,
    #[serde(default)]
    allow_older_schema: bool,
}

/// `POST .../promote {release?}`: deploys the named release, or what is live in the
/// environment before this one.
async fn promote(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let request: PromoteRequest = match &body {
        Ok(bytes) if bytes.is_empty() => PromoteRequest::default(),
        _ => json_body(body)?,
    };
    let target = find_environment(&state, &project, &environment)?;
    let wanted = match request.release {
        Some(release) => release,
        None => live_before(&state, &target).await?,
    };
    let release = deployable(&state, &target, &wanted).await?;
    if !request.allow_older_schema {
        schema_guard(&state, &target, &release, "deploy it").await?;
    }
    start(&state, &caller, &target, Operation::Deploy(release)).await
}

/// `POST .../rollback {to}`: switches back to the release's warm fleet, else deploys it.
async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let request: RollbackRequest = json_body(body)?;
    let target = find_environment(&state, &project, &environment)?;
    let release = deployable(&state, &target, &request.to).await?;
    if !request.allow_older_schema {
        schema_guard(&state, &target, &release, "roll back").await?;
    }
    start(&state, &caller, &target, Operation::Rollback(release)).await
}

/// `GET .../environments`: for each environment, its live release and fleet health (on
/// aws, also each Auto Scaling group with its instances' target health, launch template
/// version and AMI; on docker, its load balancer's state and statistics), what runs on it now, its last deployments, and the releases the auto-deploy refused for it.
async fn environments(
    State(state): State<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Value>, Refusal> {
    find_project(&state, &project)?;
    let mut listed = Vec::new();
    for environment in state.deploys.environments(&project) {
        let name = &environment.config.name;
        let (live, health) = match environment.live_health(&state.store).await {
            Ok(Some((live, instances))) => {
                let healthy = instances
                    .iter()
                    .filter(|h| h.state == slipway_deployer::HealthState::Healthy)
                    .count();
                let health = json!({
                    "healthy": healthy,
                    "instances": instances.len(),
                    "checks": instances,
                });
                (json!(live), health)
            }
            Ok(None) => (Value::Null, Value::Null),
            Err(error) => {
                // The cause may name hosts and platform internals: it stays in the log.
                tracing::warn!(%project, environment = %name, error = %format!("{error:#}"), "checking the live fleet's health failed");
                let message =
                    "the live fleet's health could not be checked; the cause is in the server log";
                (Value::Null, json!({ "error": message }))
            }
        };
        let aws = match environment.aws_fleets().await {
            Ok(fleets) => json!(fleets),
            Err(error) => {
                tracing::warn!(%project, environment = %name, error = %format!("{error:#}"), "reading the environment's fleets from AWS failed");
                json!({ "error": "the environment's fleets could not be read from AWS; the cause is in the server log" })
            }
        };
        let load_balancer = match environment.load_balancer().await {
            Ok(status) => json!(status),
            Err(error) => {
                tracing::warn!(%project, environment = %name, error = %format!("{error:#}"), "reading the environment's load balancer failed");
                json!({ "error": "the environment's load balancer could not be read; the cause is in the server log" })
            }
        };
        let deployments = state
            .store
            .deployments(&project, name, HISTORY)
            .await
            .map_err(store_down)?;
        let lock = state
            .store
            .lock_holder(&project, name)
            .await
            .map_err(store_down)?;
        let skipped = state
            .store
            .auto_deploy_skips(&project, name, HISTORY)
            .await
            .map_err(store_down)?;
        let schema = state
            .store
            .environment_schema(&project, name)
            .await
            .map_err(store_down)?;
        listed.push(json!({
            "name": name,
            "target": environment.config.target,
            "schema": schema,
            "live": live,
            "health": health,
            "aws": aws,
            "load_balancer": load_balancer,
            "busy": environment.busy(),
            "lock": lock,
            "deployments": deployments,
            "auto_deploy_skipped": skipped,
        }));
    }
    Ok(Json(json!(listed)))
}

/// `GET .../deployments/{id}`: the deployment's record and the steps it ran, with timings.
async fn deployment(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Value>, Refusal> {
    find_project(&state, &project)?;
    let deployment = state
        .store
        .deployment(&project, &id)
        .await
        .map_err(store_down)?
        .ok_or_else(|| {
            ApiError::not_found(format!("project `{project}` has no deployment {id}"))
        })?;
    let steps = state
        .store
        .deployment_steps(&id)
        .await
        .map_err(store_down)?;
    let requested_by = state
        .store
        .deployment_requester(&id)
        .await
        .map_err(store_down)?;
    let mut body = json!(deployment);
    body["steps"] = json!(steps);
    body["requested_by"] = json!(requested_by);
    Ok(Json(body))
}

/// Starts the operation and streams its events; refusals before any step (the environment
/// is busy here or locked by another server, the release is live already) are plain errors.
/// An operation that starts is recorded in the audit trail with the caller's token.
async fn start(
    state: &AppState,
    caller: &Caller,
    environment: &Arc<EnvironmentHandle>,
    operation: Operation,
) -> Result<Response, Refusal> {
    let (action, release) = match &operation {
        Operation::Deploy(release) => ("promote", release.version.clone()),
        Operation::Rollback(release) => ("rollback", release.version.clone()),
    };
    let mut events = match state.deploys.start_operation(environment, operation).await {
        Ok(events) => events,
        Err(busy) => {
            let message = format!(
                "environment {} is busy: {} by {} since {}",
                environment.config.name, busy.operation, busy.owner, busy.since
            );
            return Err(error(
                StatusCode::CONFLICT,
                &message,
                json!({ "holder": {
                    "owner": busy.owner,
                    "acquired_at": busy.since,
                    "operation": busy.operation,
                } }),
            ));
        }
    };
    let first = events.recv().await.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the deployment ended without a word",
        )
    })?;
    match &first {
        Progress::Refused {
            error: message,
            holder,
        } => {
            return Err(error(
                StatusCode::CONFLICT,
                message,
                json!({ "holder": holder }),
            ));
        }
        Progress::Errored {
            error: message,
            internal,
        } => {
            let status = match *internal {
                true => StatusCode::INTERNAL_SERVER_ERROR,
                false => StatusCode::CONFLICT,
            };
            return Err(error(status, message, json!({})));
        }
        _ => {}
    }
    let event = NewAuditEvent {
        action,
        project: Some(&environment.project),
        environment: Some(&environment.config.name),
        subject: release,
        deployment_id: first.deployment_id(),
        detail: json!({}),
    };
    audit(state, caller, event).await;
    Ok(Sse::new(stream(first, events))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn stream(
    first: Progress,
    mut events: mpsc::UnboundedReceiver<Progress>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut next = Some(first);
        while let Some(event) = next {
            let data = serde_json::to_string(&event).unwrap_or_default();
            let last = event.is_last();
            if tx
                .send(Event::default().event(event.name()).data(data))
                .await
                .is_err()
                || last
            {
                return;
            }
            next = events.recv().await;
        }
    });
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// Refuses, before anything changes, a release that expects an older schema than the
/// environment's database has: its code may not run against the newer schema.
async fn schema_guard(
    state: &AppState,
    environment: &EnvironmentHandle,
    release: &DeployableRelease,
    anyway: &str,
) -> Result<(), Refusal> {
    let name = &environment.config.name;
    let Some(current) = state
        .store
        .environment_schema(&environment.project, name)
        .await
        .map_err(store_down)?
    else {
        return Ok(());
    };
    let (expected, _) = state
        .store
        .release_schema(&environment.project, release.number)
        .await
        .map_err(store_down)?;
    let expected = expected.unwrap_or(0);
    if expected >= current.version {
        return Ok(());
    }
    let message = format!(
        "release {} expects schema {expected} but {name}'s database is at schema {}; pass --allow-older-schema to {anyway} anyway",
        release.version, current.version
    );
    Err(error(
        StatusCode::CONFLICT,
        &message,
        json!({ "release_schema": expected, "environment_schema": current.version }),
    ))
}

/// The release live in the environment before `environment` in the promotion order.
async fn live_before(state: &AppState, environment: &EnvironmentHandle) -> Result<String, Refusal> {
    let name = &environment.config.name;
    let Some(index) = environment.index.checked_sub(1) else {
        let message = format!(
            "{name} is the first environment: it gets new releases by itself; name one with --release"
        );
        return Err(ApiError::bad_request(message).into());
    };
    let environments = state.deploys.environments(&environment.project);
    let before = &environments[index].config.name;
    let live = state
        .store
        .live_fleet(&environment.project, before)
        .await
        .map_err(store_down)?;
    live.map(|fleet| fleet.release).ok_or_else(|| {
        let message = format!(
            "nothing is live in {before} to promote to {name}; name a release with --release"
        );
        error(StatusCode::CONFLICT, &message, json!({}))
    })
}

/// The release named `vN`, if it has a baked image of the kind the environment deploys
/// (its Docker image, or its AMI of the environment's region); else a 404 that names the
/// release's images, if it exists, and lists the deployable releases.
async fn deployable(
    state: &AppState,
    environment: &EnvironmentHandle,
    version: &str,
) -> Result<DeployableRelease, Refusal> {
    let project = &environment.project;
    let wanted = &environment.wanted;
    let number = version
        .strip_prefix('v')
        .and_then(|n| n.parse::<i64>().ok());
    let mut known = None;
    if let Some(number) = number {
        if let Some(release) = state
            .store
            .deployable_release(project, number, wanted)
            .await
            .map_err(store_down)?
        {
            return Ok(release);
        }
        known = state
            .store
            .release(project, number)
            .await
            .map_err(store_down)?;
    }
    let releases = state
        .store
        .deployable_releases(project, wanted)
        .await
        .map_err(store_down)?;
    let versions: Vec<&str> = releases.iter().map(|r| r.version.as_str()).collect();
    let listed = match versions.is_empty() {
        true => "none yet".to_owned(),
        false => versions.join(", "),
    };
    let why = match &known {
        Some(release) => format!(
            "release {version} of {project} has no {wanted} baked, which {} deploys (its images: {})",
            environment.config.name,
            describe_images(&release.images)
        ),
        None => format!("release {version:?} of {project} is unknown or was not baked"),
    };
    let images = known.map(|release| release.images);
    Err(error(
        StatusCode::NOT_FOUND,
        &format!("{why}; deployable releases: {listed}"),
        json!({ "deployable": versions, "images": images }),
    ))
}

/// A release's images in a line: each kind, region, status and why it failed.
fn describe_images(images: &[ReleaseImage]) -> String {
    if images.is_empty() {
        return "none".to_owned();
    }
    let described: Vec<String> = images
        .iter()
        .map(|image| {
            let mut text = image.kind.clone();
            for part in [&image.region, &image.id].into_iter().flatten() {
                text.push(' ');
                text.push_str(part);
            }
            text.push(' ');
            text.push_str(&image.status);
            if let Some(reason) = &image.reason {
                text.push_str(": ");
                text.push_str(reason);
            }
            text
        })
        .collect();
    described.join(", ")
}

fn find_project<'a>(state: &'a AppState, project: &str) -> Result<&'a Project, Refusal> {
    state.config.project(project).ok_or_else(|| {
        let names: Vec<&str> = state
            .config
            .projects
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        ApiError::not_found(format!(
            "no project named `{project}`; projects: {}",
            names.join(", ")
        ))
        .into()
    })
}

fn find_environment(
    state: &AppState,
    project: &str,
    environment: &str,
) -> Result<Arc<EnvironmentHandle>, Refusal> {
    find_project(state, project)?;
    let environments = state.deploys.environments(project);
    match environments.iter().find(|e| e.config.name == environment) {
        Some(handle) => Ok(handle.clone()),
        None => {
            let names: Vec<&str> = environments
                .iter()
                .map(|e| e.config.name.as_str())
                .collect();
            Err(ApiError::not_found(format!(
                "project `{project}` has no environment `{environment}`; environments: {}",
                names.join(", ")
            ))
            .into())
        }
    }
}

/// Why a request was refused: a plain [`ApiError`], or a message with details (the lock's
/// holder, the deployable releases).
enum Refusal {
    Plain(ApiError),
    Detailed(StatusCode, Value),
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal::Plain(error)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Plain(error) => error.into_response(),
            Refusal::Detailed(status, body) => (status, Json(body)).into_response(),
        }
    }
}

/// A refusal with `message` and the fields of `extra`.
fn error(status: StatusCode, message: &str, mut extra: Value) -> Refusal {
    extra["error"] = json!(message);
    Refusal::Detailed(status, extra)
}

fn store_down(error: crate::store::StoreError) -> Refusal {
    Refusal::Plain(ApiError::from(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_without_the_wanted_image_names_each_image_it_has_and_why_it_failed() {
        let image =
            |kind: &str, region: Option<&str>, id: Option<&str>, status: &str| ReleaseImage {
                kind: kind.to_owned(),
                region: region.map(str::to_owned),
                id: id.map(str::to_owned),
                name: None,
                status: status.to_owned(),
                reason: (status == "failed").then(|| "packer exited with 1".to_owned()),
                bake_key: None,
                baked_at: None,
                copy_of: None,
            };
        let images = [
            image("docker", None, Some("sha256:ab12"), "baked"),
            image("ami", Some("us-east-1"), Some("ami-0abc"), "baked"),
            image("ami", Some("eu-west-1"), None, "failed"),
        ];
        assert_eq!(
            describe_images(&images),
            "docker sha256:ab12 baked, ami us-east-1 ami-0abc baked, ami eu-west-1 failed: packer exited with 1"
        );
        assert_eq!(describe_images(&[]), "none");
    }
}
