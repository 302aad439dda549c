//! Getting a build's files: a workspace under the data dir holding the commit's tree from the
//! project's mirror (with `.git` only when the pipeline asks), and its `.slipway.yml`.
//!
//! Workspaces live in `<data_dir>/workspaces/<build id>` (and what a passing build produced,
//! exported for packaging, in `<build id>.built`), go when their build ends, and the ones a
//! killed server left are removed at the next start.

use std::path::{Path, PathBuf};

use anyhow::Context;
use slipway_pipeline::Spec;

use crate::mirror::Mirrors;

/// The pipeline file at the root of an application repository.
pub const SPEC_FILE: &str = ".slipway.yml";

/// Where builds get their files: the mirrors and the workspaces directory.
pub struct Sources {
    mirrors: Mirrors,
    workspaces: PathBuf,
}

impl Sources {
    /// Opens `<data_dir>/mirrors` and `<data_dir>/workspaces`, and removes the workspaces of
    /// builds that a killed server never finished (no build runs yet when this is called).
    pub fn open(data_dir: &Path) -> anyhow::Result<Sources> {
        let mirrors = Mirrors::in_data_dir(data_dir)
            .with_context(|| format!("cannot make {}/mirrors", data_dir.display()))?;
        let workspaces = data_dir.join("workspaces");
        let removed = remove_leftovers(&workspaces)
            .with_context(|| format!("cannot clear {}", workspaces.display()))?;
        if removed > 0 {
            tracing::warn!(
                count = removed,
                "removed the workspaces of builds interrupted by a server stop"
            );
        }
        Ok(Sources {
            mirrors,
            workspaces,
        })
    }

    pub fn mirrors(&self) -> &Mirrors {
        &self.mirrors
    }

    /// A new, empty workspace named after the build.
    pub fn workspace(&self, build: uuid::Uuid) -> Result<Workspace, String> {
        self.workspace_named(build.simple().to_string())
    }

    /// A new, empty workspace for one request about a build an agent runs (its source to
    /// send, its package to publish): named after the build and the request, so requests
    /// about one build never share one.
    pub fn scratch(&self, build: uuid::Uuid) -> Result<Workspace, String> {
        self.workspace_named(format!(
            "{}-{}",
            build.simple(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    fn workspace_named(&self, name: String) -> Result<Workspace, String> {
        let dir = self.workspaces.join(name);
        // A rebuild never reuses an id, so anything here is an earlier attempt's remains.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot make the workspace {}: {e}", dir.display()))?;
        Ok(Workspace { dir })
    }
}

/// A build's workspace directory, removed when dropped (the build ended, however it ended).
pub struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A scratch file next to the workspace (never inside it), for git's index.
    pub fn index_file(&self) -> PathBuf {
        self.dir.with_extension("index")
    }

    /// Next to the workspace: the cache's scratch directory (archives on their way in and
    /// out, the paths exported from the build's volume).
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.with_extension("cache")
    }

    /// Next to the workspace: what the steps left in the build's volume, exported after they
    /// passed; the package is made from it. Made empty here.
    pub fn built_dir(&self) -> Result<PathBuf, String> {
        let dir = self.dir.with_extension("built");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot make the directory {}: {e}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.index_file());
        for dir in [
            self.dir.clone(),
            self.dir.with_extension("built"),
            self.cache_dir(),
        ] {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(workspace = %dir.display(), error = %e, "cannot remove a workspace");
                }
            }
        }
    }
}

/// Reads and parses `.slipway.yml` from a checkout; errors name the file, line and column.
pub fn read_spec(dir: &Path) -> Result<Spec, String> {
    let path = dir.join(SPEC_FILE);
    let text = slipway_pipeline::spec::read_file(&path)
        .map_err(|e| format!("cannot read {SPEC_FILE} at the root of the repository: {e}"))?;
    slipway_pipeline::parse(&text).map_err(|e| format!("{SPEC_FILE}: {e}"))
}

/// Makes `dir` (private to the server) or empties it; returns how many workspaces it removed.
fn remove_leftovers(dir: &Path) -> std::io::Result<usize> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
            removed += 1;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(removed)
}
