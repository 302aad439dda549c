//! Progress of one deployment operation: the deployer's [`Observer`] calls become
//! [`Progress`] events, which a recorder task persists as deployment steps (with timings)
//! and forwards, in order, to whoever follows the operation (the API's event stream).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_deployer::{
    DeployError, Deployment, DeploymentState, HealthState, InstanceHealth, LockHolder, Observer,
    StoreError, TargetError,
};
use tokio::sync::mpsc;

use crate::store::Store;

/// One event of an operation, as the API streams it (`event` names the variant).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    StepStarted {
        deployment: String,
        release: String,
        step: String,
        at: DateTime<Utc>,
    },
    StepFinished {
        deployment: String,
        release: String,
        step: String,
        at: DateTime<Utc>,
        elapsed_ms: u64,
        error: Option<String>,
    },
    /// One round of health checks of the new fleet.
    Health {
        deployment: String,
        healthy: usize,
        instances: usize,
    },
    /// Another server holds the environment's lock; nothing ran.
    Refused { error: String, holder: LockHolder },
    /// The operation ended with this deployment; its state says how.
    Finished { deployment: Box<Deployment> },
    /// The operation stopped without a decision: a conflict in user terms (a release that is
    /// already live, no warm fleet to switch back to), or a platform or store failure, named
    /// by what was being done, whose cause stays in the server log (`internal`).
    Errored {
        error: String,
        #[serde(skip)]
        internal: bool,
    },
}

impl Progress {
    /// The event's name in the stream.
    pub fn name(&self) -> &'static str {
        match self {
            Progress::StepStarted { .. } => "step_started",
            Progress::StepFinished { .. } => "step_finished",
            Progress::Health { .. } => "health",
            Progress::Refused { .. } => "refused",
            Progress::Finished { .. } => "finished",
            Progress::Errored { .. } => "errored",
        }
    }

    /// The event that ends an operation on `environment` with `error`. Platform and store
    /// causes (addresses, driver messages, error chains) are not the client's business.
    pub fn errored(environment: &str, error: &DeployError) -> Progress {
        let internal = |error: String| Progress::Errored {
            error,
            internal: true,
        };
        match error {
            DeployError::Target(TargetError::Platform { action, .. }) => internal(format!(
                "the platform of environment {environment} failed to {action}; the cause is in the server log"
            )),
            DeployError::Store(StoreError { action, .. }) => internal(format!(
                "the state store failed to {action}; the cause is in the server log"
            )),
            DeployError::WrongEnvironment { .. } | DeployError::NoGreenFleet { .. } => {
                internal(format!(
                    "a deployment record of environment {environment} is inconsistent; see the server log"
                ))
            }
            conflict => Progress::Errored {
                error: conflict.to_string(),
                internal: false,
            },
        }
    }

    /// The deployment the event is about, once there is one.
    pub fn deployment_id(&self) -> Option<&str> {
        match self {
            Progress::StepStarted { deployment, .. }
            | Progress::StepFinished { deployment, .. }
            | Progress::Health { deployment, .. } => Some(deployment),
            Progress::Finished { deployment } => Some(&deployment.id),
            Progress::Refused { .. } | Progress::Errored { .. } => None,
        }
    }

    /// Whether the operation ends with this event.
    pub fn is_last(&self) -> bool {
        matches!(
            self,
            Progress::Refused { .. } | Progress::Finished { .. } | Progress::Errored { .. }
        )
    }
}

/// The [`Observer`] of one operation: sends every call, in order, to its recorder.
pub struct ProgressObserver {
    events: mpsc::UnboundedSender<Progress>,
}

impl ProgressObserver {
    /// An observer and the sender the operation uses for its last event.
    pub fn new(events: mpsc::UnboundedSender<Progress>) -> ProgressObserver {
        ProgressObserver { events }
    }

    fn send(&self, event: Progress) {
        // The recorder outlives the operation; a send fails only during shutdown.
        let _ = self.events.send(event);
    }
}

impl Observer for ProgressObserver {
    fn step_started(&self, deployment: &Deployment, step: DeploymentState) {
        self.send(Progress::StepStarted {
            deployment: deployment.id.clone(),
            release: deployment.release.clone(),
            step: step.name().to_owned(),
            at: Utc::now(),
        });
    }

    fn step_finished(
        &self,
        deployment: &Deployment,
        step: DeploymentState,
        elapsed: Duration,
        error: Option<&str>,
    ) {
        self.send(Progress::StepFinished {
            deployment: deployment.id.clone(),
            release: deployment.release.clone(),
            step: step.name().to_owned(),
            at: Utc::now(),
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            error: error.map(str::to_owned),
        });
    }

    fn health_checked(&self, deployment: &Deployment, health: &[InstanceHealth]) {
        self.send(Progress::Health {
            deployment: deployment.id.clone(),
            healthy: health
                .iter()
                .filter(|h| h.state == HealthState::Healthy)
                .count(),
            instances: health.len(),
        });
    }
}

/// Persists each step event, then forwards every event to `follower` (while it listens),
/// until the operation's last event or until every sender is gone.
pub async fn record(
    store: Store,
    mut events: mpsc::UnboundedReceiver<Progress>,
    follower: mpsc::UnboundedSender<Progress>,
) {
    while let Some(event) = events.recv().await {
        let written = match &event {
            Progress::StepStarted {
                deployment,
                step,
                at,
                ..
            } => store.step_started(deployment, step, *at).await,
            Progress::StepFinished {
                deployment,
                step,
                at,
                elapsed_ms,
                error,
                ..
            } => {
                let elapsed = Duration::from_millis(*elapsed_ms);
                store
                    .step_finished(deployment, step, *at, elapsed, error.as_deref())
                    .await
            }
            _ => Ok(()),
        };
        if let Err(error) = written {
            tracing::warn!(%error, "recording a deployment step failed");
        }
        let last = event.is_last();
        let _ = follower.send(event);
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(event: &Progress) -> (&str, bool) {
        match event {
            Progress::Errored { error, internal } => (error, *internal),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn platform_and_store_causes_stay_out_of_the_message() {
        let platform = DeployError::Target(TargetError::platform(
            "create container hello-prod-v2-1",
            "error trying to connect: No such file or directory (os error 2) at /run/docker.sock",
        ));
        let event = Progress::errored("prod", &platform);
        let (text, internal) = message(&event);
        assert!(internal);
        assert_eq!(
            text,
            "the platform of environment prod failed to create container hello-prod-v2-1; the cause is in the server log"
        );
        let store = DeployError::Store(StoreError {
            action: "save deployment".to_owned(),
            source: "db error: ERROR: relation \"deployments\" does not exist".into(),
        });
        let event = Progress::errored("prod", &store);
        let (text, internal) = message(&event);
        assert!(internal);
        assert!(
            !text.contains("relation") && text.contains("save deployment"),
            "{text}"
        );
    }

    #[test]
    fn conflicts_keep_their_words() {
        let running = DeployError::ReleaseAlreadyRunning {
            environment: "prod".to_owned(),
            release: "v2".to_owned(),
            fleet: "prod-v2".to_owned(),
        };
        let event = Progress::errored("prod", &running);
        assert_eq!(
            message(&event),
            (
                "release v2 already has fleet prod-v2 in environment prod",
                false
            )
        );
    }
}
