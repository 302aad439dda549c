//! A team's own Ansible playbook, run in the same bake right after Slipway's playbook (the
//! `slipway` role), with the team's extra variables given to Ansible as a JSON file.
//!
//! The bake writes, in a scratch directory of its own (removed when the bake ends, whatever
//! the outcome), a playbook that imports Slipway's `bake.yml` and then the team's, and the
//! variables file; Packer's one Ansible provisioner runs that playbook. So the release's
//! package is installed before the team's tasks run, which may rely on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::BakeError;
use super::key::read_playbook_dir;

/// The team's playbook and what comes with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamPlaybook {
    /// The directory of the playbook's own files (its roles, templates, variables files):
    /// every file under it is part of the bake key. The playbook lies inside it.
    pub dir: PathBuf,
    /// The playbook, relative to `dir`.
    pub playbook: String,
    /// Given to Ansible as `--extra-vars @<file>.json`: values keep their JSON types and
    /// never appear in a process's arguments.
    pub extra_vars: BTreeMap<String, serde_json::Value>,
    /// Where the files came from, part of the key: `repository` (the release's commit) or
    /// `<url> <commit>` for a playbook repository.
    pub origin: String,
}

/// The files a bake with a team playbook generates, inside its scratch directory.
pub(crate) struct GeneratedFiles {
    /// Removed on drop: a failed or cancelled bake leaves no file behind.
    _dir: tempfile::TempDir,
    pub playbook: PathBuf,
    pub extra_vars: PathBuf,
}

impl TeamPlaybook {
    /// The team playbook's full path.
    pub fn playbook_path(&self) -> PathBuf {
        self.dir.join(&self.playbook)
    }

    /// A hex SHA-256 of everything the team provides: its files (by relative path), the
    /// playbook's name, the extra variables and the origin. Equal inputs give equal digests.
    pub fn digest(&self) -> Result<String, BakeError> {
        let files = read_playbook_dir(&self.dir)?;
        let mut hasher = Sha256::new();
        let mut field = |tag: &str, bytes: &[u8]| {
            for part in [tag.as_bytes(), bytes] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
        };
        field("slipway-team-playbook", b"1");
        field("playbook", self.playbook.as_bytes());
        field("origin", self.origin.as_bytes());
        // A BTreeMap of serde_json values serialises with sorted keys at every level.
        let vars = serde_json::to_vec(&self.extra_vars).expect("JSON values serialise");
        field("extra_vars", &vars);
        for (path, contents) in &files {
            field("path", path.as_bytes());
            field("file", contents);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Refuses a playbook that is not a file inside `dir`, and extra variables that would
    /// replace Slipway's own (`slipway_*`).
    pub(crate) fn check(&self) -> Result<(), BakeError> {
        let invalid = |reason: String| BakeError::InvalidRequest {
            field: "team playbook",
            reason,
        };
        let relative = Path::new(&self.playbook);
        if self.playbook.is_empty()
            || relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(invalid(format!(
                "`{}` must be a relative path without `..`",
                self.playbook
            )));
        }
        let inside = |path: &Path| {
            std::fs::canonicalize(path).map_err(|e| {
                invalid(format!(
                    "the playbook `{}` cannot be read: {e}",
                    self.playbook
                ))
            })
        };
        let (root, playbook) = (inside(&self.dir)?, inside(&self.playbook_path())?);
        if !playbook.starts_with(&root) || !playbook.is_file() {
            return Err(invalid(format!(
                "the playbook `{}` is not a file inside its directory",
                self.playbook
            )));
        }
        if let Some(name) = self.extra_vars.keys().find(|n| n.starts_with("slipway_")) {
            return Err(invalid(format!(
                "extra variable `{name}` would replace one of Slipway's own (`slipway_*`)"
            )));
        }
        Ok(())
    }

    /// Writes the playbook that runs Slipway's `slipway_playbook` and then the team's, and the
    /// extra variables, into a new directory under `scratch_dir`.
    pub(crate) fn generate(
        &self,
        slipway_playbook: &Path,
        scratch_dir: &Path,
    ) -> Result<GeneratedFiles, BakeError> {
        let io = |context, path: &Path, source| BakeError::Io {
            context,
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(scratch_dir)
            .map_err(|e| io("creating the scratch directory", scratch_dir, e))?;
        let dir = tempfile::Builder::new()
            .prefix("bake-")
            .tempdir_in(scratch_dir)
            .map_err(|e| io("creating a directory in", scratch_dir, e))?;
        let playbook = dir.path().join("site.yml");
        // JSON strings are YAML strings: any path is quoted safely.
        let quoted = |path: &Path| serde_json::Value::from(path.display().to_string()).to_string();
        let text = format!(
            "# Generated by Slipway: its own playbook first (the release's package), then the team's.\n\
             - import_playbook: {}\n- import_playbook: {}\n",
            quoted(slipway_playbook),
            quoted(&self.playbook_path())
        );
        std::fs::write(&playbook, text).map_err(|e| io("writing", &playbook, e))?;
        let extra_vars = dir.path().join("extra_vars.json");
        let json = serde_json::to_vec(&self.extra_vars).expect("JSON values serialise");
        std::fs::write(&extra_vars, json).map_err(|e| io("writing", &extra_vars, e))?;
        Ok(GeneratedFiles {
            _dir: dir,
            playbook,
            extra_vars,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(dir: &Path) -> TeamPlaybook {
        std::fs::create_dir_all(dir.join("roles/web/tasks")).unwrap();
        std::fs::write(dir.join("bake.yml"), "- hosts: all\n").unwrap();
        std::fs::write(dir.join("roles/web/tasks/main.yml"), "[]\n").unwrap();
        TeamPlaybook {
            dir: dir.to_path_buf(),
            playbook: "bake.yml".into(),
            extra_vars: [("app_env".to_string(), "prod".into())].into(),
            origin: "repository".into(),
        }
    }

    #[test]
    fn the_digest_covers_files_roles_variables_and_origin() {
        let dir = tempfile::tempdir().unwrap();
        let team = team(dir.path());
        let original = team.digest().unwrap();
        assert_eq!(original, team.digest().unwrap());

        let mut changed = team.clone();
        changed.extra_vars.insert("app_env".into(), "dev".into());
        assert_ne!(changed.digest().unwrap(), original);
        let mut changed = team.clone();
        changed.origin = "https://git.example.test/ops.git 1234".into();
        assert_ne!(changed.digest().unwrap(), original);
        std::fs::write(dir.path().join("roles/web/tasks/main.yml"), "- debug:\n").unwrap();
        assert_ne!(team.digest().unwrap(), original);
    }

    #[test]
    fn playbooks_outside_the_directory_and_slipway_variables_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = team(dir.path());
        bad.playbook = "../bake.yml".into();
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("without `..`"));
        let mut bad = team(dir.path());
        bad.playbook = "missing.yml".into();
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("cannot be read"));
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("escape.yml")).unwrap();
        let mut bad = team(dir.path());
        bad.playbook = "escape.yml".into();
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("not a file inside"));
        let mut bad = team(dir.path());
        bad.extra_vars.insert("slipway_version".into(), "1".into());
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("slipway_version"));
        assert!(team(dir.path()).check().is_ok());
    }

    #[test]
    fn generated_files_import_both_playbooks_and_are_removed_with_the_bake() {
        let dir = tempfile::tempdir().unwrap();
        let team = team(&dir.path().join("team dir"));
        let scratch = dir.path().join("scratch");
        let files = team
            .generate(Path::new("/share/ansible/bake.yml"), &scratch)
            .unwrap();
        let site = std::fs::read_to_string(&files.playbook).unwrap();
        let imports: Vec<&str> = site
            .lines()
            .filter_map(|l| l.strip_prefix("- import_playbook: "))
            .collect();
        assert_eq!(imports[0], "\"/share/ansible/bake.yml\"");
        assert!(imports[1].ends_with("team dir/bake.yml\""), "{site}");
        let vars: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&files.extra_vars).unwrap()).unwrap();
        assert_eq!(vars, serde_json::json!({"app_env": "prod"}));
        drop(files);
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    }
}
