//! A deployment: one attempt to make a release live in an environment, as a persisted
//! state machine.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::target::FleetRef;

/// Where a deployment is. A persisted state names the step that is about to run or was
/// running: resuming repeats that step, which is why every [`crate::Target`] call is
/// idempotent.
///
/// ```text
/// Pending -> [Migrating ->] Launching -> WaitingHealthy -> Switching -> UpdatingLaunchTemplate -> Watching
///   -> RetainingBlue -> RetiringBlue -> Succeeded          (blue kept warm, then retired)
///   any failure -> RollingBack -> Failed                   (green never served)
///                              -> RolledBack               (green served, blue serves again)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Pending,
    /// The environment's database gets the release's pending migrations (only when the
    /// deployer has a [`crate::SchemaMigrator`]); a failure leaves the old fleet serving.
    Migrating,
    Launching,
    WaitingHealthy,
    Switching,
    UpdatingLaunchTemplate,
    Watching,
    /// Green serves; blue is kept warm until `retain_until` for an instant switch back.
    /// The operation has returned; [`crate::Deployer::retire_expired`] finishes it.
    RetainingBlue,
    RetiringBlue,
    Succeeded,
    RollingBack,
    RolledBack,
    Failed,
}

impl DeploymentState {
    /// No step remains: the record is history.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentState::Succeeded | DeploymentState::RolledBack | DeploymentState::Failed
        )
    }

    /// The snake_case name used in records and progress output.
    pub fn name(self) -> &'static str {
        match self {
            DeploymentState::Pending => "pending",
            DeploymentState::Migrating => "migrating",
            DeploymentState::Launching => "launching",
            DeploymentState::WaitingHealthy => "waiting_healthy",
            DeploymentState::Switching => "switching",
            DeploymentState::UpdatingLaunchTemplate => "updating_launch_template",
            DeploymentState::Watching => "watching",
            DeploymentState::RetainingBlue => "retaining_blue",
            DeploymentState::RetiringBlue => "retiring_blue",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::RollingBack => "rolling_back",
            DeploymentState::RolledBack => "rolled_back",
            DeploymentState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for DeploymentState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// How the green fleet comes to exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// A new fleet is launched from the release image.
    Deploy,
    /// A fleet still kept warm by an earlier deployment becomes live again: no launch.
    SwitchBack,
}

/// One deployment's persisted record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub environment: String,
    pub kind: DeploymentKind,
    /// The release being made live, e.g. `v42`.
    pub release: String,
    /// The image (Docker image or AMI id) of that release.
    pub image: String,
    pub instances: u32,
    pub state: DeploymentState,
    /// The new fleet; named (and persisted) before it is launched.
    pub green: Option<FleetRef>,
    /// Instance ids of the green fleet, once launched.
    pub green_instances: Vec<String>,
    /// The fleet that served when the deployment started, if any.
    pub blue: Option<FleetRef>,
    /// When traffic first went to green; `None` means green never served.
    pub switched_at: Option<DateTime<Utc>>,
    /// End of the watch period after the switch.
    pub watch_until: Option<DateTime<Utc>>,
    /// Blue is kept warm until then, and retired after.
    pub retain_until: Option<DateTime<Utc>>,
    /// Why the deployment failed or was rolled back.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Deployment {
    /// Whether blue is kept warm now, so switching back to it is instant.
    pub fn keeps_warm(&self, release: &str) -> bool {
        self.state == DeploymentState::RetainingBlue
            && self
                .blue
                .as_ref()
                .is_some_and(|blue| blue.release == release)
    }

    /// The fleets this record is responsible for, which recovery must not treat as leaked.
    pub fn fleets(&self) -> impl Iterator<Item = &FleetRef> {
        self.green.iter().chain(self.blue.iter())
    }
}
