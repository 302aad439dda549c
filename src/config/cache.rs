//! `[cache]`: where builds' caches (`cache:` in `.slipway.yml`) are kept (a directory, by
//! default in the data dir, or an S3 bucket every server shares), how large one may be, and
//! how long an entry no build used is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{resolve_s3, ConfigError, Invalid, RawS3Bucket, S3Bucket};

/// Days an entry no build restored or saved is kept, unless `expire_days` says otherwise.
pub const DEFAULT_EXPIRE_DAYS: u32 = 14;
/// The largest archive of a cache's paths, unless `limit_bytes` says otherwise.
pub const DEFAULT_LIMIT_BYTES: u64 = 1024 * 1024 * 1024;
/// The most `limit_bytes` may be: one S3 upload (PutObject) takes at most 5 GiB.
pub const MAX_LIMIT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// `[cache]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// A directory (default `<data_dir>/cache`, for one server).
    pub dir: Option<PathBuf>,
    /// A bucket every server keeps caches in, instead of a directory.
    pub s3: Option<RawS3Bucket>,
    /// Entries no build restored or saved for this many days are removed.
    pub expire_days: Option<u32>,
    /// The largest archive of one cache (the paths as tar, before compression).
    pub limit_bytes: Option<u64>,
}

/// Where caches live, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub storage: CacheStorage,
    pub expire_after: Duration,
    pub limit_bytes: u64,
}

/// A directory or a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStorage {
    Dir(PathBuf),
    S3(S3Bucket),
}

pub(super) fn resolve(
    raw: RawCache,
    data_dir: &Path,
    invalid: &Invalid<'_>,
) -> Result<CacheConfig, ConfigError> {
    let storage = match (raw.dir, raw.s3) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "cache",
                "expected `dir` or `s3`, not both: caches live in one place".into(),
            ))
        }
        (Some(dir), None) if dir.as_os_str().is_empty() => {
            return Err(invalid(
                "cache.dir",
                "expected a directory, got \"\"".into(),
            ))
        }
        (Some(dir), None) => CacheStorage::Dir(dir),
        (None, Some(s3)) => CacheStorage::S3(resolve_s3(s3, "cache.s3", invalid)?),
        (None, None) => CacheStorage::Dir(data_dir.join("cache")),
    };
    let expire_days = raw.expire_days.unwrap_or(DEFAULT_EXPIRE_DAYS);
    if expire_days == 0 {
        return Err(invalid(
            "cache.expire_days",
            "expected a number of days of at least 1, got 0".into(),
        ));
    }
    let limit_bytes = raw.limit_bytes.unwrap_or(DEFAULT_LIMIT_BYTES);
    if !(1..=MAX_LIMIT_BYTES).contains(&limit_bytes) {
        return Err(invalid(
            "cache.limit_bytes",
            format!("expected 1 to {MAX_LIMIT_BYTES} bytes (5 GiB), got {limit_bytes}"),
        ));
    }
    Ok(CacheConfig {
        storage,
        expire_after: Duration::from_secs(u64::from(expire_days) * 24 * 3600),
        limit_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, resolve, Overrides};

    fn load(text: &str) -> Result<CacheConfig, String> {
        let text = format!("data_dir = \"/var/lib/slipway\"\n{text}");
        parse(&text, "slipway.toml")
            .and_then(|raw| resolve(raw, "slipway.toml", &Overrides::default(), &|_| None))
            .map(|config| config.cache)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn caches_live_in_the_data_dir_unless_told_and_expire_after_two_weeks() {
        let cache = load("").unwrap();
        assert_eq!(
            cache,
            CacheConfig {
                storage: CacheStorage::Dir("/var/lib/slipway/cache".into()),
                expire_after: Duration::from_secs(14 * 24 * 3600),
                limit_bytes: DEFAULT_LIMIT_BYTES,
            }
        );
        let cache = load("[cache]\ns3 = { bucket = \"acme-cache\", prefix = \"ci/\", endpoint_url = \"http://127.0.0.1:5000\" }\nexpire_days = 3\nlimit_bytes = 1000\n").unwrap();
        let CacheStorage::S3(s3) = cache.storage else {
            panic!("{cache:?}")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("acme-cache", "ci/")
        );
        assert_eq!(cache.expire_after, Duration::from_secs(3 * 24 * 3600));
        assert_eq!(cache.limit_bytes, 1000);
    }

    #[test]
    fn bad_cache_settings_name_their_key() {
        for (text, key) in [
            (
                "[cache]\ndir = \"/a\"\ns3 = { bucket = \"acme\" }\n",
                "key `cache`",
            ),
            ("[cache]\ndir = \"\"\n", "key `cache.dir`"),
            ("[cache]\nexpire_days = 0\n", "key `cache.expire_days`"),
            ("[cache]\nlimit_bytes = 0\n", "key `cache.limit_bytes`"),
            (
                "[cache]\nlimit_bytes = 6000000000\n",
                "key `cache.limit_bytes`",
            ),
            (
                "[cache]\ns3 = { bucket = \"Acme_Cache\" }\n",
                "key `cache.s3.bucket`",
            ),
            (
                "[cache]\ns3 = { bucket = \"acme\", prefix = \"../x\" }\n",
                "key `cache.s3.prefix`",
            ),
            ("[cache]\nexpiry = 3\n", "unknown field `expiry`"),
        ] {
            let error = load(text).unwrap_err();
            assert!(error.contains(key), "{text}: {error}");
        }
    }
}
