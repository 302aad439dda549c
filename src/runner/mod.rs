//! Runs one queued build: checks out the commit into a workspace, compiles its
//! `.slipway.yml`, runs the plan with `slipway-pipeline` over dockerd, and streams steps and
//! log lines to the store and to live readers. A passing build on the deploy branch has its
//! workspace volume exported, and its package is made from what the steps produced; the build
//! ends once the package is published and the release's images are queued to bake.

pub mod local;
pub(crate) mod migrations;
pub(crate) mod observer;
mod source;

pub use source::{read_spec, Sources, Workspace};

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
    /// `[agents] lease_seconds`: when an agent counts as lost, in what a waiting build says.
    pub agent_lease_seconds: i64,
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
    pub fn failed(reason: impl Into<String>) -> Outcome {
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
    // A server has no labels: a build that asks for some waits for an agent that has them.
    if !spec.labels.is_empty() {
        let lease_seconds = context.agent_lease_seconds;
        return match defer(context.store, build, &spec.labels, lease_seconds).await {
            Ok(reason) => Outcome {
                status: BuildStatus::Queued,
                reason: Some(reason),
            },
            Err(e) => Outcome::errored(format!("cannot queue the build for an agent: {e}")),
        };
    }
    if let Some((author, message)) = summary {
        if let Err(error) = context
            .store
            .record_commit_summary(build.id, &author, &message)
            .await
        {
            tracing::warn!(%error, "cannot record the commit's author and message");
        }
    }
    let info = build_info(
        build,
        [(SERVER_LABEL.to_string(), context.server_id.to_string())].into(),
        event_environment(build),
    );
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
    let first_line = match context.store.next_log_line(build.id).await {
        Ok(line) => line,
        Err(e) => return Outcome::errored(format!("cannot read the build's log: {e}")),
    };
    let recorder = observer::StoreObserver::start(
        Arc::new(observer::StoreRecorder {
            store: context.store.clone(),
            build: build.id,
            attempt: build.attempt,
        }),
        &plan,
        first_line,
        Some(context.live.clone()),
    )
    .await;
    let built = if releasable(project, build, &plan) {
        match workspace.built_dir() {
            Ok(dir) => Some(dir),
            Err(e) => return Outcome::errored(e),
        }
    } else {
        None
    };
    let withheld = withheld(project, build);
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
                cache.read_only(WITHHELD_CACHE)
            } else {
                cache
            }))
        }),
        ..RunOptions::default()
    };
    let secrets: HashMap<String, String> = secrets(project, withheld).into_iter().collect();
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
            let numbered =
                match release_in_commit_order(context.store, context.sources, project, build).await
                {
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
                    if let Err(outcome) = after_publish(
                        context.store,
                        context.bakes,
                        project,
                        &plan,
                        &release,
                        workspace.path(),
                    )
                    .await
                    {
                        return outcome;
                    }
                }
                Err(e) => return Outcome::failed(format!("{e:#}")),
            }
        }
    }
    Outcome {
        status: status_of(outcome.status),
        reason: explain_withheld(outcome.message, withheld),
    }
}

/// Why a fork's pull request ran without secrets, said where a step missed one.
pub const WITHHELD_SECRETS: &str =
    "a pull request from a fork gets no secrets (set trust_forks = true in the project to give them)";

/// Puts `build`, taken by a server or an agent that lacks the `labels` its `.slipway.yml`
/// asks for, back in the queue for an agent that has them, saying which agents there are.
pub(crate) async fn defer(
    store: &Store,
    build: &Build,
    labels: &BTreeMap<String, String>,
    lease_seconds: i64,
) -> Result<String, crate::store::StoreError> {
    let agents = store.list_agents(lease_seconds).await?;
    let reason = crate::store::agents::waiting_reason(labels, &agents);
    store.defer_build(build.id, labels, &reason).await?;
    tracing::info!(project = %build.project, build = build.number, %reason, "the build waits for an agent");
    Ok(reason)
}

/// Why a fork's pull request restored the cache but saved nothing.
pub const WITHHELD_CACHE: &str =
    "a pull request from a fork reads the cache but never writes it (set trust_forks = true in the project to let it)";

/// A build's reason, saying why a secret a step asked for was missing when it was withheld.
pub(crate) fn explain_withheld(message: Option<String>, withheld: bool) -> Option<String> {
    match message {
        Some(message) if withheld && message.contains("was not supplied") => {
            Some(format!("{message}: {WITHHELD_SECRETS}"))
        }
        message => message,
    }
}

/// What the pipeline knows of the build it runs; `labels` mark what it starts in dockerd.
pub(crate) fn build_info(
    build: &Build,
    labels: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
) -> pipeline::BuildInfo {
    pipeline::BuildInfo {
        project: build.project.clone(),
        number: build.number as u64,
        build_id: build.id.simple().to_string(),
        commit: build.commit.clone(),
        branch: build.branch.clone(),
        event: event_of(&build.event),
        extra_labels: labels,
        extra_env: env,
    }
}

/// Only a build that may become a release needs what its steps produced: a push's (or a
/// person's) on the deploy branch, never a pull request's or a tag's.
pub(crate) fn releasable(project: &Project, build: &Build, plan: &pipeline::Plan) -> bool {
    build.branch == project.deploy_branch
        && !matches!(build.event.as_str(), "pull_request" | "tag")
        && plan.package.is_some()
}

/// A pull request from a fork runs code the project's team did not write: it gets no
/// secrets and writes no cache unless the project trusts forks.
pub(crate) fn withheld(project: &Project, build: &Build) -> bool {
    build.pull_request.as_ref().is_some_and(|pr| pr.from_fork) && !project.trust_forks
}

/// The secrets a build's steps get: none when they are withheld.
pub(crate) fn secrets(project: &Project, withheld: bool) -> BTreeMap<String, String> {
    if withheld {
        return BTreeMap::new();
    }
    project
        .secrets
        .iter()
        .map(|(name, value)| (name.clone(), value.expose().to_string()))
        .collect()
}

/// What follows a release's publishing, wherever its build ran: the application migrations
/// it ships are recorded, and its images queued to bake with what the bakes need from the
/// checkout in `workspace`.
pub(crate) async fn after_publish(
    store: &Store,
    bakes: &BakeQueue,
    project: &Project,
    plan: &pipeline::Plan,
    release: &crate::store::releases::Release,
    workspace: &std::path::Path,
) -> Result<(), Outcome> {
    migrations::record_release(store, plan, release, workspace)
        .await
        .map_err(|e| Outcome::failed(format!("{e:#}")))?;
    let Some(package) = plan.package.as_ref() else {
        return Ok(());
    };
    let recipe = crate::bake::bake_recipe(package, workspace);
    bakes
        .enqueue(release, project, recipe)
        .await
        .map_err(|e| Outcome::errored(format!("cannot queue the release's bake: {e:#}")))
}

/// Numbers a release of the passing `build` unless its commit is an ancestor of (or is) the
/// newest release's commit: then the build, recorded with the reason, makes no release, so
/// a slow build of an older commit never becomes newer than a later commit's release.
/// Unrelated history (a force push) is no ancestor and releases.
pub(crate) async fn release_in_commit_order(
    store: &Store,
    sources: &Sources,
    project: &Project,
    build: &Build,
) -> Result<ReleaseSlot, Outcome> {
    let commit = CommitId::parse(&build.commit).map_err(Outcome::errored)?;
    let mirror = sources.mirrors().mirror(project);
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
    match store
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
pub(crate) struct Checkout {
    pub spec: pipeline::Spec,
    /// For reproducible packages: the workspace has no `.git` to ask.
    pub commit_time: u64,
    /// The commit's author and message line, when they could be read.
    pub summary: Option<(String, String)>,
}

/// Fills `workspace` with the commit's files from the project's mirror, and `.git` when the
/// pipeline asks for it. Problems of the repository's own files fail the build; the rest
/// errors it.
pub(crate) async fn checkout(
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
pub(crate) fn log_incomplete(outcome: &pipeline::BuildOutcome, lost_lines: u64) -> Outcome {
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

pub(crate) fn status_of(status: pipeline::BuildStatus) -> BuildStatus {
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
pub(crate) fn event_environment(build: &Build) -> BTreeMap<String, String> {
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

pub(crate) fn event_of(name: &str) -> pipeline::spec::Event {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .unwrap_or(pipeline::spec::Event::Manual)
}
