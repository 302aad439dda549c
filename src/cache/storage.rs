//! Where cache archives are kept: a directory (one server's) or an S3 bucket (every server's);
//! for a build agent, the server that leased its build, which keeps them in one of those.
//! An archive is named `<project>/<key>.tar.gz`; it appears whole or not at all (renamed into
//! place, or one PutObject), and its time (mtime, or S3's LastModified) is when a build last
//! used it, which is what expiry goes by.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::MetadataDirective;
use tokio::io::AsyncWriteExt;

use crate::config::S3Bucket;

/// The ending of every archive's name.
pub const SUFFIX: &str = ".tar.gz";
/// A bucket's object is copied onto itself (which renews its LastModified) when a build uses
/// it, at most this often: copying a large archive on every build would cost more than it
/// tells.
const TOUCH_EVERY: Duration = Duration::from_secs(24 * 3600);
/// A partly written archive of a directory older than this is a dead server's, and removed.
const PARTIAL_AGE: Duration = Duration::from_secs(24 * 3600);

/// A directory or a bucket holding the archives of every project, or the server an agent
/// reaches them through.
pub enum Storage {
    Dir(PathBuf),
    Bucket {
        client: aws_sdk_s3::Client,
        settings: S3Bucket,
    },
    Remote(Arc<dyn RemoteArchives>),
}

/// Archives kept elsewhere, fetched and stored by name (a build agent's, through the server).
#[async_trait::async_trait]
pub trait RemoteArchives: Send + Sync {
    /// Where the archives are, for logs and messages.
    fn describe(&self) -> String;
    /// Copies the archive `name` into the file `dest`; `None` when there is none.
    async fn fetch(&self, name: &str, dest: &Path, limit_bytes: u64)
        -> anyhow::Result<Option<u64>>;
    /// Keeps the file `archive` as `name`.
    async fn store(&self, name: &str, archive: &Path) -> anyhow::Result<()>;
}

impl Storage {
    /// Where archives are, for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Storage::Dir(dir) => dir.display().to_string(),
            Storage::Bucket { settings, .. } => {
                format!("s3://{}/{}", settings.bucket, settings.prefix)
            }
            Storage::Remote(remote) => remote.describe(),
        }
    }

    /// Copies the archive `name` into the file `dest` and marks it used; `None` when there is
    /// none. An archive over `limit_bytes` is an error.
    pub async fn fetch(
        &self,
        name: &str,
        dest: &Path,
        limit_bytes: u64,
    ) -> anyhow::Result<Option<u64>> {
        match self {
            Storage::Dir(dir) => fetch_file(&dir.join(name), dest, limit_bytes).await,
            Storage::Bucket { client, settings } => {
                fetch_object(client, settings, name, dest, limit_bytes).await
            }
            Storage::Remote(remote) => remote.fetch(name, dest, limit_bytes).await,
        }
    }

    /// Keeps the file `archive` as `name`, replacing any archive of that name at once.
    pub async fn store(&self, name: &str, archive: &Path) -> anyhow::Result<()> {
        match self {
            Storage::Dir(dir) => {
                let target = dir.join(name);
                let parent = target.parent().context("an archive's name has a project")?;
                tokio::fs::create_dir_all(parent)
                    .await
                    .with_context(|| format!("cannot make {}", parent.display()))?;
                let partial = parent.join(format!(".{}.partial", uuid::Uuid::new_v4().simple()));
                tokio::fs::copy(archive, &partial)
                    .await
                    .with_context(|| format!("cannot write {}", partial.display()))?;
                let renamed = tokio::fs::rename(&partial, &target).await;
                if renamed.is_err() {
                    let _ = tokio::fs::remove_file(&partial).await;
                }
                renamed.with_context(|| format!("cannot write {}", target.display()))
            }
            Storage::Bucket { client, settings } => {
                let body = ByteStream::from_path(archive)
                    .await
                    .with_context(|| format!("reading {}", archive.display()))?;
                client
                    .put_object()
                    .bucket(&settings.bucket)
                    .key(format!("{}{name}", settings.prefix))
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| failed(settings, &format!("cannot upload {name} to"), e))?;
                Ok(())
            }
            Storage::Remote(remote) => remote.store(name, archive).await,
        }
    }

    /// Removes the archives no build used for `unused_for`; how many it removed.
    pub async fn expire(&self, unused_for: Duration) -> anyhow::Result<usize> {
        match self {
            Storage::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || expire_files(&dir, unused_for)).await?
            }
            Storage::Bucket { client, settings } => {
                expire_objects(client, settings, unused_for).await
            }
            // The server keeping them expires them.
            Storage::Remote(_) => Ok(0),
        }
    }
}

async fn fetch_file(path: &Path, dest: &Path, limit_bytes: u64) -> anyhow::Result<Option<u64>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let size = file.metadata()?.len();
    if size > limit_bytes {
        anyhow::bail!(
            "{} is {size} bytes, over the limit of {limit_bytes}",
            path.display()
        );
    }
    // Marks it used, so expiry keeps it.
    file.set_modified(SystemTime::now())
        .with_context(|| format!("cannot mark {} used", path.display()))?;
    tokio::fs::copy(path, dest)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(size))
}

async fn fetch_object(
    client: &aws_sdk_s3::Client,
    settings: &S3Bucket,
    name: &str,
    dest: &Path,
    limit_bytes: u64,
) -> anyhow::Result<Option<u64>> {
    let key = format!("{}{name}", settings.prefix);
    let object = match client
        .get_object()
        .bucket(&settings.bucket)
        .key(&key)
        .send()
        .await
    {
        Ok(object) => object,
        Err(SdkError::ServiceError(e)) if matches!(e.err(), GetObjectError::NoSuchKey(_)) => {
            return Ok(None)
        }
        Err(e) => return Err(failed(settings, &format!("cannot read {name} from"), e)),
    };
    let size = object.content_length().unwrap_or_default().max(0) as u64;
    if size > limit_bytes {
        anyhow::bail!("{name} is {size} bytes, over the limit of {limit_bytes}");
    }
    let used_long_ago = object
        .last_modified()
        .and_then(|time| SystemTime::try_from(*time).ok())
        .and_then(|time| time.elapsed().ok())
        .is_none_or(|age| age > TOUCH_EVERY);
    let mut file = tokio::fs::File::create(dest)
        .await
        .with_context(|| format!("cannot write {}", dest.display()))?;
    let mut body = object.body;
    let mut written = 0u64;
    while let Some(chunk) = body
        .try_next()
        .await
        .with_context(|| format!("reading {name}"))?
    {
        written += chunk.len() as u64;
        if written > limit_bytes {
            anyhow::bail!("{name} is over the limit of {limit_bytes} bytes");
        }
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    if used_long_ago {
        // What was fetched is restored whatever this does; at worst the archive expires early.
        let copied = client
            .copy_object()
            .bucket(&settings.bucket)
            .key(&key)
            .copy_source(format!("{}/{}", settings.bucket, url_path(&key)))
            .metadata_directive(MetadataDirective::Replace)
            .metadata("used", chrono::Utc::now().to_rfc3339())
            .send()
            .await;
        if let Err(error) = copied {
            let error = failed(settings, &format!("cannot mark {name} used in"), error);
            tracing::warn!(
                error = format!("{error:#}"),
                "a restored cache may expire early"
            );
        }
    }
    Ok(Some(written))
}

/// `key` as a URL path (CopyObject's source is one): bytes other than unreserved ones and `/`
/// as `%XX`, so a key holding `%` (an escaped branch) names itself.
fn url_path(key: &str) -> String {
    key.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Removes `<dir>/<project>/<key>.tar.gz` files unused for `unused_for`, and partial files
/// a server left.
fn expire_files(dir: &Path, unused_for: Duration) -> anyhow::Result<usize> {
    let mut removed = 0;
    let projects = match std::fs::read_dir(dir) {
        Ok(projects) => projects,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for project in projects {
        let project = project?.path();
        if !project.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&project)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let age = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
            let expired = (name.ends_with(SUFFIX) && age > unused_for)
                || (name.ends_with(".partial") && age > PARTIAL_AGE);
            if expired {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

async fn expire_objects(
    client: &aws_sdk_s3::Client,
    settings: &S3Bucket,
    unused_for: Duration,
) -> anyhow::Result<usize> {
    let mut pages = client
        .list_objects_v2()
        .bucket(&settings.bucket)
        .prefix(&settings.prefix)
        .into_paginator()
        .send();
    let mut removed = 0;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| failed(settings, "cannot list", e))?;
        for object in page.contents() {
            // Only `<prefix><project>/<key>.tar.gz`: anything else under the prefix is not ours.
            let ours = |key: &&str| {
                key.strip_prefix(settings.prefix.as_str())
                    .is_some_and(|name| name.ends_with(SUFFIX) && name.matches('/').count() == 1)
            };
            let Some(key) = object.key().filter(ours) else {
                continue;
            };
            let age = object
                .last_modified()
                .and_then(|time| SystemTime::try_from(*time).ok())
                .and_then(|time| time.elapsed().ok());
            if age.is_some_and(|age| age > unused_for) {
                client
                    .delete_object()
                    .bucket(&settings.bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| failed(settings, &format!("cannot delete {key} from"), e))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// An S3 failure naming the bucket, with what S3 said (never credentials: they are not part
/// of a request's error).
fn failed<E, R>(settings: &S3Bucket, what: &str, error: SdkError<E, R>) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    anyhow::anyhow!(
        "{what} the cache bucket s3://{}/{}: {}",
        settings.bucket,
        settings.prefix,
        DisplayErrorContext(&error)
    )
}
