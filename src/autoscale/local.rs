//! The agents' machines as processes of this server (`provider = "local"`): each "instance"
//! is one `slipway agent` started from `[autoscale] command`, named and identified
//! `local-<8 hex of this start>-<n>`, with the token from `token_file` on its environment
//! (never an argument) and its log and work directory under `<data_dir>/autoscale/`.
//!
//! It behaves as a group: the desired capacity is how many it keeps, an agent that exited
//! stays a member until the autoscaler detaches it, detaching decrements the desired
//! capacity, and terminating kills the process. Every process is reaped; when the server
//! stops, each is asked to drain and then to cancel its builds (two SIGTERMs), and killed if
//! it has not exited within [`STOP_WAIT`]. One server of an installation should run it:
//! the agents are its children.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::{Group, Instance, Lifecycle, Provider};
use crate::config::SecretSource;

/// How long a stopping server waits for its agents to tear their builds down.
pub const STOP_WAIT: Duration = Duration::from_secs(20);
/// What every local instance's id starts with.
const ID_PREFIX: &str = "local-";
/// The server's environment variables an agent gets (nothing secret of the server's).
const PASSED_VARIABLES: [&str; 6] = ["PATH", "HOME", "LANG", "TMPDIR", "DOCKER_HOST", "RUST_LOG"];

/// What the local provider starts, and where.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// `slipway agent` and its arguments, but for those each agent gets.
    pub command: Vec<String>,
    /// Holds a token of scope `agent`; read at each start.
    pub token_file: PathBuf,
    /// The server's URL, given to the agents as `SLIPWAY_SERVER`.
    pub server_url: String,
    /// Each agent's `--capacity`.
    pub capacity: u32,
    /// `<data_dir>/autoscale`: a directory per agent, with its log and work directory.
    pub dir: PathBuf,
}

pub struct LocalProvider {
    settings: LocalSettings,
    /// `local-<8 hex>-`: new at each start of the server, so no name of an earlier start's
    /// agents is reused (their rows are forgotten as gone).
    prefix: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    desired: u32,
    started: u64,
    members: BTreeMap<String, Process>,
    /// Taken out of the group, not yet terminated.
    detached: BTreeMap<String, Process>,
}

struct Process {
    child: Child,
    launched_at: DateTime<Utc>,
    protected: bool,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Reaps the process if it exited.
    fn poll(&mut self, id: &str) {
        if self.exited.is_some() {
            return;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(agent = id, %status, "a local agent exited");
                self.exited = Some(status);
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(agent = id, %error, "cannot wait for a local agent"),
        }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let (None, Some(pid)) = (self.exited, self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }
}

impl LocalProvider {
    pub fn new(settings: LocalSettings) -> LocalProvider {
        let start = uuid::Uuid::new_v4().simple().to_string();
        LocalProvider {
            settings,
            prefix: format!("{ID_PREFIX}{}-", &start[..8]),
            state: Mutex::new(State::default()),
        }
    }

    /// Starts agent `id`, its output appended to `<dir>/<id>/agent.log`.
    fn start(&self, id: &str) -> anyhow::Result<Child> {
        let token = SecretSource::File(self.settings.token_file.clone())
            .read()
            .map_err(|e| anyhow!("[autoscale] token_file: {e}"))?;
        let dir = self.settings.dir.join(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        let log_path = dir.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let (program, args) = self
            .settings
            .command
            .split_first()
            .context("[autoscale] command is empty")?;
        let mut command = Command::new(program);
        command
            .args(args)
            .args(["--name", id, "--instance-id", id])
            .args(["--capacity", &self.settings.capacity.to_string()])
            .arg("--work-dir")
            .arg(dir.join("work"))
            .env_clear()
            .envs(
                PASSED_VARIABLES
                    .iter()
                    .filter_map(|key| std::env::var_os(key).map(|value| (key, value))),
            )
            .env("SLIPWAY_SERVER", &self.settings.server_url)
            .env("SLIPWAY_TOKEN", token.expose())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start the local agent {program:?}"))?;
        tracing::info!(agent = id, pid = child.id(), log = %log_path.display(), "started a local agent");
        Ok(child)
    }
}

#[async_trait]
impl Provider for LocalProvider {
    async fn instances(&self) -> anyhow::Result<Group> {
        let mut state = self.state.lock().await;
        let State {
            members, detached, ..
        } = &mut *state;
        for (id, process) in members.iter_mut().chain(detached.iter_mut()) {
            process.poll(id);
        }
        Ok(Group {
            desired: state.desired,
            instances: state
                .members
                .iter()
                .map(|(id, process)| Instance {
                    id: id.clone(),
                    lifecycle: Lifecycle::InService,
                    protected: process.protected,
                    launched_at: process.launched_at,
                })
                .collect(),
        })
    }

    /// Local ids this start does not hold: the agents of an earlier start died with it.
    async fn gone(&self, ids: &[String]) -> anyhow::Result<Vec<String>> {
        let state = self.state.lock().await;
        Ok(ids
            .iter()
            .filter(|id| id.starts_with(ID_PREFIX))
            .filter(|id| !state.members.contains_key(*id) && !state.detached.contains_key(*id))
            .cloned()
            .collect())
    }

    /// Starts agents up to `desired`; when one cannot start, the desired capacity is what
    /// runs, so the next interval asks again.
    async fn set_desired(&self, desired: u32) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        if (desired as usize) < state.members.len() {
            bail!(
                "the local group has {} agents: it shrinks only by detaching them, not to {desired}",
                state.members.len()
            );
        }
        state.desired = desired;
        while state.members.len() < desired as usize {
            state.started += 1;
            let id = format!("{}{}", self.prefix, state.started);
            match self.start(&id) {
                Ok(child) => {
                    state.members.insert(
                        id,
                        Process {
                            child,
                            launched_at: Utc::now(),
                            protected: false,
                            exited: None,
                        },
                    );
                }
                Err(error) => {
                    state.desired = state.members.len() as u32;
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    async fn protect(&self, ids: &[String]) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        for id in ids {
            let process = state
                .members
                .get_mut(id)
                .with_context(|| format!("{id} is not in the local group"))?;
            process.protected = true;
        }
        Ok(())
    }

    async fn detach(&self, id: &str) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        let process = state
            .members
            .remove(id)
            .with_context(|| format!("{id} is not in the local group"))?;
        state.detached.insert(id.to_owned(), process);
        state.desired = state.desired.saturating_sub(1);
        Ok(())
    }

    async fn terminate(&self, id: &str) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        if state.members.contains_key(id) {
            bail!("{id} is in the local group: detach it first");
        }
        let Some(mut process) = state.detached.remove(id) else {
            return Ok(());
        };
        if process.exited.is_none() {
            process
                .child
                .kill()
                .await
                .with_context(|| format!("cannot kill the local agent {id}"))?;
            tracing::info!(agent = id, "killed a local agent");
        }
        Ok(())
    }

    /// Two SIGTERMs (drain, then cancel the running builds, which tear down), a wait of up
    /// to [`STOP_WAIT`], then SIGKILL for any still running; every process reaped.
    async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        let State {
            members, detached, ..
        } = &mut *state;
        let mut processes: Vec<(String, Process)> = std::mem::take(members)
            .into_iter()
            .chain(std::mem::take(detached))
            .collect();
        for (id, process) in &mut processes {
            process.poll(id);
            process.signal(nix::sys::signal::Signal::SIGTERM);
        }
        // The agent takes the second signal only once it follows signals: a moment later.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (_, process) in &processes {
            process.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let waits = processes.iter_mut().map(|(id, process)| async move {
            if process.exited.is_some() {
                return;
            }
            match tokio::time::timeout(STOP_WAIT, process.child.wait()).await {
                Ok(_) => tracing::info!(agent = %id, "a local agent stopped"),
                Err(_) => {
                    tracing::warn!(agent = %id, "a local agent did not stop in time: killed");
                    let _ = process.child.kill().await;
                }
            }
        });
        futures::future::join_all(waits).await;
    }
}
