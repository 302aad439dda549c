//! The docker commands around a docker-source bake: what the target tag pointed at before,
//! and removing what a failed bake left (found by its labels).

use tokio::process::Command;

use super::error::BakeError;

/// The label Packer's build container carries (`run_command` in the template).
pub const CONTAINER_LABEL: &str = "slipway.bake";
/// The label the committed image carries (`changes` in the template).
pub const IMAGE_LABEL: &str = "slipway.baked-by";

/// The id of the image `reference` names, or `None` when there is no such image.
pub(crate) async fn image_id(reference: &str) -> Result<Option<String>, BakeError> {
    let output = docker(
        "image inspect",
        &["image", "inspect", "--format", "{{.Id}}", reference],
    )
    .await?;
    if output.status.success() {
        return Ok(Some(
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        ));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No such image") {
        Ok(None)
    } else {
        Err(BakeError::Docker {
            action: "image inspect",
            stderr: stderr.trim().to_string(),
        })
    }
}

/// Removes every container and image a docker-source bake with this id left, whatever stopped
/// it: for a server restarting after a crash killed Packer mid-bake. Idempotent.
#[tracing::instrument(err)]
pub async fn reap_bake(bake_id: &str) -> Result<(), BakeError> {
    remove_leftovers(bake_id, None).await
}

/// Removes the bake's containers and images; with `restore` = (target, previous image), first
/// points the target tag back at the image it named before, so a failed rebake keeps the old.
pub(crate) async fn remove_leftovers(
    bake_id: &str,
    restore: Option<(&str, &str)>,
) -> Result<(), BakeError> {
    let containers = list(&["ps", "-aq", "--filter", &label(CONTAINER_LABEL, bake_id)]).await?;
    if !containers.is_empty() {
        tracing::info!(bake = %bake_id, count = containers.len(), "removing the bake's containers");
        checked("rm", &[&["rm", "-f"][..], &strs(&containers)].concat()).await?;
    }
    if let Some((target, previous)) = restore {
        if image_id(target).await?.as_deref() != Some(previous) {
            checked("tag", &["tag", previous, target]).await?;
        }
    }
    let images = list(&[
        "images",
        "-q",
        "--no-trunc",
        "--filter",
        &label(IMAGE_LABEL, bake_id),
    ])
    .await?;
    if !images.is_empty() {
        tracing::info!(bake = %bake_id, count = images.len(), "removing the bake's images");
        checked("rmi", &[&["rmi", "-f"][..], &strs(&images)].concat()).await?;
    }
    Ok(())
}

fn label(name: &str, value: &str) -> String {
    format!("label={name}={value}")
}

fn strs(values: &[String]) -> Vec<&str> {
    values.iter().map(String::as_str).collect()
}

async fn list(args: &[&str]) -> Result<Vec<String>, BakeError> {
    let stdout = checked("list", args).await?;
    let mut ids: Vec<String> = stdout.split_whitespace().map(str::to_string).collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

async fn checked(action: &'static str, args: &[&str]) -> Result<String, BakeError> {
    let output = docker(action, args).await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(BakeError::Docker {
            action,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

async fn docker(action: &'static str, args: &[&str]) -> Result<std::process::Output, BakeError> {
    Command::new("docker")
        .args(args)
        .output()
        .await
        .map_err(|source| BakeError::Spawn {
            program: format!("docker ({action})").into(),
            source,
        })
}
