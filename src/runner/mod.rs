//! Runs one queued build: checks out the commit into a workspace, compiles its
//! `.slipway.yml`, runs the plan with `slipway-pipeline` over dockerd, and streams steps and
//! log lines to the store and to live readers. A passing build on the deploy branch has its
//! workspace volume exported, and its package is made from what the steps produced; the build
//! ends once the package is published and the release's images are queued to bake.

pub mod local;
mod migrations;
mod observer;
mod source;

pub use source::{read_spec, Sources};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use slipway_pipeline::{self as pipeline, DockerEngine, RunOptions};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bake::BakeQueue;
use crate::cache::Caches;
use crate::config::Project;
use crate::mirror::{CommitId, Relation};
use crate::queue::LiveEvent;
use crate::registries::RegistryLogins;
use crate::releases::{self, Repository};
use crate::store::builds::{Build, BuildStatus};
use crate::store::releases::{NewestRelease, ReleaseSlot};
use crate::store::Store;
use source::Workspace;

/// The label that marks everything a server's builds create, so that a restarted server
/// reaps only its own leftovers.
pub const SERVER_LABEL: &str = "slipway.server";

/// The largest workspace (as the archive dockerd sends) a passing build may hand to
/// packaging; a larger one errors the build, naming this limit.
pub const WORKSPACE_EXPORT_LIMIT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// What a build run needs from the queue.
pub struct Context<'a> {
    pub store: &'a Store,
    pub engine: &'a DockerEngine,
    /// The logins and mirror a build's engine pulls with.
    pub registries: &'a RegistryLogins,
    /// The client the build's migrator finds the service sidecar with.
    pub docker: bollard::Docker,
    pub sources: &'a Sources,
    /// Where the project's `cache:` is kept between builds.
    pub caches: &'a Arc<Caches>,
    pub repository: &'a Repository,
    /// Where a published release's images are queued to bake.
    pub bakes: &'a BakeQueue,
    pub server_id: Uuid,
    pub step_log_limit_bytes: u64,
    pub live: &'a broadcast::Sender<LiveEvent>,
    pub cancel: &'a CancellationToken,
}

/// How a build ended, as the store records it.
#[derive(Debug)]
pub struct Outcome {
    pub status: BuildStatus,
    pub reason: Option<String>,
}

impl Outcome {
    pub fn errored(reason: impl Into<String>) -> Outcome {
        Outcome {
            status: BuildStatus::Errored,
            reason: Some(reason.into()),
        }
    }
    fn failed(reason: impl Into<String>) -> Outcome {
        Outcome {
            status: BuildStatus::Failed,
            reason: Some(reason.into()),
        }
    }
}

#[tracing::instrument(skip_all, fields(project = %project.name, build = build.number))]
pub async fn run(context: &Context<'_>, project: &Project, build: &Build) -> Outcome {
    // Dropped on every way out of this function, which removes the workspace.
    let workspace = match context.sources.workspace(build.id) {
        Ok(workspace) => workspace,
        Err(e) => return Outcome::errored(e),
    };
    let checkout = tokio::select! {
        result = checkout(context.sources, project, build, &workspace) => result,
        _ = context.cancel.cancelled() => return Outcome { status: BuildStatus::Cancelled, reason: Some("cancelled during checkout".into()) },
    };
    let Checkout {
        spec,
        commit_time,
        summary,
    } = match checkout {
        Ok(checkout) => checkout,
        Err(outcome) => return outcome,
    };
    if let Some((author, message)) = summary {
        if let Err(error) = context
            .store
            .record_commit_summary(build.id, &author, &message)
            .await
        {
            tracing::warn!(%error, "cannot record the commit's author and message");
        }
    }
    let info = pipeline::BuildInfo {
        project: project.name.clone(),
        number: build.number as u64,
        build_id: build.id.simple().to_string(),
        commit: build.commit.clone(),
        branch: build.branch.clone(),
        event: event_of(&build.event),
        extra_labels: [(SERVER_LABEL.to_string(), context.server_id.to_string())].into(),
        extra_env: event_environment(build),
    };
    let plan = match pipeline::compile(&spec, &info) {
        Ok(plan) => plan,
        Err(e) => return Outcome::errored(format!("cannot compile the pipeline: {e}")),
    };
    let engine = match context
        .registries
        .engine_for(context.engine, project, &plan)
        .await
    {
        Ok(engine) => engine,
        Err(e) => return Outcome::errored(format!("{e:#}")),
    };
    let recorder = observer::StoreObserver::start(
        context.store.clone(),
        build.id,
        &plan,
        context.live.clone(),
    )
    .await;
    // Only a build that may become a release needs what its steps produced: a push's (or a
    // person's) on the deploy branch, never a pull request's or a tag's.
    let releasable = build.branch == project.deploy_branch
        && !matches!(build.event.as_str(), "pull_request" | "tag")
        && plan.package.is_some();
    let built = if releasable {
        match workspace.built_dir() {
            Ok(dir) => Some(dir),
            Err(e) => return Outcome::errored(e),
        }
    } else {
        None
    };
    // A pull request from a fork runs code the project's team did not write: it gets no
    // secrets and writes no cache unless the project trusts forks.
    let withheld =
        build.pull_request.as_ref().is_some_and(|pr| pr.from_fork) && !project.trust_forks;
    let options = RunOptions {
        log_cap_bytes_per_step: context.step_log_limit_bytes,
        export_workspace: built.clone().map(|dir| pipeline::WorkspaceExport {
            dir,
            limit_bytes: WORKSPACE_EXPORT_LIMIT_BYTES,
        }),
        migrator: Some(pipeline::MigratorHandle(Arc::new(
            migrations::BuildMigrator {
                docker: context.docker.clone(),
                store: context.store.clone(),
                build: build.id,
            },
        ))),
        cache: plan.cache.as_ref().map(|_| {
            let cache = context
                .caches
                .for_build(&project.name, workspace.cache_dir());
            pipeline::CacheHandle(Arc::new(if withheld {
                cache.read_only(
                    "a pull request from a fork reads the cache but never writes it (set trust_forks = true in the project to let it)",
                )
            } else {
                cache
            }))
        }),
        ..RunOptions::default()
    };
    let secrets: HashMap<String, String> = if withheld {
        HashMap::new()
    } else {
        project
            .secrets
            .iter()
            .map(|(name, value)| (name.clone(), value.expose().to_string()))
            .collect()
    };
    let outcome = pipeline::run(
        &plan,
        &engine,
        workspace.path(),
        &secrets,
        &recorder,
        context.cancel.clone(),
        &options,
    )
    .await;
    let loss = recorder.finish().await;
    if loss.lines > 0 {
        // A build whose log cannot be read back must not look clean.
        return log_incomplete(&outcome, loss.lines);
    }
    if outcome.status == pipeline::BuildStatus::Passed {
        if let (Some(package), Some(built)) = (plan.package.as_ref(), &built) {
            let numbered = match release_in_commit_order(context, project, build).await {
                Ok(ReleaseSlot::Numbered { id, number }) => (id, number),
                Ok(ReleaseSlot::Skipped { reason }) => {
                    tracing::info!(%reason, "the build makes no release");
                    return Outcome {
                        status: status_of(outcome.status),
                        reason: outcome.message,
                    };
                }
                Err(outcome) => return outcome,
            };
            match releases::publish(
                context.store,
                context.repository,
                build,
                numbered,
                package,
                built,
                commit_time,
            )
            .await
            {
                // The build ends here: the release's images are queued with what their bakes
                // need from the checkout, and baked apart from the build (its slot and cancel
                // are not theirs); a failed bake is recorded on the release.
                Ok(release) => {
                    if let Err(e) =
                        migrations::record_release(context.store, &plan, &release, workspace.path())
                            .await
                    {
                        return Outcome::failed(format!("{e:#}"));
                    }
                    let recipe = crate::bake::bake_recipe(package, workspace.path());
                    if let Err(e) = context.bakes.enqueue(&release, project, recipe).await {
                        return Outcome::errored(format!("cannot queue the release's bake: {e:#}"));
                    }
                }
                Err(e) => return Outcome::failed(format!("{e:#}")),
            }
        }
    }
    let reason = match outcome.message {
        Some(message) if withheld && message.contains("was not supplied") => Some(format!(
            "{message}: a pull request from a fork gets no secrets (set trust_forks = true in the project to give them)"
        )),
        message => message,
    };
    Outcome {
        status: status_of(outcome.status),
        reason,
    }
}

/// Numbers a release of the passing `build` unless its commit is an ancestor of (or is) the
/// newest release's commit: then the build, recorded with the reason, makes no release, so
/// a slow build of an older commit never becomes newer than a later commit's release.
/// Unrelated history (a force push) is no ancestor and releases.
async fn release_in_commit_order(
    context: &Context<'_>,
    project: &Project,
    build: &Build,
) -> Result<ReleaseSlot, Outcome> {
    let commit = CommitId::parse(&build.commit).map_err(Outcome::errored)?;
    let mirror = context.sources.mirrors().mirror(project);
    let follows = |newest: NewestRelease| async move {
        let version = format!("v{}", newest.number);
        let released = CommitId::parse(&newest.commit)
            .map_err(|e| format!("{version} has no commit to order releases by: {e}"))?;
        // Fetched already unless the mirror lost it; a no-op then.
        mirror.fetch_commit(&released).await?;
        let skip = match mirror.relation(&commit, &released).await? {
            Relation::Same => Some(format!(
                "commit {} is {version}'s commit already",
                short(commit.as_str())
            )),
            Relation::Ancestor => Some(format!(
                "commit {} is an ancestor of {version}'s commit {}",
                short(commit.as_str()),
                short(released.as_str())
            )),
            Relation::Descendant | Relation::Unrelated => None,
        };
        Ok(skip)
    };
    match context
        .store
        .create_release_in_commit_order(&build.project, build.id, &build.commit, follows)
        .await
    {
        Ok(Ok(slot)) => Ok(slot),
        Ok(Err(e)) => Err(Outcome::errored(format!(
            "cannot place the release in commit order: {e}"
        ))),
        Err(e) => Err(Outcome::errored(format!("cannot number the release: {e}"))),
    }
}

/// A commit id as people quote it.
fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// What a build's workspace holds once the commit is checked out.
struct Checkout {
    spec: pipeline::Spec,
    /// For reproducible packages: the workspace has no `.git` to ask.
    commit_time: u64,
    /// The commit's author and message line, when they could be read.
    summary: Option<(String, String)>,
}

/// Fills `workspace` with the commit's files from the project's mirror, and `.git` when the
/// pipeline asks for it. Problems of the repository's own files fail the build; the rest
/// errors it.
async fn checkout(
    sources: &Sources,
    project: &Project,
    build: &Build,
    workspace: &Workspace,
) -> Result<Checkout, Outcome> {
    let commit = CommitId::parse(&build.commit).map_err(Outcome::errored)?;
    let mirror = sources.mirrors().mirror(project);
    mirror
        .fetch_commit(&commit)
        .await
        .map_err(|e| Outcome::errored(format!("cannot clone project `{}`: {e}", project.name)))?;
    mirror
        .export_tree(&commit, workspace.path(), &workspace.index_file())
        .await
        .map_err(Outcome::errored)?;
    let spec = source::read_spec(workspace.path()).map_err(Outcome::failed)?;
    if spec.clone.git {
        mirror.fetch_history(&commit).await.map_err(|e| {
            Outcome::errored(format!(
                "cannot fetch the history of project `{}`: {e}",
                project.name
            ))
        })?;
        mirror
            .write_git_dir(&commit, workspace.path())
            .await
            .map_err(Outcome::errored)?;
    }
    let commit_time = mirror
        .commit_time(&commit)
        .await
        .map_err(Outcome::errored)?;
    // Shown beside the build; a commit whose summary cannot be read still builds.
    let summary = mirror.commit_summary(&commit).await.ok();
    Ok(Checkout {
        spec,
        commit_time,
        summary,
    })
}

/// The outcome of a build whose log the store refused in part: a passed build errors (it is
/// not released), any other keeps its status; both say so.
fn log_incomplete(outcome: &pipeline::BuildOutcome, lost_lines: u64) -> Outcome {
    let incomplete = format!("{lost_lines} lines of the build log could not be stored");
    let (status, reason) = match (outcome.status, &outcome.message) {
        (pipeline::BuildStatus::Passed, _) => (BuildStatus::Errored, incomplete),
        (status, message) => (
            status_of(status),
            match message {
                Some(message) => format!("{message}; {incomplete}"),
                None => incomplete,
            },
        ),
    };
    Outcome {
        status,
        reason: Some(reason),
    }
}

fn status_of(status: pipeline::BuildStatus) -> BuildStatus {
    match status {
        pipeline::BuildStatus::Passed => BuildStatus::Passed,
        pipeline::BuildStatus::Failed => BuildStatus::Failed,
        pipeline::BuildStatus::Errored => BuildStatus::Errored,
        pipeline::BuildStatus::Cancelled => BuildStatus::Cancelled,
    }
}

/// Removes the containers, networks and volumes of this installation's builds (on this
/// server's dockerd) whose build is no longer running: what a stopped or killed server's builds
/// left, whichever server ran them (a build is recorded final only after its own teardown).
pub async fn reap_leftovers(engine: &DockerEngine, store: &Store, installation: Uuid) {
    let label = format!("{SERVER_LABEL}={installation}");
    let labelled = match engine.builds_labelled(&label).await {
        Ok(labelled) => labelled,
        Err(e) => {
            tracing::error!(error = %e, "cannot list what builds left in dockerd");
            return;
        }
    };
    if labelled.is_empty() {
        return;
    }
    let active = match store.builds_unfinished(&labelled).await {
        Ok(active) => active,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell which builds left something in dockerd");
            return;
        }
    };
    for build in labelled.difference(&active) {
        let label = format!("{}={build}", pipeline::plan::BUILD_LABEL);
        match pipeline::reap(engine, &label).await {
            Ok(reaped) => tracing::warn!(
                build = %build,
                containers = reaped.containers,
                networks = reaped.networks,
                volumes = reaped.volumes,
                "removed what an interrupted build left behind"
            ),
            Err(e) => {
                tracing::error!(error = %e, build = %build, "cannot reap what an interrupted build left")
            }
        }
    }
}

/// Stored events are the pipeline's event names; a rebuild keeps its build's event.
/// The variables a pull request's or a tag's build adds for its steps.
fn event_environment(build: &Build) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(pr) = &build.pull_request {
        env.extend([
            ("SLIPWAY_PULL_REQUEST".to_owned(), pr.number.to_string()),
            ("SLIPWAY_PULL_REQUEST_TITLE".to_owned(), pr.title.clone()),
            ("SLIPWAY_SOURCE_BRANCH".to_owned(), pr.source_branch.clone()),
            ("SLIPWAY_TARGET_BRANCH".to_owned(), pr.target_branch.clone()),
            (
                "SLIPWAY_SOURCE_REPOSITORY".to_owned(),
                pr.source_repository.clone(),
            ),
        ]);
    }
    if build.event == "tag" {
        env.insert("SLIPWAY_TAG".to_owned(), build.branch.clone());
    }
    env
}

fn event_of(name: &str) -> pipeline::spec::Event {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .unwrap_or(pipeline::spec::Event::Manual)
}
