//! `slipway agent`: runs a server's builds on this machine's dockerd.
//!
//! The agent dials out to the server (agents need no inbound port), registers with a token
//! of scope `agent` and gets its own credential, then leases queued builds up to its
//! capacity. For each build it fetches the commit's files from the server (agents hold no
//! repository credentials), runs the pipeline as a server would, streams steps and log lines
//! to the server as they happen, applies the build's application migrations to the service
//! sidecar here, and, for a passing build that makes a release, builds the package here and
//! uploads it for the server to check and publish (agents never hold the signing key).
//!
//! Heartbeats keep its builds' leases; a build the server no longer leases to it (the agent
//! was cut off for longer than a lease) is stopped, as is one cancelled. SIGTERM or SIGINT
//! (or `slipway agent drain`) drains: no new build is taken, and the agent exits once its
//! builds end; a second signal cancels them, and they tear down before it exits. At start,
//! what an earlier process of this agent left in dockerd and in its work directory is
//! removed: nothing runs yet.

mod client;
pub mod protocol;
mod recorder;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use slipway_pipeline::{self as pipeline, DockerEngine, RunOptions};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::docker::DockerClient;
use crate::runner::{self, Outcome};
use client::{RequestError, ServerClient};
use protocol::{Finish, Heartbeat, Lease, Registration, ReleaseSlot, Running};

/// The label on everything an agent's builds start in dockerd: the agent's name.
pub const AGENT_LABEL: &str = "slipway.agent";

/// How an agent runs (`slipway agent`'s flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub server: String,
    pub token: String,
    pub name: String,
    pub capacity: u32,
    pub labels: BTreeMap<String, String>,
    pub docker_host: String,
    pub work_dir: PathBuf,
    /// The machine this agent runs on, as the autoscaler's group names it.
    pub instance_id: Option<String>,
}

struct Agent {
    options: Options,
    client: ServerClient,
    docker: DockerClient,
    engine: DockerEngine,
    running: Mutex<HashMap<Uuid, RunningBuild>>,
    /// A build ended: a slot is free.
    freed: Notify,
    /// Set by a signal or the server: take no new build.
    draining: watch::Sender<bool>,
    /// Cancelled by a second signal: every running build stops.
    cancel_all: CancellationToken,
    tasks: TaskTracker,
}

struct RunningBuild {
    attempt: i32,
    cancel: CancellationToken,
}

/// Runs the agent until it has drained.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let docker = DockerClient::new(&options.docker_host)?;
    docker.check().await?;
    let engine = DockerEngine::with_client(docker.client());
    clean_up(&engine, &options).await?;
    let registration = Registration {
        name: options.name.clone(),
        capacity: options.capacity,
        labels: options.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        host: crate::server::host_name(),
        instance_id: options.instance_id.clone(),
    };
    let (client, registered) = register(&options, &registration).await?;
    tracing::info!(agent = %options.name, server = %options.server, capacity = options.capacity, "registered with the server");
    let (draining, _) = watch::channel(false);
    let agent = Arc::new(Agent {
        options,
        client,
        docker,
        engine,
        running: Mutex::new(HashMap::new()),
        freed: Notify::new(),
        draining,
        cancel_all: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    let heartbeats = tokio::spawn(heartbeat(
        agent.clone(),
        Duration::from_secs(registered.heartbeat_seconds),
    ));
    let signals = tokio::spawn(follow_signals(agent.clone()));
    take_builds(&agent).await;
    agent.tasks.close();
    agent.tasks.wait().await;
    heartbeats.abort();
    signals.abort();
    if let Err(e) = agent.client.stop().await {
        tracing::warn!(error = %e, "cannot tell the server that this agent stopped");
    }
    tracing::info!("drained: every build ended");
    Ok(())
}

/// Removes what an earlier process of this agent left: its builds' containers, networks and
/// volumes, and its work directory's contents.
async fn clean_up(engine: &DockerEngine, options: &Options) -> anyhow::Result<()> {
    let label = format!("{AGENT_LABEL}={}", options.name);
    let reaped = pipeline::reap(engine, &label)
        .await
        .context("cannot remove what earlier builds left in dockerd")?;
    if reaped.containers + reaped.networks + reaped.volumes > 0 {
        tracing::warn!(
            containers = reaped.containers,
            networks = reaped.networks,
            volumes = reaped.volumes,
            "removed what this agent's interrupted builds left in dockerd"
        );
    }
    let dir = &options.work_dir;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot make {}", dir.display()))?;
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Registers, trying again while the server does not answer; a refusal (a bad token) ends
/// the agent.
async fn register(
    options: &Options,
    registration: &Registration,
) -> anyhow::Result<(ServerClient, protocol::Registered)> {
    let mut wait = Duration::from_secs(1);
    loop {
        match ServerClient::register(&options.server, &options.token, registration).await {
            Ok(registered) => return Ok(registered),
            Err(e) if format!("{e:#}").contains("refused the registration") => return Err(e),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot register yet; trying again"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Leases builds while a slot is free, until the agent drains.
async fn take_builds(agent: &Arc<Agent>) {
    let mut draining = agent.draining.subscribe();
    let mut wait = Duration::from_secs(1);
    loop {
        if *draining.borrow() {
            return;
        }
        let busy = agent.running.lock().expect("agent lock").len();
        if busy >= agent.options.capacity as usize {
            tokio::select! {
                _ = agent.freed.notified() => {}
                _ = draining.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        let leased = tokio::select! {
            leased = agent.client.lease() => leased,
            _ = draining.changed() => return,
        };
        match leased {
            Ok(Some(lease)) => {
                wait = Duration::from_secs(1);
                if *draining.borrow() {
                    // Left unconfirmed: the server queues it again within seconds.
                    tracing::info!(build = lease.number, "draining: left a lease unconfirmed");
                    return;
                }
                let cancel = agent.cancel_all.child_token();
                agent.running.lock().expect("agent lock").insert(
                    lease.id,
                    RunningBuild {
                        attempt: lease.attempt,
                        cancel: cancel.clone(),
                    },
                );
                let runner = agent.clone();
                agent.tasks.spawn(async move {
                    let id = lease.id;
                    run_build(&runner, lease, cancel).await;
                    runner.running.lock().expect("agent lock").remove(&id);
                    runner.freed.notify_one();
                });
            }
            Ok(None) => wait = Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(error = %e, "cannot lease a build; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Heartbeats every `every`: keeps the running builds' leases, stops those the server says
/// to stop, and drains when the server asks.
async fn heartbeat(agent: Arc<Agent>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let running: Vec<Running> = agent
            .running
            .lock()
            .expect("agent lock")
            .iter()
            .map(|(id, build)| Running {
                id: *id,
                attempt: build.attempt,
            })
            .collect();
        let beat = Heartbeat {
            running,
            draining: *agent.draining.borrow(),
        };
        match agent
            .client
            .heartbeat(&beat, every.max(Duration::from_secs(2)))
            .await
        {
            Ok(reply) => {
                for id in reply.stop {
                    if let Some(build) = agent.running.lock().expect("agent lock").get(&id) {
                        tracing::warn!(build = %id, "the server says to stop a build: cancelled, or no longer this agent's");
                        build.cancel.cancel();
                    }
                }
                if reply.drain && !*agent.draining.borrow() {
                    tracing::info!("the server asked this agent to drain");
                    agent.draining.send_replace(true);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot heartbeat"),
        }
    }
}

/// The first SIGTERM or SIGINT drains; the second cancels the running builds.
async fn follow_signals(agent: Arc<Agent>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot follow signals");
        return;
    };
    let mut signals = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        signals += 1;
        if signals == 1 {
            tracing::info!("draining: no new build; exiting once the running ones end (signal again to cancel them)");
            agent.draining.send_replace(true);
        } else {
            tracing::warn!("cancelling the running builds");
            agent.cancel_all.cancel();
        }
    }
}

/// Runs one leased build and tells the server how it ended, unless it is no longer this
/// agent's.
async fn run_build(agent: &Agent, lease: Lease, cancel: CancellationToken) {
    let dir = agent.options.work_dir.join(lease.id.simple().to_string());
    let outcome = match run_leased(agent, &lease, &dir, &cancel).await {
        Ok(outcome) => outcome,
        Err(RequestError::Lost(why)) => {
            tracing::warn!(build = lease.number, %why, "the build is no longer this agent's");
            remove_dirs(&dir);
            return;
        }
        Err(RequestError::Other(e)) => Outcome::errored(format!("{e:#}")),
    };
    remove_dirs(&dir);
    tracing::info!(project = %lease.project, build = lease.number, status = outcome.status.as_str(), "build finished");
    let finish = Finish {
        attempt: lease.attempt,
        status: outcome.status.as_str().to_owned(),
        reason: outcome.reason,
    };
    // The server may be briefly away: the lease outlives a few tries.
    for _ in 0..5 {
        match agent.client.finish(lease.id, &finish).await {
            Ok(()) => return,
            Err(RequestError::Lost(why)) => {
                tracing::warn!(build = lease.number, %why, "the build is no longer this agent's");
                return;
            }
            Err(e) => {
                tracing::warn!(build = lease.number, error = %e, "cannot report the build's end; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

fn remove_dirs(dir: &Path) {
    for dir in [
        dir.to_path_buf(),
        dir.with_extension("built"),
        dir.with_extension("deb"),
        dir.with_extension("cache"),
    ] {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a build's directory");
            }
        }
    }
}

async fn run_leased(
    agent: &Agent,
    lease: &Lease,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<Outcome, RequestError> {
    std::fs::create_dir(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    agent
        .client
        .source(lease.id, lease.attempt, dir)
        .await
        .map_err(|e| match e {
            RequestError::Other(e) => {
                RequestError::Other(e.context("cannot fetch the build's source"))
            }
            lost => lost,
        })?;
    agent.client.confirm(lease.id, lease.attempt).await?;
    let spec = match runner::read_spec(dir) {
        Ok(spec) => spec,
        Err(e) => return Ok(Outcome::failed(e)),
    };
    let info = pipeline::BuildInfo {
        project: lease.project.clone(),
        number: lease.number as u64,
        build_id: lease.id.simple().to_string(),
        commit: lease.commit.clone(),
        branch: lease.branch.clone(),
        event: runner::event_of(&lease.event),
        extra_labels: [(AGENT_LABEL.to_owned(), agent.options.name.clone())].into(),
        extra_env: lease.env.clone(),
    };
    let plan = match pipeline::compile(&spec, &info) {
        Ok(plan) => plan,
        Err(e) => {
            return Ok(Outcome::errored(format!(
                "cannot compile the pipeline: {e}"
            )))
        }
    };
    let recorder = runner::observer::StoreObserver::start(
        Arc::new(recorder::ServerRecorder::new(
            agent.client.clone(),
            lease.id,
            lease.attempt,
        )),
        &plan,
        lease.first_line,
        None,
    )
    .await;
    let built = match (&plan.package, lease.releasable) {
        (Some(_), true) => {
            let built = dir.with_extension("built");
            std::fs::create_dir(&built)
                .with_context(|| format!("cannot make {}", built.display()))?;
            Some(built)
        }
        _ => None,
    };
    let options = RunOptions {
        log_cap_bytes_per_step: lease.step_log_limit_bytes,
        export_workspace: built.clone().map(|dir| pipeline::WorkspaceExport {
            dir,
            limit_bytes: runner::WORKSPACE_EXPORT_LIMIT_BYTES,
        }),
        migrator: Some(pipeline::MigratorHandle(Arc::new(
            recorder::ServerMigrator {
                docker: agent.docker.client(),
                client: agent.client.clone(),
                build: lease.id,
                attempt: lease.attempt,
            },
        ))),
        cache: plan.cache.as_ref().map(|_| {
            let caches = Arc::new(crate::cache::Caches::remote(
                Arc::new(recorder::ServerArchives {
                    client: agent.client.clone(),
                    build: lease.id,
                    attempt: lease.attempt,
                }),
                lease.cache_limit_bytes,
            ));
            let cache = caches.for_build(&lease.project, dir.with_extension("cache"));
            pipeline::CacheHandle(Arc::new(match &lease.withheld {
                Some(_) => cache.read_only(runner::WITHHELD_CACHE),
                None => cache,
            }))
        }),
        ..RunOptions::default()
    };
    let secrets: HashMap<String, String> = lease.secrets.clone().into_iter().collect();
    let outcome = pipeline::run(
        &plan,
        &agent.engine,
        dir,
        &secrets,
        &recorder,
        cancel.clone(),
        &options,
    )
    .await;
    let loss = recorder.finish().await;
    if loss.lines > 0 {
        return Ok(runner::log_incomplete(&outcome, loss.lines));
    }
    if outcome.status == pipeline::BuildStatus::Passed {
        if let (Some(package), Some(built)) = (plan.package.as_ref(), &built) {
            if let Err(reason) = release(agent, lease, package, built).await? {
                return Ok(Outcome::failed(reason));
            }
        }
    }
    Ok(Outcome {
        status: runner::status_of(outcome.status),
        reason: runner::explain_withheld(outcome.message, lease.withheld.is_some()),
    })
}

/// Makes the build's release: asks the server for its number, builds the package from what
/// the steps left (`built`) and uploads it. `Ok(Err(reason))` when the package could not be
/// built or the server refused it: the build fails with that reason.
async fn release(
    agent: &Agent,
    lease: &Lease,
    package: &pipeline::PackageSpec,
    built: &Path,
) -> Result<Result<(), String>, RequestError> {
    let (number, long_description, commit_time) =
        match agent.client.release(lease.id, lease.attempt).await? {
            ReleaseSlot::Numbered {
                number,
                long_description,
                commit_time,
            } => (number, long_description, commit_time),
            ReleaseSlot::Skipped { reason } => {
                tracing::info!(%reason, "the build makes no release");
                return Ok(Ok(()));
            }
        };
    let definition = crate::releases::definition(package, number, &long_description, commit_time);
    let out = built.with_extension("deb");
    std::fs::create_dir(&out).with_context(|| format!("cannot make {}", out.display()))?;
    let (from, into) = (built.to_path_buf(), out.clone());
    let deb =
        tokio::task::spawn_blocking(move || slipway_bake::deb::build(&definition, &from, &into))
            .await
            .context("building the package")?;
    let deb = match deb {
        Ok(deb) => deb,
        Err(e) => return Ok(Err(format!("packaging v{number} failed: {e}"))),
    };
    tracing::info!(release = %format!("v{number}"), package = %deb.info.filename, size = deb.info.size, "built the package; uploading it");
    match agent
        .client
        .package(lease.id, lease.attempt, &deb.path)
        .await
    {
        Ok(()) => Ok(Ok(())),
        Err(RequestError::Other(e)) => Ok(Err(format!("{e:#}"))),
        Err(lost) => Err(lost),
    }
}

/// `k=v,k=v`, as `--labels` takes them.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("expected key=value, got {pair:?}"));
        };
        if key.trim().is_empty() || value.trim().is_empty() {
            return Err(format!("expected key=value, got {pair:?}"));
        }
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}
