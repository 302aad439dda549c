//! Slipway's signed apt repository: `pool/` keeps every published .deb, `dists/stable` is the
//! signed index, republished atomically after each addition.
//!
//! Layout under the root (served as `/apt/`):
//! `pool/main/<first letter>/<name>/<file>.deb`, `dists/stable -> .stable-<N>` holding
//! `Release`, `InRelease`, `Release.gpg` and `main/binary-<arch>/Packages{,.gz}`, the public key
//! as `key.gpg`, and `db/` (the catalogue and the publish lock).
//!
//! The directory may also be one server's working copy of a repository kept elsewhere (an S3
//! bucket): [`AptRepository::adopt_catalogue`] takes the remote list of packages before a
//! change, and [`AptRepository::live_index_files`] names what to upload after it, in an order
//! that keeps every reader consistent.

mod catalogue;
mod generation;
mod index;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::deb::{deb_filename, validate_identity, PackageInfo};
use crate::error::{Error, IoContext, Result};
use crate::signing::Signer;
use catalogue::{Catalogue, CatalogueEntry};
use generation::Dists;
pub use index::SUITE;

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

/// A package [`AptRepository::remove`] took out of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedPackage {
    pub filename: String,
    /// Relative to the repository root, e.g. `pool/main/h/hello/hello_1_amd64.deb`.
    pub pool_path: String,
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
            if !Catalogue::path(root).exists() {
                Catalogue::default().save(root)?;
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

    /// The catalogue's file (`db/catalogue.json`), the list of published packages.
    pub fn catalogue_path(&self) -> PathBuf {
        Catalogue::path(&self.root)
    }

    /// Replaces the catalogue with `bytes`, the catalogue of the repository this directory is
    /// a working copy of; a catalogue that does not parse is refused and changes nothing.
    pub fn adopt_catalogue(&self, bytes: &[u8]) -> Result<()> {
        let path = Catalogue::path(&self.root);
        let catalogue: Catalogue = serde_json::from_slice(bytes)
            .map_err(|source| Error::CorruptCatalogue { path, source })?;
        let _guard = self.lock()?;
        catalogue.save(&self.root)
    }

    /// The pool files of every published package, relative to the root.
    pub fn pool_paths(&self) -> Result<Vec<String>> {
        Ok(Catalogue::load(&self.root)?
            .packages
            .into_iter()
            .map(|entry| entry.pool_path)
            .collect())
    }

    /// Every file of the live index, relative to the root, in the order a copy must receive
    /// them to stay consistent for its readers: the by-hash indexes its `Release` names
    /// first (not the previous generation's, kept here for this directory's readers), then
    /// the plain indexes, then `Release`, `Release.gpg` and `InRelease`.
    pub fn live_index_files(&self) -> Result<Vec<String>> {
        let live = Dists::new(&self.root).live_dir();
        let release_path = live.join("Release");
        let release = fs::read_to_string(&release_path).io_context("reading", &release_path)?;
        let named = by_hash_files(&release);
        let mut files = Vec::new();
        list_files(&live, &mut files)?;
        let mut relative: Vec<String> = files
            .iter()
            .filter_map(|path| path.strip_prefix(&live).ok())
            .map(|path| format!("dists/{}/{}", index::SUITE, path.display()))
            .filter(|path| !path.contains("/by-hash/") || named.contains(path))
            .collect();
        let rank = |path: &str| match path.rsplit('/').next() {
            Some("Release") => 2,
            Some("Release.gpg") => 3,
            Some("InRelease") => 4,
            _ if path.contains("/by-hash/") => 0,
            _ => 1,
        };
        relative.sort_by_key(|path| (rank(path), path.clone()));
        Ok(relative)
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
    /// The file is streamed (hashed, then copied), never read whole into memory.
    #[tracing::instrument(skip_all, fields(package = %info.filename), err)]
    pub fn publish(&self, deb: &Path, info: &PackageInfo) -> Result<PublishRecord> {
        let digests = FileDigests::of(deb)?;
        check_matches(&digests, info)?;
        let pool_path = pool_path(info);
        let _guard = self.lock()?;
        self.copy_into_pool(&pool_path, deb, info)?;
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
                catalogue.packages.push(CatalogueEntry {
                    info: info.clone(),
                    md5: digests.md5,
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

    /// Removes the packages whose file names are in `filenames` from the signed index, then
    /// their files from the pool (so a reader of the old index finds them until it is
    /// replaced). Names not in the repository are ignored. Returns what it removed.
    #[tracing::instrument(skip_all, err)]
    pub fn remove(&self, filenames: &[String]) -> Result<Vec<RemovedPackage>> {
        let _guard = self.lock()?;
        let mut catalogue = Catalogue::load(&self.root)?;
        let (gone, kept): (Vec<_>, Vec<_>) = catalogue
            .packages
            .drain(..)
            .partition(|entry| filenames.contains(&entry.info.filename));
        catalogue.packages = kept;
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        // Index, catalogue, files: a removal cut short is finished by the next one (the
        // catalogue still lists what the index may still list), and a reader of the old index
        // finds every file it names until the new index is live.
        let generation = self.republish(&catalogue)?;
        catalogue.save(&self.root)?;
        for entry in &gone {
            let path = self.root.join(&entry.pool_path);
            if let Err(error) = fs::remove_file(&path) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    return Err(error).io_context("removing package", &path);
                }
            }
        }
        tracing::info!(generation, removed = gone.len(), "removed packages");
        Ok(gone
            .into_iter()
            .map(|entry| RemovedPackage {
                filename: entry.info.filename,
                pool_path: entry.pool_path,
            })
            .collect())
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

    /// Copies `deb` into the pool unless the pool holds it already; the copy is checked
    /// against `info` as it is written, so a file changed since it was checked is not kept.
    fn copy_into_pool(&self, pool_path: &str, deb: &Path, info: &PackageInfo) -> Result<()> {
        let path = self.root.join(pool_path);
        let conflict = || Error::PoolConflict {
            filename: info.filename.clone(),
        };
        match FileDigests::of(&path) {
            Ok(existing) if existing.sha256 == info.sha256 && existing.size == info.size => {
                return Ok(())
            }
            Ok(_) => return Err(conflict()),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let dir = path.parent().expect("pool paths have a directory");
        fs::create_dir_all(dir).io_context("creating pool directory", dir)?;
        let mut temporary =
            tempfile::NamedTempFile::new_in(dir).io_context("creating pool file in", dir)?;
        let mut source = File::open(deb).io_context("reading package", deb)?;
        let copied = FileDigests::copy(&mut source, temporary.as_file_mut())
            .io_context("copying package into", &path)?;
        if copied.sha256 != info.sha256 || copied.size != info.size {
            return Err(Error::PackageMismatch {
                filename: info.filename.clone(),
                reason: "the file changed while it was being published".into(),
            });
        }
        temporary
            .as_file()
            .sync_all()
            .io_context("syncing", &path)?;
        temporary
            .persist(&path)
            .map_err(|e| e.error)
            .io_context("replacing", &path)?;
        Ok(())
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

/// The size and hashes of a file, computed in one streaming pass.
struct FileDigests {
    size: u64,
    sha256: String,
    md5: String,
}

impl FileDigests {
    fn of(path: &Path) -> Result<FileDigests> {
        let mut file = File::open(path).io_context("reading package", path)?;
        FileDigests::copy(&mut file, &mut std::io::sink()).io_context("reading package", path)
    }

    /// Copies `from` into `to`, hashing what passes.
    fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<FileDigests> {
        let mut sha256 = Sha256::new();
        let mut md5 = <md5::Md5 as md5::Digest>::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let read = match from.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            sha256.update(&buffer[..read]);
            md5::Digest::update(&mut md5, &buffer[..read]);
            to.write_all(&buffer[..read])?;
            size += read as u64;
        }
        Ok(FileDigests {
            size,
            sha256: hex::encode(sha256.finalize()),
            md5: hex::encode(md5::Digest::finalize(md5)),
        })
    }
}

/// The file must be what `info` says: its name, size and SHA-256 go into the signed index.
fn check_matches(file: &FileDigests, info: &PackageInfo) -> Result<()> {
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
    if file.size != info.size {
        return mismatch(format!("size is {} bytes, not {}", file.size, info.size));
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
    if file.sha256 != info.sha256 {
        return mismatch(format!("sha256 is {}, not {}", file.sha256, info.sha256));
    }
    Ok(())
}

fn pool_path(info: &PackageInfo) -> String {
    let letter = &info.name[..1];
    format!("pool/main/{letter}/{}/{}", info.name, info.filename)
}

/// The by-hash index files (relative to the root) that the `Release` file `release` names:
/// what a reader of that `Release` may still fetch.
pub fn by_hash_files(release: &str) -> Vec<String> {
    index::listed_sha256(release)
        .into_iter()
        .filter_map(|(sha256, path)| {
            let parent = Path::new(&path).parent()?.to_str()?.to_owned();
            Some(format!(
                "dists/{}/{parent}/by-hash/SHA256/{sha256}",
                index::SUITE
            ))
        })
        .collect()
}

/// Appends every regular file under `dir` (following the links in it) to `files`.
fn list_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).io_context("listing", dir)? {
        let path = entry.io_context("listing", dir)?.path();
        if path.is_dir() {
            list_files(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
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
