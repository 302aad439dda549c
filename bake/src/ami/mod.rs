//! AMI bakes: the settings of Packer's `amazon-ebs` source, the template a bake runs (the
//! project's `packer/slipway.json` with the request's AWS settings applied), and what makes a
//! failed or interrupted bake leave nothing behind in the account ([`AmiAccount`]).
//!
//! Everything a bake creates carries the bake's id: the instance and its volumes
//! (`run_tags`, `run_volume_tags`), the AMI and its snapshots (`tags`, `snapshot_tags`), the
//! temporary key pair (`slipway-bake-<id>`) and the security group Slipway makes when the
//! settings name none (`slipway-bake-<id>`, tagged). [`AmiAccount::reap_bake`] removes them
//! all; [`AmiAccount::retain`] deregisters a project's old AMIs with their snapshots.

mod account;
mod settings;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub use account::{AmiAccount, ProjectAmi, Reaped, Retained};
pub use settings::{
    Communicator, SourceAmi, BAKE_KEY_TAG, BAKE_TAG, MAX_EXTRA_TAGS, PROJECT_TAG, RESERVED_TAGS,
};

use crate::packer::{BakeError, BakeObserver, BakeRequest};

/// The `amazon-ebs` source's settings for one bake (the project's `[projects.ami]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmazonEbsSource {
    pub region: String,
    pub source_ami: SourceAmi,
    pub instance_type: String,
    /// Absent: the region's default VPC.
    pub subnet_id: Option<String>,
    /// Empty: Slipway makes a group for the bake allowing SSH, and deletes it afterwards.
    pub security_group_ids: Vec<String>,
    pub iam_instance_profile: Option<String>,
    /// The source AMI's login user, e.g. `admin` on Debian.
    pub ssh_username: String,
    /// The root volume's size in GiB; absent: the source AMI's.
    pub volume_size: Option<u32>,
    /// Encrypt the root volume, hence the AMI's snapshot (with `kms_key_id`, else AWS's key).
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    /// Added to the AMI's, snapshot's and instance's tags.
    pub tags: BTreeMap<String, String>,
    /// EC2's endpoint instead of AWS's (moto in tests and the demo).
    pub endpoint_url: Option<String>,
    pub communicator: Communicator,
    /// The bake key the caller computed for this request, tagged on the AMI and snapshot.
    pub bake_key: String,
}

impl AmazonEbsSource {
    /// The `-var` pairs of this source (the template declares them); the rest of the settings
    /// are written into the bake's copy of the template by [`prepare_template`].
    pub fn variables(&self) -> Vec<(&'static str, String)> {
        let (filter_name, owners, source_ami) = match &self.source_ami {
            SourceAmi::Id(id) => (String::new(), String::new(), id.clone()),
            SourceAmi::Filter { owners, name } => (name.clone(), owners.join(","), String::new()),
        };
        vec![
            ("region", self.region.clone()),
            ("source_ami", source_ami),
            ("source_ami_filter_name", filter_name),
            ("source_ami_owners", owners),
            ("instance_type", self.instance_type.clone()),
            ("subnet_id", self.subnet_id.clone().unwrap_or_default()),
            ("ssh_username", self.ssh_username.clone()),
            (
                "volume_size",
                self.volume_size.map(|s| s.to_string()).unwrap_or_default(),
            ),
            ("encrypted", self.encrypted.to_string()),
            ("kms_key_id", self.kms_key_id.clone().unwrap_or_default()),
        ]
    }

    /// Refuses values Packer's template engine or AWS would misread.
    pub fn check(&self) -> Result<(), BakeError> {
        let mut words: Vec<(&'static str, &str)> = vec![
            ("region", &self.region),
            ("instance_type", &self.instance_type),
            ("ssh_username", &self.ssh_username),
            ("bake_key", &self.bake_key),
        ];
        match &self.source_ami {
            SourceAmi::Id(id) => words.push(("source_ami", id)),
            SourceAmi::Filter { owners, name } => {
                if owners.is_empty() {
                    return Err(invalid(
                        "source_ami_filter.owners",
                        "name at least one owner",
                    ));
                }
                words.push(("source_ami_filter.name", name));
                words.extend(
                    owners
                        .iter()
                        .map(|o| ("source_ami_filter.owners", o.as_str())),
                );
            }
        }
        for (field, value) in [
            ("subnet_id", &self.subnet_id),
            ("iam_instance_profile", &self.iam_instance_profile),
            ("kms_key_id", &self.kms_key_id),
            ("endpoint_url", &self.endpoint_url),
        ] {
            if let Some(value) = value {
                words.push((field, value));
            }
        }
        words.extend(
            self.security_group_ids
                .iter()
                .map(|g| ("security_group_ids", g.as_str())),
        );
        for (field, value) in words {
            if value.is_empty() || value.contains(|c: char| c.is_whitespace()) || templated(value) {
                return Err(invalid(
                    field,
                    format!("`{value}` must be one non-empty word without `{{{{` or `}}}}`"),
                ));
            }
        }
        if self.tags.len() > MAX_EXTRA_TAGS {
            return Err(invalid(
                "tags",
                format!("at most {MAX_EXTRA_TAGS} extra tags"),
            ));
        }
        for (key, value) in &self.tags {
            if RESERVED_TAGS.contains(&key.as_str()) {
                return Err(invalid(
                    "tags",
                    format!("`{key}` is set by Slipway; choose another tag name"),
                ));
            }
            if key.is_empty() || key.len() > 128 || value.len() > 256 {
                return Err(invalid(
                    "tags",
                    format!("`{key}`: keys are 1 to 128 characters, values at most 256"),
                ));
            }
            if templated(key) || templated(value) || key.starts_with("aws:") {
                return Err(invalid(
                    "tags",
                    format!(
                        "`{key}` or its value has `{{{{`, `}}}}` or the reserved prefix `aws:`"
                    ),
                ));
            }
        }
        if self.kms_key_id.is_some() && !self.encrypted {
            return Err(invalid("kms_key_id", "a KMS key needs `encrypted = true`"));
        }
        if self.volume_size == Some(0) {
            return Err(invalid("volume_size", "a volume holds at least 1 GiB"));
        }
        Ok(())
    }
}

fn templated(value: &str) -> bool {
    value.contains("{{") || value.contains("}}") || value.contains('`')
}

fn invalid(field: &'static str, reason: impl Into<String>) -> BakeError {
    BakeError::InvalidRequest {
        field,
        reason: reason.into(),
    }
}

/// The temporary key pair's name, and the security group's Slipway makes for a bake.
pub fn bake_resource_name(bake_id: &str) -> String {
    format!("slipway-bake-{bake_id}")
}

/// One AMI bake's resources around Packer: the account, the security group Slipway made for
/// it, and its copy of the template.
pub(crate) struct AmiBake {
    account: AmiAccount,
    bake_id: String,
    /// AMIs already carrying the bake id before Packer ran: a failed rebake leaves them.
    earlier: BTreeSet<String>,
    security_group: Option<String>,
    template: PreparedTemplate,
}

impl AmiBake {
    /// Makes the bake's security group (when the settings name none) and its template.
    pub(crate) async fn prepare(
        request: &BakeRequest,
        source: &AmazonEbsSource,
    ) -> Result<AmiBake, BakeError> {
        let account = AmiAccount::connect(&source.region, source.endpoint_url.as_deref()).await;
        let earlier = account.bake_images(&request.bake_id).await?;
        let security_group = if source.security_group_ids.is_empty() {
            Some(
                account
                    .create_bake_security_group(&request.bake_id, source.subnet_id.as_deref())
                    .await?,
            )
        } else {
            None
        };
        let template = prepare_template(
            &request.template,
            &request.scratch_dir,
            source,
            &request.bake_id,
            security_group.as_deref(),
        );
        match template {
            Ok(template) => Ok(AmiBake {
                account,
                bake_id: request.bake_id.clone(),
                earlier,
                security_group,
                template,
            }),
            Err(error) => {
                if let Some(group) = &security_group {
                    if let Err(cleanup) = account.delete_security_group(group).await {
                        tracing::error!(error = %cleanup, %group, "deleting the AMI bake's security group");
                    }
                }
                Err(error)
            }
        }
    }

    pub(crate) fn template(&self) -> &Path {
        &self.template.path
    }

    /// After Packer: a failed bake's leftovers (Packer cleans up after itself; this also
    /// covers what a timeout's SIGKILL or an AWS error kept it from) go, and so does the
    /// bake's security group. A cleanup failure is logged: [`AmiAccount::reap_bake`] retries.
    pub(crate) async fn finish(self, failed: bool, observer: &mut (dyn BakeObserver + Send)) {
        let cleanup = if failed {
            match self.account.reap_bake(&self.bake_id, &self.earlier).await {
                Ok(reaped) if !reaped.is_empty() => {
                    observer.line(&format!(
                        "==> slipway: removed what the failed bake left: {reaped:?}"
                    ));
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(error) => Err(error),
            }
        } else {
            match &self.security_group {
                Some(group) => self.account.delete_security_group(group).await,
                None => Ok(()),
            }
        };
        if let Err(error) = cleanup {
            observer.line(&format!(
                "==> slipway: cleaning up after the AMI bake failed: {error}"
            ));
            tracing::error!(%error, bake = %self.bake_id, "an AMI bake left AWS resources behind; reap_bake removes them by tag");
        }
    }
}

/// A bake's copy of the template, in a directory of its own removed on drop.
pub(crate) struct PreparedTemplate {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Writes `template` with the `amazon-ebs` source set up for `source`: the source AMI (an id
/// or the filter), security groups (`security_group` when the settings name none), instance
/// profile, root volume, tags carrying `bake_id` on everything, the temporary key pair's name,
/// the endpoint, and the communicator (with `none`, no provisioner that needs one runs).
/// `{{template_dir}}` in the variables' defaults keeps meaning the original's directory.
pub(crate) fn prepare_template(
    template: &Path,
    scratch_dir: &Path,
    source: &AmazonEbsSource,
    bake_id: &str,
    security_group: Option<&str>,
) -> Result<PreparedTemplate, BakeError> {
    let text =
        std::fs::read_to_string(template).map_err(|e| io("reading template", template, e))?;
    let original_dir = template
        .parent()
        .and_then(|dir| std::fs::canonicalize(dir).ok())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut document: Value = serde_json::from_str(&text).map_err(|e| {
        invalid(
            "template",
            format!("{} is not JSON: {e}", template.display()),
        )
    })?;
    if let Some(variables) = document.get_mut("variables").and_then(Value::as_object_mut) {
        for value in variables.values_mut() {
            if let Value::String(text) = value {
                *text = text.replace("{{template_dir}}", &original_dir.display().to_string());
            }
        }
    }
    let builder = document
        .get_mut("builders")
        .and_then(Value::as_array_mut)
        .and_then(|builders| {
            builders
                .iter_mut()
                .find(|b| b.get("name").and_then(Value::as_str) == Some("amazon-ebs"))
        })
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            invalid(
                "template",
                format!("{} has no `amazon-ebs` source", template.display()),
            )
        })?;
    configure_builder(builder, source, bake_id, security_group);
    if source.communicator == Communicator::None {
        // Packer would still run the ansible provisioner, through an adapter with nothing
        // behind it; with no machine to provision, only connection-free provisioners run.
        if let Some(provisioners) = document
            .get_mut("provisioners")
            .and_then(Value::as_array_mut)
        {
            for provisioner in provisioners.iter_mut() {
                let local = provisioner.get("type").and_then(Value::as_str) == Some("shell-local");
                if let (false, Some(provisioner)) = (local, provisioner.as_object_mut()) {
                    except_amazon_ebs(provisioner);
                }
            }
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("slipway-ami-")
        .tempdir_in(scratch_dir)
        .map_err(|e| io("creating a directory in", scratch_dir, e))?;
    let path = dir.path().join("slipway.json");
    let text = serde_json::to_string_pretty(&document).expect("a JSON value serialises");
    std::fs::write(&path, text).map_err(|e| io("writing", &path, e))?;
    Ok(PreparedTemplate { _dir: dir, path })
}

fn configure_builder(
    builder: &mut Map<String, Value>,
    source: &AmazonEbsSource,
    bake_id: &str,
    security_group: Option<&str>,
) {
    match &source.source_ami {
        SourceAmi::Id(_) => {
            builder.remove("source_ami_filter");
            builder.insert("source_ami".into(), json!("{{user `source_ami`}}"));
        }
        SourceAmi::Filter { owners, .. } => {
            if let Some(filter) = builder
                .get_mut("source_ami_filter")
                .and_then(Value::as_object_mut)
            {
                filter.insert("owners".into(), json!(owners));
            }
        }
    }
    if source.subnet_id.is_none() {
        builder.remove("subnet_id");
    }
    let groups: Vec<&str> = match security_group {
        Some(group) => vec![group],
        None => source
            .security_group_ids
            .iter()
            .map(String::as_str)
            .collect(),
    };
    builder.insert("security_group_ids".into(), json!(groups));
    if let Some(profile) = &source.iam_instance_profile {
        builder.insert("iam_instance_profile".into(), json!(profile));
    }
    if source.volume_size.is_some() || source.encrypted {
        let mut device = json!({
            "device_name": "/dev/xvda",
            "volume_type": "gp2",
            "delete_on_termination": true,
        });
        if let Some(size) = source.volume_size {
            device["volume_size"] = json!(size);
        }
        if source.encrypted {
            device["encrypted"] = json!(true);
        }
        if let Some(key) = &source.kms_key_id {
            device["kms_key_id"] = json!(key);
        }
        builder.insert("launch_block_device_mappings".into(), json!([device]));
    }
    let mut image_tags = builder
        .get("tags")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (key, value) in &source.tags {
        image_tags.insert(key.clone(), json!(value));
    }
    image_tags.insert(BAKE_KEY_TAG.into(), json!(source.bake_key));
    image_tags.insert(BAKE_TAG.into(), json!(bake_id));
    builder.insert("tags".into(), Value::Object(image_tags.clone()));
    // The snapshot carries the AMI's tags, minus the one template function only AMIs know.
    image_tags.remove("source_ami");
    builder.insert("snapshot_tags".into(), Value::Object(image_tags));
    let mut run_tags = builder
        .get("run_tags")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (key, value) in &source.tags {
        run_tags.insert(key.clone(), json!(value));
    }
    run_tags.insert(PROJECT_TAG.into(), json!("{{user `app`}}"));
    run_tags.insert(BAKE_TAG.into(), json!(bake_id));
    builder.insert("run_tags".into(), Value::Object(run_tags.clone()));
    builder.insert("run_volume_tags".into(), Value::Object(run_tags));
    builder.insert(
        "temporary_key_pair_name".into(),
        json!(bake_resource_name(bake_id)),
    );
    if let Some(endpoint) = &source.endpoint_url {
        builder.insert("custom_endpoint_ec2".into(), json!(endpoint));
        builder.insert("skip_region_validation".into(), json!(true));
    }
    if source.communicator == Communicator::None {
        builder.insert("communicator".into(), json!("none"));
    }
}

fn except_amazon_ebs(provisioner: &mut Map<String, Value>) {
    let mut except: Vec<Value> = provisioner
        .get("except")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    except.push(json!("amazon-ebs"));
    provisioner.insert("except".into(), Value::Array(except));
    if let Some(only) = provisioner.get_mut("only").and_then(Value::as_array_mut) {
        only.retain(|name| name != "amazon-ebs");
    }
}

fn io(context: &'static str, path: &Path, source: std::io::Error) -> BakeError {
    BakeError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> AmazonEbsSource {
        AmazonEbsSource {
            region: "eu-west-1".into(),
            source_ami: SourceAmi::Id("ami-785db401".into()),
            instance_type: "t3.small".into(),
            subnet_id: None,
            security_group_ids: Vec::new(),
            iam_instance_profile: None,
            ssh_username: "admin".into(),
            volume_size: None,
            encrypted: false,
            kms_key_id: None,
            tags: BTreeMap::new(),
            endpoint_url: None,
            communicator: Communicator::Ssh,
            bake_key: "0123abcd".into(),
        }
    }

    #[test]
    fn reserved_and_templated_tags_are_refused_by_name() {
        let mut settings = source();
        settings.tags.insert("project".into(), "x".into());
        let error = settings.check().unwrap_err().to_string();
        assert!(
            error.contains("tags") && error.contains("`project`"),
            "{error}"
        );
        let mut settings = source();
        settings.tags.insert("team".into(), "{{env `HOME`}}".into());
        assert!(settings.check().is_err());
        let mut settings = source();
        settings.kms_key_id = Some("alias/ami".into());
        let error = settings.check().unwrap_err().to_string();
        assert!(error.contains("kms_key_id"), "{error}");
    }

    #[test]
    fn an_ami_id_replaces_the_filter_and_none_skips_ansible() {
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packer/slipway.json");
        let scratch = tempfile::tempdir().unwrap();
        let mut settings = source();
        settings.communicator = Communicator::None;
        settings.volume_size = Some(20);
        let prepared =
            prepare_template(&template, scratch.path(), &settings, "b1", Some("sg-1")).unwrap();
        let document: Value =
            serde_json::from_str(&std::fs::read_to_string(&prepared.path).unwrap()).unwrap();
        let builder = document["builders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "amazon-ebs")
            .unwrap();
        assert!(builder.get("source_ami_filter").is_none());
        assert_eq!(builder["communicator"], "none");
        assert_eq!(builder["security_group_ids"], json!(["sg-1"]));
        assert_eq!(builder["temporary_key_pair_name"], "slipway-bake-b1");
        assert_eq!(builder["snapshot_tags"][BAKE_TAG], "b1");
        assert_eq!(
            builder["launch_block_device_mappings"][0]["volume_size"],
            20
        );
        let ansible = document["provisioners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == "ansible")
            .unwrap();
        assert_eq!(ansible["except"], json!(["amazon-ebs"]));
        assert!(!document["variables"]["playbook_file"]
            .as_str()
            .unwrap()
            .contains("template_dir"));
    }
}
