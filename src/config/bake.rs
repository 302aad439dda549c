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
pub fn resolve(
    raw: RawBake,
    key: &dyn Fn(&str) -> String,
) -> Result<BakeSettings, (String, String)> {
    let playbook =
        match (raw.playbook, raw.playbook_repo) {
            (Some(_), Some(_)) => return Err((
                key("playbook_repo"),
                "set either playbook (in the application repository) or playbook_repo, not both"
                    .into(),
            )),
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

#[cfg(test)]
mod tests {
    use super::super::{parse, resolve, Config, ConfigError};
    use super::*;

    fn load(bake: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"file:///srv/hello.git\"\n\n[projects.bake]\n{bake}"
        );
        resolve(
            parse(&text, "slipway.toml")?,
            "slipway.toml",
            &Default::default(),
            &|_| None,
        )
    }

    #[test]
    fn the_issues_settings_resolve() {
        let config = load(
            "playbook_repo = { url = \"https://bitbucket.org/acme/ops.git\", ref = \"v3\", path = \"playbooks/app.yml\" }\nextra_vars = { app_env = \"prod\", replicas = 3 }\nbase_image = \"slipway/debian:bookworm\"\n",
        )
        .unwrap();
        let bake = &config.projects[0].bake;
        assert_eq!(
            bake.playbook,
            Some(PlaybookSource::Repo(PlaybookRepo {
                url: "https://bitbucket.org/acme/ops.git".into(),
                git_ref: "v3".into(),
                path: "playbooks/app.yml".into(),
            }))
        );
        assert_eq!(bake.extra_vars["replicas"], 3);
        assert_eq!(bake.base_image.as_deref(), Some("slipway/debian:bookworm"));
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (bake, key, says) in [
            ("playbook = \"../ops/bake.yml\"\n", "projects[0].bake.playbook", "without `..`"),
            (
                "playbook = \"a.yml\"\nplaybook_repo = { url = \"file:///srv/ops.git\", ref = \"v3\", path = \"a.yml\" }\n",
                "projects[0].bake.playbook_repo",
                "not both",
            ),
            (
                "playbook_repo = { url = \"file:///srv/ops.git\", ref = \"v3^\", path = \"a.yml\" }\n",
                "projects[0].bake.playbook_repo.ref",
                "not a git ref",
            ),
            (
                "extra_vars = { slipway_package = \"evil\" }\n",
                "projects[0].bake.extra_vars",
                "Slipway's own",
            ),
            ("base_image = \"a b\"\n", "projects[0].bake.base_image", "not an image"),
        ] {
            let error = load(bake).unwrap_err().to_string();
            assert!(error.contains(key) && error.contains(says), "{bake}: {error}");
        }
        let error = load("playbok = \"a.yml\"\n").unwrap_err().to_string();
        assert!(error.contains("unknown field `playbok`"), "{error}");
    }
}
