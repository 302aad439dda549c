//! Runs one queued build: checks out the commit into a workspace, compiles its
//! `.slipway.yml`, runs the plan with `slipway-pipeline` over dockerd, and streams steps and
//! log lines to the store and to live readers.

pub mod local;
mod migrations;
mod observer;
mod source;

pub use source::Sources;

use std::collections::HashMap;
use std::sync::Arc;

use slipway_pipeline::{self as pipeline, DockerEngine, RunOptions};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bake::Baker;
use crate::config::Project;
use crate::mirror::CommitId;
use crate::queue::LiveEvent;
use crate::releases::{self, Repository};
use crate::store::builds::{Build, BuildStatus};
use crate::store::Store;
use source::Workspace;

/// The label that marks everything a server's builds create, so that a restarted server
/// reaps only its own leftovers.
pub const SERVER_LABEL: &str = "slipway.server";

/// What a build run needs from the queue.
pub struct Context<'a> {
    pub store: &'a Store,
    pub engine: &'a DockerEngine,
    /// The client the build's migrator finds the service sidecar with.
    pub docker: bollard::Docker,
    pub sources: &'a Sources,
    pub repository: &'a Repository,
    pub baker: &'a Baker,
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
    let Checkout { spec, commit_time } = match checkout {
        Ok(checkout) => checkout,
        Err(outcome) => return outcome,
    };
    let info = pipeline::BuildInfo {
        project: project.name.clone(),
        number: build.number as u64,
        build_id: build.id.simple().to_string(),
        commit: build.commit.clone(),
        branch: build.branch.clone(),
        event: event_of(&build.event),
        extra_labels: [(SERVER_LABEL.to_string(), context.server_id.to_string())].into(),
    };
    let plan = match pipeline::compile(&spec, &info) {
        Ok(plan) => plan,
        Err(e) => return Outcome::errored(format!("cannot compile the pipeline: {e}")),
    };
    let recorder = observer::StoreObserver::start(
        context.store.clone(),
        build.id,
        &plan,
        context.live.clone(),
    )
    .await;
    let options = RunOptions {
        log_cap_bytes_per_step: context.step_log_limit_bytes,
        migrator: Some(pipeline::MigratorHandle(Arc::new(
            migrations::BuildMigrator {
                docker: context.docker.clone(),
                store: context.store.clone(),
                build: build.id,
            },
        ))),
        ..RunOptions::default()
    };
    let secrets: HashMap<String, String> = project
        .secrets
        .iter()
        .map(|(name, value)| (name.clone(), value.expose().to_string()))
        .collect();
    let outcome = pipeline::run(
        &plan,
        context.engine,
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
    let package = plan.package.as_ref();
    if outcome.status == pipeline::BuildStatus::Passed && build.branch == project.deploy_branch {
        if let Some(package) = package {
            match releases::publish(
                context.store,
                context.repository,
                build,
                package,
                workspace.path(),
                commit_time,
            )
            .await
            {
                // The bake needs the checkout (the package's systemd unit); a failed bake is
                // recorded on the release and leaves the build passed.
                Ok(release) => {
                    if let Err(e) =
                        migrations::record_release(context.store, &plan, &release, workspace.path())
                            .await
                    {
                        return Outcome::failed(format!("{e:#}"));
                    }
                    context
                        .baker
                        .bake(
                            context.store,
                            &release,
                            package,
                            workspace.path(),
                            context.cancel,
                        )
                        .await
                }
                Err(e) => return Outcome::failed(format!("{e:#}")),
            }
        }
    }
    Outcome {
        status: status_of(outcome.status),
        reason: outcome.message,
    }
}

/// What a build's workspace holds once the commit is checked out.
struct Checkout {
    spec: pipeline::Spec,
    /// For reproducible packages: the workspace has no `.git` to ask.
    commit_time: u64,
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
        .map_err(Outcome::errored)?;
    mirror
        .export_tree(&commit, workspace.path(), &workspace.index_file())
        .await
        .map_err(Outcome::errored)?;
    let spec = source::read_spec(workspace.path()).map_err(Outcome::failed)?;
    if spec.clone.git {
        mirror
            .write_git_dir(&commit, workspace.path())
            .await
            .map_err(Outcome::errored)?;
    }
    let commit_time = mirror
        .commit_time(&commit)
        .await
        .map_err(Outcome::errored)?;
    Ok(Checkout { spec, commit_time })
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

/// Removes containers, networks and volumes that this server's earlier life left behind.
pub async fn reap_leftovers(engine: &DockerEngine, server_id: Uuid) {
    match pipeline::reap(engine, &format!("{SERVER_LABEL}={server_id}")).await {
        Ok(reaped) if reaped.containers + reaped.networks + reaped.volumes > 0 => tracing::warn!(
            containers = reaped.containers,
            networks = reaped.networks,
            volumes = reaped.volumes,
            "removed what interrupted builds left behind"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "cannot reap leftovers of interrupted builds"),
    }
}

/// Stored events are the pipeline's event names; a rebuild keeps its build's event.
fn event_of(name: &str) -> pipeline::spec::Event {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .unwrap_or(pipeline::spec::Event::Manual)
}
