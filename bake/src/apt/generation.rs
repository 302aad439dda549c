//! Atomic publication of `dists/stable`: each publish writes a fresh `dists/.stable-<N>` and
//! swaps the `dists/stable` symlink with rename(2), so a reader sees the old or the new index,
//! never a mix. The previous generation is kept, and its by-hash files are linked into the new
//! one, so an apt client that read the old `InRelease` still finds the indexes it names.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::index::{self, IndexFile, SUITE};
use crate::error::{IoContext, Result};

/// The `dists/` directory of a repository.
pub(crate) struct Dists {
    dir: PathBuf,
}

impl Dists {
    pub(crate) fn new(root: &Path) -> Dists {
        Dists {
            dir: root.join("dists"),
        }
    }

    /// The live generation's directory (`dists/stable`, followed).
    pub(crate) fn live_dir(&self) -> PathBuf {
        self.dir.join(SUITE)
    }

    /// The generation `dists/stable` points at, if any was published.
    pub(crate) fn current(&self) -> Option<u64> {
        let target = fs::read_link(self.dir.join(SUITE)).ok()?;
        generation_number(target.to_str()?)
    }

    /// Writes generation `current + 1` from `indexes` and the signed `release`, then swaps it in.
    pub(crate) fn publish(
        &self,
        indexes: &[IndexFile],
        release: &str,
        in_release: &[u8],
        release_gpg: &[u8],
    ) -> Result<u64> {
        let previous = self.current();
        let generation = previous.map_or(1, |n| n + 1);
        let dir = self.dir.join(generation_dir(generation));
        if dir.exists() {
            // Left by a publish that crashed before its swap: never visible, safe to redo.
            fs::remove_dir_all(&dir).io_context("removing unfinished generation", &dir)?;
        }
        for file in indexes {
            let path = dir.join(&file.path);
            let parent = path.parent().expect("index paths have a directory");
            let by_hash = parent.join("by-hash").join("SHA256");
            fs::create_dir_all(&by_hash).io_context("creating index directory", &by_hash)?;
            super::write_synced(&path, &file.contents)?;
            let hashed = by_hash.join(&file.sha256);
            if !hashed.exists() {
                fs::hard_link(&path, &hashed).io_context("linking by-hash index", &hashed)?;
            }
        }
        if let Some(previous) = previous {
            self.link_previous_by_hash(previous, &dir)?;
        }
        super::write_synced(&dir.join("Release"), release.as_bytes())?;
        super::write_synced(&dir.join("InRelease"), in_release)?;
        super::write_synced(&dir.join("Release.gpg"), release_gpg)?;
        self.swap_to(generation)?;
        self.remove_older_than(previous.unwrap_or(generation))?;
        Ok(generation)
    }

    /// Links the indexes the previous `Release` named into the new generation's by-hash dirs.
    fn link_previous_by_hash(&self, previous: u64, new_dir: &Path) -> Result<()> {
        let old_dir = self.dir.join(generation_dir(previous));
        let Ok(old_release) = fs::read_to_string(old_dir.join("Release")) else {
            return Ok(());
        };
        for (sha256, path) in index::listed_sha256(&old_release) {
            let Some(parent) = Path::new(&path).parent() else {
                continue;
            };
            let relative = parent.join("by-hash").join("SHA256").join(&sha256);
            let (source, dest) = (old_dir.join(&relative), new_dir.join(&relative));
            if source.exists() && !dest.exists() && dest.parent().is_some_and(Path::exists) {
                fs::hard_link(&source, &dest)
                    .io_context("linking previous by-hash index", &dest)?;
            }
        }
        Ok(())
    }

    fn swap_to(&self, generation: u64) -> Result<()> {
        let staged = self.dir.join(format!(".{SUITE}-link-{generation}"));
        let _ = fs::remove_file(&staged);
        symlink(generation_dir(generation), &staged)
            .io_context("creating generation link", &staged)?;
        let live = self.dir.join(SUITE);
        fs::rename(&staged, &live).io_context("swapping generation link", &live)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .io_context("syncing dists directory", &self.dir)
    }

    /// Removes every generation older than `keep` (which stays for readers in flight).
    fn remove_older_than(&self, keep: u64) -> Result<()> {
        for entry in fs::read_dir(&self.dir).io_context("listing generations", &self.dir)? {
            let entry = entry.io_context("listing generations", &self.dir)?;
            let name = entry.file_name();
            let old = name
                .to_str()
                .and_then(generation_number)
                .is_some_and(|n| n < keep);
            if old && entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(entry.path())
                    .io_context("removing old generation", entry.path())?;
            }
        }
        Ok(())
    }
}

fn generation_dir(generation: u64) -> String {
    format!(".{SUITE}-{generation}")
}

fn generation_number(name: &str) -> Option<u64> {
    name.strip_prefix(&format!(".{SUITE}-"))?.parse().ok()
}
