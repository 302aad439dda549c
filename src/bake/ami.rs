//! AMI bakes on the server: a release's AMI is baked (Packer's `amazon-ebs` source, the same
//! template and playbooks as the Docker image, the team's too) with the project's
//! `[projects.ami]`, recorded on the release's `ami` image of the region with its bake key and
//! log, and reused when a finished AMI with the same key is in the account (one a killed
//! server's bake made before it could record it).
//!
//! - The source AMI is resolved first (an id, or the newest match of the filter), so the bake
//!   key covers the exact AMI the bake starts from: a newer Debian AMI makes a new key.
//! - A failed bake leaves nothing in the account (the bake crate reaps by the bake's id); a
//!   bake a crash interrupted is reaped at the next start ([`reap_interrupted`]), keeping an
//!   AMI it finished, before it is queued again.
//! - An aws environment in another region than `[projects.ami]`'s gets a copy of the baked AMI
//!   (`Baker::copy_ami`, CopyImage with the AMI's name and tags, the bake key tagged last),
//!   queued with the bake and claimed once the bake ended; a failed bake fails its copies.
//! - Retention ([`retain_amis`]) runs after each AMI bake and at start, in every region the
//!   project has AMIs in: it deregisters the project's AMIs (and deletes their snapshots)
//!   except those instances run (live and warm fleets), those of the `keep_releases` newest
//!   releases, those an unfinished deployment takes, and those of bakes queued or in progress
//!   (with the sources of copies still to be made); each deregistered AMI's row says so.

use std::collections::BTreeSet;

use anyhow::Context;
use chrono::Utc;
use slipway_bake::ami::AmazonEbsSource;
use slipway_bake::{AmiAccount, BakeRequest, BakeSource, SourceAmi};
use tokio_util::sync::CancellationToken;

use slipway_bake::BakeObserver;

use super::{failure_reason, Baker, BAKE_TIMEOUT, BAKING_AGAIN};
use crate::config::{AmiSettings, Project};
use crate::store::release_images::{ClaimedBake, ImageRecord, AMI};
use crate::store::releases::{bake_id, Release};
use crate::store::Store;

impl Baker {
    /// Bakes the release's AMI `bake` claimed from the queue (now `baking`). Never fails:
    /// errors end up on the release's image.
    #[tracing::instrument(skip_all, fields(project = %release.project, release = %release.version, region = %bake.slot.region))]
    pub async fn bake_ami(
        &self,
        store: &Store,
        release: &Release,
        project: &Project,
        bake: &ClaimedBake,
        cancel: &CancellationToken,
    ) {
        let result = match (&project.ami, &bake.copy_of) {
            (Some(settings), None) => {
                self.run_ami_bake(store, release, project, settings, bake, cancel)
                    .await
            }
            (Some(settings), Some(from)) => {
                self.copy_ami(store, release, settings, from, bake, cancel)
                    .await
            }
            (None, _) => Err(anyhow::anyhow!(
                "the project has no [projects.ami] settings any more"
            )),
        };
        if let Err(e) = result {
            tracing::error!(error = format!("{e:#}"), "AMI bake failed");
            let reason = format!("the bake could not run: {e:#}");
            if let Err(e) = record(store, release, bake, "failed", Some(&reason), None, None).await
            {
                tracing::error!(error = %e, "cannot record a failed AMI bake");
            }
        }
    }

    async fn run_ami_bake(
        &self,
        store: &Store,
        release: &Release,
        project: &Project,
        settings: &AmiSettings,
        bake: &ClaimedBake,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let package = release
            .package
            .as_ref()
            .context("a published release has a package")?;
        let mut log = self.bake_log(store, bake, BAKING_AGAIN);
        let account = account(settings).await;
        let prepared = async {
            let staged = self
                .stage_from_commit(project, release)
                .await
                .context("cannot stage the team's bake settings")?;
            let source_ami = account
                .resolve_source(&settings.source_ami)
                .await
                .context("cannot find the source AMI")?;
            anyhow::Ok((staged, source_ami))
        }
        .await;
        let (staged, source_ami) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                let reason = format!("cannot start the bake: {e:#}");
                log.line(&format!("==> slipway: {reason}"));
                log.finish().await;
                return record(store, release, bake, "failed", Some(&reason), None, None).await;
            }
        };
        let mut source = ebs_source(settings);
        source.source_ami = SourceAmi::Id(source_ami.clone());
        let mut request = BakeRequest {
            packer: self.packer.clone(),
            template: self.template.clone(),
            playbook_dir: self.playbook_dir.clone(),
            source: BakeSource::AmazonEbs(source),
            app: release.project.clone(),
            package: package.name.clone(),
            version: package.version.clone(),
            release: u64::try_from(release.number).context("release numbers are positive")?,
            commit: release.commit.clone(),
            apt_url: settings
                .apt_url
                .clone()
                .unwrap_or_else(|| self.apt_url.clone()),
            apt_key_path: self.apt_key_path.clone(),
            security_updates: false,
            bake_id: bake_id(release.id),
            timeout: BAKE_TIMEOUT,
            env: Default::default(),
            team: staged.team.clone(),
            scratch_dir: self.scratch_dir(),
            provisioning: staged.provisioning.clone(),
        };
        let key = match request.bake_key(&source_ami, &package.sha256) {
            Ok(key) => key,
            Err(e) => {
                let reason = format!("cannot start the bake: {e}");
                log.finish().await;
                return record(store, release, bake, "failed", Some(&reason), None, None).await;
            }
        };
        if let BakeSource::AmazonEbs(source) = &mut request.source {
            source.bake_key = key.clone();
        }
        record(store, release, bake, "baking", None, Some(&key), None).await?;
        if bake.rebake {
            log.line("==> slipway: rebake requested: baking again even if an AMI with this bake key exists");
        }
        log.line(&format!(
            "==> slipway: AMI bake in {} from {source_ami}",
            settings.region
        ));
        for note in &staged.notes {
            log.line(note);
        }
        if !bake.rebake {
            if let Some(ami) = reusable_ami(&account, release, &key).await? {
                log.line(&format!(
                    "==> slipway: reusing {ami}: an earlier bake had the same bake key"
                ));
                log.finish().await;
                return record(store, release, bake, "baked", None, Some(&key), Some(&ami)).await;
            }
        }
        let result = slipway_bake::bake(&request, &self.docker.client(), &mut log, cancel).await;
        let ansible_error = log.take_ansible_error();
        log.finish().await;
        match result {
            Ok(artifact) => {
                tracing::info!(ami = %artifact.id, "baked a release's AMI");
                record(
                    store,
                    release,
                    bake,
                    "baked",
                    None,
                    Some(&key),
                    Some(&artifact.id),
                )
                .await
            }
            Err(error) => {
                let reason = failure_reason(ansible_error, &error);
                tracing::warn!(%reason, "AMI bake failed");
                record(
                    store,
                    release,
                    bake,
                    "failed",
                    Some(&reason),
                    Some(&key),
                    None,
                )
                .await
            }
        }
    }
}

impl Baker {
    /// Copies the release's AMI baked in `from` into the region of `bake`, or reuses a finished
    /// copy with its bake key there (one a killed server made before it could record it).
    async fn copy_ami(
        &self,
        store: &Store,
        release: &Release,
        settings: &AmiSettings,
        from: &str,
        bake: &ClaimedBake,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let region = &bake.slot.region;
        let mut log = self.bake_log(
            store,
            bake,
            "==> slipway: copying again: the server stopped during this AMI's previous copy",
        );
        let source = release
            .images
            .iter()
            .find(|image| image.kind == AMI && image.region.as_deref() == Some(from));
        let (source_ami, key) = match source {
            Some(image) if image.status == "baked" => (
                image.id.clone().context("a baked AMI has an id")?,
                image
                    .bake_key
                    .clone()
                    .context("a baked AMI has a bake key")?,
            ),
            other => {
                let status = other.map_or("missing", |image| image.status.as_str());
                let reason = format!("the AMI in {from} is {status}: nothing to copy to {region}");
                log.line(&format!("==> slipway: {reason}"));
                log.finish().await;
                return record(store, release, bake, "failed", Some(&reason), None, None).await;
            }
        };
        record(store, release, bake, "baking", None, Some(&key), None).await?;
        let target = account_in(settings, region).await;
        if let Some(ami) = reusable_ami(&target, release, &key).await? {
            log.line(&format!(
                "==> slipway: reusing {ami} in {region}: an earlier copy had the same bake key"
            ));
            log.finish().await;
            return record(store, release, bake, "baked", None, Some(&key), Some(&ami)).await;
        }
        log.line(&format!(
            "==> slipway: copying {source_ami} from {from} to {region}"
        ));
        let started = std::time::Instant::now();
        let source = account_in(settings, from).await;
        let copied = tokio::select! {
            copied = target.copy_from(&source, &source_ami, BAKE_TIMEOUT) => copied,
            _ = cancel.cancelled() => {
                log.line("==> slipway: the copy was cancelled by the server's stop");
                log.finish().await;
                return Ok(());
            }
        };
        match copied {
            Ok(ami) => {
                log.line(&format!(
                    "==> slipway: {ami} is available in {region} after {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                log.finish().await;
                tracing::info!(%ami, %region, "copied a release's AMI");
                record(store, release, bake, "baked", None, Some(&key), Some(&ami)).await
            }
            Err(error) => {
                let reason = format!("cannot copy {source_ami} from {from}: {error}");
                log.line(&format!("==> slipway: {reason}"));
                log.finish().await;
                // What the copy made carries the bake's id: removed now, as a failed bake's is.
                let keep = store.release_amis(release.id, region).await?;
                if let Err(e) = target.reap_bake(&bake_id(release.id), &keep).await {
                    tracing::error!(error = %e, "a failed AMI copy left an AMI behind; remove it by its tag slipway_bake");
                }
                record(
                    store,
                    release,
                    bake,
                    "failed",
                    Some(&reason),
                    Some(&key),
                    None,
                )
                .await
            }
        }
    }
}

/// Records the state of the release's AMI `bake`.
async fn record(
    store: &Store,
    release: &Release,
    bake: &ClaimedBake,
    status: &str,
    reason: Option<&str>,
    bake_key: Option<&str>,
    ami: Option<&str>,
) -> anyhow::Result<()> {
    let record = ImageRecord {
        kind: AMI,
        region: &bake.slot.region,
        status,
        reason,
        bake_key,
        image: ami,
        image_id: ami,
    };
    store.record_release_image(release.id, &record).await?;
    Ok(())
}

/// An AMI of the project with this bake key that still exists in the account.
async fn reusable_ami(
    account: &AmiAccount,
    release: &Release,
    key: &str,
) -> anyhow::Result<Option<String>> {
    let amis = account.project_amis(&release.project).await?;
    let reusable = amis
        .into_iter()
        .find(|ami| ami.finished() && ami.bake_key.as_deref() == Some(key));
    Ok(reusable.map(|ami| ami.id))
}

/// At start, for an AMI bake a stop or crash interrupted: removes what it left in the account
/// (found by its bake id), keeping any AMI the release already records and any AMI the bake
/// finished (available and tagged) that Slipway had not recorded yet: the re-run finds it by
/// its bake key and records it instead of baking again.
pub async fn reap_interrupted(
    store: &Store,
    project: Option<&Project>,
    bake: &ClaimedBake,
) -> anyhow::Result<()> {
    let Some((project, settings)) = project.and_then(|p| Some((p, p.ami.as_ref()?))) else {
        anyhow::bail!("the project's [projects.ami] settings are gone: remove what the bake left by its tag slipway_bake");
    };
    let account = account_in(settings, &bake.slot.region).await;
    let id = bake_id(bake.release);
    let mut keep = store.release_amis(bake.release, &bake.slot.region).await?;
    // An AMI the bake finished before the interruption is kept for the re-run to reuse.
    let amis = account.project_amis(&project.name).await?;
    keep.extend(
        amis.into_iter()
            .filter(|ami| ami.finished() && ami.bake_id.as_deref() == Some(id.as_str()))
            .map(|ami| ami.id),
    );
    let reaped = account.reap_bake(&id, &keep).await?;
    if !reaped.is_empty() {
        tracing::warn!(bake = %bake_id(bake.release), ?reaped, "removed what an interrupted AMI bake left");
    }
    Ok(())
}

/// Deregisters the project's AMIs that nothing needs any more (see the module's notes) in
/// every region it has AMIs in, and records it on their releases.
pub async fn retain_amis(store: &Store, project: &Project) -> anyhow::Result<()> {
    let Some(settings) = &project.ami else {
        return Ok(());
    };
    let regions: BTreeSet<String> = super::images_for(project)
        .into_iter()
        .filter(|image| image.slot.kind == AMI)
        .map(|image| image.slot.region)
        .chain([settings.region.clone()])
        .collect();
    for region in &regions {
        retain_in(store, project, settings, region).await?;
    }
    Ok(())
}

async fn retain_in(
    store: &Store,
    project: &Project,
    settings: &AmiSettings,
    region: &str,
) -> anyhow::Result<()> {
    let account = account_in(settings, region).await;
    let mut keep = store
        .amis_to_keep(&project.name, region, settings.keep_releases)
        .await?;
    keep.extend(account.amis_in_use().await?);
    // Bakes queued or running, and the sources of copies still to be made from here.
    let unfinished: BTreeSet<String> = store
        .images_unfinished()
        .await?
        .into_iter()
        .filter(|bake| {
            bake.slot.kind == AMI
                && (bake.slot.region == region || bake.copy_of.as_deref() == Some(region))
        })
        .map(|bake| bake_id(bake.release))
        .collect();
    for id in &unfinished {
        keep.extend(account.bake_images(id).await?);
    }
    let retained = account.retain(&project.name, &keep).await?;
    if retained.deregistered.is_empty() {
        return Ok(());
    }
    let reason = format!(
        "deregistered by retention at {}: no instance ran it and it was not among the AMIs of the {} newest releases (keep_releases)",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        settings.keep_releases
    );
    store
        .record_deregistered_amis(&project.name, region, &retained.deregistered, &reason)
        .await?;
    tracing::info!(project = %project.name, %region, deregistered = ?retained.deregistered, snapshots = ?retained.deleted_snapshots, "AMI retention");
    Ok(())
}

/// The account and region the project's AMIs are baked in: for bakes, reaping and retention.
async fn account(settings: &AmiSettings) -> AmiAccount {
    account_in(settings, &settings.region).await
}

/// The project's account in `region` (where an AMI is baked or copied to).
async fn account_in(settings: &AmiSettings, region: &str) -> AmiAccount {
    AmiAccount::connect(region, settings.endpoint_url.as_deref()).await
}

/// The bake crate's `amazon-ebs` source from the project's settings; the bake key is set once
/// the source AMI is known.
fn ebs_source(settings: &AmiSettings) -> AmazonEbsSource {
    AmazonEbsSource {
        region: settings.region.clone(),
        source_ami: settings.source_ami.clone(),
        instance_type: settings.instance_type.clone(),
        subnet_id: settings.subnet_id.clone(),
        security_group_ids: settings.security_group_ids.clone(),
        iam_instance_profile: settings.iam_instance_profile.clone(),
        ssh_username: settings.ssh_username.clone(),
        volume_size: settings.volume_size,
        encrypted: settings.encrypted,
        kms_key_id: settings.kms_key_id.clone(),
        tags: settings.tags.clone(),
        endpoint_url: settings.endpoint_url.clone(),
        communicator: settings.communicator,
        bake_key: String::new(),
    }
}
