//! What the autoscaler does about one look at the queue, the agents and the group: pure code,
//! no IO, so every rule is tested on made-up snapshots.
//!
//! The group's desired capacity only ever goes up by `SetDesired`; it comes down one instance
//! at a time, by detaching a chosen instance with the capacity decremented, so the group
//! itself never picks what to terminate. An instance is chosen only once its agent has
//! stopped (drained and exited), was lost long ago, or never registered: a busy agent's
//! instance is never detached nor terminated, and only idle agents are drained.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Group, Lifecycle};

/// What the autoscaler was told: the sizes and the times of `[autoscale]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub min_agents: u32,
    pub max_agents: u32,
    pub capacity_per_agent: u32,
    /// An agent idle at least this long may be drained when there are too many.
    pub idle_after: Duration,
    /// An instance without an agent this long after its launch, or whose agent has been
    /// lost this long, is terminated.
    pub register_within: Duration,
}

/// One look at everything the decision depends on.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    /// Builds waiting in the queue.
    pub pending: u64,
    /// Builds agents run now.
    pub running: u64,
    /// The agents that named their instance.
    pub agents: Vec<Agent>,
    pub group: Group,
    /// Instances the autoscaler detached and has yet to terminate.
    pub detached: Vec<String>,
    /// Instances that no longer exist, among those stopped or lost agents name outside the
    /// group.
    pub gone: Vec<String>,
    pub rules: Rules,
}

/// An agent, as the store shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub name: String,
    pub instance_id: String,
    pub state: AgentState,
    /// Builds it runs now.
    pub running: u64,
    /// How long since its last build ended (or it registered, when it ran none).
    pub idle_for: Duration,
    /// How long since its last heartbeat.
    pub silent_for: Duration,
}

/// As the agents API says, first match wins: stopped, lost, draining, busy, idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Idle,
    Busy,
    Draining,
    Stopped,
    /// No heartbeat for longer than a lease.
    Lost,
}

/// One change, in the order [`decide`] gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Raise the group's desired capacity to this.
    SetDesired(u32),
    /// Protect these instances from the group's own scale-in.
    Protect(Vec<String>),
    /// Ask this agent to take no new build and exit once its builds end.
    Drain { agent: String, idle_for: Duration },
    /// Take this instance out of the group, its desired capacity decremented.
    Detach { instance: String, why: Removal },
    /// Terminate this instance (detached first, or it would be replaced).
    Terminate(String),
    /// Delete this agent's row: it stopped or was lost, and its instance is gone.
    Forget(String),
}

/// Why an instance leaves the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Its agent drained and exited.
    AgentStopped,
    /// Its agent stopped heartbeating at least `register_within` ago.
    AgentLost,
    /// No agent registered from it within `register_within` of its launch.
    NeverRegistered,
}

impl Removal {
    pub fn describe(self) -> &'static str {
        match self {
            Removal::AgentStopped => "its agent drained and stopped",
            Removal::AgentLost => "its agent has been lost for longer than register_seconds",
            Removal::NeverRegistered => "no agent registered from it within register_seconds",
        }
    }
}

/// The number of agents the queue asks for: enough for every pending and running build,
/// `capacity_per_agent` each, within `min_agents` and `max_agents`.
pub fn wanted(snapshot: &Snapshot) -> u32 {
    let rules = &snapshot.rules;
    let builds = snapshot.pending + snapshot.running;
    let agents = builds.div_ceil(u64::from(rules.capacity_per_agent.max(1)));
    agents.clamp(u64::from(rules.min_agents), u64::from(rules.max_agents)) as u32
}

/// What one instance of the group is, as its agents show it.
enum Standing {
    /// Leaves the group now.
    Removed(Removal),
    /// Its agent drains: it leaves once the agent stopped.
    Leaving,
    /// Its agents run nothing: these may be drained.
    Idle {
        agents: Vec<String>,
        idle_for: Duration,
    },
    /// Busy, starting, or lost for a short while: left alone.
    Kept,
}

/// The changes to make, in order: terminations of what was detached earlier, removals
/// (detach, terminate, forget the agents), protection of the new instances, the desired
/// capacity raised or idle agents drained, and agents whose instance is gone forgotten.
pub fn decide(snapshot: &Snapshot) -> Vec<Action> {
    let mut actions = Vec::new();
    let in_group: BTreeSet<&str> = snapshot
        .group
        .instances
        .iter()
        .map(|instance| instance.id.as_str())
        .collect();
    for instance in &snapshot.detached {
        if !in_group.contains(instance.as_str()) {
            actions.push(Action::Terminate(instance.clone()));
        }
    }

    let mut removed = 0u32;
    let mut leaving = 0u32;
    let mut idle = Vec::new();
    let mut unprotected = Vec::new();
    for instance in &snapshot.group.instances {
        if !matches!(
            instance.lifecycle,
            Lifecycle::Pending | Lifecycle::InService
        ) {
            continue;
        }
        let agents: Vec<&Agent> = snapshot
            .agents
            .iter()
            .filter(|agent| agent.instance_id == instance.id)
            .collect();
        let launched_for = (snapshot.now - instance.launched_at)
            .to_std()
            .unwrap_or_default();
        match standing(&agents, launched_for, &snapshot.rules) {
            Standing::Removed(why) => {
                removed += 1;
                actions.push(Action::Detach {
                    instance: instance.id.clone(),
                    why,
                });
                actions.push(Action::Terminate(instance.id.clone()));
                for agent in agents {
                    actions.push(Action::Forget(agent.name.clone()));
                }
                continue;
            }
            Standing::Leaving => leaving += 1,
            Standing::Idle { agents, idle_for } => idle.push((idle_for, agents)),
            Standing::Kept => {}
        }
        if !instance.protected && instance.lifecycle == Lifecycle::InService {
            unprotected.push(instance.id.clone());
        }
    }
    if !unprotected.is_empty() {
        actions.push(Action::Protect(unprotected));
    }

    let rules = &snapshot.rules;
    let desired = snapshot.group.desired.saturating_sub(removed);
    let want = wanted(snapshot);
    // Draining agents still hold their instances: launch beside them what the queue needs.
    let target = want.saturating_add(leaving).min(rules.max_agents);
    if target > desired {
        actions.push(Action::SetDesired(target));
    } else if desired > want.saturating_add(leaving) {
        let surplus = (desired - want - leaving) as usize;
        idle.retain(|(idle_for, _)| *idle_for >= rules.idle_after);
        // The longest idle first; by name among equals, so the choice is stable.
        idle.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (idle_for, agents) in idle.into_iter().take(surplus) {
            for agent in agents {
                actions.push(Action::Drain { agent, idle_for });
            }
        }
    }

    for agent in &snapshot.agents {
        let finished = matches!(agent.state, AgentState::Stopped | AgentState::Lost);
        if finished
            && !in_group.contains(agent.instance_id.as_str())
            && snapshot.gone.contains(&agent.instance_id)
        {
            actions.push(Action::Forget(agent.name.clone()));
        }
    }
    actions
}

/// An instance's standing from its agents (usually one; several when an instance's agent
/// was registered under another name), the most alive first: busy, idle, draining, then lost
/// briefly; stopped or long lost agents that run nothing free it.
fn standing(agents: &[&Agent], launched_for: Duration, rules: &Rules) -> Standing {
    let in_state = |state: AgentState| {
        agents
            .iter()
            .copied()
            .filter(move |agent| agent.state == state)
    };
    if agents.is_empty() {
        return if launched_for >= rules.register_within {
            Standing::Removed(Removal::NeverRegistered)
        } else {
            Standing::Kept
        };
    }
    if in_state(AgentState::Busy).next().is_some() {
        return Standing::Kept;
    }
    let idle: Vec<&Agent> = in_state(AgentState::Idle).collect();
    if let Some(idle_for) = idle.iter().map(|agent| agent.idle_for).min() {
        return Standing::Idle {
            agents: idle.iter().map(|agent| agent.name.clone()).collect(),
            idle_for,
        };
    }
    if in_state(AgentState::Draining).next().is_some() {
        return Standing::Leaving;
    }
    let freed = agents.iter().all(|agent| {
        let long_lost =
            agent.state == AgentState::Lost && agent.silent_for >= rules.register_within;
        agent.running == 0 && (agent.state == AgentState::Stopped || long_lost)
    });
    if !freed {
        Standing::Kept
    } else if in_state(AgentState::Stopped).next().is_some() {
        Standing::Removed(Removal::AgentStopped)
    } else {
        Standing::Removed(Removal::AgentLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::Instance;

    const MINUTE: Duration = Duration::from_secs(60);

    fn rules() -> Rules {
        Rules {
            min_agents: 0,
            max_agents: 8,
            capacity_per_agent: 2,
            idle_after: Duration::from_secs(300),
            register_within: Duration::from_secs(600),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// An instance of the group launched `ago`, in service and protected.
    fn instance(id: &str, ago: Duration) -> Instance {
        Instance {
            id: id.into(),
            lifecycle: Lifecycle::InService,
            protected: true,
            launched_at: now() - chrono::Duration::from_std(ago).unwrap(),
        }
    }

    fn agent(name: &str, instance: &str, state: AgentState) -> Agent {
        Agent {
            name: name.into(),
            instance_id: instance.into(),
            state,
            running: u64::from(state == AgentState::Busy),
            idle_for: if state == AgentState::Idle {
                10 * MINUTE
            } else {
                Duration::ZERO
            },
            silent_for: Duration::from_secs(3),
        }
    }

    fn snapshot(pending: u64, running: u64, desired: u32) -> Snapshot {
        Snapshot {
            now: now(),
            pending,
            running,
            agents: Vec::new(),
            group: Group {
                desired,
                instances: Vec::new(),
            },
            detached: Vec::new(),
            gone: Vec::new(),
            rules: rules(),
        }
    }

    /// A group of `instances` (`i-1`...), each with an agent (`a-1`...) in `states`.
    fn group_of(states: &[AgentState], pending: u64, running: u64) -> Snapshot {
        let mut snapshot = snapshot(pending, running, states.len() as u32);
        for (i, state) in states.iter().enumerate() {
            let id = format!("i-{}", i + 1);
            snapshot.group.instances.push(instance(&id, 30 * MINUTE));
            snapshot
                .agents
                .push(agent(&format!("a-{}", i + 1), &id, *state));
        }
        snapshot
    }

    fn drained(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Drain { agent, .. } => Some(agent.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_queue_asks_for_enough_agents_within_min_and_max() {
        let mut s = snapshot(10, 0, 0);
        assert_eq!(wanted(&s), 5, "10 builds, 2 per agent");
        s.pending = 9;
        assert_eq!(wanted(&s), 5, "rounded up");
        s.running = 3;
        assert_eq!(wanted(&s), 6, "running builds count");
        s.pending = 100;
        assert_eq!(wanted(&s), 8, "at most max_agents");
        s.pending = 0;
        s.running = 0;
        assert_eq!(wanted(&s), 0);
        s.rules.min_agents = 2;
        assert_eq!(wanted(&s), 2, "at least min_agents");
    }

    #[test]
    fn ten_queued_builds_of_two_per_agent_raise_the_group_to_five() {
        assert_eq!(decide(&snapshot(10, 0, 0)), [Action::SetDesired(5)]);
        assert_eq!(decide(&snapshot(100, 0, 2)), [Action::SetDesired(8)]);
        assert_eq!(decide(&snapshot(10, 0, 5)), [], "already there");
        let mut s = snapshot(0, 0, 0);
        s.rules.min_agents = 2;
        assert_eq!(decide(&s), [Action::SetDesired(2)], "min_agents");
    }

    #[test]
    fn new_instances_in_service_are_protected_from_scale_in() {
        let mut s = snapshot(4, 0, 3);
        let mut fresh = instance("i-new", Duration::from_secs(5));
        fresh.protected = false;
        let mut pending = instance("i-pending", Duration::from_secs(5));
        pending.protected = false;
        pending.lifecycle = Lifecycle::Pending;
        s.group.instances = vec![fresh, pending, instance("i-old", 30 * MINUTE)];
        s.agents = vec![agent("a-old", "i-old", AgentState::Busy)];
        assert_eq!(decide(&s), [Action::Protect(vec!["i-new".into()])]);
    }

    #[test]
    fn an_empty_queue_drains_the_longest_idle_agents_past_idle_seconds_down_to_what_runs() {
        use AgentState::*;
        let mut s = group_of(&[Busy, Idle, Idle, Idle, Idle], 0, 1);
        s.agents[1].idle_for = 20 * MINUTE;
        s.agents[2].idle_for = 6 * MINUTE;
        s.agents[3].idle_for = 2 * MINUTE; // not idle long enough
        s.agents[4].idle_for = 40 * MINUTE;
        let actions = decide(&s);
        assert_eq!(drained(&actions), ["a-5", "a-2", "a-3"], "{actions:?}");
        assert_eq!(actions.len(), 3, "{actions:?}");
    }

    #[test]
    fn idle_agents_within_min_agents_stay() {
        use AgentState::*;
        let mut s = group_of(&[Idle, Idle, Idle], 0, 0);
        s.rules.min_agents = 2;
        assert_eq!(drained(&decide(&s)), ["a-1"]);
        s.rules.min_agents = 3;
        assert_eq!(decide(&s), []);
    }

    #[test]
    fn draining_agents_are_already_leaving_and_get_replacements_when_the_queue_grows() {
        use AgentState::*;
        let s = group_of(&[Draining, Draining, Idle], 0, 0);
        assert_eq!(drained(&decide(&s)), ["a-3"], "two leave already");
        let s = group_of(&[Draining, Idle, Idle], 0, 0);
        assert_eq!(drained(&decide(&s)), ["a-2", "a-3"]);
        // Four builds come while two drain: two agents beside them.
        let s = group_of(&[Draining, Draining, Idle], 4, 0);
        assert_eq!(decide(&s), [Action::SetDesired(4)]);
        // ...within max_agents.
        let mut s = group_of(&[Draining, Draining, Idle], 4, 0);
        s.rules.max_agents = 3;
        assert_eq!(decide(&s), []);
    }

    #[test]
    fn a_stopped_agents_instance_is_detached_then_terminated_and_the_agent_forgotten() {
        use AgentState::*;
        let s = group_of(&[Stopped, Busy], 0, 1);
        assert_eq!(
            decide(&s),
            [
                Action::Detach {
                    instance: "i-1".into(),
                    why: Removal::AgentStopped
                },
                Action::Terminate("i-1".into()),
                Action::Forget("a-1".into()),
            ]
        );
        // The queue still wants two: the detach took one off, so the group is raised again.
        let s = group_of(&[Stopped, Busy], 3, 1);
        assert_eq!(decide(&s).last(), Some(&Action::SetDesired(2)));
    }

    #[test]
    fn instances_that_never_registered_go_after_register_seconds_and_are_replaced() {
        let mut s = snapshot(4, 0, 2);
        s.group.instances = vec![
            instance("i-late", 11 * MINUTE),
            instance("i-young", 9 * MINUTE),
        ];
        let actions = decide(&s);
        assert_eq!(
            actions,
            [
                Action::Detach {
                    instance: "i-late".into(),
                    why: Removal::NeverRegistered
                },
                Action::Terminate("i-late".into()),
                Action::SetDesired(2),
            ]
        );
    }

    #[test]
    fn lost_agents_free_their_instance_only_after_register_seconds_and_their_builds_ended() {
        use AgentState::*;
        let mut s = group_of(&[Lost, Lost, Lost], 0, 0);
        s.agents[0].silent_for = 11 * MINUTE;
        s.agents[1].silent_for = 2 * MINUTE;
        s.agents[2].silent_for = 11 * MINUTE;
        s.agents[2].running = 1;
        assert_eq!(
            decide(&s),
            [
                Action::Detach {
                    instance: "i-1".into(),
                    why: Removal::AgentLost
                },
                Action::Terminate("i-1".into()),
                Action::Forget("a-1".into()),
            ]
        );
    }

    #[test]
    fn an_instance_with_a_busy_agent_under_another_name_is_busy() {
        use AgentState::*;
        let mut s = group_of(&[Stopped], 0, 1);
        s.agents.push(agent("a-renamed", "i-1", Busy));
        assert_eq!(decide(&s), []);
        s.agents[1].state = Idle;
        s.agents[1].running = 0;
        s.agents[1].idle_for = 10 * MINUTE;
        s.running = 0;
        assert_eq!(drained(&decide(&s)), ["a-renamed"]);
    }

    #[test]
    fn detached_instances_are_terminated_once_out_of_the_group() {
        use AgentState::*;
        let mut s = group_of(&[Busy], 0, 1);
        s.detached = vec!["i-9".into(), "i-1".into()];
        assert_eq!(decide(&s), [Action::Terminate("i-9".into())]);
    }

    #[test]
    fn agents_whose_instance_is_gone_are_forgotten_once_stopped_or_lost() {
        use AgentState::*;
        let mut s = snapshot(0, 0, 0);
        s.agents = vec![
            agent("stopped", "i-gone-1", Stopped),
            agent("lost", "i-gone-2", Lost),
            agent("alive", "i-gone-3", Idle),
            agent("elsewhere", "i-other", Stopped),
        ];
        s.gone = vec!["i-gone-1".into(), "i-gone-2".into(), "i-gone-3".into()];
        assert_eq!(
            decide(&s),
            [
                Action::Forget("stopped".into()),
                Action::Forget("lost".into())
            ]
        );
    }

    #[test]
    fn instances_leaving_the_group_on_their_own_are_left_alone() {
        let mut s = snapshot(0, 0, 1);
        let mut terminating = instance("i-1", 30 * MINUTE);
        terminating.lifecycle = Lifecycle::Other("Terminating".into());
        terminating.protected = false;
        s.group.instances = vec![terminating];
        assert_eq!(decide(&s), []);
    }

    /// Every mix of agent states on four instances, with every queue size up to 12: no busy
    /// agent is drained, no busy agent's instance is detached or terminated, and the group is
    /// never set outside min and max.
    #[test]
    fn no_snapshot_makes_a_busy_agent_go_or_the_group_leave_its_bounds() {
        use AgentState::*;
        let states = [Idle, Busy, Draining, Stopped, Lost];
        let mut checked = 0;
        for mix in 0..states.len().pow(4) {
            let picked: Vec<AgentState> = (0..4)
                .map(|i| states[mix / states.len().pow(i) % states.len()])
                .collect();
            for pending in 0..=12 {
                for min in [0, 2] {
                    let busy = picked.iter().filter(|s| **s == Busy).count() as u64;
                    let mut s = group_of(&picked, pending, busy);
                    s.rules.min_agents = min;
                    s.rules.max_agents = 6;
                    for agent in &mut s.agents {
                        agent.silent_for = 20 * MINUTE;
                    }
                    let busy_agents: Vec<&Agent> =
                        s.agents.iter().filter(|a| a.state == Busy).collect();
                    for action in decide(&s) {
                        match &action {
                            Action::Drain { agent, .. } => assert!(
                                s.agents.iter().any(|a| &a.name == agent && a.state == Idle),
                                "{picked:?} {pending}: {action:?}"
                            ),
                            Action::Detach { instance, .. } | Action::Terminate(instance) => {
                                assert!(
                                    !busy_agents.iter().any(|a| &a.instance_id == instance),
                                    "{picked:?} {pending}: {action:?}"
                                )
                            }
                            Action::SetDesired(n) => {
                                assert!((min..=6).contains(n), "{picked:?} {pending}: {action:?}")
                            }
                            Action::Forget(agent) => assert!(
                                s.agents
                                    .iter()
                                    .any(|a| &a.name == agent && matches!(a.state, Stopped | Lost)),
                                "{picked:?} {pending}: {action:?}"
                            ),
                            Action::Protect(_) => {}
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked} actions checked");
    }
}
