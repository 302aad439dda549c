//! The repository's list of published packages, persisted as one JSON file under `db/`.
//!
//! Indexes are regenerated from it, so publishing one package never re-reads the pool.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::deb::PackageInfo;
use crate::error::{Error, IoContext, Result};

/// One package in the pool, with what an index paragraph needs beyond its control fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CatalogueEntry {
    pub info: PackageInfo,
    pub md5: String,
    /// Relative to the repository root, e.g. `pool/main/h/hello/hello_1_amd64.deb`.
    pub pool_path: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Catalogue {
    pub packages: Vec<CatalogueEntry>,
}

impl Catalogue {
    pub(crate) fn path(root: &Path) -> PathBuf {
        root.join("db").join("catalogue.json")
    }

    /// Loads the catalogue; a repository that never published has an empty one.
    pub(crate) fn load(root: &Path) -> Result<Catalogue> {
        let path = Catalogue::path(root);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| Error::CorruptCatalogue { path, source }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Catalogue::default()),
            Err(error) => Err(error).io_context("reading apt catalogue", path),
        }
    }

    /// Replaces the catalogue file atomically (write, fsync, rename).
    pub(crate) fn save(&self, root: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).expect("catalogue serialises");
        super::write_atomically(&Catalogue::path(root), &bytes)
    }

    pub(crate) fn find(&self, filename: &str) -> Option<&CatalogueEntry> {
        self.packages
            .iter()
            .find(|entry| entry.info.filename == filename)
    }

    /// Architectures with their own index: amd64 always, plus any published; `all` packages
    /// are listed in every one of them.
    pub(crate) fn architectures(&self) -> Vec<String> {
        let mut architectures: Vec<String> = self
            .packages
            .iter()
            .map(|entry| entry.info.architecture.clone())
            .filter(|arch| arch != "all")
            .chain(["amd64".to_string()])
            .collect();
        architectures.sort();
        architectures.dedup();
        architectures
    }
}
