//! The state machine's steps: each runs with its state persisted before and its results
//! persisted after, so a resumed deployment repeats at most the one step that was running.

use chrono::Utc;
use tokio::time::Instant;

use super::Deployer;
use crate::deployment::{Deployment, DeploymentKind, DeploymentState};
use crate::error::{DeployError, TargetError};
use crate::health::{check_round, wait_healthy, watch_healthy};
use crate::lock::{chrono_duration, Lease};
use crate::target::{FleetRef, HealthState};

/// Why a step did not lead to its next state.
enum StepError {
    /// The release failed (health, launch, switch): roll back and record why.
    Failed(String),
    /// The deployer could not go on (store, target during a rollback): stop; resume later.
    Fatal(DeployError),
}

impl From<DeployError> for StepError {
    fn from(error: DeployError) -> Self {
        StepError::Fatal(error)
    }
}

impl From<crate::error::StoreError> for StepError {
    fn from(error: crate::error::StoreError) -> Self {
        StepError::Fatal(error.into())
    }
}

impl From<TargetError> for StepError {
    fn from(error: TargetError) -> Self {
        StepError::Fatal(error.into())
    }
}

/// Whether `step` changes what serves the environment (traffic, the launch template, the
/// fleets, the database's schema): it runs only right after the lease is confirmed, so an
/// owner whose lock was taken over never acts on the environment.
fn fenced(step: DeploymentState) -> bool {
    matches!(
        step,
        DeploymentState::Migrating
            | DeploymentState::Switching
            | DeploymentState::UpdatingLaunchTemplate
            | DeploymentState::RetiringBlue
            | DeploymentState::RollingBack
    )
}

/// A target failure of the release itself, before the switch or during it.
fn failed(error: TargetError) -> StepError {
    StepError::Failed(error.to_string())
}

impl Deployer {
    /// Runs steps until the deployment is terminal or rests in `RetainingBlue`.
    pub(super) async fn drive(
        &self,
        deployment: &mut Deployment,
        lease: &Lease,
    ) -> Result<(), DeployError> {
        loop {
            lease.check()?;
            let step = deployment.state;
            if step.is_terminal() {
                return Ok(());
            }
            if step == DeploymentState::RetainingBlue {
                if deployment
                    .retain_until
                    .is_some_and(|until| until > Utc::now())
                {
                    return Ok(());
                }
                self.advance(deployment, DeploymentState::RetiringBlue)
                    .await?;
                continue;
            }
            if fenced(step) {
                lease.confirm().await?;
            }
            self.observer.step_started(deployment, step);
            let started = Instant::now();
            let outcome = self.run_step(deployment, step).await;
            let elapsed = started.elapsed();
            match outcome {
                Ok(next) => {
                    self.observer.step_finished(deployment, step, elapsed, None);
                    self.advance(deployment, next).await?;
                }
                Err(StepError::Failed(reason)) => {
                    tracing::warn!(deployment = %deployment.id, step = %step, %reason, "step failed; rolling back");
                    self.observer
                        .step_finished(deployment, step, elapsed, Some(&reason));
                    deployment.reason = Some(reason);
                    self.advance(deployment, DeploymentState::RollingBack)
                        .await?;
                }
                Err(StepError::Fatal(error)) => {
                    let message = error.to_string();
                    self.observer
                        .step_finished(deployment, step, elapsed, Some(&message));
                    return Err(error);
                }
            }
        }
    }

    /// Persists the move to `next` (with whatever the last step recorded).
    async fn advance(
        &self,
        deployment: &mut Deployment,
        next: DeploymentState,
    ) -> Result<(), DeployError> {
        deployment.state = next;
        deployment.updated_at = Utc::now();
        self.store.save(deployment).await?;
        Ok(())
    }

    async fn run_step(
        &self,
        deployment: &mut Deployment,
        step: DeploymentState,
    ) -> Result<DeploymentState, StepError> {
        let green = deployment
            .green
            .clone()
            .ok_or_else(|| DeployError::NoGreenFleet {
                id: deployment.id.clone(),
            })?;
        match step {
            DeploymentState::Pending => Ok(match deployment.kind {
                DeploymentKind::Deploy if self.migrator.is_some() => DeploymentState::Migrating,
                DeploymentKind::Deploy => DeploymentState::Launching,
                DeploymentKind::SwitchBack => DeploymentState::WaitingHealthy,
            }),
            DeploymentState::Migrating => {
                if let Some(migrator) = &self.migrator {
                    migrator
                        .migrate(&deployment.release)
                        .await
                        .map_err(StepError::Failed)?;
                }
                Ok(DeploymentState::Launching)
            }
            DeploymentState::Launching => {
                let fleet = self
                    .target
                    .launch_fleet(&green, deployment.instances)
                    .await
                    .map_err(failed)?;
                deployment.green_instances = fleet.instances;
                Ok(DeploymentState::WaitingHealthy)
            }
            DeploymentState::WaitingHealthy if deployment.kind == DeploymentKind::SwitchBack => {
                self.warm_and_healthy(deployment, &green).await?;
                Ok(DeploymentState::Switching)
            }
            DeploymentState::WaitingHealthy => {
                let snapshot = deployment.clone();
                let expected = deployment.instances as usize;
                wait_healthy(
                    &*self.target,
                    &green,
                    expected,
                    &self.policy.health,
                    |round| self.observer.health_checked(&snapshot, round),
                )
                .await
                .map_err(|error| StepError::Failed(error.to_string()))?;
                Ok(DeploymentState::Switching)
            }
            DeploymentState::Switching => {
                self.target.switch_traffic(&green).await.map_err(failed)?;
                self.store.set_live(&self.environment, &green).await?;
                let now = Utc::now();
                deployment.switched_at.get_or_insert(now);
                deployment.watch_until = Some(now + chrono_duration(self.policy.watch));
                Ok(DeploymentState::UpdatingLaunchTemplate)
            }
            DeploymentState::UpdatingLaunchTemplate => {
                self.target
                    .update_launch_template(&green.image)
                    .await
                    .map_err(failed)?;
                Ok(DeploymentState::Watching)
            }
            DeploymentState::Watching => self.watch(deployment, &green).await,
            DeploymentState::RetiringBlue => {
                if let Some(blue) = deployment.blue.clone() {
                    self.retire_unless_needed(&blue, &deployment.id).await?;
                }
                Ok(DeploymentState::Succeeded)
            }
            DeploymentState::RollingBack => Ok(self.roll_back(deployment, &green).await?),
            DeploymentState::RetainingBlue
            | DeploymentState::Succeeded
            | DeploymentState::RolledBack
            | DeploymentState::Failed => Ok(step),
        }
    }

    /// A warm fleet's health is known: its load balancer kept checking it. One reading
    /// decides, so a switch back waits for no new round of checks; a fleet that is not
    /// healthy now fails the switch back, with what its instances report.
    async fn warm_and_healthy(
        &self,
        deployment: &Deployment,
        warm: &FleetRef,
    ) -> Result<(), StepError> {
        let round = check_round(&*self.target, warm).await;
        self.observer.health_checked(deployment, &round);
        let healthy = round
            .iter()
            .filter(|h| h.state == HealthState::Healthy)
            .count();
        if healthy >= deployment.instances as usize && healthy == round.len() && healthy > 0 {
            return Ok(());
        }
        let instances: Vec<String> = round
            .iter()
            .map(|h| format!("{} {:?} ({})", h.instance, h.state, h.detail))
            .collect();
        Err(StepError::Failed(format!(
            "the warm fleet {} is not healthy ({healthy}/{} instances): {}",
            warm.id,
            deployment.instances,
            instances.join("; ")
        )))
    }

    /// Watches green until `watch_until`, then keeps blue warm (or retires it at once).
    async fn watch(
        &self,
        deployment: &mut Deployment,
        green: &FleetRef,
    ) -> Result<DeploymentState, StepError> {
        let remaining = deployment
            .watch_until
            .map(|until| (until - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(self.policy.watch);
        let snapshot = deployment.clone();
        watch_healthy(
            &*self.target,
            green,
            remaining,
            &self.policy.health,
            |round| self.observer.health_checked(&snapshot, round),
        )
        .await
        .map_err(StepError::Failed)?;
        if deployment.blue.is_none() {
            return Ok(DeploymentState::Succeeded);
        }
        if self.policy.retention.is_zero() {
            return Ok(DeploymentState::RetiringBlue);
        }
        deployment.retain_until = Some(Utc::now() + chrono_duration(self.policy.retention));
        Ok(DeploymentState::RetainingBlue)
    }

    /// Puts blue back (traffic and launch template) and retires green. Without a blue,
    /// a green that already serves keeps serving: an environment is never left empty.
    async fn roll_back(
        &self,
        deployment: &mut Deployment,
        green: &FleetRef,
    ) -> Result<DeploymentState, DeployError> {
        let live = self.target.current_live().await?;
        let green_serves = live.as_ref().is_some_and(|l| l.same(green));
        match deployment.blue.clone() {
            Some(blue) => {
                if !live.as_ref().is_some_and(|l| l.same(&blue)) {
                    self.target.switch_traffic(&blue).await?;
                }
                self.store.set_live(&self.environment, &blue).await?;
                if deployment.switched_at.is_some() {
                    self.target.update_launch_template(&blue.image).await?;
                }
                self.retire_unless_needed(green, &deployment.id).await?;
            }
            None if green_serves => {
                let reason = deployment.reason.take().unwrap_or_default();
                deployment.reason = Some(format!(
                    "{reason}; no earlier fleet to return to, so {} keeps serving",
                    green.id
                ));
                return Ok(DeploymentState::Failed);
            }
            None => self.retire_unless_needed(green, &deployment.id).await?,
        }
        Ok(match deployment.switched_at {
            Some(_) => DeploymentState::RolledBack,
            None => DeploymentState::Failed,
        })
    }

    /// Retires `fleet` unless it serves or another unfinished deployment made it green.
    async fn retire_unless_needed(&self, fleet: &FleetRef, by: &str) -> Result<(), DeployError> {
        let live = self.target.current_live().await?;
        if live.as_ref().is_some_and(|l| l.same(fleet)) {
            tracing::info!(fleet = %fleet.id, "not retiring the live fleet");
            return Ok(());
        }
        let unfinished = self.store.unfinished(&self.environment).await?;
        let claimed = unfinished
            .iter()
            .any(|d| d.id != by && d.green.as_ref().is_some_and(|g| g.same(fleet)));
        if claimed {
            tracing::info!(fleet = %fleet.id, "not retiring a fleet another deployment switches to");
            return Ok(());
        }
        self.target.retire_fleet(fleet).await?;
        Ok(())
    }
}
