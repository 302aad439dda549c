//! Progress of one deployment operation: the deployer's [`Observer`] calls become
//! [`Progress`] events, which a recorder task persists as deployment steps (with timings)
//! and forwards, in order, to whoever follows the operation (the API's event stream).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_deployer::{
    Deployment, DeploymentState, HealthState, InstanceHealth, LockHolder, Observer,
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
    /// The operation stopped without a decision (a platform or store error, a release that
    /// is already live).
    Errored { error: String },
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
