//! The autoscaler of build agents (`[autoscale]`): every interval, one server of the
//! installation (under an advisory lock) looks at the queue, the agents and the group of
//! machines they run on, lets [`decide`] say what to change, and makes the changes through a
//! [`Provider`]: an EC2 Auto Scaling group ([`aws`]) or agent processes this server starts
//! ([`local`]).
//!
//! The group grows to `ceil((pending + running) / capacity_per_agent)` agents within
//! `min_agents` and `max_agents`, and its instances are protected from its own scale-in; it
//! shrinks only by idle agents, drained first and, once they stopped, detached with the
//! desired capacity decremented and terminated. A failed call is logged and the next interval
//! decides again from what is then true.

pub mod aws;
mod decide;
#[cfg(test)]
mod fake;
pub mod local;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{AutoscaleConfig, AutoscaleProvider, Config};
use crate::outage::Outage;
use crate::store::autoscale::InstanceAgent;
use crate::store::Store;

pub use decide::{decide, wanted, Action, Agent, AgentState, Removal, Rules, Snapshot};

/// The group as its provider shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// How many instances the group is asked to keep.
    pub desired: u32,
    pub instances: Vec<Instance>,
}

/// A machine of the group, which runs one agent (`slipway agent --instance-id <id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub lifecycle: Lifecycle,
    /// Protected from the group's own scale-in.
    pub protected: bool,
    pub launched_at: DateTime<Utc>,
}

/// Where an instance is in its group's life: only pending and in-service ones are members
/// the autoscaler weighs; the rest are on their way out (or in standby) by other means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    Pending,
    InService,
    Other(String),
}

/// Where agents' machines come from.
///
/// Each interval the autoscaler calls [`Provider::instances`], then [`Provider::gone`] when
/// stopped or lost agents name instances outside the group, then the changes [`decide`]
/// asked for, in its order; calls never overlap. Every call must be safe to repeat after a
/// failure or a crash: a server that died between two calls leaves the next one (on any
/// server) to decide again from what it then sees. [`Provider::shutdown`] is called once,
/// when the server stops.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The group's desired capacity and its instances.
    async fn instances(&self) -> anyhow::Result<Group>;
    /// Of `ids` (instances outside the group), those that no longer exist.
    async fn gone(&self, ids: &[String]) -> anyhow::Result<Vec<String>>;
    /// Sets the group's desired capacity: it launches instances up to it.
    async fn set_desired(&self, desired: u32) -> anyhow::Result<()>;
    /// Protects these instances of the group from the group's own scale-in.
    async fn protect(&self, ids: &[String]) -> anyhow::Result<()>;
    /// Takes an instance out of the group and decrements its desired capacity, so that the
    /// group neither replaces it nor picks another to terminate.
    async fn detach(&self, id: &str) -> anyhow::Result<()>;
    /// Terminates an instance that is out of the group; one already gone is no error.
    async fn terminate(&self, id: &str) -> anyhow::Result<()>;
    /// Stops what the provider runs as this server's children; nothing by default.
    async fn shutdown(&self) {}
}

/// The provider `[autoscale]` names; `server_url` is where local agents dial in, `dir` where
/// their files go.
pub async fn provider(
    config: &AutoscaleConfig,
    server_url: &str,
    dir: &std::path::Path,
) -> Arc<dyn Provider> {
    match &config.provider {
        AutoscaleProvider::Aws {
            group,
            region,
            endpoint_url,
        } => Arc::new(aws::AwsProvider::new(group, region, endpoint_url.as_deref()).await),
        AutoscaleProvider::Local {
            command,
            token_file,
        } => Arc::new(local::LocalProvider::new(local::LocalSettings {
            command: command.clone(),
            token_file: token_file.clone(),
            server_url: server_url.to_owned(),
            capacity: config.capacity_per_agent,
            dir: dir.to_path_buf(),
        })),
    }
}

/// Scales every `interval_seconds` until `stop`, then shuts the provider down.
pub async fn run(
    config: Arc<Config>,
    store: Store,
    provider: Arc<dyn Provider>,
    stop: CancellationToken,
) {
    let Some(settings) = config.autoscale.clone() else {
        return;
    };
    let lease_seconds = config.agent_lease_seconds as i64;
    let mut outage = Outage::new("the agents' group", "the agents stay as they are");
    loop {
        let turn = store
            .in_autoscale_turn(|| tick(&settings, lease_seconds, &store, provider.as_ref()))
            .await;
        match turn {
            Ok(Some(Err(error))) => {
                outage.failed(&format!("{error:#}"));
            }
            Err(error) => {
                outage.failed(&error);
            }
            // Scaled, or another server's turn.
            Ok(Some(Ok(()))) | Ok(None) => {
                outage.recovered();
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(settings.interval) => {}
        }
    }
    provider.shutdown().await;
}

/// One look and the changes it calls for.
async fn tick(
    settings: &AutoscaleConfig,
    lease_seconds: i64,
    store: &Store,
    provider: &dyn Provider,
) -> anyhow::Result<()> {
    let group = provider
        .instances()
        .await
        .context("cannot read the agents' group")?;
    let queue = store.autoscale_queue().await?;
    let agents: Vec<Agent> = store
        .instance_agents(lease_seconds)
        .await?
        .into_iter()
        .map(agent)
        .collect();
    let detached = store.detached_instances().await?;
    let members: BTreeSet<&str> = group.instances.iter().map(|i| i.id.as_str()).collect();
    let strays: BTreeSet<String> = agents
        .iter()
        .filter(|agent| matches!(agent.state, AgentState::Stopped | AgentState::Lost))
        .filter(|agent| !members.contains(agent.instance_id.as_str()))
        .map(|agent| agent.instance_id.clone())
        .collect();
    let gone = if strays.is_empty() {
        Vec::new()
    } else {
        let strays: Vec<String> = strays.into_iter().collect();
        provider
            .gone(&strays)
            .await
            .context("cannot tell which instances are gone")?
    };
    let snapshot = Snapshot {
        now: Utc::now(),
        pending: queue.pending.max(0) as u64,
        running: queue.running.max(0) as u64,
        agents,
        group,
        detached,
        gone,
        rules: Rules {
            min_agents: settings.min_agents,
            max_agents: settings.max_agents,
            capacity_per_agent: settings.capacity_per_agent,
            idle_after: settings.idle_after,
            register_within: settings.register_within,
        },
    };
    let actions = decide(&snapshot);
    apply(&snapshot, actions, lease_seconds, store, provider).await
}

fn agent(row: InstanceAgent) -> Agent {
    let state = if row.stopped {
        AgentState::Stopped
    } else if row.lost {
        AgentState::Lost
    } else if row.draining {
        AgentState::Draining
    } else if row.running > 0 {
        AgentState::Busy
    } else {
        AgentState::Idle
    };
    Agent {
        name: row.name,
        instance_id: row.instance_id,
        state,
        running: row.running.max(0) as u64,
        idle_for: Duration::from_secs_f64(row.idle_seconds.max(0.0)),
        silent_for: Duration::from_secs_f64(row.silent_seconds.max(0.0)),
    }
}

/// Makes the changes in order, each logged with the numbers that decided it. A failed
/// detach skips its instance's termination (a member terminated would be replaced) and the
/// raise of the desired capacity (counted as if the detach had decremented it); the other
/// changes go on. The first error is returned.
async fn apply(
    snapshot: &Snapshot,
    actions: Vec<Action>,
    lease_seconds: i64,
    store: &Store,
    provider: &dyn Provider,
) -> anyhow::Result<()> {
    let (pending, running, desired) = (snapshot.pending, snapshot.running, snapshot.group.desired);
    let wanted = wanted(snapshot);
    let mut failed_detach: BTreeSet<String> = BTreeSet::new();
    let mut first_error = None;
    for action in actions {
        let done: anyhow::Result<()> = match &action {
            Action::SetDesired(_) if !failed_detach.is_empty() => continue,
            Action::SetDesired(n) => {
                tracing::info!(
                    desired = n,
                    was = desired,
                    pending,
                    running,
                    wanted,
                    capacity_per_agent = snapshot.rules.capacity_per_agent,
                    "autoscale: raising the agents' group"
                );
                provider.set_desired(*n).await
            }
            Action::Protect(ids) => {
                tracing::info!(
                    instances = ids.join(","),
                    "autoscale: protecting new instances from the group's scale-in"
                );
                provider.protect(ids).await
            }
            Action::Drain { agent, idle_for } => {
                tracing::info!(%agent, idle_s = idle_for.as_secs(), pending, running, wanted, desired, "autoscale: draining an idle agent");
                store
                    .drain_agent(agent, lease_seconds)
                    .await
                    .map(drop)
                    .map_err(Into::into)
            }
            Action::Detach { instance, why } => {
                tracing::info!(%instance, why = why.describe(), pending, running, wanted, desired, "autoscale: detaching an instance, desired capacity decremented");
                let detached = match store.record_detached(instance).await {
                    Ok(()) => provider.detach(instance).await,
                    Err(error) => Err(error.into()),
                };
                if detached.is_err() {
                    failed_detach.insert(instance.clone());
                }
                detached
            }
            Action::Terminate(instance) if failed_detach.contains(instance) => continue,
            Action::Terminate(instance) => {
                tracing::info!(%instance, "autoscale: terminating a detached instance");
                match provider.terminate(instance).await {
                    Ok(()) => store.terminated(instance).await.map_err(Into::into),
                    Err(error) => Err(error),
                }
            }
            Action::Forget(agent) => {
                match store.forget_agent(agent, lease_seconds).await {
                    Ok(true) => {
                        tracing::info!(%agent, "autoscale: forgot an agent whose instance is gone");
                        Ok(())
                    }
                    // Its builds' leases have yet to expire: next time.
                    Ok(false) => Ok(()),
                    Err(error) => Err(error.into()),
                }
            }
        };
        if let Err(error) = done {
            let error = error.context(format!("autoscale: {action:?}"));
            tracing::debug!(error = format!("{error:#}"), "an autoscaling change failed");
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}
