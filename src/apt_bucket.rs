//! The apt repository kept in an S3 bucket (`[apt] s3`), for servers that share no directory.
//!
//! The bucket is the repository: its `db/catalogue.json` lists what is published, and every
//! server serves `/apt/` from it. Each server keeps a working copy in `<data_dir>/apt`, where
//! it builds the signed index as a one-server repository does. A change (a publish or a
//! removal) runs in the installation's turn (a database advisory lock), so servers change the
//! bucket one at a time:
//! 1. the bucket's catalogue replaces the working copy's ([`AptBucket::pull`]);
//! 2. the working copy publishes or removes, and signs a new index;
//! 3. the upload ([`AptBucket::push`]) goes in an order that keeps every reader consistent:
//!    the new pool file, the by-hash indexes, the plain indexes, `Release`, `Release.gpg`,
//!    `InRelease`, and the catalogue last (a package the catalogue lists is in the live index,
//!    as in a directory). Then by-hash indexes that neither the new nor the previous `Release`
//!    names are deleted, and so are the pool files of removed packages.
//!
//! A server that dies part-way leaves the bucket's catalogue as it was; the next change starts
//! from it.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};
use aws_sdk_s3::primitives::ByteStream;
use slipway_bake::{apt, AptRepository};

use crate::config::S3Bucket;

/// The most of the catalogue read from the bucket (a list of packages and their control
/// fields: thousands of packages fit in a few megabytes).
const CATALOGUE_LIMIT: usize = 64 * 1024 * 1024;
/// The most of the public key read from the bucket.
const KEY_LIMIT: usize = 1024 * 1024;
/// The most of a `Release` file read from the bucket.
const RELEASE_LIMIT: usize = 4 * 1024 * 1024;

/// One bucket (and prefix) holding the installation's apt repository.
pub struct AptBucket {
    client: aws_sdk_s3::Client,
    settings: S3Bucket,
}

/// A client of the S3 endpoint of `settings` (AWS's, or another addressed path-style), in its
/// region, else the AWS environment's, else `us-east-1`; the apt bucket's and the build
/// caches' (`cache.rs`).
pub async fn s3_client(settings: &S3Bucket) -> aws_sdk_s3::Client {
    let region = match &settings.region {
        Some(region) => Some(aws_config::Region::new(region.clone())),
        None => aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await
            .region()
            .cloned(),
    };
    let region = region.unwrap_or_else(|| aws_config::Region::new("us-east-1"));
    let shared =
        slipway_deployer::aws::sdk_config(region.as_ref(), settings.endpoint_url.as_deref()).await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(settings.endpoint_url.is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// What the bucket held before a change: what readers of its live index may still fetch.
#[derive(Default)]
pub struct Pulled {
    previous_by_hash: BTreeSet<String>,
}

impl AptBucket {
    /// A client for the bucket of `settings`, checked by reading the bucket once, so a wrong
    /// name, endpoint or credentials stop the server at its start.
    pub async fn connect(settings: &S3Bucket) -> anyhow::Result<AptBucket> {
        let bucket = AptBucket {
            client: s3_client(settings).await,
            settings: settings.clone(),
        };
        bucket.check().await?;
        Ok(bucket)
    }

    /// Whether the bucket answers (for `/api/v1/health`); why not, when it does not.
    pub async fn check(&self) -> anyhow::Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.settings.bucket)
            .send()
            .await
            .map_err(|e| self.failed("cannot reach", e))?;
        Ok(())
    }

    /// The bucket and where in it, for messages.
    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.settings.bucket, self.settings.prefix)
    }

    /// The object of `relative` (a path under the repository's root), or `None` when the
    /// bucket has none.
    pub async fn object(&self, relative: &str) -> anyhow::Result<Option<GetObjectOutput>> {
        match self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(self.key(relative))
            .send()
            .await
        {
            Ok(object) => Ok(Some(object)),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), GetObjectError::NoSuchKey(_)) => {
                Ok(None)
            }
            Err(e) => Err(self.failed(&format!("cannot read {relative} from"), e)),
        }
    }

    /// Refuses a bucket whose repository another key signs (another installation's, or one
    /// prefix given to two installations): publishing there would sign its index anew with
    /// this installation's key, and its users' hosts would stop trusting it.
    pub async fn check_key(&self, apt: &AptRepository) -> anyhow::Result<()> {
        let path = apt.key_path();
        let ours = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        match self.read("key.gpg", KEY_LIMIT).await? {
            Some(theirs) if theirs != ours => anyhow::bail!(
                "the apt bucket {} holds a repository signed with another key than this \
                 installation's; give `[apt] s3` a prefix of its own",
                self.describe()
            ),
            _ => Ok(()),
        }
    }

    /// Makes the bucket and the working copy `apt` one repository before a change: the
    /// bucket's catalogue becomes the working copy's. A bucket that holds no repository yet
    /// receives the working copy's (the packages a one-server installation published before
    /// it moved to the bucket).
    pub async fn pull(&self, apt: &AptRepository) -> anyhow::Result<Pulled> {
        match self.read("db/catalogue.json", CATALOGUE_LIMIT).await? {
            Some(catalogue) => apt
                .adopt_catalogue(&catalogue)
                .with_context(|| format!("the catalogue in {}", self.describe()))?,
            None => {
                tracing::info!(bucket = %self.describe(), "the bucket holds no apt repository yet: uploading this server's");
                self.push(apt, &apt.pool_paths()?, &Pulled::default())
                    .await?;
            }
        }
        let release = self
            .read(&format!("dists/{}/Release", apt::SUITE), RELEASE_LIMIT)
            .await?;
        let previous_by_hash = release
            .map(|bytes| apt::by_hash_files(&String::from_utf8_lossy(&bytes)))
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(Pulled { previous_by_hash })
    }

    /// Uploads the working copy's change: `pool_files` (new packages), then the live index
    /// and the catalogue, in the order the module's doc gives; then deletes the by-hash
    /// indexes no reader needs any more.
    pub async fn push(
        &self,
        apt: &AptRepository,
        pool_files: &[String],
        pulled: &Pulled,
    ) -> anyhow::Result<()> {
        let root = apt.root();
        let by_hash_prefix = format!("dists/{}/", apt::SUITE);
        let existing: BTreeSet<String> = self
            .list(&by_hash_prefix)
            .await?
            .into_iter()
            .filter(|key| key.contains("/by-hash/"))
            .collect();
        for file in pool_files {
            self.upload(root, file).await?;
        }
        let index = apt.live_index_files()?;
        for file in &index {
            // A by-hash file's name is its content's hash: one already there is this one.
            if !existing.contains(file) {
                self.upload(root, file).await?;
            }
        }
        self.upload(root, "db/catalogue.json").await?;
        self.upload(root, "key.gpg").await?;
        let live: BTreeSet<&String> = index.iter().collect();
        for stale in existing
            .iter()
            .filter(|key| !live.contains(key) && !pulled.previous_by_hash.contains(*key))
        {
            self.delete(stale).await?;
        }
        Ok(())
    }

    /// Deletes the pool files of packages the live index no longer lists.
    pub async fn delete_pool_files(&self, pool_files: &[String]) -> anyhow::Result<()> {
        for file in pool_files {
            self.delete(file).await?;
        }
        Ok(())
    }

    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.settings.prefix)
    }

    /// The object of `relative`, whole, if the bucket has it and it is at most `limit` bytes.
    async fn read(&self, relative: &str, limit: usize) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(object) = self.object(relative).await? else {
            return Ok(None);
        };
        let size = object.content_length().unwrap_or_default();
        if size < 0 || size as u64 > limit as u64 {
            anyhow::bail!(
                "{relative} in {} is {size} bytes, more than the {limit} read",
                self.describe()
            );
        }
        let bytes = object
            .body
            .collect()
            .await
            .with_context(|| format!("reading {relative} from {}", self.describe()))?
            .into_bytes();
        if bytes.len() > limit {
            anyhow::bail!(
                "{relative} in {} is more than the {limit} bytes read",
                self.describe()
            );
        }
        Ok(Some(bytes.to_vec()))
    }

    async fn upload(&self, root: &Path, relative: &str) -> anyhow::Result<()> {
        let path = root.join(relative);
        let body = ByteStream::from_path(&path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        self.client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(self.key(relative))
            .body(body)
            .send()
            .await
            .map_err(|e| self.failed(&format!("cannot upload {relative} to"), e))?;
        Ok(())
    }

    async fn delete(&self, relative: &str) -> anyhow::Result<()> {
        self.client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(self.key(relative))
            .send()
            .await
            .map_err(|e| self.failed(&format!("cannot delete {relative} from"), e))?;
        Ok(())
    }

    /// The objects under `relative`, as paths under the repository's root.
    async fn list(&self, relative: &str) -> anyhow::Result<Vec<String>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(self.key(relative))
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.failed("cannot list", e))?;
            keys.extend(page.contents().iter().filter_map(|object| {
                object
                    .key()?
                    .strip_prefix(&self.settings.prefix)
                    .map(str::to_owned)
            }));
        }
        Ok(keys)
    }

    /// An S3 failure as an error naming the bucket, with what S3 said (never credentials:
    /// they are not part of a request's error).
    fn failed<E, R>(&self, what: &str, error: SdkError<E, R>) -> anyhow::Error
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        anyhow::anyhow!(
            "{what} the apt bucket {}: {}",
            self.describe(),
            DisplayErrorContext(&error)
        )
    }
}
