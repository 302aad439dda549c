//! The `docker` target: instances are containers of the release image on a per-environment
//! network, and traffic comes through the environment's load balancer ([`balancer`]), HAProxy
//! in a container of its own, which checks every instance's health and outlives Slipway.

pub mod balancer;
mod convert;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectNetworkOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;

pub use balancer::{LoadBalancer, LoadBalancerSettings, LoadBalancerStatus};

use crate::error::TargetError;
use crate::target::{Fleet, FleetRef, HealthState, InstanceHealth, Target};
use balancer::{Routing, Server, Slot, SLOTS};

/// How one docker environment is realised.
#[derive(Clone, Debug)]
pub struct DockerSettings {
    /// The environment's name in labels (unique per installation with `labels`).
    pub environment: String,
    /// The network its instances join (created when missing).
    pub network: String,
    /// Prepended to every instance's container name, so that installations sharing a dockerd
    /// never collide.
    pub name_prefix: String,
    /// Labels every container and network carries besides Slipway's own.
    pub labels: BTreeMap<String, String>,
    /// The port instances listen on (given to them as `PORT`).
    pub port: u16,
    /// The application's variables, given to every instance besides `PORT`.
    pub variables: BTreeMap<String, String>,
    /// How long a retiring fleet's requests in flight may take before it is removed.
    pub drain_timeout: Duration,
    pub load_balancer: LoadBalancerSettings,
}

/// One environment on a Docker engine.
pub struct DockerTarget {
    docker: Docker,
    settings: DockerSettings,
    labels: BTreeMap<String, String>,
    balancer: LoadBalancer,
}

impl DockerTarget {
    pub fn new(docker: Docker, mut settings: DockerSettings) -> DockerTarget {
        let labels = convert::environment_labels(&settings.environment, &settings.labels);
        settings.load_balancer.labels.extend(labels.clone());
        let balancer = LoadBalancer::new(docker.clone(), settings.load_balancer.clone());
        DockerTarget {
            docker,
            settings,
            labels,
            balancer,
        }
    }

    /// The environment's load balancer.
    pub fn balancer(&self) -> &LoadBalancer {
        &self.balancer
    }

    async fn ensure_network(&self) -> Result<(), TargetError> {
        let network = &self.settings.network;
        match self
            .docker
            .inspect_network(network, None::<InspectNetworkOptions>)
            .await
        {
            Ok(found) => {
                let owner = convert::foreign_owner(found.labels.as_ref(), &self.labels);
                return match owner {
                    None => Ok(()),
                    Some(owner) => Err(TargetError::refused(
                        format!("use network {network}"),
                        format!("it belongs to another Slipway installation ({owner})"),
                    )),
                };
            }
            Err(error) if status(&error) != Some(404) => {
                return Err(platform(format!("inspect network {network}"), error))
            }
            Err(_) => {}
        }
        let request = NetworkCreateRequest {
            name: network.clone(),
            labels: Some(self.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            // 409: created meanwhile by someone else; that is what we wanted.
            Err(error) if status(&error) != Some(409) => {
                Err(platform(format!("create network {network}"), error))
            }
            _ => Ok(()),
        }
    }

    /// Every instance of the environment, stopped ones included: any container of it with a
    /// fleet (the load balancer has none; instances made before the role label have one).
    async fn all_containers(&self) -> Result<Vec<ContainerSummary>, TargetError> {
        let mut options = convert::list_options(&self.labels);
        if let Some(filters) = options.filters.as_mut() {
            filters
                .entry("label".to_owned())
                .or_default()
                .push(convert::FLEET.to_owned());
        }
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| {
                platform(
                    format!("list containers of {}", self.settings.environment),
                    e,
                )
            })
    }

    /// The containers of `fleet`, stopped ones included.
    async fn containers(&self, fleet: &FleetRef) -> Result<Vec<ContainerSummary>, TargetError> {
        let all = self.all_containers().await?;
        Ok(all
            .into_iter()
            .filter(|c| convert::fleet_id(c) == Some(fleet.id.as_str()))
            .collect())
    }

    /// Creates (if missing) and starts (if stopped) one instance.
    async fn start_instance(&self, fleet: &FleetRef, name: &str) -> Result<(), TargetError> {
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let body = convert::instance_body(
            fleet,
            &self.settings.network,
            self.settings.port,
            &self.labels,
            &self.settings.variables,
        );
        match self.docker.create_container(Some(options), body).await {
            Err(error) if status(&error) == Some(409) => self.check_ours(name).await?,
            Err(error) => return Err(platform(format!("create container {name}"), error)),
            Ok(_) => {}
        }
        match self
            .docker
            .start_container(name, None::<StartContainerOptions>)
            .await
        {
            // 304: already running.
            Err(error) if status(&error) != Some(304) => {
                Err(platform(format!("start container {name}"), error))
            }
            _ => Ok(()),
        }
    }

    /// A container named like one of ours exists: fine if it is ours, else a conflict.
    async fn check_ours(&self, name: &str) -> Result<(), TargetError> {
        let found = self
            .docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| platform(format!("inspect container {name}"), e))?;
        let labels = found.config.and_then(|c| c.labels);
        match convert::foreign_owner(labels.as_ref(), &self.labels) {
            None => Ok(()),
            Some(owner) => Err(TargetError::refused(
                format!("create container {name}"),
                format!(
                    "a container of that name belongs to another Slipway installation ({owner})"
                ),
            )),
        }
    }

    /// The running instances of each fleet with their addresses, by fleet id.
    async fn instances(&self) -> Result<BTreeMap<String, Vec<(String, SocketAddr)>>, TargetError> {
        let mut fleets: BTreeMap<String, Vec<(String, SocketAddr)>> = BTreeMap::new();
        for container in self.all_containers().await? {
            let running = container.state.as_ref().map(|s| s.to_string()) == Some("running".into());
            let address =
                convert::address_on(&container, &self.settings.network, self.settings.port)
                    .or_else(|| convert::any_address(&container, self.settings.port));
            if let (true, Some(address), Some(fleet)) =
                (running, address, convert::fleet_id(&container))
            {
                fleets
                    .entry(fleet.to_owned())
                    .or_default()
                    .push((convert::name_of(&container), address));
            }
        }
        Ok(fleets)
    }

    /// The fleet each server belongs to (by its container), and the fleets of the slots.
    async fn fleet_of_servers(&self) -> Result<HashMap<String, FleetRef>, TargetError> {
        let containers = self.all_containers().await?;
        let fleets = convert::fleets_of(&containers);
        Ok(containers
            .iter()
            .filter_map(|c| {
                let id = convert::fleet_id(c)?;
                let fleet = fleets.iter().find(|f| f.id == id)?;
                Some((convert::name_of(c), fleet.clone()))
            })
            .collect())
    }

    /// The routing a load balancer that starts afresh gets: every fleet whose instances run,
    /// the live one live. Fleets past the two slots (leftovers recovery retires) are left out.
    async fn routing_from(&self, live: Option<&FleetRef>) -> Result<Routing, TargetError> {
        let mut fleets: Vec<(String, Vec<(String, SocketAddr)>)> =
            self.instances().await?.into_iter().collect();
        // The live fleet takes the first slot.
        fleets.sort_by_key(|(id, _)| live.is_none_or(|l| &l.id != id));
        let mut routing = Routing::default();
        for ((id, instances), slot) in fleets.into_iter().zip(SLOTS) {
            if live.is_some_and(|l| l.id == id) {
                routing.live = Some(slot);
            }
            routing
                .servers
                .extend(instances.into_iter().map(|(name, addr)| Server {
                    slot,
                    name,
                    addr,
                    draining: false,
                }));
        }
        Ok(routing)
    }

    /// Registers the running instances of `fleet` with the load balancer, in the slot that
    /// holds it already or in a free one; returns that slot. Servers whose address changed
    /// (a restarted container) are registered again.
    async fn register(&self, fleet: &FleetRef) -> Result<Slot, TargetError> {
        let instances = self
            .instances()
            .await?
            .remove(&fleet.id)
            .unwrap_or_default();
        if instances.is_empty() {
            return Err(TargetError::refused(
                format!("register fleet {}", fleet.id),
                format!("no instance of it runs on {}", self.settings.network),
            ));
        }
        let routing = self.balancer.routing().await?;
        let owners = self.fleet_of_servers().await?;
        let holds = |slot: Slot, id: &str| {
            routing
                .of(slot)
                .any(|s| owners.get(&s.name).is_some_and(|f| f.id == id))
        };
        let slot = match SLOTS.into_iter().find(|slot| holds(*slot, &fleet.id)) {
            Some(slot) => slot,
            None => self.free_slot(&routing, &owners).await?,
        };
        let registered: Vec<&Server> = routing.of(slot).collect();
        let stale: Vec<Server> = registered
            .iter()
            .filter(|s| {
                !instances
                    .iter()
                    .any(|(name, addr)| &s.name == name && &s.addr == addr)
            })
            .map(|s| (*s).clone())
            .collect();
        self.balancer.remove(&stale).await?;
        let missing: Vec<Server> = instances
            .into_iter()
            .filter(|(name, addr)| {
                !registered
                    .iter()
                    .any(|s| &s.name == name && &s.addr == addr)
            })
            .map(|(name, addr)| Server {
                slot,
                name,
                addr,
                draining: false,
            })
            .collect();
        self.balancer.add(&missing).await?;
        // Left out of service (an earlier registration cut short): back in.
        let paused: Vec<Server> = registered
            .iter()
            .filter(|s| s.draining && !stale.iter().any(|gone| gone.name == s.name))
            .map(|s| (*s).clone())
            .collect();
        self.balancer.ready(&paused).await?;
        Ok(slot)
    }

    /// A slot holding no fleet that still has a container (emptied of what is left).
    async fn free_slot(
        &self,
        routing: &Routing,
        owners: &HashMap<String, FleetRef>,
    ) -> Result<Slot, TargetError> {
        for slot in SLOTS {
            if routing.live == Some(slot) && routing.of(slot).next().is_some() {
                continue;
            }
            let ghosts: Vec<Server> = routing.of(slot).cloned().collect();
            if ghosts.iter().all(|s| !owners.contains_key(&s.name)) {
                self.balancer.remove(&ghosts).await?;
                return Ok(slot);
            }
        }
        let held: Vec<String> = routing
            .servers
            .iter()
            .filter_map(|s| owners.get(&s.name).map(|f| f.id.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Err(TargetError::refused(
            "register a fleet with the load balancer",
            format!(
                "both slots hold fleets ({}); retire one first",
                held.join(", ")
            ),
        ))
    }

    /// The slot whose servers are `fleet`'s instances, if one is.
    async fn slot_of(
        &self,
        routing: &Routing,
        fleet: &FleetRef,
    ) -> Result<Option<Slot>, TargetError> {
        let owners = self.fleet_of_servers().await?;
        Ok(SLOTS.into_iter().find(|slot| {
            routing
                .of(*slot)
                .any(|s| owners.get(&s.name).is_some_and(|f| f.same(fleet)))
        }))
    }

    /// Removes every container of `fleet`.
    async fn remove_containers(&self, fleet: &FleetRef) -> Result<(), TargetError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        for container in self.containers(fleet).await? {
            let name = convert::name_of(&container);
            match self
                .docker
                .remove_container(&name, Some(options.clone()))
                .await
            {
                Err(error) if status(&error) != Some(404) => {
                    return Err(platform(format!("remove container {name}"), error))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Requests in flight on `servers`.
    async fn in_flight(&self, servers: &[Server]) -> Result<u64, TargetError> {
        let rows = self.balancer.stats().await?;
        Ok(rows
            .iter()
            .filter(|row| {
                servers
                    .iter()
                    .any(|s| row.proxy == s.slot.to_string() && row.name == s.name)
            })
            .map(|row| row.current_sessions)
            .sum())
    }
}

#[async_trait]
impl Target for DockerTarget {
    fn fleet_for(&self, release: &str, image: &str) -> FleetRef {
        FleetRef {
            id: convert::docker_name(&format!("{}-{release}", self.settings.environment)),
            release: release.to_owned(),
            image: image.to_owned(),
        }
    }

    /// Starts the instances that stopped, then the load balancer if it does not run (routing
    /// to `live`, with the other fleets in the other slot); a running one keeps its routing,
    /// which is the truth, and only gets its servers' addresses brought up to date. Without a
    /// live slot it is pointed at `live`.
    async fn adopt(&self, live: Option<&FleetRef>) -> Result<(), TargetError> {
        for container in self.all_containers().await? {
            let fleet = convert::fleets_of(std::slice::from_ref(&container));
            let running = container.state.as_ref().map(|s| s.to_string()) == Some("running".into());
            if let (false, Some(fleet)) = (running, fleet.first()) {
                self.start_instance(fleet, &convert::name_of(&container))
                    .await?;
            }
        }
        let routing = self.routing_from(live).await?;
        if self.balancer.ensure(&routing).await? {
            return Ok(());
        }
        let now = self.balancer.routing().await?;
        let owners = self.fleet_of_servers().await?;
        for slot in SLOTS {
            let fleet = now.of(slot).find_map(|s| owners.get(&s.name)).cloned();
            if let Some(fleet) = fleet {
                self.register(&fleet).await?;
            }
        }
        let live_serves = now.live.is_some_and(|slot| now.of(slot).next().is_some());
        if let (false, Some(live)) = (live_serves, live) {
            self.switch_traffic(live).await?;
        }
        Ok(())
    }

    async fn launch_fleet(&self, fleet: &FleetRef, count: u32) -> Result<Fleet, TargetError> {
        self.ensure_network().await?;
        let mut instances = Vec::new();
        for index in 0..count {
            let name = format!("{}{}-{index}", self.settings.name_prefix, fleet.id);
            self.start_instance(fleet, &name).await?;
            instances.push(name);
        }
        self.balancer
            .ensure(&self.routing_from(None).await?)
            .await?;
        self.register(fleet).await?;
        Ok(Fleet {
            fleet: fleet.clone(),
            instances,
        })
    }

    /// The load balancer's view of each instance: healthy once its checks pass (every second,
    /// two in a row), unhealthy once two failed.
    async fn instance_health(&self, fleet: &FleetRef) -> Result<Vec<InstanceHealth>, TargetError> {
        let containers = self.containers(fleet).await?;
        let rows = match self.balancer.serving().await? {
            true => self.balancer.stats().await?,
            false => Vec::new(),
        };
        Ok(containers
            .iter()
            .map(|container| {
                let instance = convert::name_of(container);
                let running =
                    container.state.as_ref().map(|s| s.to_string()) == Some("running".into());
                let row = rows
                    .iter()
                    .find(|r| r.name == instance && Slot::parse(&r.proxy).is_some());
                let (state, detail) = match (running, row) {
                    (false, _) => (HealthState::Unknown, "not running".to_owned()),
                    (true, None) => (
                        HealthState::Unknown,
                        "not registered with the load balancer".to_owned(),
                    ),
                    (true, Some(row)) => health_of(row),
                };
                InstanceHealth {
                    instance,
                    state,
                    detail,
                }
            })
            .collect())
    }

    async fn switch_traffic(&self, to: &FleetRef) -> Result<(), TargetError> {
        let slot = self.register(to).await?;
        self.balancer.switch(slot).await
    }

    /// The fleet of the load balancer's live slot; none while it does not run.
    async fn current_live(&self) -> Result<Option<FleetRef>, TargetError> {
        if !self.balancer.serving().await? {
            return Ok(None);
        }
        let routing = self.balancer.routing().await?;
        let Some(slot) = routing.live else {
            return Ok(None);
        };
        let owners = self.fleet_of_servers().await?;
        let live = routing.of(slot).find_map(|s| owners.get(&s.name)).cloned();
        Ok(live)
    }

    /// A no-op: docker has no launch template; every fleet is launched from the image its
    /// deployment names.
    async fn update_launch_template(&self, _image: &str) -> Result<(), TargetError> {
        Ok(())
    }

    /// Drains the fleet's servers (no new connection; those open go on, for at most the
    /// drain timeout), removes them from the load balancer, then removes the containers.
    async fn retire_fleet(&self, fleet: &FleetRef) -> Result<(), TargetError> {
        if !self.balancer.serving().await? {
            // Not running: its files say what it would serve once started again.
            let persisted = self.balancer.persisted_routing().await?;
            let owners = self.fleet_of_servers().await?;
            let would_serve = persisted.live.is_some_and(|slot| {
                persisted
                    .of(slot)
                    .any(|s| owners.get(&s.name).is_some_and(|f| f.same(fleet)))
            });
            if would_serve {
                return Err(TargetError::RetireLive {
                    fleet: fleet.id.clone(),
                });
            }
            return self.remove_containers(fleet).await;
        }
        if self
            .current_live()
            .await?
            .is_some_and(|live| live.same(fleet))
        {
            return Err(TargetError::RetireLive {
                fleet: fleet.id.clone(),
            });
        }
        let routing = self.balancer.routing().await?;
        if let Some(slot) = self.slot_of(&routing, fleet).await? {
            let servers: Vec<Server> = routing.of(slot).cloned().collect();
            self.balancer.drain(&servers).await?;
            let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
            let mut remaining = self.in_flight(&servers).await?;
            while remaining > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                remaining = self.in_flight(&servers).await?;
            }
            if remaining > 0 {
                tracing::warn!(fleet = %fleet.id, remaining, "drain timed out; removing anyway");
            }
            self.balancer.remove(&servers).await?;
        }
        self.remove_containers(fleet).await
    }

    async fn list_fleets(&self) -> Result<Vec<FleetRef>, TargetError> {
        Ok(convert::fleets_of(&self.all_containers().await?))
    }
}

/// An instance's health from its row of the load balancer's statistics.
fn health_of(row: &balancer::StatRow) -> (HealthState, String) {
    let detail = match (row.check_code.is_empty(), row.check_desc.is_empty()) {
        (false, _) => format!("{} {} ({})", row.status, row.check_status, row.check_code),
        (true, false) => format!("{} {} ({})", row.status, row.check_status, row.check_desc),
        (true, true) => format!("{} {}", row.status, row.check_status),
    };
    let state = match (row.status.as_str(), row.check_status.as_str()) {
        ("UP" | "DRAIN" | "NOLB", "L7OK") => HealthState::Healthy,
        (_, "INI" | "") => HealthState::Unknown,
        ("DOWN", _) => HealthState::Unhealthy,
        // Up on its way down, or a failed check not yet counted twice.
        (_, _) => HealthState::Unhealthy,
    };
    (state, detail)
}

fn status(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn platform(action: String, error: DockerError) -> TargetError {
    TargetError::platform(action, error)
}
