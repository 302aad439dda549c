//! The blue/green algorithm: the operations the root crate calls for one environment.
//!
//! Retention: a deployment that keeps blue warm returns in state `RetainingBlue` with
//! `retain_until` set. The root crate calls [`Deployer::retire_expired`] periodically (and
//! [`Deployer::recover`] once at start); a later deploy to the environment retires any
//! retained fleet first, so at most one fleet is kept warm.

mod steps;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::deployment::{Deployment, DeploymentKind, DeploymentState};
use crate::error::DeployError;
use crate::health::HealthPolicy;
use crate::lock::{Lease, LockStore};
use crate::observer::{NoopObserver, Observer};
use crate::schema::SchemaMigrator;
use crate::store::DeploymentStore;
use crate::target::{FleetRef, Target};

/// What to deploy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployRequest {
    /// e.g. `v42`.
    pub release: String,
    /// The release's Docker image or AMI id.
    pub image: String,
    pub instances: u32,
}

/// Timings of one environment's deployments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployPolicy {
    pub health: HealthPolicy,
    /// How long green is watched after the switch; a failure then switches back to blue.
    pub watch: Duration,
    /// How long blue is kept warm after the watch; zero retires it at once.
    pub retention: Duration,
    /// A lock whose holder stopped heartbeating for this long may be taken over.
    pub lock_ttl: Duration,
}

impl Default for DeployPolicy {
    fn default() -> Self {
        DeployPolicy {
            health: HealthPolicy::default(),
            watch: Duration::from_secs(30),
            retention: Duration::from_secs(3600),
            lock_ttl: Duration::from_secs(60),
        }
    }
}

/// What [`Deployer::recover`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Deployments that were unfinished, as they are now.
    pub resumed: Vec<Deployment>,
    /// Fleets no deployment accounted for, now retired.
    pub leaked: Vec<FleetRef>,
}

/// Runs deployments of one environment over its target.
pub struct Deployer {
    environment: String,
    owner: String,
    target: Arc<dyn Target>,
    store: Arc<dyn DeploymentStore>,
    locks: Arc<dyn LockStore>,
    observer: Arc<dyn Observer>,
    migrator: Option<Arc<dyn SchemaMigrator>>,
    policy: DeployPolicy,
}

impl Deployer {
    /// A deployer for `environment`; `owner` names this process in the lock (stable across
    /// restarts of one server lets it take its own lock back at once).
    pub fn new(
        environment: impl Into<String>,
        owner: impl Into<String>,
        target: Arc<dyn Target>,
        store: Arc<dyn DeploymentStore>,
        locks: Arc<dyn LockStore>,
        policy: DeployPolicy,
    ) -> Deployer {
        Deployer {
            environment: environment.into(),
            owner: owner.into(),
            target,
            store,
            locks,
            observer: Arc::new(NoopObserver),
            migrator: None,
            policy,
        }
    }

    /// Reports progress to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Deployer {
        self.observer = observer;
        self
    }

    /// Migrates the environment's database with `migrator` before each launch of a new
    /// fleet (the `migrating` step).
    pub fn with_migrator(mut self, migrator: Arc<dyn SchemaMigrator>) -> Deployer {
        self.migrator = Some(migrator);
        self
    }

    /// Deploys a release: launch green, wait healthy, switch, update the launch template,
    /// watch, keep blue warm. Returns the deployment in `RetainingBlue` (blue warm until
    /// `retain_until`), `Succeeded`, `Failed` (green never served and is retired) or
    /// `RolledBack` (green served, failed the watch, blue serves again).
    #[tracing::instrument(skip_all, fields(environment = %self.environment, release = %request.release), err)]
    pub async fn deploy(&self, request: &DeployRequest) -> Result<Deployment, DeployError> {
        let lease = self.lease().await?;
        self.finish_earlier(&lease).await?;
        let green = self.target.fleet_for(&request.release, &request.image);
        if let Some(existing) = self.fleet_of(&green).await? {
            return Err(DeployError::ReleaseAlreadyRunning {
                environment: self.environment.clone(),
                release: request.release.clone(),
                fleet: existing.id,
            });
        }
        let blue = self.live_fleet().await?;
        let mut deployment = self.new_deployment(DeploymentKind::Deploy, green, blue);
        deployment.instances = request.instances;
        self.store.save(&deployment).await?;
        self.run(deployment, lease).await
    }

    /// Makes the warm fleet of `release` live again: a switch, no launch. Fails with
    /// [`DeployError::NoWarmFleet`] when no deployment keeps one.
    #[tracing::instrument(skip_all, fields(environment = %self.environment, release = %release), err)]
    pub async fn switch_back(&self, release: &str) -> Result<Deployment, DeployError> {
        let lease = self.lease().await?;
        let unfinished = self.store.unfinished(&self.environment).await?;
        let warm = unfinished.into_iter().find_map(|d| {
            let blue = d.blue.clone().filter(|_| d.keeps_warm(release))?;
            Some((d, blue))
        });
        let Some((mut keeper, warm)) = warm else {
            return Err(DeployError::NoWarmFleet {
                environment: self.environment.clone(),
                release: release.to_owned(),
            });
        };
        let blue = self.live_fleet().await?;
        let mut deployment = self.new_deployment(DeploymentKind::SwitchBack, warm, blue);
        deployment.instances = keeper.instances;
        // The new record takes over the warm fleet before the old one lets go of it, so a
        // crash in between leaves the fleet accounted for.
        self.store.save(&deployment).await?;
        keeper.state = DeploymentState::RolledBack;
        keeper.reason = Some(format!(
            "switched back to {release} by deployment {}",
            deployment.id
        ));
        keeper.updated_at = Utc::now();
        self.store.save(&keeper).await?;
        self.run(deployment, lease).await
    }

    /// A rollback to `request.release`: a switch back when a healthy warm fleet of it
    /// exists, otherwise a full deploy of its image (a warm fleet that is not healthy is
    /// retired by the failed switch back, whose record says why, and replaced).
    pub async fn rollback(&self, request: &DeployRequest) -> Result<Deployment, DeployError> {
        match self.switch_back(&request.release).await {
            Err(DeployError::NoWarmFleet { .. }) => self.deploy(request).await,
            Ok(failed)
                if failed.state == DeploymentState::Failed && failed.switched_at.is_none() =>
            {
                tracing::warn!(environment = %self.environment, release = %request.release, reason = ?failed.reason, "replacing a warm fleet that is not healthy");
                self.deploy(request).await
            }
            other => other,
        }
    }

    /// Continues a persisted deployment from its state (after a crash or a lost lock).
    pub async fn resume(&self, deployment: &Deployment) -> Result<Deployment, DeployError> {
        if deployment.environment != self.environment {
            return Err(DeployError::WrongEnvironment {
                id: deployment.id.clone(),
                found: deployment.environment.clone(),
                expected: self.environment.clone(),
            });
        }
        let lease = self.lease().await?;
        let current = self
            .store
            .get(&deployment.id)
            .await?
            .unwrap_or_else(|| deployment.clone());
        self.run(current, lease).await
    }

    /// Once at start: rebuilds the target's routing from the recorded live fleet, resumes
    /// every unfinished deployment, and retires fleets that no deployment accounts for.
    #[tracing::instrument(skip_all, fields(environment = %self.environment), err)]
    pub async fn recover(&self) -> Result<Recovered, DeployError> {
        let lease = self.lease().await?;
        let live = self.store.live(&self.environment).await?;
        self.target.adopt(live.as_ref()).await?;
        let mut resumed = Vec::new();
        for mut deployment in self.store.unfinished(&self.environment).await? {
            self.drive(&mut deployment, &lease).await?;
            resumed.push(deployment);
        }
        let leaked = self.retire_leaks().await?;
        lease.release().await?;
        Ok(Recovered { resumed, leaked })
    }

    /// Retires blue fleets whose retention window ended before `now`; returns the
    /// deployments so finished.
    #[tracing::instrument(skip_all, fields(environment = %self.environment), err)]
    pub async fn retire_expired(&self, now: DateTime<Utc>) -> Result<Vec<Deployment>, DeployError> {
        let lease = self.lease().await?;
        let mut finished = Vec::new();
        for mut deployment in self.store.unfinished(&self.environment).await? {
            let expired = deployment.state == DeploymentState::RetainingBlue
                && deployment.retain_until.is_none_or(|until| until <= now);
            if expired {
                // `now` may be the caller's clock ahead of ours; retire as of our clock.
                deployment.retain_until = Some(Utc::now());
                self.drive(&mut deployment, &lease).await?;
                finished.push(deployment);
            }
        }
        lease.release().await?;
        Ok(finished)
    }

    async fn lease(&self) -> Result<Lease, DeployError> {
        Lease::acquire(
            self.locks.clone(),
            &self.environment,
            &self.owner,
            self.policy.lock_ttl,
        )
        .await
    }

    /// Runs `deployment` to a resting state under `lease`, then releases it.
    async fn run(
        &self,
        mut deployment: Deployment,
        lease: Lease,
    ) -> Result<Deployment, DeployError> {
        self.drive(&mut deployment, &lease).await?;
        lease.release().await?;
        Ok(deployment)
    }

    /// Earlier deployments first: resume crashed ones, retire the fleet one keeps warm.
    async fn finish_earlier(&self, lease: &Lease) -> Result<(), DeployError> {
        for mut earlier in self.store.unfinished(&self.environment).await? {
            if earlier.state == DeploymentState::RetainingBlue {
                earlier.retain_until = Some(Utc::now());
            }
            self.drive(&mut earlier, lease).await?;
        }
        Ok(())
    }

    /// The fleet serving now. A target that lost its routing (a docker load balancer removed
    /// without [`Deployer::recover`]) adopts the recorded live fleet first, so that fleet
    /// is neither forgotten as blue nor taken for a leak.
    async fn live_fleet(&self) -> Result<Option<FleetRef>, DeployError> {
        if let Some(live) = self.target.current_live().await? {
            return Ok(Some(live));
        }
        let Some(recorded) = self.store.live(&self.environment).await? else {
            return Ok(None);
        };
        if let Err(error) = self.target.adopt(Some(&recorded)).await {
            tracing::warn!(environment = %self.environment, fleet = %recorded.id, %error, "the recorded live fleet cannot serve");
            return Ok(None);
        }
        Ok(self.target.current_live().await?)
    }

    /// The fleet the target holds with the same id as `fleet`, if any.
    async fn fleet_of(&self, fleet: &FleetRef) -> Result<Option<FleetRef>, DeployError> {
        let fleets = self.target.list_fleets().await?;
        Ok(fleets.into_iter().find(|f| f.same(fleet)))
    }

    fn new_deployment(
        &self,
        kind: DeploymentKind,
        green: FleetRef,
        blue: Option<FleetRef>,
    ) -> Deployment {
        let now = Utc::now();
        Deployment {
            id: uuid::Uuid::new_v4().to_string(),
            environment: self.environment.clone(),
            kind,
            release: green.release.clone(),
            image: green.image.clone(),
            instances: 0,
            state: DeploymentState::Pending,
            green: Some(green),
            green_instances: Vec::new(),
            blue,
            switched_at: None,
            watch_until: None,
            retain_until: None,
            reason: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Retires every fleet that is neither live nor named by an unfinished deployment.
    async fn retire_leaks(&self) -> Result<Vec<FleetRef>, DeployError> {
        let live = self.live_fleet().await?;
        let unfinished = self.store.unfinished(&self.environment).await?;
        let mut leaked = Vec::new();
        for fleet in self.target.list_fleets().await? {
            let accounted = live.as_ref().is_some_and(|l| l.same(&fleet))
                || unfinished
                    .iter()
                    .any(|d| d.fleets().any(|f| f.same(&fleet)));
            if !accounted {
                tracing::warn!(environment = %self.environment, fleet = %fleet.id, "retiring a leaked fleet");
                self.target.retire_fleet(&fleet).await?;
                leaked.push(fleet);
            }
        }
        Ok(leaked)
    }
}
