//! The `aws` target: a fleet is an Auto Scaling group per release, launched from a launch
//! template version with the release's AMI and attached to the idle one of two target
//! groups; the ALB listener's default action is the switch.

mod calls;
mod convert;
mod describe;
mod user_data;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum};

pub use describe::FleetDescription;
pub use user_data::InstanceEnvironment;

use crate::error::TargetError;
use crate::target::{Fleet, FleetRef, InstanceHealth, Target};

/// What an aws environment is made of; the load balancer, the target group pair, the
/// launch template and the subnets exist beforehand (the operator's infrastructure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsSettings {
    pub project: String,
    pub environment: String,
    /// The ALB listener whose default action forwards to the live target group.
    pub listener_arn: String,
    /// Blue and green: each fleet is attached to the one the listener does not forward to.
    pub target_groups: [String; 2],
    pub launch_template_id: String,
    pub subnets: Vec<String>,
    /// Set in each new launch template version when given.
    pub instance_type: Option<String>,
    /// Tags put on every group besides Slipway's own (project, environment, release).
    pub tags: BTreeMap<String, String>,
    /// How long a retiring fleet's targets may stay `draining` before it is deleted.
    pub drain_timeout: Duration,
    /// The application's configuration, written by each launch template version's user
    /// data to `/etc/default/<package>`; `None` leaves the template's user data as it is.
    pub instance_environment: Option<InstanceEnvironment>,
}

/// The SDK configuration for `region`, with `endpoint_url` (moto in tests and the demo)
/// replacing AWS's endpoints when given; credentials come from the usual chain.
pub async fn sdk_config(region: &str, endpoint_url: Option<&str>) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region.to_owned()));
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// One environment on EC2, ELBv2 and Auto Scaling.
pub struct AwsTarget {
    ec2: aws_sdk_ec2::Client,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    autoscaling: aws_sdk_autoscaling::Client,
    settings: AwsSettings,
    tags: BTreeMap<String, String>,
}

impl AwsTarget {
    pub fn new(config: &SdkConfig, settings: AwsSettings) -> AwsTarget {
        let tags =
            convert::environment_tags(&settings.project, &settings.environment, &settings.tags);
        AwsTarget {
            ec2: aws_sdk_ec2::Client::new(config),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(config),
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            settings,
            tags,
        }
    }
}

#[async_trait]
impl Target for AwsTarget {
    /// The group's name: `<project>-<environment>-<release>`.
    fn fleet_for(&self, release: &str, image: &str) -> FleetRef {
        FleetRef {
            id: format!(
                "{}-{}-{release}",
                self.settings.project, self.settings.environment
            ),
            release: release.to_owned(),
            image: image.to_owned(),
        }
    }

    /// Nothing to rebuild: the listener itself records which target group serves.
    async fn adopt(&self, _live: Option<&FleetRef>) -> Result<(), TargetError> {
        Ok(())
    }

    async fn launch_fleet(&self, fleet: &FleetRef, count: u32) -> Result<Fleet, TargetError> {
        if self.group(fleet).await?.is_none() {
            self.create_group(fleet, count).await?;
        }
        let group = self.group(fleet).await?.ok_or_else(|| {
            TargetError::refused(
                format!("launch fleet {}", fleet.id),
                "group not found after creation",
            )
        })?;
        Ok(Fleet {
            fleet: fleet.clone(),
            instances: group.instances,
        })
    }

    async fn instance_health(&self, fleet: &FleetRef) -> Result<Vec<InstanceHealth>, TargetError> {
        let Some(group) = self.group(fleet).await? else {
            return Err(TargetError::refused(
                format!("health of {}", fleet.id),
                "no such group",
            ));
        };
        let Some(target_group) = group.target_groups.first() else {
            return Err(TargetError::refused(
                format!("health of {}", fleet.id),
                "group has no target group",
            ));
        };
        self.target_health(target_group, &group.instances).await
    }

    async fn switch_traffic(&self, to: &FleetRef) -> Result<(), TargetError> {
        let action = format!("switch traffic to {}", to.id);
        let group = self
            .group(to)
            .await?
            .ok_or_else(|| TargetError::refused(&action, "no such group"))?;
        let target_group = group
            .target_groups
            .first()
            .ok_or_else(|| TargetError::refused(&action, "group has no target group"))?;
        let forward = Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn(target_group)
            .build();
        self.elb
            .modify_listener()
            .listener_arn(&self.settings.listener_arn)
            .default_actions(forward)
            .send()
            .await
            .map_err(|e| platform(action, e))?;
        Ok(())
    }

    async fn current_live(&self) -> Result<Option<FleetRef>, TargetError> {
        let Some(live) = self.live_target_group().await? else {
            return Ok(None);
        };
        let groups = self.groups().await?;
        let serving = groups.into_iter().find(|g| g.target_groups.contains(&live));
        Ok(serving.map(|g| g.fleet))
    }

    /// Makes the launch template version with `image` the default one.
    async fn update_launch_template(&self, image: &str) -> Result<(), TargetError> {
        let version = self.template_version(image).await?;
        self.ec2
            .modify_launch_template()
            .launch_template_id(&self.settings.launch_template_id)
            .default_version(version.to_string())
            .send()
            .await
            .map_err(|e| platform(format!("set launch template default version {version}"), e))?;
        Ok(())
    }

    /// Drains the group's targets, scales it to zero and deletes it.
    async fn retire_fleet(&self, fleet: &FleetRef) -> Result<(), TargetError> {
        if self
            .current_live()
            .await?
            .is_some_and(|live| live.same(fleet))
        {
            return Err(TargetError::RetireLive {
                fleet: fleet.id.clone(),
            });
        }
        let Some(group) = self.group(fleet).await? else {
            return Ok(());
        };
        self.drain(&group).await?;
        self.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&fleet.id)
            .min_size(0)
            .max_size(0)
            .desired_capacity(0)
            .send()
            .await
            .map_err(|e| platform(format!("scale {} to zero", fleet.id), e))?;
        self.autoscaling
            .delete_auto_scaling_group()
            .auto_scaling_group_name(&fleet.id)
            .force_delete(true)
            .send()
            .await
            .map_err(|e| platform(format!("delete auto scaling group {}", fleet.id), e))?;
        Ok(())
    }

    async fn list_fleets(&self) -> Result<Vec<FleetRef>, TargetError> {
        Ok(self.groups().await?.into_iter().map(|g| g.fleet).collect())
    }
}

/// An SDK error with its whole chain of causes in the message.
pub(super) fn platform<E: std::error::Error>(action: impl Into<String>, error: E) -> TargetError {
    TargetError::platform(action, DisplayErrorContext(error).to_string())
}
