//! Packer runs: bake a release into a Docker image (locally) or an AMI, with the template in
//! `packer/slipway.json` and the playbook in `ansible/bake.yml`, followed by the team's own
//! playbook when the request names one ([`TeamPlaybook`]).
//!
//! [`bake`] runs `packer build -machine-readable -only=<source>` in its own process group,
//! streams Packer's output to a [`BakeObserver`] as readable lines, and returns the
//! [`BakeArtifact`]: the image id behind the tag Packer made, or the AMI of Packer's
//! `artifact,0,id,<region>:<ami>` line.
//!
//! A failed, timed-out or cancelled docker bake leaves nothing behind: Packer removes its
//! container, then Slipway removes anything still carrying the bake's labels and restores the
//! target tag; [`reap_bake`] does the same for a bake a crash interrupted, and may keep an image
//! the bake had finished (committed with its bake key, [`KEY_LABEL`]) for [`finished_image`] to
//! find when the bake runs again. On amazon-ebs, Packer
//! terminates its instance on failure or interrupt, and registers the AMI only after
//! provisioning succeeded (deregistering it if a later step fails), so nothing stays registered;
//! Slipway then removes anything still tagged with the bake's id, and its own security group
//! ([`crate::ami`], whose `AmiAccount::reap_bake` is the AMI side of [`reap_bake`]).

mod docker;
mod error;
mod key;
mod output;
mod request;
mod run;
mod team;

use std::collections::BTreeMap;

use bollard::Docker;

use crate::ami::AmiBake;
use tokio_util::sync::CancellationToken;

pub use docker::{
    finished_image, reap_bake, tag_image, Reap, CONTAINER_LABEL, IMAGE_LABEL, KEY_LABEL,
};
pub use error::BakeError;
pub use key::{bake_key, read_playbook_dir, BakeKeyInputs, MAX_PLAYBOOK_BYTES, MAX_PLAYBOOK_FILES};
pub use request::{AmazonEbsSource, BakeRequest, BakeSource, DockerSource, DEFAULT_PROVISIONING};
pub use run::stop_orphaned_packer;
use run::{run_packer, spawn_error, Ending, PackerRun};
pub use team::TeamPlaybook;

/// Receives Packer's output, one human-readable line at a time, as it is produced
/// (Packer's own lines and, prefixed with the source name, Ansible's).
///
/// Called in output order from the task running [`bake`], never concurrently, and never after
/// `bake` returned. A call should be quick (append to a buffer, send on a channel): Packer's
/// output waits while it runs. Lines from Slipway itself start with `==> slipway:`.
pub trait BakeObserver {
    fn line(&mut self, line: &str);
}

impl<F: FnMut(&str)> BakeObserver for F {
    fn line(&mut self, line: &str) {
        self(line)
    }
}

/// What a successful bake produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakeArtifact {
    pub kind: ArtifactKind,
    /// The Docker image id (`sha256:...`), or the AMI id in the request's region.
    pub id: String,
    /// `slipway/hello:v3` for images, `hello-v3` for AMIs.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactKind {
    DockerImage,
    /// Every region the AMI exists in, with its id there.
    Ami {
        by_region: BTreeMap<String, String>,
    },
}

/// Bakes `request`, with `docker` as the client of the dockerd a docker-source bake runs on
/// (Packer itself reaches it through the `DOCKER_HOST` of `request.env`, or the local socket).
/// Stops Packer's whole process group when `request.timeout` passes or `cancel` fires, then
/// cleans up; dropping the future instead kills the group without cleanup.
#[tracing::instrument(skip_all, fields(app = %request.app, release = request.release, source = request.source.template_name(), bake = %request.bake_id), err)]
pub async fn bake(
    request: &BakeRequest,
    docker: &Docker,
    observer: &mut (dyn BakeObserver + Send),
    cancel: &CancellationToken,
) -> Result<BakeArtifact, BakeError> {
    request.check()?;
    let name = request.artifact_name();
    let previous_image = match &request.source {
        BakeSource::Docker(_) => docker::image_id(docker, &name).await?,
        BakeSource::AmazonEbs(_) => None,
    };
    // Dropped (its directory removed) when the bake ends, whatever the outcome.
    let generated = request
        .team
        .as_ref()
        .map(|team| team.generate(&request.playbook_dir.join("bake.yml"), &request.scratch_dir))
        .transpose()?;
    let mut args = vec![
        "build".to_string(),
        "-machine-readable".to_string(),
        format!("-only={}", request.source.template_name()),
    ];
    let mut variables = request.variables();
    if let Some(files) = &generated {
        for (name, value) in &mut variables {
            if *name == "playbook_file" {
                *value = files.playbook.display().to_string();
            }
        }
        variables.push(("extra_vars_file", files.extra_vars.display().to_string()));
    }
    args.extend(var_arguments(&variables));
    // An AMI bake runs its own copy of the template, holding the AWS settings Packer's
    // variables cannot carry (lists, tags, the source AMI's kind).
    let ami = match &request.source {
        BakeSource::AmazonEbs(ebs) => Some(AmiBake::prepare(request, ebs).await?),
        BakeSource::Docker(_) => None,
    };
    let template = ami
        .as_ref()
        .map_or(request.template.as_path(), AmiBake::template);
    args.push(template.display().to_string());
    let run = run_packer(
        &request.packer,
        &args,
        &request.env,
        request.timeout,
        observer,
        cancel,
    )
    .await;
    let result = match run {
        Ok(run) => artifact_of(request, docker, name.clone(), run).await,
        Err(error) => Err(error),
    };
    if let Some(ami) = ami {
        ami.finish(result.is_err(), observer).await;
    }
    if let (Err(error), BakeSource::Docker(_)) = (&result, &request.source) {
        tracing::warn!(%error, "bake failed, removing what it left");
        let restore = previous_image
            .as_deref()
            .map(|previous| (name.as_str(), previous));
        if let Err(cleanup) =
            docker::remove_leftovers(docker, &request.bake_id, restore, Reap::Everything).await
        {
            tracing::error!(error = %cleanup, bake = %request.bake_id, "a failed bake left docker objects behind; remove them by label");
        }
    }
    if let Ok(artifact) = &result {
        tracing::info!(artifact = %artifact.name, id = %artifact.id, "baked");
    }
    result
}

/// Runs `packer validate -only=<source>` with the request's variables. It reads the template
/// and checks every source's settings and the playbook's presence; it contacts neither Docker
/// nor AWS (no credentials, AMI lookup or region check happen before a build).
#[tracing::instrument(skip_all, fields(source = request.source.template_name()), err)]
pub async fn validate(request: &BakeRequest) -> Result<(), BakeError> {
    request.check()?;
    let mut command = tokio::process::Command::new(&request.packer);
    command
        .arg("validate")
        .arg(format!("-only={}", request.source.template_name()))
        .args(var_arguments(&request.variables()))
        .arg(&request.template)
        .envs(&request.env)
        .env("CHECKPOINT_DISABLE", "1");
    let output = command
        .output()
        .await
        .map_err(|source| spawn_error(&request.packer, source))?;
    if output.status.success() {
        return Ok(());
    }
    Err(BakeError::InvalidTemplate {
        template: request.template.clone(),
        source_name: request.source.template_name(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .trim()
        .to_string(),
    })
}

fn var_arguments(variables: &[(&'static str, String)]) -> Vec<String> {
    variables
        .iter()
        .flat_map(|(name, value)| ["-var".to_string(), format!("{name}={value}")])
        .collect()
}

async fn artifact_of(
    request: &BakeRequest,
    docker: &Docker,
    name: String,
    run: PackerRun,
) -> Result<BakeArtifact, BakeError> {
    match run.ending {
        Ending::TimedOut => {
            return Err(BakeError::TimedOut {
                artifact: name,
                after: request.timeout,
            })
        }
        Ending::Cancelled => return Err(BakeError::Cancelled { artifact: name }),
        Ending::Exited(status) if !status.success() => {
            let reason = if run.errors.is_empty() {
                format!("packer exited with {status}")
            } else {
                run.errors.join("; ")
            };
            return Err(BakeError::BuildFailed {
                artifact: name,
                reason,
            });
        }
        Ending::Exited(_) => {}
    }
    match &request.source {
        // The docker-tag post-processor's artifact is the tag; the image id comes from it.
        BakeSource::Docker(_) => match docker::image_id(docker, &name).await? {
            Some(id) => Ok(BakeArtifact {
                kind: ArtifactKind::DockerImage,
                id,
                name,
            }),
            None => Err(BakeError::NoArtifact { artifact: name }),
        },
        BakeSource::AmazonEbs(ebs) => {
            let by_region = run
                .artifact_ids
                .last()
                .map(|id| parse_ami_ids(id))
                .unwrap_or_default();
            match by_region.get(&ebs.region) {
                Some(ami) => Ok(BakeArtifact {
                    id: ami.clone(),
                    kind: ArtifactKind::Ami { by_region },
                    name,
                }),
                None => Err(BakeError::NoArtifact { artifact: name }),
            }
        }
    }
}

/// `eu-west-1:ami-0abc,us-east-1:ami-0def` (Packer's amazon-ebs artifact id) by region.
fn parse_ami_ids(id: &str) -> BTreeMap<String, String> {
    id.split(',')
        .filter_map(|pair| pair.split_once(':'))
        .map(|(region, ami)| (region.trim().to_string(), ami.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ami_ids_by_region() {
        let ids = parse_ami_ids("eu-west-1:ami-0abc,us-east-1:ami-0def");
        assert_eq!(ids.get("eu-west-1").map(String::as_str), Some("ami-0abc"));
        assert_eq!(ids.get("us-east-1").map(String::as_str), Some("ami-0def"));
        assert!(parse_ami_ids("sha256:0123")
            .get("sha256")
            .is_some_and(|v| v == "0123"));
    }
}
