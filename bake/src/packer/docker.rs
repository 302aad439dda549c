//! dockerd's side of a docker-source bake, through the caller's bollard client: what the
//! target tag pointed at before, removing what a failed or interrupted bake left (found by its
//! labels), and finding a finished image by its bake key.

use std::collections::HashMap;

use bollard::errors::Error as DockerError;
use bollard::models::ImageSummary;
use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, RemoveContainerOptions, RemoveImageOptions,
    TagImageOptions,
};
use bollard::Docker;

use super::error::BakeError;

/// The label Packer's build container carries (`run_command` in the template).
pub const CONTAINER_LABEL: &str = "slipway.bake";
/// The label the committed image carries (`changes` in the template).
pub const IMAGE_LABEL: &str = "slipway.baked-by";
/// The label carrying the committed image's bake key (`changes` in the template). Packer
/// commits only once every provisioner passed, so an image with a key is finished, whether or
/// not Packer went on to tag it.
pub const KEY_LABEL: &str = "slipway.bake-key";
/// The label naming the committed image's project (`changes` in the template).
const PROJECT_LABEL: &str = "slipway.project";

/// The id of the image `reference` names, or `None` when there is no such image.
pub(crate) async fn image_id(
    docker: &Docker,
    reference: &str,
) -> Result<Option<String>, BakeError> {
    match docker.inspect_image(reference).await {
        Ok(image) => Ok(image.id),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(failed("image inspect", e)),
    }
}

/// Which images of a bake [`reap_bake`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// Removes them all: the bake will not run again.
    Everything,
    /// Keeps the finished ones (those with a non-empty [`KEY_LABEL`]): a re-run of the bake
    /// reuses one ([`finished_image`]) instead of baking it again.
    KeepFinished,
    /// Removes the bake's build containers only (before a new attempt of the bake).
    Containers,
}

/// Removes every container and unfinished image a docker-source bake with this id left,
/// whatever stopped it, and its finished images too unless `reap` keeps them: for a server
/// restarting after a crash killed Packer mid-bake. Idempotent.
#[tracing::instrument(skip(docker), err)]
pub async fn reap_bake(docker: &Docker, bake_id: &str, reap: Reap) -> Result<(), BakeError> {
    remove_leftovers(docker, bake_id, None, reap).await
}

/// The id of a finished image of `project` whose bake had the key `bake_key`, if dockerd
/// holds one (tagged or not).
pub async fn finished_image(
    docker: &Docker,
    project: &str,
    bake_key: &str,
) -> Result<Option<String>, BakeError> {
    if bake_key.is_empty() {
        return Ok(None);
    }
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{KEY_LABEL}={bake_key}"),
            format!("{PROJECT_LABEL}={project}"),
        ],
    )]);
    let images = docker
        .list_images(Some(ListImagesOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| failed("list images", e))?;
    Ok(images.into_iter().map(|image| image.id).next())
}

/// Points the tag `reference` (`repo:tag`) at `image_id`.
pub async fn tag_image(docker: &Docker, image_id: &str, reference: &str) -> Result<(), BakeError> {
    let (repo, tag) = split_reference(reference);
    let options = TagImageOptions {
        repo: Some(repo.to_owned()),
        tag: tag.map(str::to_owned),
    };
    docker
        .tag_image(image_id, Some(options))
        .await
        .map_err(|e| failed("tag", e))
}

/// Removes the bake's containers and images (as `reap` says); with `restore` = (target,
/// previous image), first points the target tag back at the image it named before, so a
/// failed rebake keeps the old.
pub(crate) async fn remove_leftovers(
    docker: &Docker,
    bake_id: &str,
    restore: Option<(&str, &str)>,
    reap: Reap,
) -> Result<(), BakeError> {
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(label_filter(CONTAINER_LABEL, bake_id)),
            ..Default::default()
        }))
        .await
        .map_err(|e| failed("list containers", e))?;
    let containers: Vec<String> = containers.into_iter().filter_map(|c| c.id).collect();
    if !containers.is_empty() {
        tracing::info!(bake = %bake_id, count = containers.len(), "removing the bake's containers");
    }
    for container in &containers {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match docker.remove_container(container, Some(options)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(failed("rm", e)),
        }
    }
    if reap == Reap::Containers {
        return Ok(());
    }
    if let Some((target, previous)) = restore {
        if image_id(docker, target).await?.as_deref() != Some(previous) {
            tag_image(docker, previous, target).await?;
        }
    }
    let images = docker
        .list_images(Some(ListImagesOptions {
            all: true,
            filters: Some(label_filter(IMAGE_LABEL, bake_id)),
            ..Default::default()
        }))
        .await
        .map_err(|e| failed("list images", e))?;
    let finished = |image: &ImageSummary| {
        image
            .labels
            .get(KEY_LABEL)
            .is_some_and(|key| !key.is_empty())
    };
    let images: Vec<ImageSummary> = images
        .into_iter()
        .filter(|image| reap == Reap::Everything || !finished(image))
        .collect();
    if !images.is_empty() {
        tracing::info!(bake = %bake_id, count = images.len(), "removing the bake's images");
    }
    for image in images {
        let options = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        match docker.remove_image(&image.id, Some(options), None).await {
            Ok(_)
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(failed("rmi", e)),
        }
    }
    Ok(())
}

fn label_filter(name: &str, value: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{name}={value}")])])
}

/// `repo[:tag]`, where a `:` before the last `/` belongs to a registry's port.
fn split_reference(reference: &str) -> (&str, Option<&str>) {
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    match reference[name_start..].rfind(':') {
        Some(colon) => {
            let at = name_start + colon;
            (&reference[..at], Some(&reference[at + 1..]))
        }
        None => (reference, None),
    }
}

fn failed(action: &'static str, error: DockerError) -> BakeError {
    BakeError::Docker {
        action,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(
            split_reference("slipway/hello-1a2b3c4d:v3"),
            ("slipway/hello-1a2b3c4d", Some("v3"))
        );
        assert_eq!(split_reference("slipway/hello"), ("slipway/hello", None));
        assert_eq!(
            split_reference("127.0.0.1:5000/hello:v1"),
            ("127.0.0.1:5000/hello", Some("v1"))
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/hello"),
            ("127.0.0.1:5000/hello", None)
        );
    }
}
