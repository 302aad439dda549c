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

use std::time::Duration;

use super::{ApiError, AppState};
use crate::config::Project;
use crate::mirror::Mirrors;
use crate::store::builds::{NewBuild, PullRequestInfo};
use crate::webhook::{self, Delivery, PullRequest};

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
            Delivery::PullRequest(pr) => {
                return match pull_request_build(&state, project, pr).await? {
                    Ok(build) => queue(&state, delivery_id, vec![build], Vec::new()).await,
                    Err(reason) => Ok(ignored(reason)),
                }
            }
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
                supersedes: project.auto_cancel
                    && (change.branch != project.deploy_branch
                        || project.auto_cancel_deploy_branch),
                branch: change.branch,
                commit,
                event: "push".to_string(),
                pull_request: None,
            }),
        }
    }
    // Every tag pushed builds, as `event: tag`, with the tag's name as its branch.
    for tag in push.tags {
        builds.push(NewBuild {
            project: project.name.clone(),
            branch: tag.name,
            commit: tag.commit,
            event: "tag".to_string(),
            pull_request: None,
            supersedes: false,
        });
    }
    queue(&state, delivery_id, builds, skipped).await
}

/// How long the answer to a pull request delivery may wait for its source branch's head.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The build a pull request asks for: its source commit, with the pull request attached; or
/// why none is queued.
async fn pull_request_build(
    state: &AppState,
    project: &Project,
    pr: PullRequest,
) -> Result<Result<NewBuild, String>, ApiError> {
    // The source branch's head: from the fork, when the pull request comes from one (kept in
    // the mirror for the build), else from the project's repository.
    let mirror = Mirrors::lazy(&state.config.data_dir.join("mirrors")).mirror(project);
    let head = if pr.from_fork() {
        let fork_url = match fork_clone_url(
            &project.clone_url,
            &project.repository,
            &pr.source_repository,
        ) {
            Some(url) => url,
            None => match asked_fork_url(project, &pr.source_repository).await {
                Ok(url) => url,
                Err(why) => {
                    return Ok(Err(format!(
                        "pull request #{} comes from the fork `{}`, whose clone URL clone_url does not tell (it does not name `{}`), and {why}",
                        pr.number, pr.source_repository, project.repository
                    )))
                }
            },
        };
        tokio::time::timeout(
            RESOLVE_TIMEOUT,
            mirror.fetch_fork_branch(&fork_url, &pr.source_branch, pr.number),
        )
        .await
    } else if pr.commit_is_full() {
        // Data Center names the full commit: the build fetches it.
        Ok(crate::mirror::CommitId::parse(&pr.commit).map_err(|e| e.to_string()))
    } else {
        tokio::time::timeout(RESOLVE_TIMEOUT, mirror.resolve_ref(&pr.source_branch)).await
    };
    let head = head
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the head of `{}` could not be fetched within {} s; redeliver the event",
                    pr.source_branch,
                    RESOLVE_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "pull request #{}: cannot find the head of `{}`: {e}",
                    pr.number, pr.source_branch
                ),
            )
        })?;
    // Cloud names the commit by an abbreviated id; either way the branch may have moved on.
    if !head.as_str().starts_with(&pr.commit) {
        return Ok(Err(format!(
            "pull request #{}: `{}` moved on from {} to {}; its next update builds the new head",
            pr.number,
            pr.source_branch,
            pr.commit,
            head.as_str()
        )));
    }
    let commit = head.as_str().to_owned();
    let pull_request = PullRequestInfo {
        number: pr.number,
        from_fork: pr.from_fork(),
        title: pr.title,
        source_branch: pr.source_branch.clone(),
        target_branch: pr.target_branch,
        source_repository: pr.source_repository,
    };
    Ok(Ok(NewBuild {
        project: project.name.clone(),
        branch: pr.source_branch,
        commit,
        event: "pull_request".to_string(),
        pull_request: Some(pull_request),
        supersedes: project.auto_cancel,
    }))
}

/// The clone URL of the fork `fork` (`owner/slug`) of the project's repository `repository`:
/// its `clone_url` with the repository's path replaced (`…/acme/hello.git` becomes
/// `…/bob/hello.git`), or `None` when `clone_url` does not name it.
fn fork_clone_url(clone_url: &str, repository: &str, fork: &str) -> Option<String> {
    let lower = clone_url.to_ascii_lowercase();
    let wanted = format!("/{}", repository.to_ascii_lowercase());
    let at = lower.rfind(&wanted)?;
    let after = &clone_url[at + wanted.len()..];
    if !(after.is_empty() || after == ".git" || after == "/") {
        return None;
    }
    Some(format!("{}/{fork}{after}", &clone_url[..at]))
}

/// The clone URL of the fork `fork`, asked of Bitbucket's API ([`crate::bitbucket::clone_links`]).
async fn asked_fork_url(project: &Project, fork: &str) -> Result<String, String> {
    let Some(bitbucket) = &project.bitbucket else {
        return Err("the project has no [projects.bitbucket] to ask Bitbucket for it".into());
    };
    let http = reqwest::Client::new();
    let links = tokio::time::timeout(
        RESOLVE_TIMEOUT,
        crate::bitbucket::clone_links(&http, bitbucket, fork),
    )
    .await
    .map_err(|_| "Bitbucket did not answer in time".to_owned())?
    .map_err(|e| format!("asking Bitbucket for it failed: {e}"))?;
    crate::bitbucket::pick_clone_link(&links, &project.clone_url, &bitbucket.api_url)
        .map_err(|e| format!("Bitbucket's answer does not do: {e}"))
}

/// Queues `builds` for the delivery (nothing when it was seen before) and answers.
async fn queue(
    state: &AppState,
    delivery_id: Option<&str>,
    builds: Vec<NewBuild>,
    skipped: Vec<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        tracing::info!(project = %build.project, build = build.number, branch = %build.branch, commit = %build.commit, event = %build.event, "queued a build");
    }
    let queued: Vec<Value> = queued
        .iter()
        .map(|b| json!({ "number": b.number, "branch": b.branch, "commit": b.commit, "event": b.event }))
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

#[cfg(test)]
mod tests {
    use super::fork_clone_url;

    #[test]
    fn a_forks_clone_url_replaces_the_repositorys_path() {
        let fork = |url: &str, repository: &str| fork_clone_url(url, repository, "bob/hello");
        assert_eq!(
            fork("https://bitbucket.org/acme/hello.git", "acme/hello").as_deref(),
            Some("https://bitbucket.org/bob/hello.git")
        );
        assert_eq!(
            fork("https://git.acme.test/scm/acme/hello.git", "ACME/hello").as_deref(),
            Some("https://git.acme.test/scm/bob/hello.git")
        );
        assert_eq!(
            fork("file:///srv/git/acme/hello", "acme/hello").as_deref(),
            Some("file:///srv/git/bob/hello")
        );
        assert_eq!(
            fork("https://bitbucket.org/acme/hello-tools.git", "acme/hello"),
            None
        );
        assert_eq!(
            fork("https://mirror.acme.test/hello.git", "acme/hello"),
            None
        );
    }
}
