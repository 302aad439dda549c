//! Housekeeping, as `[retention]` asks: builds that ended long ago deleted with their logs
//! (those that made a release stay), Docker images of old releases removed from dockerd, and
//! old versions of each package removed from the apt repository; and, as `[cache]` asks,
//! build caches no build used for `expire_days` removed. A release live in an
//! environment, or that an unfinished deployment takes or keeps warm (within its rollback
//! window), keeps its image and package whatever its age. AMIs have their own retention
//! (`[projects.ami] keep_releases`, in `bake/ami.rs`).
//!
//! Every server runs it, [`FIRST_RUN_AFTER`] after it starts and then every [`EVERY`]; a run
//! that failed (a database or gpg hiccup) is tried again after [`RETRY_AFTER`], doubling up to
//! [`EVERY`]. Each step is safe to run twice or at once on two servers (deleting what is gone is a no-op, and
//! the apt repository's changes are serialized by its lock).

use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::RemoveImageOptions;

use crate::cache::Caches;
use crate::config::{Config, Project, Retention};
use crate::docker::DockerClient;
use crate::releases::Repository;
use crate::store::Store;

/// How long after a server starts it first runs housekeeping.
const FIRST_RUN_AFTER: Duration = Duration::from_secs(5);
/// How often housekeeping runs after that.
const EVERY: Duration = Duration::from_secs(3600);
/// How soon a run that failed is tried again (then twice as long each time, up to `EVERY`).
const RETRY_AFTER: Duration = Duration::from_secs(15);

/// Runs housekeeping until the task is dropped; only cache expiry when `[retention]` keeps
/// all.
pub async fn run(
    config: Arc<Config>,
    store: Store,
    docker: DockerClient,
    repository: Repository,
    caches: Arc<Caches>,
) {
    tokio::time::sleep(FIRST_RUN_AFTER).await;
    let mut retry = RETRY_AFTER;
    loop {
        let mut failed = false;
        match caches.expire().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed build caches no build used lately"),
            Err(error) => {
                failed = true;
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_s = retry.as_secs(),
                    "cache expiry failed; it runs again soon"
                );
            }
        }
        let keeps_all = config.retention == Retention::default();
        for project in config.projects.iter().filter(|_| !keeps_all) {
            if let Err(error) = once(&config.retention, project, &store, &docker, &repository).await
            {
                failed = true;
                tracing::warn!(project = %project.name, error = format!("{error:#}"), retry_in_s = retry.as_secs(), "housekeeping failed; it runs again soon");
            }
        }
        let wait = if failed {
            let wait = retry;
            retry = (retry * 2).min(EVERY);
            wait
        } else {
            retry = RETRY_AFTER;
            EVERY
        };
        tokio::time::sleep(wait).await;
    }
}

async fn once(
    retention: &Retention,
    project: &Project,
    store: &Store,
    docker: &DockerClient,
    repository: &Repository,
) -> anyhow::Result<()> {
    let name = &project.name;
    if retention.build_age.is_some() || retention.build_keep.is_some() {
        let deleted = store
            .delete_old_builds(name, retention.build_age, retention.build_keep)
            .await?;
        if deleted > 0 {
            tracing::info!(project = %name, deleted, "deleted old builds and their logs");
        }
    }
    if let Some(keep) = retention.image_keep {
        let reason = format!(
            "removed by retention at {}: not among the {keep} newest releases (image_keep), and no environment runs or keeps it",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        );
        for expired in store.expired_images(name, keep).await? {
            let options = RemoveImageOptions {
                force: false,
                ..Default::default()
            };
            match docker
                .client()
                .remove_image(&expired.what, Some(options), None)
                .await
            {
                Ok(_)
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    store.record_image_removed(expired.release, &reason).await?;
                    tracing::info!(project = %name, release = %expired.version, image = %expired.what, "removed an old release's image");
                }
                // In use by a container Slipway does not know of: left for the next run.
                Err(error) => {
                    tracing::warn!(project = %name, release = %expired.version, image = %expired.what, %error, "cannot remove an old release's image")
                }
            }
        }
    }
    if let Some(keep) = retention.apt_keep {
        let expired = store.expired_packages(name, keep).await?;
        if !expired.is_empty() {
            let filenames: Vec<String> = expired.iter().map(|e| e.what.clone()).collect();
            let removed = repository.remove(&filenames).await?;
            let releases: Vec<_> = expired.iter().map(|e| e.release).collect();
            store.record_packages_removed(&releases).await?;
            tracing::info!(project = %name, packages = ?removed, "removed old packages from the apt repository");
        }
    }
    Ok(())
}
