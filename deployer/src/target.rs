//! The target seam: how an environment's fleets are launched, checked, switched and retired.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::TargetError;

/// Names one fleet: the instances of one release in one environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FleetRef {
    /// Unique within the target, chosen by [`Target::fleet_for`]; labels and tags carry it.
    pub id: String,
    /// The release the fleet runs, e.g. `v42`.
    pub release: String,
    /// What its instances start from: a Docker image or an AMI id.
    pub image: String,
}

impl FleetRef {
    /// Whether both name the same fleet.
    pub fn same(&self, other: &FleetRef) -> bool {
        self.id == other.id
    }
}

/// A launched fleet and its instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    pub fleet: FleetRef,
    /// Instance ids: container names on docker, EC2 instance ids on aws.
    pub instances: Vec<String>,
}

/// What one health check of one instance found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Healthy,
    Unhealthy,
    /// Not answering yet (starting, or registering with the load balancer).
    Unknown,
}

/// The health of one instance at one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceHealth {
    pub instance: String,
    pub state: HealthState,
    /// Why, for the deployment's record: an HTTP status, an error, a load balancer reason.
    pub detail: String,
}

/// How an environment is realised (`docker` or `aws`); one value per environment.
///
/// # Lifecycle
/// The [`crate::Deployer`] calls, for one deployment, in this order:
/// 1. [`adopt`](Target::adopt) once after the process starts, with the live fleet the
///    deployment store recorded, before anything else (a crash loses in-memory state).
/// 2. [`fleet_for`](Target::fleet_for) to name the green fleet; the name is persisted
///    before the launch so a crash mid-launch can be cleaned up.
/// 3. [`launch_fleet`](Target::launch_fleet), then [`instance_health`](Target::instance_health)
///    repeatedly until every instance passes or a deadline is reached.
/// 4. [`switch_traffic`](Target::switch_traffic) to the green fleet, only after it was
///    reported healthy; then [`update_launch_template`](Target::update_launch_template).
/// 5. [`instance_health`](Target::instance_health) during the watch period; on failure
///    `switch_traffic` back to blue.
/// 6. [`retire_fleet`](Target::retire_fleet) of whichever fleet lost: green after a failure,
///    blue once its retention window has passed.
///
/// [`current_live`](Target::current_live) and [`list_fleets`](Target::list_fleets) may be
/// called at any point, for decisions and for crash recovery and leak checks.
///
/// # Duties
/// - One deployment per environment runs at a time (the caller holds a lock), so calls for
///   one target never run concurrently with each other except the read-only
///   `instance_health`, `current_live` and `list_fleets`.
/// - Every call is idempotent, because after a crash the caller repeats the step that was
///   running: launching an already launched fleet starts only what is missing, switching
///   to the live fleet changes nothing, retiring a retired (or never launched, or
///   partially launched) fleet succeeds.
/// - `switch_traffic` is atomic: every request after it returns goes to the new fleet;
///   requests in flight on the old fleet finish.
/// - `retire_fleet` drains first (waits for in-flight requests, with a timeout) and refuses
///   the live fleet.
/// - Everything a target creates carries the environment, the release and the fleet id in
///   labels or tags, so `list_fleets` finds it after a crash.
#[async_trait]
pub trait Target: Send + Sync {
    /// The id the fleet of `release` gets in this environment; deterministic, so a
    /// repeated launch after a crash finds what the first one made.
    fn fleet_for(&self, release: &str, image: &str) -> FleetRef;

    /// After a start: `live` is the fleet the store says serves. Routing that survived (an
    /// ALB listener, a docker load balancer that kept running) is kept as it is; routing that
    /// was lost (a load balancer that stopped) is rebuilt towards `live`.
    async fn adopt(&self, live: Option<&FleetRef>) -> Result<(), TargetError>;

    /// Launches `count` instances of the fleet's image; starts only what is missing.
    async fn launch_fleet(&self, fleet: &FleetRef, count: u32) -> Result<Fleet, TargetError>;

    /// One health check of each instance of `fleet`.
    async fn instance_health(&self, fleet: &FleetRef) -> Result<Vec<InstanceHealth>, TargetError>;

    /// Atomically sends all new traffic to `to`.
    async fn switch_traffic(&self, to: &FleetRef) -> Result<(), TargetError>;

    /// The fleet receiving traffic now, if any.
    async fn current_live(&self) -> Result<Option<FleetRef>, TargetError>;

    /// Makes `image` what new instances (scale-out, replacement) start from.
    async fn update_launch_template(&self, image: &str) -> Result<(), TargetError>;

    /// Drains `fleet` and removes all of it; refuses the live fleet.
    async fn retire_fleet(&self, fleet: &FleetRef) -> Result<(), TargetError>;

    /// Every fleet of this environment the target holds, found by its labels or tags.
    async fn list_fleets(&self) -> Result<Vec<FleetRef>, TargetError>;
}
