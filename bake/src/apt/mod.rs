//! Slipway's signed apt repository: `pool/` keeps every published .deb, `dists/stable` is the
//! signed index, republished atomically after each addition.
//!
//! Layout under the root (served as `/apt/`):
//! `pool/main/<first letter>/<name>/<file>.deb`, `dists/stable -> .stable-<N>` holding
//! `Release`, `InRelease`, `Release.gpg` and `main/binary-<arch>/Packages{,.gz}`, the public key
//! as `key.gpg`, and `db/` (the catalogue and the publish lock).

mod catalogue;
mod generation;
mod index;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::deb::{deb_filename, md5_hex, validate_identity, PackageInfo};
use crate::error::{Error, IoContext, Result};
use crate::signing::Signer;
use catalogue::{Catalogue, CatalogueEntry};
use generation::Dists;

/// What one `publish` did, for the release record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    pub package: PackageInfo,
    /// Relative to the repository root, e.g. `pool/main/h/hello/hello_1_amd64.deb`.
    pub pool_path: String,
    /// The `dists/stable` generation live when the publish returned (it lists the package).
    pub generation: u64,
    /// False when this exact file had already been published (a retried publish).
    pub newly_published: bool,
    pub published_at: chrono::DateTime<chrono::Utc>,
}

/// A signed apt repository in a directory. Publishes are serialized within the process by a
/// mutex and across processes by `flock` on `db/publish.lock`; readers need no lock.
pub struct AptRepository {
    root: PathBuf,
    signer: Signer,
    publish_mutex: Mutex<()>,
}

impl AptRepository {
    /// Opens (creating if needed) the repository at `root`, writes the public key as
    /// `key.gpg`, and publishes an empty signed index if none exists yet.
    #[tracing::instrument(skip_all, fields(root = %root.display()), err)]
    pub fn open(root: &Path, signer: Signer) -> Result<AptRepository> {
        for dir in ["pool", "dists", "db"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).io_context("creating apt repository", &path)?;
        }
        let repository = AptRepository {
            root: root.to_path_buf(),
            signer,
            publish_mutex: Mutex::new(()),
        };
        {
            let _guard = repository.lock()?;
            let key = repository.signer.public_key_binary()?;
            let key_path = repository.key_path();
            if fs::read(&key_path).ok().as_ref() != Some(&key) {
                write_atomically(&key_path, &key)?;
            }
            if Dists::new(root).current().is_none() {
                repository.republish(&Catalogue::load(root)?)?;
            }
        }
        Ok(repository)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The binary public keyring clients use with `signed-by=` (served as `/apt/key.gpg`).
    pub fn key_path(&self) -> PathBuf {
        self.root.join("key.gpg")
    }

    /// Every published package, oldest first.
    pub fn packages(&self) -> Result<Vec<PackageInfo>> {
        Ok(Catalogue::load(&self.root)?
            .packages
            .into_iter()
            .map(|entry| entry.info)
            .collect())
    }

    /// Adds the .deb at `deb` (described by `info`) to the pool and the signed index.
    /// Publishing the same file again is a no-op; a different file under the same name is refused.
    #[tracing::instrument(skip_all, fields(package = %info.filename), err)]
    pub fn publish(&self, deb: &Path, info: &PackageInfo) -> Result<PublishRecord> {
        let bytes = fs::read(deb).io_context("reading package", deb)?;
        check_matches(&bytes, info)?;
        let pool_path = pool_path(info);
        let _guard = self.lock()?;
        self.copy_into_pool(&pool_path, &bytes, info)?;
        let mut catalogue = Catalogue::load(&self.root)?;
        let same_file = catalogue
            .find(&info.filename)
            .map(|entry| entry.info.sha256 == info.sha256);
        let (generation, newly_published) = match same_file {
            Some(true) => (Dists::new(&self.root).current().unwrap_or_default(), false),
            Some(false) => {
                return Err(Error::PoolConflict {
                    filename: info.filename.clone(),
                })
            }
            None => {
                let md5 = md5_hex(&bytes);
                catalogue.packages.push(CatalogueEntry {
                    info: info.clone(),
                    md5,
                    pool_path: pool_path.clone(),
                });
                // Index first, catalogue second: a package in the catalogue is always in the
                // live index, so a retried publish that finds it there may return at once.
                let generation = self.republish(&catalogue)?;
                catalogue.save(&self.root)?;
                (generation, true)
            }
        };
        tracing::info!(generation, newly_published, "published package");
        Ok(PublishRecord {
            package: info.clone(),
            pool_path,
            generation,
            newly_published,
            published_at: chrono::Utc::now(),
        })
    }

    /// Regenerates, signs and atomically swaps in `dists/stable` from `catalogue`.
    fn republish(&self, catalogue: &Catalogue) -> Result<u64> {
        let indexes = index::package_indexes(catalogue);
        let release = index::release(catalogue, &indexes, chrono::Utc::now());
        // Two gpg processes at once: signing dominates the time of a publish.
        let (in_release, release_gpg) = std::thread::scope(|scope| {
            let detached = scope.spawn(|| self.signer.detach_sign(release.as_bytes()));
            let inline = self.signer.clearsign(release.as_bytes());
            (inline, detached.join().expect("signing thread panicked"))
        });
        let (in_release, release_gpg) = (in_release?, release_gpg?);
        Dists::new(&self.root).publish(&indexes, &release, &in_release, &release_gpg)
    }

    fn copy_into_pool(&self, pool_path: &str, bytes: &[u8], info: &PackageInfo) -> Result<()> {
        let path = self.root.join(pool_path);
        match fs::read(&path) {
            Ok(existing) if existing == bytes => Ok(()),
            Ok(_) => Err(Error::PoolConflict {
                filename: info.filename.clone(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let dir = path.parent().expect("pool paths have a directory");
                fs::create_dir_all(dir).io_context("creating pool directory", dir)?;
                write_atomically(&path, bytes)
            }
            Err(error) => Err(error).io_context("reading pool file", path),
        }
    }

    /// Serializes publishers: the mutex within this process, `flock` across processes.
    fn lock(&self) -> Result<(std::sync::MutexGuard<'_, ()>, File)> {
        let guard = self
            .publish_mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = self.root.join("db").join("publish.lock");
        let file = File::create(&path).io_context("opening publish lock", &path)?;
        file.lock().io_context("taking publish lock", &path)?;
        Ok((guard, file))
    }
}

/// The file must be what `info` says: its name, size and SHA-256 go into the signed index.
fn check_matches(bytes: &[u8], info: &PackageInfo) -> Result<()> {
    validate_identity(&info.name, &info.version, &info.architecture)?;
    let mismatch = |reason: String| {
        Err(Error::PackageMismatch {
            filename: info.filename.clone(),
            reason,
        })
    };
    let expected_name = deb_filename(&info.name, &info.version, &info.architecture);
    if info.filename != expected_name {
        return mismatch(format!("file name should be `{expected_name}`"));
    }
    if bytes.len() as u64 != info.size {
        return mismatch(format!("size is {} bytes, not {}", bytes.len(), info.size));
    }
    // The control paragraph goes into the index verbatim: it must be one paragraph, this package's.
    let control = &info.control;
    let own_paragraph = control.starts_with(&format!("Package: {}\n", info.name))
        && control.contains(&format!("\nVersion: {}\n", info.version))
        && control.contains(&format!("\nArchitecture: {}\n", info.architecture))
        && !control.trim_end().contains("\n\n")
        && !control.lines().any(|line| {
            ["Filename:", "Size:", "MD5sum:", "SHA256:"]
                .iter()
                .any(|f| line.starts_with(f))
        });
    if !own_paragraph {
        return mismatch("control is not this package's single control paragraph".into());
    }
    let sha256 = hex::encode(Sha256::digest(bytes));
    if sha256 != info.sha256 {
        return mismatch(format!("sha256 is {sha256}, not {}", info.sha256));
    }
    Ok(())
}

fn pool_path(info: &PackageInfo) -> String {
    let letter = &info.name[..1];
    format!("pool/main/{letter}/{}/{}", info.name, info.filename)
}

/// Writes `bytes` to `path` and flushes them to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).io_context("writing", path)?;
    file.write_all(bytes).io_context("writing", path)?;
    file.sync_all().io_context("syncing", path)
}

/// Replaces `path` atomically: a synced temporary file in the same directory, then rename(2).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().expect("a file path").to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    write_synced(&temporary, bytes)?;
    fs::rename(&temporary, path).io_context("replacing", path)
}
