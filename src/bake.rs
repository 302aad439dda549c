//! The server's bake service: a release's bake is its own stage. A build ends when its package
//! is published; it then queues the release's images ([`images_for`]: the Docker image when the
//! project has a docker environment or none) with what their bakes need from the checkout
//! ([`bake_recipe`]), and the [`BakeQueue`] bakes them apart from any build, at most
//! `max_concurrent_bakes` at once. [`Baker::bake_claimed`] bakes one with Packer and Ansible
//! (`slipway_bake::packer`, the template's `docker` source) into a local Docker image, records
//! the image on the release, and streams Packer's output into the image's bake log
//! (`bake_log_lines`, written in batches).
//!
//! - Image: `slipway/<package>-<first 8 hex of the server id>:v<N>`. One dockerd may serve
//!   several Slipway servers (the demo, test runs), and Packer force-tags, so names are per server.
//! - Base: the previous baked release's image (an incremental bake) while it still exists
//!   locally and was provisioned the same way (its `slipway.provisioning` label: the team's
//!   playbook, roles, extra variables and base image), otherwise the project's `base_image` or
//!   `slipway/debian:bookworm`.
//! - The team's own playbook (`[projects.bake]`, `.slipway.yml`'s `bake:`; see `team`) runs
//!   right after Slipway's, in the same Packer run; the bake key covers what the team provides.
//! - The image's `CMD` is the `ExecStart=` of the package's systemd unit, split on whitespace;
//!   the app listens on `PORT` (the deployer sets it), and the image exposes 8000.
//! - The bake key covers everything that shapes the image, and the committed image carries it
//!   (label `slipway.bake-key`); a bake that finds a finished image of the project with its key
//!   on dockerd (one a crash cut off before it was recorded) tags and records it instead of
//!   baking again, unless a rebake is asked for (`POST .../releases/{version}/rebake`, queued
//!   like any bake). No bake needs the build's
//!   checkout: the image's command and ports are recorded on the release when it is published,
//!   and the team's settings are staged from the commit in the project's mirror.
//! - A bake a server stop or crash interrupted is reaped (keeping the image if it was
//!   finished) and queued again, once, by the first server to find its owner no longer live
//!   ([`recover_interrupted_bakes`]); interrupted a second time, it fails with a reason and
//!   nothing of it is kept.
//! - The stored bake log is capped (`bake_log_limit_bytes`, 4 MiB by default): past the cap a
//!   notice says where it was cut, output is counted but not kept, and a last line says how
//!   much was left out.
//! - A failed bake marks the release `bake_status = failed` with Ansible's error line as the
//!   reason; the build stays `passed` (its pipeline passed and the package is published), and
//!   the bake crate removes whatever the failed bake left.
//! - dockerd is the server's one [`DockerClient`]: the image lookups go through it, and Packer's
//!   docker builder (which runs the `docker` command) gets its address as `DOCKER_HOST`.
//! - Template and playbook come from `$SLIPWAY_SHARE_DIR/packer/slipway.json` and
//!   `$SLIPWAY_SHARE_DIR/ansible/`; without the variable, from `share/slipway` beside the
//!   binary's directory (`/usr/share/slipway` for `/usr/bin/slipway`, as Slipway's package
//!   installs them), else from the source tree the binary was built from.

mod ami;
mod queue;
mod team;

pub use queue::{images_for, BakeQueue};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use slipway_bake::{BakeObserver, BakeRequest, BakeSource, DockerSource};
use slipway_pipeline::spec::BakeSpec;
use slipway_pipeline::PackageSpec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, Project};
use crate::docker::DockerClient;
use crate::mirror::{CommitId, Mirrors};
use crate::store::release_images::{ClaimedBake, ImageSlot};
use crate::store::releases::{bake_id, BakeLogLine, BakeRecipe, BakedImage, Release};
use crate::store::Store;

/// Overrides where the template (`packer/slipway.json`) and playbook (`ansible/`) are found.
pub const SHARE_DIR_ENV: &str = "SLIPWAY_SHARE_DIR";
/// Where the template and playbook are: see the module's documentation.
fn share_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(SHARE_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| installed_share_dir(&exe));
    installed.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `share/slipway` beside the directory of the binary at `exe`, when it holds the template.
fn installed_share_dir(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?.parent()?.join("share/slipway");
    dir.join("packer/slipway.json").is_file().then_some(dir)
}

/// The base of a full (not incremental) bake.
pub const BASE_IMAGE: &str = "slipway/debian:bookworm";
/// The port the image declares; the app itself listens on `$PORT`.
pub const APP_PORT: u16 = 8000;
/// The bake reason of releases that were baking when the server stopped.
pub const INTERRUPTED_REASON: &str = "the server stopped while this release was baking";
/// The first line of the log of a bake a server stop cut off before.
const BAKING_AGAIN: &str =
    "==> slipway: baking again: the server stopped during this image's previous bake";
/// Bakes of one image a server stop may interrupt before it is failed rather than run again.
const MAX_ATTEMPTS: i32 = 2;

const BAKE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest Ansible error line kept as a bake reason; the whole line stays in the bake log.
const REASON_LIMIT: usize = 2000;

/// Bakes releases for one server; cheap to clone.
#[derive(Debug, Clone)]
pub struct Baker {
    template: PathBuf,
    playbook_dir: PathBuf,
    apt_url: String,
    apt_key_path: PathBuf,
    /// The first 8 hex digits of the server id, in image names.
    server_tag: String,
    docker: DockerClient,
    packer: PathBuf,
    /// Bytes of a bake's output stored in its log; the rest is cut.
    log_limit_bytes: u64,
    /// `<data_dir>/bakes`: playbook repositories' mirrors and each bake's scratch files.
    bake_dir: PathBuf,
    /// The bare mirrors of playbook repositories.
    playbook_mirrors: Mirrors,
    /// The projects' mirrors, for a bake's checkout of the release's commit.
    project_mirrors: Mirrors,
}

impl Baker {
    /// A baker for the server listening on `server_addr` (whose `/apt/` the build container
    /// reaches over the host network, trusting the repository's public key at `apt_key_path`)
    /// with its data in `data_dir`, baking on `docker` with the Packer binary `packer`.
    pub fn new(
        data_dir: &Path,
        apt_key_path: &Path,
        server_addr: SocketAddr,
        server_id: Uuid,
        docker: DockerClient,
        packer: PathBuf,
    ) -> Baker {
        // Packer and Ansible resolve relative paths from elsewhere (Ansible from the role), and
        // the default data dir (`.slipway`) is relative.
        let data_dir = &std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let share_dir = share_dir();
        let mut reachable = server_addr;
        if reachable.ip().is_unspecified() {
            reachable.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Baker {
            template: share_dir.join("packer/slipway.json"),
            playbook_dir: share_dir.join("ansible"),
            apt_url: format!("http://{reachable}/apt/"),
            apt_key_path: std::path::absolute(apt_key_path)
                .unwrap_or_else(|_| apt_key_path.to_path_buf()),
            server_tag: server_id.simple().to_string()[..8].to_string(),
            docker,
            packer,
            log_limit_bytes: crate::config::DEFAULT_BAKE_LOG_LIMIT_BYTES,
            bake_dir: data_dir.join("bakes"),
            playbook_mirrors: Mirrors::lazy(&data_dir.join("bakes/mirrors")),
            project_mirrors: Mirrors::lazy(&data_dir.join("mirrors")),
        }
    }

    /// On server start: makes `<data_dir>/bakes` (private to the server) and removes the
    /// scratch files bakes interrupted by a stop or crash left.
    pub fn remove_scratch_leftovers(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.bake_dir)
            .with_context(|| format!("cannot make {}", self.bake_dir.display()))?;
        let scratch = self.scratch_dir();
        match std::fs::remove_dir_all(&scratch) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", scratch.display()))
            }
            _ => Ok(()),
        }
    }

    fn scratch_dir(&self) -> PathBuf {
        self.bake_dir.join("scratch")
    }

    /// Stores at most `bytes` of each bake's output in its log.
    pub fn with_log_limit(mut self, bytes: u64) -> Baker {
        self.log_limit_bytes = bytes;
        self
    }

    /// The team's bake settings (the server's, then `.slipway.yml`'s) staged from `checkout`.
    async fn stage(
        &self,
        project: &Project,
        file_bake: Option<&BakeSpec>,
        checkout: &Path,
    ) -> Result<team::Staged, String> {
        let (settings, overridden) = team::merge(&project.bake, file_bake);
        let mut staged = team::stage(
            &settings,
            project,
            checkout,
            &self.playbook_mirrors,
            &self.scratch_dir(),
        )
        .await?;
        staged.notes.splice(0..0, overridden);
        Ok(staged)
    }

    /// Stages a bake's team settings from the release's commit, checked out anew from the
    /// project's mirror (the build's checkout is gone).
    async fn stage_from_commit(
        &self,
        project: &Project,
        release: &Release,
    ) -> anyhow::Result<team::Staged> {
        let commit = CommitId::parse(&release.commit).map_err(anyhow::Error::msg)?;
        let mirror = self.project_mirrors.mirror(project);
        mirror
            .fetch_commit(&commit)
            .await
            .map_err(anyhow::Error::msg)?;
        let scratch = self.scratch_dir();
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot make {}", scratch.display()))?;
        let checkout = tempfile::Builder::new()
            .prefix("checkout-")
            .tempdir_in(&scratch)
            .with_context(|| format!("cannot make a directory in {}", scratch.display()))?;
        let index = PathBuf::from(format!("{}.index", checkout.path().display()));
        mirror
            .export_tree(&commit, checkout.path(), &index)
            .await
            .map_err(anyhow::Error::msg)?;
        let spec = crate::runner::read_spec(checkout.path()).map_err(anyhow::Error::msg)?;
        let mut staged = self
            .stage(project, spec.bake.as_ref(), checkout.path())
            .await
            .map_err(anyhow::Error::msg)?;
        staged.keep(checkout);
        Ok(staged)
    }

    /// Bakes the release's Docker image `bake` claimed from the queue (so the release is
    /// `baking`), from what its publication recorded and its commit in the project's mirror:
    /// no checkout of the build is needed. Never fails: errors end up in the release.
    #[tracing::instrument(skip_all, fields(project = %release.project, release = %release.version))]
    pub async fn bake_claimed(
        &self,
        store: &Store,
        release: &Release,
        project: &Project,
        bake: &ClaimedBake,
        cancel: &CancellationToken,
    ) {
        let result = match (&release.image_command, &release.exposed_ports) {
            (Some(command), Some(ports)) => {
                let recipe = BakeRecipe {
                    command: command.clone(),
                    exposed_ports: ports.clone(),
                };
                match self.stage_from_commit(project, release).await {
                    Ok(staged) => {
                        self.run_bake(store, release, &recipe, bake, &staged, cancel)
                            .await
                    }
                    Err(e) => Err(e.context("cannot stage the team's bake settings")),
                }
            }
            _ => Err(anyhow::anyhow!("the release has no recorded bake recipe")),
        };
        if let Err(e) = result {
            tracing::error!(error = format!("{e:#}"), "bake failed");
            let reason = format!("the bake could not run: {e:#}");
            if let Err(e) = store.mark_bake_failed(release.id, &reason).await {
                tracing::error!(error = %e, "cannot record a failed bake");
            }
        }
    }

    /// Bakes `release` with `recipe`, reusing an image with an equal bake key unless `bake` is
    /// a rebake, which always runs Packer.
    async fn run_bake(
        &self,
        store: &Store,
        release: &Release,
        recipe: &BakeRecipe,
        bake: &ClaimedBake,
        staged: &team::Staged,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let record = release
            .package
            .as_ref()
            .context("a published release has a package")?;
        // dockerd down (queued again) or the base image missing (failed, saying so).
        let (base_image, base_image_id, base_note) =
            match self.base_image(store, release, staged).await {
                Ok(base) => base,
                Err(e) => {
                    let reason = format!("cannot start the bake: {e:#}");
                    return self.fail(store, bake, &reason).await;
                }
            };
        // The build container of an attempt dockerd's outage cut off.
        if let Err(e) = slipway_bake::reap_bake(
            &self.docker.client(),
            &bake_id(release.id),
            slipway_bake::Reap::Containers,
        )
        .await
        {
            return self
                .fail(store, bake, &format!("cannot start the bake: {e}"))
                .await;
        }
        let exposed_ports = recipe
            .exposed_ports
            .iter()
            .map(|&port| u16::try_from(port).context("exposed ports are 16-bit"))
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let mut request = BakeRequest {
            packer: self.packer.clone(),
            template: self.template.clone(),
            playbook_dir: self.playbook_dir.clone(),
            source: BakeSource::Docker(DockerSource {
                base_image,
                image_repository: self.image_repository(&record.name),
                tag: release.version.clone(),
                command: recipe.command.clone(),
                exposed_ports,
                bake_key: String::new(),
            }),
            app: release.project.clone(),
            package: record.name.clone(),
            version: record.version.clone(),
            release: u64::try_from(release.number).context("release numbers are positive")?,
            commit: release.commit.clone(),
            apt_url: self.apt_url.clone(),
            apt_key_path: self.apt_key_path.clone(),
            security_updates: false,
            bake_id: bake_id(release.id),
            timeout: BAKE_TIMEOUT,
            env: [("DOCKER_HOST".to_string(), self.docker.address().to_string())].into(),
            team: staged.team.clone(),
            scratch_dir: self.scratch_dir(),
            provisioning: staged.provisioning.clone(),
        };
        let key = match request.bake_key(&base_image_id, &record.sha256) {
            Ok(key) => key,
            Err(e) => {
                store
                    .mark_bake_failed(release.id, &format!("cannot start the bake: {e}"))
                    .await?;
                return Ok(());
            }
        };
        if let BakeSource::Docker(docker) = &mut request.source {
            docker.bake_key.clone_from(&key);
        }
        let rebake = bake.rebake;
        store.set_bake_key(release.id, &key).await?;
        let mut log = self.bake_log(store, bake, BAKING_AGAIN);
        if rebake {
            log.line("==> slipway: rebake requested: baking again even if an image with this bake key exists");
        }
        log.line(&base_note);
        for note in &staged.notes {
            log.line(note);
        }
        if !rebake {
            if let Some(image) = self.reusable_image(&request, &key).await? {
                log.line(&format!(
                    "==> slipway: reusing {} ({}): an earlier bake with the same bake key finished it",
                    image.image, image.image_id
                ));
                log.finish().await;
                store.mark_baked(release.id, &image).await?;
                return Ok(());
            }
        }
        let result = slipway_bake::bake(&request, &self.docker.client(), &mut log, cancel).await;
        let ansible_error = log.take_ansible_error();
        log.finish().await;
        match result {
            Ok(artifact) => {
                tracing::info!(image = %artifact.name, rebake, "baked a release");
                let image = BakedImage {
                    image: artifact.name,
                    image_id: artifact.id,
                };
                store.mark_baked(release.id, &image).await?;
            }
            Err(error) => {
                let reason = failure_reason(ansible_error, &error);
                self.fail(store, bake, &reason).await?;
            }
        }
        Ok(())
    }

    /// Fails the Docker bake with `reason`, unless dockerd is unreachable now: then that is
    /// why it failed, and it goes back to the queue (the attempt not counted), where it waits
    /// for dockerd.
    async fn fail(&self, store: &Store, bake: &ClaimedBake, reason: &str) -> anyhow::Result<()> {
        if let Err(unreachable) = self.docker.check().await {
            tracing::warn!(%unreachable, %reason, "a bake failed while dockerd is unreachable; it is queued again");
            store.requeue_bake(bake, true).await?;
            return Ok(());
        }
        tracing::warn!(%reason, "bake failed");
        store.mark_bake_failed(bake.release, reason).await?;
        Ok(())
    }

    /// The log of the image `bake` is making, opening with `again` when a server stop cut
    /// off an earlier attempt.
    fn bake_log(&self, store: &Store, bake: &ClaimedBake, again: &str) -> BakeLog {
        let mut log = BakeLog::start(
            store.clone(),
            bake.release,
            bake.slot.clone(),
            self.log_limit_bytes,
        );
        if bake.attempts > 1 {
            log.line(again);
        }
        log
    }

    /// `slipway/<package>-<server tag>`, in Docker's repository alphabet.
    fn image_repository(&self, package: &str) -> String {
        let name: String = package
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
                _ => '-',
            })
            .collect();
        format!("slipway/{name}-{}", self.server_tag)
    }

    /// The base image (by name and id) and a log line saying which it is and why. Building on
    /// the previous release's image is right only when it was provisioned as this bake will be:
    /// a team playbook that changed may no longer make (or remove) what the old one made.
    async fn base_image(
        &self,
        store: &Store,
        release: &Release,
        staged: &team::Staged,
    ) -> anyhow::Result<(String, String, String)> {
        let mut why_full = String::new();
        if let Some(previous) = store
            .previous_baked_image(&release.project, release.number)
            .await?
        {
            let reference = if self.local_image_id(&previous.image).await?.as_deref()
                == Some(&previous.image_id)
            {
                Some(format!("{} ({})", previous.image, previous.image_id))
            } else if self.local_image_id(&previous.image_id).await?.is_some() {
                Some(previous.image_id.clone())
            } else {
                None
            };
            if let Some(reference) = reference {
                let provisioning = self.provisioning_label(&previous.image_id).await?;
                if provisioning == staged.provisioning {
                    let note = format!("==> slipway: incremental bake from {reference}");
                    return Ok((previous.image_id.clone(), previous.image_id, note));
                }
                why_full = format!(
                    ": the previous image {reference} was provisioned differently (the team's playbook, roles, extra_vars or base_image changed)"
                );
            }
        }
        let (base, hint) = match &staged.base_image {
            Some(base) => (
                base.as_str(),
                "the project's base_image; build or load it on dockerd",
            ),
            None => (BASE_IMAGE, "scripts/bootstrap builds it"),
        };
        let id = self
            .local_image_id(base)
            .await?
            .with_context(|| format!("the base image {base} is missing ({hint})"))?;
        let note = format!("==> slipway: full bake from {base} ({id}){why_full}");
        Ok((base.to_string(), id, note))
    }

    /// The image's `slipway.provisioning` label; images baked before it existed count as
    /// provisioned by default.
    async fn provisioning_label(&self, image: &str) -> anyhow::Result<String> {
        let inspected = self
            .docker
            .client()
            .inspect_image(image)
            .await
            .with_context(|| format!("cannot inspect the image {image}"))?;
        Ok(inspected
            .config
            .and_then(|config| config.labels)
            .and_then(|mut labels| labels.remove("slipway.provisioning"))
            .unwrap_or_else(|| slipway_bake::DEFAULT_PROVISIONING.to_string()))
    }

    /// A finished image with this bake key on dockerd (an earlier bake of this release that a
    /// crash cut off before Slipway recorded it, or another release baked identically), tagged
    /// with the name this bake would give it.
    async fn reusable_image(
        &self,
        request: &BakeRequest,
        key: &str,
    ) -> anyhow::Result<Option<BakedImage>> {
        let client = self.docker.client();
        let Some(image_id) = slipway_bake::finished_image(&client, &request.app, key).await? else {
            return Ok(None);
        };
        let image = request.artifact_name();
        if self.local_image_id(&image).await?.as_deref() != Some(&image_id) {
            slipway_bake::tag_image(&client, &image_id, &image).await?;
        }
        Ok(Some(BakedImage { image, image_id }))
    }

    /// The id of the image `reference` names on dockerd, or `None` when there is none.
    async fn local_image_id(&self, reference: &str) -> anyhow::Result<Option<String>> {
        match self.docker.client().inspect_image(reference).await {
            Ok(image) => Ok(image.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(anyhow::anyhow!(
                "cannot inspect the image {reference} on dockerd at {}: {e}",
                self.docker.address()
            )),
        }
    }
}

/// Why a bake failed: Ansible's error line (with where it is) when there is one, else the
/// bake crate's error.
fn failure_reason(ansible_error: Option<String>, error: &slipway_bake::BakeError) -> String {
    match (ansible_error, error) {
        (Some(line), _) => format!("{line} ({error})"),
        (None, slipway_bake::BakeError::PackerMissing { .. }) => {
            format!("{error} (install Packer, or set `packer` in slipway.toml to its path)")
        }
        (None, _) => error.to_string(),
    }
}

/// Takes over the bakes a server that is no longer live left `baking` (this one's stopped or
/// killed predecessor, or another server of the installation): stops their Packer runs (found
/// on this host) and removes
/// what they left (by bake id, the release id: Docker labels, or AWS tags for an AMI) except a
/// finished image or AMI, then queues each of them again, first in line, unless it was already
/// a re-run: that one fails with [`INTERRUPTED_REASON`], and its images go too (its AMI is
/// left to retention).
pub async fn recover_interrupted_bakes(
    store: &Store,
    docker: &DockerClient,
    config: &Config,
) -> anyhow::Result<()> {
    for bake in store.adopt_orphaned_bakes().await? {
        let id = bake_id(bake.release);
        // Packer outlives a server killed mid-bake: stopped first, so nothing is made after
        // the reaping.
        let killed = slipway_bake::stop_orphaned_packer(&id).await;
        if !killed.is_empty() {
            tracing::warn!(bake = %id, process_groups = ?killed, "stopped the Packer run of an interrupted bake");
        }
        // An image the bake finished stays for its re-run to reuse.
        let runs_again = bake.attempts < MAX_ATTEMPTS;
        if bake.slot.is_docker() {
            let reap = if runs_again {
                slipway_bake::Reap::KeepFinished
            } else {
                slipway_bake::Reap::Everything
            };
            if let Err(e) = slipway_bake::reap_bake(&docker.client(), &id, reap).await {
                tracing::error!(error = %e, bake = %id, "cannot remove what an interrupted bake left; remove it by label");
            }
        } else {
            let project = match store.release_by_id(bake.release).await? {
                Some(release) => config.project(&release.project),
                None => None,
            };
            if let Err(e) = ami::reap_interrupted(store, project, &bake).await {
                tracing::error!(error = format!("{e:#}"), bake = %id, "cannot remove what an interrupted AMI bake left; remove it by its tag slipway_bake");
            }
        }
        if runs_again {
            store.requeue_bake(&bake, false).await?;
            tracing::warn!(bake = %id, image = %bake.slot, "queued again a bake interrupted by a server stop");
            continue;
        }
        let reason = format!("{INTERRUPTED_REASON}, for the second time: not baked again");
        store
            .mark_image_failed(bake.release, &bake.slot, &reason)
            .await?;
        tracing::warn!(bake = %id, image = %bake.slot, "marked a bake interrupted twice by a server stop as failed");
    }
    Ok(())
}

/// What the Docker image's bake needs from the checkout, read when the release is published:
/// the image's `CMD` and the port it declares. `Err`: why the release cannot be baked.
pub fn bake_recipe(package: &PackageSpec, workspace: &Path) -> Result<BakeRecipe, String> {
    Ok(BakeRecipe {
        command: start_command(package, workspace)?,
        exposed_ports: vec![i32::from(APP_PORT)],
    })
}

/// The image's `CMD`: the `ExecStart=` of the package's systemd unit, split on whitespace.
fn start_command(package: &PackageSpec, workspace: &Path) -> Result<Vec<String>, String> {
    let Some(unit) = &package.systemd_unit else {
        return Err(format!(
            "package `{}` declares no systemd unit (package.systemd_unit in .slipway.yml), so Slipway cannot tell how to start it in an image",
            package.name.as_str()
        ));
    };
    let text = std::fs::read_to_string(workspace.join(unit.as_str()))
        .map_err(|e| format!("cannot read the systemd unit {}: {e}", unit.as_str()))?;
    exec_start(&text).ok_or_else(|| {
        format!(
            "the systemd unit {} has no ExecStart=, so Slipway cannot tell how to start it in an image",
            unit.as_str()
        )
    })
}

/// The last non-empty `ExecStart=` of a unit, without systemd's prefixes (`-`, `@`, `+`, ...).
fn exec_start(unit: &str) -> Option<Vec<String>> {
    unit.lines()
        .filter_map(|line| line.trim().strip_prefix("ExecStart="))
        .map(|value| {
            value
                .trim_start_matches(['-', '@', ':', '+', '!'])
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .rfind(|words| !words.is_empty())
}

/// Feeds Packer's lines to a task that appends them to the release's bake log in batches, and
/// keeps Ansible's first error line for the bake reason. The cap bounds both what is stored
/// and what waits in the channel.
struct BakeLog {
    lines: mpsc::UnboundedSender<BakeLogLine>,
    seq: i64,
    cap: LogCap,
    ansible_error: Option<String>,
    /// Where Ansible says its error is (`The error appears to be in '<file>': line N, ...`).
    ansible_error_at: Option<String>,
    writer: tokio::task::JoinHandle<()>,
}

impl BakeLog {
    fn start(store: Store, release: Uuid, slot: ImageSlot, limit_bytes: u64) -> BakeLog {
        let (lines, mut received) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            while received.recv_many(&mut batch, 500).await > 0 {
                if let Err(e) = store.append_bake_log_lines(release, &slot, &batch).await {
                    tracing::error!(error = %e, %release, "cannot store bake log lines");
                }
                batch.clear();
                // Let lines gather: one insert per interval rather than one per line.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        BakeLog {
            lines,
            seq: 0,
            cap: LogCap::new(limit_bytes),
            ansible_error: None,
            ansible_error_at: None,
            writer,
        }
    }

    fn store(&mut self, line: String) {
        self.seq += 1;
        let _ = self.lines.send(BakeLogLine {
            seq: self.seq,
            at: Utc::now(),
            line,
        });
    }

    /// Ansible's first error line, with where Ansible says it is.
    fn take_ansible_error(&mut self) -> Option<String> {
        match (self.ansible_error.take(), self.ansible_error_at.take()) {
            (Some(error), Some(at)) => Some(format!("{error} ({at})")),
            (error, _) => error,
        }
    }

    /// Says what the cap left out, then waits until every line is stored.
    async fn finish(mut self) {
        if let Some(summary) = self.cap.summary() {
            self.store(summary);
        }
        drop(self.lines);
        if let Err(e) = self.writer.await {
            tracing::error!(error = %e, "the bake log writer failed");
        }
    }
}

impl BakeObserver for BakeLog {
    fn line(&mut self, line: &str) {
        if self.ansible_error.is_none() && is_ansible_error(line) {
            self.ansible_error = Some(line.trim().chars().take(REASON_LIMIT).collect());
        } else if self.ansible_error.is_some() && self.ansible_error_at.is_none() {
            self.ansible_error_at = error_location(line);
        }
        match self.cap.admit(line.len()) {
            Admit::Store => self.store(line.to_string()),
            Admit::Cut(notice) => self.store(notice),
            Admit::Drop => {}
        }
    }
}

/// Counts a bake's output against the cap and decides what is stored.
#[derive(Debug)]
struct LogCap {
    limit: u64,
    stored: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Store,
    /// The line that reached the cap is replaced by this notice; later lines are dropped.
    Cut(String),
    Drop,
}

impl LogCap {
    fn new(limit: u64) -> LogCap {
        LogCap {
            limit,
            stored: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    fn admit(&mut self, bytes: usize) -> Admit {
        // A line costs its bytes plus its line break.
        let cost = bytes as u64 + 1;
        let already_cut = self.dropped_lines > 0;
        if !already_cut && self.stored + cost <= self.limit {
            self.stored += cost;
            return Admit::Store;
        }
        self.dropped_lines += 1;
        self.dropped_bytes += cost;
        if already_cut {
            return Admit::Drop;
        }
        Admit::Cut(format!(
            "==> slipway: bake log cut at {} bytes (bake_log_limit_bytes): the rest of the bake's output is not stored",
            self.limit
        ))
    }

    /// The last line of a cut log: how much was left out.
    fn summary(&self) -> Option<String> {
        (self.dropped_lines > 0).then(|| {
            format!(
                "==> slipway: {} lines ({} bytes) of bake output were not stored",
                self.dropped_lines, self.dropped_bytes
            )
        })
    }
}

/// How Ansible introduces the place of a playbook's syntax or parse error.
const ERROR_LOCATION: &str = "The error appears to be in '";

/// `The error appears to be in '<file>': line N, column M` out of Ansible's line, without the
/// hedge that follows (", but may be elsewhere ...", cut over two lines).
fn error_location(line: &str) -> Option<String> {
    let at = line.find(ERROR_LOCATION)?;
    let location = &line[at..];
    let location = location
        .find(", but may")
        .map_or(location, |end| &location[..end]);
    Some(location.trim().chars().take(REASON_LIMIT).collect())
}

/// Ansible's task failures (`fatal: [host]: FAILED! => ...`) and its own errors (`ERROR! ...`).
fn is_ansible_error(line: &str) -> bool {
    line.contains("fatal: [") || line.contains("FAILED! =>") || line.contains("ERROR!")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_is_split_on_whitespace_without_prefixes() {
        let unit = "[Service]\nExecStart=\nExecStart=-/usr/bin/python3  /usr/lib/hello/hello.py\n";
        assert_eq!(
            exec_start(unit),
            Some(vec![
                "/usr/bin/python3".to_string(),
                "/usr/lib/hello/hello.py".to_string()
            ])
        );
        assert_eq!(exec_start("[Service]\nType=simple\n"), None);
    }

    #[test]
    fn an_installed_binary_finds_the_template_in_share_beside_its_directory() {
        let prefix = tempfile::tempdir().unwrap();
        let exe = prefix.path().join("bin/slipway");
        assert_eq!(installed_share_dir(&exe), None);
        let template = prefix.path().join("share/slipway/packer/slipway.json");
        std::fs::create_dir_all(template.parent().unwrap()).unwrap();
        std::fs::write(&template, "{}").unwrap();
        assert_eq!(
            installed_share_dir(&exe),
            Some(prefix.path().join("share/slipway"))
        );
    }

    #[test]
    fn image_names_are_per_server_and_in_dockers_alphabet() {
        let baker = Baker::new(
            Path::new("/data"),
            Path::new("/srv/apt/key.gpg"),
            "0.0.0.0:8080".parse().unwrap(),
            Uuid::parse_str("1a2b3c4d-0000-0000-0000-000000000000").unwrap(),
            DockerClient::new("unix:///nonexistent/docker.sock").unwrap(),
            PathBuf::from("packer"),
        );
        assert_eq!(baker.image_repository("hello"), "slipway/hello-1a2b3c4d");
        assert_eq!(baker.image_repository("libc++"), "slipway/libc---1a2b3c4d");
        assert_eq!(baker.apt_url, "http://127.0.0.1:8080/apt/");
        assert_eq!(baker.apt_key_path, Path::new("/srv/apt/key.gpg"));
    }

    #[test]
    fn the_log_cap_stores_lines_up_to_the_limit_then_one_notice_and_a_summary() {
        let mut cap = LogCap::new(10);
        assert_eq!(cap.admit(4), Admit::Store);
        assert_eq!(cap.admit(4), Admit::Store);
        assert_eq!(cap.summary(), None);
        match cap.admit(1) {
            Admit::Cut(notice) => assert!(notice.contains("cut at 10 bytes"), "{notice}"),
            other => panic!("expected a cut, got {other:?}"),
        }
        // Shorter lines after the cut are not stored either: the log stays a prefix.
        assert_eq!(cap.admit(0), Admit::Drop);
        assert_eq!(cap.admit(100), Admit::Drop);
        assert_eq!(
            cap.summary().unwrap(),
            "==> slipway: 3 lines (104 bytes) of bake output were not stored"
        );
        // One line longer than the whole cap is cut at once.
        let mut cap = LogCap::new(10);
        assert!(matches!(cap.admit(50), Admit::Cut(_)));
    }

    #[test]
    fn the_place_of_an_ansible_parse_error_is_kept_without_its_hedge() {
        assert_eq!(
            error_location("    docker: The error appears to be in '/w/deploy/bake.yml': line 8, column 1, but may").as_deref(),
            Some("The error appears to be in '/w/deploy/bake.yml': line 8, column 1")
        );
        assert_eq!(error_location("    docker: PLAY RECAP"), None);
    }

    #[test]
    fn ansible_failures_are_recognised() {
        assert!(is_ansible_error(
            "    docker: fatal: [default]: FAILED! => {\"msg\": \"no package\"}"
        ));
        assert!(!is_ansible_error(
            "    docker: TASK [Install exactly hello=1]"
        ));
    }
}
