//! The EC2 calls around an AMI bake: the bake's own security group, reaping what a failed or
//! interrupted bake left (found by its id), and the retention of a project's AMIs.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{
    Filter, Image, ImageState, InstanceStateName, ResourceType, Tag, TagSpecification,
};
use aws_sdk_ec2::Client;

use super::{bake_resource_name, SourceAmi, BAKE_KEY_TAG, BAKE_TAG, PROJECT_TAG};
use crate::packer::BakeError;

/// How long reaping waits for the bake's instances to terminate (their security group cannot
/// go before), and for AWS to release the group once they have.
const TERMINATION_PATIENCE: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_secs(2);

/// One region of one AWS account, as the server's credentials see it (the SDK's default
/// chain: environment, profile, instance role).
#[derive(Debug, Clone)]
pub struct AmiAccount {
    ec2: Client,
    region: String,
}

/// What [`AmiAccount::reap_bake`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    pub instances: Vec<String>,
    pub images: Vec<String>,
    pub snapshots: Vec<String>,
    pub volumes: Vec<String>,
    pub key_pairs: Vec<String>,
    pub security_groups: Vec<String>,
}

impl Reaped {
    pub fn is_empty(&self) -> bool {
        *self == Reaped::default()
    }
}

/// One of a project's AMIs, as its tags describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectAmi {
    pub id: String,
    /// `v3`, from the `release` tag.
    pub release: Option<String>,
    /// The bake that made it, from its `slipway_bake` tag.
    pub bake_id: Option<String>,
    /// From its `bake_key` tag. Packer tags an AMI only once it is `available`, as its
    /// bake's last step in AWS: an available AMI with a bake key is whole.
    pub bake_key: Option<String>,
    pub available: bool,
    pub snapshots: Vec<String>,
}

impl ProjectAmi {
    /// Whether its bake made it whole: available, with the tags Packer sets last.
    pub fn finished(&self) -> bool {
        self.available && self.bake_key.is_some()
    }
}

/// What [`AmiAccount::retain`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    pub deregistered: Vec<String>,
    pub deleted_snapshots: Vec<String>,
}

impl AmiAccount {
    /// The account in `region`, through `endpoint_url` when given (moto), else AWS's.
    pub async fn connect(region: &str, endpoint_url: Option<&str>) -> AmiAccount {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region.to_owned()));
        if let Some(endpoint) = endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        AmiAccount {
            ec2: Client::new(&loader.load().await),
            region: region.to_owned(),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Makes the bake's security group, `slipway-bake-<id>` tagged with the id, allowing SSH
    /// (as Packer's own temporary group would), in the subnet's VPC or the default one.
    pub async fn create_bake_security_group(
        &self,
        bake_id: &str,
        subnet_id: Option<&str>,
    ) -> Result<String, BakeError> {
        let vpc = match subnet_id {
            Some(subnet) => self
                .ec2
                .describe_subnets()
                .subnet_ids(subnet)
                .send()
                .await
                .map_err(|e| aws("DescribeSubnets", e))?
                .subnets()
                .first()
                .and_then(|s| s.vpc_id().map(str::to_owned)),
            None => None,
        };
        let group = self
            .ec2
            .create_security_group()
            .group_name(bake_resource_name(bake_id))
            .description("Slipway AMI bake: SSH from Packer")
            .set_vpc_id(vpc)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::SecurityGroup)
                    .tags(tag(BAKE_TAG, bake_id))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| aws("CreateSecurityGroup", e))?;
        let id = group.group_id().unwrap_or_default().to_owned();
        self.ec2
            .authorize_security_group_ingress()
            .group_id(&id)
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22)
            .cidr_ip("0.0.0.0/0")
            .send()
            .await
            .map_err(|e| aws("AuthorizeSecurityGroupIngress", e))?;
        Ok(id)
    }

    /// Removes everything carrying the bake's id: terminates its instances (and waits), then
    /// deregisters its AMIs and deletes their snapshots, its volumes, its key pair and its
    /// security groups. Idempotent; for a failed bake, and at start for one a crash
    /// interrupted (whose Packer is gone). Returns what it removed.
    ///
    /// AMIs in `keep` and their snapshots are never touched: an AMI a release already
    /// records under the same bake id (a rebake that reuses the id) stays.
    #[tracing::instrument(skip(self, keep), fields(region = %self.region), err)]
    pub async fn reap_bake(
        &self,
        bake_id: &str,
        keep: &BTreeSet<String>,
    ) -> Result<Reaped, BakeError> {
        let mut reaped = Reaped::default();
        let by_bake = || filter(&format!("tag:{BAKE_TAG}"), bake_id);

        let instances = self
            .ec2
            .describe_instances()
            .filters(by_bake())
            .send()
            .await
            .map_err(|e| aws("DescribeInstances", e))?;
        let live: Vec<String> = instances
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()),
                    Some(InstanceStateName::Terminated)
                )
            })
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        if !live.is_empty() {
            self.ec2
                .terminate_instances()
                .set_instance_ids(Some(live.clone()))
                .send()
                .await
                .map_err(|e| aws("TerminateInstances", e))?;
            self.wait_terminated(&live).await?;
            reaped.instances = live;
        }

        let images = self
            .ec2
            .describe_images()
            .owners("self")
            .filters(by_bake())
            .send()
            .await
            .map_err(|e| aws("DescribeImages", e))?;
        let mut snapshots: BTreeSet<String> = BTreeSet::new();
        let mut kept_snapshots: BTreeSet<String> = BTreeSet::new();
        for image in images.images() {
            let Some(id) = image.image_id() else { continue };
            if keep.contains(id) {
                kept_snapshots.extend(snapshots_of(image));
                continue;
            }
            snapshots.extend(snapshots_of(image));
            self.deregister(id).await?;
            reaped.images.push(id.to_owned());
        }
        let tagged = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(by_bake())
            .send()
            .await
            .map_err(|e| aws("DescribeSnapshots", e))?;
        snapshots.extend(
            tagged
                .snapshots()
                .iter()
                .filter_map(|s| s.snapshot_id().map(str::to_owned)),
        );
        for snapshot in snapshots.difference(&kept_snapshots) {
            if self.delete_snapshot(snapshot).await? {
                reaped.snapshots.push(snapshot.clone());
            }
        }

        let volumes = self
            .ec2
            .describe_volumes()
            .filters(by_bake())
            .send()
            .await
            .map_err(|e| aws("DescribeVolumes", e))?;
        for volume in volumes.volumes().iter().filter_map(|v| v.volume_id()) {
            match self.ec2.delete_volume().volume_id(volume).send().await {
                Ok(_) => reaped.volumes.push(volume.to_owned()),
                Err(e) if code(&e) == Some("InvalidVolume.NotFound") => {}
                Err(e) => return Err(aws("DeleteVolume", e)),
            }
        }

        let name = bake_resource_name(bake_id);
        let pairs = self
            .ec2
            .describe_key_pairs()
            .filters(filter("key-name", &name))
            .send()
            .await
            .map_err(|e| aws("DescribeKeyPairs", e))?;
        if !pairs.key_pairs().is_empty() {
            self.ec2
                .delete_key_pair()
                .key_name(&name)
                .send()
                .await
                .map_err(|e| aws("DeleteKeyPair", e))?;
            reaped.key_pairs.push(name);
        }

        let groups = self
            .ec2
            .describe_security_groups()
            .filters(by_bake())
            .send()
            .await
            .map_err(|e| aws("DescribeSecurityGroups", e))?;
        for group in groups.security_groups().iter().filter_map(|g| g.group_id()) {
            self.delete_security_group(group).await?;
            reaped.security_groups.push(group.to_owned());
        }
        if !reaped.is_empty() {
            tracing::info!(bake = %bake_id, ?reaped, "removed what the AMI bake left");
        }
        Ok(reaped)
    }

    /// The AMI id `source` names in this region: an id as it is (once it exists), or the most
    /// recent AMI of the filter's owners whose name matches. What a bake starts from, resolved
    /// before its key is computed, so that a newer base AMI makes a new key.
    pub async fn resolve_source(&self, source: &SourceAmi) -> Result<String, BakeError> {
        let mut request = self.ec2.describe_images();
        let wanted = match source {
            SourceAmi::Id(id) => {
                request = request.image_ids(id);
                format!("the source AMI {id}")
            }
            SourceAmi::Filter { owners, name } => {
                for owner in owners {
                    request = request.owners(owner);
                }
                request = request.filters(filter("name", name));
                format!("an AMI named {name:?} owned by {}", owners.join(", "))
            }
        };
        let not_found = || BakeError::InvalidRequest {
            field: "source_ami",
            reason: format!("{wanted} does not exist in {}", self.region),
        };
        let images = match request.send().await {
            Ok(images) => images,
            Err(e) if code(&e) == Some("InvalidAMIID.NotFound") => return Err(not_found()),
            Err(e) => return Err(aws("DescribeImages", e)),
        };
        images
            .images()
            .iter()
            .filter(|image| image.image_id().is_some())
            .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
            .and_then(|image| image.image_id().map(str::to_owned))
            .ok_or_else(not_found)
    }

    /// The AMIs that instances in this region run or may run again (pending, running,
    /// stopping or stopped): live and warm fleets' AMIs, which retention never touches.
    pub async fn amis_in_use(&self) -> Result<BTreeSet<String>, BakeError> {
        let mut in_use = BTreeSet::new();
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(
                        ["pending", "running", "stopping", "stopped"]
                            .map(str::to_owned)
                            .to_vec(),
                    ))
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws("DescribeInstances", e))?;
            for reservation in page.reservations() {
                in_use.extend(
                    reservation
                        .instances()
                        .iter()
                        .filter_map(|i| i.image_id().map(str::to_owned)),
                );
            }
        }
        Ok(in_use)
    }

    /// The AMIs carrying the bake's id.
    pub async fn bake_images(&self, bake_id: &str) -> Result<BTreeSet<String>, BakeError> {
        let images = self
            .ec2
            .describe_images()
            .owners("self")
            .filters(filter(&format!("tag:{BAKE_TAG}"), bake_id))
            .send()
            .await
            .map_err(|e| aws("DescribeImages", e))?;
        Ok(images
            .images()
            .iter()
            .filter_map(|i| i.image_id().map(str::to_owned))
            .collect())
    }

    /// The project's AMIs in this region: owned by this account, tagged with the project and
    /// a bake id (so only Slipway's), newest first.
    pub async fn project_amis(&self, project: &str) -> Result<Vec<ProjectAmi>, BakeError> {
        let images = self
            .ec2
            .describe_images()
            .owners("self")
            .filters(filter(&format!("tag:{PROJECT_TAG}"), project))
            .filters(Filter::builder().name("tag-key").values(BAKE_TAG).build())
            .send()
            .await
            .map_err(|e| aws("DescribeImages", e))?;
        let mut images: Vec<&Image> = images.images().iter().collect();
        images.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
        Ok(images
            .into_iter()
            .filter_map(|image| {
                let tag = |key: &str| {
                    let found = image.tags().iter().find(|t| t.key() == Some(key));
                    found.and_then(|t| t.value().map(str::to_owned))
                };
                Some(ProjectAmi {
                    id: image.image_id()?.to_owned(),
                    release: tag("release"),
                    bake_id: tag(BAKE_TAG),
                    bake_key: tag(BAKE_KEY_TAG),
                    available: image.state() == Some(&ImageState::Available),
                    snapshots: snapshots_of(image),
                })
            })
            .collect())
    }

    /// Deregisters every AMI of `project` not in `keep` (the caller's: live, warm, and the
    /// last releases rollback may need) and deletes its snapshots. Returns exactly what it
    /// deleted. An AMI in `keep` is never touched, whatever its tags say.
    #[tracing::instrument(skip(self, keep), fields(region = %self.region, kept = keep.len()), err)]
    pub async fn retain(
        &self,
        project: &str,
        keep: &BTreeSet<String>,
    ) -> Result<Retained, BakeError> {
        let mut retained = Retained::default();
        for ami in self.project_amis(project).await? {
            if keep.contains(&ami.id) {
                continue;
            }
            self.deregister(&ami.id).await?;
            retained.deregistered.push(ami.id.clone());
            for snapshot in &ami.snapshots {
                if self.delete_snapshot(snapshot).await? {
                    retained.deleted_snapshots.push(snapshot.clone());
                }
            }
            tracing::info!(ami = %ami.id, release = ?ami.release, snapshots = ?ami.snapshots, "deregistered an AMI past retention");
        }
        Ok(retained)
    }

    /// Copies the finished AMI `source_ami` of `source` (another region of the account) into
    /// this region, as the bake whose id it carries: the copy gets the source's name,
    /// description and tags, the `bake_key` tag last, once it and its snapshots are available
    /// and tagged (so a copy with a key is whole, as a baked AMI is). CopyImage is idempotent
    /// on the bake's id and tags the copy as it is made, so a crash leaves at most a copy
    /// tagged with the bake's id ([`AmiAccount::reap_bake`] finds it). Returns the copy's id.
    #[tracing::instrument(skip(self, source), fields(region = %self.region, from = %source.region), err)]
    pub async fn copy_from(
        &self,
        source: &AmiAccount,
        source_ami: &str,
        patience: Duration,
    ) -> Result<String, BakeError> {
        let described = source
            .ec2
            .describe_images()
            .image_ids(source_ami)
            .send()
            .await
            .map_err(|e| aws("DescribeImages", e))?;
        let Some(image) = described.images().first() else {
            return Err(BakeError::InvalidRequest {
                field: "source_ami",
                reason: format!("{source_ami} does not exist in {}", source.region),
            });
        };
        let tags: Vec<Tag> = image.tags().to_vec();
        let Some(bake_id) = tags
            .iter()
            .find(|t| t.key() == Some(BAKE_TAG))
            .and_then(|t| t.value())
        else {
            return Err(BakeError::InvalidRequest {
                field: "source_ami",
                reason: format!("{source_ami} carries no {BAKE_TAG} tag: Slipway did not bake it"),
            });
        };
        let (finishing, growing): (Vec<Tag>, Vec<Tag>) = tags
            .iter()
            .cloned()
            .partition(|t| t.key() == Some(BAKE_KEY_TAG));
        if finishing.is_empty() {
            return Err(BakeError::InvalidRequest {
                field: "source_ami",
                reason: format!("{source_ami} is not finished (no {BAKE_KEY_TAG} tag)"),
            });
        }
        let at_creation = |kind: ResourceType| {
            TagSpecification::builder()
                .resource_type(kind)
                .set_tags(Some(growing.clone()))
                .build()
        };
        let copied = self
            .ec2
            .copy_image()
            .source_region(&source.region)
            .source_image_id(source_ami)
            .name(image.name().unwrap_or(source_ami))
            .set_description(image.description().map(str::to_owned))
            .client_token(format!("{bake_id}-{}", self.region))
            .tag_specifications(at_creation(ResourceType::Image))
            .tag_specifications(at_creation(ResourceType::Snapshot))
            .send()
            .await
            .map_err(|e| aws("CopyImage", e))?;
        let copy = copied
            .image_id()
            .ok_or_else(|| BakeError::Aws {
                action: "CopyImage",
                message: "no image id in the answer".to_owned(),
            })?
            .to_owned();
        // Where tagging at creation is not honoured, the tags follow at once.
        self.tag(std::slice::from_ref(&copy), &growing).await?;
        let snapshots = self.wait_available(&copy, patience).await?;
        let mut resources = snapshots;
        self.tag(&resources, &growing).await?;
        resources.insert(0, copy.clone());
        self.tag(&resources, &finishing).await?;
        Ok(copy)
    }

    /// Waits until the AMI is `available`, at most `patience`; returns its snapshots.
    async fn wait_available(
        &self,
        ami: &str,
        patience: Duration,
    ) -> Result<Vec<String>, BakeError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let answer = self
                .ec2
                .describe_images()
                .image_ids(ami)
                .send()
                .await
                .map_err(|e| aws("DescribeImages", e))?;
            match answer
                .images()
                .first()
                .and_then(|image| Some((image, image.state()?)))
            {
                Some((image, ImageState::Available)) => return Ok(snapshots_of(image)),
                Some((_, ImageState::Failed | ImageState::Error | ImageState::Invalid)) => {
                    return Err(BakeError::Aws {
                        action: "CopyImage",
                        message: format!("the copy {ami} failed in {}", self.region),
                    })
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(BakeError::Aws {
                        action: "CopyImage",
                        message: format!("the copy {ami} was not available within {patience:?}"),
                    })
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    async fn tag(&self, resources: &[String], tags: &[Tag]) -> Result<(), BakeError> {
        if resources.is_empty() || tags.is_empty() {
            return Ok(());
        }
        self.ec2
            .create_tags()
            .set_resources(Some(resources.to_vec()))
            .set_tags(Some(tags.to_vec()))
            .send()
            .await
            .map_err(|e| aws("CreateTags", e))?;
        Ok(())
    }

    /// Deletes the bake's own security group, waiting while AWS still holds it for the
    /// instance that just terminated.
    pub(crate) async fn delete_security_group(&self, group: &str) -> Result<(), BakeError> {
        let deadline = tokio::time::Instant::now() + TERMINATION_PATIENCE;
        loop {
            match self
                .ec2
                .delete_security_group()
                .group_id(group)
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if code(&e) == Some("InvalidGroup.NotFound") => return Ok(()),
                Err(e)
                    if code(&e) == Some("DependencyViolation")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(aws("DeleteSecurityGroup", e)),
            }
        }
    }

    async fn wait_terminated(&self, instances: &[String]) -> Result<(), BakeError> {
        let deadline = tokio::time::Instant::now() + TERMINATION_PATIENCE;
        loop {
            let answer = self
                .ec2
                .describe_instances()
                .set_instance_ids(Some(instances.to_vec()))
                .send()
                .await
                .map_err(|e| aws("DescribeInstances", e))?;
            let done = answer
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .all(|i| {
                    matches!(
                        i.state().and_then(|s| s.name()),
                        Some(InstanceStateName::Terminated)
                    )
                });
            if done {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BakeError::Aws {
                    action: "TerminateInstances",
                    message: format!(
                        "{} not terminated after {TERMINATION_PATIENCE:?}",
                        instances.join(", ")
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn deregister(&self, image: &str) -> Result<(), BakeError> {
        match self.ec2.deregister_image().image_id(image).send().await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("InvalidAMIID.NotFound") => Ok(()),
            Err(e) => Err(aws("DeregisterImage", e)),
        }
    }

    /// Whether the snapshot was there to delete.
    async fn delete_snapshot(&self, snapshot: &str) -> Result<bool, BakeError> {
        match self
            .ec2
            .delete_snapshot()
            .snapshot_id(snapshot)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some("InvalidSnapshot.NotFound") => Ok(false),
            Err(e) => Err(aws("DeleteSnapshot", e)),
        }
    }
}

fn snapshots_of(image: &Image) -> Vec<String> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|ebs| ebs.snapshot_id()))
        .map(str::to_owned)
        .collect()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn code<E: ProvideErrorMetadata, R>(error: &aws_sdk_ec2::error::SdkError<E, R>) -> Option<&str> {
    error.as_service_error().and_then(|e| e.code())
}

fn aws<E>(action: &'static str, error: E) -> BakeError
where
    E: std::error::Error + 'static,
{
    BakeError::Aws {
        action,
        message: DisplayErrorContext(error).to_string(),
    }
}
