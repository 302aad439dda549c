//! Blue/green deployments in the server: one [`DeployManager`] per server builds each
//! environment's target, recovers interrupted deployments at start (which starts or adopts
//! each docker environment's load balancer), deploys new releases to each project's first
//! environment by itself (once the image it deploys, the Docker image or the AMI of its
//! region, is baked), retires warm fleets past their retention, starts again a docker load
//! balancer that stopped (with the live routing from the store), and runs the promotions and
//! rollbacks the API asks for.
//!
//! One operation per environment runs at a time in this process (a busy marker says which
//! and since when); across servers sharing a database the deployer's lock decides, held under
//! this server's id, so a deployment whose server stopped or died is taken over by another
//! server once that one is no longer live.

pub mod cli;
pub mod progress;
pub mod schema;
pub mod targets;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_deployer::aws::FleetDescription;
use slipway_deployer::{
    AwsTarget, DeployError, DeployRequest, Deployer, DeploymentState, DockerTarget, FleetRef,
    InstanceHealth, LoadBalancerStatus, Target,
};
use tokio::sync::{mpsc, OwnedMutexGuard};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::config::{Config, Environment, Project};
use crate::docker::DockerClient;
use crate::mirror::{CommitId, Mirrors, Relation};
use crate::outage::{self, Outage};
use crate::store::deployments::{DeployableRelease, ImageWanted, PgDeployments, PgLocks};
use crate::store::{Store, StoreResult};
use progress::{Progress, ProgressObserver};

/// How often the first environments are checked for a new baked release.
const AUTO_DEPLOY_EVERY: Duration = Duration::from_secs(2);
/// How often warm fleets past their retention window are retired.
const RETIRE_EVERY: Duration = Duration::from_secs(5);
/// What a recovering environment is busy with.
const RECOVERING: &str = "recovering after a restart";
/// How long an operation asked for waits for the environment's recovery to end.
const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// How often deployments that servers which stopped or died left running are looked for.
const TAKE_OVER_EVERY: Duration = Duration::from_secs(3);
/// How often docker environments' load balancers are checked (and their access logs rotated).
const BALANCERS_EVERY: Duration = Duration::from_secs(2);
/// A load balancer's access log is rotated past this size (one older file is kept).
const ACCESS_LOG_LIMIT: u64 = 50 * 1024 * 1024;

/// What an operation does to an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Launch the release as a new fleet and switch to it.
    Deploy(DeployableRelease),
    /// Switch back to the release's warm fleet, or deploy it when none is warm.
    Rollback(DeployableRelease),
}

impl Operation {
    fn describe(&self) -> String {
        match self {
            Operation::Deploy(release) => format!("deploying {}", release.version),
            Operation::Rollback(release) => format!("rolling back to {}", release.version),
        }
    }
}

/// What keeps an environment busy in this server, and since when.
#[derive(Debug, Clone, Serialize)]
pub struct Busy {
    pub operation: String,
    pub owner: String,
    pub since: DateTime<Utc>,
}

/// One configured environment and its target.
pub struct EnvironmentHandle {
    pub project: String,
    /// Its place in the project's promotion order; 0 gets new releases.
    pub index: usize,
    pub config: Environment,
    /// The image of a release this environment deploys.
    pub wanted: ImageWanted,
    target: Arc<dyn Target>,
    aws: Option<Arc<AwsTarget>>,
    docker: Option<Arc<DockerTarget>>,
    guard: Arc<tokio::sync::Mutex<()>>,
    busy: Mutex<Option<Busy>>,
    /// A recovery loop runs for the environment (at most one does).
    recovering: std::sync::atomic::AtomicBool,
    /// Operations asked of this server that were refused because the environment was busy
    /// here or its lock was held by another owner (`/metrics`; this server's, since it started).
    refused: std::sync::atomic::AtomicU64,
}

impl EnvironmentHandle {
    /// What runs on the environment in this server now, if anything.
    pub fn busy(&self) -> Option<Busy> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many operations this server refused since it started because the environment was
    /// busy or locked: what would have waited, had they waited for the lock.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_refusal(&self) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// One health check of each instance of the fleet serving the environment.
    pub async fn live_health(
        &self,
        store: &Store,
    ) -> anyhow::Result<Option<(FleetRef, Vec<InstanceHealth>)>> {
        let Some(live) = store.live_fleet(&self.project, &self.config.name).await? else {
            return Ok(None);
        };
        let health = self.target.instance_health(&live).await?;
        Ok(Some((live, health)))
    }

    /// On an aws environment, its groups (each with its instances' target health, launch
    /// template version and AMI) and the launch template's default version, read from AWS.
    pub async fn aws_fleets(&self) -> anyhow::Result<Option<AwsFleets>> {
        let (Some(aws), Some(settings)) = (&self.aws, &self.config.aws) else {
            return Ok(None);
        };
        Ok(Some(AwsFleets {
            launch_template_id: settings.launch_template_id.clone(),
            default_version: aws.default_template_version().await?,
            fleets: aws.describe_fleets().await?,
        }))
    }
}

impl EnvironmentHandle {
    /// On a docker environment, its load balancer: container, state and statistics.
    pub async fn load_balancer(&self) -> anyhow::Result<Option<LoadBalancerStatus>> {
        match &self.docker {
            Some(docker) => Ok(Some(docker.balancer().status().await?)),
            None => Ok(None),
        }
    }
}

/// What an aws environment runs, as AWS reports it.
#[derive(Debug, Clone, Serialize)]
pub struct AwsFleets {
    pub launch_template_id: String,
    /// The launch template's default version (the live release's AMI once a deployment
    /// updated it).
    pub default_version: Option<i64>,
    pub fleets: Vec<FleetDescription>,
}

/// Marks its environment busy until dropped.
struct BusyGuard<'a> {
    environment: &'a EnvironmentHandle,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        *self
            .environment
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The server's deployments; clones share it.
#[derive(Clone)]
pub struct DeployManager {
    inner: Arc<Inner>,
}

struct Inner {
    /// The dockerds environments name besides the server's (whose API version the build
    /// queue negotiates); the load balancers' checks negotiate theirs.
    environment_dockers: Vec<DockerClient>,
    store: Store,
    owner: String,
    environments: Vec<Arc<EnvironmentHandle>>,
    /// For the auto-deploy's ancestry questions (read only: builds fetch the commits).
    projects: Vec<Project>,
    mirrors: Mirrors,
    tasks: Mutex<JoinSet<()>>,
}

impl DeployManager {
    /// Builds every environment's target (docker targets share the server's client, so
    /// dockerd may come later), then, in the background, recovers each environment and starts
    /// the auto-deploy, retirement and load balancer loops.
    pub async fn start(
        config: &Config,
        store: Store,
        server_id: Uuid,
        docker: &DockerClient,
    ) -> anyhow::Result<DeployManager> {
        let tasks = JoinSet::new();
        // One client per dockerd: the server's, and each other one an environment names.
        let mut clients = std::collections::HashMap::new();
        clients.insert(config.docker_host.clone(), docker.clone());
        let mut environments = Vec::new();
        for project in &config.projects {
            for (index, environment) in project.environments.iter().enumerate() {
                let client = match clients.get(&environment.docker_host) {
                    Some(client) => client.clone(),
                    None => {
                        let client = DockerClient::new(&environment.docker_host)?;
                        // The API version is negotiated now if dockerd answers, else by
                        // the load balancers' checks once it does.
                        let _ = client.check().await;
                        clients.insert(environment.docker_host.clone(), client.clone());
                        client
                    }
                };
                let built = targets::build(
                    project,
                    environment,
                    server_id,
                    &client.client(),
                    &config.data_dir,
                    &config.load_balancer_image,
                )
                .await?;
                environments.push(Arc::new(EnvironmentHandle {
                    project: project.name.clone(),
                    index,
                    config: environment.clone(),
                    wanted: targets::image_wanted(environment),
                    target: built.target,
                    aws: built.aws,
                    docker: built.docker,
                    guard: Arc::default(),
                    busy: Mutex::default(),
                    recovering: Default::default(),
                    refused: Default::default(),
                }));
            }
        }
        clients.remove(&config.docker_host);
        let manager = DeployManager {
            inner: Arc::new(Inner {
                environment_dockers: clients.into_values().collect(),
                owner: store.owner().to_string(),
                store,
                environments,
                projects: config.projects.clone(),
                mirrors: Mirrors::in_data_dir(&config.data_dir)?,
                tasks: Mutex::new(tasks),
            }),
        };
        for environment in &manager.inner.environments {
            manager.recover(environment.clone());
        }
        manager.spawn(auto_deploy(manager.clone()));
        manager.spawn(retire_expired(manager.clone()));
        manager.spawn(watch_balancers(manager.clone()));
        manager.spawn(take_over_orphans(manager.clone()));
        Ok(manager)
    }

    /// The project's environments in promotion order.
    pub fn environments(&self, project: &str) -> Vec<Arc<EnvironmentHandle>> {
        self.inner
            .environments
            .iter()
            .filter(|e| e.project == project)
            .cloned()
            .collect()
    }

    /// Starts `operation` on `environment` in the background and returns its events, the
    /// last of which is `Finished`, `Errored` or `Refused`. An environment whose recovery runs
    /// (a server that just started adopts its load balancer and fleets) is waited for, at most
    /// [`RECOVERY_WAIT`]; otherwise a busy environment fails at once with what keeps it busy.
    pub async fn start_operation(
        &self,
        environment: &Arc<EnvironmentHandle>,
        operation: Operation,
    ) -> Result<mpsc::UnboundedReceiver<Progress>, Busy> {
        let deadline = tokio::time::Instant::now() + RECOVERY_WAIT;
        let guard = loop {
            match self.occupy(environment, &operation.describe()) {
                Ok(guard) => break guard,
                Err(busy)
                    if busy.operation == RECOVERING && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(busy) => {
                    environment.count_refusal();
                    return Err(busy);
                }
            }
        };
        let (follower, events) = mpsc::unbounded_channel();
        let (sender, recorded) = mpsc::unbounded_channel();
        self.spawn(progress::record(
            self.inner.store.clone(),
            recorded,
            follower,
        ));
        let deployer = self
            .deployer(environment)
            .with_observer(Arc::new(ProgressObserver::new(sender.clone())));
        let environment = environment.clone();
        self.spawn(async move {
            let _busy = BusyGuard {
                environment: &environment,
                _guard: guard,
            };
            let last = match run(&deployer, &environment.config, &operation).await {
                Ok(deployment) => Progress::Finished {
                    deployment: Box::new(deployment),
                },
                Err(DeployError::Locked {
                    owner,
                    acquired_at,
                    heartbeat_at,
                    ..
                }) => {
                    environment.count_refusal();
                    let holder = slipway_deployer::LockHolder {
                        owner,
                        acquired_at,
                        heartbeat_at,
                    };
                    Progress::Refused {
                        error: format!(
                            "environment {} is locked by {} since {}",
                            environment.config.name, holder.owner, holder.acquired_at
                        ),
                        holder,
                    }
                }
                Err(error) => {
                    tracing::warn!(project = %environment.project, environment = %environment.config.name, %error, "deployment operation failed");
                    Progress::errored(&environment.config.name, &error)
                }
            };
            let _ = sender.send(last);
        });
        Ok(events)
    }

    /// Stops the loops and the running operations; load balancers and fleets serve on. A
    /// deployment cut short is resumed or rolled back by the next start's recovery.
    pub fn shutdown(&self) {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }

    fn deployer(&self, environment: &EnvironmentHandle) -> Deployer {
        let store = self.inner.store.clone();
        let deployer = Deployer::new(
            environment.config.name.clone(),
            self.inner.owner.clone(),
            environment.target.clone(),
            Arc::new(PgDeployments {
                store: store.clone(),
                project: environment.project.clone(),
            }),
            Arc::new(PgLocks {
                store,
                project: environment.project.clone(),
            }),
            targets::policy(&environment.config),
        );
        match environment.config.database_url() {
            Some(url) => deployer.with_migrator(Arc::new(schema::EnvironmentMigrator {
                store: self.inner.store.clone(),
                project: environment.project.clone(),
                environment: environment.config.name.clone(),
                database_url: url.clone(),
            })),
            None => deployer,
        }
    }

    /// Marks the environment busy with `operation`, or says what keeps it busy.
    fn occupy(
        &self,
        environment: &EnvironmentHandle,
        operation: &str,
    ) -> Result<OwnedMutexGuard<()>, Busy> {
        let mut busy = environment.busy.lock().unwrap_or_else(|p| p.into_inner());
        match environment.guard.clone().try_lock_owned() {
            Ok(guard) => {
                *busy = Some(Busy {
                    operation: operation.to_owned(),
                    owner: self.inner.owner.clone(),
                    since: Utc::now(),
                });
                Ok(guard)
            }
            Err(_) => Err(busy.clone().unwrap_or_else(|| Busy {
                operation: "another operation".to_owned(),
                owner: self.inner.owner.clone(),
                since: Utc::now(),
            })),
        }
    }

    /// Recovers the environment in the background; it stays busy while a recovery runs.
    /// dockerd, AWS or the store may be down at start: a failed recovery is tried again with
    /// backoff, leaving the environment free in between (an operation run meanwhile finishes
    /// earlier deployments itself).
    fn recover(&self, environment: Arc<EnvironmentHandle>) {
        use std::sync::atomic::Ordering;
        const BUSY_WITH: &str = RECOVERING;
        if environment.recovering.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(first) = self.occupy(&environment, BUSY_WITH) else {
            environment.recovering.store(false, Ordering::SeqCst);
            return;
        };
        let (sender, recorded) = mpsc::unbounded_channel();
        let (follower, _) = mpsc::unbounded_channel();
        self.spawn(progress::record(
            self.inner.store.clone(),
            recorded,
            follower,
        ));
        let deployer = self
            .deployer(&environment)
            .with_observer(Arc::new(ProgressObserver::new(sender)));
        let manager = self.clone();
        self.spawn(async move {
            let project = environment.project.clone();
            let name = environment.config.name.clone();
            let mut outage = Outage::new(
                "a deployment target or the store",
                "recovery of interrupted deployments waits",
            );
            let mut guard = Some(first);
            loop {
                let claimed = guard.take().map_or_else(
                    || manager.occupy(&environment, BUSY_WITH).ok(),
                    Some,
                );
                // Busy with an operation of its own: look again later.
                let wait = match claimed {
                    None => outage::MAX_RETRY,
                    Some(claimed) => {
                        let _busy = BusyGuard {
                            environment: &environment,
                            _guard: claimed,
                        };
                        match deployer.recover().await {
                            Ok(recovered) => {
                                outage.recovered();
                                if !recovered.resumed.is_empty() || !recovered.leaked.is_empty() {
                                    tracing::info!(%project, environment = %name, resumed = recovered.resumed.len(), leaked = recovered.leaked.len(), "recovered deployments");
                                }
                                break;
                            }
                            // Another server holds the environment: it finishes what it
                            // runs, and an operation after its lock expires finishes the rest.
                            Err(error @ slipway_deployer::DeployError::Locked { .. }) => {
                                tracing::info!(%project, environment = %name, %error, "recovery left to the lock's holder");
                                break;
                            }
                            Err(error) => {
                                outage.failed(&format!("recovering {project}/{name}: {error}"))
                            }
                        }
                    }
                };
                tokio::time::sleep(wait).await;
            }
            environment.recovering.store(false, Ordering::SeqCst);
            // Dropping the deployer and its observer ends the recorder.
        });
    }

    /// Whether a deployment keeps a warm fleet in the environment past its window.
    async fn retirement_due(&self, environment: &EnvironmentHandle) -> StoreResult<bool> {
        let now = Utc::now();
        let unfinished = self
            .inner
            .store
            .unfinished_deployments(&environment.project, &environment.config.name)
            .await?;
        Ok(unfinished.iter().any(|deployment| {
            deployment.state == DeploymentState::RetainingBlue
                && deployment.retain_until.is_none_or(|until| until <= now)
        }))
    }

    /// Why `release` must not replace the environment's live release: its commit is an
    /// ancestor of the live release's commit (defence in depth behind numbering releases in
    /// commit order). `None` when nothing is live, the commits are the same, or the histories
    /// are unrelated.
    async fn older_than_live(
        &self,
        environment: &EnvironmentHandle,
        release: &DeployableRelease,
    ) -> anyhow::Result<Option<String>> {
        let store = &self.inner.store;
        let project = &environment.project;
        let Some(live) = store.live_fleet(project, &environment.config.name).await? else {
            return Ok(None);
        };
        let number = |version: &str| version.strip_prefix('v').and_then(|n| n.parse().ok());
        let (Some(live_number), Some(config)) = (
            number(&live.release),
            self.inner.projects.iter().find(|p| &p.name == project),
        ) else {
            return Ok(None);
        };
        let (Some(live_release), Some(candidate)) = (
            store.release(project, live_number).await?,
            store.release(project, release.number).await?,
        ) else {
            return Ok(None);
        };
        // Releases recorded without a full commit id have no history to compare.
        let (Ok(live_commit), Ok(commit)) = (
            CommitId::parse(&live_release.commit),
            CommitId::parse(&candidate.commit),
        ) else {
            return Ok(None);
        };
        if live_commit == commit {
            return Ok(None);
        }
        let mirror = self.inner.mirrors.mirror(config);
        // The releases' commits reached the mirror when they were built; a mirror made again
        // since (a restore, another server's data directory) fetches them now.
        for commit in [&commit, &live_commit] {
            mirror
                .fetch_commit(commit)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        let older = mirror
            .relation(&commit, &live_commit)
            .await
            .map_err(anyhow::Error::msg)?
            == Relation::Ancestor;
        Ok(older.then(|| {
            format!(
                "commit {} of {} is an ancestor of commit {} of {}, live in {}",
                &commit.as_str()[..12],
                release.version,
                &live_commit.as_str()[..12],
                live.release,
                environment.config.name
            )
        }))
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}

async fn run(
    deployer: &Deployer,
    environment: &Environment,
    operation: &Operation,
) -> Result<slipway_deployer::Deployment, DeployError> {
    let request = |release: &DeployableRelease| DeployRequest {
        release: release.version.clone(),
        image: release.image.clone(),
        instances: environment.instances,
    };
    match operation {
        Operation::Deploy(release) => deployer.deploy(&request(release)).await,
        Operation::Rollback(release) => deployer.rollback(&request(release)).await,
    }
}

/// Deploys each project's newest release baked into the image its first environment deploys
/// to that environment, once: a release
/// with any deployment recorded there (failed ones included) is not tried again. A release
/// whose commit is an ancestor of the live release's commit is not deployed over it; the
/// refusal is recorded (and shown with the environment), so it is not tried again either.
async fn auto_deploy(manager: DeployManager) {
    let mut store_outage = Outage::new("the state store", "new releases wait for deployment");
    let mut wait = AUTO_DEPLOY_EVERY;
    loop {
        tokio::time::sleep(wait).await;
        wait = AUTO_DEPLOY_EVERY;
        let firsts = manager.inner.environments.iter().filter(|e| e.index == 0);
        for environment in firsts {
            if environment.busy().is_some() {
                continue;
            }
            let store = &manager.inner.store;
            match store
                .undeployed_release(
                    &environment.project,
                    &environment.config.name,
                    &environment.wanted,
                )
                .await
            {
                Ok(Some(release)) => {
                    store_outage.recovered();
                    match manager.older_than_live(environment, &release).await {
                        Ok(None) => {}
                        Ok(Some(reason)) => {
                            tracing::warn!(project = %environment.project, environment = %environment.config.name, release = %release.version, %reason, "not deploying a release older than the live one");
                            if let Err(error) = store
                                .record_auto_deploy_skip(
                                    &environment.project,
                                    &environment.config.name,
                                    &release.version,
                                    &reason,
                                )
                                .await
                            {
                                wait = wait.max(store_outage.failed(&error));
                                break;
                            }
                            continue;
                        }
                        // Asked again next round; nothing is deployed meanwhile.
                        Err(error) => {
                            tracing::warn!(project = %environment.project, environment = %environment.config.name, release = %release.version, %error, "cannot compare the release with the live one");
                            continue;
                        }
                    }
                    tracing::info!(project = %environment.project, environment = %environment.config.name, release = %release.version, "deploying a new release");
                    // Busy meanwhile: the next round tries again.
                    let _ = manager
                        .start_operation(environment, Operation::Deploy(release))
                        .await;
                }
                Ok(None) => {
                    store_outage.recovered();
                }
                Err(error) => {
                    wait = wait.max(store_outage.failed(&error));
                    break;
                }
            }
        }
    }
}

/// Retires warm fleets whose retention window has ended.
async fn retire_expired(manager: DeployManager) {
    let mut store_outage = Outage::new("the state store", "warm fleets wait for retirement");
    let mut wait = RETIRE_EVERY;
    loop {
        tokio::time::sleep(wait).await;
        wait = RETIRE_EVERY;
        for environment in &manager.inner.environments {
            // Only an expired window takes the environment, so promotions are not refused
            // for the sake of a check that finds nothing to do.
            match manager.retirement_due(environment).await {
                Ok(true) => {
                    store_outage.recovered();
                }
                Ok(false) => {
                    store_outage.recovered();
                    continue;
                }
                Err(error) => {
                    wait = wait.max(store_outage.failed(&error));
                    break;
                }
            }
            let Ok(guard) = manager.occupy(environment, "retiring a warm fleet") else {
                continue;
            };
            let _busy = BusyGuard {
                environment,
                _guard: guard,
            };
            if let Err(error) = manager
                .deployer(environment)
                .retire_expired(Utc::now())
                .await
            {
                tracing::warn!(project = %environment.project, environment = %environment.config.name, %error, "retiring warm fleets failed");
            }
        }
    }
}

/// Finishes or rolls back, through the environment's recovery, each deployment a server that
/// stopped or died left running (no live server holds its environment's lock), whichever
/// server of the installation ran it.
async fn take_over_orphans(manager: DeployManager) {
    let mut store_outage = Outage::new(
        "the state store",
        "deployments of stopped servers wait to be taken over",
    );
    loop {
        tokio::time::sleep(TAKE_OVER_EVERY).await;
        for project in &manager.inner.projects {
            let orphaned = match manager
                .inner
                .store
                .orphaned_deployments(&project.name)
                .await
            {
                Ok(orphaned) => {
                    store_outage.recovered();
                    orphaned
                }
                Err(error) => {
                    store_outage.failed(&error);
                    break;
                }
            };
            for name in orphaned {
                let handle = manager
                    .inner
                    .environments
                    .iter()
                    .find(|e| e.project == project.name && e.config.name == name);
                if let Some(environment) = handle.filter(|e| e.busy().is_none()) {
                    tracing::warn!(project = %project.name, environment = %name, "taking over a deployment whose server stopped");
                    manager.recover(environment.clone());
                }
            }
        }
    }
}

/// Rotates each docker environment's access log past [`ACCESS_LOG_LIMIT`], and starts again
/// each docker environment's load balancer that stopped or went missing (killed,
/// removed, or its dockerd restarted without live-restore), with the routing the store
/// records, through the environment's recovery. An environment busy with an operation is left
/// to it: the operation's own steps start the load balancer.
async fn watch_balancers(manager: DeployManager) {
    loop {
        tokio::time::sleep(BALANCERS_EVERY).await;
        for client in &manager.inner.environment_dockers {
            let _ = client.check().await;
        }
        for environment in &manager.inner.environments {
            let Some(docker) = &environment.docker else {
                continue;
            };
            if environment.busy().is_some() {
                continue;
            }
            if let Err(error) = docker.balancer().rotate_access_log(ACCESS_LOG_LIMIT).await {
                tracing::warn!(project = %environment.project, environment = %environment.config.name, %error, "rotating the load balancer's access log failed");
            }
            // dockerd unreachable: the recovery would wait on it as well.
            if let Ok(false) = docker.balancer().serving().await {
                tracing::warn!(project = %environment.project, environment = %environment.config.name, container = %docker.balancer().settings().container, "the load balancer does not serve; starting it with the live routing");
                manager.recover(environment.clone());
            }
        }
    }
}
