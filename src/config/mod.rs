//! Server configuration: the raw `slipway.toml` as written, and the resolved settings the
//! server runs with.
//!
//! Parsing does no IO beyond reading the file; resolving applies environment overrides and
//! command-line flags, checks values, and reads secrets from the environment. Every error a
//! user can cause names the file, the key and what was expected.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

mod ami;
mod autoscale;
mod bake;
pub mod bitbucket;
mod cache;
mod clone_url;
mod docker_host;
pub mod notify;
mod registries;
pub use ami::{AmiSettings, RawAmi, RawSourceAmiFilter, DEFAULT_KEEP_RELEASES};
pub use autoscale::{AutoscaleConfig, AutoscaleProvider, RawAutoscale};
pub use bake::{check_relative_path, BakeSettings, PlaybookRepo, PlaybookSource, RawBake};
pub use bitbucket::Bitbucket;
pub use cache::{
    CacheConfig, CacheStorage, RawCache, DEFAULT_LIMIT_BYTES as DEFAULT_CACHE_LIMIT_BYTES,
};
pub use clone_url::CloneCredentials;
use docker_host::check_address as check_docker_host;
pub use docker_host::DEFAULT_DOCKER_HOST;
pub use registries::{RawEcr, RawRegistry, Registry, RegistryLogin, RegistryMirror};

/// The bake log cap when none is configured.
pub const DEFAULT_BAKE_LOG_LIMIT_BYTES: u64 = 4 * 1024 * 1024;

/// Where the server listens when neither the file, the environment nor a flag says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The data directory used when none is configured.
pub const DEFAULT_DATA_DIR: &str = ".slipway";
/// The config file read from the working directory when `--config` is absent.
pub const DEFAULT_CONFIG_FILE: &str = "slipway.toml";
/// Largest config file accepted, in bytes: far above any real one, and small enough that a
/// wrong path (a log, a disk image) is refused before it is read into memory.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// A configuration problem, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// `slipway.toml` as the user wrote it. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    /// The URL users reach the server at, for links (build statuses, notifications).
    pub public_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    /// dockerd's address: `unix:///path` or `tcp://host:port`.
    pub docker_host: Option<String>,
    /// The Packer binary: a path, or a name looked up on `PATH`.
    pub packer: Option<PathBuf>,
    /// How many builds run at once.
    pub max_concurrent_builds: Option<usize>,
    /// How many release images are baked at once.
    pub max_concurrent_bakes: Option<usize>,
    /// Per-step cap on stored log bytes; output past it is cut, and the log says so.
    pub step_log_limit_bytes: Option<u64>,
    /// Largest webhook body accepted, in bytes.
    pub webhook_max_body_bytes: Option<usize>,
    /// Cap on a release's stored bake log; output past it is cut, and the log says so.
    pub bake_log_limit_bytes: Option<u64>,
    /// A pull-through mirror for Docker Hub images: `http://host[:port]`.
    pub registry_mirror: Option<String>,
    /// Whether an image the mirror cannot serve is pulled from Docker Hub itself.
    pub registry_mirror_fallback: Option<bool>,
    /// The image docker environments' load balancers run (built locally from Debian's
    /// haproxy package: scripts/images/haproxy).
    pub load_balancer_image: Option<String>,
    /// `[apt]`: where the signed apt repository lives.
    pub apt: Option<RawApt>,
    /// `[retention]`: what housekeeping removes; absent keys keep everything.
    pub retention: Option<RawRetention>,
    /// `[cache]`: where builds' caches live, how large and for how long.
    pub cache: Option<RawCache>,
    /// `[agents]`: how build agents hold the builds they run.
    pub agents: Option<RawAgents>,
    /// `[metrics]`: who may read `/metrics`.
    pub metrics: Option<RawMetrics>,
    /// `[autoscale]`: the autoscaler of build agents (off when absent).
    pub autoscale: Option<RawAutoscale>,
    /// `[ui]`: who may read the web UI, and how long a sign-in lasts.
    pub ui: Option<RawUi>,
    #[serde(default)]
    pub projects: Vec<RawProject>,
}

/// `[retention]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Builds that ended longer ago than this many days are deleted with their logs...
    pub build_days: Option<u32>,
    /// ...unless among the newest this many builds of their project.
    pub build_keep: Option<u32>,
    /// Docker images of releases older than a project's newest this many are removed.
    pub image_keep: Option<u32>,
    /// Versions of a package older than its newest this many leave the apt repository.
    pub apt_keep: Option<u32>,
}

/// `[apt]`: the apt repository every server of the installation publishes to and serves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApt {
    /// A directory every server mounts (default `<data_dir>/apt`, for one server).
    pub dir: Option<PathBuf>,
    /// An S3 bucket every server publishes to and serves from, instead of a directory.
    pub s3: Option<RawS3Bucket>,
}

/// `s3 = { bucket, prefix, endpoint_url, region }` as written (`[apt] s3`, `[cache] s3`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3Bucket {
    pub bucket: String,
    pub prefix: Option<String>,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
}

/// An S3 bucket and prefix (`[apt] s3`, `[cache] s3`), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Bucket {
    pub bucket: String,
    /// The keys' common beginning: empty, or ending in `/`.
    pub prefix: String,
    /// Another S3 endpoint than AWS's (addressed path-style then).
    pub endpoint_url: Option<String>,
    /// The bucket's region; the AWS environment's (`AWS_REGION`, the profile) when unset.
    pub region: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProject {
    pub name: String,
    pub repository: String,
    pub clone_url: String,
    /// The clone password, read from this environment variable (the user is in `clone_url`).
    pub clone_password_env: Option<String>,
    pub webhook_secret: Option<String>,
    pub webhook_secret_env: Option<String>,
    pub branches: Option<String>,
    pub deploy_branch: Option<String>,
    /// Whether builds of pull requests from forks get the project's secrets.
    pub trust_forks: Option<bool>,
    /// Whether a push (a pull request update) cancels the older builds of its branch (its
    /// pull request).
    pub auto_cancel: Option<bool>,
    /// Whether `auto_cancel` applies on the deploy branch too.
    pub auto_cancel_deploy_branch: Option<bool>,
    /// Values for the pipeline's `secrets:` by name: a string, or `{ env = "VAR" }`.
    #[serde(default)]
    pub secrets: BTreeMap<String, RawSecret>,
    #[serde(default)]
    pub environments: Vec<RawEnvironment>,
    /// Debian package names this project owns in the shared apt repository.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Logins for the registries the project's images come from.
    #[serde(default)]
    pub registries: Vec<RawRegistry>,
    /// The team's own provisioning of the project's images.
    pub bake: Option<RawBake>,
    /// How the project's AMIs are baked; needed by a project with an aws environment.
    pub ami: Option<RawAmi>,
    /// The Bitbucket hosting the repository: its API and the token for clones and statuses.
    pub bitbucket: Option<bitbucket::RawBitbucket>,
    /// Who is told about failed builds, bakes and deployments.
    #[serde(default)]
    pub notify: Vec<notify::RawNotify>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    Value(String),
    FromEnv { env: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Docker,
    Aws,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    pub name: String,
    pub target: TargetKind,
    pub listen: Option<String>,
    pub instances: Option<u32>,
    pub health_path: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub listener_arn: Option<String>,
    pub target_groups: Option<Vec<String>>,
    pub launch_template_id: Option<String>,
    pub subnets: Option<Vec<String>>,
    pub instance_type: Option<String>,
    /// How long the previous fleet is kept warm after a deployment, e.g. `10m`.
    pub retention: Option<String>,
    /// How long a new fleet is watched after the switch, e.g. `10s`.
    pub watch: Option<String>,
    /// How long a new fleet may take to pass its health checks, e.g. `60s`.
    pub health_timeout: Option<String>,
    /// The application's configuration in this environment: variable name to a value or
    /// `{ env = "VAR" }`. Docker instances get it as their environment, AMI instances as
    /// `/etc/default/<package>`.
    #[serde(default)]
    pub env: BTreeMap<String, RawSecret>,
    /// A docker environment's TLS termination: `{ cert = "PATH", key = "PATH" }`.
    pub tls: Option<RawTls>,
    /// A docker environment's limit on a request body (by its `Content-Length`), in bytes.
    pub max_request_body_bytes: Option<u64>,
    /// The dockerd a docker environment's load balancer and instances run on:
    /// `unix:///path` or `tcp://host:port`; default the server's `docker_host`.
    pub docker_host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// A string that must never be printed: `Debug` and `Display` show `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Where a secret value is: given (from the environment), or in a file read at each use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Value(Secret),
    File(PathBuf),
}

impl SecretSource {
    /// The value: a file's content without its trailing newline. The error names the file,
    /// never its content.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            SecretSource::Value(secret) => Ok(secret.clone()),
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() || value.len() > 4096 || value.contains(char::is_control) {
                    return Err(format!(
                        "the token file {} does not hold one line of at most 4096 characters",
                        path.display()
                    ));
                }
                Ok(Secret::new(value))
            }
        }
    }
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The URL users reach the server at, without a trailing `/` (default `http://<listen>`,
    /// with the port the server bound when `listen` names port 0).
    pub public_url: String,
    pub data_dir: PathBuf,
    /// `None`: the embedded PostgreSQL cluster in `data_dir`.
    pub database_url: Option<Secret>,
    /// dockerd's address, checked: `unix:///path` or `tcp://host:port`.
    pub docker_host: String,
    pub packer: PathBuf,
    pub max_concurrent_builds: usize,
    pub max_concurrent_bakes: usize,
    pub step_log_limit_bytes: u64,
    pub webhook_max_body_bytes: usize,
    pub bake_log_limit_bytes: u64,
    pub registry_mirror: Option<RegistryMirror>,
    pub load_balancer_image: String,
    /// The apt repository's directory: shared by every server of the installation, or, with
    /// `apt_s3`, this server's working copy of the repository in the bucket.
    pub apt_dir: PathBuf,
    /// The bucket that keeps the apt repository, when it is not a shared directory.
    pub apt_s3: Option<S3Bucket>,
    /// What housekeeping removes, and what it keeps.
    pub retention: Retention,
    /// Where builds' caches live (`[cache]`).
    pub cache: CacheConfig,
    /// Seconds a build agent's lease lasts without a heartbeat (`[agents] lease_seconds`);
    /// agents heartbeat three times in that time.
    pub agent_lease_seconds: u64,
    /// Whether `/metrics` answers without a token (`[metrics] anonymous`, default false).
    pub metrics_anonymous: bool,
    /// The autoscaler of build agents (`[autoscale]`), when configured.
    pub autoscale: Option<AutoscaleConfig>,
    /// The web UI's sign-in (`[ui]`).
    pub ui: UiConfig,
    pub projects: Vec<Project>,
}

/// `[ui]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUi {
    /// Pages and the API's reads answer without a token or sign-in (default false).
    pub anonymous_read: Option<bool>,
    /// How long a sign-in lasts (default 12 hours).
    pub session_hours: Option<u64>,
}

/// The web UI's sign-in, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    /// Whether reads (pages, `GET /api/v1/...` that need only `read`) need no sign-in.
    pub anonymous_read: bool,
    pub session_hours: u64,
}

/// How long a web UI sign-in lasts unless `[ui] session_hours` says otherwise.
pub const DEFAULT_SESSION_HOURS: u64 = 12;

/// `[agents]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgents {
    /// How long an agent that stopped heartbeating keeps its builds (default 30 s).
    pub lease_seconds: Option<u64>,
}

/// How long an agent's lease lasts unless `[agents] lease_seconds` says otherwise.
pub const DEFAULT_AGENT_LEASE_SECONDS: u64 = 30;

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Whether `/metrics` answers without a token (default false: a token of any scope).
    pub anonymous: Option<bool>,
}

/// What housekeeping removes (see docs/configuration.md, "Retention"); `None` keeps all.
/// Whatever is live, warm or taken by an unfinished deployment in an environment is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Builds that ended more than this long ago (and made no release) are deleted...
    pub build_age: Option<Duration>,
    /// ...unless among the newest this many of their project.
    pub build_keep: Option<u32>,
    /// Docker images of releases older than a project's newest this many are removed.
    pub image_keep: Option<u32>,
    /// Versions of a package older than its newest this many leave the apt repository.
    pub apt_keep: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Project {
    pub name: String,
    pub repository: String,
    /// Where git fetches from, without credentials: this form may be logged and stored.
    pub clone_url: String,
    /// Given to git only through a credential helper, never in a URL or argument.
    pub clone_credentials: Option<CloneCredentials>,
    /// The deploy key of an SSH `clone_url` (from `[projects.bitbucket]`).
    pub clone_ssh: Option<bitbucket::SshKey>,
    pub webhook_secret: Option<Secret>,
    pub branches: Regex,
    pub deploy_branch: String,
    /// Builds of pull requests from forks get `secrets` too (default: none).
    pub trust_forks: bool,
    /// A new push to a branch, or update of a pull request, cancels the older queued and
    /// running builds of that branch or pull request (not the deploy branch's, unless
    /// `auto_cancel_deploy_branch`).
    pub auto_cancel: bool,
    pub auto_cancel_deploy_branch: bool,
    pub secrets: BTreeMap<String, Secret>,
    pub environments: Vec<Environment>,
    /// Package names declared as this project's: no other project may publish them.
    pub packages: Vec<String>,
    pub registries: Vec<Registry>,
    /// `[projects.bake]`; `.slipway.yml`'s `bake:` fills in what it leaves unset.
    pub bake: BakeSettings,
    /// `[projects.ami]`: present whenever the project has an aws environment.
    pub ami: Option<AmiSettings>,
    /// `[projects.bitbucket]`: where build statuses are reported, with which token.
    pub bitbucket: Option<Bitbucket>,
    /// `[[projects.notify]]`, in order: a delivery names its target by its place here.
    pub notify: Vec<notify::Notify>,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub target: TargetKind,
    pub listen: Option<SocketAddr>,
    pub instances: u32,
    pub health_path: String,
    pub retention: Duration,
    pub watch: Duration,
    pub health_timeout: Duration,
    pub aws: Option<AwsEnvironment>,
    /// The application's variables in this environment; values never printed.
    pub env: BTreeMap<String, Secret>,
    /// Where a docker environment's certificate and key are (read when the server starts).
    pub tls: Option<TlsFiles>,
    pub max_request_body_bytes: u64,
    /// The dockerd a docker environment runs on (checked; the server's unless it names one).
    pub docker_host: String,
}

/// The files of a docker environment's TLS termination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The load balancer image when the file names none.
pub const DEFAULT_LOAD_BALANCER_IMAGE: &str = "slipway/haproxy:2.6";
/// A docker environment's request body limit when the file sets none: 100 MiB.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 100 * 1024 * 1024;

/// The variable of an environment's `env` whose database the deployments migrate.
pub const DATABASE_URL_VARIABLE: &str = "DATABASE_URL";

impl Environment {
    /// The database the application's migrations are applied to, when `env` names one.
    pub fn database_url(&self) -> Option<&Secret> {
        self.env.get(DATABASE_URL_VARIABLE)
    }
}

#[derive(Debug, Clone)]
pub struct AwsEnvironment {
    pub region: String,
    pub endpoint_url: Option<String>,
    pub listener_arn: String,
    pub target_groups: [String; 2],
    pub launch_template_id: String,
    pub subnets: Vec<String>,
    pub instance_type: String,
}

impl Config {
    /// Loads the configuration: `--config FILE` when given (it must exist), else
    /// `./slipway.toml` when present, else built-in defaults with no project; then the
    /// `SLIPWAY_*` environment variables, then the command-line overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let default_file = Path::new(DEFAULT_CONFIG_FILE);
        let (origin, raw) = match file {
            Some(path) => (path.display().to_string(), read_file(path)?),
            None if default_file.exists() => {
                (default_file.display().to_string(), read_file(default_file)?)
            }
            None => ("built-in defaults".to_string(), RawConfig::default()),
        };
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        resolve(raw, &origin, overrides, &env)
    }

    pub fn project(&self, name: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.name == name)
    }
}

fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    parse(&text, &path.display().to_string())
}

/// Parses the text of a config file; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Parse {
            path: origin.to_string(),
            message: format!(
                "the file is over the limit of {MAX_CONFIG_BYTES} bytes ({} KiB)",
                MAX_CONFIG_BYTES / 1024
            ),
        });
    }
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Applies environment (`env` looks a variable up) and flags to the raw file and checks it.
pub fn resolve(
    raw: RawConfig,
    origin: &str,
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        origin: origin.to_string(),
        key: key.to_string(),
        message,
    };
    let listen_text = overrides
        .listen
        .clone()
        .or_else(|| env("SLIPWAY_LISTEN"))
        .or(raw.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen = parse_addr(&listen_text).map_err(|m| invalid("listen", m))?;
    let public_url = match raw.public_url {
        Some(url) => {
            let valid = (url.starts_with("https://") || url.starts_with("http://"))
                && !url.contains(['@', '?', '#'])
                && !url.contains(char::is_whitespace)
                && url.len() <= 500;
            if !valid {
                let got = if url.contains('@') {
                    "a URL with credentials in it".to_owned()
                } else {
                    format!("{url:?}")
                };
                return Err(invalid(
                    "public_url",
                    format!("expected an http(s) URL like https://slipway.acme.test, got {got}"),
                ));
            }
            url.trim_end_matches('/').to_owned()
        }
        None => format!("http://{listen}"),
    };
    let data_dir = overrides
        .data_dir
        .clone()
        .or_else(|| env("SLIPWAY_DATA_DIR").map(PathBuf::from))
        .or(raw.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let database_url = env("SLIPWAY_DATABASE_URL")
        .or(raw.database_url)
        .map(Secret::new);
    // The file wins over DOCKER_HOST: the variable may be set for someone's docker CLI.
    let (docker_host_key, docker_host) = match (raw.docker_host, env("DOCKER_HOST")) {
        (Some(host), _) => ("docker_host", host),
        (None, Some(host)) => ("docker_host (from DOCKER_HOST)", host),
        (None, None) => ("docker_host", DEFAULT_DOCKER_HOST.to_string()),
    };
    check_docker_host(&docker_host).map_err(|m| invalid(docker_host_key, m))?;
    let packer = raw.packer.unwrap_or_else(|| PathBuf::from("packer"));
    if packer.as_os_str().is_empty() {
        return Err(invalid(
            "packer",
            "expected the Packer binary's path or name, got \"\"".into(),
        ));
    }
    let registry_mirror =
        registries::resolve_mirror(raw.registry_mirror, raw.registry_mirror_fallback, &invalid)?;
    // 0: this server runs no build itself and leaves them all to agents.
    let max_concurrent_builds = raw.max_concurrent_builds.unwrap_or(2);
    let max_concurrent_bakes = raw.max_concurrent_bakes.unwrap_or(1);
    if max_concurrent_bakes == 0 {
        return Err(invalid(
            "max_concurrent_bakes",
            "expected a number of at least 1, got 0".into(),
        ));
    }

    let raw_apt = raw.apt.unwrap_or_default();
    let apt_s3 = match raw_apt.s3 {
        Some(_) if raw_apt.dir.is_some() => {
            return Err(invalid(
                "apt",
                "expected `dir` or `s3`, not both: the repository lives in one place".into(),
            ))
        }
        Some(s3) => Some(resolve_s3(s3, "apt.s3", &invalid)?),
        None => None,
    };
    let apt_dir = match raw_apt.dir {
        Some(dir) if dir.as_os_str().is_empty() => {
            return Err(invalid(
                "apt.dir",
                "expected the directory every server mounts, got \"\"".into(),
            ))
        }
        Some(dir) => dir,
        None => data_dir.join("apt"),
    };

    let retention = resolve_retention(raw.retention.unwrap_or_default(), &invalid)?;
    let cache = cache::resolve(raw.cache.unwrap_or_default(), &data_dir, &invalid)?;
    let agent_lease_seconds = raw
        .agents
        .unwrap_or_default()
        .lease_seconds
        .unwrap_or(DEFAULT_AGENT_LEASE_SECONDS);
    if !(3..=3600).contains(&agent_lease_seconds) {
        return Err(invalid(
            "agents.lease_seconds",
            format!("expected seconds from 3 to 3600, got {agent_lease_seconds}"),
        ));
    }
    let autoscale = raw
        .autoscale
        .map(|raw| autoscale::resolve(raw, &invalid))
        .transpose()?;
    let raw_ui = raw.ui.unwrap_or_default();
    let ui = UiConfig {
        anonymous_read: raw_ui.anonymous_read.unwrap_or(false),
        session_hours: raw_ui.session_hours.unwrap_or(DEFAULT_SESSION_HOURS),
    };
    if !(1..=24 * 30).contains(&ui.session_hours) {
        return Err(invalid(
            "ui.session_hours",
            format!(
                "expected hours from 1 to 720 (30 days), got {}",
                ui.session_hours
            ),
        ));
    }

    let mut names = HashSet::new();
    let mut projects = Vec::new();
    let mut package_owners: BTreeMap<String, String> = BTreeMap::new();
    for (i, raw_project) in raw.projects.into_iter().enumerate() {
        let project = resolve_project(raw_project, i, &invalid, env, &docker_host)?;
        if !names.insert(project.name.clone()) {
            return Err(invalid(
                &format!("projects[{i}].name"),
                format!("project `{}` is declared twice", project.name),
            ));
        }
        for package in &project.packages {
            if let Some(owner) = package_owners.insert(package.clone(), project.name.clone()) {
                return Err(invalid(
                    &format!("projects[{i}].packages"),
                    format!(
                        "package `{package}` is declared by both project `{owner}` and project `{}`",
                        project.name
                    ),
                ));
            }
        }
        projects.push(project);
    }
    Ok(Config {
        listen,
        public_url,
        data_dir,
        database_url,
        docker_host,
        packer,
        max_concurrent_builds,
        max_concurrent_bakes,
        step_log_limit_bytes: raw.step_log_limit_bytes.unwrap_or(4 * 1024 * 1024),
        webhook_max_body_bytes: raw.webhook_max_body_bytes.unwrap_or(1024 * 1024),
        bake_log_limit_bytes: raw
            .bake_log_limit_bytes
            .unwrap_or(DEFAULT_BAKE_LOG_LIMIT_BYTES),
        registry_mirror,
        load_balancer_image: raw
            .load_balancer_image
            .unwrap_or_else(|| DEFAULT_LOAD_BALANCER_IMAGE.to_owned()),
        apt_dir,
        apt_s3,
        retention,
        cache,
        agent_lease_seconds,
        metrics_anonymous: raw.metrics.and_then(|m| m.anonymous).unwrap_or(false),
        ui,
        autoscale,
        projects,
    })
}

/// `[apt] s3` or `[cache] s3` (`key`), checked: a bucket name S3 accepts, a prefix of plain
/// path segments, and an endpoint that is a URL.
fn resolve_s3(raw: RawS3Bucket, key: &str, invalid: &Invalid<'_>) -> Result<S3Bucket, ConfigError> {
    let bucket_ok = (3..=63).contains(&raw.bucket.len())
        && raw
            .bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !raw.bucket.starts_with(['-', '.'])
        && !raw.bucket.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(invalid(
            &format!("{key}.bucket"),
            format!(
                "expected a bucket name (3 to 63 lowercase letters, digits, `-` and `.`), got {:?}",
                raw.bucket
            ),
        ));
    }
    let prefix = raw.prefix.unwrap_or_default();
    let trimmed = prefix.trim_matches('/');
    let segments_ok = trimmed.is_empty()
        || trimmed.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if !segments_ok || prefix.len() > 200 {
        return Err(invalid(
            &format!("{key}.prefix"),
            format!("expected path segments like \"slipway/apt\", got {prefix:?}"),
        ));
    }
    if let Some(url) = &raw.endpoint_url {
        let valid = (url.starts_with("http://") || url.starts_with("https://"))
            && !url.contains(char::is_whitespace);
        if !valid {
            return Err(invalid(
                &format!("{key}.endpoint_url"),
                format!("expected a URL like http://127.0.0.1:5000, got {url:?}"),
            ));
        }
    }
    if let Some(region) = &raw.region {
        let valid = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(invalid(
                &format!("{key}.region"),
                format!("expected a region like eu-west-1, got {region:?}"),
            ));
        }
    }
    Ok(S3Bucket {
        bucket: raw.bucket,
        prefix: if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        },
        endpoint_url: raw.endpoint_url,
        region: raw.region,
    })
}

/// `[retention]`, checked: keeping nothing of something is refused, since the newest release
/// or build is what users look at.
fn resolve_retention(raw: RawRetention, invalid: &Invalid<'_>) -> Result<Retention, ConfigError> {
    for (key, value) in [
        ("retention.build_days", raw.build_days),
        ("retention.build_keep", raw.build_keep),
        ("retention.image_keep", raw.image_keep),
        ("retention.apt_keep", raw.apt_keep),
    ] {
        if value == Some(0) {
            return Err(invalid(
                key,
                "expected a number of at least 1, got 0 (leave the key out to keep everything)"
                    .into(),
            ));
        }
    }
    Ok(Retention {
        build_age: raw
            .build_days
            .map(|days| Duration::from_secs(u64::from(days) * 24 * 3600)),
        build_keep: raw.build_keep,
        image_keep: raw.image_keep,
        apt_keep: raw.apt_keep,
    })
}

type Invalid<'a> = dyn Fn(&str, String) -> ConfigError + 'a;

fn resolve_project(
    raw: RawProject,
    index: usize,
    invalid: &Invalid<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    docker_host: &str,
) -> Result<Project, ConfigError> {
    let key = |field: &str| format!("projects[{index}].{field}");
    if !is_name(&raw.name) {
        return Err(invalid(
            &key("name"),
            format!(
                "expected lowercase letters, digits and '-', got {:?}",
                raw.name
            ),
        ));
    }
    if raw.repository.split('/').filter(|s| !s.is_empty()).count() != 2 {
        return Err(invalid(
            &key("repository"),
            format!(
                "expected a Bitbucket full name like `owner/slug` or `KEY/slug`, got {:?}",
                raw.repository
            ),
        ));
    }
    let webhook_secret = match (raw.webhook_secret, raw.webhook_secret_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &key("webhook_secret"),
                "set either webhook_secret or webhook_secret_env, not both".into(),
            ))
        }
        (Some(secret), None) => Some(Secret::new(secret)),
        (None, Some(var)) => Some(Secret::new(env(&var).ok_or_else(|| {
            invalid(
                &key("webhook_secret_env"),
                format!("environment variable {var} is not set"),
            )
        })?)),
        (None, None) => None,
    };
    let clone_password = raw
        .clone_password_env
        .map(|var| {
            env(&var).map(Secret::new).ok_or_else(|| {
                invalid(
                    &key("clone_password_env"),
                    format!("environment variable {var} is not set"),
                )
            })
        })
        .transpose()?;
    let (clone_url, mut clone_credentials) =
        clone_url::split_clone_url(&raw.clone_url, clone_password)
            .map_err(|m| invalid(&key("clone_url"), m))?;
    let bitbucket = raw
        .bitbucket
        .map(|raw| bitbucket::resolve(raw, env))
        .transpose()
        .map_err(|(field, message)| invalid(&key(&format!("bitbucket.{field}")), message))?;
    let mut notify = Vec::new();
    for (j, raw_notify) in raw.notify.into_iter().enumerate() {
        notify.push(
            notify::resolve(raw_notify, env).map_err(|(field, message)| {
                invalid(&key(&format!("notify[{j}].{field}")), message)
            })?,
        );
    }
    let clone_ssh = bitbucket.as_ref().and_then(|b| b.ssh.clone());
    let ssh_url = clone_url.starts_with("ssh://")
        || (!clone_url.contains("://") && clone_url.contains('@') && clone_url.contains(':'));
    if clone_ssh.is_some() && !ssh_url {
        return Err(invalid(
            &key("bitbucket.ssh_key_file"),
            "a deploy key clones an SSH clone_url, like ssh://git@bitbucket.org/acme/hello.git"
                .into(),
        ));
    }
    // An HTTPS clone without credentials of its own uses the Bitbucket token.
    if let Some(Bitbucket {
        username,
        token: Some(token),
        ..
    }) = &bitbucket
    {
        let https = clone_url.starts_with("https://") || clone_url.starts_with("http://");
        match &clone_credentials {
            Some(_) => {
                return Err(invalid(
                    &key("clone_url"),
                    "the clone credentials are given twice: in clone_url (or clone_password_env) and as [projects.bitbucket]'s token; keep one".into(),
                ))
            }
            None if https => {
                clone_credentials = Some(CloneCredentials {
                    username: username.clone(),
                    password: token.clone(),
                })
            }
            None => {}
        }
    }
    let pattern = raw.branches.unwrap_or_else(|| "^main$".to_string());
    let branches = Regex::new(&pattern).map_err(|e| {
        invalid(
            &key("branches"),
            format!("expected a regular expression: {e}"),
        )
    })?;
    let mut secrets = BTreeMap::new();
    for (name, raw_secret) in raw.secrets {
        let value = match raw_secret {
            RawSecret::Value(value) => value,
            RawSecret::FromEnv { env: var } => env(&var).ok_or_else(|| {
                invalid(
                    &key(&format!("secrets.{name}")),
                    format!("environment variable {var} is not set"),
                )
            })?,
        };
        secrets.insert(name, Secret::new(value));
    }
    let mut packages: Vec<String> = Vec::new();
    for package in raw.packages {
        if !is_package_name(&package) {
            return Err(invalid(
                &key("packages"),
                format!(
                    "expected Debian package names (a-z 0-9 + - ., 2 to 100 characters, starting with a letter or digit), got {}",
                    shown(&package)
                ),
            ));
        }
        if packages.contains(&package) {
            return Err(invalid(
                &key("packages"),
                format!("package `{package}` is listed twice"),
            ));
        }
        packages.push(package);
    }
    let registry_key = |j: usize, field: &str| key(&format!("registries[{j}].{field}"));
    let registries = registries::resolve_registries(raw.registries, &registry_key, invalid, env)?;
    let bake = bake::resolve(raw.bake.unwrap_or_default(), &|field| {
        key(&format!("bake.{field}"))
    })
    .map_err(|(field, message)| invalid(&field, message))?;
    let mut environments = Vec::new();
    let mut env_names = HashSet::new();
    for (j, raw_env) in raw.environments.into_iter().enumerate() {
        let env_key = |field: &str| key(&format!("environments[{j}].{field}"));
        let environment = resolve_environment(raw_env, &env_key, invalid, env, docker_host)?;
        if !env_names.insert(environment.name.clone()) {
            return Err(invalid(
                &env_key("name"),
                format!("environment `{}` is declared twice", environment.name),
            ));
        }
        environments.push(environment);
    }
    let ami = raw
        .ami
        .map(|ami| ami::resolve(ami, &|field| key(&format!("ami.{field}"))))
        .transpose()
        .map_err(|(field, message)| invalid(&field, message))?;
    if let (None, Some(aws)) = (
        &ami,
        environments.iter().find(|e| e.target == TargetKind::Aws),
    ) {
        return Err(invalid(
            &key("ami"),
            format!(
                "project `{}` has the aws environment `{}`, whose releases are AMIs: add [projects.ami] (region, source_ami or source_ami_filter, ...)",
                raw.name, aws.name
            ),
        ));
    }
    Ok(Project {
        name: raw.name,
        repository: raw.repository,
        clone_url,
        clone_credentials,
        clone_ssh,
        webhook_secret,
        branches,
        deploy_branch: raw.deploy_branch.unwrap_or_else(|| "main".to_string()),
        trust_forks: raw.trust_forks.unwrap_or(false),
        auto_cancel: raw.auto_cancel.unwrap_or(false),
        auto_cancel_deploy_branch: raw.auto_cancel_deploy_branch.unwrap_or(false),
        secrets,
        environments,
        packages,
        registries,
        bake,
        ami,
        bitbucket,
        notify,
    })
}

fn resolve_environment(
    raw: RawEnvironment,
    key: &dyn Fn(&str) -> String,
    invalid: &Invalid<'_>,
    lookup: &dyn Fn(&str) -> Option<String>,
    server_docker_host: &str,
) -> Result<Environment, ConfigError> {
    if !is_name(&raw.name) {
        return Err(invalid(
            &key("name"),
            format!(
                "expected lowercase letters, digits and '-', got {:?}",
                raw.name
            ),
        ));
    }
    let listen = raw
        .listen
        .as_deref()
        .map(parse_addr)
        .transpose()
        .map_err(|m| invalid(&key("listen"), m))?;
    let instances = raw.instances.unwrap_or(2);
    if instances == 0 {
        return Err(invalid(
            &key("instances"),
            "expected at least 1, got 0".into(),
        ));
    }
    let health_path = raw.health_path.unwrap_or_else(|| "/health".to_string());
    // The load balancer's configuration names it: nothing that would end or quote a word.
    let printable = health_path
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '\'' && c != '#');
    if !health_path.starts_with('/') || !printable {
        return Err(invalid(
            &key("health_path"),
            format!(
                "expected a path starting with '/' without spaces, quotes, '#' or '\\', got {health_path:?}"
            ),
        ));
    }
    let max_request_body_bytes = raw
        .max_request_body_bytes
        .unwrap_or(DEFAULT_MAX_REQUEST_BODY_BYTES);
    if max_request_body_bytes == 0 {
        return Err(invalid(
            &key("max_request_body_bytes"),
            "expected at least 1, got 0".into(),
        ));
    }
    let tls = raw.tls.map(|tls| TlsFiles {
        cert: tls.cert,
        key: tls.key,
    });
    let duration = |value: Option<String>, field: &str, default: Duration| match value {
        Some(text) => parse_duration(&text).map_err(|m| invalid(&key(field), m)),
        None => Ok(default),
    };
    let retention = duration(raw.retention, "retention", Duration::from_secs(600))?;
    let watch = duration(raw.watch, "watch", Duration::from_secs(10))?;
    let health_timeout = duration(
        raw.health_timeout,
        "health_timeout",
        Duration::from_secs(60),
    )?;
    let docker_only = [
        ("tls", tls.is_some()),
        (
            "max_request_body_bytes",
            raw.max_request_body_bytes.is_some(),
        ),
        ("docker_host", raw.docker_host.is_some()),
    ];
    if let (TargetKind::Aws, Some((field, _))) =
        (raw.target, docker_only.iter().find(|(_, given)| *given))
    {
        return Err(invalid(
            &key(field),
            "only a docker environment has a load balancer of Slipway's and a dockerd; an aws environment's is the listener given by listener_arn".into(),
        ));
    }
    let docker_host = match raw.docker_host {
        Some(host) => {
            check_docker_host(&host).map_err(|m| invalid(&key("docker_host"), m))?;
            host
        }
        None => server_docker_host.to_owned(),
    };
    let aws = match raw.target {
        TargetKind::Docker => {
            if listen.is_none() {
                return Err(invalid(
                    &key("listen"),
                    "a docker environment needs the address its load balancer listens on".into(),
                ));
            }
            None
        }
        TargetKind::Aws => {
            let required = |value: Option<String>, field: &str| {
                value.ok_or_else(|| {
                    invalid(&key(field), "required for an aws environment".to_string())
                })
            };
            let groups = raw.target_groups.unwrap_or_default();
            let [blue, green]: [String; 2] = groups.try_into().map_err(|g: Vec<String>| {
                invalid(
                    &key("target_groups"),
                    format!("expected exactly two target group ARNs, got {}", g.len()),
                )
            })?;
            Some(AwsEnvironment {
                region: required(raw.region, "region")?,
                endpoint_url: raw.endpoint_url,
                listener_arn: required(raw.listener_arn, "listener_arn")?,
                target_groups: [blue, green],
                launch_template_id: required(raw.launch_template_id, "launch_template_id")?,
                subnets: raw.subnets.unwrap_or_default(),
                instance_type: raw.instance_type.unwrap_or_else(|| "t3.small".to_string()),
            })
        }
    };
    let mut env = BTreeMap::new();
    for (name, raw_value) in raw.env {
        let field = key(&format!("env.{name}"));
        if !is_variable_name(&name) || name == "PORT" {
            return Err(invalid(
                &field,
                format!(
                    "expected a variable name of letters, digits and '_' not starting with a digit, other than PORT (Slipway sets it), got {}",
                    shown(&name)
                ),
            ));
        }
        let value = match raw_value {
            RawSecret::Value(value) => value,
            RawSecret::FromEnv { env: var } => lookup(&var)
                .ok_or_else(|| invalid(&field, format!("environment variable {var} is not set")))?,
        };
        // A newline or NUL would let a value write more than its own line of the
        // instances' environment file, or cut the docker environment short.
        if value.contains(['\n', '\r', '\0']) {
            return Err(invalid(
                &field,
                "the value holds a newline or NUL character, which an environment variable cannot carry".into(),
            ));
        }
        env.insert(name, Secret::new(value));
    }
    Ok(Environment {
        name: raw.name,
        target: raw.target,
        listen,
        instances,
        health_path,
        retention,
        watch,
        health_timeout,
        aws,
        env,
        tls,
        max_request_body_bytes,
        docker_host,
    })
}

/// `<number><unit>` with unit `ms`, `s`, `m` or `h`, like `500ms` or `10m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("expected a duration like 30s, 10m or 500ms, got {text:?}");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let seconds = |per_unit: u64| {
        number
            .checked_mul(per_unit)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("the duration {text:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(expected()),
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("expected an address like 127.0.0.1:8080, got {text:?}"))
}

/// A value for an error message: quoted, or only its length when it is long.
fn shown(value: &str) -> String {
    if value.chars().count() > 100 {
        format!("a value of {} characters", value.chars().count())
    } else {
        format!("{value:?}")
    }
}

/// Debian policy 5.6.1, bounded in length.
fn is_package_name(name: &str) -> bool {
    (2..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// A shell-style variable name, bounded in length.
fn is_variable_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let raw = parse(text, "slipway.toml")?;
        resolve(raw, "slipway.toml", &Overrides::default(), &|_| None)
    }

    #[test]
    fn a_bitbucket_token_clones_over_https_and_is_read_from_the_environment_or_a_file() {
        let project = |clone_url: &str, bitbucket: &str| {
            format!(
                "[[projects]]\nname = \"p\"\nrepository = \"acme/p\"\nclone_url = \"{clone_url}\"\n[projects.bitbucket]\n{bitbucket}\n"
            )
        };
        let raw = parse(
            &project(
                "https://bitbucket.org/acme/p.git",
                "token_env = \"P_TOKEN\"",
            ),
            "slipway.toml",
        )
        .unwrap();
        let env = |key: &str| (key == "P_TOKEN").then(|| "t0ken".to_owned());
        let config = resolve(raw, "slipway.toml", &Overrides::default(), &env).unwrap();
        let project_config = &config.projects[0];
        let bitbucket = project_config.bitbucket.as_ref().unwrap();
        assert_eq!(bitbucket.flavour, bitbucket::Flavour::Cloud);
        assert_eq!(bitbucket.api_url, "https://api.bitbucket.org");
        let credentials = project_config.clone_credentials.as_ref().unwrap();
        assert_eq!(credentials.username, "x-token-auth");
        assert_eq!(credentials.password.read().unwrap().expose(), "t0ken");
        assert_eq!(config.public_url, "http://127.0.0.1:8080");

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "from-file\n").unwrap();
        let text = project(
            "ssh://git@bitbucket.acme.test/acme/p.git",
            &format!(
                "flavour = \"datacenter\"\napi_url = \"https://bitbucket.acme.test/\"\nusername = \"ci-bot\"\ntoken_file = \"{}\"",
                file.path().display()
            ),
        );
        let config = load(&format!("public_url = \"https://ci.acme.test/\"\n{text}")).unwrap();
        let bitbucket = config.projects[0].bitbucket.as_ref().unwrap();
        assert_eq!(bitbucket.api_url, "https://bitbucket.acme.test");
        assert_eq!(
            bitbucket.token.as_ref().unwrap().read().unwrap().expose(),
            "from-file"
        );
        assert!(
            config.projects[0].clone_credentials.is_none(),
            "ssh clones use no token"
        );
        assert_eq!(config.public_url, "https://ci.acme.test");

        for (text, key) in [
            (
                project("https://b/x.git", "flavour = \"server\""),
                "bitbucket.flavour",
            ),
            (
                project("https://b/x.git", "flavour = \"datacenter\""),
                "bitbucket.api_url",
            ),
            (
                project("https://b/x.git", "api_url = \"https://u:p@b\""),
                "bitbucket.api_url",
            ),
            (
                project("https://b/x.git", "token_env = \"UNSET\""),
                "bitbucket.token_env",
            ),
            (
                project("https://b/x.git", "token_file = \"relative\""),
                "bitbucket.token_file",
            ),
            (
                project("https://b/x.git", "token_env = \"A\"\ntoken_file = \"/t\""),
                "bitbucket.token_env",
            ),
            (
                project("https://u:p@b/x.git", "token_file = \"/t\""),
                "clone_url",
            ),
            (
                format!(
                    "public_url = \"ci.acme.test\"\n{}",
                    project("https://b/x.git", "")
                ),
                "public_url",
            ),
            (
                project("ssh://git@b/x.git", "ssh_key_file = \"/k\""),
                "bitbucket.known_hosts",
            ),
            (
                project("ssh://git@b/x.git", "known_hosts = \"/h\""),
                "bitbucket.ssh_key_file",
            ),
            (
                project(
                    "ssh://git@b/x.git",
                    "ssh_key_file = \"k\"\nknown_hosts = \"/h\"",
                ),
                "bitbucket.ssh_key_file",
            ),
            (
                project(
                    "ssh://git@b/x.git",
                    "ssh_key_file = \"/k$x\"\nknown_hosts = \"/h\"",
                ),
                "bitbucket.ssh_key_file",
            ),
            (
                project(
                    "https://b/x.git",
                    "ssh_key_file = \"/k\"\nknown_hosts = \"/h\"",
                ),
                "bitbucket.ssh_key_file",
            ),
        ] {
            let err = load(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("{key}`")), "{text}: {err}");
            assert!(!err.contains(":p@"), "{err}");
        }
        let err = load(&project("https://b/x.git", "ssh_key = \"/k\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `ssh_key`"), "{err}");
    }

    #[test]
    fn notify_targets_take_their_url_and_secret_from_the_environment_and_name_their_events() {
        let text = |notify: &str| {
            format!(
                "[[projects]]\nname = \"p\"\nrepository = \"acme/p\"\nclone_url = \"file:///r\"\n[[projects.notify]]\n{notify}\n"
            )
        };
        let env = |key: &str| match key {
            "SLACK" => Some("https://hooks.slack.test/services/T/B/secret".to_owned()),
            "HOOK" => Some("https://ops.acme.test/slipway".to_owned()),
            "HOOK_SECRET" => Some("s3cret".to_owned()),
            "NOT_A_URL" => Some("hooks.slack.test/services/T/B/secret".to_owned()),
            _ => None,
        };
        let resolve_text = |text: &str| {
            let raw = parse(text, "slipway.toml")?;
            resolve(raw, "slipway.toml", &Overrides::default(), &env)
        };
        let config = resolve_text(&text("kind = \"slack\"\nurl_env = \"SLACK\"")).unwrap();
        let target = &config.projects[0].notify[0];
        assert_eq!(target.kind, notify::NotifyKind::Slack);
        assert_eq!(
            target.on.len(),
            notify::EVENTS.len(),
            "every event by default"
        );
        let config = resolve_text(&text(
            "kind = \"webhook\"\nurl_env = \"HOOK\"\nsecret_env = \"HOOK_SECRET\"\non = [\"deployed\", \"rolled_back\"]",
        ))
        .unwrap();
        let target = &config.projects[0].notify[0];
        assert_eq!(target.secret.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(target.on, ["deployed", "rolled_back"]);
        for (notify, key) in [
            ("kind = \"email\"\nurl_env = \"HOOK\"", "notify[0].kind"),
            ("kind = \"slack\"\nurl_env = \"UNSET\"", "notify[0].url_env"),
            (
                "kind = \"slack\"\nurl_env = \"NOT_A_URL\"",
                "notify[0].url_env",
            ),
            (
                "kind = \"webhook\"\nurl_env = \"HOOK\"",
                "notify[0].secret_env",
            ),
            (
                "kind = \"slack\"\nurl_env = \"SLACK\"\nsecret_env = \"HOOK_SECRET\"",
                "notify[0].secret_env",
            ),
            (
                "kind = \"slack\"\nurl_env = \"SLACK\"\non = [\"build_broke\"]",
                "notify[0].on",
            ),
            (
                "kind = \"slack\"\nurl_env = \"SLACK\"\non = []",
                "notify[0].on",
            ),
        ] {
            let err = resolve_text(&text(notify)).unwrap_err().to_string();
            assert!(
                err.contains(&format!("projects[0].{key}`")),
                "{notify}: {err}"
            );
            assert!(
                !err.contains("services/T/B/secret") && !err.contains("s3cret"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_docker_environment_runs_on_the_servers_dockerd_unless_it_names_one() {
        let env = |extra: &str| {
            format!(
                "docker_host = \"unix:///run/d.sock\"\n[[projects]]\nname = \"p\"\nrepository = \"a/p\"\nclone_url = \"file:///r\"\nwebhook_secret = \"s\"\n[[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:9000\"\n{extra}"
            )
        };
        let config = load(&env("")).unwrap();
        assert_eq!(
            config.projects[0].environments[0].docker_host,
            "unix:///run/d.sock"
        );
        let config = load(&env("docker_host = \"tcp://10.0.0.5:2375\"\n")).unwrap();
        assert_eq!(
            config.projects[0].environments[0].docker_host,
            "tcp://10.0.0.5:2375"
        );
        let err = load(&env("docker_host = \"10.0.0.5\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `projects[0].environments[0].docker_host`"),
            "{err}"
        );
    }

    #[test]
    fn retention_keeps_everything_unless_told_and_refuses_keeping_nothing() {
        let config = load("").unwrap();
        assert_eq!(config.retention, Retention::default());
        let config =
            load("[retention]\nbuild_days = 30\nbuild_keep = 100\nimage_keep = 5\napt_keep = 10\n")
                .unwrap();
        assert_eq!(
            config.retention,
            Retention {
                build_age: Some(Duration::from_secs(30 * 24 * 3600)),
                build_keep: Some(100),
                image_keep: Some(5),
                apt_keep: Some(10),
            }
        );
        let err = load("[retention]\napt_keep = 0\n").unwrap_err().to_string();
        assert!(err.contains("key `retention.apt_keep`"), "{err}");
        let err = load("[retention]\nkeep = 3\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `keep`"), "{err}");
    }

    #[test]
    fn the_apt_repository_is_in_the_data_dir_unless_apt_dir_names_a_shared_one() {
        let config = load("data_dir = \"/var/lib/slipway\"\n").unwrap();
        assert_eq!(config.apt_dir, PathBuf::from("/var/lib/slipway/apt"));
        let config = load("[apt]\ndir = \"/srv/slipway/apt\"\n").unwrap();
        assert_eq!(config.apt_dir, PathBuf::from("/srv/slipway/apt"));
        let err = load("[apt]\ndir = \"\"\n").unwrap_err().to_string();
        assert!(err.contains("key `apt.dir`"), "{err}");
        let err = load("[apt]\ndirectory = \"/srv\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `directory`"), "{err}");
    }

    #[test]
    fn the_apt_repository_may_live_in_a_bucket_with_a_working_copy_in_the_data_dir() {
        let config = load(
            "data_dir = \"/var/lib/slipway\"\n[apt]\ns3 = { bucket = \"acme-apt\", prefix = \"/teams/ops/\", endpoint_url = \"http://127.0.0.1:5000\" }\n",
        )
        .unwrap();
        assert_eq!(config.apt_dir, PathBuf::from("/var/lib/slipway/apt"));
        assert_eq!(
            config.apt_s3,
            Some(S3Bucket {
                bucket: "acme-apt".into(),
                prefix: "teams/ops/".into(),
                endpoint_url: Some("http://127.0.0.1:5000".into()),
                region: None,
            })
        );
        let config =
            load("[apt]\ns3 = { bucket = \"acme-apt\", region = \"eu-west-1\" }\n").unwrap();
        let s3 = config.apt_s3.unwrap();
        assert_eq!(
            (s3.prefix.as_str(), s3.region.as_deref()),
            ("", Some("eu-west-1"))
        );
        for (text, key) in [
            (
                "[apt]\ndir = \"/srv\"\ns3 = { bucket = \"acme-apt\" }\n",
                "key `apt`",
            ),
            (
                "[apt]\ns3 = { bucket = \"Acme_Apt\" }\n",
                "key `apt.s3.bucket`",
            ),
            (
                "[apt]\ns3 = { bucket = \"acme-apt\", prefix = \"a/../b\" }\n",
                "key `apt.s3.prefix`",
            ),
            (
                "[apt]\ns3 = { bucket = \"acme-apt\", endpoint_url = \"127.0.0.1:5000\" }\n",
                "key `apt.s3.endpoint_url`",
            ),
            (
                "[apt]\ns3 = { bucket = \"acme-apt\", region = \"EU West\" }\n",
                "key `apt.s3.region`",
            ),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = load("[apt]\ns3 = { bucket = \"acme-apt\", prefx = \"a\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `prefx`") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn typo_in_a_key_names_the_key_the_file_and_the_line() {
        let err = load("listen = \"127.0.0.1:9000\"\ndata_dri = \"/tmp\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("slipway.toml:"), "{err}");
        assert!(err.contains("unknown field `data_dri`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn typo_in_a_nested_key_is_an_error_too() {
        let text = "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"file:///x\"\nbranch = \"main\"\n";
        let err = load(text).unwrap_err().to_string();
        assert!(err.contains("unknown field `branch`"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn one_bake_at_a_time_unless_the_config_says_otherwise_and_never_none() {
        assert_eq!(load("").unwrap().max_concurrent_bakes, 1);
        assert_eq!(
            load("max_concurrent_bakes = 3\n")
                .unwrap()
                .max_concurrent_bakes,
            3
        );
        let err = load("max_concurrent_bakes = 0\n").unwrap_err().to_string();
        assert!(err.contains("max_concurrent_bakes"), "{err}");
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn no_file_gives_the_documented_defaults() {
        let config = load("").unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(config.database_url.is_none());
        assert!(config.projects.is_empty());
    }

    #[test]
    fn environment_and_flags_override_the_file_in_that_order() {
        let raw = parse("listen = \"127.0.0.1:1\"\ndata_dir = \"/a\"\n", "f").unwrap();
        let env = |k: &str| match k {
            "SLIPWAY_LISTEN" => Some("127.0.0.1:2".to_string()),
            "SLIPWAY_DATA_DIR" => Some("/b".to_string()),
            _ => None,
        };
        let flags = Overrides {
            listen: Some("127.0.0.1:3".into()),
            data_dir: None,
        };
        let config = resolve(raw, "f", &flags, &env).unwrap();
        assert_eq!(config.listen.port(), 3);
        assert_eq!(config.data_dir, PathBuf::from("/b"));
    }

    #[test]
    fn docker_host_comes_from_the_file_then_docker_host_then_the_local_socket() {
        assert_eq!(load("").unwrap().docker_host, DEFAULT_DOCKER_HOST);
        let from_env = |k: &str| (k == "DOCKER_HOST").then(|| "tcp://10.0.0.5:2375".to_string());
        let raw = parse("", "f").unwrap();
        let config = resolve(raw, "f", &Overrides::default(), &from_env).unwrap();
        assert_eq!(config.docker_host, "tcp://10.0.0.5:2375");
        let raw = parse("docker_host = \"unix:///run/other.sock\"\n", "f").unwrap();
        let config = resolve(raw, "f", &Overrides::default(), &from_env).unwrap();
        assert_eq!(config.docker_host, "unix:///run/other.sock");

        let err = load("docker_host = \"/var/run/docker.sock\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "slipway.toml: key `docker_host`: expected `unix:///path/to/docker.sock` or `tcp://host:port`, got \"/var/run/docker.sock\"");
        let raw = parse("", "f").unwrap();
        let bad_env = |k: &str| (k == "DOCKER_HOST").then(|| "ssh://me@host".to_string());
        let err = resolve(raw, "f", &Overrides::default(), &bad_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f: key `docker_host (from DOCKER_HOST)`: "),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_say_what_was_expected() {
        let err = load("listen = \"localhost\"\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "slipway.toml: key `listen`: expected an address like 127.0.0.1:8080, got \"localhost\""
        );
        let text = "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\n[[projects.environments]]\nname = \"dev\"\ntarget = \"k8s\"\n";
        let err = load(text).unwrap_err().to_string();
        assert!(err.contains("unknown variant `k8s`"), "{err}");
        assert!(err.contains("line 7"), "{err}");
    }

    #[test]
    fn a_docker_environments_load_balancer_settings_are_read_and_checked() {
        let docker = |extra: &str| {
            format!("[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\n[[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:8081\"\n{extra}")
        };
        let config = load(&docker("")).unwrap();
        assert_eq!(config.load_balancer_image, DEFAULT_LOAD_BALANCER_IMAGE);
        let dev = &config.projects[0].environments[0];
        assert_eq!(dev.max_request_body_bytes, DEFAULT_MAX_REQUEST_BODY_BYTES);
        assert_eq!(dev.tls, None);

        let text = docker("tls = { cert = \"/etc/c.pem\", key = \"/etc/k.pem\" }\nmax_request_body_bytes = 1000\n");
        let config = load(&format!("load_balancer_image = \"lb:1\"\n{text}")).unwrap();
        assert_eq!(config.load_balancer_image, "lb:1");
        let dev = &config.projects[0].environments[0];
        assert_eq!(dev.max_request_body_bytes, 1000);
        assert_eq!(
            dev.tls,
            Some(TlsFiles {
                cert: "/etc/c.pem".into(),
                key: "/etc/k.pem".into()
            })
        );

        let err = load(&docker("max_request_body_bytes = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("projects[0].environments[0].max_request_body_bytes"),
            "{err}"
        );
        let err = load(&docker("health_path = \"/a b\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("health_path") && err.contains("without spaces"),
            "{err}"
        );
        let err = load(&docker("tls = { cert = \"/c\" }\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `key`"), "{err}");
        let aws = "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\n[projects.ami]\nregion = \"eu-west-1\"\nsource_ami = \"ami-1\"\ncommunicator = \"none\"\n[[projects.environments]]\nname = \"prod\"\ntarget = \"aws\"\nregion = \"eu-west-1\"\nlistener_arn = \"l\"\ntarget_groups = [\"a\", \"b\"]\nlaunch_template_id = \"lt\"\ntls = { cert = \"/c\", key = \"/k\" }\n";
        let err = load(aws).unwrap_err().to_string();
        assert!(
            err.contains(".tls`") && err.contains("only a docker environment"),
            "{err}"
        );
    }

    #[test]
    fn aws_environment_requires_its_addresses() {
        let text = "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\n[[projects.environments]]\nname = \"prod\"\ntarget = \"aws\"\nregion = \"eu-west-1\"\n";
        let err = load(text).unwrap_err().to_string();
        assert!(
            err.contains("projects[0].environments[0].target_groups"),
            "{err}"
        );
    }

    #[test]
    fn an_aws_environment_needs_the_projects_ami_settings() {
        let text = "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\n[[projects.environments]]\nname = \"prod\"\ntarget = \"aws\"\nregion = \"eu-west-1\"\nlistener_arn = \"l\"\ntarget_groups = [\"a\", \"b\"]\nlaunch_template_id = \"lt-1\"\nsubnets = [\"subnet-1\"]\n";
        let err = load(text).unwrap_err().to_string();
        assert!(
            err.contains("projects[0].ami") && err.contains("project `hello`"),
            "{err}"
        );
        let with_ami = format!(
            "{text}[projects.ami]\nregion = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\napt_url = \"https://slipway.example.com/apt/\"\n"
        );
        let project = &load(&with_ami).unwrap().projects[0];
        assert_eq!(
            project.ami.as_ref().map(|a| a.region.as_str()),
            Some("eu-west-1")
        );
        // Baked in another region than the environment's: the environment runs a copy.
        let elsewhere = load(&with_ami.replace(
            "region = \"eu-west-1\"\nsource",
            "region = \"us-east-1\"\nsource",
        ))
        .unwrap();
        let project = &elsewhere.projects[0];
        assert_eq!(project.ami.as_ref().unwrap().region, "us-east-1");
        assert_eq!(
            project.environments[0].aws.as_ref().unwrap().region,
            "eu-west-1"
        );
        let err = load(&with_ami.replace("source_ami = \"ami-785db401\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("projects[0].ami.source_ami"), "{err}");
    }

    #[test]
    fn deployment_timings_are_durations_with_units() {
        let text = "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\n[[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:1\"\nretention = \"0s\"\nwatch = \"500ms\"\n";
        let environment = &load(text).unwrap().projects[0].environments[0];
        assert_eq!(environment.retention, Duration::ZERO);
        assert_eq!(environment.watch, Duration::from_millis(500));
        assert_eq!(environment.health_timeout, Duration::from_secs(60));
        let err = load(&text.replace("500ms", "soon"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("environments[0].watch"), "{err}");
        // Minutes or hours past u64 seconds overflowed: a panic with debug assertions.
        let err = load(&text.replace("500ms", "18446744073709551615m"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is too long"), "{err}");
    }

    #[test]
    fn a_config_file_over_the_size_limit_is_refused_unparsed() {
        let text = format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES));
        let err = parse(&text, "big.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "big.toml: the file is over the limit of 1048576 bytes (1024 KiB)"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway.toml");
        // A sparse file: 50 MB of NULs that take no room, on disk or in the test's memory.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(50 * 1024 * 1024)
            .unwrap();
        let err = Config::load(Some(&path), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("the file is over the limit of 1048576 bytes (1024 KiB)"),
            "{err}"
        );
    }

    #[test]
    fn webhook_secret_from_the_environment_is_never_printed() {
        let raw = parse("[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\nwebhook_secret_env = \"HOOK\"\n", "f").unwrap();
        let config = resolve(raw, "f", &Overrides::default(), &|k| {
            (k == "HOOK").then(|| "s3cr3t".to_string())
        })
        .unwrap();
        let project = &config.projects[0];
        assert_eq!(project.webhook_secret.as_ref().unwrap().expose(), "s3cr3t");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_package_declared_by_two_projects_names_both() {
        let project = |name: &str, packages: &str| {
            format!("[[projects]]\nname = \"{name}\"\nrepository = \"acme/{name}\"\nclone_url = \"x\"\npackages = {packages}\n")
        };
        let config = load(&format!(
            "{}{}",
            project("one", "[\"hello\", \"hello-tools\"]"),
            project("two", "[\"other\"]")
        ))
        .unwrap();
        assert_eq!(config.projects[0].packages, ["hello", "hello-tools"]);
        let err = load(&format!(
            "{}{}",
            project("one", "[\"hello\"]"),
            project("two", "[\"other\", \"hello\"]")
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "slipway.toml: key `projects[1].packages`: package `hello` is declared by both project `one` and project `two`"
        );
        let err = load(&project("one", "[\"Hello_World\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("projects[0].packages") && err.contains("\"Hello_World\""),
            "{err}"
        );
    }

    #[test]
    fn an_environments_application_configuration_is_resolved_and_never_printed() {
        let text = "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\n[[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:1\"\n[projects.environments.env]\nDATABASE_URL = { env = \"HELLO_DEV_DATABASE_URL\" }\nLOG_LEVEL = \"info\"\n";
        let lookup = |k: &str| {
            (k == "HELLO_DEV_DATABASE_URL").then(|| "postgres://app:pw-1234@db/app".to_string())
        };
        let raw = parse(text, "f").unwrap();
        let config = resolve(raw, "f", &Overrides::default(), &lookup).unwrap();
        let environment = &config.projects[0].environments[0];
        assert_eq!(environment.env["LOG_LEVEL"].expose(), "info");
        assert_eq!(
            environment.database_url().unwrap().expose(),
            "postgres://app:pw-1234@db/app"
        );
        assert!(!format!("{config:?}").contains("pw-1234"));

        let err = resolve(
            parse(text, "f").unwrap(),
            "f",
            &Overrides::default(),
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "f: key `projects[0].environments[0].env.DATABASE_URL`: environment variable HELLO_DEV_DATABASE_URL is not set");
        let with = |text: &str| {
            resolve(
                parse(text, "f").unwrap(),
                "f",
                &Overrides::default(),
                &lookup,
            )
            .unwrap_err()
            .to_string()
        };
        let err = with(&text.replace("LOG_LEVEL", "PORT"));
        assert!(err.contains("environments[0].env.PORT"), "{err}");
        let err = with(&text.replace("\"info\"", "\"a\\nB=c\""));
        assert!(
            err.contains("env.LOG_LEVEL") && err.contains("newline"),
            "{err}"
        );
    }

    #[test]
    fn missing_secret_variable_is_named() {
        let raw = parse("[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\nwebhook_secret_env = \"HOOK\"\n", "f").unwrap();
        let err = resolve(raw, "f", &Overrides::default(), &|_| None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "f: key `projects[0].webhook_secret_env`: environment variable HOOK is not set"
        );
    }
}

#[cfg(test)]
mod example_file {
    /// The documented example must stay a valid config.
    #[test]
    fn slipway_example_toml_is_valid() {
        let text = include_str!("../../slipway.example.toml");
        let raw = super::parse(text, "slipway.example.toml").unwrap();
        let env = |key: &str| key.starts_with("HELLO_").then(|| "value".to_string());
        let config =
            super::resolve(raw, "slipway.example.toml", &Default::default(), &env).unwrap();
        assert_eq!(config.projects[0].environments.len(), 2);
    }
}
