//! Blue/green deployments: their records and steps, each environment's live fleet and lock,
//! and the releases that can be deployed (with a baked image of the environment's kind).
//! [`PgDeployments`] and [`PgLocks`] are the deployer's [`DeploymentStore`] and
//! [`LockStore`] over these tables.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_deployer::error::StoreError as DeployerStoreError;
use slipway_deployer::{
    Deployment, DeploymentKind, DeploymentStore, FleetRef, LockHolder, LockStore,
};
use tokio_postgres::types::Json;

use super::release_images::{AMI, DOCKER};
use super::{Store, StoreError, StoreResult};

/// A release with a baked image of the kind an environment needs, so it can be deployed
/// there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployableRelease {
    /// `v<number>`.
    pub version: String,
    pub number: i64,
    pub image: String,
}

/// One step a deployment ran, with its timing; `finished_at` is empty while it runs.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub elapsed_ms: Option<i64>,
    pub error: Option<String>,
}

/// A release the auto-deploy did not deploy to an environment, and why.
#[derive(Debug, Clone, Serialize)]
pub struct AutoDeploySkip {
    pub release: String,
    pub reason: String,
    pub skipped_at: DateTime<Utc>,
}

/// How often taking a lock retries when its holder lets go while being read.
const LOCK_ATTEMPTS: usize = 3;

/// The image of a release an environment deploys: its Docker image on a docker
/// environment, its AMI of the environment's region on an aws one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageWanted {
    Docker,
    Ami { region: String },
}

impl ImageWanted {
    /// The `release_images` row's kind and region.
    fn key(&self) -> (&str, &str) {
        match self {
            ImageWanted::Docker => (DOCKER, ""),
            ImageWanted::Ami { region } => (AMI, region),
        }
    }
}

impl std::fmt::Display for ImageWanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageWanted::Docker => f.write_str("Docker image"),
            ImageWanted::Ami { region } => write!(f, "AMI in {region}"),
        }
    }
}

/// The releases of `$1` (project) with a baked image of kind `$2` in region `$3`, as
/// (number, image): the Docker image's name, or the AMI id.
const DEPLOYABLE: &str = "SELECT r.number, i.image FROM releases r
    JOIN release_images i ON i.release_id = r.id AND i.kind = $2 AND i.region = $3
        AND i.status = 'baked' AND i.image IS NOT NULL
    WHERE r.project = $1";

fn deployable_from_row(row: &tokio_postgres::Row) -> DeployableRelease {
    let number: i64 = row.get(0);
    DeployableRelease {
        version: format!("v{number}"),
        number,
        image: row.get(1),
    }
}

fn record_from_row(row: &tokio_postgres::Row) -> StoreResult<Deployment> {
    Ok(row.try_get::<_, Json<Deployment>>(0)?.0)
}

fn kind_name(kind: DeploymentKind) -> &'static str {
    match kind {
        DeploymentKind::Deploy => "deploy",
        DeploymentKind::SwitchBack => "switch_back",
    }
}

impl Store {
    /// The project's releases with a baked image of the kind `wanted`, newest first.
    pub async fn deployable_releases(
        &self,
        project: &str,
        wanted: &ImageWanted,
    ) -> StoreResult<Vec<DeployableRelease>> {
        let (kind, region) = wanted.key();
        let rows = self
            .client()
            .await?
            .query(
                &format!("{DEPLOYABLE} ORDER BY r.number DESC"),
                &[&project, &kind, &region],
            )
            .await?;
        Ok(rows.iter().map(deployable_from_row).collect())
    }

    /// Release `number` of the project, if it has a baked image of the kind `wanted`.
    pub async fn deployable_release(
        &self,
        project: &str,
        number: i64,
        wanted: &ImageWanted,
    ) -> StoreResult<Option<DeployableRelease>> {
        let (kind, region) = wanted.key();
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("{DEPLOYABLE} AND r.number = $4"),
                &[&project, &kind, &region, &number],
            )
            .await?;
        Ok(row.as_ref().map(deployable_from_row))
    }

    /// The project's newest release with a baked image of the kind `wanted`, when no
    /// deployment of it to `environment` was ever recorded: what auto-deploy sends to the
    /// first environment.
    pub async fn undeployed_release(
        &self,
        project: &str,
        environment: &str,
        wanted: &ImageWanted,
    ) -> StoreResult<Option<DeployableRelease>> {
        let (kind, region) = wanted.key();
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "SELECT number, image FROM ({DEPLOYABLE} ORDER BY r.number DESC LIMIT 1) newest
                     WHERE NOT EXISTS (SELECT 1 FROM deployments d WHERE d.project = $1
                         AND d.environment = $4 AND d.release = 'v' || newest.number)
                     AND NOT EXISTS (SELECT 1 FROM auto_deploy_skips s WHERE s.project = $1
                         AND s.environment = $4 AND s.release = 'v' || newest.number)"
                ),
                &[&project, &kind, &region, &environment],
            )
            .await?;
        Ok(row.as_ref().map(deployable_from_row))
    }

    /// Records that the auto-deploy will not deploy `release` to the environment, and why.
    pub async fn record_auto_deploy_skip(
        &self,
        project: &str,
        environment: &str,
        release: &str,
        reason: &str,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO auto_deploy_skips (project, environment, release, reason)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&project, &environment, &release, &reason],
            )
            .await?;
        Ok(())
    }

    /// The releases the auto-deploy refused for the environment, newest first, at most `limit`.
    pub async fn auto_deploy_skips(
        &self,
        project: &str,
        environment: &str,
        limit: i64,
    ) -> StoreResult<Vec<AutoDeploySkip>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT release, reason, skipped_at FROM auto_deploy_skips
                 WHERE project = $1 AND environment = $2 ORDER BY skipped_at DESC LIMIT $3",
                &[&project, &environment, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| AutoDeploySkip {
                release: row.get(0),
                reason: row.get(1),
                skipped_at: row.get(2),
            })
            .collect())
    }

    /// Inserts or replaces a deployment's record.
    pub async fn save_deployment(&self, project: &str, deployment: &Deployment) -> StoreResult<()> {
        let finished_at = deployment
            .state
            .is_terminal()
            .then_some(deployment.updated_at);
        self.client()
            .await?
            .execute(
                "INSERT INTO deployments (id, project, environment, release, kind, state, reason, record,
                     started_at, updated_at, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason,
                     record = EXCLUDED.record, updated_at = EXCLUDED.updated_at,
                     finished_at = EXCLUDED.finished_at",
                &[
                    &deployment.id,
                    &project,
                    &deployment.environment,
                    &deployment.release,
                    &kind_name(deployment.kind),
                    &deployment.state.name(),
                    &deployment.reason,
                    &Json(deployment),
                    &deployment.created_at,
                    &deployment.updated_at,
                    &finished_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// The project's deployment with this id.
    pub async fn deployment(&self, project: &str, id: &str) -> StoreResult<Option<Deployment>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT record FROM deployments WHERE project = $1 AND id = $2",
                &[&project, &id],
            )
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// The environment's last `limit` deployments, newest first.
    pub async fn deployments(
        &self,
        project: &str,
        environment: &str,
        limit: i64,
    ) -> StoreResult<Vec<Deployment>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT record FROM deployments WHERE project = $1 AND environment = $2
                 ORDER BY started_at DESC LIMIT $3",
                &[&project, &environment, &limit],
            )
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// The environment's deployments not yet terminal, oldest first.
    pub async fn unfinished_deployments(
        &self,
        project: &str,
        environment: &str,
    ) -> StoreResult<Vec<Deployment>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT record FROM deployments WHERE project = $1 AND environment = $2
                 AND finished_at IS NULL ORDER BY started_at",
                &[&project, &environment],
            )
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// The environments of `project` with an unfinished deployment that is not resting in its
    /// warm window, while no live server holds their lock: what a stopped or dead server was
    /// running, for another to finish or roll back.
    pub async fn orphaned_deployments(&self, project: &str) -> StoreResult<Vec<String>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT DISTINCT d.environment FROM deployments d
                     WHERE d.project = $1 AND d.finished_at IS NULL AND d.state <> 'retaining_blue'
                     AND NOT EXISTS (SELECT 1 FROM environment_locks l
                         WHERE l.project = d.project AND l.environment = d.environment
                         AND l.heartbeat_at + l.ttl_ms * interval '1 millisecond' >= now()
                         AND {})",
                    lock_owner_live("l.owner")
                ),
                &[&project],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Records that `step` of a deployment started.
    pub async fn step_started(
        &self,
        deployment: &str,
        step: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO deployment_steps (deployment_id, step, started_at) VALUES ($1, $2, $3)",
                &[&deployment, &step, &at],
            )
            .await?;
        Ok(())
    }

    /// Records how the latest run of `step` of a deployment ended.
    pub async fn step_finished(
        &self,
        deployment: &str,
        step: &str,
        at: DateTime<Utc>,
        elapsed: Duration,
        error: Option<&str>,
    ) -> StoreResult<()> {
        let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
        self.client()
            .await?
            .execute(
                "UPDATE deployment_steps SET finished_at = $3, elapsed_ms = $4, error = $5
                 WHERE id = (SELECT max(id) FROM deployment_steps WHERE deployment_id = $1 AND step = $2)",
                &[&deployment, &step, &at, &elapsed_ms, &error],
            )
            .await?;
        Ok(())
    }

    /// The steps a deployment ran, in order.
    pub async fn deployment_steps(&self, deployment: &str) -> StoreResult<Vec<StepRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT step, started_at, finished_at, elapsed_ms, error FROM deployment_steps
                 WHERE deployment_id = $1 ORDER BY id",
                &[&deployment],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| StepRecord {
                step: row.get(0),
                started_at: row.get(1),
                finished_at: row.get(2),
                elapsed_ms: row.get(3),
                error: row.get(4),
            })
            .collect())
    }

    /// The fleet serving the environment, if one was ever recorded.
    pub async fn live_fleet(
        &self,
        project: &str,
        environment: &str,
    ) -> StoreResult<Option<FleetRef>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT fleet FROM environment_live WHERE project = $1 AND environment = $2",
                &[&project, &environment],
            )
            .await?;
        Ok(row
            .map(|row| row.try_get::<_, Json<FleetRef>>(0))
            .transpose()?
            .map(|fleet| fleet.0))
    }

    async fn set_live_fleet(
        &self,
        project: &str,
        environment: &str,
        fleet: &FleetRef,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO environment_live (project, environment, fleet) VALUES ($1, $2, $3)
                 ON CONFLICT (project, environment) DO UPDATE SET fleet = EXCLUDED.fleet, updated_at = now()",
                &[&project, &environment, &Json(fleet)],
            )
            .await?;
        Ok(())
    }

    /// Who holds the environment's lock, expired or not.
    pub async fn lock_holder(
        &self,
        project: &str,
        environment: &str,
    ) -> StoreResult<Option<LockHolder>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT owner, acquired_at, heartbeat_at FROM environment_locks
                 WHERE project = $1 AND environment = $2",
                &[&project, &environment],
            )
            .await?;
        Ok(row.map(|row| LockHolder {
            owner: row.get(0),
            acquired_at: row.get(1),
            heartbeat_at: row.get(2),
        }))
    }

    /// Takes the lock in one statement, on the database's clock: inserted when free, taken
    /// over when its holder's heartbeat is older than the holder's time to live or the holder
    /// is a server that is no longer live, refreshed when `owner` holds it.
    async fn try_lock(
        &self,
        project: &str,
        environment: &str,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<Option<LockHolder>> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "INSERT INTO environment_locks AS l (project, environment, owner, acquired_at, heartbeat_at, ttl_ms)
                     VALUES ($1, $2, $3, now(), now(), $4)
                     ON CONFLICT (project, environment) DO UPDATE SET owner = EXCLUDED.owner,
                         acquired_at = CASE WHEN l.owner = EXCLUDED.owner THEN l.acquired_at ELSE EXCLUDED.acquired_at END,
                         heartbeat_at = EXCLUDED.heartbeat_at, ttl_ms = EXCLUDED.ttl_ms
                     WHERE l.owner = EXCLUDED.owner
                         OR l.heartbeat_at + l.ttl_ms * interval '1 millisecond' < now()
                         OR NOT {}
                     RETURNING owner, acquired_at, heartbeat_at",
                    lock_owner_live("l.owner")
                ),
                &[&project, &environment, &owner, &ttl_ms],
            )
            .await?;
        Ok(row.map(|row| LockHolder {
            owner: row.get(0),
            acquired_at: row.get(1),
            heartbeat_at: row.get(2),
        }))
    }

    /// Renews `owner`'s lock on the database's clock, unless it expired: an owner that missed
    /// its time to live has lost the lease even when no one took it.
    async fn heartbeat_lock(
        &self,
        project: &str,
        environment: &str,
        owner: &str,
    ) -> StoreResult<bool> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE environment_locks SET heartbeat_at = now()
                 WHERE project = $1 AND environment = $2 AND owner = $3
                     AND heartbeat_at + ttl_ms * interval '1 millisecond' >= now()",
                &[&project, &environment, &owner],
            )
            .await?;
        Ok(updated == 1)
    }

    async fn release_lock(&self, project: &str, environment: &str, owner: &str) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "DELETE FROM environment_locks WHERE project = $1 AND environment = $2 AND owner = $3",
                &[&project, &environment, &owner],
            )
            .await?;
        Ok(())
    }
}

/// The deployer's [`DeploymentStore`] for one project's environments.
pub struct PgDeployments {
    pub store: Store,
    pub project: String,
}

/// The deployer's [`LockStore`] for one project's environments.
pub struct PgLocks {
    pub store: Store,
    pub project: String,
}

fn failed(action: &str) -> impl FnOnce(StoreError) -> DeployerStoreError + '_ {
    move |error| DeployerStoreError {
        action: action.to_owned(),
        source: Box::new(error),
    }
}

#[async_trait]
impl DeploymentStore for PgDeployments {
    async fn save(&self, deployment: &Deployment) -> Result<(), DeployerStoreError> {
        self.store
            .save_deployment(&self.project, deployment)
            .await
            .map_err(failed("save deployment"))
    }

    async fn get(&self, id: &str) -> Result<Option<Deployment>, DeployerStoreError> {
        self.store
            .deployment(&self.project, id)
            .await
            .map_err(failed("read deployment"))
    }

    async fn unfinished(&self, environment: &str) -> Result<Vec<Deployment>, DeployerStoreError> {
        self.store
            .unfinished_deployments(&self.project, environment)
            .await
            .map_err(failed("list unfinished deployments"))
    }

    async fn set_live(&self, environment: &str, live: &FleetRef) -> Result<(), DeployerStoreError> {
        self.store
            .set_live_fleet(&self.project, environment, live)
            .await
            .map_err(failed("record the live fleet"))
    }

    async fn live(&self, environment: &str) -> Result<Option<FleetRef>, DeployerStoreError> {
        self.store
            .live_fleet(&self.project, environment)
            .await
            .map_err(failed("read the live fleet"))
    }
}

#[async_trait]
impl LockStore for PgLocks {
    async fn try_acquire(
        &self,
        environment: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Result<LockHolder, LockHolder>, DeployerStoreError> {
        // The holder may release between the refused insert and the read: try again then.
        for _ in 0..LOCK_ATTEMPTS {
            let taken = self
                .store
                .try_lock(&self.project, environment, owner, ttl)
                .await
                .map_err(failed("take the environment lock"))?;
            if let Some(holder) = taken {
                return Ok(Ok(holder));
            }
            let holder = self
                .store
                .lock_holder(&self.project, environment)
                .await
                .map_err(failed("read the environment lock"))?;
            if let Some(holder) = holder {
                return Ok(Err(holder));
            }
        }
        let now = Utc::now();
        Ok(Err(LockHolder {
            owner: format!("others (the lock changed hands {LOCK_ATTEMPTS} times while read)"),
            acquired_at: now,
            heartbeat_at: now,
        }))
    }

    async fn heartbeat(&self, environment: &str, owner: &str) -> Result<bool, DeployerStoreError> {
        self.store
            .heartbeat_lock(&self.project, environment, owner)
            .await
            .map_err(failed("heartbeat the environment lock"))
    }

    async fn release(&self, environment: &str, owner: &str) -> Result<(), DeployerStoreError> {
        self.store
            .release_lock(&self.project, environment, owner)
            .await
            .map_err(failed("release the environment lock"))
    }
}

/// SQL true when the lock owner `owner` (an SQL text expression: a server's id, as the deploy
/// manager names itself in locks) is a live server.
pub(super) fn lock_owner_live(owner: &str) -> String {
    super::servers::owner_live(&format!(
        "(CASE WHEN {owner} ~ '^[0-9a-f-]{{36}}$' THEN {owner}::uuid END)"
    ))
}
