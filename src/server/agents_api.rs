//! Build agents, as the server sees them: registration and the list under `/api/v1/agents`
//! (API tokens), and `/agent/v1`, where an agent, with the credential it got at
//! registration, leases builds, fetches their source, reports steps, log lines and
//! migrations, uploads the package a passing build made, and says how the build ended.
//!
//! Every request about a build names the attempt it is about, and is refused (409) unless
//! that attempt is still leased to the agent asking: an agent whose lease expired (it was
//! cut off) learns so at its next request or heartbeat, and stops the build.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::api::json_body;
use super::{ApiError, AppState};
use crate::agent::protocol::{
    self, Attempt, CacheQuery, Finish, Heartbeat, HeartbeatReply, Lease, LogUpdate, Migrations,
    Registered, Registration, StepUpdate,
};
use crate::config::Project;
use crate::runner::{self, Outcome};
use crate::store::agents::{labels_match, NewAgent};
use crate::store::builds::{Build, BuildStatus, LogChunkRecord};
use crate::store::releases::ReleaseSlot;
use crate::store::tokens;

/// How long a lease request waits for a queued build before it answers 204.
const LEASE_WAIT: Duration = Duration::from_secs(20);
/// The largest batch of log lines an agent sends in one request (1 MiB of lines, base64).
const LOG_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// The largest package an agent may upload.
pub const PACKAGE_LIMIT_BYTES: u64 = runner::WORKSPACE_EXPORT_LIMIT_BYTES;
/// The most labels an agent may have, and the longest name, key or value.
const MAX_LABELS: usize = 32;
const MAX_LABEL_CHARS: usize = 100;

/// `/api/v1/agents`: registration (scope `agent`), the list, and draining one (admin).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/agents", post(register).get(list))
        .route("/agents/{name}/drain", post(drain))
}

/// `/agent/v1`: what an agent does with its credential.
pub fn agent_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/lease", post(lease))
        .route("/heartbeat", post(heartbeat))
        .route("/stop", post(stop))
        .route("/builds/{id}/source", get(source))
        .route("/builds/{id}/confirm", post(confirm))
        .route("/builds/{id}/steps", post(steps))
        .route(
            "/builds/{id}/logs",
            post(logs).layer(DefaultBodyLimit::max(LOG_REQUEST_BYTES)),
        )
        .route("/builds/{id}/migrations", post(migrations))
        .route("/builds/{id}/release", post(release))
        .route("/builds/{id}/package", put(package))
        // Streamed bodies, bounded by the handlers.
        .route("/builds/{id}/cache", get(cache_fetch).put(cache_store))
        .route("/builds/{id}/finish", post(finish))
        .layer(middleware::from_fn_with_state(state, require_agent))
        .layer(DefaultBodyLimit::max(super::api::MAX_REQUEST_BYTES))
}

/// The agent a request came from.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    pub id: Uuid,
    pub name: String,
}

/// Answers 401 unless the request carries the credential of a registered agent that has not
/// stopped.
async fn require_agent(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let credential = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(credential) = credential else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing agent credential (Authorization: Bearer <credential>)",
        )
        .into_response();
    };
    match state.store.agent_by_credential(credential).await {
        Ok(Some((id, name))) => {
            request.extensions_mut().insert(AgentCaller { id, name });
            next.run(request).await
        }
        Ok(None) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown agent credential: register again",
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn lease_seconds(state: &AppState) -> i64 {
    state.config.agent_lease_seconds as i64
}

async fn register(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Registered>, ApiError> {
    let registration: Registration = json_body(body)?;
    let agent = check_registration(registration)?;
    let credential = tokens::generate_token();
    let id = state.store.register_agent(&agent, &credential).await?;
    tracing::info!(agent = %agent.name, capacity = agent.capacity, instance = agent.instance_id.as_deref().unwrap_or(""), "a build agent registered");
    Ok(Json(Registered {
        id,
        credential,
        heartbeat_seconds: (state.config.agent_lease_seconds / 3).max(1),
    }))
}

/// An agent's name and labels are shown and matched: printable, short, and few.
fn check_registration(registration: Registration) -> Result<NewAgent, ApiError> {
    let printable = |text: &str| {
        !text.is_empty()
            && text.chars().count() <= MAX_LABEL_CHARS
            && !text.chars().any(char::is_control)
    };
    if !printable(&registration.name) {
        return Err(ApiError::bad_request(format!(
            "an agent's name is 1 to {MAX_LABEL_CHARS} printable characters"
        )));
    }
    if !(1..=1000).contains(&registration.capacity) {
        return Err(ApiError::bad_request(format!(
            "an agent's capacity is 1 to 1000 builds at once, got {}",
            registration.capacity
        )));
    }
    if registration.labels.len() > MAX_LABELS
        || registration
            .labels
            .iter()
            .any(|(key, value)| !printable(key) || !printable(value))
    {
        return Err(ApiError::bad_request(format!(
            "an agent has at most {MAX_LABELS} labels, each key and value 1 to {MAX_LABEL_CHARS} printable characters"
        )));
    }
    if registration
        .instance_id
        .as_deref()
        .is_some_and(|id| !printable(id))
    {
        return Err(ApiError::bad_request(format!(
            "an agent's instance id is 1 to {MAX_LABEL_CHARS} printable characters"
        )));
    }
    Ok(NewAgent {
        name: registration.name,
        capacity: registration.capacity as i32,
        labels: registration.labels,
        version: registration.version.chars().take(MAX_LABEL_CHARS).collect(),
        host: registration.host.chars().take(MAX_LABEL_CHARS).collect(),
        instance_id: registration.instance_id,
    })
}

async fn list(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let agents = state.store.list_agents(lease_seconds(&state)).await?;
    Ok(Json(json!({ "agents": agents })))
}

async fn drain(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state
        .store
        .drain_agent(&name, lease_seconds(&state))
        .await?
    {
        Some(agent) => Ok(Json(json!(agent))),
        None => {
            let known: Vec<String> = state
                .store
                .list_agents(lease_seconds(&state))
                .await?
                .into_iter()
                .map(|agent| agent.name)
                .collect();
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no agent named {name:?}; agents: {}", known.join(", ")),
            ))
        }
    }
}

/// Hands the agent the oldest queued build, waiting up to [`LEASE_WAIT`] for one (204 when
/// none came, 503 once the server begins to stop). A build whose checkout fails (its
/// `.slipway.yml` is wrong, its commit cannot be fetched) ends here, as on a server, and the
/// next is tried.
async fn lease(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
) -> Result<Response, ApiError> {
    let deadline = Instant::now() + LEASE_WAIT;
    let labels = state.store.agent_labels(agent.id).await?;
    loop {
        if let Some(build) = state.store.lease_build(agent.id).await? {
            match prepare(&state, &labels, &build).await {
                Ok(None) => continue,
                Ok(Some(lease)) => {
                    tracing::info!(agent = %agent.name, project = %build.project, build = build.number, attempt = build.attempt, "leased a build to an agent");
                    return Ok(Json(lease).into_response());
                }
                Err(outcome) => {
                    state
                        .store
                        .finish_leased_build(
                            agent.id,
                            build.id,
                            build.attempt,
                            outcome.status,
                            outcome.reason.as_deref(),
                        )
                        .await?;
                    continue;
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = state.stopping.cancelled() => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"));
            }
        }
    }
}

/// What an agent with `labels` needs to run `build`, read from a checkout of its commit
/// here; `None` when the build's labels ask for another agent (it is queued again, saying so).
async fn prepare(
    state: &AppState,
    labels: &BTreeMap<String, String>,
    build: &Build,
) -> Result<Option<Lease>, Outcome> {
    let project = project_of(state, build)?;
    let sources = state.queue.sources();
    let workspace = sources.scratch(build.id).map_err(Outcome::errored)?;
    let checkout = runner::checkout(sources, project, build, &workspace).await?;
    let stored = |e: crate::store::StoreError| {
        Outcome::errored(format!("cannot record the build's labels: {e}"))
    };
    if !labels_match(&checkout.spec.labels, labels) {
        runner::defer(
            &state.store,
            build,
            &checkout.spec.labels,
            lease_seconds(state),
        )
        .await
        .map_err(stored)?;
        return Ok(None);
    }
    state
        .store
        .record_build_labels(build.id, &checkout.spec.labels)
        .await
        .map_err(stored)?;
    if let Some((author, message)) = &checkout.summary {
        if let Err(error) = state
            .store
            .record_commit_summary(build.id, author, message)
            .await
        {
            tracing::warn!(%error, "cannot record the commit's author and message");
        }
    }
    let env = runner::event_environment(build);
    let info = runner::build_info(build, Default::default(), env.clone());
    let plan = slipway_pipeline::compile(&checkout.spec, &info)
        .map_err(|e| Outcome::errored(format!("cannot compile the pipeline: {e}")))?;
    let first_line = state
        .store
        .next_log_line(build.id)
        .await
        .map_err(|e| Outcome::errored(format!("cannot read the build's log: {e}")))?;
    let withheld = runner::withheld(project, build);
    Ok(Some(Lease {
        id: build.id,
        attempt: build.attempt,
        project: build.project.clone(),
        number: build.number,
        branch: build.branch.clone(),
        commit: build.commit.clone(),
        event: build.event.clone(),
        first_line,
        env,
        secrets: runner::secrets(project, withheld),
        withheld: withheld.then(|| runner::WITHHELD_SECRETS.to_owned()),
        releasable: runner::releasable(project, build, &plan),
        step_log_limit_bytes: state.config.step_log_limit_bytes,
        cache_limit_bytes: state.queue.caches().limit_bytes(),
    }))
}

fn project_of<'a>(state: &'a AppState, build: &Build) -> Result<&'a Project, Outcome> {
    state
        .config
        .project(&build.project)
        .ok_or_else(|| Outcome::errored("the project is no longer configured"))
}

/// The build `id`, when `attempt` of it is leased to `agent`; 409 otherwise.
async fn leased(
    state: &AppState,
    agent: &AgentCaller,
    id: Uuid,
    attempt: i32,
) -> Result<Build, ApiError> {
    state
        .store
        .leased_build(agent.id, id, attempt)
        .await?
        .ok_or_else(|| not_leased(agent, id, attempt))
}

/// 409: `attempt` of build `id` is no longer `agent`'s, which tells it to stop the build.
fn not_leased(agent: &AgentCaller, id: Uuid, attempt: i32) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "attempt {attempt} of build {id} is not leased to agent {}: stop it",
            agent.name
        ),
    )
}

#[derive(Debug, Deserialize)]
struct AttemptQuery {
    attempt: i32,
}

/// The commit's files, as a tar (with `.git` when the pipeline asks for it): agents hold no
/// repository credentials.
async fn source(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    Query(query): Query<AttemptQuery>,
) -> Result<Response, ApiError> {
    let build = leased(&state, &agent, id, query.attempt).await?;
    let project = project_of(&state, &build).map_err(outcome_error)?;
    let sources = state.queue.sources();
    let workspace = sources.scratch(build.id).map_err(ApiError::internal)?;
    runner::checkout(sources, project, &build, &workspace)
        .await
        .map_err(outcome_error)?;
    let dir = workspace.path().to_path_buf();
    // Beside the workspaces, in the data directory, not in the system's temporary one.
    let scratch = state.repository.staging_dir().to_path_buf();
    let archive = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let mut file = tempfile::tempfile_in(&scratch)?;
        {
            let mut tar = tar::Builder::new(&mut file);
            tar.follow_symlinks(false);
            tar.append_dir_all(".", &dir)?;
            tar.finish()?;
        }
        use std::io::Seek;
        file.rewind()?;
        Ok(file)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("cannot archive the build's source: {e}")))?;
    drop(workspace);
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(archive));
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn outcome_error(outcome: Outcome) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        outcome
            .reason
            .unwrap_or_else(|| "the build cannot run".into()),
    )
}

async fn confirm(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let Attempt { attempt } = json_body(body)?;
    if state
        .store
        .confirm_lease(agent.id, id, attempt, lease_seconds(&state))
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_leased(&agent, id, attempt))
    }
}

async fn steps(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let step: StepUpdate = json_body(body)?;
    leased(&state, &agent, id, step.attempt).await?;
    if !matches!(
        step.status.as_str(),
        "pending" | "running" | "passed" | "failed" | "skipped" | "cancelled" | "timed_out"
    ) || step.name.len() > 200
    {
        return Err(ApiError::bad_request("not a step's name and status"));
    }
    state
        .store
        .record_step(
            id,
            step.attempt,
            step.position,
            &step.name,
            &step.status,
            step.exit_code,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logs(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body.map_err(|_| {
        ApiError::bad_request(format!(
            "a batch of log lines is at most {LOG_REQUEST_BYTES} bytes"
        ))
    })?;
    let update: LogUpdate = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not what was expected: {e}"))
    })?;
    leased(&state, &agent, id, update.attempt).await?;
    let mut chunks = Vec::with_capacity(update.chunks.len());
    for chunk in update.chunks {
        let data = base64::engine::general_purpose::STANDARD
            .decode(&chunk.data)
            .map_err(|_| ApiError::bad_request("a chunk's data is not base64"))?;
        let lines = data.iter().filter(|&&b| b == b'\n').count();
        if chunk.lines <= 0
            || lines != chunk.lines as usize
            || !data.ends_with(b"\n")
            || chunk.first_line < 1
        {
            return Err(ApiError::bad_request(
                "a chunk's lines do not match its data",
            ));
        }
        if !matches!(chunk.stream.as_str(), "stdout" | "stderr") || chunk.step.len() > 200 {
            return Err(ApiError::bad_request(
                "a chunk's step or stream is not valid",
            ));
        }
        chunks.push(LogChunkRecord {
            first_line: chunk.first_line,
            lines: chunk.lines,
            step: chunk.step,
            stream: chunk.stream,
            at: chunk.at,
            data,
        });
    }
    state
        .store
        .append_log_chunks(id, update.attempt, &chunks)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn migrations(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let Migrations { attempt, applied } = json_body(body)?;
    leased(&state, &agent, id, attempt).await?;
    let applied: Vec<crate::app_schema::Applied> = applied
        .into_iter()
        .map(|m| crate::app_schema::Applied {
            version: m.version,
            name: m.name.chars().take(200).collect(),
            elapsed: Duration::from_millis(m.elapsed_ms),
        })
        .collect();
    state.store.record_build_migrations(id, &applied).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Numbers the release of a passing build, in commit order, as a server's build does.
async fn release(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<protocol::ReleaseSlot>, ApiError> {
    let Attempt { attempt } = json_body(body)?;
    let build = leased(&state, &agent, id, attempt).await?;
    let project = project_of(&state, &build).map_err(outcome_error)?;
    let sources = state.queue.sources();
    let commit = crate::mirror::CommitId::parse(&build.commit).map_err(ApiError::internal)?;
    let mirror = sources.mirrors().mirror(project);
    let commit_time = mirror
        .commit_time(&commit)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the commit's time: {e}")))?;
    match runner::release_in_commit_order(&state.store, sources, project, &build)
        .await
        .map_err(outcome_error)?
    {
        ReleaseSlot::Numbered { number, .. } => Ok(Json(protocol::ReleaseSlot::Numbered {
            number,
            long_description: crate::releases::long_description(&build, number),
            commit_time,
        })),
        ReleaseSlot::Skipped { reason } => Ok(Json(protocol::ReleaseSlot::Skipped { reason })),
    }
}

/// Takes the package an agent built for the build's release, checks it is the release's, and
/// publishes it; then the release's migrations are recorded and its images queued to bake,
/// from a checkout of the commit here. 422 says why a package was refused (the release has
/// failed then).
async fn package(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    Query(query): Query<AttemptQuery>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let build = leased(&state, &agent, id, query.attempt).await?;
    let project = project_of(&state, &build).map_err(outcome_error)?;
    let Some((release_id, number)) = state.store.packaging_release_of(id).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the build has no release waiting for its package",
        ));
    };
    let staging = tempfile::tempdir_in(state.repository.staging_dir())
        .map_err(|e| ApiError::internal(format!("cannot make a staging directory: {e}")))?;
    let deb = staging.path().join("upload.deb");
    receive(body, &deb, PACKAGE_LIMIT_BYTES).await?;
    let sources = state.queue.sources();
    let workspace = sources.scratch(build.id).map_err(ApiError::internal)?;
    let checkout = runner::checkout(sources, project, &build, &workspace)
        .await
        .map_err(outcome_error)?;
    let info = runner::build_info(
        &build,
        Default::default(),
        runner::event_environment(&build),
    );
    let plan = slipway_pipeline::compile(&checkout.spec, &info)
        .map_err(|e| ApiError::internal(format!("cannot compile the pipeline: {e}")))?;
    let Some(spec) = plan.package.as_ref() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the pipeline has no package",
        ));
    };
    let release = crate::releases::publish_uploaded(
        &state.store,
        &state.repository,
        &build,
        (release_id, number),
        spec,
        &deb,
    )
    .await
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
    runner::after_publish(
        &state.store,
        &state.bakes,
        project,
        &plan,
        &release,
        workspace.path(),
    )
    .await
    .map_err(outcome_error)?;
    Ok(Json(
        json!({ "release": release.version, "package": release.package }),
    ))
}

/// The project's archive of a cache key, for an agent's build to restore; 404 when there
/// is none. A build only ever reads its own project's.
async fn cache_fetch(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    Query(query): Query<CacheQuery>,
) -> Result<Response, ApiError> {
    let build = leased(&state, &agent, id, query.attempt).await?;
    let file = tempfile::NamedTempFile::new_in(state.repository.staging_dir())
        .map_err(|e| ApiError::internal(format!("cannot stage a cache archive: {e}")))?;
    let fetched = state
        .queue
        .caches()
        .fetch(&build.project, &query.key, file.path())
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
    if fetched.is_none() {
        return Err(ApiError::not_found(format!(
            "no cache archive of key {:?}",
            query.key
        )));
    }
    // Open before the name goes: the open file outlives it.
    let opened = tokio::fs::File::open(file.path())
        .await
        .map_err(|e| ApiError::internal(format!("cannot read a cache archive: {e}")))?;
    drop(file);
    let stream = tokio_util::io::ReaderStream::new(opened);
    Ok((
        [(header::CONTENT_TYPE, "application/gzip")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Keeps what an agent's build saved under a cache key of its project. A pull request from
/// a fork never writes the cache unless the project trusts forks (403).
async fn cache_store(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    Query(query): Query<CacheQuery>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let build = leased(&state, &agent, id, query.attempt).await?;
    let project = project_of(&state, &build).map_err(outcome_error)?;
    if runner::withheld(project, &build) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a pull request from a fork never writes the cache",
        ));
    }
    let caches = state.queue.caches();
    let staging = tempfile::tempdir_in(state.repository.staging_dir())
        .map_err(|e| ApiError::internal(format!("cannot make a staging directory: {e}")))?;
    let archive = staging.path().join("cache.tar.gz");
    receive(body, &archive, caches.limit_bytes()).await?;
    caches
        .store(&build.project, &query.key, &archive)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Writes a request body to `path`, refusing one over `limit` bytes.
async fn receive(body: Body, path: &PathBuf, limit: u64) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot stage an upload: {e}")))?;
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("the package upload broke off"))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the upload is over its limit of {limit} bytes"),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("cannot stage an upload: {e}")))?;
    }
    file.flush()
        .await
        .context("flushing")
        .map_err(|e| ApiError::internal(format!("cannot stage an upload: {e:#}")))?;
    Ok(())
}

async fn finish(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let Finish {
        attempt,
        status,
        reason,
    } = json_body(body)?;
    let status = match status.as_str() {
        "passed" => BuildStatus::Passed,
        "failed" => BuildStatus::Failed,
        "errored" => BuildStatus::Errored,
        "cancelled" => BuildStatus::Cancelled,
        other => {
            return Err(ApiError::bad_request(format!(
                "{other:?} is not how a build ends"
            )))
        }
    };
    let reason: Option<String> = reason.map(|r| r.chars().take(4000).collect());
    if state
        .store
        .finish_leased_build(agent.id, id, attempt, status, reason.as_deref())
        .await?
    {
        tracing::info!(agent = %agent.name, build = %id, status = status.as_str(), "an agent's build finished");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_leased(&agent, id, attempt))
    }
}

async fn heartbeat(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let Heartbeat { running, draining } = json_body(body)?;
    let running: Vec<(Uuid, i32)> = running.iter().map(|r| (r.id, r.attempt)).collect();
    let answer = state
        .store
        .agent_heartbeat(agent.id, &running, draining, lease_seconds(&state))
        .await?;
    Ok(Json(HeartbeatReply {
        stop: answer.stop,
        drain: answer.drain,
    }))
}

async fn stop(
    State(state): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
) -> Result<StatusCode, ApiError> {
    state.store.stop_agent(agent.id).await?;
    tracing::info!(agent = %agent.name, "a build agent stopped");
    Ok(StatusCode::NO_CONTENT)
}
