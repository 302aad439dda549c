//! The aws target against moto: launch template versions, one Auto Scaling group per
//! release on the idle target group, the listener as the switch, retirement of the old group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use slipway_deployer::aws::{AwsSettings, AwsTarget, InstanceEnvironment};
use slipway_deployer::{DeployPolicy, DeploymentState, HealthPolicy, Target};

use crate::moto::{Infra, Moto};
use crate::support::{request, Stores};

pub fn policy() -> DeployPolicy {
    DeployPolicy {
        health: HealthPolicy {
            interval: Duration::from_millis(100),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            timeout: Duration::from_secs(10),
        },
        watch: Duration::from_millis(300),
        retention: Duration::from_secs(3600),
        lock_ttl: Duration::from_secs(10),
    }
}

pub fn settings(infra: &Infra) -> AwsSettings {
    AwsSettings {
        project: "hello".to_owned(),
        environment: "prod".to_owned(),
        listener_arn: infra.listener_arn.clone(),
        target_groups: infra.target_groups.clone(),
        launch_template_id: infra.launch_template_id.clone(),
        subnets: infra.subnets.clone(),
        instance_type: Some("t3.small".to_owned()),
        tags: BTreeMap::from([("team".to_owned(), "web".to_owned())]),
        drain_timeout: Duration::from_secs(5),
        instance_environment: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_then_v2_moves_listener_and_template_and_retires_the_old_group() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    let infra = Infra::named(&config, "hello-prod").await;
    let target = Arc::new(AwsTarget::new(&config, settings(&infra)));
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&config);
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let autoscaling = aws_sdk_autoscaling::Client::new(&config);
    let stores = Stores::default();
    let deployer = stores.deployer("prod", "a", target.clone(), policy());

    let v1 = deployer
        .deploy(&request("v1", &infra.amis[0], 2))
        .await
        .unwrap();
    assert_eq!(v1.state, DeploymentState::Succeeded, "{:?}", v1.reason);
    assert_eq!(v1.green_instances.len(), 2);
    // The listener started on the first group, so v1 went to the idle second one.
    assert_eq!(forwarded(&elb, &infra).await, infra.target_groups[1]);

    let v2 = deployer
        .deploy(&request("v2", &infra.amis[1], 2))
        .await
        .unwrap();
    assert_eq!(v2.state, DeploymentState::RetainingBlue, "{:?}", v2.reason);
    assert_eq!(forwarded(&elb, &infra).await, infra.target_groups[0]);
    assert_eq!(default_image(&ec2, &infra).await, infra.amis[1]);
    let live = target.current_live().await.unwrap().unwrap();
    assert_eq!(live.id, "hello-prod-v2");
    assert_eq!(
        groups(&autoscaling).await,
        ["hello-prod-v1", "hello-prod-v2"]
    );
    let tagged = autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("hello-prod-v2")
        .send()
        .await
        .unwrap();
    let tags: BTreeMap<&str, &str> = tagged.auto_scaling_groups()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(tags["slipway:project"], "hello");
    assert_eq!(tags["slipway:environment"], "prod");
    assert_eq!(tags["slipway:release"], "v2");
    assert_eq!(tags["team"], "web");

    let later = Utc::now() + chrono::Duration::hours(2);
    let retired = deployer.retire_expired(later).await.unwrap();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].state, DeploymentState::Succeeded);
    assert_eq!(groups(&autoscaling).await, ["hello-prod-v2"]);
    assert_eq!(forwarded(&elb, &infra).await, infra.target_groups[0]);
}

/// moto (5.x) cannot start an Auto Scaling group from a launch template version that has
/// user data (an assertion in its launch template model), so this checks the version the
/// target makes, without a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launch_template_version_carries_the_environments_configuration_as_user_data() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    let infra = Infra::named(&config, "hello-prod").await;
    let mut settings = settings(&infra);
    settings.instance_environment = Some(InstanceEnvironment {
        package: "hello".to_owned(),
        variables: BTreeMap::from([
            ("LOG_LEVEL".to_owned(), "info".to_owned()),
            (
                "DATABASE_URL".to_owned(),
                "postgres://app:it's@db/app".to_owned(),
            ),
        ]),
    });
    let target = AwsTarget::new(&config, settings);
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let versions = || async {
        ec2.describe_launch_template_versions()
            .launch_template_id(&infra.launch_template_id)
            .send()
            .await
            .unwrap()
            .launch_template_versions()
            .len()
    };
    let before = versions().await;
    target.update_launch_template(&infra.amis[0]).await.unwrap();
    let default = ec2
        .describe_launch_template_versions()
        .launch_template_id(&infra.launch_template_id)
        .versions("$Default")
        .send()
        .await
        .unwrap();
    let data = default.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    assert_eq!(data.image_id(), Some(infra.amis[0].as_str()));
    let user_data = data.user_data().expect("the version carries user data");
    let script = base64::engine::general_purpose::STANDARD
        .decode(user_data)
        .unwrap();
    let script = String::from_utf8(script).unwrap();
    assert!(
        script.contains("cat > /etc/default/hello <<'SLIPWAY_END'\nDATABASE_URL='postgres://app:it'\\''s@db/app'\nLOG_LEVEL='info'\nSLIPWAY_END\n"),
        "{script}"
    );
    // The same image and configuration again: the version is found, not made twice.
    target.update_launch_template(&infra.amis[0]).await.unwrap();
    assert_eq!(versions().await, before + 1);
}

/// The AMI of the launch template's default version.
pub async fn default_image(ec2: &aws_sdk_ec2::Client, infra: &Infra) -> String {
    let default = ec2
        .describe_launch_template_versions()
        .launch_template_id(&infra.launch_template_id)
        .versions("$Default")
        .send()
        .await
        .unwrap();
    let data = default.launch_template_versions()[0].launch_template_data();
    data.and_then(|d| d.image_id()).unwrap().to_owned()
}

pub async fn forwarded(elb: &aws_sdk_elasticloadbalancingv2::Client, infra: &Infra) -> String {
    let listeners = elb
        .describe_listeners()
        .listener_arns(&infra.listener_arn)
        .send()
        .await
        .unwrap();
    let action = &listeners.listeners()[0].default_actions()[0];
    action.target_group_arn().unwrap().to_owned()
}

async fn groups(autoscaling: &aws_sdk_autoscaling::Client) -> Vec<String> {
    let groups = autoscaling
        .describe_auto_scaling_groups()
        .send()
        .await
        .unwrap();
    let mut names: Vec<String> = groups
        .auto_scaling_groups()
        .iter()
        .filter_map(|g| g.auto_scaling_group_name().map(str::to_owned))
        .collect();
    names.sort();
    names
}
