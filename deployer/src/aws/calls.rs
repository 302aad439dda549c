//! The AWS API calls the aws target is made of: reading groups back by their tags, the
//! listener's live target group, launch template versions, group creation and draining.

use std::time::Duration;

use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag};
use aws_sdk_ec2::types::RequestLaunchTemplateData;
use aws_sdk_elasticloadbalancingv2::types::{ActionTypeEnum, TargetDescription};

use super::convert::{self, Group, NOT_REGISTERED};
use super::{platform, AwsTarget};
use crate::error::TargetError;
use crate::target::{FleetRef, InstanceHealth};

impl AwsTarget {
    /// Every group of this environment, read back from its tags.
    pub(super) async fn groups(&self) -> Result<Vec<Group>, TargetError> {
        let mut groups = Vec::new();
        let mut next_token = None;
        loop {
            let page = self
                .autoscaling
                .describe_auto_scaling_groups()
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| platform("describe auto scaling groups", e))?;
            let ours = page.auto_scaling_groups().iter();
            groups.extend(ours.filter_map(|g| convert::group_of(g, &self.tags)));
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                return Ok(groups);
            }
        }
    }

    pub(super) async fn group(&self, fleet: &FleetRef) -> Result<Option<Group>, TargetError> {
        let groups = self.groups().await?;
        Ok(groups.into_iter().find(|g| g.fleet.same(fleet)))
    }

    /// The target group the listener forwards to.
    pub(super) async fn live_target_group(&self) -> Result<Option<String>, TargetError> {
        let listeners = self
            .elb
            .describe_listeners()
            .listener_arns(&self.settings.listener_arn)
            .send()
            .await
            .map_err(|e| platform("describe listener", e))?;
        let actions = listeners
            .listeners()
            .iter()
            .flat_map(|l| l.default_actions());
        let forward = actions
            .filter(|a| a.r#type() == Some(&ActionTypeEnum::Forward))
            .find_map(|a| a.target_group_arn());
        Ok(forward.map(str::to_owned))
    }

    /// The launch template version whose AMI is `image` (and whose user data carries the
    /// environment's configuration, told apart by its fingerprint in the description),
    /// created when none is.
    pub(super) async fn template_version(&self, image: &str) -> Result<i64, TargetError> {
        let environment = self.settings.instance_environment.as_ref();
        let description = match environment {
            Some(environment) => format!("slipway {image} config {}", environment.fingerprint()),
            None => format!("slipway {image}"),
        };
        let versions = self
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&self.settings.launch_template_id)
            .send()
            .await
            .map_err(|e| platform("describe launch template versions", e))?;
        let existing = versions
            .launch_template_versions()
            .iter()
            .filter(|v| v.launch_template_data().and_then(|d| d.image_id()) == Some(image))
            .filter(|v| {
                environment.is_none() || v.version_description() == Some(description.as_str())
            })
            .filter_map(|v| v.version_number())
            .max();
        if let Some(version) = existing {
            return Ok(version);
        }
        let data = RequestLaunchTemplateData::builder()
            .image_id(image)
            .set_instance_type(self.settings.instance_type.as_deref().map(Into::into))
            .set_user_data(environment.map(|e| e.user_data()))
            .build();
        let created = self
            .ec2
            .create_launch_template_version()
            .launch_template_id(&self.settings.launch_template_id)
            .source_version("$Default")
            .version_description(description)
            .launch_template_data(data)
            .send()
            .await
            .map_err(|e| platform(format!("create launch template version for {image}"), e))?;
        created
            .launch_template_version()
            .and_then(|v| v.version_number())
            .ok_or_else(|| {
                TargetError::refused(
                    "create launch template version",
                    "no version number returned",
                )
            })
    }

    pub(super) async fn create_group(
        &self,
        fleet: &FleetRef,
        count: u32,
    ) -> Result<(), TargetError> {
        let live = self.live_target_group().await?;
        let idle = convert::idle_target_group(&self.settings.target_groups, live.as_deref());
        let occupant = self
            .groups()
            .await?
            .into_iter()
            .find(|g| g.target_groups.iter().any(|t| t == idle));
        if let Some(occupant) = occupant {
            let reason = format!(
                "idle target group {idle} still holds fleet {}",
                occupant.fleet.id
            );
            return Err(TargetError::refused(
                format!("launch fleet {}", fleet.id),
                reason,
            ));
        }
        let version = self.template_version(&fleet.image).await?;
        let template = LaunchTemplateSpecification::builder()
            .launch_template_id(&self.settings.launch_template_id)
            .version(version.to_string())
            .build();
        let mut request = self
            .autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(&fleet.id)
            .launch_template(template)
            .min_size(count as i32)
            .max_size(count as i32)
            .desired_capacity(count as i32)
            .vpc_zone_identifier(self.settings.subnets.join(","))
            .target_group_arns(idle);
        for (key, value) in convert::fleet_tags(&self.tags, fleet) {
            let tag = Tag::builder()
                .resource_id(&fleet.id)
                .resource_type("auto-scaling-group")
                .key(key)
                .value(value)
                .propagate_at_launch(true)
                .build();
            request = request.tags(tag);
        }
        request
            .send()
            .await
            .map_err(|e| platform(format!("create auto scaling group {}", fleet.id), e))?;
        Ok(())
    }

    /// Deregisters the group's instances still registered (and not already draining) and waits (up to the drain
    /// timeout) until the target group has finished draining them. Only registered ones:
    /// ELBv2 refuses a target that is not, and a retirement repeated after a crash finds
    /// some or all of them already deregistered.
    pub(super) async fn drain(&self, group: &Group) -> Result<(), TargetError> {
        for target_group in &group.target_groups {
            let health = self.target_health(target_group, &group.instances).await?;
            let registered: Vec<&str> = health
                .iter()
                .filter(|h| h.detail != NOT_REGISTERED && !h.detail.starts_with("draining"))
                .map(|h| h.instance.as_str())
                .collect();
            if registered.is_empty() {
                continue;
            }
            let targets = registered
                .iter()
                .map(|id| TargetDescription::builder().id(*id).build());
            self.elb
                .deregister_targets()
                .target_group_arn(target_group)
                .set_targets(Some(targets.collect()))
                .send()
                .await
                .map_err(|e| {
                    platform(
                        format!("deregister {} from {target_group}", group.fleet.id),
                        e,
                    )
                })?;
            let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
            while tokio::time::Instant::now() < deadline {
                let health = self.target_health(target_group, &group.instances).await?;
                if health.iter().all(|h| h.detail == NOT_REGISTERED) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        Ok(())
    }

    pub(super) async fn target_health(
        &self,
        target_group: &str,
        instances: &[String],
    ) -> Result<Vec<InstanceHealth>, TargetError> {
        let health = self
            .elb
            .describe_target_health()
            .target_group_arn(target_group)
            .send()
            .await
            .map_err(|e| platform(format!("describe target health of {target_group}"), e))?;
        Ok(convert::instance_health(
            instances,
            health.target_health_descriptions(),
        ))
    }
}
