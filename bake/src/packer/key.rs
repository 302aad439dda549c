//! The bake key: a digest of everything that decides what a bake produces.
//!
//! The caller records it with the image. A later bake with an equal key may reuse the recorded
//! image (a retried or resumed release) unless a rebake is asked for; any change to the base
//! image, the package, the template, the playbooks, the repository key or the variables gives
//! a new key.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::BakeError;
use super::request::BakeRequest;

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
    hex::encode(hasher.finalize())
}

/// Reads every regular file under `dir` (recursively), keyed by its `/`-separated relative path.
pub fn read_playbook_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, BakeError> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|source| io("reading", &current, source))?;
        for entry in entries {
            let path = entry
                .map_err(|source| io("reading", &current, source))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let contents =
                    std::fs::read(&path).map_err(|source| io("reading", &path, source))?;
                let relative = path.strip_prefix(dir).unwrap_or(&path);
                let key: Vec<String> = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                files.insert(key.join("/"), contents);
            }
        }
    }
    Ok(files)
}

impl BakeRequest {
    /// The variables that shape the image: all but the per-bake id and local file locations
    /// (the key's and the playbooks' contents are hashed instead).
    pub fn key_variables(&self) -> Vec<(&'static str, String)> {
        self.variables()
            .into_iter()
            .filter(|(name, _)| !matches!(*name, "bake_id" | "apt_key_file" | "playbook_file"))
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
        Ok(bake_key(&BakeKeyInputs {
            base_image_id,
            package_sha256,
            template: &template,
            playbook_files: &playbook_files,
            apt_key: &apt_key,
            variables: &variables,
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
