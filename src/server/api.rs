//! The JSON API under `/api/v1` (bearer-token protected).

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
use crate::mirror::{CommitId, Mirror, Mirrors, Relation};
use crate::queue::LiveEvent;
use crate::store::audit::NewAuditEvent;
use crate::store::builds::{Build, LogChunkRecord, LogLineRecord, NewBuild};
use crate::webhook::check_branch;

/// The largest request body the API reads: its requests are a few small fields.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/projects", get(list_projects))
        .route("/servers", get(list_servers))
        .route(
            "/projects/{project}/builds",
            get(list_builds).post(queue_manual_build),
        )
        .route("/projects/{project}/builds/{number}", get(get_build))
        .route("/projects/{project}/builds/{number}/logs", get(build_logs))
        .route(
            "/projects/{project}/builds/{number}/cancel",
            post(cancel_build),
        )
        .route("/projects/{project}/builds/{number}/rebuild", post(rebuild))
        .route("/projects/{project}/releases", get(list_releases))
        .merge(super::health::routes())
        .merge(super::releases_api::routes())
        .merge(super::deploy_api::routes())
        .merge(super::tokens_api::routes())
        .merge(super::notify_api::routes())
        .merge(super::agents_api::routes())
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

pub(super) fn known_project(state: &AppState, project: &str) -> Result<(), ApiError> {
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
    match state.store.build(project, number).await? {
        Some(build) => Ok(build),
        None => Err(no_such_build(state, project, number).await),
    }
}

/// The most builds (the newest) an answer about a missing build lists.
const LISTED_BUILDS: i64 = 1000;

/// 404 for build `number` of `project`, saying which builds it has (as runs of numbers:
/// retention may have removed older ones) or that it has none.
async fn no_such_build(state: &AppState, project: &str, number: i64) -> ApiError {
    let builds = match state.store.list_builds(project, LISTED_BUILDS).await {
        Ok(builds) => builds,
        Err(e) => return e.into(),
    };
    let mut numbers: Vec<i64> = builds.iter().map(|build| build.number).collect();
    numbers.sort_unstable();
    let has = match numbers.len() {
        0 => "it has no builds yet".to_string(),
        n if n as i64 == LISTED_BUILDS => {
            format!("its newest {n} builds: {}", number_runs(&numbers))
        }
        _ => format!("its builds: {}", number_runs(&numbers)),
    };
    ApiError::not_found(format!("project `{project}` has no build {number}; {has}"))
}

/// Sorted numbers as runs, e.g. `1-4, 7, 9-12`.
fn number_runs(numbers: &[i64]) -> String {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &number in numbers {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == number => *last = number,
            _ => runs.push((number, number)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .map(|&(first, last)| match first == last {
            true => first.to_string(),
            false => format!("{first}-{last}"),
        })
        .collect();
    shown.join(", ")
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

/// `GET /servers`: the installation's servers (live ones first, then those stopped or silent
/// within a day), each with what it runs now, and which one answered.
async fn list_servers(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let servers = state.store.servers().await?;
    let mut work = state.store.server_work().await?;
    let listed: Vec<_> = servers
        .into_iter()
        .map(|server| {
            let running: Vec<_> = work
                .extract_if(.., |(owner, _)| *owner == server.id)
                .map(|(_, work)| work)
                .collect();
            let mut body = json!(server);
            body["running"] = json!(running);
            body
        })
        .collect();
    Ok(Json(json!({
        "answered_by": state.store.owner(),
        "servers": listed,
    })))
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
    let migrations = state.store.build_migrations(build.id).await?;
    let reports = state.store.build_reports(build.id).await?;
    let mut body = serde_json::to_value(&build).expect("builds serialize");
    body["steps"] = json!(steps);
    body["migrations"] = json!(migrations);
    body["status_reports"] = json!(reports);
    Ok(Json(body))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    /// Lines numbered after this one (`seq`); 0 is the start.
    #[serde(default)]
    after: i64,
    limit: Option<usize>,
    /// `json` (the default): a JSON array, one object per line; `text`: see [`text_page`].
    format: Option<String>,
}

/// A run of a log's consecutive lines of one step and stream, stored at one time, as the
/// first line of a `format=text` page names it: `lines` lines numbered from `seq`.
#[derive(Debug, PartialEq, serde::Serialize)]
struct LogRun {
    seq: i64,
    step: String,
    stream: String,
    at: chrono::DateTime<chrono::Utc>,
    lines: usize,
}

/// A `format=text` page (`text/plain`): one line of JSON, `{"runs": [LogRun...]}`, then the
/// page's lines as they are, each ending in a newline. The same lines as the JSON page, with
/// nothing to escape or parse per line: a long log's pages are made and read several times
/// faster (the web UI's log view asks for them).
fn text_page(lines: Vec<LogLineRecord>) -> Response {
    let mut runs: Vec<LogRun> = Vec::new();
    let mut text = String::with_capacity(lines.iter().map(|l| l.line.len() + 1).sum());
    for line in lines {
        text.push_str(&line.line);
        text.push('\n');
        match runs.last_mut() {
            Some(run)
                if run.step == line.step
                    && run.stream == line.stream
                    && run.at == line.at
                    && run.seq + run.lines as i64 == line.seq =>
            {
                run.lines += 1
            }
            _ => runs.push(LogRun {
                seq: line.seq,
                step: line.step,
                stream: line.stream,
                at: line.at,
                lines: 1,
            }),
        }
    }
    let mut body = serde_json::to_string(&json!({ "runs": runs })).expect("runs serialize");
    body.push('\n');
    body.push_str(&text);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Lines in one page of a log when the caller names no `limit`, and at most.
const DEFAULT_LOG_LINES: usize = 1000;
const MAX_LOG_LINES: usize = 10_000;

/// One page of the log as JSON lines (`?after=<seq>&limit=<lines>`; an empty page means
/// nothing more yet; `&format=text` sends them as text, see [`text_page`]), or with `?follow=true` a
/// server-sent event stream: the lines after `after` so far, then new ones as they come, then
/// an `end` event with the build's final status.
async fn build_logs(
    State(state): State<AppState>,
    Path((project, number)): Path<(String, i64)>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    if query.after < 0 {
        return Err(ApiError::bad_request(format!(
            "`after` must be a line number (seq) of 0 or more, got {}",
            query.after
        )));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LOG_LINES);
    if !(1..=MAX_LOG_LINES).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_LOG_LINES} lines, got {limit}"
        )));
    }
    let text = match query.format.as_deref() {
        None | Some("json") => false,
        Some("text") if !query.follow => true,
        Some("text") => {
            return Err(ApiError::bad_request(
                "`format=text` is for pages; the stream (`follow=true`) sends lines one by one",
            ))
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`format` must be `json` or `text`, got {:?}",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    let build = find_build(&state, &project, number).await?;
    if !query.follow {
        let lines = state.store.log_lines(build.id, query.after, limit).await?;
        return Ok(match text {
            true => text_page(lines),
            false => Json(lines).into_response(),
        });
    }
    Ok(Sse::new(follow_logs(state, build, query.after))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn follow_logs(
    state: AppState,
    build: Build,
    after: i64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        // Subscribe before reading the store, then skip what was already sent by seq. A build
        // still queued (or just claimed) has no live channel yet: wait for it, sending what
        // is stored meanwhile, until it runs here or ends.
        let mut live = state.queue.subscribe(build.id);
        let mut after = after;
        while live.is_none() && !tx.is_closed() {
            match state.store.build_by_id(build.id).await {
                Ok(Some(current)) if !current.status.is_final() => {}
                _ => break,
            }
            let Some(sent) = send_stored(&state, &build, after, &tx).await else {
                return;
            };
            after = sent;
            tokio::time::sleep(Duration::from_millis(250)).await;
            live = state.queue.subscribe(build.id);
        }
        let Some(mut last_seq) = send_stored(&state, &build, after, &tx).await else {
            return;
        };
        if let Some(live) = live.as_mut() {
            loop {
                match live.recv().await {
                    Ok(LiveEvent::Chunk(chunk)) => {
                        let Some(seq) = send_chunk(&chunk, last_seq, &tx).await else {
                            return;
                        };
                        last_seq = seq;
                    }
                    Ok(LiveEvent::Finished) | Err(RecvError::Closed) => break,
                    // A slow reader fell behind the live channel: catch up from the store.
                    Err(RecvError::Lagged(_)) => {
                        let Some(seq) = send_stored(&state, &build, last_seq, &tx).await else {
                            return;
                        };
                        last_seq = seq;
                    }
                }
            }
        }
        // Lines stored after the live channel closed, if any.
        if send_stored(&state, &build, last_seq, &tx).await.is_none() {
            return;
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

/// Sends the stored lines after `after`, page by page; the last seq sent, or `None` when the
/// reader went away.
async fn send_stored(
    state: &AppState,
    build: &Build,
    mut after: i64,
    tx: &tokio::sync::mpsc::Sender<Event>,
) -> Option<i64> {
    loop {
        let page = match state
            .store
            .log_lines(build.id, after, DEFAULT_LOG_LINES)
            .await
        {
            Ok(page) if !page.is_empty() => page,
            _ => return Some(after),
        };
        for line in page {
            after = line.seq;
            tx.send(line_event(&line)).await.ok()?;
        }
    }
}

/// Sends the lines of a live chunk after `after`; the last seq sent, or `None` when the
/// reader went away.
async fn send_chunk(
    chunk: &LogChunkRecord,
    mut after: i64,
    tx: &tokio::sync::mpsc::Sender<Event>,
) -> Option<i64> {
    for line in chunk.to_lines() {
        if line.seq <= after {
            continue;
        }
        after = line.seq;
        tx.send(line_event(&line)).await.ok()?;
    }
    Some(after)
}

fn line_event(line: &LogLineRecord) -> Event {
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
    let Some(build) = state.store.request_cancel(&project, number).await? else {
        return Err(no_such_build(&state, &project, number).await);
    };
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

/// Queues `new` (a build a person asked for) and wakes the queue; the build queued.
async fn queue_one(state: &AppState, new: &NewBuild) -> Result<Build, ApiError> {
    let queued = state
        .store
        .enqueue_builds(None, std::slice::from_ref(new))
        .await?
        .unwrap_or_default();
    state.queue.wake();
    queued
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "nothing was queued"))
}

async fn rebuild(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, number)): Path<(String, i64)>,
) -> Result<(StatusCode, Json<Build>), ApiError> {
    let old = find_build(&state, &project, number).await?;
    // A pull request's or a tag's build stays one: a fork's gets no secrets again, and no
    // pull request becomes a release.
    let event = match old.event.as_str() {
        "pull_request" | "tag" => old.event.clone(),
        _ => "rebuild".to_string(),
    };
    let new = NewBuild {
        project: old.project,
        branch: old.branch,
        commit: old.commit,
        event,
        pull_request: old.pull_request,
        supersedes: false,
    };
    let build = queue_one(&state, &new).await?;
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

/// What `POST /projects/{p}/builds` asks to build.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManualBuild {
    branch: String,
    /// A full commit id on `branch`; absent: the branch's head now.
    commit: Option<String>,
}

/// `POST /projects/{p}/builds {branch, commit?}`: queues a manual build (event `manual`) of
/// any branch of the project's repository: its `branches` filter governs pushes only.
async fn queue_manual_build(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Build>), ApiError> {
    let request: ManualBuild = json_body(body)?;
    known_project(&state, &project)?;
    check_branch(&request.branch).map_err(|why| ApiError::bad_request(format!("branch: {why}")))?;
    let commit = request.commit.as_deref().map(checked_commit).transpose()?;
    let config = state.config.project(&project).expect("a known project");
    // The queue's mirrors, in the data directory it made at start.
    let mirror = Mirrors::lazy(&state.config.data_dir.join("mirrors")).mirror(config);
    let commit = commit_to_build(&mirror, &project, &request.branch, commit).await?;
    let new = NewBuild {
        project: project.clone(),
        branch: request.branch.clone(),
        commit: commit.to_string(),
        event: "manual".to_string(),
        pull_request: None,
        supersedes: false,
    };
    let build = queue_one(&state, &new).await?;
    let event = NewAuditEvent {
        action: "build",
        project: Some(&project),
        environment: None,
        subject: format!("build {}", build.number),
        deployment_id: None,
        detail: json!({ "branch": build.branch, "commit": build.commit }),
    };
    audit(&state, &caller, event).await;
    Ok((StatusCode::CREATED, Json(build)))
}

/// A commit id from a request: 40 or 64 hex digits, in either case.
fn checked_commit(text: &str) -> Result<CommitId, ApiError> {
    CommitId::parse(&text.to_ascii_lowercase()).map_err(|_| {
        let shown: String = text.chars().take(80).collect();
        ApiError::bad_request(format!(
            "commit: {shown:?} is not a full commit id: expected 40 or 64 hex digits"
        ))
    })
}

/// The commit a manual build of `branch` builds: `commit` when the branch holds it (a
/// build on the deploy branch may become a release, so a commit from elsewhere is refused),
/// else the branch's head, fetched into the mirror now.
async fn commit_to_build(
    mirror: &Mirror,
    project: &str,
    branch: &str,
    commit: Option<CommitId>,
) -> Result<CommitId, ApiError> {
    let unprocessable = |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message);
    let head = mirror.resolve_ref(branch).await.map_err(|why| {
        unprocessable(format!(
            "branch: cannot find branch `{branch}` of project `{project}`: {why}"
        ))
    })?;
    let Some(commit) = commit else {
        return Ok(head);
    };
    mirror
        .fetch_commit(&commit)
        .await
        .map_err(|why| unprocessable(format!("commit: {why}")))?;
    let relation = mirror.relation(&commit, &head).await.map_err(|why| {
        tracing::error!(project, %commit, %head, error = %why, "cannot check a manual build's commit");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot tell whether the commit is on the branch; see the server log",
        )
    })?;
    if !matches!(relation, Relation::Same | Relation::Ancestor) {
        return Err(unprocessable(format!(
            "commit: {commit} is not on branch `{branch}` (its head is {head})"
        )));
    }
    Ok(commit)
}

async fn list_releases(
    State(state): State<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    known_project(&state, &project)?;
    let releases = state.store.list_releases(&project).await?;
    let schemas = state.store.release_schema_versions(&project).await?;
    let with_schema = releases.iter().map(|release| {
        let mut body = serde_json::to_value(release).expect("releases serialize");
        body["schema_version"] = json!(schemas.get(&release.number));
        body
    });
    Ok(Json(with_schema.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_text_page_names_its_runs_then_holds_the_lines_as_they_are() {
        let at = chrono::Utc::now();
        let line = |seq: i64, step: &str, stream: &str, text: &str| LogLineRecord {
            seq,
            step: step.into(),
            at,
            stream: stream.into(),
            line: text.into(),
        };
        let page = text_page(vec![
            line(5, "test", "stdout", "a \"quoted\" \u{1b}[32mgreen\u{1b}[0m"),
            line(6, "test", "stdout", "back\\slash"),
            line(7, "test", "stderr", ""),
            line(8, "lint", "stderr", "x"),
        ]);
        assert_eq!(page.headers()["content-type"], "text/plain; charset=utf-8");
        let body = axum::body::to_bytes(page.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        let (head, text) = body.split_once('\n').unwrap();
        let head: serde_json::Value = serde_json::from_str(head).unwrap();
        let runs: Vec<(i64, &str, &str, u64)> = head["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["seq"].as_i64().unwrap(),
                    r["step"].as_str().unwrap(),
                    r["stream"].as_str().unwrap(),
                    r["lines"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            runs,
            [
                (5, "test", "stdout", 2),
                (7, "test", "stderr", 1),
                (8, "lint", "stderr", 1)
            ]
        );
        assert_eq!(
            text,
            "a \"quoted\" \u{1b}[32mgreen\u{1b}[0m\nback\\slash\n\nx\n"
        );
    }

    #[test]
    fn build_numbers_show_as_runs() {
        assert_eq!(number_runs(&[]), "");
        assert_eq!(number_runs(&[4]), "4");
        assert_eq!(number_runs(&[1, 2, 3, 4, 7, 9, 10, 11, 12]), "1-4, 7, 9-12");
    }
}
