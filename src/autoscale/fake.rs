//! A contract-enforcing Auto Scaling group for the autoscaler's tests, and simulations of
//! agents on it: instances boot and register agents, agents lease and run builds, drain and
//! stop; [`decide`](super::decide) runs every interval and its actions go through the fake.
//!
//! The fake refuses what AWS refuses or what would break the autoscaler's promises: a
//! desired capacity outside the group's bounds, protecting or detaching an instance that is
//! not a member, terminating a member (the group would replace it). Like a real group, a
//! desired capacity lowered below its members terminates unprotected ones of its own choice.
//! The simulation fails when an instance whose agent runs a build is terminated.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    decide, Action, Agent, AgentState, Group, Instance, Lifecycle, Provider, Rules, Snapshot,
};

/// One Auto Scaling group, as AWS would behave for the calls the autoscaler makes.
pub struct FakeGroup {
    state: Mutex<FakeState>,
}

struct FakeState {
    now: DateTime<Utc>,
    min_size: u32,
    max_size: u32,
    desired: u32,
    launched: u32,
    /// Members: protected, launched at.
    members: BTreeMap<String, (bool, DateTime<Utc>)>,
    terminated: BTreeSet<String>,
}

impl FakeGroup {
    pub fn new(now: DateTime<Utc>, min_size: u32, max_size: u32) -> FakeGroup {
        FakeGroup {
            state: Mutex::new(FakeState {
                now,
                min_size,
                max_size,
                desired: min_size,
                launched: 0,
                members: BTreeMap::new(),
                terminated: BTreeSet::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake group lock")
    }

    pub fn advance(&self, by: Duration) {
        let mut state = self.state();
        state.now += chrono::Duration::from_std(by).unwrap();
    }

    pub fn terminated(&self) -> BTreeSet<String> {
        self.state().terminated.clone()
    }

    pub fn launched(&self) -> u32 {
        self.state().launched
    }
}

impl FakeState {
    /// Launches or terminates members until there are `desired`, as a group does.
    fn converge(&mut self) {
        while (self.members.len() as u32) < self.desired {
            self.launched += 1;
            let id = format!("i-{:03}", self.launched);
            self.members.insert(id, (false, self.now));
        }
        while (self.members.len() as u32) > self.desired {
            let Some(victim) = self
                .members
                .iter()
                .find(|(_, (protected, _))| !protected)
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            self.members.remove(&victim);
            self.terminated.insert(victim);
        }
    }
}

#[async_trait]
impl Provider for FakeGroup {
    async fn instances(&self) -> anyhow::Result<Group> {
        let state = self.state();
        Ok(Group {
            desired: state.desired,
            instances: state
                .members
                .iter()
                .map(|(id, (protected, launched_at))| Instance {
                    id: id.clone(),
                    lifecycle: Lifecycle::InService,
                    protected: *protected,
                    launched_at: *launched_at,
                })
                .collect(),
        })
    }

    async fn gone(&self, ids: &[String]) -> anyhow::Result<Vec<String>> {
        let state = self.state();
        Ok(ids
            .iter()
            .filter(|id| !state.members.contains_key(*id))
            .cloned()
            .collect())
    }

    async fn set_desired(&self, desired: u32) -> anyhow::Result<()> {
        let mut state = self.state();
        ensure!(
            (state.min_size..=state.max_size).contains(&desired),
            "desired capacity {desired} is outside the group's {}..={}",
            state.min_size,
            state.max_size
        );
        state.desired = desired;
        state.converge();
        Ok(())
    }

    async fn protect(&self, ids: &[String]) -> anyhow::Result<()> {
        let mut state = self.state();
        for id in ids {
            let Some(member) = state.members.get_mut(id) else {
                bail!("{id} is not part of the group");
            };
            member.0 = true;
        }
        Ok(())
    }

    async fn detach(&self, id: &str) -> anyhow::Result<()> {
        let mut state = self.state();
        ensure!(
            state.members.contains_key(id),
            "{id} is not part of the group"
        );
        ensure!(
            state.desired > state.min_size,
            "detaching {id} would take the group below its minimum size"
        );
        state.members.remove(id);
        state.desired -= 1;
        state.converge();
        Ok(())
    }

    async fn terminate(&self, id: &str) -> anyhow::Result<()> {
        let mut state = self.state();
        ensure!(
            !state.members.contains_key(id),
            "{id} was terminated while in the group: it would be replaced"
        );
        state.terminated.insert(id.to_owned());
        Ok(())
    }
}

/// Agents on the fake group's instances and the builds they run, one interval at a time.
struct World {
    group: FakeGroup,
    rules: Rules,
    now: DateTime<Utc>,
    /// Builds waiting, each the number of intervals it takes.
    queue: VecDeque<u32>,
    agents: BTreeMap<String, SimAgent>,
    /// Instances whose agent never registers.
    broken: BTreeSet<String>,
    finished: u32,
    desired_seen: Vec<u32>,
}

struct SimAgent {
    instance: String,
    draining: bool,
    stopped: bool,
    /// Intervals left of each build it runs.
    builds: Vec<u32>,
    idle_since: DateTime<Utc>,
}

const INTERVAL: Duration = Duration::from_secs(15);

impl World {
    fn new(rules: Rules, broken: &[&str]) -> World {
        let now = DateTime::parse_from_rfc3339("2025-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        World {
            group: FakeGroup::new(now, 0, 10),
            rules,
            now,
            queue: VecDeque::new(),
            agents: BTreeMap::new(),
            broken: broken.iter().map(|id| id.to_string()).collect(),
            finished: 0,
            desired_seen: Vec::new(),
        }
    }

    /// One interval: agents register, lease, run and stop; then the autoscaler decides and
    /// acts.
    async fn step(&mut self) {
        self.now += chrono::Duration::from_std(INTERVAL).unwrap();
        self.group.advance(INTERVAL);
        let group = self.group.instances().await.unwrap();
        for instance in &group.instances {
            let booted = self.now - instance.launched_at >= chrono::Duration::seconds(15);
            let registered = self.agents.values().any(|a| a.instance == instance.id);
            if booted && !registered && !self.broken.contains(&instance.id) {
                self.agents.insert(
                    format!("agent-{}", instance.id),
                    SimAgent {
                        instance: instance.id.clone(),
                        draining: false,
                        stopped: false,
                        builds: Vec::new(),
                        idle_since: self.now,
                    },
                );
            }
        }
        for agent in self.agents.values_mut() {
            let before = agent.builds.len();
            for build in &mut agent.builds {
                *build -= 1;
            }
            agent.builds.retain(|left| *left > 0);
            self.finished += (before - agent.builds.len()) as u32;
            if before > 0 && agent.builds.is_empty() {
                agent.idle_since = self.now;
            }
            if agent.draining && agent.builds.is_empty() {
                agent.stopped = true;
            }
            while !agent.draining
                && agent.builds.len() < self.rules.capacity_per_agent as usize
                && !self.queue.is_empty()
            {
                agent.builds.push(self.queue.pop_front().unwrap());
            }
        }

        let group = self.group.instances().await.unwrap();
        self.desired_seen.push(group.desired);
        let snapshot = self.snapshot(group).await;
        for action in decide(&snapshot) {
            self.apply(action).await;
        }
        for id in self.group.terminated() {
            let busy = self
                .agents
                .values()
                .any(|agent| agent.instance == id && !agent.builds.is_empty());
            assert!(!busy, "{id} was terminated while its agent ran a build");
        }
    }

    async fn snapshot(&self, group: Group) -> Snapshot {
        let members: BTreeSet<&str> = group.instances.iter().map(|i| i.id.as_str()).collect();
        let agents: Vec<Agent> = self
            .agents
            .iter()
            .map(|(name, agent)| Agent {
                name: name.clone(),
                instance_id: agent.instance.clone(),
                state: if agent.stopped {
                    AgentState::Stopped
                } else if agent.draining {
                    AgentState::Draining
                } else if !agent.builds.is_empty() {
                    AgentState::Busy
                } else {
                    AgentState::Idle
                },
                running: agent.builds.len() as u64,
                idle_for: (self.now - agent.idle_since).to_std().unwrap_or_default(),
                silent_for: Duration::ZERO,
            })
            .collect();
        let strays: Vec<String> = agents
            .iter()
            .filter(|a| a.state == AgentState::Stopped && !members.contains(a.instance_id.as_str()))
            .map(|a| a.instance_id.clone())
            .collect();
        Snapshot {
            now: self.now,
            pending: self.queue.len() as u64,
            running: self.agents.values().map(|a| a.builds.len() as u64).sum(),
            gone: self.group.gone(&strays).await.unwrap(),
            agents,
            group,
            detached: Vec::new(),
            rules: self.rules,
        }
    }

    async fn apply(&mut self, action: Action) {
        match action {
            Action::SetDesired(n) => self.group.set_desired(n).await.unwrap(),
            Action::Protect(ids) => self.group.protect(&ids).await.unwrap(),
            Action::Detach { instance, .. } => self.group.detach(&instance).await.unwrap(),
            Action::Terminate(instance) => self.group.terminate(&instance).await.unwrap(),
            Action::Drain { agent, .. } => {
                let agent = self.agents.get_mut(&agent).expect("a known agent");
                assert!(agent.builds.is_empty(), "a busy agent was drained");
                agent.draining = true;
            }
            Action::Forget(name) => {
                let agent = self.agents.remove(&name).expect("a known agent");
                assert!(agent.stopped, "{name} was forgotten while running");
            }
        }
    }

    async fn run_until_idle(&mut self, limit: usize) {
        for _ in 0..limit {
            self.step().await;
            let group = self.group.instances().await.unwrap();
            if self.queue.is_empty()
                && self.agents.values().all(|a| a.builds.is_empty())
                && group.desired == self.rules.min_agents
                && group.instances.len() as u32 == self.rules.min_agents
                && self.agents.len() as u32 == self.rules.min_agents
            {
                return;
            }
        }
        panic!(
            "not settled after {limit} intervals: desired {:?}, {} agents",
            self.desired_seen,
            self.agents.len()
        );
    }
}

fn rules() -> Rules {
    Rules {
        min_agents: 0,
        max_agents: 8,
        capacity_per_agent: 2,
        idle_after: Duration::from_secs(60),
        register_within: Duration::from_secs(120),
    }
}

#[tokio::test]
async fn ten_builds_grow_the_group_to_five_and_it_shrinks_to_nothing_once_they_ended() {
    let mut world = World::new(rules(), &[]);
    world.queue.extend([4; 10]);
    world.run_until_idle(100).await;
    assert_eq!(world.finished, 10);
    assert_eq!(
        world.desired_seen.iter().max(),
        Some(&5),
        "{:?}",
        world.desired_seen
    );
    assert_eq!(world.group.launched(), 5, "no instance was replaced");
    assert_eq!(world.group.terminated().len(), 5);
    assert!(world.agents.is_empty(), "every stopped agent was forgotten");
}

#[tokio::test]
async fn a_long_build_keeps_its_agent_while_the_idle_ones_go() {
    let mut world = World::new(rules(), &[]);
    world.queue.extend([40, 2, 2, 2]);
    for _ in 0..15 {
        world.step().await;
    }
    // The long build still runs: its agent is the one left.
    let group = world.group.instances().await.unwrap();
    assert_eq!(group.desired, 1, "{:?}", world.desired_seen);
    let busy: Vec<&SimAgent> = world
        .agents
        .values()
        .filter(|a| !a.builds.is_empty())
        .collect();
    assert_eq!(busy.len(), 1);
    assert_eq!(group.instances[0].id, busy[0].instance);
    world.run_until_idle(100).await;
    assert_eq!(world.finished, 4);
}

#[tokio::test]
async fn an_instance_that_never_registers_is_replaced() {
    let mut world = World::new(rules(), &["i-001"]);
    world.queue.extend([20; 2]);
    for _ in 0..12 {
        world.step().await;
    }
    assert!(world.group.terminated().contains("i-001"));
    assert!(world.group.launched() >= 2, "a replacement was launched");
    world.run_until_idle(100).await;
    assert_eq!(world.finished, 2);
}

#[tokio::test]
async fn min_agents_stay_when_the_queue_is_empty() {
    let mut world = World::new(
        Rules {
            min_agents: 1,
            ..rules()
        },
        &[],
    );
    world.queue.extend([3; 6]);
    world.run_until_idle(100).await;
    assert_eq!(world.desired_seen.iter().max(), Some(&3));
    assert_eq!(world.agents.len(), 1);
}

#[tokio::test]
async fn the_fake_refuses_what_a_group_refuses() {
    let now = Utc::now();
    let group = FakeGroup::new(now, 0, 3);
    assert!(group.set_desired(4).await.is_err(), "above the maximum");
    group.set_desired(2).await.unwrap();
    assert!(group.terminate("i-001").await.is_err(), "a member");
    assert!(group.detach("i-009").await.is_err(), "not a member");
    assert!(group.protect(&["i-009".into()]).await.is_err());
    group.protect(&["i-001".into()]).await.unwrap();
    // Lowered, the group terminates an unprotected member of its own choice.
    group.set_desired(1).await.unwrap();
    assert_eq!(group.terminated(), BTreeSet::from(["i-002".to_owned()]));
    group.detach("i-001").await.unwrap();
    assert!(group.detach("i-001").await.is_err());
    group.terminate("i-001").await.unwrap();
    assert_eq!(group.instances().await.unwrap().desired, 0);
}
