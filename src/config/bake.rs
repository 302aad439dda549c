//! `[projects.bake]`: the team's own provisioning of a project's images (its Ansible playbook,
//! from the application repository or a playbook repository at a pinned ref, extra variables,
//! and the base image of docker bakes), checked as `.slipway.yml`'s `bake:` section is.

use std::collections::BTreeMap;

use serde::Deserialize;
use slipway_pipeline::spec::{
    check_extra_var_name, check_git_ref, check_image_reference, check_url_text,
};

/// `[projects.bake]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBake {
    pub playbook: Option<String>,
    pub playbook_repo: Option<RawPlaybookRepo>,
    #[serde(default)]
    pub extra_vars: BTreeMap<String, serde_json::Value>,
    pub base_image: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlaybookRepo {
    pub url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub path: String,
}

/// A project's bake settings, resolved: from `slipway.toml`, or (merged by the bake) from
/// `.slipway.yml`. Everything absent means Slipway's own playbook on its own base image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BakeSettings {
    pub playbook: Option<PlaybookSource>,
    pub extra_vars: BTreeMap<String, serde_json::Value>,
    pub base_image: Option<String>,
}

/// Where the team's playbook is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaybookSource {
    /// A path in the application repository, at the release's commit.
    Repository { path: String },
    /// A path in a separate repository, at `git_ref` (resolved to a commit for each bake).
    Repo(PlaybookRepo),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookRepo {
    /// Any URL git can fetch from, `file://` included (the operator chose it).
    pub url: String,
    pub git_ref: String,
    pub path: String,
}

/// Checks `[projects.bake]`; `key` names a field in errors (`projects[0].bake.playbook`).
pub fn resolve(raw: RawBake, key: &dyn Fn(&str) -> String) -> Result<BakeSettings, (String, String)> {
    let playbook = match (raw.playbook, raw.playbook_repo) {
        (Some(_), Some(_)) => {
            return Err((
                key("playbook_repo"),
                "set either playbook (in the application repository) or playbook_repo, not both"
                    .into(),
            ))
        }
        (Some(path), None) => {
            check_relative_path(&path).map_err(|m| (key("playbook"), m))?;
            Some(PlaybookSource::Repository { path })
        }
        (None, Some(repo)) => {
            check_url_text(&repo.url).map_err(|m| (key("playbook_repo.url"), m))?;
            check_git_ref(&repo.git_ref).map_err(|m| (key("playbook_repo.ref"), m))?;
            check_relative_path(&repo.path).map_err(|m| (key("playbook_repo.path"), m))?;
            Some(PlaybookSource::Repo(PlaybookRepo {
                url: repo.url,
                git_ref: repo.git_ref,
                path: repo.path,
            }))
        }
        (None, None) => None,
    };
    for name in raw.extra_vars.keys() {
        check_extra_var_name(name).map_err(|m| (key("extra_vars"), m))?;
    }
    if let Some(image) = &raw.base_image {
        check_image_reference(image).map_err(|m| (key("base_image"), m))?;
    }
    Ok(BakeSettings {
        playbook,
        extra_vars: raw.extra_vars,
        base_image: raw.base_image,
    })
}

/// A relative path that stays inside its repository: no leading `/`, no `..`.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|part| part == "..")
        || path.chars().any(char::is_control)
    {
        return Err(format!(
            "`{}` is refused: expected a relative path inside the repository, without `..`",
            path.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}
