//! Pure conversions between the docker target's fleets and Docker API structs.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use bollard::models::{
    ContainerCreateBody, ContainerSummary, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::ListContainersOptions;

use crate::target::FleetRef;

pub const OWNER: &str = "slipway.owner";
pub const ENVIRONMENT: &str = "slipway.environment";
pub const RELEASE: &str = "slipway.release";
pub const FLEET: &str = "slipway.fleet";
pub const IMAGE: &str = "slipway.image";
/// What a container is to its environment: an [`INSTANCE`] of a fleet, or its load balancer.
pub const ROLE: &str = "slipway.role";
pub const INSTANCE: &str = "instance";

/// The labels every object of `environment` carries: ours plus the caller's extras.
pub fn environment_labels(
    environment: &str,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = extra.clone();
    labels.insert(OWNER.to_owned(), "slipway".to_owned());
    labels.insert(ENVIRONMENT.to_owned(), environment.to_owned());
    labels
}

/// The labels of one instance of `fleet`.
pub fn fleet_labels(
    environment_labels: &BTreeMap<String, String>,
    fleet: &FleetRef,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = environment_labels.clone().into_iter().collect();
    labels.insert(FLEET.to_owned(), fleet.id.clone());
    labels.insert(RELEASE.to_owned(), fleet.release.clone());
    labels.insert(IMAGE.to_owned(), fleet.image.clone());
    labels.insert(ROLE.to_owned(), INSTANCE.to_owned());
    labels
}

/// The fleet a container belongs to, by its label.
pub fn fleet_id(container: &ContainerSummary) -> Option<&str> {
    container.labels.as_ref()?.get(FLEET).map(String::as_str)
}

/// When an object's `labels` are not the environment's (`ours`), who it belongs to: the
/// labels that differ, or that it was not made by Slipway.
pub fn foreign_owner(
    labels: Option<&HashMap<String, String>>,
    ours: &BTreeMap<String, String>,
) -> Option<String> {
    let empty = HashMap::new();
    let labels = labels.unwrap_or(&empty);
    if labels.get(OWNER).map(String::as_str) != Some("slipway") {
        return Some("it was not made by Slipway".to_owned());
    }
    let differ: Vec<String> = ours
        .keys()
        .filter(|key| labels.get(*key) != ours.get(*key))
        .map(|key| format!("{key}={}", labels.get(key).map_or("-", String::as_str)))
        .collect();
    (!differ.is_empty()).then(|| differ.join(", "))
}

/// A container name or fleet id made of what Docker accepts (`[a-zA-Z0-9_.-]`).
pub fn docker_name(raw: &str) -> String {
    raw.chars()
        .map(|c| match c.is_ascii_alphanumeric() || "_.-".contains(c) {
            true => c,
            false => '-',
        })
        .collect()
}

/// The create body of one instance: the fleet's image on `network`, told its `PORT` and
/// the application's `variables`.
pub fn instance_body(
    fleet: &FleetRef,
    network: &str,
    port: u16,
    environment_labels: &BTreeMap<String, String>,
    variables: &BTreeMap<String, String>,
) -> ContainerCreateBody {
    let mut env: Vec<String> = variables
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    env.push(format!("PORT={port}"));
    ContainerCreateBody {
        image: Some(fleet.image.clone()),
        env: Some(env),
        labels: Some(fleet_labels(environment_labels, fleet)),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            // Kept running by dockerd, as the load balancer is, whether Slipway runs or not.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// All containers (stopped included) with every one of `labels`.
pub fn list_options(labels: &BTreeMap<String, String>) -> ListContainersOptions {
    let filters = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_owned(), filters)])),
        ..Default::default()
    }
}

/// The fleets the containers belong to, by their labels, each once, ordered by id.
pub fn fleets_of(containers: &[ContainerSummary]) -> Vec<FleetRef> {
    let mut fleets = BTreeMap::new();
    for container in containers {
        let labels = container.labels.clone().unwrap_or_default();
        let (Some(id), Some(release), Some(image)) =
            (labels.get(FLEET), labels.get(RELEASE), labels.get(IMAGE))
        else {
            continue;
        };
        fleets.entry(id.clone()).or_insert_with(|| FleetRef {
            id: id.clone(),
            release: release.clone(),
            image: image.clone(),
        });
    }
    fleets.into_values().collect()
}

/// The container's address on `network`, when it has one.
pub fn address_on(container: &ContainerSummary, network: &str, port: u16) -> Option<SocketAddr> {
    let networks = container.network_settings.as_ref()?.networks.as_ref()?;
    let ip: IpAddr = networks.get(network)?.ip_address.as_ref()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// The container's address on any of its networks (an instance made before the environment's
/// network took the installation's name: the load balancer, on the host's network, reaches
/// every bridge).
pub fn any_address(container: &ContainerSummary, port: u16) -> Option<SocketAddr> {
    let networks = container.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort();
    names
        .into_iter()
        .find_map(|name| address_on(container, name, port))
}

/// The container's name without Docker's leading `/`.
pub fn name_of(container: &ContainerSummary) -> String {
    let names = container.names.clone().unwrap_or_default();
    let name = names.first().map_or("", |n| n.trim_start_matches('/'));
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerSummaryNetworkSettings, EndpointSettings};

    use super::*;

    fn fleet() -> FleetRef {
        FleetRef {
            id: "dev-v2".to_owned(),
            release: "v2".to_owned(),
            image: "app:v2".to_owned(),
        }
    }

    fn summary(fleet: &FleetRef, ip: &str) -> ContainerSummary {
        let labels = fleet_labels(&environment_labels("dev", &BTreeMap::new()), fleet);
        let endpoint = EndpointSettings {
            ip_address: Some(ip.to_owned()),
            ..Default::default()
        };
        ContainerSummary {
            names: Some(vec![format!("/{}-0", fleet.id)]),
            labels: Some(labels),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: Some(HashMap::from([("net".to_owned(), endpoint)])),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn instance_body_sets_image_port_network_and_labels() {
        let extra = BTreeMap::from([("test".to_owned(), "t1".to_owned())]);
        let variables = BTreeMap::from([("LOG_LEVEL".to_owned(), "info".to_owned())]);
        let body = instance_body(
            &fleet(),
            "net",
            8000,
            &environment_labels("dev", &extra),
            &variables,
        );
        assert_eq!(body.image.as_deref(), Some("app:v2"));
        assert_eq!(body.env.unwrap(), ["LOG_LEVEL=info", "PORT=8000"]);
        assert_eq!(
            body.host_config.unwrap().network_mode.as_deref(),
            Some("net")
        );
        let labels = body.labels.unwrap();
        for (key, value) in [
            (OWNER, "slipway"),
            (ENVIRONMENT, "dev"),
            (FLEET, "dev-v2"),
            (RELEASE, "v2"),
            (IMAGE, "app:v2"),
            ("test", "t1"),
            (ROLE, INSTANCE),
        ] {
            assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
        }
    }

    #[test]
    fn list_options_filter_on_every_label() {
        let labels = environment_labels("dev", &BTreeMap::new());
        let mut filters = list_options(&labels).filters.unwrap()["label"].clone();
        filters.sort();
        assert_eq!(
            filters,
            ["slipway.environment=dev", "slipway.owner=slipway"]
        );
    }

    #[test]
    fn fleets_are_grouped_and_addresses_read_from_the_network() {
        let other = FleetRef {
            id: "dev-v1".to_owned(),
            release: "v1".to_owned(),
            image: "app:v1".to_owned(),
        };
        let containers = [
            summary(&fleet(), "172.18.0.2"),
            summary(&fleet(), "172.18.0.3"),
            summary(&other, "172.18.0.4"),
        ];
        assert_eq!(fleets_of(&containers), [other, fleet()]);
        let address = address_on(&containers[0], "net", 8000).unwrap();
        assert_eq!(address.to_string(), "172.18.0.2:8000");
        assert_eq!(address_on(&containers[0], "other", 8000), None);
        assert_eq!(
            any_address(&containers[0], 8000).unwrap().to_string(),
            "172.18.0.2:8000"
        );
        assert_eq!(name_of(&containers[0]), "dev-v2-0");
    }

    #[test]
    fn objects_of_another_installation_are_told_apart() {
        let ours = BTreeMap::from([("slipway.deploy-server".to_owned(), "a1".to_owned())]);
        let labels = |server: &str| {
            HashMap::from([
                (OWNER.to_owned(), "slipway".to_owned()),
                ("slipway.deploy-server".to_owned(), server.to_owned()),
            ])
        };
        assert_eq!(foreign_owner(Some(&labels("a1")), &ours), None);
        assert_eq!(
            foreign_owner(Some(&labels("b2")), &ours).as_deref(),
            Some("slipway.deploy-server=b2")
        );
        assert_eq!(
            foreign_owner(None, &ours).as_deref(),
            Some("it was not made by Slipway")
        );
    }

    #[test]
    fn names_keep_only_what_docker_accepts() {
        assert_eq!(docker_name("hello/dev v1"), "hello-dev-v1");
    }
}
