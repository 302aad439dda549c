//! Removes what a build created: at the end of every run, and by label for crashed servers.

use crate::engine::{Engine, EngineError};
use crate::plan::Plan;

/// Removes every container of the plan and the `lanes` it started, then its network and
/// volume. Idempotent: removing what was never created succeeds. Returns what could not be
/// removed.
#[tracing::instrument(skip_all, fields(build = %plan.build.build_id))]
pub(super) async fn teardown(plan: &Plan, engine: &dyn Engine, lanes: &[String]) -> Vec<String> {
    let containers = plan
        .steps
        .iter()
        .map(|step| &step.container)
        .chain(plan.services.iter().map(|service| &service.container))
        .chain(lanes);
    // All at once: most steps' containers are gone already, and each call is a round trip.
    let removals = containers.map(|container| async move {
        engine
            .remove_container(container)
            .await
            .map_err(|error| format!("container {container}: {error}"))
    });
    let mut errors: Vec<String> = futures::future::join_all(removals)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    let (network, volume) = tokio::join!(
        engine.remove_network(&plan.network),
        engine.remove_volume(&plan.volume)
    );
    if let Err(error) = network {
        errors.push(format!("network {}: {error}", plan.network));
    }
    if let Err(error) = volume {
        errors.push(format!("volume {}: {error}", plan.volume));
    }
    for error in &errors {
        tracing::error!(%error, "Teardown left an object behind; `reap` will retry.");
    }
    errors
}

/// What [`reap`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
}

/// Removes every container, network and volume carrying `label` (`key=value`), e.g.
/// `slipway.owner=slipway` at server start, to clean up after a crashed server.
#[tracing::instrument(skip(engine), err)]
pub async fn reap(engine: &dyn Engine, label: &str) -> Result<Reaped, EngineError> {
    let leftovers = engine.list_labelled(label).await?;
    for container in &leftovers.containers {
        engine.remove_container(container).await?;
    }
    for network in &leftovers.networks {
        engine.remove_network(network).await?;
    }
    for volume in &leftovers.volumes {
        engine.remove_volume(volume).await?;
    }
    Ok(Reaped {
        containers: leftovers.containers.len(),
        networks: leftovers.networks.len(),
        volumes: leftovers.volumes.len(),
    })
}
