//! The bake key: a digest of everything that decides what a bake produces.
//!
//! The caller records it with the image. A later bake with an equal key may reuse the recorded
//! image (a retried or resumed release) unless a rebake is asked for; any change to the base
//! image, the package, the template, the playbooks (Slipway's and the team's, with the team's
//! roles and extra variables), the repository key or the variables gives a new key.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::BakeError;
use super::request::BakeRequest;
use super::team::TeamPlaybook;

/// The inputs of [`bake_key`], all already in memory.
#[derive(Debug, Clone, Copy)]
pub struct BakeKeyInputs<'a> {
    /// The Docker base image id (`sha256:...`), or for AMIs the source AMI id (or its filter).
    pub base_image_id: &'a str,
    pub package_sha256: &'a str,
    pub template: &'a [u8],
    /// Every file of the playbook directory, by path relative to it.
    pub playbook_files: &'a BTreeMap<String, Vec<u8>>,
    /// The repository key the image will trust.
    pub apt_key: &'a [u8],
    /// The template variables that end up in the image (see [`BakeRequest::key_variables`]).
    pub variables: &'a [(&'a str, String)],
    /// The team's playbook, variables and their origin ([`TeamPlaybook::digest`]), if any.
    pub team: Option<&'a str>,
}

/// Lower-case hex SHA-256 over a length-prefixed encoding of the inputs, files in path order.
pub fn bake_key(inputs: &BakeKeyInputs<'_>) -> String {
    let mut hasher = Sha256::new();
    let mut field = |tag: &str, bytes: &[u8]| {
        for part in [tag.as_bytes(), bytes] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    };
    field("slipway-bake-key", b"1");
    field("base_image_id", inputs.base_image_id.as_bytes());
    field("package_sha256", inputs.package_sha256.as_bytes());
    field("template", inputs.template);
    field("apt_key", inputs.apt_key);
    for (path, contents) in inputs.playbook_files {
        field("playbook_path", path.as_bytes());
        field("playbook_file", contents);
    }
    for (name, value) in inputs.variables {
        field("variable_name", name.as_bytes());
        field("variable_value", value.as_bytes());
    }
    if let Some(team) = inputs.team {
        field("team", team.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Most files a playbook directory may hold, and most bytes in all: a team's directory comes
/// from outside and is read whole into memory.
pub const MAX_PLAYBOOK_FILES: usize = 10_000;
pub const MAX_PLAYBOOK_BYTES: u64 = 64 * 1024 * 1024;

/// Reads every regular file under `dir` (recursively), keyed by its `/`-separated relative path.
/// A symbolic link counts as its target's text (what it names inside `dir` is read under its
/// own path); one that leads outside `dir` is refused, naming it, and so is a directory over
/// [`MAX_PLAYBOOK_FILES`] files or [`MAX_PLAYBOOK_BYTES`] bytes.
pub fn read_playbook_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, BakeError> {
    let root = std::fs::canonicalize(dir).map_err(|source| io("reading", dir, source))?;
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    let too_large = || BakeError::InvalidRequest {
        field: "playbook directory",
        reason: format!(
            "{} holds more than {MAX_PLAYBOOK_FILES} files or {} MiB",
            dir.display(),
            MAX_PLAYBOOK_BYTES / (1024 * 1024)
        ),
    };
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|source| io("reading", &current, source))?;
        for entry in entries {
            let path = entry
                .map_err(|source| io("reading", &current, source))?
                .path();
            let relative = path.strip_prefix(dir).unwrap_or(&path);
            let key: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let key = key.join("/");
            let metadata =
                std::fs::symlink_metadata(&path).map_err(|source| io("reading", &path, source))?;
            let contents = if metadata.is_symlink() {
                let target = std::fs::canonicalize(&path);
                if !target.is_ok_and(|target| target.starts_with(&root)) {
                    return Err(BakeError::InvalidRequest {
                        field: "playbook directory",
                        reason: format!(
                            "`{key}` is a symbolic link that leads outside {} (or nowhere)",
                            dir.display()
                        ),
                    });
                }
                let target =
                    std::fs::read_link(&path).map_err(|source| io("reading", &path, source))?;
                format!("symlink:{}", target.display()).into_bytes()
            } else if metadata.is_dir() {
                pending.push(path);
                continue;
            } else {
                total += metadata.len();
                if total > MAX_PLAYBOOK_BYTES {
                    return Err(too_large());
                }
                std::fs::read(&path).map_err(|source| io("reading", &path, source))?
            };
            files.insert(key, contents);
            if files.len() > MAX_PLAYBOOK_FILES {
                return Err(too_large());
            }
        }
    }
    Ok(files)
}

impl BakeRequest {
    /// The variables that shape the image: all but the per-bake id, the key itself and local
    /// file locations (the key's and the playbooks' contents are hashed instead).
    pub fn key_variables(&self) -> Vec<(&'static str, String)> {
        self.variables()
            .into_iter()
            .filter(|(name, _)| {
                !matches!(
                    *name,
                    "bake_id" | "bake_key" | "apt_key_file" | "playbook_file" | "roles_path"
                )
            })
            .collect()
    }

    /// Reads the template, the playbook directory and the repository key, and returns
    /// [`bake_key`] for this request on `base_image_id` with the package `package_sha256`.
    pub fn bake_key(&self, base_image_id: &str, package_sha256: &str) -> Result<String, BakeError> {
        let template = std::fs::read(&self.template)
            .map_err(|source| io("reading template", &self.template, source))?;
        let apt_key = std::fs::read(&self.apt_key_path)
            .map_err(|source| io("reading apt key", &self.apt_key_path, source))?;
        let playbook_files = read_playbook_dir(&self.playbook_dir)?;
        let variables = self.key_variables();
        let team = self.team.as_ref().map(TeamPlaybook::digest).transpose()?;
        Ok(bake_key(&BakeKeyInputs {
            base_image_id,
            package_sha256,
            template: &template,
            playbook_files: &playbook_files,
            apt_key: &apt_key,
            variables: &variables,
            team: team.as_deref(),
        }))
    }
}

fn io(context: &'static str, path: &Path, source: std::io::Error) -> BakeError {
    BakeError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}
