//! Health gates: wait until a fleet is healthy (interval, threshold, deadline), and watch
//! a live fleet for failures.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::DeployError;
use crate::target::{FleetRef, HealthState, InstanceHealth, Target};

/// How fleets are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Time between two rounds of checks.
    pub interval: Duration,
    /// Consecutive passes each instance needs before the fleet counts as healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures of one instance that end a watch period with a rollback.
    pub unhealthy_threshold: u32,
    /// How long a new fleet may take to become healthy: then [`DeployError::HealthTimeout`].
    pub timeout: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            interval: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Checks `fleet` every interval until each of its `expected` instances has passed
/// `healthy_threshold` checks in a row; fails with [`DeployError::HealthTimeout`] at the
/// deadline. `on_check` sees every round.
pub async fn wait_healthy(
    target: &dyn Target,
    fleet: &FleetRef,
    expected: usize,
    policy: &HealthPolicy,
    mut on_check: impl FnMut(&[InstanceHealth]),
) -> Result<(), DeployError> {
    let started = Instant::now();
    let deadline = started + policy.timeout;
    let mut passes: HashMap<String, u32> = HashMap::new();
    loop {
        let round = check_round(target, fleet).await;
        on_check(&round);
        for health in &round {
            let count = passes.entry(health.instance.clone()).or_default();
            *count = if health.state == HealthState::Healthy {
                *count + 1
            } else {
                0
            };
        }
        let ready = round
            .iter()
            .filter(|health| passes.get(&health.instance) >= Some(&policy.healthy_threshold))
            .count();
        if ready >= expected && !round.is_empty() {
            return Ok(());
        }
        if Instant::now() + policy.interval > deadline {
            return Err(DeployError::HealthTimeout {
                fleet: fleet.id.clone(),
                waited: started.elapsed(),
                last: round,
            });
        }
        tokio::time::sleep(policy.interval).await;
    }
}

/// Checks the live `fleet` every interval for `period`; returns why it failed once one
/// instance failed `unhealthy_threshold` checks in a row.
pub(crate) async fn watch_healthy(
    target: &dyn Target,
    fleet: &FleetRef,
    period: Duration,
    policy: &HealthPolicy,
    mut on_check: impl FnMut(&[InstanceHealth]),
) -> Result<(), String> {
    let end = Instant::now() + period;
    let mut failures: HashMap<String, u32> = HashMap::new();
    while Instant::now() < end {
        let round = check_round(target, fleet).await;
        on_check(&round);
        for health in &round {
            let count = failures.entry(health.instance.clone()).or_default();
            *count = if health.state == HealthState::Healthy {
                0
            } else {
                *count + 1
            };
            if *count >= policy.unhealthy_threshold {
                return Err(format!(
                    "fleet {} turned unhealthy while watched: {} {:?} ({})",
                    fleet.id, health.instance, health.state, health.detail
                ));
            }
        }
        tokio::time::sleep(
            policy
                .interval
                .min(end.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    Ok(())
}

/// One round of checks; a failing call counts as one unknown instance, so a target that
/// cannot answer never looks healthy.
pub(crate) async fn check_round(target: &dyn Target, fleet: &FleetRef) -> Vec<InstanceHealth> {
    match target.instance_health(fleet).await {
        Ok(round) => round,
        Err(error) => vec![InstanceHealth {
            instance: fleet.id.clone(),
            state: HealthState::Unknown,
            detail: error.to_string(),
        }],
    }
}
