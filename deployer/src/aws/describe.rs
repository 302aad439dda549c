//! What an aws environment's fleets look like for `slipway status` and the API: each Auto
//! Scaling group with its instances' target health, its launch template version and AMI.

use serde::Serialize;

use super::{platform, AwsTarget};
use crate::error::TargetError;
use crate::target::InstanceHealth;

/// One Auto Scaling group of the environment, as read from AWS now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetDescription {
    pub auto_scaling_group: String,
    pub release: String,
    /// Whether the listener forwards to the group's target group (else it is kept warm,
    /// or is being launched or retired).
    pub serving: bool,
    pub target_group: Option<String>,
    pub launch_template_id: String,
    /// The version the group launches from.
    pub launch_template_version: Option<String>,
    /// The AMI of that version.
    pub ami: Option<String>,
    /// Each instance of the group as its target group reports it (DescribeTargetHealth).
    pub instances: Vec<InstanceHealth>,
}

impl AwsTarget {
    /// Every group of the environment, the serving one first.
    pub async fn describe_fleets(&self) -> Result<Vec<FleetDescription>, TargetError> {
        let live = self.live_target_group().await?;
        let mut described = Vec::new();
        for group in self.groups().await? {
            let target_group = group.target_groups.first().cloned();
            let instances = match &target_group {
                Some(arn) => self.target_health(arn, &group.instances).await?,
                None => Vec::new(),
            };
            let ami = match &group.launch_template_version {
                Some(version) => self.version_image(version).await?,
                None => None,
            };
            described.push(FleetDescription {
                auto_scaling_group: group.fleet.id,
                release: group.fleet.release,
                serving: live.is_some() && target_group == live,
                target_group,
                launch_template_id: self.settings.launch_template_id.clone(),
                launch_template_version: group.launch_template_version,
                ami,
                instances,
            });
        }
        described.sort_by(|a, b| b.serving.cmp(&a.serving).then(a.release.cmp(&b.release)));
        Ok(described)
    }

    /// The launch template's default version: what instances launched outside Slipway get.
    pub async fn default_template_version(&self) -> Result<Option<i64>, TargetError> {
        let templates = self
            .ec2
            .describe_launch_templates()
            .launch_template_ids(&self.settings.launch_template_id)
            .send()
            .await
            .map_err(|e| platform("describe launch template", e))?;
        Ok(templates
            .launch_templates()
            .first()
            .and_then(|t| t.default_version_number()))
    }

    /// The AMI of one version of the environment's launch template.
    async fn version_image(&self, version: &str) -> Result<Option<String>, TargetError> {
        let versions = self
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&self.settings.launch_template_id)
            .versions(version)
            .send()
            .await
            .map_err(|e| platform(format!("describe launch template version {version}"), e))?;
        Ok(versions
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data())
            .and_then(|d| d.image_id())
            .map(str::to_owned))
    }
}
