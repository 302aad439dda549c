//! The `bake:` section of `.slipway.yml`: the team's own Ansible playbook (in the repository or
//! in a separate playbook repository at a pinned ref), its extra variables and the base image
//! of docker bakes. The checks are public so the server's `[projects.bake]` applies the same.

use std::collections::BTreeMap;

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::values::WorkspacePath;

/// Longest URL, ref or image reference accepted.
const MAX_REFERENCE_BYTES: usize = 2048;

/// How the release's image is provisioned beyond Slipway's own playbook; all optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakeSpec {
    /// The team's playbook in the application repository, e.g. `deploy/bake.yml`.
    pub playbook: Option<WorkspacePath>,
    /// Or a playbook in a separate repository, fetched at a pinned ref.
    pub playbook_repo: Option<PlaybookRepoSpec>,
    /// Given to Ansible as a JSON file; names must not start with `slipway_`.
    #[serde(default)]
    pub extra_vars: ExtraVars,
    /// The base image of a full docker bake, instead of `slipway/debian:bookworm`.
    pub base_image: Option<ImageReference>,
}

/// `{url, ref, path}`: the playbook `path` in the repository at `url`, at `ref`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookRepoSpec {
    pub url: RepositoryUrl,
    #[serde(rename = "ref")]
    pub git_ref: GitRef,
    pub path: WorkspacePath,
}

macro_rules! checked_text {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $check(&text).map_err(serde::de::Error::custom)?;
                Ok($name(text))
            }
        }
    };
}

/// The team's variables by name, each name checked by [`check_extra_var_name`]. A bad name is
/// reported at its value, so the error names the line of the variable, not of the map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtraVars(pub BTreeMap<String, serde_json::Value>);

impl<'de> Deserialize<'de> for ExtraVars {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ExtraVarsVisitor)
    }
}

struct ExtraVarsVisitor;

impl<'de> Visitor<'de> for ExtraVarsVisitor {
    type Value = ExtraVars;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of Ansible variables")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExtraVars, A::Error> {
        let mut vars = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            if let Err(message) = check_extra_var_name(&name) {
                map.next_value_seed(FailAtValue(message))?;
            }
            vars.insert(name, map.next_value()?);
        }
        Ok(ExtraVars(vars))
    }
}

/// Fails inside reading a value, so the error carries the value's position (as the
/// locator does, see `locate.rs`).
struct FailAtValue(String);

impl<'de> DeserializeSeed<'de> for FailAtValue {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FailAtValue {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(self.0))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(self.0))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(self.0))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(self.0))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(self.0))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(self.0))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(self.0))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(self.0))
    }
}

checked_text!(
    /// A Docker image reference, e.g. `slipway/debian:bookworm`.
    ImageReference,
    check_image_reference
);
checked_text!(
    /// A tag, branch or full commit id.
    GitRef,
    check_git_ref
);
checked_text!(
    /// An `https://`, `http://` or `ssh://` repository URL without credentials.
    RepositoryUrl,
    check_remote_url
);

/// Letters, digits and `_`, not starting with a digit, and not `slipway_*` (Slipway's own
/// variables, which the team's must not replace).
pub fn check_extra_var_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if !valid {
        return Err(format!(
            "`{}` is not an Ansible variable name (letters, digits and `_`, not starting with a digit)",
            shown(name)
        ));
    }
    if name.starts_with("slipway_") {
        return Err(format!(
            "`{name}` is refused: variables named `slipway_*` are Slipway's own"
        ));
    }
    Ok(())
}

/// One word of printable characters, e.g. `registry.example.test/base:12`.
pub fn check_image_reference(image: &str) -> Result<(), String> {
    if image.is_empty()
        || image.len() > MAX_REFERENCE_BYTES
        || image.starts_with('-')
        || image.contains(|c: char| c.is_whitespace() || c.is_control() || c == '`')
    {
        return Err(format!(
            "`{}` is not an image reference: expected something like debian:bookworm",
            shown(image)
        ));
    }
    Ok(())
}

/// git's ref name rules, as far as a pinned ref needs them: a tag, a branch or a commit id.
pub fn check_git_ref(git_ref: &str) -> Result<(), String> {
    let bad = git_ref.is_empty()
        || git_ref.len() > 255
        || git_ref.starts_with(['-', '/'])
        || git_ref.ends_with(['/', '.'])
        || git_ref.ends_with(".lock")
        || git_ref.contains("..")
        || git_ref.contains("//")
        || git_ref.contains("@{")
        || git_ref
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(format!(
            "`{}` is not a git ref: expected a tag, a branch or a full commit id, like v3",
            shown(git_ref)
        ));
    }
    Ok(())
}

/// A repository URL a build's file may name: `https://`, `http://` or `ssh://`, with no
/// password in it (the project's clone credentials are used where the host matches).
pub fn check_remote_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("https" | "http" | "ssh")) {
        return Err(format!(
            "`{}` is refused: expected an https://, http:// or ssh:// repository URL",
            shown(url)
        ));
    }
    check_url_text(url)
}

/// No control characters, no leading `-`, no password, bounded.
pub fn check_url_text(url: &str) -> Result<(), String> {
    if url.is_empty() || url.len() > MAX_REFERENCE_BYTES || url.starts_with('-') {
        return Err("expected a repository URL".into());
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the URL contains whitespace or a control character".into());
    }
    let authority = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
    if authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    {
        return Err(
            "the URL holds a password: credentials come from the project's clone_url".into(),
        );
    }
    Ok(())
}

/// At most 80 characters of a value, for error messages.
fn shown(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refs_images_and_urls_are_checked() {
        assert!(check_extra_var_name("app_env").is_ok());
        assert!(check_extra_var_name("slipway_version")
            .unwrap_err()
            .contains("Slipway's own"));
        assert!(check_extra_var_name("1x").is_err());
        assert!(check_extra_var_name("a-b").is_err());
        for good in ["v3", "main", "release/2.x", &"a".repeat(40)] {
            assert!(check_git_ref(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a..b", "v3^", "a b", "x.lock", "HEAD@{1}"] {
            assert!(check_git_ref(bad).is_err(), "{bad}");
        }
        assert!(check_image_reference("slipway/debian:bookworm").is_ok());
        assert!(check_image_reference("a b").is_err());
        assert!(check_remote_url("https://git.example.test/ops/playbooks.git").is_ok());
        assert!(check_remote_url("ssh://git@git.example.test/ops.git").is_ok());
        assert!(check_remote_url("file:///srv/ops.git").is_err());
        assert!(check_remote_url("/srv/ops.git").is_err());
        assert!(
            check_remote_url("https://bot:s3cret@git.example.test/ops.git")
                .unwrap_err()
                .contains("password")
        );
    }
}
