//! `[projects.ami]`: how a project's AMIs are baked (Packer's `amazon-ebs` source) and how
//! many recent releases' AMIs retention keeps; needed by a project with an aws environment.

use std::collections::BTreeMap;

use serde::Deserialize;
use slipway_bake::ami::{Communicator, SourceAmi, MAX_EXTRA_TAGS, RESERVED_TAGS};

/// Releases whose AMIs retention keeps (besides live and warm ones) when none is configured.
pub const DEFAULT_KEEP_RELEASES: u32 = 5;

/// `[projects.ami]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAmi {
    pub region: String,
    pub source_ami: Option<String>,
    pub source_ami_filter: Option<RawSourceAmiFilter>,
    pub instance_type: Option<String>,
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    pub iam_instance_profile: Option<String>,
    pub ssh_username: Option<String>,
    pub volume_size: Option<u32>,
    #[serde(default)]
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub endpoint_url: Option<String>,
    pub communicator: Option<String>,
    pub keep_releases: Option<u32>,
    pub apt_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceAmiFilter {
    pub owners: Vec<String>,
    pub name: String,
}

/// A project's AMI bake settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmiSettings {
    pub region: String,
    pub source_ami: SourceAmi,
    pub instance_type: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub iam_instance_profile: Option<String>,
    pub ssh_username: String,
    pub volume_size: Option<u32>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub endpoint_url: Option<String>,
    pub communicator: Communicator,
    /// Retention keeps the AMIs of this many latest releases, besides live and warm ones.
    pub keep_releases: u32,
    /// Slipway's `/apt/` as the bake instance reaches it; required with `ssh`. Absent (with
    /// `none`, which installs nothing): the server's own address.
    pub apt_url: Option<String>,
}

/// Checks `[projects.ami]`; `key` names a field in errors (`projects[0].ami.region`).
pub fn resolve(raw: RawAmi, key: &dyn Fn(&str) -> String) -> Result<AmiSettings, (String, String)> {
    let fail = |field: &str, message: String| Err((key(field), message));
    if !is_region(&raw.region) {
        return fail(
            "region",
            format!("expected a region like eu-west-1, got {:?}", raw.region),
        );
    }
    let source_ami =
        match (raw.source_ami, raw.source_ami_filter) {
            (Some(_), Some(_)) => {
                return fail(
                    "source_ami_filter",
                    "set either source_ami or source_ami_filter, not both".into(),
                )
            }
            (None, None) => return fail(
                "source_ami",
                "required: an AMI id, or source_ami_filter = { owners = [...], name = \"...\" }"
                    .into(),
            ),
            (Some(id), None) => {
                if !is_id(&id, "ami-") {
                    return fail(
                        "source_ami",
                        format!("expected an AMI id like ami-0abc1234, got {id:?}"),
                    );
                }
                SourceAmi::Id(id)
            }
            (None, Some(filter)) => {
                if filter.owners.is_empty() {
                    return fail(
                        "source_ami_filter.owners",
                        "name at least one owner (an account id, or `self` / `amazon`)".into(),
                    );
                }
                for owner in &filter.owners {
                    if !is_word(owner) {
                        return fail(
                            "source_ami_filter.owners",
                            format!("expected an account id or alias, got {owner:?}"),
                        );
                    }
                }
                if !is_word(&filter.name) {
                    return fail(
                        "source_ami_filter.name",
                        format!(
                            "expected a name pattern like debian-12-amd64-*, got {:?}",
                            filter.name
                        ),
                    );
                }
                SourceAmi::Filter {
                    owners: filter.owners,
                    name: filter.name,
                }
            }
        };
    let instance_type = raw.instance_type.unwrap_or_else(|| "t3.small".into());
    if !is_word(&instance_type) || !instance_type.contains('.') {
        return fail(
            "instance_type",
            format!("expected an instance type like t3.small, got {instance_type:?}"),
        );
    }
    if let Some(subnet) = &raw.subnet_id {
        if !is_id(subnet, "subnet-") {
            return fail(
                "subnet_id",
                format!("expected a subnet id like subnet-0a1b2c3d, got {subnet:?}"),
            );
        }
    }
    for group in &raw.security_group_ids {
        if !is_id(group, "sg-") {
            return fail(
                "security_group_ids",
                format!("expected security group ids like sg-0a1b2c3d, got {group:?}"),
            );
        }
    }
    for (field, value) in [
        ("iam_instance_profile", &raw.iam_instance_profile),
        ("kms_key_id", &raw.kms_key_id),
        ("ssh_username", &raw.ssh_username),
    ] {
        if let Some(value) = value {
            if !is_word(value) {
                return fail(field, format!("expected one word, got {value:?}"));
            }
        }
    }
    if raw.kms_key_id.is_some() && !raw.encrypted {
        return fail(
            "kms_key_id",
            "a KMS key encrypts the volume only with `encrypted = true`".into(),
        );
    }
    if let Some(size) = raw.volume_size {
        if !(1..=16_384).contains(&size) {
            return fail(
                "volume_size",
                format!("expected GiB from 1 to 16384, got {size}"),
            );
        }
    }
    if raw.tags.len() > MAX_EXTRA_TAGS {
        return fail("tags", format!("at most {MAX_EXTRA_TAGS} tags"));
    }
    for (tag, value) in &raw.tags {
        if RESERVED_TAGS.contains(&tag.as_str()) {
            return fail(
                &format!("tags.{tag}"),
                format!(
                    "`{tag}` is set by Slipway (reserved: {})",
                    RESERVED_TAGS.join(", ")
                ),
            );
        }
        if tag.is_empty() || tag.len() > 128 || value.len() > 256 || tag.starts_with("aws:") {
            return fail(
                &format!("tags.{tag}"),
                "keys are 1 to 128 characters, not starting with `aws:`; values at most 256".into(),
            );
        }
        if [tag, value]
            .iter()
            .any(|t| t.contains("{{") || t.contains("}}") || t.contains('`'))
        {
            return fail(
                &format!("tags.{tag}"),
                "`{{`, `}}` and backquotes are Packer's template syntax".into(),
            );
        }
    }
    if let Some(url) = &raw.endpoint_url {
        let valid = (url.starts_with("http://") || url.starts_with("https://")) && is_word(url);
        if !valid {
            return fail(
                "endpoint_url",
                format!("expected a URL like http://127.0.0.1:5000, got {url:?}"),
            );
        }
    }
    let communicator = match raw.communicator.as_deref() {
        None | Some("ssh") => Communicator::Ssh,
        Some("none") => Communicator::None,
        Some(other) => {
            return fail(
                "communicator",
                format!("expected \"ssh\" or \"none\" (tests against moto only), got {other:?}"),
            )
        }
    };
    match (&raw.apt_url, communicator) {
        (Some(url), _) => {
            let valid = (url.starts_with("http://") || url.starts_with("https://"))
                && url.ends_with('/')
                && is_word(url);
            if !valid {
                return fail(
                    "apt_url",
                    format!("expected the URL of Slipway's apt repository ending in /, like https://slipway.example.com/apt/, got {url:?}"),
                );
            }
        }
        (None, Communicator::Ssh) => {
            return fail(
                "apt_url",
                "required: the bake instance installs the release from Slipway's apt repository, so name the URL it reaches it at (like https://slipway.example.com/apt/)".into(),
            )
        }
        (None, Communicator::None) => {}
    }
    let keep_releases = raw.keep_releases.unwrap_or(DEFAULT_KEEP_RELEASES);
    if keep_releases == 0 {
        return fail(
            "keep_releases",
            "keep at least 1 release's AMI (rollback needs it)".into(),
        );
    }
    Ok(AmiSettings {
        region: raw.region,
        source_ami,
        instance_type,
        subnet_id: raw.subnet_id,
        security_group_ids: raw.security_group_ids,
        iam_instance_profile: raw.iam_instance_profile,
        ssh_username: raw.ssh_username.unwrap_or_else(|| "admin".into()),
        volume_size: raw.volume_size,
        encrypted: raw.encrypted,
        kms_key_id: raw.kms_key_id,
        tags: raw.tags,
        endpoint_url: raw.endpoint_url,
        communicator,
        keep_releases,
        apt_url: raw.apt_url,
    })
}

/// `eu-west-1`, `us-gov-east-1`, `ap-southeast-2`.
fn is_region(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// `<prefix><8 to 17 lowercase hex digits>`.
fn is_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|hex| {
        (8..=17).contains(&hex.len())
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_word(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 2048
        && !text.contains(|c: char| c.is_whitespace() || c.is_control() || c == '`')
        && !text.contains("{{")
        && !text.contains("}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AmiSettings, (String, String)> {
        let raw: RawAmi = toml::from_str(text).unwrap();
        resolve(raw, &|field| format!("projects[0].ami.{field}"))
    }

    #[test]
    fn an_id_or_a_filter_with_defaults() {
        let settings = parse("region = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\napt_url = \"https://slipway.example.com/apt/\"\n").unwrap();
        assert_eq!(settings.source_ami, SourceAmi::Id("ami-785db401".into()));
        assert_eq!(settings.instance_type, "t3.small");
        assert_eq!(settings.ssh_username, "admin");
        assert_eq!(settings.communicator, Communicator::Ssh);
        assert_eq!(settings.keep_releases, DEFAULT_KEEP_RELEASES);
        let settings = parse(
            "region = \"eu-west-1\"\nsource_ami_filter = { owners = [\"136693071363\"], name = \"debian-12-amd64-*\" }\ncommunicator = \"none\"\ntags = { team = \"payments\" }\n",
        )
        .unwrap();
        assert_eq!(
            settings.source_ami,
            SourceAmi::Filter {
                owners: vec!["136693071363".into()],
                name: "debian-12-amd64-*".into()
            }
        );
        assert_eq!(settings.communicator, Communicator::None);
        assert_eq!(settings.tags["team"], "payments");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("region = \"eu-west-1\"\n", "projects[0].ami.source_ami", "required"),
            (
                "region = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\n",
                "projects[0].ami.apt_url",
                "reaches it",
            ),
            (
                "region = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\ncommunicator = \"none\"\napt_url = \"slipway/apt\"\n",
                "projects[0].ami.apt_url",
                "ending in /",
            ),
            (
                "region = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\nsource_ami_filter = { owners = [\"self\"], name = \"x\" }\n",
                "projects[0].ami.source_ami_filter",
                "not both",
            ),
            (
                "region = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\ncommunicator = \"winrm\"\n",
                "projects[0].ami.communicator",
                "\"ssh\" or \"none\"",
            ),
            ("region = \"Ireland\"\nsource_ami = \"ami-785db401\"\n", "projects[0].ami.region", "eu-west-1"),
            ("region = \"eu-west-1\"\nsource_ami = \"debian\"\n", "projects[0].ami.source_ami", "AMI id"),
            (
                "region = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\ntags = { project = \"x\" }\n",
                "projects[0].ami.tags.project",
                "set by Slipway",
            ),
            (
                "region = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\nkms_key_id = \"alias/ami\"\n",
                "projects[0].ami.kms_key_id",
                "encrypted = true",
            ),
            (
                "region = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\nsecurity_group_ids = [\"default\"]\n",
                "projects[0].ami.security_group_ids",
                "sg-",
            ),
        ];
        for (text, key, message) in cases {
            let (got_key, got_message) = parse(text).unwrap_err();
            assert_eq!(got_key, key, "{text}");
            assert!(got_message.contains(message), "{got_message}");
        }
    }
}
