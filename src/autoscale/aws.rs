//! The agents' machines as an EC2 Auto Scaling group: the group (its desired capacity,
//! instances and their scale-in protection) through Auto Scaling, launch times and
//! terminations through EC2. Each instance's user data starts `slipway agent
//! --instance-id <its id>` (the operator's launch template).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{Filter, InstanceStateName};
use chrono::{DateTime, Utc};

use super::{Group, Instance, Lifecycle, Provider};

/// The most instance ids one EC2 filter or Auto Scaling protection call takes.
const IDS_PER_CALL: usize = 50;

pub struct AwsProvider {
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    group: String,
}

impl AwsProvider {
    /// The group `group` in `region`, through `endpoint_url` when given (moto in tests);
    /// credentials come from the usual chain. Nothing is called yet.
    pub async fn new(group: &str, region: &str, endpoint_url: Option<&str>) -> AwsProvider {
        let config = slipway_deployer::aws::sdk_config(region, endpoint_url).await;
        AwsProvider::with_config(&config, group)
    }

    /// The group `group` through the SDK configured by `config`.
    pub fn with_config(config: &aws_config::SdkConfig, group: &str) -> AwsProvider {
        AwsProvider {
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            ec2: aws_sdk_ec2::Client::new(config),
            group: group.to_owned(),
        }
    }

    /// The launch time and state of each of `ids` that EC2 knows. A filter, unlike a list
    /// of ids, is no error when an id is unknown.
    async fn ec2_instances(
        &self,
        ids: &[String],
    ) -> anyhow::Result<BTreeMap<String, (Option<DateTime<Utc>>, bool)>> {
        let mut found = BTreeMap::new();
        for chunk in ids.chunks(IDS_PER_CALL) {
            let filter = Filter::builder()
                .name("instance-id")
                .set_values(Some(chunk.to_vec()))
                .build();
            let mut next_token = None;
            loop {
                let page = self
                    .ec2
                    .describe_instances()
                    .filters(filter.clone())
                    .set_next_token(next_token)
                    .send()
                    .await
                    .map_err(|e| anyhow!("DescribeInstances: {}", DisplayErrorContext(e)))?;
                for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                    let Some(id) = instance.instance_id() else {
                        continue;
                    };
                    let launched = instance
                        .launch_time()
                        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()));
                    let state = instance.state().and_then(|s| s.name());
                    let alive = !matches!(
                        state,
                        Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
                    );
                    found.insert(id.to_owned(), (launched, alive));
                }
                next_token = page.next_token().map(str::to_owned);
                if next_token.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Provider for AwsProvider {
    async fn instances(&self) -> anyhow::Result<Group> {
        let described = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.group)
            .send()
            .await
            .map_err(|e| anyhow!("DescribeAutoScalingGroups: {}", DisplayErrorContext(e)))?;
        let group = described
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(self.group.as_str()))
            .with_context(|| format!("there is no Auto Scaling group named {:?}", self.group))?;
        let ids: Vec<String> = group
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        let launched = self.ec2_instances(&ids).await?;
        let now = Utc::now();
        let instances = group
            .instances()
            .iter()
            .filter_map(|instance| {
                let id = instance.instance_id()?.to_owned();
                let lifecycle = match instance.lifecycle_state().map(|s| s.as_str()) {
                    Some("Pending") => Lifecycle::Pending,
                    Some("InService") => Lifecycle::InService,
                    other => Lifecycle::Other(other.unwrap_or("unknown").to_owned()),
                };
                // EC2 may not list an instance the group just launched: launched now.
                let launched_at = launched.get(&id).and_then(|(at, _)| *at).unwrap_or(now);
                Some(Instance {
                    id,
                    lifecycle,
                    protected: instance.protected_from_scale_in().unwrap_or(false),
                    launched_at,
                })
            })
            .collect();
        Ok(Group {
            desired: group.desired_capacity().unwrap_or(0).max(0) as u32,
            instances,
        })
    }

    async fn gone(&self, ids: &[String]) -> anyhow::Result<Vec<String>> {
        let known = self.ec2_instances(ids).await?;
        let alive: BTreeSet<&String> = known
            .iter()
            .filter(|(_, (_, alive))| *alive)
            .map(|(id, _)| id)
            .collect();
        Ok(ids
            .iter()
            .filter(|id| !alive.contains(id))
            .cloned()
            .collect())
    }

    async fn set_desired(&self, desired: u32) -> anyhow::Result<()> {
        self.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(&self.group)
            .desired_capacity(desired as i32)
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| anyhow!("SetDesiredCapacity: {}", DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn protect(&self, ids: &[String]) -> anyhow::Result<()> {
        for chunk in ids.chunks(IDS_PER_CALL) {
            self.autoscaling
                .set_instance_protection()
                .auto_scaling_group_name(&self.group)
                .set_instance_ids(Some(chunk.to_vec()))
                .protected_from_scale_in(true)
                .send()
                .await
                .map_err(|e| anyhow!("SetInstanceProtection: {}", DisplayErrorContext(e)))?;
        }
        Ok(())
    }

    async fn detach(&self, id: &str) -> anyhow::Result<()> {
        self.autoscaling
            .detach_instances()
            .auto_scaling_group_name(&self.group)
            .instance_ids(id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .map_err(|e| anyhow!("DetachInstances: {}", DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn terminate(&self, id: &str) -> anyhow::Result<()> {
        match self.ec2.terminate_instances().instance_ids(id).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().and_then(|e| e.code())
                    == Some("InvalidInstanceID.NotFound") =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow!("TerminateInstances: {}", DisplayErrorContext(e))),
        }
    }
}
