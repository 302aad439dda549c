//! The bake queue: a dispatcher that claims queued release images from the store
//! (`release_images`, `FOR UPDATE SKIP LOCKED`), at most `max_concurrent_bakes` at a time, and
//! bakes each under its own cancel token, apart from builds: a build ends when its package is
//! published and only queues the release's images ([`BakeQueue::enqueue`]).
//!
//! Docker images stay queued while dockerd is unreachable, and a Docker bake that fails because
//! dockerd went away goes back to the queue without counting the attempt.
//!
//! The queue lives in the store, so a restart loses nothing: images still queued are baked
//! after it (by any server sharing the database), and a bake whose server stopped or died is
//! reaped and queued again once ([`super::recover_interrupted_bakes`], at start and every few
//! seconds). A graceful stop cancels running bakes (the bake
//! crate removes what they left) and queues them again without counting the attempt.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Baker;
use crate::config::{Config, Project, TargetKind};
use crate::docker::DockerClient;
use crate::outage::Outage;
use crate::store::release_images::{ClaimedBake, ImageSlot, QueuedImage};
use crate::store::releases::{BakeRecipe, Release};
use crate::store::Store;

/// How often the bakes of servers that stopped or died are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The images a release of `project` is baked into: the Docker image when the project has a
/// docker environment, or no environment at all (its image is what users run by hand), and
/// when it has aws environments the AMI of `[projects.ami]`'s region, baked, then a copy of it
/// for each other region an aws environment is in.
pub fn images_for(project: &Project) -> Vec<QueuedImage> {
    let docker = project.environments.is_empty()
        || project
            .environments
            .iter()
            .any(|environment| environment.target == TargetKind::Docker);
    let mut images: Vec<QueuedImage> = docker
        .then(|| QueuedImage::baked(ImageSlot::docker()))
        .into_iter()
        .collect();
    let regions: BTreeSet<&str> = project
        .environments
        .iter()
        .filter_map(|environment| environment.aws.as_ref())
        .map(|aws| aws.region.as_str())
        .collect();
    if let (false, Some(ami)) = (regions.is_empty(), &project.ami) {
        images.push(QueuedImage::baked(ImageSlot::ami(&ami.region)));
        images.extend(
            regions
                .into_iter()
                .filter(|region| *region != ami.region)
                .map(|region| QueuedImage {
                    slot: ImageSlot::ami(region),
                    copy_of: Some(ami.region.clone()),
                }),
        );
    }
    images
}

/// A handle on the bake queue; cheap to clone.
#[derive(Clone)]
pub struct BakeQueue {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    store: Store,
    baker: Baker,
    docker: DockerClient,
    wake: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl BakeQueue {
    /// Reaps and queues again the bakes a previous server left, then starts dispatching.
    /// The bakes' scratch leftovers must be gone already: a bake starts right away.
    pub async fn start(
        config: Arc<Config>,
        store: Store,
        baker: Baker,
        docker: &DockerClient,
    ) -> anyhow::Result<BakeQueue> {
        super::recover_interrupted_bakes(&store, docker, &config).await?;
        let queue = BakeQueue {
            inner: Arc::new(Inner {
                config,
                store,
                baker,
                docker: docker.clone(),
                wake: Notify::new(),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        let dispatcher = queue.clone();
        queue
            .inner
            .tasks
            .spawn(async move { dispatcher.dispatch().await });
        let sweeper = queue.clone();
        queue
            .inner
            .tasks
            .spawn(async move { sweeper.sweep_orphans().await });
        let retention = queue.clone();
        queue
            .inner
            .tasks
            .spawn(async move { retention.retain_amis().await });
        Ok(queue)
    }

    /// Queues the images of the just published `release` of `project` (see [`images_for`])
    /// with the recipe read from its checkout (`Err`: why its Docker image cannot be baked).
    pub async fn enqueue(
        &self,
        release: &Release,
        project: &Project,
        recipe: Result<BakeRecipe, String>,
    ) -> anyhow::Result<()> {
        let images = images_for(project);
        if let (Err(reason), true) = (&recipe, images.iter().any(|i| i.slot.is_docker())) {
            tracing::warn!(project = %project.name, release = %release.version, %reason, "not baking a Docker image");
        }
        self.inner
            .store
            .enqueue_release_images(release.id, &images, &recipe)
            .await?;
        self.wake();
        Ok(())
    }

    /// AMI retention for every project baking AMIs, once at start (then after each AMI bake).
    async fn retain_amis(&self) {
        for project in &self.inner.config.projects {
            if project.ami.is_none() {
                continue;
            }
            tokio::select! {
                result = super::ami::retain_amis(&self.inner.store, project) => if let Err(e) = result {
                    tracing::error!(error = format!("{e:#}"), project = %project.name, "AMI retention failed; it runs again after the next AMI bake");
                },
                _ = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// Tells the dispatcher that an image was queued.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Stops dispatching, cancels running bakes and waits until each is cleaned up and queued
    /// again for the next start.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Every [`SWEEP_EVERY`], takes over the bakes of servers that are no longer live.
    async fn sweep_orphans(&self) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {},
                _ = self.inner.shutdown.cancelled() => return,
            }
            let inner = &self.inner;
            match super::recover_interrupted_bakes(&inner.store, &inner.docker, &inner.config).await
            {
                Ok(()) => self.wake(),
                Err(e) => {
                    tracing::debug!(error = format!("{e:#}"), "cannot look for orphaned bakes")
                }
            }
        }
    }

    async fn dispatch(&self) {
        let slots = Arc::new(Semaphore::new(self.inner.config.max_concurrent_bakes));
        let mut store_outage = Outage::new("the state store", "queued bakes wait");
        let mut docker_outage = Outage::new("dockerd", "queued Docker images wait to be baked");
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                _ = self.inner.shutdown.cancelled() => return,
            };
            // A Docker bake claimed while dockerd is down could only fail: it stays queued
            // (AMI bakes go on), and the idle wait below paces the checks.
            let docker_up = match self.inner.docker.check().await {
                Ok(_) => {
                    docker_outage.recovered();
                    true
                }
                Err(e) => {
                    docker_outage.failed(&e);
                    false
                }
            };
            let claimed = match self.inner.store.claim_next_bake(docker_up).await {
                Ok(claimed) => {
                    store_outage.recovered();
                    claimed
                }
                Err(e) => {
                    drop(permit);
                    let wait = store_outage.failed(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = self.inner.shutdown.cancelled() => return,
                    }
                }
            };
            let Some(bake) = claimed else {
                drop(permit);
                tokio::select! {
                    _ = self.inner.wake.notified() => {},
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {},
                    _ = self.inner.shutdown.cancelled() => return,
                }
                continue;
            };
            // Its own token: only a server stop cancels it, never a build's cancel.
            let cancel = self.inner.shutdown.child_token();
            let queue = self.clone();
            self.inner.tasks.spawn(async move {
                if let Err(e) = queue.bake(&bake, &cancel).await {
                    tracing::error!(error = format!("{e:#}"), release = %bake.release, image = %bake.slot, "cannot record a bake");
                }
                // An AMI's copies wait for its bake: they may be claimed now.
                queue.wake();
                if queue.inner.shutdown.is_cancelled() {
                    match queue.inner.store.requeue_bake(&bake, true).await {
                        Ok(()) => tracing::info!(release = %bake.release, image = %bake.slot, "a bake the server's stop cancelled is queued for the next start"),
                        Err(e) => tracing::error!(error = %e, release = %bake.release, "cannot queue a cancelled bake again"),
                    }
                }
                drop(permit);
            });
        }
    }

    /// Bakes one claimed image; what cannot be baked fails with the reason.
    async fn bake(&self, bake: &ClaimedBake, cancel: &CancellationToken) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let Some(release) = store.release_by_id(bake.release).await? else {
            // Deleted with its project's data meanwhile: nothing to bake or record.
            return Ok(());
        };
        let Some(project) = self.inner.config.project(&release.project) else {
            return self.fail(bake, "the project is no longer configured").await;
        };
        if bake.slot.is_docker() {
            self.inner
                .baker
                .bake_claimed(store, &release, project, bake, cancel)
                .await;
            return Ok(());
        }
        self.inner
            .baker
            .bake_ami(store, &release, project, bake, cancel)
            .await;
        if cancel.is_cancelled() {
            return Ok(());
        }
        if let Err(e) = super::ami::retain_amis(store, project).await {
            tracing::error!(error = format!("{e:#}"), project = %project.name, "AMI retention failed; it runs again after the next AMI bake");
        }
        Ok(())
    }

    async fn fail(&self, bake: &ClaimedBake, reason: &str) -> anyhow::Result<()> {
        tracing::warn!(release = %bake.release, image = %bake.slot, %reason, "bake failed");
        self.inner
            .store
            .mark_image_failed(bake.release, &bake.slot, reason)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, resolve, Overrides};

    fn project(environments: &str) -> Project {
        let text = format!("[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\n{environments}");
        let raw = parse(&text, "t").unwrap();
        let mut config = resolve(raw, "t", &Overrides::default(), &|_| None).unwrap();
        config.projects.remove(0)
    }

    #[test]
    fn a_release_is_baked_into_the_images_its_environments_run() {
        let docker = || QueuedImage::baked(ImageSlot::docker());
        let ami = |region: &str| QueuedImage::baked(ImageSlot::ami(region));
        assert_eq!(images_for(&project("")), [docker()]);
        let dev = "[[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:1\"\n";
        assert_eq!(images_for(&project(dev)), [docker()]);
        let prod = "[[projects.environments]]\nname = \"prod\"\ntarget = \"aws\"\nregion = \"eu-west-1\"\nlistener_arn = \"arn:l\"\ntarget_groups = [\"arn:b\", \"arn:g\"]\nlaunch_template_id = \"lt-1\"\nsubnets = [\"subnet-1\"]\n[projects.ami]\nregion = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\ncommunicator = \"none\"\n";
        assert_eq!(images_for(&project(prod)), [ami("eu-west-1")]);
        // [projects.ami] closes the file's table of environments: dev goes before it.
        assert_eq!(
            images_for(&project(&format!("{dev}{prod}"))),
            [docker(), ami("eu-west-1")]
        );
        // An aws environment in another region gets a copy of the baked AMI, once.
        let elsewhere = |name: &str| {
            format!("[[projects.environments]]\nname = \"{name}\"\ntarget = \"aws\"\nregion = \"us-east-1\"\nlistener_arn = \"arn:l\"\ntarget_groups = [\"arn:b\", \"arn:g\"]\nlaunch_template_id = \"lt-1\"\nsubnets = [\"subnet-1\"]\n")
        };
        assert_eq!(
            images_for(&project(&format!(
                "{}{}{prod}",
                elsewhere("us"),
                elsewhere("us2")
            ))),
            [
                ami("eu-west-1"),
                QueuedImage {
                    slot: ImageSlot::ami("us-east-1"),
                    copy_of: Some("eu-west-1".to_owned()),
                }
            ]
        );
    }
}
