//! Pure decisions and conversions of the aws target: tags, fleets read back from Auto
//! Scaling groups, target health, and which of the two target groups is idle.

use std::collections::BTreeMap;

use aws_sdk_autoscaling::types::AutoScalingGroup;
use aws_sdk_elasticloadbalancingv2::types::{TargetHealthDescription, TargetHealthStateEnum};

use crate::target::{FleetRef, HealthState, InstanceHealth};

pub const OWNER: &str = "slipway:owner";
pub const PROJECT: &str = "slipway:project";
pub const ENVIRONMENT: &str = "slipway:environment";
pub const RELEASE: &str = "slipway:release";
pub const IMAGE: &str = "slipway:image";
/// The health detail of an instance its target group does not list.
pub const NOT_REGISTERED: &str = "not registered";

/// One Auto Scaling group of ours: a fleet, where it is attached, what it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub fleet: FleetRef,
    pub target_groups: Vec<String>,
    pub instances: Vec<String>,
    /// The launch template version the group launches from.
    pub launch_template_version: Option<String>,
}

/// The tags of every fleet of the environment: ours plus the caller's extras.
pub fn environment_tags(
    project: &str,
    environment: &str,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut tags = extra.clone();
    tags.insert(OWNER.to_owned(), "slipway".to_owned());
    tags.insert(PROJECT.to_owned(), project.to_owned());
    tags.insert(ENVIRONMENT.to_owned(), environment.to_owned());
    tags
}

/// The tags of `fleet`'s group.
pub fn fleet_tags(
    environment_tags: &BTreeMap<String, String>,
    fleet: &FleetRef,
) -> BTreeMap<String, String> {
    let mut tags = environment_tags.clone();
    tags.insert(RELEASE.to_owned(), fleet.release.clone());
    tags.insert(IMAGE.to_owned(), fleet.image.clone());
    tags
}

/// The group as a fleet of ours, when it carries every one of `environment_tags`.
pub fn group_of(
    group: &AutoScalingGroup,
    environment_tags: &BTreeMap<String, String>,
) -> Option<Group> {
    let tags: BTreeMap<&str, &str> = group
        .tags()
        .iter()
        .filter_map(|tag| Some((tag.key()?, tag.value()?)))
        .collect();
    let ours = environment_tags
        .iter()
        .all(|(key, value)| tags.get(key.as_str()) == Some(&value.as_str()));
    if !ours {
        return None;
    }
    Some(Group {
        fleet: FleetRef {
            id: group.auto_scaling_group_name()?.to_owned(),
            release: (*tags.get(RELEASE)?).to_owned(),
            image: (*tags.get(IMAGE)?).to_owned(),
        },
        target_groups: group.target_group_arns().to_vec(),
        instances: group
            .instances()
            .iter()
            .filter_map(|instance| instance.instance_id().map(str::to_owned))
            .collect(),
        launch_template_version: group
            .launch_template()
            .and_then(|template| template.version())
            .map(str::to_owned),
    })
}

/// The target group of the pair the listener does not forward to.
pub fn idle_target_group<'a>(pair: &'a [String; 2], live: Option<&str>) -> &'a str {
    match live {
        Some(live) if live == pair[0] => &pair[1],
        _ => &pair[0],
    }
}

/// The health of each of `instances` as the target group reports it; an instance it does
/// not list is not registered yet.
pub fn instance_health(
    instances: &[String],
    descriptions: &[TargetHealthDescription],
) -> Vec<InstanceHealth> {
    instances
        .iter()
        .map(|instance| {
            let found = descriptions
                .iter()
                .find(|d| d.target().and_then(|t| t.id()) == Some(instance.as_str()));
            let Some(health) = found.and_then(|d| d.target_health()) else {
                return InstanceHealth {
                    instance: instance.clone(),
                    state: HealthState::Unknown,
                    detail: NOT_REGISTERED.to_owned(),
                };
            };
            let state = match health.state() {
                Some(TargetHealthStateEnum::Healthy) => HealthState::Healthy,
                Some(TargetHealthStateEnum::Unhealthy) => HealthState::Unhealthy,
                _ => HealthState::Unknown,
            };
            let detail = [
                health.state().map(|s| s.as_str()),
                health.reason().map(|r| r.as_str()),
                health.description(),
            ];
            InstanceHealth {
                instance: instance.clone(),
                state,
                detail: detail.into_iter().flatten().collect::<Vec<_>>().join(": "),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use aws_sdk_autoscaling::types::{Instance, TagDescription};
    use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealth};

    use super::*;

    fn group(tags: &BTreeMap<String, String>) -> AutoScalingGroup {
        let mut builder = AutoScalingGroup::builder()
            .auto_scaling_group_name("hello-prod-v2")
            .target_group_arns("arn:tg/green")
            .instances(Instance::builder().instance_id("i-1").build());
        for (key, value) in tags {
            builder = builder.tags(TagDescription::builder().key(key).value(value).build());
        }
        builder.build()
    }

    #[test]
    fn groups_are_read_back_as_fleets_only_when_every_tag_matches() {
        let environment = environment_tags("hello", "prod", &BTreeMap::new());
        let fleet = FleetRef {
            id: "hello-prod-v2".to_owned(),
            release: "v2".to_owned(),
            image: "ami-2".to_owned(),
        };
        let read = group_of(&group(&fleet_tags(&environment, &fleet)), &environment).unwrap();
        assert_eq!(read.fleet, fleet);
        assert_eq!(read.target_groups, ["arn:tg/green"]);
        assert_eq!(read.instances, ["i-1"]);
        let dev = environment_tags("hello", "dev", &BTreeMap::new());
        assert_eq!(
            group_of(&group(&fleet_tags(&dev, &fleet)), &environment),
            None
        );
    }

    #[test]
    fn the_idle_target_group_is_the_other_one() {
        let pair = ["blue".to_owned(), "green".to_owned()];
        assert_eq!(idle_target_group(&pair, Some("blue")), "green");
        assert_eq!(idle_target_group(&pair, Some("green")), "blue");
        assert_eq!(idle_target_group(&pair, None), "blue");
    }

    #[test]
    fn health_maps_states_and_marks_unregistered_instances_unknown() {
        let description = |id: &str, state: TargetHealthStateEnum| {
            TargetHealthDescription::builder()
                .target(TargetDescription::builder().id(id).build())
                .target_health(TargetHealth::builder().state(state).build())
                .build()
        };
        let descriptions = [
            description("i-1", TargetHealthStateEnum::Healthy),
            description("i-2", TargetHealthStateEnum::Unhealthy),
            description("i-9", TargetHealthStateEnum::Healthy),
        ];
        let instances = ["i-1".to_owned(), "i-2".to_owned(), "i-3".to_owned()];
        let states: Vec<HealthState> = instance_health(&instances, &descriptions)
            .into_iter()
            .map(|h| h.state)
            .collect();
        assert_eq!(
            states,
            [
                HealthState::Healthy,
                HealthState::Unhealthy,
                HealthState::Unknown
            ]
        );
    }
}
