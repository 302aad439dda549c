//! Shared fixtures: fast policies, a recording observer, deployers over shared stores.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_deployer::{
    DeployPolicy, DeployRequest, Deployer, Deployment, DeploymentState, HealthPolicy,
    MemoryDeploymentStore, MemoryLockStore, Observer, Target,
};

/// Checks every 10 ms, gives up after 300 ms, watches 60 ms, keeps blue an hour.
pub fn fast_policy() -> DeployPolicy {
    DeployPolicy {
        health: HealthPolicy {
            interval: Duration::from_millis(10),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            timeout: Duration::from_millis(300),
        },
        watch: Duration::from_millis(60),
        retention: Duration::from_secs(3600),
        lock_ttl: Duration::from_secs(5),
    }
}

pub fn request(release: &str, image: &str, instances: u32) -> DeployRequest {
    DeployRequest {
        release: release.to_owned(),
        image: image.to_owned(),
        instances,
    }
}

/// The stores a "server" keeps; deployers built over the same ones see the same records.
#[derive(Clone, Default)]
pub struct Stores {
    pub deployments: Arc<MemoryDeploymentStore>,
    pub locks: Arc<MemoryLockStore>,
}

impl Stores {
    pub fn deployer(
        &self,
        environment: &str,
        owner: &str,
        target: Arc<dyn Target>,
        policy: DeployPolicy,
    ) -> Deployer {
        Deployer::new(
            environment,
            owner,
            target,
            self.deployments.clone(),
            self.locks.clone(),
            policy,
        )
    }
}

/// One observed event: `started step` or `finished step`, with its time and error.
pub struct Event {
    pub line: String,
    pub elapsed: Option<Duration>,
    pub error: Option<String>,
}

/// Records every step's start and end.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Event>>,
    pub finished: tokio::sync::Notify,
    pub notify_after: Mutex<Option<DeploymentState>>,
}

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events.iter().map(|event| event.line.clone()).collect()
    }
}

impl Observer for Recorder {
    fn step_started(&self, _: &Deployment, step: DeploymentState) {
        let line = format!("started {step}");
        self.events.lock().unwrap().push(Event {
            line,
            elapsed: None,
            error: None,
        });
    }

    fn step_finished(
        &self,
        _: &Deployment,
        step: DeploymentState,
        elapsed: Duration,
        error: Option<&str>,
    ) {
        self.events.lock().unwrap().push(Event {
            line: format!("finished {step}"),
            elapsed: Some(elapsed),
            error: error.map(str::to_owned),
        });
        if *self.notify_after.lock().unwrap() == Some(step) {
            self.finished.notify_one();
        }
    }
}
