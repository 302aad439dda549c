//! Progress out of the deployer: each step's start and end, with timings.

use std::time::Duration;

use crate::deployment::{Deployment, DeploymentState};
use crate::target::InstanceHealth;

/// Told about each step as it runs; the CLI and the server's log implement it.
///
/// Calls come from the task running the deployment, in order, and should return quickly.
pub trait Observer: Send + Sync {
    /// `step` is about to run; `deployment` is as persisted before it.
    fn step_started(&self, deployment: &Deployment, step: DeploymentState);

    /// `step` ended after `elapsed`; `error` says why it failed, if it did.
    fn step_finished(
        &self,
        deployment: &Deployment,
        step: DeploymentState,
        elapsed: Duration,
        error: Option<&str>,
    );

    /// One round of health checks while waiting for, or watching, a fleet.
    fn health_checked(&self, deployment: &Deployment, health: &[InstanceHealth]) {
        let _ = (deployment, health);
    }
}

/// An [`Observer`] that ignores everything.
pub struct NoopObserver;

impl Observer for NoopObserver {
    fn step_started(&self, _: &Deployment, _: DeploymentState) {}

    fn step_finished(&self, _: &Deployment, _: DeploymentState, _: Duration, _: Option<&str>) {}
}
