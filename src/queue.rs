//! The build queue: a dispatcher that takes queued builds from the store, at most
//! `max_concurrent_builds` at a time, runs each, and publishes their log lines to live readers.
//!
//! The queue itself lives in the store, so a restart loses nothing: builds still queued run
//! after it, and builds that were running when a server died end as errored with that reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use slipway_pipeline::DockerEngine;
use tokio::sync::{broadcast, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bake::Baker;
use crate::config::Config;
use crate::releases::Repository;
use crate::runner;
use crate::store::builds::LogChunkRecord;
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

/// A handle on the queue; cheap to clone.
#[derive(Clone)]
pub struct BuildQueue {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    store: Store,
    repository: Repository,
    baker: Baker,
    /// For health checks.
    docker: Option<Docker>,
    /// For builds.
    engine: Option<DockerEngine>,
    sources: runner::Sources,
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
    /// Recovers from a previous server's death, then starts dispatching.
    pub async fn start(
        config: Arc<Config>,
        store: Store,
        repository: Repository,
        baker: Baker,
        server_id: Uuid,
    ) -> anyhow::Result<BuildQueue> {
        let interrupted = store.error_interrupted_builds().await?;
        if interrupted > 0 {
            tracing::warn!(
                count = interrupted,
                "marked builds interrupted by a server stop as errored"
            );
        }
        let docker = match Docker::connect_with_local_defaults() {
            Ok(docker) => docker.negotiate_version().await.ok(),
            Err(e) => {
                tracing::warn!(error = %e, "no Docker client; builds will error until Docker is reachable");
                None
            }
        };
        let engine = match DockerEngine::connect(None).await {
            Ok(engine) => Some(engine),
            Err(e) => {
                tracing::warn!(error = %e, "Docker is not reachable; builds will error until it is");
                None
            }
        };
        if let Some(engine) = &engine {
            runner::reap_leftovers(engine, server_id).await;
        }
        let sources = runner::Sources::open(&config.data_dir)?;
        let queue = BuildQueue {
            inner: Arc::new(Inner {
                config,
                store,
                repository,
                baker,
                docker,
                engine,
                sources,
                server_id,
                wake: Notify::new(),
                running: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        let dispatcher = queue.clone();
        queue
            .inner
            .tasks
            .spawn(async move { dispatcher.dispatch().await });
        Ok(queue)
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

    pub async fn docker_ping(&self) -> Result<(), String> {
        let docker = self
            .inner
            .docker
            .as_ref()
            .ok_or("no Docker daemon answered at start")?;
        docker.ping().await.map(|_| ()).map_err(|e| e.to_string())
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
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                _ = self.inner.shutdown.cancelled() => return,
            };
            let claimed = match self.inner.store.claim_next_build().await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the build queue");
                    None
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
                let outcome = match (&queue.inner.engine, queue.inner.config.project(&build.project)) {
                    (None, _) => runner::Outcome::errored("Docker is not reachable"),
                    (_, None) => runner::Outcome::errored("the project is no longer configured"),
                    (Some(engine), Some(project)) => {
                        let context = runner::Context {
                            store: &queue.inner.store,
                            engine,
                            sources: &queue.inner.sources,
                            repository: &queue.inner.repository,
                            baker: &queue.inner.baker,
                            server_id: queue.inner.server_id,
                            step_log_limit_bytes: queue.inner.config.step_log_limit_bytes,
                            live: &live,
                            cancel: &cancel,
                        };
                        runner::run(&context, project, &build).await
                    }
                };
                let status = outcome.status;
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
}
