//! The errors at the crate's edge, grouped by what the caller will do about them.

use std::error::Error as StdError;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::target::InstanceHealth;

/// A boxed cause from an adapter (bollard, the AWS SDK, a database driver).
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// A [`crate::Target`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The platform refused or failed: `action` names what was attempted.
    #[error("{action}: {source}")]
    Platform {
        action: String,
        #[source]
        source: Cause,
    },
    /// The target itself cannot do what was asked (no instances, no IP, no idle group).
    #[error("{action}: {reason}")]
    Refused { action: String, reason: String },
    /// Retiring the fleet that serves traffic would leave the environment without one.
    #[error("fleet {fleet} serves traffic and cannot be retired")]
    RetireLive { fleet: String },
}

impl TargetError {
    /// A platform failure while doing `action`.
    pub fn platform(action: impl Into<String>, source: impl Into<Cause>) -> Self {
        TargetError::Platform {
            action: action.into(),
            source: source.into(),
        }
    }

    /// A refusal of `action` for `reason`.
    pub fn refused(action: impl Into<String>, reason: impl Into<String>) -> Self {
        TargetError::Refused {
            action: action.into(),
            reason: reason.into(),
        }
    }
}

/// A [`crate::DeploymentStore`] or [`crate::LockStore`] call failed.
#[derive(Debug, thiserror::Error)]
#[error("deployment store: {action}: {source}")]
pub struct StoreError {
    pub action: String,
    #[source]
    pub source: Cause,
}

/// Why a deployment operation stopped without reaching a decision, or could not start.
///
/// A release that fails its health checks is not an error: the operation returns the
/// [`crate::Deployment`] in state `Failed` or `RolledBack` with the reason recorded.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Another deployment holds the environment.
    #[error(
        "environment {environment} is locked by {owner} since {acquired_at} (last heartbeat {heartbeat_at})"
    )]
    Locked {
        environment: String,
        owner: String,
        acquired_at: DateTime<Utc>,
        heartbeat_at: DateTime<Utc>,
    },
    /// Our lock expired or was taken over; the new holder resumes from the persisted state.
    #[error("lost the lock on environment {environment}")]
    LockLost { environment: String },
    /// The green fleet did not pass its health checks before the deadline.
    #[error("fleet {fleet} not healthy after {waited:?}: {}", describe(last))]
    HealthTimeout {
        fleet: String,
        waited: Duration,
        last: Vec<InstanceHealth>,
    },
    /// A fleet of this release exists already (live or kept warm): switch back to it instead.
    #[error("release {release} already has fleet {fleet} in environment {environment}")]
    ReleaseAlreadyRunning {
        environment: String,
        release: String,
        fleet: String,
    },
    /// No deployment keeps a warm fleet of this release.
    #[error("no warm fleet of release {release} in environment {environment}")]
    NoWarmFleet {
        environment: String,
        release: String,
    },
    /// A deployment of another environment was given to this environment's deployer.
    #[error("deployment {id} is for environment {found}, not {expected}")]
    WrongEnvironment {
        id: String,
        found: String,
        expected: String,
    },
    /// A persisted record without its green fleet: the store returned something the
    /// deployer never wrote.
    #[error("deployment {id} has no green fleet recorded")]
    NoGreenFleet { id: String },
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `instance: state (detail)` for each instance, for the health timeout message.
fn describe(last: &[InstanceHealth]) -> String {
    if last.is_empty() {
        return "no instances reported".to_owned();
    }
    last.iter()
        .map(|health| {
            format!(
                "{}: {:?} ({})",
                health.instance, health.state, health.detail
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
