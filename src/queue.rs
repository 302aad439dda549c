//! The build queue: a dispatcher that takes queued builds from the store, at most
//! `max_concurrent_builds` at a time, runs each, and publishes their log lines to live readers.
//!
//! The queue itself lives in the store, so a restart loses nothing: builds still queued run
//! after it (on any server sharing the database), and builds that were running when their
//! server stopped or died end as errored with that reason, marked by whichever server sweeps
//! first once the dead server is no longer live.
//!
//! While dockerd or the store is unreachable, nothing is claimed: queued builds stay queued
//! and the dispatcher retries with a capped backoff (see [`crate::outage`]), so they run once
//! the dependency is back, whether it was down at start or went away later. Leftovers of
//! interrupted builds are reaped the first time dockerd answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_pipeline::DockerEngine;
use tokio::sync::{broadcast, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bake::BakeQueue;
use crate::cache::Caches;
use crate::config::Config;
use crate::docker::DockerClient;
use crate::outage::Outage;
use crate::registries::RegistryLogins;
use crate::releases::Repository;
use crate::runner;
use crate::store::builds::{BuildStatus, LogChunkRecord};
use crate::store::Store;

/// What live readers of a build's log receive: each chunk once it is stored.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    Chunk(Arc<LogChunkRecord>),
    Finished,
}

/// Live events kept for a reader that is behind, at most (chunks are about 64 KiB): a reader
/// further behind is told it lagged and catches up from the store.
pub const LIVE_EVENTS: usize = 64;

/// How often the work of servers that stopped or died is looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often running builds are checked for a cancel asked of another server.
const CANCELS_EVERY: Duration = Duration::from_secs(1);

/// A handle on the queue; cheap to clone.
#[derive(Clone)]
pub struct BuildQueue {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    store: Store,
    repository: Repository,
    bakes: BakeQueue,
    docker: DockerClient,
    /// The pipeline's engine over `docker`'s client.
    engine: DockerEngine,
    registries: RegistryLogins,
    sources: runner::Sources,
    /// Where builds' caches are kept.
    caches: Arc<Caches>,
    server_id: Uuid,
    wake: Notify,
    running: Mutex<HashMap<Uuid, RunningBuild>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

struct RunningBuild {
    cancel: CancellationToken,
    live: broadcast::Sender<LiveEvent>,
}

impl BuildQueue {
    /// Recovers from a previous server's death, then starts dispatching builds on `docker`.
    pub async fn start(
        config: Arc<Config>,
        store: Store,
        repository: Repository,
        bakes: BakeQueue,
        docker: DockerClient,
        caches: Arc<Caches>,
        server_id: Uuid,
    ) -> anyhow::Result<BuildQueue> {
        end_orphans(&store, config.agent_lease_seconds as i64).await?;
        let engine = DockerEngine::with_client(docker.client());
        let registries = RegistryLogins::new(&config);
        let sources = runner::Sources::open(&config.data_dir)?;
        let queue = BuildQueue {
            inner: Arc::new(Inner {
                config,
                store,
                repository,
                bakes,
                docker,
                engine,
                registries,
                sources,
                caches,
                server_id,
                wake: Notify::new(),
                running: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        // With `max_concurrent_builds = 0` the server runs no build: agents run them all.
        if queue.inner.config.max_concurrent_builds > 0 {
            let dispatcher = queue.clone();
            queue
                .inner
                .tasks
                .spawn(async move { dispatcher.dispatch().await });
        }
        let sweeper = queue.clone();
        queue
            .inner
            .tasks
            .spawn(async move { sweeper.sweep_orphans().await });
        let canceller = queue.clone();
        queue
            .inner
            .tasks
            .spawn(async move { canceller.follow_cancels().await });
        Ok(queue)
    }

    /// Where builds get their files: agents' builds too, through the server that leased them.
    pub fn sources(&self) -> &runner::Sources {
        &self.inner.sources
    }

    /// Where builds' caches are kept: agents' builds reach them through the server.
    pub fn caches(&self) -> &Arc<Caches> {
        &self.inner.caches
    }

    /// Tells the dispatcher that a build was queued.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Live events of a running build; `None` when it is not running here.
    pub fn subscribe(&self, build: Uuid) -> Option<broadcast::Receiver<LiveEvent>> {
        let running = self.inner.running.lock().expect("queue lock");
        running.get(&build).map(|r| r.live.subscribe())
    }

    /// Stops a running build; teardown still runs.
    pub fn cancel(&self, build: Uuid) {
        if let Some(running) = self.inner.running.lock().expect("queue lock").get(&build) {
            running.cancel.cancel();
        }
    }

    /// Stops dispatching, cancels running builds and waits for their teardown.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        for running in self.inner.running.lock().expect("queue lock").values() {
            running.cancel.cancel();
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    async fn dispatch(&self) {
        let slots = Arc::new(Semaphore::new(self.inner.config.max_concurrent_builds));
        let mut docker_outage = Outage::new("dockerd", "queued builds wait");
        let mut store_outage = Outage::new("the state store", "queued builds wait");
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                _ = self.inner.shutdown.cancelled() => return,
            };
            // A build claimed while dockerd is down could only error: leave it queued.
            if let Err(e) = self.inner.docker.check().await {
                drop(permit);
                if !self.pause(docker_outage.failed(&e)).await {
                    return;
                }
                continue;
            }
            // What builds cut off by the outage left is reaped before anything new runs.
            if docker_outage.recovered() {
                runner::reap_leftovers(&self.inner.engine, &self.inner.store, self.inner.server_id)
                    .await;
            }
            let claimed = match self.inner.store.claim_next_build().await {
                Ok(claimed) => {
                    store_outage.recovered();
                    claimed
                }
                Err(e) => {
                    drop(permit);
                    if !self.pause(store_outage.failed(&e)).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(build) = claimed else {
                drop(permit);
                tokio::select! {
                    _ = self.inner.wake.notified() => {},
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {},
                    _ = self.inner.shutdown.cancelled() => return,
                }
                continue;
            };
            let cancel = self.inner.shutdown.child_token();
            let (live, _) = broadcast::channel(LIVE_EVENTS);
            self.inner.running.lock().expect("queue lock").insert(
                build.id,
                RunningBuild {
                    cancel: cancel.clone(),
                    live: live.clone(),
                },
            );
            let queue = self.clone();
            self.inner.tasks.spawn(async move {
                let id = build.id;
                let outcome = match queue.inner.config.project(&build.project) {
                    None => runner::Outcome::errored("the project is no longer configured"),
                    Some(project) => {
                        let context = runner::Context {
                            store: &queue.inner.store,
                            engine: &queue.inner.engine,
                            registries: &queue.inner.registries,
                            docker: queue.inner.docker.client(),
                            sources: &queue.inner.sources,
                            caches: &queue.inner.caches,
                            repository: &queue.inner.repository,
                            bakes: &queue.inner.bakes,
                            server_id: queue.inner.server_id,
                            step_log_limit_bytes: queue.inner.config.step_log_limit_bytes,
                            agent_lease_seconds: queue.inner.config.agent_lease_seconds as i64,
                            live: &live,
                            cancel: &cancel,
                        };
                        let outcome = runner::run(&context, project, &build).await;
                        queue.blame_vanished_docker(outcome).await
                    }
                };
                let status = outcome.status;
                // Queued again for an agent (its labels): not finished.
                if status == BuildStatus::Queued {
                    let _ = live.send(LiveEvent::Finished);
                    queue.inner.running.lock().expect("queue lock").remove(&id);
                    drop(permit);
                    return;
                }
                if let Err(e) = queue.inner.store.finish_build(id, status, outcome.reason.as_deref()).await {
                    tracing::error!(build = %id, error = %e, "cannot record the end of a build");
                }
                tracing::info!(project = %build.project, build = build.number, status = status.as_str(), "build finished");
                let _ = live.send(LiveEvent::Finished);
                queue.inner.running.lock().expect("queue lock").remove(&id);
                drop(permit);
            });
        }
    }

    /// While builds run here, every [`CANCELS_EVERY`]: stops those whose cancel was asked of
    /// any server of the installation.
    async fn follow_cancels(&self) {
        loop {
            if !self.pause(CANCELS_EVERY).await {
                return;
            }
            if self.inner.running.lock().expect("queue lock").is_empty() {
                continue;
            }
            match self.inner.store.cancels_requested().await {
                Ok(builds) => builds.into_iter().for_each(|build| self.cancel(build)),
                Err(e) => tracing::debug!(error = %e, "cannot look for cancel requests"),
            }
        }
    }

    /// Every [`SWEEP_EVERY`]: ends what servers that are no longer live left running (see
    /// [`end_orphans`]), and removes from dockerd, when it answers, what builds that no longer
    /// run left there, whichever server ran them.
    async fn sweep_orphans(&self) {
        let store = &self.inner.store;
        loop {
            if let Err(e) = end_orphans(store, self.inner.config.agent_lease_seconds as i64).await {
                tracing::debug!(error = format!("{e:#}"), "cannot look for orphaned builds");
            }
            if self.inner.docker.check().await.is_ok() {
                runner::reap_leftovers(&self.inner.engine, store, self.inner.server_id).await;
            }
            if !self.pause(SWEEP_EVERY).await {
                return;
            }
        }
    }

    /// Sleeps `wait` unless the queue shuts down first; false when it did.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.inner.shutdown.cancelled() => false,
        }
    }

    /// A build that errored or failed while its dockerd went away errors, saying so first:
    /// a step killed by a stopping dockerd is not the commit's failure, and the engine's own
    /// error (a broken stream, a refused connection) rarely names the cause.
    async fn blame_vanished_docker(&self, outcome: runner::Outcome) -> runner::Outcome {
        if !matches!(outcome.status, BuildStatus::Errored | BuildStatus::Failed) {
            return outcome;
        }
        match self.inner.docker.check().await {
            Ok(_) => outcome,
            Err(e) => {
                let detail = outcome.reason.as_deref().unwrap_or("no detail");
                runner::Outcome::errored(format!(
                    "dockerd at {} became unreachable during the build ({detail})",
                    e.address
                ))
            }
        }
    }
}

/// Errors the builds a server that is no longer live left running, ends the leases of build
/// agents that stopped answering (see [`crate::store::agents`]), fails the releases either
/// left packaging, and says again why builds that ask for labels wait.
async fn end_orphans(store: &Store, lease_seconds: i64) -> anyhow::Result<()> {
    let errored = store.error_orphaned_builds().await?;
    if !errored.is_empty() {
        tracing::warn!(builds = ?errored, "marked builds whose server stopped as errored");
    }
    let expired = store.expire_agent_leases().await?;
    if !expired.unconfirmed.is_empty() {
        tracing::warn!(builds = ?expired.unconfirmed, "queued again builds whose agent never confirmed its lease");
    }
    if !expired.requeued.is_empty() {
        tracing::warn!(builds = ?expired.requeued, "queued again builds whose agent was lost");
    }
    if !expired.errored.is_empty() {
        tracing::warn!(builds = ?expired.errored, "errored builds whose agent was lost");
    }
    store.refresh_waiting_reasons(lease_seconds).await?;
    crate::releases::fail_interrupted_releases(store).await
}
