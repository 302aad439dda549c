//! Build caches: what `cache:` in `.slipway.yml` names, kept between a project's builds in
//! `[cache]`'s directory or bucket. A build resolves its keys from the commit's files, restores
//! the archive of its key (or else of its fallback key) into the workspace before the steps,
//! and, once every step passed, saves the paths as the steps left them under its key, unless
//! it restored that very key (a key's archive is written once; a key that holds a lock file's
//! hash changes when the dependencies do). Archives are named `<project>/<key>.tar.gz`, so a
//! project only ever reads its own. Housekeeping removes archives no build used for
//! `expire_days`. Nothing here fails a build: problems are lines of the cache steps' logs.

mod archive;
mod storage;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};
use slipway_pipeline::spec::{CachePlan, KeyError, KeyTemplate};
use slipway_pipeline::{BuildCache, CacheReport};

use crate::config::{CacheConfig, CacheStorage};
pub use storage::RemoteArchives;
use storage::{Storage, SUFFIX};

/// The longest a download or an upload of an archive may take; past it the build goes on
/// without. (Unpacking and packing are bounded by the archive's limit instead: a merge into
/// the workspace is never left half done.)
const TIME_LIMIT: Duration = Duration::from_secs(600);

/// The installation's caches: where archives live, how large one may be, how long one lasts.
pub struct Caches {
    storage: Storage,
    limit_bytes: u64,
    expire_after: Duration,
}

impl Caches {
    /// The caches `config` describes. A bucket that does not answer is logged, not fatal: a
    /// build without its cache is only slower.
    pub async fn open(config: &CacheConfig) -> Caches {
        let storage = match &config.storage {
            CacheStorage::Dir(dir) => Storage::Dir(dir.clone()),
            CacheStorage::S3(settings) => {
                let client = crate::apt_bucket::s3_client(settings).await;
                if let Err(error) = client.head_bucket().bucket(&settings.bucket).send().await {
                    tracing::warn!(bucket = %settings.bucket, error = %aws_sdk_s3::error::DisplayErrorContext(&error), "the cache bucket does not answer; builds run without their caches until it does");
                }
                Storage::Bucket {
                    client,
                    settings: settings.clone(),
                }
            }
        };
        Caches {
            storage,
            limit_bytes: config.limit_bytes,
            expire_after: config.expire_after,
        }
    }

    /// Caches kept by `remote` (a build agent's, by the server), archives at most
    /// `limit_bytes`; they expire where they are kept.
    pub fn remote(remote: Arc<dyn RemoteArchives>, limit_bytes: u64) -> Caches {
        Caches {
            storage: Storage::Remote(remote),
            limit_bytes,
            expire_after: Duration::MAX,
        }
    }

    /// The largest archive a cache keeps.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Copies project `project`'s archive of `key` into `dest` (the server, for an agent's
    /// build); `None` when there is none.
    pub async fn fetch(
        &self,
        project: &str,
        key: &str,
        dest: &Path,
    ) -> anyhow::Result<Option<u64>> {
        let name = archive_name(project, key)?;
        self.storage.fetch(&name, dest, self.limit_bytes).await
    }

    /// Keeps `archive` as project `project`'s archive of `key` (the server, for an agent's
    /// build).
    pub async fn store(&self, project: &str, key: &str, archive: &Path) -> anyhow::Result<()> {
        let name = archive_name(project, key)?;
        self.storage.store(&name, archive).await
    }

    /// Caches in the directory `dir` (`slipway pipeline exec --cache-dir`).
    pub fn in_dir(dir: PathBuf, limit_bytes: u64) -> Caches {
        Caches {
            storage: Storage::Dir(dir),
            limit_bytes,
            expire_after: Duration::MAX,
        }
    }

    /// One build's cache of `project`, working in the directory `scratch` (made if needed,
    /// the caller removes it).
    pub fn for_build(self: &Arc<Self>, project: &str, scratch: PathBuf) -> ProjectCache {
        ProjectCache {
            caches: self.clone(),
            project: project.to_owned(),
            scratch,
            resolved: Mutex::new(Resolved::default()),
            read_only: None,
        }
    }

    /// Removes the archives no build used for `expire_days`; how many.
    pub async fn expire(&self) -> anyhow::Result<usize> {
        self.storage
            .expire(self.expire_after)
            .await
            .with_context(|| format!("expiring caches in {}", self.storage.describe()))
    }
}

/// One build's cache: the keys its restore resolved are those its save uses.
pub struct ProjectCache {
    caches: Arc<Caches>,
    project: String,
    scratch: PathBuf,
    resolved: Mutex<Resolved>,
    /// Why this build restores but never saves, when it does not.
    read_only: Option<String>,
}

impl ProjectCache {
    /// This cache restored but never saved, for the reason `why` (a build of code the
    /// project's team did not write must not put files in the next builds of the project).
    pub fn read_only(mut self, why: impl Into<String>) -> ProjectCache {
        self.read_only = Some(why.into());
        self
    }
}

/// What a restored archive brought.
struct Restored {
    /// The archive's size.
    bytes: u64,
    /// The cached paths it held.
    found: BTreeSet<String>,
    /// Its entries left out because the commit has files there.
    kept: u64,
}

/// What the restore decided.
#[derive(Default)]
struct Resolved {
    /// The key to save under, or why there is none.
    key: Option<Result<String, String>>,
    /// Whether the archive of `key` itself was restored.
    restored_key: bool,
}

#[async_trait::async_trait]
impl BuildCache for ProjectCache {
    async fn restore(&self, cache: &CachePlan, branch: &str, workspace: &Path) -> CacheReport {
        let key = render(&cache.key, branch, workspace);
        let fallback = cache
            .fallback_key
            .as_ref()
            .map(|template| render(template, branch, workspace));
        self.resolved.lock().expect("cache lock").key = Some(key.clone());
        let own = key.clone().ok();
        let mut lines = Vec::new();
        let mut candidates = Vec::new();
        for (what, resolved) in [("key", Some(key)), ("fallback key", fallback)] {
            match resolved {
                Some(Ok(key)) if !candidates.contains(&key) => candidates.push(key),
                Some(Err(why)) => lines.push(format!("{what}: {why}")),
                _ => {}
            }
        }
        if candidates.is_empty() {
            return CacheReport::problem(lines, "not restored: no key could be made");
        }
        for key in &candidates {
            let started = Instant::now();
            match self.restore_key(key, &cache.paths, workspace).await {
                Ok(None) => lines.push(format!("no cache saved under key `{key}`")),
                Ok(Some(Restored { bytes, found, kept })) => {
                    let restored: Vec<&str> = cache
                        .paths
                        .iter()
                        .filter(|path| found.contains(*path))
                        .map(String::as_str)
                        .collect();
                    lines.push(format!(
                        "restored {} from key `{key}` ({bytes} bytes) in {:.1}s",
                        restored.join(", "),
                        started.elapsed().as_secs_f64()
                    ));
                    if kept > 0 {
                        lines.push(format!(
                            "{kept} cached entries were left out: the commit has files there"
                        ));
                    }
                    self.resolved.lock().expect("cache lock").restored_key =
                        own.as_ref() == Some(key);
                    return CacheReport {
                        lines,
                        problem: None,
                    };
                }
                Err(error) => {
                    return CacheReport::problem(lines, format!("not restored: {error:#}"));
                }
            }
        }
        CacheReport {
            lines,
            problem: None,
        }
    }

    fn limit_bytes(&self) -> u64 {
        self.caches.limit_bytes
    }

    fn export_dir(&self) -> Result<PathBuf, String> {
        if let Some(why) = &self.read_only {
            return Err(why.clone());
        }
        let dir = self.scratch.join("export");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot make the directory {}: {e}", dir.display()))?;
        Ok(dir)
    }

    async fn save(&self, cache: &CachePlan, exported: &Path, missing: &[String]) -> CacheReport {
        let (key, restored_key) = {
            let resolved = self.resolved.lock().expect("cache lock");
            (resolved.key.clone(), resolved.restored_key)
        };
        let key = match key {
            Some(Ok(key)) => key,
            Some(Err(why)) => return CacheReport::problem(Vec::new(), format!("not saved: {why}")),
            None => return CacheReport::problem(Vec::new(), "not saved: no key was made"),
        };
        if restored_key {
            return CacheReport {
                lines: vec![format!(
                    "key `{key}` was restored at the start: its archive is kept as it is"
                )],
                problem: None,
            };
        }
        let mut lines: Vec<String> = missing
            .iter()
            .map(|path| format!("`{path}` is not in the workspace: not cached"))
            .collect();
        let started = Instant::now();
        match self.save_key(&key, exported).await {
            Ok(bytes) => {
                let saved: Vec<&str> = cache
                    .paths
                    .iter()
                    .filter(|path| !missing.contains(path))
                    .map(String::as_str)
                    .collect();
                lines.push(format!(
                    "saved {} under key `{key}` ({bytes} bytes) in {:.1}s",
                    saved.join(", "),
                    started.elapsed().as_secs_f64()
                ));
                CacheReport {
                    lines,
                    problem: None,
                }
            }
            Err(error) => CacheReport::problem(lines, format!("not saved: {error:#}")),
        }
    }
}

impl ProjectCache {
    /// The name of `key`'s archive: in the project's own namespace.
    fn archive_name(&self, key: &str) -> String {
        format!("{}/{key}{SUFFIX}", self.project)
    }

    /// Fetches, unpacks and merges the archive of `key`; `None` when there is none.
    async fn restore_key(
        &self,
        key: &str,
        paths: &[String],
        workspace: &Path,
    ) -> anyhow::Result<Option<Restored>> {
        let limit = self.caches.limit_bytes;
        std::fs::create_dir_all(&self.scratch)?;
        let archive = self.scratch.join("restore.tar.gz");
        let name = self.archive_name(key);
        let fetch = self.caches.storage.fetch(&name, &archive, limit);
        let fetched = tokio::time::timeout(TIME_LIMIT, fetch)
            .await
            .unwrap_or_else(|_| Err(too_slow()));
        let Some(bytes) = fetched? else {
            return Ok(None);
        };
        let staged = self.scratch.join("restored");
        let (paths, workspace) = (paths.to_vec(), workspace.to_path_buf());
        let (found, kept) = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&staged);
            std::fs::create_dir(&staged)?;
            let found = archive::unpack(&archive, &staged, &paths, limit)?;
            let _ = std::fs::remove_file(&archive);
            let kept = archive::merge(&staged, &workspace)?;
            std::fs::remove_dir_all(&staged)?;
            Ok::<_, anyhow::Error>((found, kept))
        })
        .await??;
        Ok(Some(Restored { bytes, found, kept }))
    }

    /// Packs `exported` and keeps it as `key`'s archive; its size.
    async fn save_key(&self, key: &str, exported: &Path) -> anyhow::Result<u64> {
        let archive = self.scratch.join("save.tar.gz");
        let (dir, file) = (exported.to_path_buf(), archive.clone());
        let bytes = tokio::task::spawn_blocking(move || archive::pack(&dir, &file)).await??;
        let limit = self.caches.limit_bytes;
        if bytes > limit {
            anyhow::bail!("the archive is {bytes} bytes, over the limit of {limit}");
        }
        let name = self.archive_name(key);
        let store = self.caches.storage.store(&name, &archive);
        let stored = tokio::time::timeout(TIME_LIMIT, store)
            .await
            .unwrap_or_else(|_| Err(too_slow()));
        let _ = std::fs::remove_file(&archive);
        stored.map(|()| bytes)
    }
}

fn too_slow() -> anyhow::Error {
    anyhow::anyhow!("it took longer than {} s", TIME_LIMIT.as_secs())
}

/// `template` for a build of `branch`, hashing files of `workspace`; or why not.
fn render(template: &KeyTemplate, branch: &str, workspace: &Path) -> Result<String, String> {
    template
        .render(branch, |files| hash_files(workspace, files))
        .map_err(|e| format!("`{template}`: {e}"))
}

/// SHA-256 (hex) over the named files of `workspace`: each file's name and its own hash.
/// A file must be a regular file inside the workspace (no symlink leads out).
fn hash_files(workspace: &Path, files: &[String]) -> Result<String, KeyError> {
    let root = workspace.canonicalize().map_err(|e| KeyError::Hash {
        file: ".".into(),
        reason: e.to_string(),
    })?;
    let mut all = Sha256::new();
    for file in files {
        let failed = |reason: String| KeyError::Hash {
            file: file.clone(),
            reason,
        };
        let path = root.join(file).canonicalize().map_err(|e| {
            failed(match e.kind() {
                std::io::ErrorKind::NotFound => "it is not in the workspace".to_owned(),
                _ => e.to_string(),
            })
        })?;
        if !path.starts_with(&root) || !path.is_file() {
            return Err(failed("it is not a file in the workspace".to_owned()));
        }
        let mut reader = std::fs::File::open(&path).map_err(|e| failed(e.to_string()))?;
        let mut one = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(|e| failed(e.to_string()))?;
            if read == 0 {
                break;
            }
            one.update(&buffer[..read]);
        }
        all.update(file.as_bytes());
        all.update([0]);
        all.update(hex::encode(one.finalize()).as_bytes());
        all.update(b"\n");
    }
    Ok(hex::encode(all.finalize()))
}

/// The name of project `project`'s archive of `key`, for a key that came from outside (an
/// agent): one name in the project's own namespace, made of the characters keys are made of.
fn archive_name(project: &str, key: &str) -> anyhow::Result<String> {
    let fits = !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%'));
    anyhow::ensure!(fits, "{key:?} is not a cache key");
    Ok(format!("{project}/{key}{SUFFIX}"))
}

/// The project and key an archive's name (`<project>/<key>.tar.gz`) stands for.
pub fn split_archive_name(name: &str) -> Option<(&str, &str)> {
    name.strip_suffix(SUFFIX)?.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_from_outside_names_one_archive_of_its_project_only() {
        assert_eq!(
            archive_name("alpha", "deps-main-%2Fx").unwrap(),
            "alpha/deps-main-%2Fx.tar.gz"
        );
        for bad in ["", "../beta/deps", "beta/deps", ".hidden", "a b", "deps\n"] {
            assert!(archive_name("alpha", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            split_archive_name("alpha/deps-main.tar.gz"),
            Some(("alpha", "deps-main"))
        );
    }

    #[test]
    fn keys_hash_the_commits_files_and_never_follow_a_link_out_of_the_workspace() {
        let workspace = tempfile::tempdir().unwrap();
        std::fs::write(workspace.path().join("deps.lock"), "a==1\n").unwrap();
        let template = KeyTemplate::parse("deps-{{ branch }}-{{ hash \"deps.lock\" }}").unwrap();
        let first = render(&template, "main", workspace.path()).unwrap();
        assert!(first.starts_with("deps-main-"), "{first}");
        assert_eq!(first.len(), "deps-main-".len() + 16);
        assert_eq!(render(&template, "main", workspace.path()).unwrap(), first);
        std::fs::write(workspace.path().join("deps.lock"), "a==2\n").unwrap();
        assert_ne!(render(&template, "main", workspace.path()).unwrap(), first);

        let missing = KeyTemplate::parse("{{ hash \"nope.lock\" }}").unwrap();
        let error = render(&missing, "main", workspace.path()).unwrap_err();
        assert!(error.contains("it is not in the workspace"), "{error}");

        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), workspace.path().join("link"))
            .unwrap();
        let linked = KeyTemplate::parse("{{ hash \"link\" }}").unwrap();
        let error = render(&linked, "main", workspace.path()).unwrap_err();
        assert!(error.contains("not a file in the workspace"), "{error}");
    }

    #[tokio::test]
    async fn a_saved_cache_is_restored_by_its_project_only_and_expires_unused() {
        let store = tempfile::tempdir().unwrap();
        let caches = Arc::new(Caches::in_dir(store.path().to_path_buf(), 1 << 20));
        let plan = CachePlan {
            paths: vec!["deps".into()],
            key: KeyTemplate::parse("deps-{{ branch }}").unwrap(),
            fallback_key: Some(KeyTemplate::parse("deps-main").unwrap()),
        };
        let scratch = tempfile::tempdir().unwrap();
        let first = caches.for_build("hello", scratch.path().join("one"));
        let workspace = tempfile::tempdir().unwrap();
        let report = first.restore(&plan, "main", workspace.path()).await;
        assert_eq!(report.problem, None);
        assert_eq!(report.lines, ["no cache saved under key `deps-main`"]);
        let exported = first.export_dir().unwrap();
        std::fs::create_dir(exported.join("deps")).unwrap();
        std::fs::write(exported.join("deps/pkg"), "installed").unwrap();
        let report = first.save(&plan, &exported, &[]).await;
        assert_eq!(report.problem, None, "{:?}", report.lines);
        assert!(store.path().join("hello/deps-main.tar.gz").is_file());

        // Another branch falls back to main's; another project sees nothing.
        let second = caches.for_build("hello", scratch.path().join("two"));
        let workspace = tempfile::tempdir().unwrap();
        let report = second.restore(&plan, "feature/x", workspace.path()).await;
        assert!(
            report.lines[1].contains("from key `deps-main`"),
            "{:?}",
            report.lines
        );
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("deps/pkg")).unwrap(),
            "installed"
        );
        // What it restored from the fallback it saves under its own key.
        let exported = second.export_dir().unwrap();
        std::fs::rename(workspace.path().join("deps"), exported.join("deps")).unwrap();
        let report = second.save(&plan, &exported, &[]).await;
        assert!(
            report.lines[0].contains("`deps-feature%2Fx`"),
            "{:?}",
            report.lines
        );
        assert!(store.path().join("hello/deps-feature%2Fx.tar.gz").is_file());
        // A fork's pull request restores main's cache and writes none, even under a key
        // main's builds read.
        let fork = caches
            .for_build("hello", scratch.path().join("fork"))
            .read_only("a fork's build");
        let workspace = tempfile::tempdir().unwrap();
        fork.restore(&plan, "main", workspace.path()).await;
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("deps/pkg")).unwrap(),
            "installed"
        );
        assert_eq!(fork.export_dir().unwrap_err(), "a fork's build");
        let other = caches.for_build("other", scratch.path().join("three"));
        let workspace = tempfile::tempdir().unwrap();
        other.restore(&plan, "main", workspace.path()).await;
        assert!(!workspace.path().join("deps").exists());

        assert_eq!(caches.expire().await.unwrap(), 0);
        let expiring = Caches {
            expire_after: Duration::ZERO,
            ..Caches::in_dir(store.path().to_path_buf(), 1 << 20)
        };
        assert_eq!(expiring.expire().await.unwrap(), 2);
        assert!(!store.path().join("hello/deps-main.tar.gz").exists());
    }
}
