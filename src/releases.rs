//! Releases: a passing build on the deploy branch becomes release `vN`, packaged as a .deb
//! from its `package:` section and published to the server's signed apt repository.
//!
//! The release row and its number are committed first (numbers are never reused, even when
//! packaging then fails); the package is built and published; the row records the outcome.
//!
//! A package name belongs to one project: the one whose config declares it (`packages`), else
//! the first to package it. Another project's release of that name fails before anything is
//! built, and the apt repository is left as it was. A release the server stopped while
//! packaging is failed once that server is no longer live.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use slipway_bake::{
    deb, AptRepository, ExtraFile, MaintainerScripts, PackageDefinition, PackageFile, PackageInfo,
    PublishRecord, RemovedPackage, Signer,
};
use slipway_pipeline::PackageSpec;
use tokio::io::{AsyncRead, AsyncReadExt};
use uuid::Uuid;

use crate::apt_bucket::AptBucket;
use crate::config::{Project, S3Bucket};
use crate::store::builds::Build;
use crate::store::releases::{LintianReport, PackageRecord, Release};
use crate::store::signing_key::StoredKey;
use crate::store::Store;

/// The signing identity of the repository key Slipway makes on an installation's first start.
const SIGNER_UID: &str = "Slipway release signing <slipway@localhost>";
/// The reason of releases that were packaging when their server stopped.
pub const INTERRUPTED_REASON: &str =
    "the server or agent running its build stopped while this release was packaging; push again to release the commit";

/// The installation's apt repository, in `apt_dir` (shared by every server) or in a bucket
/// (with `apt_dir` this server's working copy, see [`crate::apt_bucket`]), signed with the
/// installation's key: kept in the database, imported into `<data_dir>/gpg` to sign.
#[derive(Clone)]
pub struct Repository {
    apt: Arc<AptRepository>,
    bucket: Option<Arc<AptBucket>>,
    /// Where servers take turns at changing the repository in the bucket.
    store: Store,
    /// Where packages are built before they are published (`<data_dir>/staging`): on the data
    /// directory's disk, since a package may be large.
    staging: PathBuf,
}

impl Repository {
    /// Opens the repository with the installation's signing key: the one the database keeps,
    /// or, on the installation's first start, this server's own (made now when it has none),
    /// which is then kept for every other server.
    pub async fn open(
        store: &Store,
        data_dir: &Path,
        apt_dir: &Path,
        apt_s3: Option<&S3Bucket>,
    ) -> anyhow::Result<Repository> {
        let staging = data_dir.join("staging");
        let home = data_dir.join("gpg");
        let make_home = home.clone();
        let kept = store
            .signing_key_or_else(|| async move {
                tokio::task::spawn_blocking(move || {
                    let signer = Signer::open_or_create(&make_home, SIGNER_UID)?;
                    Ok::<_, anyhow::Error>(StoredKey {
                        fingerprint: signer.fingerprint().to_owned(),
                        secret_key: signer.export_secret_key()?,
                    })
                })
                .await?
            })
            .await?
            .context("making the installation's signing key")?;
        let apt_dir = apt_dir.to_path_buf();
        let apt = tokio::task::spawn_blocking(move || {
            let signer = Signer::with_key(&home, &kept.fingerprint, &kept.secret_key)?;
            AptRepository::open(&apt_dir, signer)
        })
        .await?
        .context("opening the apt repository")?;
        let bucket = match apt_s3 {
            Some(settings) => {
                let bucket = AptBucket::connect(settings).await?;
                bucket.check_key(&apt).await?;
                store.in_apt_turn(|| bucket.pull(&apt)).await??;
                Some(Arc::new(bucket))
            }
            None => None,
        };
        // What a stopped server left being built is of no use: start empty.
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("cannot empty {}", staging.display()))?;
        }
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        Ok(Repository {
            apt: Arc::new(apt),
            bucket,
            store: store.clone(),
            staging,
        })
    }

    /// Publishes the .deb at `deb` (see [`AptRepository::publish`]); in a bucket, in this
    /// installation's turn.
    pub async fn publish(&self, deb: &Path, info: &PackageInfo) -> anyhow::Result<PublishRecord> {
        let publish = || {
            let (apt, deb, info) = (self.apt.clone(), deb.to_path_buf(), info.clone());
            async move {
                anyhow::Ok(tokio::task::spawn_blocking(move || apt.publish(&deb, &info)).await??)
            }
        };
        let Some(bucket) = &self.bucket else {
            return publish().await;
        };
        self.store
            .in_apt_turn(|| async {
                let pulled = bucket.pull(&self.apt).await?;
                let record = publish().await?;
                if record.newly_published {
                    bucket
                        .push(&self.apt, std::slice::from_ref(&record.pool_path), &pulled)
                        .await?;
                }
                Ok(record)
            })
            .await?
    }

    /// Removes these package files from the repository (see [`AptRepository::remove`]); in a
    /// bucket, in this installation's turn. Returns the names it removed.
    pub async fn remove(&self, filenames: &[String]) -> anyhow::Result<Vec<String>> {
        let remove = || {
            let (apt, filenames) = (self.apt.clone(), filenames.to_vec());
            async move {
                anyhow::Ok(tokio::task::spawn_blocking(move || apt.remove(&filenames)).await??)
            }
        };
        let removed: Vec<RemovedPackage> = match &self.bucket {
            None => remove().await?,
            Some(bucket) => {
                self.store
                    .in_apt_turn(|| async {
                        let pulled = bucket.pull(&self.apt).await?;
                        let removed: Vec<RemovedPackage> = remove().await?;
                        if !removed.is_empty() {
                            // The index first: a reader of the old one finds every file it names.
                            bucket.push(&self.apt, &[], &pulled).await?;
                            let files: Vec<String> =
                                removed.iter().map(|r| r.pool_path.clone()).collect();
                            bucket.delete_pool_files(&files).await?;
                        }
                        anyhow::Ok(removed)
                    })
                    .await??
            }
        };
        Ok(removed.into_iter().map(|r| r.filename).collect())
    }

    /// The bucket the repository is kept in, when it is not a shared directory: `/apt/` is
    /// served from it.
    pub fn bucket(&self) -> Option<Arc<AptBucket>> {
        self.bucket.clone()
    }

    /// The public key clients trust the repository with (served as `/apt/key.gpg`).
    pub fn key_path(&self) -> PathBuf {
        self.apt.key_path()
    }

    /// Where packages wait to be published.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// The repository's directory: `dists/`, `pool/` and `key.gpg` are served under `/apt/`.
    pub fn root(&self) -> PathBuf {
        self.apt.root().to_path_buf()
    }
}

/// Packages and publishes release `(id, number)` of `build` (numbered by
/// [`Store::create_release_in_commit_order`]), whose workspace as its steps left it is in
/// `workspace` and whose commit was made at `commit_time` (seconds since the epoch); lintian
/// then checks the published package in the background and its verdict is recorded on the
/// release.
#[tracing::instrument(skip_all, fields(project = %build.project, build = build.number), err)]
pub async fn publish(
    store: &Store,
    repository: &Repository,
    build: &Build,
    (id, number): (Uuid, i64),
    package: &PackageSpec,
    workspace: &Path,
    commit_time: u64,
) -> anyhow::Result<Release> {
    claim_name(store, build, (id, number), package).await?;
    let definition = definition(
        package,
        number,
        &long_description(build, number),
        commit_time,
    );
    let workspace = workspace.to_path_buf();
    let staging = repository.staging.clone();
    let built = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let staging = tempfile::tempdir_in(&staging)?;
        let built = deb::build(&definition, &workspace, staging.path())?;
        Ok((staging, built))
    })
    .await?;
    // `_staging` holds the built file until it is published.
    let (_staging, built) = match built {
        Ok(built) => built,
        Err(e) => return fail(store, (id, number), e).await,
    };
    publish_built(
        store,
        repository,
        build,
        (id, number),
        &built.path,
        built.info,
    )
    .await
}

/// Publishes release `(id, number)` of `build` from the .deb at `deb` that an agent built
/// where the build ran: the package must be the one the project's `package:` names, at the
/// release's version, or the release fails saying what differs.
#[tracing::instrument(skip_all, fields(project = %build.project, build = build.number), err)]
pub async fn publish_uploaded(
    store: &Store,
    repository: &Repository,
    build: &Build,
    (id, number): (Uuid, i64),
    package: &PackageSpec,
    deb: &Path,
) -> anyhow::Result<Release> {
    claim_name(store, build, (id, number), package).await?;
    let path = deb.to_path_buf();
    let info = match tokio::task::spawn_blocking(move || deb::inspect(&path)).await? {
        Ok(info) => info,
        Err(e) => {
            return fail(
                store,
                (id, number),
                anyhow::anyhow!("the uploaded package: {e}"),
            )
            .await
        }
    };
    let expected = (package.name.as_str(), number.to_string());
    if (info.name.as_str(), info.version.clone()) != expected {
        let why = anyhow::anyhow!(
            "the uploaded package is {} {}, where release v{number} is {} {}",
            info.name,
            info.version,
            expected.0,
            expected.1
        );
        return fail(store, (id, number), why).await;
    }
    publish_built(store, repository, build, (id, number), deb, info).await
}

/// What a release's package says about where it comes from.
pub fn long_description(build: &Build, number: i64) -> String {
    format!(
        "Release v{number} of {}, built by Slipway from commit {} (build {} on {}).",
        build.project, build.commit, build.number, build.branch
    )
}

/// Claims the package's name for the build's project, failing the release when another
/// project owns it.
async fn claim_name(
    store: &Store,
    build: &Build,
    (id, number): (Uuid, i64),
    package: &PackageSpec,
) -> anyhow::Result<()> {
    let name = package.name.as_str();
    let owner = store.claim_package(name, &build.project).await?;
    if owner.project != build.project {
        let how = if owner.declared {
            "its config declares it"
        } else {
            "it packaged it first"
        };
        let reason = format!(
            "packaging v{number} failed: package `{name}` belongs to project `{}` ({how}); \
             choose another package name in .slipway.yml",
            owner.project
        );
        store.mark_release_failed(id, &reason).await?;
        anyhow::bail!(reason);
    }
    Ok(())
}

/// Records release `(id, number)` failed with `error` and returns the error.
async fn fail<T>(
    store: &Store,
    (id, number): (Uuid, i64),
    error: anyhow::Error,
) -> anyhow::Result<T> {
    let reason = format!("packaging v{number} failed: {error:#}");
    store.mark_release_failed(id, &reason).await?;
    anyhow::bail!(reason)
}

/// Publishes the built package `deb` described by `info` as release `(id, number)`.
async fn publish_built(
    store: &Store,
    repository: &Repository,
    build: &Build,
    (id, number): (Uuid, i64),
    deb: &Path,
    info: PackageInfo,
) -> anyhow::Result<Release> {
    let pool_path = match repository.publish(deb, &info).await {
        Ok(published) => published.pool_path,
        Err(e) => return fail(store, (id, number), e).await,
    };
    let record = PackageRecord {
        name: info.name,
        version: info.version,
        filename: info.filename,
        size: info.size as i64,
        sha256: info.sha256,
    };
    store.mark_release_published(id, &record).await?;
    tracing::info!(release = %format!("v{number}"), package = %record.filename, "published a release");
    // Off the release's path: the bake need not wait for lintian. A server that stops
    // meanwhile leaves the release unchecked (`lintian` null).
    let (store_for_lintian, deb) = (store.clone(), repository.root().join(pool_path));
    tokio::spawn(async move {
        let report = lintian(&deb).await;
        if let Err(error) = store_for_lintian.record_lintian(id, &report).await {
            tracing::warn!(release = %format!("v{number}"), %error, "cannot record what lintian said");
        }
    });
    let releases = store.list_releases(&build.project).await?;
    releases
        .into_iter()
        .find(|r| r.id == id)
        .context("the release just recorded is missing")
}

/// How long lintian may take over one package; past it the package counts as not checked.
const LINTIAN_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of lintian's output (and of its error output) read; the rest is drained unread.
const LINTIAN_OUTPUT_LIMIT: usize = 64 * 1024;
/// The most errors, and the most warnings, recorded of one package.
const LINTIAN_TAGS_LIMIT: usize = 100;

/// Lintian's errors and warnings on the package at `deb`. Lintian's absence, failure or
/// slowness is no error of the release: the report says the package was not checked, and why.
pub async fn lintian(deb: &Path) -> LintianReport {
    run_lintian(Path::new("lintian"), deb).await
}

async fn run_lintian(program: &Path, deb: &Path) -> LintianReport {
    let not_checked = |note: String| LintianReport {
        status: "not_checked".into(),
        errors: Vec::new(),
        warnings: Vec::new(),
        note: Some(note),
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(["--allow-root", "--tag-display-limit", "0", "--"])
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return not_checked("lintian is not installed".into())
        }
        Err(e) => return not_checked(format!("cannot run lintian: {e}")),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let ran = tokio::time::timeout(LINTIAN_TIMEOUT, async {
        let (out, err) = tokio::join!(read_bounded(stdout), read_bounded(stderr));
        (child.wait().await, out, err)
    })
    .await;
    let Ok((status, (out, out_cut), (err, _))) = ran else {
        return not_checked(format!(
            "lintian took longer than {} s",
            LINTIAN_TIMEOUT.as_secs()
        ));
    };
    // 0: nothing at `--fail-on` level; 2: something (errors, by default). Else lintian failed.
    match status.map(|s| s.code()) {
        Ok(Some(0 | 2)) => {}
        Ok(code) => {
            let err = String::from_utf8_lossy(&err);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let code = code.map_or("a signal".into(), |c| format!("status {c}"));
            return not_checked(format!("lintian failed ({code}): {}", last.trim()));
        }
        Err(e) => return not_checked(format!("cannot run lintian: {e}")),
    }
    parse_lintian(&String::from_utf8_lossy(&out), out_cut)
}

/// The `E:` and `W:` lines of lintian's output, each kind capped.
fn parse_lintian(output: &str, cut: bool) -> LintianReport {
    let tags = |prefix: &str| -> Vec<String> {
        output
            .lines()
            .filter(|line| line.starts_with(prefix))
            .map(str::to_string)
            .collect()
    };
    let (mut errors, mut warnings) = (tags("E: "), tags("W: "));
    let mut cut = cut;
    for list in [&mut errors, &mut warnings] {
        if list.len() > LINTIAN_TAGS_LIMIT {
            list.truncate(LINTIAN_TAGS_LIMIT);
            cut = true;
        }
    }
    let status = if errors.is_empty() && warnings.is_empty() {
        "clean"
    } else {
        "issues"
    };
    LintianReport {
        status: status.into(),
        errors,
        warnings,
        note: cut.then(|| {
            format!(
                "lintian said more than is kept (at most {LINTIAN_TAGS_LIMIT} errors and warnings each, {LINTIAN_OUTPUT_LIMIT} bytes)"
            )
        }),
    }
}

/// Reads at most [`LINTIAN_OUTPUT_LIMIT`] bytes, then drains the rest so the writer never
/// blocks; says whether anything was left unread.
async fn read_bounded(reader: Option<impl AsyncRead + Unpin>) -> (Vec<u8>, bool) {
    let Some(reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut limited = reader.take(LINTIAN_OUTPUT_LIMIT as u64);
    let _ = limited.read_to_end(&mut kept).await;
    let rest = tokio::io::copy(&mut limited.into_inner(), &mut tokio::io::sink())
        .await
        .unwrap_or(0);
    (kept, rest > 0)
}

/// On server start: records the package names each project declares as its own.
pub async fn claim_declared_packages(store: &Store, projects: &[Project]) -> anyhow::Result<()> {
    let declared: Vec<(String, String)> = projects
        .iter()
        .flat_map(|project| {
            project
                .packages
                .iter()
                .map(|package| (package.clone(), project.name.clone()))
        })
        .collect();
    store.claim_declared_packages(&declared).await?;
    Ok(())
}

/// Fails the releases a server that is no longer live stopped while packaging. Their
/// checkout is gone, so they cannot be finished; their number stays used.
pub async fn fail_interrupted_releases(store: &Store) -> anyhow::Result<()> {
    for release in store.fail_interrupted_packaging(INTERRUPTED_REASON).await? {
        tracing::warn!(project = %release.project, release = %release.version, "marked a release interrupted by a server stop while packaging as failed");
    }
    Ok(())
}

/// The Debian package of release `number`: version `number`, files from the build's workspace
/// (a file, a directory or a glob each), `long_description` (where it comes from), and
/// `/usr/share/<name>/VERSION` holding `v<number>` so the application can report it.
pub fn definition(
    spec: &PackageSpec,
    number: i64,
    long_description: &str,
    commit_time: u64,
) -> PackageDefinition {
    let path = |p: &slipway_pipeline::spec::WorkspacePath| PathBuf::from(p.as_str());
    let name = spec.name.as_str().to_string();
    PackageDefinition {
        version: number.to_string(),
        architecture: serde_json::to_value(spec.architecture)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "all".to_string()),
        maintainer: spec.maintainer.clone(),
        description: spec.description.clone(),
        long_description: long_description.to_owned(),
        depends: spec.depends.clone(),
        files: spec
            .files
            .iter()
            .map(|f| PackageFile {
                source: path(&f.src),
                dest: f.dest.as_str().to_string(),
                mode: f.mode.0,
                owner: f.owner.as_str().to_string(),
                group: f.group.as_str().to_string(),
            })
            .collect(),
        conffiles: spec
            .conffiles
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        systemd_unit: spec.systemd_unit.as_ref().map(path),
        maintainer_scripts: MaintainerScripts {
            preinst: spec.scripts.preinst.as_ref().map(path),
            postinst: spec.scripts.postinst.as_ref().map(path),
            prerm: spec.scripts.prerm.as_ref().map(path),
            postrm: spec.scripts.postrm.as_ref().map(path),
        },
        extra_files: vec![ExtraFile {
            dest: format!("/usr/share/{name}/VERSION"),
            contents: format!("v{number}\n").into_bytes(),
            mode: 0o644,
        }],
        source_date_epoch: commit_time,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lintian_missing_is_recorded_as_not_checked() {
        let report = run_lintian(Path::new("/nonexistent/lintian"), Path::new("x.deb")).await;
        assert_eq!(report.status, "not_checked");
        assert_eq!(report.note.as_deref(), Some("lintian is not installed"));
    }

    #[test]
    fn lintian_errors_and_warnings_are_kept_and_capped() {
        let mut output = String::from("N: a note\nI: hello: info-tag\nE: hello: bad-thing\n");
        for i in 0..=LINTIAN_TAGS_LIMIT {
            output.push_str(&format!("W: hello: warning-{i}\n"));
        }
        let report = parse_lintian(&output, false);
        assert_eq!(report.status, "issues");
        assert_eq!(report.errors, vec!["E: hello: bad-thing"]);
        assert_eq!(report.warnings.len(), LINTIAN_TAGS_LIMIT);
        assert!(report.note.unwrap().contains("more than is kept"));
        assert_eq!(parse_lintian("I: hello: info\n", false).status, "clean");
    }
}
