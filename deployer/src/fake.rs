//! A fake [`Target`] that enforces the trait's contract and takes injected failures, for
//! testing the algorithm (here and in the root crate). Its state is "the world": it
//! survives a deployer being dropped mid-step, as real containers and ASGs do.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::error::TargetError;
use crate::target::{Fleet, FleetRef, HealthState, InstanceHealth, Target};

/// How the instances of a release answer health checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthScript {
    Healthy,
    /// Never passes.
    Never,
    /// Passes this many rounds, then fails forever (a release that breaks under traffic).
    FailsAfter(u32),
}

/// A launched fleet as the fake holds it.
#[derive(Clone, Debug)]
struct FakeFleet {
    fleet: FleetRef,
    instances: Vec<String>,
    rounds: u32,
    passed_once: bool,
}

#[derive(Default)]
struct World {
    fleets: BTreeMap<String, FakeFleet>,
    live: Option<FleetRef>,
    template_image: Option<String>,
    scripts: HashMap<String, HealthScript>,
    failing_launches: Vec<String>,
    failing_switches: Vec<String>,
    crash_after: Option<String>,
    calls: Vec<String>,
    violations: Vec<String>,
}

/// The fake target; clone the `Arc` to keep the world across deployers.
#[derive(Default)]
pub struct FakeTarget {
    world: Mutex<World>,
    crashed: Arc<Notify>,
}

impl FakeTarget {
    pub fn new() -> Arc<FakeTarget> {
        Arc::new(FakeTarget::default())
    }

    /// Instances of `release` answer health checks as `script` says.
    pub fn script_health(&self, release: &str, script: HealthScript) {
        self.world().scripts.insert(release.to_owned(), script);
    }

    /// Launching `release` fails.
    pub fn fail_launch(&self, release: &str) {
        self.world().failing_launches.push(release.to_owned());
    }

    /// Switching to `release` fails (once).
    pub fn fail_switch(&self, release: &str) {
        self.world().failing_switches.push(release.to_owned());
    }

    /// The next call named `call` (`launch_fleet`, `switch_traffic`, ...) takes effect and
    /// then the calling deployer hangs forever, as if its process had died;
    /// [`FakeTarget::crashed`] wakes when that happens.
    pub fn crash_after(&self, call: &str) {
        self.world().crash_after = Some(call.to_owned());
    }

    /// Waits until an injected crash has happened.
    pub async fn crashed(&self) {
        self.crashed.notified().await;
    }

    /// Calls that broke the [`Target`] contract; a correct deployer leaves this empty.
    pub fn violations(&self) -> Vec<String> {
        self.world().violations.clone()
    }

    /// Every call, in order, as `name fleet`.
    pub fn calls(&self) -> Vec<String> {
        self.world().calls.clone()
    }

    /// Ids of the fleets that exist now.
    pub fn fleet_ids(&self) -> Vec<String> {
        self.world().fleets.keys().cloned().collect()
    }

    /// The image new instances would start from.
    pub fn template_image(&self) -> Option<String> {
        self.world().template_image.clone()
    }

    /// The contract checks and effect of a switch.
    fn switch(&self, to: &FleetRef) -> Result<(), TargetError> {
        let mut world = self.world();
        world.call("switch_traffic", &to.id);
        let passed = world.fleets.get(&to.id).map(|fake| fake.passed_once);
        match passed {
            None => return Err(world.violate("switch_traffic", format!("no fleet {}", to.id))),
            Some(false) => {
                let reason = format!("{} never passed a health check", to.id);
                return Err(world.violate("switch_traffic", reason));
            }
            Some(true) => {}
        }
        if let Some(at) = world.failing_switches.iter().position(|r| *r == to.release) {
            world.failing_switches.remove(at);
            return Err(TargetError::refused(
                "switch_traffic",
                "injected switch failure",
            ));
        }
        world.live = Some(to.clone());
        Ok(())
    }

    /// Hangs forever when a crash was injected after `call`.
    async fn maybe_crash(&self, call: &str) {
        let crash = {
            let mut world = self.world();
            let due = world.crash_after.as_deref() == Some(call);
            if due {
                world.crash_after = None;
            }
            due
        };
        if crash {
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl World {
    fn call(&mut self, name: &str, fleet: &str) {
        self.calls.push(format!("{name} {fleet}"));
    }

    fn violate(&mut self, action: &str, reason: String) -> TargetError {
        self.violations.push(format!("{action}: {reason}"));
        TargetError::refused(action, format!("contract violation: {reason}"))
    }

    fn health_of(&mut self, id: &str) -> Option<Vec<InstanceHealth>> {
        let scripts = self.scripts.clone();
        let fake = self.fleets.get_mut(id)?;
        fake.rounds += 1;
        let script = scripts
            .get(&fake.fleet.release)
            .copied()
            .unwrap_or(HealthScript::Healthy);
        let healthy = match script {
            HealthScript::Healthy => true,
            HealthScript::Never => false,
            HealthScript::FailsAfter(rounds) => fake.rounds <= rounds,
        };
        fake.passed_once |= healthy;
        let (state, detail) = match healthy {
            true => (HealthState::Healthy, "200"),
            false => (HealthState::Unhealthy, "500"),
        };
        let round = fake.instances.iter().map(|instance| InstanceHealth {
            instance: instance.clone(),
            state,
            detail: detail.to_owned(),
        });
        Some(round.collect())
    }
}

#[async_trait]
impl Target for FakeTarget {
    fn fleet_for(&self, release: &str, image: &str) -> FleetRef {
        FleetRef {
            id: format!("fake-{release}"),
            release: release.to_owned(),
            image: image.to_owned(),
        }
    }

    /// Like an ALB listener, the fake's routing survives a crash, so adopting changes
    /// nothing; the store may lag the world by the one switch a crash interrupted, but the
    /// fleet it names must exist.
    async fn adopt(&self, live: Option<&FleetRef>) -> Result<(), TargetError> {
        let mut world = self.world();
        world.call("adopt", live.map_or("-", |l| l.id.as_str()));
        if let Some(live) = live.filter(|l| !world.fleets.contains_key(&l.id)) {
            let reason = format!("store says retired fleet {} is live", live.id);
            return Err(world.violate("adopt", reason));
        }
        Ok(())
    }

    async fn launch_fleet(&self, fleet: &FleetRef, count: u32) -> Result<Fleet, TargetError> {
        {
            let mut world = self.world();
            world.call("launch_fleet", &fleet.id);
            if count == 0 {
                return Err(world.violate("launch_fleet", "zero instances".to_owned()));
            }
            if let Some(existing) = world.fleets.get(&fleet.id) {
                if existing.fleet != *fleet {
                    let reason = format!("{} exists as {:?}", fleet.id, existing.fleet);
                    return Err(world.violate("launch_fleet", reason));
                }
            }
            if world.failing_launches.contains(&fleet.release) {
                return Err(TargetError::refused(
                    "launch_fleet",
                    "injected launch failure",
                ));
            }
            let instances = (0..count).map(|i| format!("{}-{i}", fleet.id)).collect();
            let fake = FakeFleet {
                fleet: fleet.clone(),
                instances,
                rounds: 0,
                passed_once: false,
            };
            world.fleets.entry(fleet.id.clone()).or_insert(fake);
        }
        self.maybe_crash("launch_fleet").await;
        let world = self.world();
        Ok(Fleet {
            fleet: fleet.clone(),
            instances: world.fleets[&fleet.id].instances.clone(),
        })
    }

    async fn instance_health(&self, fleet: &FleetRef) -> Result<Vec<InstanceHealth>, TargetError> {
        let mut world = self.world();
        world.call("instance_health", &fleet.id);
        match world.health_of(&fleet.id) {
            Some(round) => Ok(round),
            None => Err(world.violate("instance_health", format!("no fleet {}", fleet.id))),
        }
    }

    async fn switch_traffic(&self, to: &FleetRef) -> Result<(), TargetError> {
        self.switch(to)?;
        self.maybe_crash("switch_traffic").await;
        Ok(())
    }

    async fn current_live(&self) -> Result<Option<FleetRef>, TargetError> {
        Ok(self.world().live.clone())
    }

    async fn update_launch_template(&self, image: &str) -> Result<(), TargetError> {
        let mut world = self.world();
        world.call("update_launch_template", image);
        let live_image = world.live.as_ref().map(|l| l.image.clone());
        if live_image.as_deref() != Some(image) {
            let reason = format!("template set to {image} while {live_image:?} serves");
            return Err(world.violate("update_launch_template", reason));
        }
        world.template_image = Some(image.to_owned());
        Ok(())
    }

    async fn retire_fleet(&self, fleet: &FleetRef) -> Result<(), TargetError> {
        let mut world = self.world();
        world.call("retire_fleet", &fleet.id);
        if world.live.as_ref().is_some_and(|l| l.same(fleet)) {
            world.violate("retire_fleet", format!("{} is live", fleet.id));
            return Err(TargetError::RetireLive {
                fleet: fleet.id.clone(),
            });
        }
        world.fleets.remove(&fleet.id);
        Ok(())
    }

    async fn list_fleets(&self) -> Result<Vec<FleetRef>, TargetError> {
        let world = self.world();
        Ok(world.fleets.values().map(|f| f.fleet.clone()).collect())
    }
}
