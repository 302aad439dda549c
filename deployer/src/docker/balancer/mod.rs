//! The docker target's load balancer: HAProxy in a container of its own on the host's network,
//! kept by dockerd (restart policy `unless-stopped`), so that it serves whether Slipway runs or
//! not. Its directory (mounted at [`config::MOUNT`]: a directory on this host, or on a docker
//! host reached over TCP a volume, see `access.rs`) holds the configuration file, the map
//! naming the live slot, the TLS certificate, the runtime API's socket and the access log
//! (HAProxy's output: a file write per request costs a fraction of what a line through
//! dockerd's log driver does).
//!
//! Fleets take turns in two backends, the slots `a` and `b`; each instance is a server named
//! like its container, added and removed through the runtime API with its health checked by
//! HAProxy. A switch is one `set map` of the live slot: atomic, without a reload, every new
//! request goes to the new slot while requests in flight finish where they are. After each
//! change the files are rewritten, so a restarted load balancer routes as before.

mod access;
pub mod config;
pub mod runtime;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, RestartPolicy};
use bollard::models::{ContainerStateStatusEnum, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Mutex;

use super::status;
use crate::error::TargetError;
use access::Access;
pub use runtime::StatRow;

/// Label carrying the address a load balancer container listens on, so that a conflict over
/// it can name the other container.
pub const LISTEN_LABEL: &str = "slipway.listen";
/// Label marking a container as a load balancer.
pub const ROLE_LABEL: &str = "slipway.role";
/// The access log in the load balancer's directory, and its one rotated predecessor.
pub const ACCESS_LOG: &str = "access.log";
pub const ACCESS_LOG_ROTATED: &str = "access.log.1";

/// One of the two backends fleets take turns in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

/// Both slots, in the order they are tried.
pub const SLOTS: [Slot; 2] = [Slot::A, Slot::B];

impl Slot {
    pub fn parse(raw: &str) -> Option<Slot> {
        match raw {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

/// One instance as the load balancer knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Server {
    pub slot: Slot,
    /// The instance's container name.
    pub name: String,
    pub addr: SocketAddr,
    /// Taking no new connections (retiring).
    pub draining: bool,
}

/// Where traffic goes: the live slot and every server of both slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    pub live: Option<Slot>,
    pub servers: Vec<Server>,
}

impl Routing {
    /// The servers of `slot`.
    pub fn of(&self, slot: Slot) -> impl Iterator<Item = &Server> {
        self.servers.iter().filter(move |s| s.slot == slot)
    }
}

/// How an environment's load balancer is made. The certificate is never printed.
#[derive(Clone)]
pub struct LoadBalancerSettings {
    /// The image, built locally from Debian's haproxy package.
    pub image: String,
    /// Its container's name, unique per installation.
    pub container: String,
    /// Its directory on the host (created when missing, mode 0700; made absolute), where
    /// this server starts it. A running load balancer another server of the installation
    /// started on this host is driven through that server's directory, found from the
    /// container's mount.
    pub dir: PathBuf,
    /// The docker host does not share this host's filesystem (a `tcp://` docker host): the
    /// files are in a volume, reached through dockerd's API, and `dir` is not used.
    pub remote: bool,
    /// Where clients connect, on the host's network.
    pub listen: SocketAddr,
    /// TLS termination: the certificate chain then the private key, PEM.
    pub tls_pem: Option<String>,
    /// Larger request bodies (by `Content-Length`) are answered 413.
    pub max_request_body_bytes: u64,
    /// What HAProxy's health checks ask every instance for.
    pub health_path: String,
    /// Labels the container carries besides the load balancer's own.
    pub labels: BTreeMap<String, String>,
}

impl fmt::Debug for LoadBalancerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadBalancerSettings")
            .field("container", &self.container)
            .field("listen", &self.listen)
            .field("tls", &self.tls_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// What an environment's load balancer reports, for the status.
#[derive(Clone, Debug, Serialize)]
pub struct LoadBalancerStatus {
    pub container: String,
    pub listen: SocketAddr,
    pub tls: bool,
    /// `running`, `restarting`, `exited`, ... or `missing`.
    pub state: String,
    /// The frontend's counters and each server's, as HAProxy reports them; empty unless
    /// running.
    pub stats: Vec<StatRow>,
}

/// One environment's load balancer.
pub struct LoadBalancer {
    docker: Docker,
    settings: LoadBalancerSettings,
    /// How its files and runtime API are reached.
    access: Access,
    /// Changes go one at a time, so the files follow the runtime state in order.
    changes: Mutex<()>,
}

impl LoadBalancer {
    pub fn new(docker: Docker, mut settings: LoadBalancerSettings) -> LoadBalancer {
        // dockerd takes only an absolute path for a host directory.
        if let Ok(absolute) = std::path::absolute(&settings.dir) {
            settings.dir = absolute;
        }
        let access = match settings.remote {
            true => Access::Remote,
            false => Access::Local(std::sync::RwLock::new(settings.dir.clone())),
        };
        LoadBalancer {
            docker,
            access,
            settings,
            changes: Mutex::new(()),
        }
    }

    /// The directory of its files and runtime socket on this host now (none on a remote
    /// docker host: they are in the container's volume there).
    pub fn dir(&self) -> Option<PathBuf> {
        self.access.dir()
    }

    /// Follows the directory the container mounts (a bind mount), when it is not the one used
    /// so far: the container was started by another server of the installation on this host.
    fn follow_mount(&self, container: &bollard::models::ContainerInspectResponse) {
        let mounted = container
            .mounts
            .iter()
            .flatten()
            .find(|m| {
                m.destination.as_deref() == Some(config::MOUNT)
                    && m.typ == Some(bollard::models::MountPointTypeEnum::BIND)
            })
            .and_then(|m| m.source.clone())
            .map(PathBuf::from);
        self.access.follow(&self.settings.container, mounted);
    }

    async fn query(&self, command: &str) -> Result<String, TargetError> {
        self.access
            .query(&self.docker, &self.settings.container, command)
            .await
    }

    /// Sends a command that changes something; it succeeded when the answer is `success`
    /// (empty for most: HAProxy answers only to say why it refused).
    async fn act(&self, command: &str, success: &str) -> Result<(), TargetError> {
        let answer = self.query(command).await?;
        match answer.trim() == success {
            true => Ok(()),
            false => Err(TargetError::refused(
                runtime::action(command),
                answer.trim().to_owned(),
            )),
        }
    }

    async fn answers(&self) -> bool {
        self.access
            .answers(&self.docker, &self.settings.container)
            .await
    }

    pub fn settings(&self) -> &LoadBalancerSettings {
        &self.settings
    }

    /// The container's state (`running`, `exited`, ...), or `None` when it does not exist.
    pub async fn state(&self) -> Result<Option<String>, TargetError> {
        match self
            .docker
            .inspect_container(&self.settings.container, None::<InspectContainerOptions>)
            .await
        {
            Ok(found) => {
                self.follow_mount(&found);
                Ok(Some(
                    found
                        .state
                        .and_then(|s| s.status)
                        .unwrap_or(ContainerStateStatusEnum::EMPTY)
                        .to_string(),
                ))
            }
            Err(error) if status(&error) == Some(404) => Ok(None),
            Err(error) => Err(TargetError::platform(
                format!("inspect container {}", self.settings.container),
                error,
            )),
        }
    }

    /// Whether the load balancer runs and its runtime API answers.
    pub async fn serving(&self) -> Result<bool, TargetError> {
        Ok(self.state().await?.as_deref() == Some("running") && self.answers().await)
    }

    /// Makes sure the load balancer runs. A running one is adopted as it is (its routing is
    /// the truth), and reloaded without dropping a connection only when its settings changed;
    /// one that is missing or stopped starts with `routing` (the caller's record of what
    /// should serve). Returns whether it started.
    pub async fn ensure(&self, routing: &Routing) -> Result<bool, TargetError> {
        let _changes = self.changes.lock().await;
        match self.state().await?.as_deref() {
            Some("running") if self.wait_answering(Duration::from_secs(10)).await => {
                self.reload_if_changed().await?;
                Ok(false)
            }
            Some(_) => {
                // Stopped, or running without answering: start again from the record.
                self.remove_container().await?;
                self.start(routing).await?;
                Ok(true)
            }
            None => {
                self.start(routing).await?;
                Ok(true)
            }
        }
    }

    /// The live slot and the servers of both slots, as the load balancer has them now.
    pub async fn routing(&self) -> Result<Routing, TargetError> {
        let state = self.query("show servers state").await?;
        let map = self.query(&format!("show map {}", config::MAP)).await?;
        Ok(Routing {
            live: runtime::live_slot(&map),
            servers: runtime::servers(&state),
        })
    }

    /// The routing its files hold: what it serves once started again.
    pub async fn persisted_routing(&self) -> Result<Routing, TargetError> {
        let container = &self.settings.container;
        let read = |name| self.access.read(&self.docker, container, name);
        Ok(Routing {
            live: read("live.map")
                .await?
                .and_then(|map| config::live_in_map(&map)),
            servers: read("haproxy.cfg")
                .await?
                .map(|text| config::servers_in(&text))
                .unwrap_or_default(),
        })
    }

    /// Adds servers (each starts taking requests once its slot is live and its checks pass).
    pub async fn add(&self, servers: &[Server]) -> Result<(), TargetError> {
        let _changes = self.changes.lock().await;
        for server in servers {
            let id = format!("{}/{}", server.slot, server.name);
            self.act(
                &format!("add server {id} {} {}", server.addr, config::SERVER_OPTIONS),
                "New server registered.",
            )
            .await?;
            self.act(&format!("enable health {id}"), "").await?;
            self.act(&format!("enable server {id}"), "").await?;
        }
        self.persist().await
    }

    /// Removes servers: no new connection, their sessions closed, then deleted.
    pub async fn remove(&self, servers: &[Server]) -> Result<(), TargetError> {
        let _changes = self.changes.lock().await;
        for server in servers {
            let id = format!("{}/{}", server.slot, server.name);
            self.act(&format!("set server {id} state maint"), "")
                .await?;
            self.act(&format!("shutdown sessions server {id}"), "")
                .await?;
            // Idle connections kept for reuse go shortly after the server leaves service.
            let mut tries = 0;
            loop {
                match self
                    .act(&format!("del server {id}"), "Server deleted.")
                    .await
                {
                    Ok(()) => break,
                    Err(error) if tries >= 50 => return Err(error),
                    Err(_) => tries += 1,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.persist().await
    }

    /// Puts `servers` back in service, their health checked.
    pub async fn ready(&self, servers: &[Server]) -> Result<(), TargetError> {
        if servers.is_empty() {
            return Ok(());
        }
        let _changes = self.changes.lock().await;
        for server in servers {
            let id = format!("{}/{}", server.slot, server.name);
            self.act(&format!("enable health {id}"), "").await?;
            self.act(&format!("set server {id} state ready"), "")
                .await?;
        }
        self.persist().await
    }

    /// Stops new connections to `servers`; those open go on.
    pub async fn drain(&self, servers: &[Server]) -> Result<(), TargetError> {
        let _changes = self.changes.lock().await;
        for server in servers {
            self.act(
                &format!("set server {}/{} state drain", server.slot, server.name),
                "",
            )
            .await?;
        }
        self.persist().await
    }

    /// Sends every new request to `slot`.
    pub async fn switch(&self, slot: Slot) -> Result<(), TargetError> {
        let _changes = self.changes.lock().await;
        let map = self.query(&format!("show map {}", config::MAP)).await?;
        let verb = match runtime::live_slot(&map) {
            Some(live) if live == slot => None,
            Some(_) => Some("set"),
            None => Some("add"),
        };
        if let Some(verb) = verb {
            self.act(&format!("{verb} map {} live {slot}", config::MAP), "")
                .await?;
        }
        self.persist().await
    }

    /// Every row of `show stat`.
    pub async fn stats(&self) -> Result<Vec<StatRow>, TargetError> {
        Ok(runtime::stat_rows(&self.query("show stat").await?))
    }

    /// What the status shows.
    pub async fn status(&self) -> Result<LoadBalancerStatus, TargetError> {
        let state = self.state().await?;
        let stats = match state.as_deref() {
            Some("running") => self.stats().await.unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(LoadBalancerStatus {
            container: self.settings.container.clone(),
            listen: self.settings.listen,
            tls: self.settings.tls_pem.is_some(),
            state: state.unwrap_or_else(|| "missing".to_owned()),
            stats,
        })
    }

    /// Once the access log passed `limit` bytes: its content moves to [`ACCESS_LOG_ROTATED`]
    /// (replacing the older one) and it starts empty again (HAProxy appends to the same
    /// file). Returns whether it rotated.
    pub async fn rotate_access_log(&self, limit: u64) -> Result<bool, TargetError> {
        self.access
            .rotate(
                &self.docker,
                &self.settings.container,
                ACCESS_LOG,
                ACCESS_LOG_ROTATED,
                limit,
            )
            .await
    }

    fn rendered(&self) -> Result<config::Rendered, TargetError> {
        if !config::valid_health_path(&self.settings.health_path) {
            return Err(TargetError::refused(
                format!("configure {}", self.settings.container),
                format!(
                    "health path {:?} cannot be written into HAProxy's configuration",
                    self.settings.health_path
                ),
            ));
        }
        let uid = self.access.socket_uid()?;
        Ok(config::Rendered {
            listen: self.settings.listen,
            tls: self.settings.tls_pem.is_some(),
            max_request_body_bytes: self.settings.max_request_body_bytes,
            health_path: self.settings.health_path.clone(),
            socket_uid: uid,
        })
    }

    /// Writes the files for `routing`; returns whether any changed.
    async fn write_files(&self, routing: &Routing) -> Result<bool, TargetError> {
        let rendered = self.rendered()?;
        let cfg = config::render(&rendered, &routing.servers);
        let map = config::map_file(routing.live);
        let mut files = vec![
            access::File {
                name: "haproxy.cfg",
                content: &cfg,
            },
            access::File {
                name: "live.map",
                content: &map,
            },
        ];
        let mut gone = Vec::new();
        match &self.settings.tls_pem {
            Some(pem) => files.push(access::File {
                name: "tls.pem",
                content: pem,
            }),
            None => gone.push("tls.pem"),
        }
        self.access
            .write(&self.docker, &self.settings.container, &files, &gone)
            .await
    }

    /// Rewrites the files from the runtime state, so that a restart routes as now.
    async fn persist(&self) -> Result<(), TargetError> {
        let routing = self.routing().await?;
        self.write_files(&routing).await?;
        Ok(())
    }

    /// After an upgrade or a configuration change: the files follow the settings, and
    /// HAProxy reloads them (its master starts a new worker on the listening sockets; the old
    /// one finishes what it serves).
    async fn reload_if_changed(&self) -> Result<(), TargetError> {
        let routing = self.routing().await?;
        if !self.write_files(&routing).await? {
            return Ok(());
        }
        tracing::info!(container = %self.settings.container, "reloading the load balancer with new settings");
        self.docker
            .kill_container(
                &self.settings.container,
                Some(bollard::query_parameters::KillContainerOptions {
                    signal: "SIGUSR2".to_owned(),
                }),
            )
            .await
            .map_err(|e| TargetError::platform(format!("reload {}", self.settings.container), e))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        match self.wait_answering(Duration::from_secs(10)).await {
            true => Ok(()),
            false => Err(TargetError::refused(
                format!("reload {}", self.settings.container),
                self.why_not_serving().await,
            )),
        }
    }

    async fn start(&self, routing: &Routing) -> Result<(), TargetError> {
        let name = &self.settings.container;
        // Here the directory is written before the container mounts it; through dockerd,
        // the files go into the created container's volume before it starts.
        if self.access.dir().is_some() {
            self.write_files(routing).await?;
            self.access.clear_socket();
        }
        let mut labels: HashMap<String, String> =
            self.settings.labels.clone().into_iter().collect();
        labels.insert(ROLE_LABEL.to_owned(), "load-balancer".to_owned());
        labels.insert(LISTEN_LABEL.to_owned(), self.settings.listen.to_string());
        // HAProxy replaces the shell (signals reach it); its output, the access log, goes to a
        // file, its alerts to dockerd's log.
        let command = format!(
            "exec haproxy -W -db -f {mount}/haproxy.cfg >>{mount}/{ACCESS_LOG}",
            mount = config::MOUNT
        );
        let body = ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            cmd: Some(vec!["sh".to_owned(), "-c".to_owned(), command]),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("host".to_owned()),
                mounts: Some(vec![self.access.mount(name)]),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), "10m".to_owned()),
                        ("max-file".to_owned(), "3".to_owned()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|error| match status(&error) {
                Some(404) => TargetError::refused(
                    format!("create the load balancer {name}"),
                    format!(
                        "image {} is not on dockerd; build it from scripts/images/haproxy \
                         (docs/deploy.md)",
                        self.settings.image
                    ),
                ),
                _ => TargetError::platform(format!("create container {name}"), error),
            })?;
        if self.access.dir().is_none() {
            self.write_files(routing).await?;
        }
        self.docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .map_err(|e| TargetError::platform(format!("start container {name}"), e))?;
        if self.wait_answering(Duration::from_secs(10)).await {
            tracing::info!(container = %name, listen = %self.settings.listen, "load balancer started");
            return Ok(());
        }
        let why = self.why_not_serving().await;
        // A load balancer that cannot serve would be restarted by dockerd forever.
        let _ = self.remove_container().await;
        Err(TargetError::refused(
            format!("start the load balancer {name} on {}", self.settings.listen),
            why,
        ))
    }

    async fn wait_answering(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.answers().await {
                return true;
            }
            let running = matches!(self.state().await, Ok(Some(ref s)) if s == "running" || s == "restarting" || s == "created");
            if !running || tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Why the container does not serve, from what HAProxy said last; a listen address in
    /// use names the load balancer of another installation that holds it, if one does.
    async fn why_not_serving(&self) -> String {
        let logs = self.last_log_lines(10).await;
        if !logs.contains("cannot bind socket") {
            return format!("HAProxy did not start: {}", logs.trim());
        }
        let listen = self.settings.listen;
        let options = ListContainersOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LISTEN_LABEL}={listen}")],
            )])),
            ..Default::default()
        };
        let holders = self.docker.list_containers(Some(options)).await;
        let other = holders.ok().into_iter().flatten().find(|c| {
            c.names.as_ref().is_some_and(|n| {
                !n.iter()
                    .any(|n| n.trim_start_matches('/') == self.settings.container)
            })
        });
        match other {
            Some(container) => {
                let name = container.names.unwrap_or_default().join(",");
                let owner = container
                    .labels
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(k, _)| k.ends_with("server"))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                format!(
                    "{listen} is in use by load balancer {} of another Slipway installation ({owner})",
                    name.trim_start_matches('/')
                )
            }
            None => format!("{listen} is in use by another process: {}", logs.trim()),
        }
    }

    async fn last_log_lines(&self, lines: usize) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut logs = self.docker.logs(&self.settings.container, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        text
    }

    async fn remove_container(&self) -> Result<(), TargetError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_container(&self.settings.container, Some(options))
            .await
        {
            Err(error) if status(&error) != Some(404) => Err(TargetError::platform(
                format!("remove container {}", self.settings.container),
                error,
            )),
            _ => Ok(()),
        }
    }
}
