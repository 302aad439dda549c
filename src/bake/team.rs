//! The team's own bake as the server runs it: `[projects.bake]` merged with `.slipway.yml`'s
//! `bake:` (the server's config wins key by key, and the bake log says what it overrode), and
//! the playbook staged for Packer: from the release's checkout, or from the bare mirror of a
//! playbook repository at the commit its ref names now (recorded in the bake log and on the
//! image).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use slipway_bake::{TeamPlaybook, DEFAULT_PROVISIONING};
use slipway_pipeline::spec::BakeSpec;

use crate::config::{BakeSettings, PlaybookRepo, PlaybookSource, Project};
use crate::mirror::Mirrors;

/// What a bake runs beyond Slipway's own playbook, ready for Packer.
pub struct Staged {
    pub team: Option<TeamPlaybook>,
    /// The configured base image of a full bake (`None`: Slipway's default).
    pub base_image: Option<String>,
    /// `default`, or a digest of the team's inputs and base image: images carry it as the
    /// label `slipway.provisioning`, and an incremental bake needs an equal one.
    pub provisioning: String,
    /// Lines for the bake log.
    pub notes: Vec<String>,
    /// A playbook repository's files or a rebake's checkout, removed when the bake ends.
    dirs: Vec<tempfile::TempDir>,
}

impl Staged {
    /// Keeps `dir` until the bake ends.
    pub fn keep(&mut self, dir: tempfile::TempDir) {
        self.dirs.push(dir);
    }
}

/// The server's settings, with what `.slipway.yml` sets where the server's leave a key unset.
pub fn merge(server: &BakeSettings, file: Option<&BakeSpec>) -> (BakeSettings, Vec<String>) {
    let mut notes = Vec::new();
    let Some(file) = file else {
        return (server.clone(), notes);
    };
    let overridden = |key: &str| {
        format!("==> slipway: bake.{key} of .slipway.yml is ignored: [projects.bake] of the server's config sets it")
    };
    let file_playbook = match (&file.playbook, &file.playbook_repo) {
        (Some(path), _) => Some(PlaybookSource::Repository {
            path: path.as_str().to_string(),
        }),
        (None, Some(repo)) => Some(PlaybookSource::Repo(PlaybookRepo {
            url: repo.url.as_str().to_string(),
            git_ref: repo.git_ref.as_str().to_string(),
            path: repo.path.as_str().to_string(),
        })),
        (None, None) => None,
    };
    let playbook = match (&server.playbook, file_playbook) {
        (Some(server), Some(_)) => {
            notes.push(overridden("playbook"));
            Some(server.clone())
        }
        (server, file) => server.clone().or(file),
    };
    let mut extra_vars = server.extra_vars.clone();
    for (name, value) in &file.extra_vars.0 {
        if extra_vars.contains_key(name) {
            notes.push(overridden(&format!("extra_vars.{name}")));
        } else {
            extra_vars.insert(name.clone(), value.clone());
        }
    }
    let file_base = file.base_image.as_ref().map(|i| i.as_str().to_string());
    if server.base_image.is_some() && file_base.is_some() {
        notes.push(overridden("base_image"));
    }
    let base_image = server.base_image.clone().or(file_base);
    (
        BakeSettings {
            playbook,
            extra_vars,
            base_image,
        },
        notes,
    )
}

/// Stages `settings` for a bake of `project` whose files are in `checkout`: a playbook
/// repository is fetched into its mirror under `mirrors` and its files exported into a new
/// directory of `scratch_dir`. Errors say what is missing or refused, and where.
pub async fn stage(
    settings: &BakeSettings,
    project: &Project,
    checkout: &Path,
    mirrors: &Mirrors,
    scratch_dir: &Path,
) -> Result<Staged, String> {
    let mut notes = Vec::new();
    let mut dirs = Vec::new();
    let team = match &settings.playbook {
        None => None,
        Some(PlaybookSource::Repository { path }) => {
            notes.push(format!(
                "==> slipway: the team's playbook {path} of the repository runs after Slipway's"
            ));
            Some(team_playbook(
                checkout,
                path,
                "the repository at the release's commit",
                "repository".into(),
                settings,
            )?)
        }
        Some(PlaybookSource::Repo(repo)) => {
            let same = same_origin(&repo.url, &project.clone_url);
            let credentials = same.then(|| project.clone_credentials.clone()).flatten();
            let ssh = same.then(|| project.clone_ssh.clone()).flatten();
            let mirror = mirrors.mirror_named(&mirror_name(&repo.url), &repo.url, credentials, ssh);
            let commit = mirror.resolve_ref(&repo.git_ref).await?;
            std::fs::create_dir_all(scratch_dir)
                .map_err(|e| format!("cannot make {}: {e}", scratch_dir.display()))?;
            let dir = tempfile::Builder::new()
                .prefix("playbook-repo-")
                .tempdir_in(scratch_dir)
                .map_err(|e| {
                    format!("cannot make a directory in {}: {e}", scratch_dir.display())
                })?;
            let index = PathBuf::from(format!("{}.index", dir.path().display()));
            mirror.export_tree(&commit, dir.path(), &index).await?;
            notes.push(format!(
                "==> slipway: the team's playbook {} of {} at {} (commit {commit}) runs after Slipway's",
                repo.path, repo.url, repo.git_ref
            ));
            let where_ = format!("{} at {}", repo.url, repo.git_ref);
            let team = team_playbook(
                dir.path(),
                &repo.path,
                &where_,
                format!("{} {commit}", repo.url),
                settings,
            )?;
            dirs.push(dir);
            Some(team)
        }
    };
    if settings.playbook.is_none() && !settings.extra_vars.is_empty() {
        notes.push("==> slipway: extra_vars are not used: no team playbook is set".into());
    }
    let provisioning = provisioning(team.as_ref(), settings.base_image.as_deref())?;
    Ok(Staged {
        team,
        base_image: settings.base_image.clone(),
        provisioning,
        notes,
        dirs,
    })
}

/// The team's playbook `path` inside `root`: its directory (every file of which is in the bake
/// key) must stay inside `root`, symbolic links included.
fn team_playbook(
    root: &Path,
    path: &str,
    where_: &str,
    origin: String,
    settings: &BakeSettings,
) -> Result<TeamPlaybook, String> {
    let full = root.join(path);
    let canonical_root =
        std::fs::canonicalize(root).map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    let inside = std::fs::canonicalize(&full)
        .ok()
        .filter(|p| p.starts_with(&canonical_root) && p.is_file());
    let Some(_) = inside else {
        return Err(format!(
            "the team's playbook {path} is not a file in {where_} (or it leads outside it)"
        ));
    };
    let (dir, playbook) = match path.rsplit_once('/') {
        Some((dir, file)) => (root.join(dir), file.to_string()),
        None => (root.to_path_buf(), path.to_string()),
    };
    Ok(TeamPlaybook {
        dir,
        playbook,
        extra_vars: settings.extra_vars.clone(),
        origin,
    })
}

/// `default` for Slipway's playbook on its default base; else a digest of the team's inputs
/// and the configured base image.
fn provisioning(team: Option<&TeamPlaybook>, base_image: Option<&str>) -> Result<String, String> {
    if team.is_none() && base_image.is_none() {
        return Ok(DEFAULT_PROVISIONING.to_string());
    }
    let team_digest = team
        .map(TeamPlaybook::digest)
        .transpose()
        .map_err(|e| format!("cannot read the team's playbook: {e}"))?;
    let mut hasher = Sha256::new();
    for part in [
        base_image.unwrap_or(super::BASE_IMAGE),
        team_digest.as_deref().unwrap_or(""),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The mirror of a playbook repository is named by a digest of its URL.
fn mirror_name(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))[..24].to_string()
}

/// Whether two URLs have the same scheme, host and port: only then does a playbook repository
/// get the project's clone credentials, so a URL named in `.slipway.yml` cannot collect them.
fn same_origin(a: &str, b: &str) -> bool {
    fn origin(url: &str) -> Option<String> {
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        Some(format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        ))
    }
    origin(a).is_some_and(|a| Some(a) == origin(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_pipeline::spec::BakeSpec;

    fn file_bake(text: &str) -> BakeSpec {
        let spec = slipway_pipeline::parse(&format!(
            "steps:\n  - name: s\n    image: i\n    commands: [x]\nbake:\n{text}"
        ))
        .unwrap();
        spec.bake.unwrap()
    }

    #[test]
    fn the_servers_settings_win_key_by_key_and_the_log_says_so() {
        let server = BakeSettings {
            playbook: None,
            extra_vars: [("app_env".to_string(), "prod".into())].into(),
            base_image: Some("acme/base:1".into()),
        };
        let file = file_bake(
            "  playbook: deploy/bake.yml\n  extra_vars: {app_env: dev, region: eu}\n  base_image: other:2\n",
        );
        let (merged, notes) = merge(&server, Some(&file));
        assert_eq!(
            merged.playbook,
            Some(PlaybookSource::Repository {
                path: "deploy/bake.yml".into()
            })
        );
        assert_eq!(merged.extra_vars["app_env"], "prod");
        assert_eq!(merged.extra_vars["region"], "eu");
        assert_eq!(merged.base_image.as_deref(), Some("acme/base:1"));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("bake.extra_vars.app_env of .slipway.yml is ignored"));
        assert!(notes[1].contains("bake.base_image"));
        let (unchanged, notes) = merge(&server, None);
        assert_eq!(unchanged, server);
        assert!(notes.is_empty());
    }

    #[test]
    fn credentials_go_only_to_the_clone_urls_origin() {
        assert!(same_origin(
            "https://bitbucket.org/acme/ops.git",
            "https://bitbucket.org/acme/hello.git"
        ));
        assert!(same_origin(
            "https://bot@Bitbucket.org/acme/ops.git",
            "https://bitbucket.org/acme/hello.git"
        ));
        assert!(!same_origin(
            "https://evil.example/acme/ops.git",
            "https://bitbucket.org/acme/hello.git"
        ));
        assert!(!same_origin(
            "http://bitbucket.org/acme/ops.git",
            "https://bitbucket.org/acme/hello.git"
        ));
        assert!(!same_origin("/srv/ops.git", "/srv/hello.git"));
    }

    #[test]
    fn provisioning_is_default_only_without_team_inputs() {
        assert_eq!(provisioning(None, None).unwrap(), DEFAULT_PROVISIONING);
        let base = provisioning(None, Some("acme/base:1")).unwrap();
        assert_eq!(base.len(), 64);
        assert_ne!(base, provisioning(None, Some("acme/base:2")).unwrap());
    }
}
