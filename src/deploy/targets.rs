//! Builds each environment's deployment target from its configuration: a docker
//! environment a [`DockerTarget`] with its load balancer's settings (HAProxy in a container,
//! started or adopted by the deploy manager's recovery); an aws one an [`AwsTarget`] over the
//! SDK configured for its region and endpoint. Which image of a release each environment
//! deploys follows from its target.
//!
//! Every name a docker environment gives dockerd (instances, network, load balancer) starts
//! with `slipway-<installation>-`, the first 8 hex digits of the id every server of one
//! database shares, so that two installations on one dockerd never collide.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use slipway_deployer::aws::InstanceEnvironment;
use slipway_deployer::{
    aws, AwsSettings, AwsTarget, DeployPolicy, DockerSettings, DockerTarget, HealthPolicy,
    LoadBalancerSettings, Target,
};
use uuid::Uuid;

use crate::config::{Environment, Project, TargetKind};
use crate::store::deployments::ImageWanted;

/// The port a release's app listens on inside its container (given as `PORT`).
pub const APP_PORT: u16 = 8000;

/// Label every container and network a server's deployments create carries, with its id.
/// Not the builds' `slipway.server`: a restarting server reaps everything carrying that
/// one, and deployed fleets must outlive the server.
pub const SERVER_LABEL: &str = "slipway.deploy-server";
/// Label naming the project of a deployed container or network.
pub const PROJECT_LABEL: &str = "slipway.project";

/// How long a retiring docker fleet's requests in flight may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// An environment's target, and the same target as an [`AwsTarget`] or [`DockerTarget`] (for
/// what only it can show: groups, launch template versions and AMIs; the load balancer).
pub struct BuiltTarget {
    pub target: Arc<dyn Target>,
    pub aws: Option<Arc<AwsTarget>>,
    pub docker: Option<Arc<DockerTarget>>,
}

/// What every server of one installation (one database) puts in the names it gives dockerd.
pub fn installation(server_id: Uuid) -> String {
    server_id.simple().to_string()[..8].to_owned()
}

/// The target of `environment` of `project`. A docker environment's certificate and key are
/// read now; its load balancer's files live under `<data_dir>/balancers/`.
pub async fn build(
    project: &Project,
    environment: &Environment,
    server_id: Uuid,
    docker: &Docker,
    data_dir: &Path,
    load_balancer_image: &str,
) -> anyhow::Result<BuiltTarget> {
    let variables = variables(environment);
    let package = package_of(project);
    let project = project.name.as_str();
    let mut labels = BTreeMap::new();
    labels.insert(SERVER_LABEL.to_owned(), server_id.to_string());
    labels.insert(PROJECT_LABEL.to_owned(), project.to_owned());
    match (environment.target, &environment.aws) {
        (TargetKind::Aws, Some(settings)) => {
            let config = aws::sdk_config(&settings.region, settings.endpoint_url.as_deref()).await;
            let settings = AwsSettings {
                project: project.to_owned(),
                environment: environment.name.clone(),
                listener_arn: settings.listener_arn.clone(),
                target_groups: settings.target_groups.clone(),
                launch_template_id: settings.launch_template_id.clone(),
                subnets: settings.subnets.clone(),
                instance_type: Some(settings.instance_type.clone()),
                tags: labels,
                drain_timeout: Duration::from_secs(30),
                instance_environment: (!variables.is_empty())
                    .then_some(InstanceEnvironment { package, variables }),
            };
            let aws = Arc::new(AwsTarget::new(&config, settings));
            Ok(BuiltTarget {
                target: aws.clone(),
                aws: Some(aws),
                docker: None,
            })
        }
        _ => {
            let listen = environment.listen.with_context(|| {
                format!(
                    "environment {} of {project} has no listen address",
                    environment.name
                )
            })?;
            let tls_pem = match &environment.tls {
                Some(files) => Some(read_tls(&files.cert, &files.key).with_context(|| {
                    format!("TLS of environment {} of {project}", environment.name)
                })?),
                None => None,
            };
            // Qualified by project, so two projects' `dev` fleets never share names.
            let qualified = format!("{project}-{}", environment.name);
            let prefix = format!("slipway-{}-", installation(server_id));
            let settings = DockerSettings {
                environment: qualified.clone(),
                network: format!("{prefix}{qualified}"),
                name_prefix: prefix.clone(),
                labels,
                port: APP_PORT,
                variables,
                drain_timeout: DRAIN_TIMEOUT,
                load_balancer: LoadBalancerSettings {
                    image: load_balancer_image.to_owned(),
                    container: format!("{prefix}{qualified}-lb"),
                    dir: data_dir.join("balancers").join(&qualified),
                    listen,
                    tls_pem,
                    max_request_body_bytes: environment.max_request_body_bytes,
                    remote: !environment.docker_host.starts_with("unix://"),
                    health_path: environment.health_path.clone(),
                    labels: BTreeMap::new(),
                },
            };
            let docker = Arc::new(DockerTarget::new(docker.clone(), settings));
            Ok(BuiltTarget {
                target: docker.clone(),
                aws: None,
                docker: Some(docker),
            })
        }
    }
}

/// The certificate chain and key as one PEM, as HAProxy reads it; each file must hold what
/// its name says.
fn read_tls(cert: &Path, key: &Path) -> anyhow::Result<String> {
    let read = |path: &Path, what: &str, marker: &str| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} {}", path.display()))?;
        anyhow::ensure!(
            text.contains(marker),
            "{} holds no {what} (no `{marker}` line)",
            path.display()
        );
        Ok(text)
    };
    let mut pem = read(cert, "certificate", "-----BEGIN CERTIFICATE-----")?;
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem.push_str(&read(key, "private key", "PRIVATE KEY-----")?);
    Ok(pem)
}

/// The image of a release `environment` deploys: the Docker image, or the AMI of its region.
pub fn image_wanted(environment: &Environment) -> ImageWanted {
    match (environment.target, &environment.aws) {
        (TargetKind::Aws, Some(aws)) => ImageWanted::Ami {
            region: aws.region.clone(),
        },
        _ => ImageWanted::Docker,
    }
}

/// The application's variables of `environment`, exposed for its instances only.
fn variables(environment: &Environment) -> BTreeMap<String, String> {
    environment
        .env
        .iter()
        .map(|(name, value)| (name.clone(), value.expose().to_owned()))
        .collect()
}

/// The package whose `/etc/default/` file AMI instances get: the project's first declared
/// package, else the package named like the project.
fn package_of(project: &Project) -> String {
    project
        .packages
        .first()
        .cloned()
        .unwrap_or_else(|| project.name.clone())
}

/// The deployer's timings for `environment`.
pub fn policy(environment: &Environment) -> DeployPolicy {
    DeployPolicy {
        health: HealthPolicy {
            timeout: environment.health_timeout,
            ..HealthPolicy::default()
        },
        watch: environment.watch,
        retention: environment.retention,
        lock_ttl: Duration::from_secs(30),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_joined_and_a_wrong_or_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("dev.crt");
        let key = dir.path().join("dev.key");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        )
        .unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let pem = read_tls(&cert, &key).unwrap();
        assert!(
            pem.contains("-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----"),
            "{pem}"
        );

        let err = read_tls(&key, &key).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{} holds no certificate (no `-----BEGIN CERTIFICATE-----` line)",
                key.display()
            )
        );
        let err = read_tls(&cert, &cert).unwrap_err().to_string();
        assert!(err.contains("holds no private key"), "{err}");
        // The key's content never appears in an error.
        let missing = dir.path().join("missing.key");
        let err = format!("{:#}", read_tls(&cert, &missing).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "cannot read the private key {}",
                missing.display()
            )),
            "{err}"
        );
        assert!(!err.contains("MIIE"), "{err}");
    }
}
