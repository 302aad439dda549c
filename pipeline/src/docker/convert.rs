//! Pure conversions from engine requests to Docker API structs.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, Mount, MountTypeEnum,
    NetworkCreateRequest, NetworkingConfig, VolumeCreateOptions,
};
use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions, ListVolumesOptions};

use crate::engine::{ContainerConfig, Labels, NetworkAttachment};

/// The create-container body for `config`: joined to its network under its alias, with the
/// volume mounted and the labels set.
pub fn container_body(config: &ContainerConfig) -> ContainerCreateBody {
    let env = config
        .env
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let mounts = config.mount.as_ref().map(|mount| {
        vec![Mount {
            target: Some(mount.target.clone()),
            source: Some(mount.volume.clone()),
            typ: Some(MountTypeEnum::VOLUME),
            ..Default::default()
        }]
    });
    let network_mode = match &config.network {
        Some(NetworkAttachment {
            lane: Some(lane), ..
        }) => format!("container:{lane}"),
        Some(attachment) => attachment.network.clone(),
        None => "none".to_owned(),
    };
    let own_endpoint = config.network.as_ref().filter(|a| a.lane.is_none());
    let networking_config = own_endpoint.map(|attachment| {
        let endpoint = EndpointSettings {
            aliases: Some(vec![attachment.alias.clone()]),
            ..Default::default()
        };
        NetworkingConfig {
            endpoints_config: Some(HashMap::from([(attachment.network.clone(), endpoint)])),
        }
    });
    ContainerCreateBody {
        image: Some(config.image.clone()),
        env: Some(env),
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        working_dir: config.workdir.clone(),
        labels: Some(hash_map(&config.labels)),
        host_config: Some(HostConfig {
            network_mode: Some(network_mode),
            mounts,
            ..Default::default()
        }),
        networking_config,
        ..Default::default()
    }
}

/// `body` with no log kept by dockerd: the output goes only to whoever is attached, so a
/// flood costs dockerd no disk and, once the reader stops, no time.
pub fn without_log(mut body: ContainerCreateBody) -> ContainerCreateBody {
    let host_config = body.host_config.get_or_insert_with(Default::default);
    host_config.log_config = Some(HostConfigLogConfig {
        typ: Some("none".to_owned()),
        config: None,
    });
    body
}

/// A lane's container: `image` sleeping on `network` under `labels`, with no name there but
/// its address, and no log.
pub fn lane_body(image: &str, network: &str, labels: &Labels) -> ContainerCreateBody {
    without_log(ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(vec!["sleep".to_owned(), "infinity".to_owned()]),
        labels: Some(hash_map(labels)),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// What a gated container's shell waits for on stdin before it runs the command.
pub const GATE_OPEN: &[u8] = b"go\n";

/// The shell of a gated container: it reads one line from stdin and runs the command (its
/// arguments) only if the line is `go`. If stdin ends first (whoever staged it went away) it
/// exits 125 without running anything. The command gets no stdin, like any other container.
const GATE_SCRIPT: &str =
    r#"IFS= read -r gate && [ "$gate" = go ] || exit 125; exec "$@" </dev/null"#;

/// `body` (which has an entrypoint) behind a gate: `/bin/sh` runs [`GATE_SCRIPT`] with the
/// entrypoint and command as its arguments, stdin open to the attached client only.
pub fn gated(mut body: ContainerCreateBody) -> ContainerCreateBody {
    let mut command = body.entrypoint.take().unwrap_or_default();
    command.extend(body.cmd.take().unwrap_or_default());
    body.entrypoint = Some(vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        GATE_SCRIPT.to_owned(),
        "slipway-gate".to_owned(),
    ]);
    body.cmd = Some(command);
    body.open_stdin = Some(true);
    body.stdin_once = Some(true);
    body.attach_stdin = Some(true);
    body
}

/// A labelled bridge network.
pub fn network_request(name: &str, labels: &Labels) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: name.to_owned(),
        driver: Some("bridge".to_owned()),
        labels: Some(hash_map(labels)),
        ..Default::default()
    }
}

/// A labelled local volume.
pub fn volume_request(name: &str, labels: &Labels) -> VolumeCreateOptions {
    VolumeCreateOptions {
        name: Some(name.to_owned()),
        driver: Some("local".to_owned()),
        labels: Some(hash_map(labels)),
        ..Default::default()
    }
}

fn label_filter(label: &str) -> Option<HashMap<String, Vec<String>>> {
    Some(HashMap::from([(
        "label".to_owned(),
        vec![label.to_owned()],
    )]))
}

/// All containers, stopped ones included, carrying `label` (`key=value`).
pub fn list_containers_options(label: &str) -> ListContainersOptions {
    ListContainersOptions {
        all: true,
        filters: label_filter(label),
        ..Default::default()
    }
}

pub fn list_networks_options(label: &str) -> ListNetworksOptions {
    ListNetworksOptions {
        filters: label_filter(label),
    }
}

pub fn list_volumes_options(label: &str) -> ListVolumesOptions {
    ListVolumesOptions {
        filters: label_filter(label),
    }
}

fn hash_map(labels: &Labels) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::{NetworkAttachment, VolumeMount};

    fn config() -> ContainerConfig {
        ContainerConfig {
            name: "slipway-hello-1-b1-test".to_owned(),
            image: "slipway/debian:bookworm".to_owned(),
            env: BTreeMap::from([
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x=y".to_owned()),
            ]),
            entrypoint: Some(vec!["/bin/sh".to_owned(), "-e".to_owned(), "-c".to_owned()]),
            cmd: Some(vec!["echo hi".to_owned()]),
            workdir: Some("/workspace".to_owned()),
            network: Some(NetworkAttachment {
                network: "slipway-hello-1-b1".to_owned(),
                alias: "test".to_owned(),
                lane: None,
            }),
            mount: Some(VolumeMount {
                volume: "slipway-hello-1-b1-workspace".to_owned(),
                target: "/workspace".to_owned(),
            }),
            labels: BTreeMap::from([("slipway.build".to_owned(), "b1".to_owned())]),
        }
    }

    #[test]
    fn container_joins_its_network_under_its_alias_with_the_workspace_mounted() {
        let body = container_body(&config());
        assert_eq!(body.image.as_deref(), Some("slipway/debian:bookworm"));
        assert_eq!(body.env, Some(vec!["A=1".to_owned(), "B=x=y".to_owned()]));
        assert_eq!(body.cmd, Some(vec!["echo hi".to_owned()]));
        assert_eq!(body.working_dir.as_deref(), Some("/workspace"));
        assert_eq!(body.labels.unwrap()["slipway.build"], "b1");
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("slipway-hello-1-b1"));
        let mount = &host.mounts.unwrap()[0];
        assert_eq!(
            mount.source.as_deref(),
            Some("slipway-hello-1-b1-workspace")
        );
        assert_eq!(mount.target.as_deref(), Some("/workspace"));
        assert_eq!(mount.typ, Some(MountTypeEnum::VOLUME));
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(
            endpoints["slipway-hello-1-b1"].aliases,
            Some(vec!["test".to_owned()])
        );
    }

    #[test]
    fn a_step_keeps_no_log_in_dockerd_and_the_rest_of_its_body() {
        let body = without_log(container_body(&config()));
        let host = body.host_config.unwrap();
        assert_eq!(host.log_config.unwrap().typ.as_deref(), Some("none"));
        assert_eq!(host.network_mode.as_deref(), Some("slipway-hello-1-b1"));
        assert_eq!(body.cmd, Some(vec!["echo hi".to_owned()]));
        assert_eq!(
            container_body(&config()).host_config.unwrap().log_config,
            None
        );
    }

    #[test]
    fn a_service_keeps_the_image_entrypoint_and_mounts_nothing() {
        let mut service = config();
        service.entrypoint = None;
        service.cmd = None;
        service.mount = None;
        let body = container_body(&service);
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, None);
        assert_eq!(body.host_config.unwrap().mounts, None);
    }

    #[test]
    fn a_container_without_network_gets_network_mode_none_and_no_endpoints() {
        let mut helper = config();
        helper.network = None;
        let body = container_body(&helper);
        assert_eq!(
            body.host_config.unwrap().network_mode.as_deref(),
            Some("none")
        );
        assert_eq!(body.networking_config, None);
    }

    #[test]
    fn listings_filter_by_label_and_include_stopped_containers() {
        let options = list_containers_options("slipway.build=b1");
        assert!(options.all);
        assert_eq!(
            options.filters.unwrap()["label"],
            vec!["slipway.build=b1".to_owned()]
        );
        let labels = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        assert_eq!(network_request("n", &labels).labels.unwrap()["k"], "v");
        assert_eq!(volume_request("v", &labels).labels.unwrap()["k"], "v");
    }
}
