//! What one bake needs, as plain data, and its translation into the template's variables.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::BakeError;
use super::team::TeamPlaybook;
pub use crate::ami::AmazonEbsSource;

/// One bake of one release. The root crate fills it from its configuration and release record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BakeRequest {
    /// The Packer binary (1.6.6 or later), e.g. `/usr/bin/packer`.
    pub packer: PathBuf,
    /// The template, normally `packer/slipway.json`.
    pub template: PathBuf,
    /// The directory holding `bake.yml` (and anything it includes), normally `ansible/`.
    pub playbook_dir: PathBuf,
    /// Which of the template's two sources to build, and its settings.
    pub source: BakeSource,
    /// The project's name, used in image and AMI names.
    pub app: String,
    /// The Debian package to install.
    pub package: String,
    /// The exact Debian version to install.
    pub version: String,
    /// The release number N of `vN`.
    pub release: u64,
    /// The commit the release was built from.
    pub commit: String,
    /// The apt repository's base URL as the machine being baked sees it, e.g.
    /// `http://127.0.0.1:8080/apt/` (the docker source shares the host's network).
    pub apt_url: String,
    /// The repository's binary public key (`key.gpg`) on this machine.
    pub apt_key_path: PathBuf,
    /// Apply the base image's pending security updates before installing.
    pub security_updates: bool,
    /// Unique per bake: labels the build container (`slipway.bake=<id>`) and the committed
    /// image (`slipway.baked-by=<id>`), so whatever a failed bake left can be found.
    pub bake_id: String,
    /// Packer is stopped (its whole process group) when the bake takes longer.
    pub timeout: Duration,
    /// Added to Packer's environment, e.g. `AWS_PROFILE` or `AWS_ENDPOINT_URL`.
    pub env: BTreeMap<String, String>,
    /// The team's own playbook, run after Slipway's; absent: Slipway's playbook only.
    #[serde(default)]
    pub team: Option<TeamPlaybook>,
    /// Where a bake with a team playbook writes its generated files (in a directory of its
    /// own, removed when the bake ends).
    #[serde(default = "std::env::temp_dir")]
    pub scratch_dir: PathBuf,
    /// What provisioned the image beyond the release (the team's inputs and base image), as
    /// the caller names it; a docker image carries it as the label `slipway.provisioning`, so
    /// the next bake can tell whether building on this image is still right.
    #[serde(default = "default_provisioning")]
    pub provisioning: String,
}

/// The provisioning of a bake with Slipway's playbook and base image only.
pub const DEFAULT_PROVISIONING: &str = "default";

fn default_provisioning() -> String {
    DEFAULT_PROVISIONING.to_string()
}

/// The template's two sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BakeSource {
    /// A local Docker image, committed from a container of `base_image`.
    Docker(DockerSource),
    /// An AMI, built on an EC2 instance launched from the source AMI.
    AmazonEbs(AmazonEbsSource),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerSource {
    /// `slipway/debian:bookworm` for a full bake, the previous release's image for an
    /// incremental one. Never pulled: it must exist locally.
    pub base_image: String,
    /// The result is tagged `<image_repository>:<tag>`, e.g. `slipway/hello:v3`.
    pub image_repository: String,
    pub tag: String,
    /// The image's `CMD` (exec form): what `docker run` starts. There is no systemd in the image.
    pub command: Vec<String>,
    /// Ports the image declares with `EXPOSE`; at least one.
    pub exposed_ports: Vec<u16>,
    /// The bake's key ([`BakeRequest::bake_key`]), which the committed image carries as the
    /// label `slipway.bake-key`: an image with it is finished, and a later bake with the same
    /// key may reuse it ([`super::finished_image`]). Empty: the image carries an empty label.
    #[serde(default)]
    pub bake_key: String,
}

impl BakeSource {
    /// The source's name in the template, as given to `-only=`.
    pub fn template_name(&self) -> &'static str {
        match self {
            BakeSource::Docker(_) => "docker",
            BakeSource::AmazonEbs(_) => "amazon-ebs",
        }
    }
}

impl BakeRequest {
    /// The image or AMI name this bake produces: `slipway/hello:v3` or `hello-v3`.
    pub fn artifact_name(&self) -> String {
        match &self.source {
            BakeSource::Docker(docker) => format!("{}:{}", docker.image_repository, docker.tag),
            BakeSource::AmazonEbs(_) => format!("{}-v{}", self.app, self.release),
        }
    }

    /// The `-var` pairs for the template, in a stable order. Only the chosen source's settings
    /// are set; the other source keeps the template's defaults.
    pub fn variables(&self) -> Vec<(&'static str, String)> {
        let mut variables = vec![
            ("app", self.app.clone()),
            ("package", self.package.clone()),
            ("version", self.version.clone()),
            ("release", self.release.to_string()),
            ("commit", self.commit.clone()),
            ("apt_url", self.apt_url.clone()),
            ("apt_key_file", self.apt_key_path.display().to_string()),
            (
                "playbook_file",
                self.playbook_dir.join("bake.yml").display().to_string(),
            ),
            (
                "roles_path",
                self.playbook_dir.join("roles").display().to_string(),
            ),
            ("security_updates", self.security_updates.to_string()),
            ("bake_id", self.bake_id.clone()),
            ("provisioning", self.provisioning.clone()),
        ];
        match &self.source {
            BakeSource::Docker(docker) => variables.extend([
                ("base_image", docker.base_image.clone()),
                ("image_repository", docker.image_repository.clone()),
                ("image_tag", docker.tag.clone()),
                ("docker_cmd", json_array(&docker.command)),
                ("docker_expose", join_ports(&docker.exposed_ports)),
                ("bake_key", docker.bake_key.clone()),
            ]),
            BakeSource::AmazonEbs(ebs) => variables.extend(ebs.variables()),
        }
        variables
    }

    /// Refuses values the template or Ansible's `key=value` extra-vars would misread.
    pub fn check(&self) -> Result<(), BakeError> {
        let mut single_words = vec![
            ("app", self.app.as_str()),
            ("package", &self.package),
            ("version", &self.version),
            ("commit", &self.commit),
            ("apt_url", &self.apt_url),
            ("bake_id", &self.bake_id),
            ("provisioning", &self.provisioning),
        ];
        if let BakeSource::Docker(docker) = &self.source {
            single_words.extend([
                ("base_image", docker.base_image.as_str()),
                ("image_repository", &docker.image_repository),
                ("tag", &docker.tag),
            ]);
        }
        for (field, value) in single_words {
            if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '`') {
                return Err(invalid(
                    field,
                    format!("`{value}` must be one non-empty word"),
                ));
            }
        }
        for (field, path) in [
            ("apt_key_path", &self.apt_key_path),
            ("playbook_dir", &self.playbook_dir),
            ("scratch_dir", &self.scratch_dir),
        ] {
            if path.display().to_string().contains(char::is_whitespace) {
                return Err(invalid(
                    field,
                    format!("`{}` contains whitespace", path.display()),
                ));
            }
        }
        if let Some(team) = &self.team {
            team.check()?;
        }
        if let BakeSource::AmazonEbs(ebs) = &self.source {
            ebs.check()?;
        }
        if let BakeSource::Docker(docker) = &self.source {
            if docker.command.is_empty() {
                return Err(invalid(
                    "command",
                    "the image needs a command to start the app",
                ));
            }
            if !docker.bake_key.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    "bake_key",
                    format!("`{}` is not a hex digest", docker.bake_key),
                ));
            }
            if docker.exposed_ports.is_empty() {
                return Err(invalid(
                    "exposed_ports",
                    "the image must expose at least one port",
                ));
            }
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> BakeError {
    BakeError::InvalidRequest {
        field,
        reason: reason.into(),
    }
}

fn json_array(words: &[String]) -> String {
    serde_json::Value::from(words.to_vec()).to_string()
}

fn join_ports(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    ports.join(" ")
}
