//! The `docker` target: instances are containers of the release image on a per-environment
//! network, health checks are HTTP requests to each container, and traffic comes through
//! this crate's [`Proxy`], which the root crate starts per environment.

mod convert;
mod proxy;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectNetworkOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use proxy::Proxy;

use crate::error::TargetError;
use crate::target::{Fleet, FleetRef, HealthState, InstanceHealth, Target};

/// One environment on the local Docker engine.
pub struct DockerTarget {
    docker: Docker,
    environment: String,
    network: String,
    proxy: Proxy,
    labels: BTreeMap<String, String>,
    port: u16,
    health_path: String,
    /// The application's variables, given to every instance besides `PORT`.
    variables: BTreeMap<String, String>,
    drain_timeout: Duration,
    health_client: Client<HttpConnector, Empty<Bytes>>,
}

impl DockerTarget {
    /// A target for `environment` whose containers join `network` (created when missing),
    /// carry `labels` besides Slipway's own, and listen on `port` (given to them as `PORT`);
    /// `proxy` is the environment's listener. Health is `GET /health`; draining waits 30 s.
    pub fn new(
        docker: Docker,
        environment: &str,
        network: &str,
        proxy: Proxy,
        labels: BTreeMap<String, String>,
        port: u16,
    ) -> DockerTarget {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        DockerTarget {
            docker,
            environment: environment.to_owned(),
            network: network.to_owned(),
            proxy,
            labels: convert::environment_labels(environment, &labels),
            port,
            health_path: "/health".to_owned(),
            variables: BTreeMap::new(),
            drain_timeout: Duration::from_secs(30),
            health_client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Checks `path` instead of `/health`.
    pub fn with_health_path(mut self, path: &str) -> DockerTarget {
        self.health_path = path.to_owned();
        self
    }

    /// Gives every instance `variables` in its environment (the application's configuration).
    pub fn with_variables(mut self, variables: BTreeMap<String, String>) -> DockerTarget {
        self.variables = variables;
        self
    }

    /// Waits at most `timeout` for in-flight requests before removing a fleet.
    pub fn with_drain_timeout(mut self, timeout: Duration) -> DockerTarget {
        self.drain_timeout = timeout;
        self
    }

    async fn ensure_network(&self) -> Result<(), TargetError> {
        match self
            .docker
            .inspect_network(&self.network, None::<InspectNetworkOptions>)
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) if status(&error) != Some(404) => {
                return Err(platform(format!("inspect network {}", self.network), error))
            }
            Err(_) => {}
        }
        let request = NetworkCreateRequest {
            name: self.network.clone(),
            labels: Some(self.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            // 409: created meanwhile by someone else; that is what we wanted.
            Err(error) if status(&error) != Some(409) => {
                Err(platform(format!("create network {}", self.network), error))
            }
            _ => Ok(()),
        }
    }

    /// The containers of `fleet`, stopped ones included.
    async fn containers(&self, fleet: &FleetRef) -> Result<Vec<ContainerSummary>, TargetError> {
        let mut labels = self.labels.clone();
        labels.insert(convert::FLEET.to_owned(), fleet.id.clone());
        self.docker
            .list_containers(Some(convert::list_options(&labels)))
            .await
            .map_err(|e| platform(format!("list containers of fleet {}", fleet.id), e))
    }

    /// Creates (if missing) and starts (if stopped) one instance.
    async fn start_instance(&self, fleet: &FleetRef, name: &str) -> Result<(), TargetError> {
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let body = convert::instance_body(
            fleet,
            &self.network,
            self.port,
            &self.labels,
            &self.variables,
        );
        match self.docker.create_container(Some(options), body).await {
            Err(error) if status(&error) != Some(409) => {
                return Err(platform(format!("create container {name}"), error))
            }
            _ => {}
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

    /// One health request to one instance.
    async fn check(&self, container: &ContainerSummary) -> InstanceHealth {
        let instance = convert::name_of(container);
        let running = container.state.as_ref().map(|s| s.to_string()) == Some("running".into());
        let address = convert::address_on(container, &self.network, self.port);
        let (state, detail) = match address {
            Some(address) if running => self.get_health(address).await,
            _ => (HealthState::Unknown, "not running".to_owned()),
        };
        InstanceHealth {
            instance,
            state,
            detail,
        }
    }

    async fn get_health(&self, address: std::net::SocketAddr) -> (HealthState, String) {
        let uri = match format!("http://{address}{}", self.health_path).parse() {
            Ok(uri) => uri,
            Err(error) => return (HealthState::Unhealthy, format!("bad health path: {error}")),
        };
        let request = self.health_client.get(uri);
        match tokio::time::timeout(Duration::from_secs(2), request).await {
            Err(_) => (HealthState::Unhealthy, "timed out after 2s".to_owned()),
            Ok(Err(error)) => (HealthState::Unknown, error.to_string()),
            Ok(Ok(response)) if response.status().is_success() => {
                (HealthState::Healthy, response.status().to_string())
            }
            Ok(Ok(response)) => (HealthState::Unhealthy, response.status().to_string()),
        }
    }
}

#[async_trait]
impl Target for DockerTarget {
    fn fleet_for(&self, release: &str, image: &str) -> FleetRef {
        FleetRef {
            id: convert::docker_name(&format!("{}-{release}", self.environment)),
            release: release.to_owned(),
            image: image.to_owned(),
        }
    }

    /// Points the proxy at the live fleet's running containers (started if stopped).
    async fn adopt(&self, live: Option<&FleetRef>) -> Result<(), TargetError> {
        let Some(live) = live else {
            return Ok(());
        };
        for container in self.containers(live).await? {
            self.start_instance(live, &convert::name_of(&container))
                .await?;
        }
        self.switch_traffic(live).await
    }

    async fn launch_fleet(&self, fleet: &FleetRef, count: u32) -> Result<Fleet, TargetError> {
        self.ensure_network().await?;
        let mut instances = Vec::new();
        for index in 0..count {
            let name = format!("{}-{index}", fleet.id);
            self.start_instance(fleet, &name).await?;
            instances.push(name);
        }
        Ok(Fleet {
            fleet: fleet.clone(),
            instances,
        })
    }

    async fn instance_health(&self, fleet: &FleetRef) -> Result<Vec<InstanceHealth>, TargetError> {
        let containers = self.containers(fleet).await?;
        let checks = containers.iter().map(|container| self.check(container));
        Ok(futures::future::join_all(checks).await)
    }

    async fn switch_traffic(&self, to: &FleetRef) -> Result<(), TargetError> {
        let containers = self.containers(to).await?;
        let backends: Vec<_> = containers
            .iter()
            .filter_map(|c| convert::address_on(c, &self.network, self.port))
            .collect();
        if backends.is_empty() {
            let reason = format!("fleet {} has no container on {}", to.id, self.network);
            return Err(TargetError::refused("switch traffic", reason));
        }
        self.proxy.route(to.clone(), backends);
        Ok(())
    }

    async fn current_live(&self) -> Result<Option<FleetRef>, TargetError> {
        Ok(self.proxy.live())
    }

    /// A no-op: docker has no launch template; every fleet is launched from the image its
    /// deployment names.
    async fn update_launch_template(&self, _image: &str) -> Result<(), TargetError> {
        Ok(())
    }

    async fn retire_fleet(&self, fleet: &FleetRef) -> Result<(), TargetError> {
        if self.proxy.live().is_some_and(|live| live.same(fleet)) {
            return Err(TargetError::RetireLive {
                fleet: fleet.id.clone(),
            });
        }
        let remaining = self.proxy.drain(&fleet.id, self.drain_timeout).await;
        if remaining > 0 {
            tracing::warn!(fleet = %fleet.id, remaining, "drain timed out; removing anyway");
        }
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

    async fn list_fleets(&self) -> Result<Vec<FleetRef>, TargetError> {
        let containers = self
            .docker
            .list_containers(Some(convert::list_options(&self.labels)))
            .await
            .map_err(|e| platform(format!("list containers of {}", self.environment), e))?;
        Ok(convert::fleets_of(&containers))
    }
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
