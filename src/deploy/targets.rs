//! Builds each environment's deployment target from its configuration: a docker
//! environment gets its proxy (serving from now on) and a [`DockerTarget`]; an aws one an
//! [`AwsTarget`] over the SDK configured for its region and endpoint. Which image of a
//! release each environment deploys follows from its target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use slipway_deployer::aws::InstanceEnvironment;
use slipway_deployer::{
    aws, AwsSettings, AwsTarget, DeployPolicy, DockerTarget, HealthPolicy, Proxy, Target,
};
use tokio::task::JoinSet;
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

/// An environment's target, and the same target as an [`AwsTarget`] when it is one (for
/// what only AWS can show: groups, launch template versions, AMIs).
pub struct BuiltTarget {
    pub target: Arc<dyn Target>,
    pub aws: Option<Arc<AwsTarget>>,
}

/// The target of `environment` of `project`. A docker environment's proxy binds its listen
/// address now and serves inside `tasks` until they are aborted.
pub async fn build(
    project: &Project,
    environment: &Environment,
    server_id: Uuid,
    docker: &Docker,
    tasks: &mut JoinSet<()>,
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
            })
        }
        _ => {
            let listen = environment.listen.with_context(|| {
                format!(
                    "environment {} of {project} has no listen address",
                    environment.name
                )
            })?;
            let (proxy, serve) = Proxy::bind(listen).await.with_context(|| {
                format!(
                    "cannot listen on {listen} for environment {} of {project}",
                    environment.name
                )
            })?;
            tasks.spawn(serve);
            // Qualified by project, so two projects' `dev` fleets never share names.
            let qualified = format!("{project}-{}", environment.name);
            let target = DockerTarget::new(
                docker.clone(),
                &qualified,
                &format!("slipway-{qualified}"),
                proxy,
                labels,
                APP_PORT,
            )
            .with_health_path(&environment.health_path)
            .with_variables(variables);
            Ok(BuiltTarget {
                target: Arc::new(target),
                aws: None,
            })
        }
    }
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
