//! Persistence of deployments and of each environment's live fleet, and an in-memory store.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::deployment::Deployment;
use crate::error::StoreError;
use crate::target::FleetRef;
use async_trait::async_trait;

/// Where deployments are persisted; the root crate implements it over Postgres.
///
/// The deployer saves a deployment before each step runs (its state names the step) and
/// after (with what the step produced), and records the live fleet right after each switch.
/// Each call must be durable when it returns: that is what makes `resume` after a crash safe.
#[async_trait]
pub trait DeploymentStore: Send + Sync {
    /// Inserts or replaces the deployment with this id.
    async fn save(&self, deployment: &Deployment) -> Result<(), StoreError>;

    /// The deployment with this id.
    async fn get(&self, id: &str) -> Result<Option<Deployment>, StoreError>;

    /// The environment's deployments that are not terminal, oldest first.
    async fn unfinished(&self, environment: &str) -> Result<Vec<Deployment>, StoreError>;

    /// Records the fleet serving the environment.
    async fn set_live(&self, environment: &str, live: &FleetRef) -> Result<(), StoreError>;

    /// The fleet serving the environment, if one was ever recorded.
    async fn live(&self, environment: &str) -> Result<Option<FleetRef>, StoreError>;
}

/// A [`DeploymentStore`] in memory, for tests; clones of an `Arc` of it share the records.
#[derive(Default)]
pub struct MemoryDeploymentStore {
    records: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    deployments: Vec<Deployment>,
    live: HashMap<String, FleetRef>,
}

impl MemoryDeploymentStore {
    /// Every deployment saved, in the order first saved.
    pub fn all(&self) -> Vec<Deployment> {
        self.records().deployments.clone()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl DeploymentStore for MemoryDeploymentStore {
    async fn save(&self, deployment: &Deployment) -> Result<(), StoreError> {
        let mut records = self.records();
        match records
            .deployments
            .iter_mut()
            .find(|d| d.id == deployment.id)
        {
            Some(existing) => *existing = deployment.clone(),
            None => records.deployments.push(deployment.clone()),
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        Ok(self
            .records()
            .deployments
            .iter()
            .find(|d| d.id == id)
            .cloned())
    }

    async fn unfinished(&self, environment: &str) -> Result<Vec<Deployment>, StoreError> {
        let records = self.records();
        let mut unfinished: Vec<Deployment> = records
            .deployments
            .iter()
            .filter(|d| d.environment == environment && !d.state.is_terminal())
            .cloned()
            .collect();
        unfinished.sort_by_key(|d| d.created_at);
        Ok(unfinished)
    }

    async fn set_live(&self, environment: &str, live: &FleetRef) -> Result<(), StoreError> {
        self.records()
            .live
            .insert(environment.to_owned(), live.clone());
        Ok(())
    }

    async fn live(&self, environment: &str) -> Result<Option<FleetRef>, StoreError> {
        Ok(self.records().live.get(environment).cloned())
    }
}
