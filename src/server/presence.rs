//! This server's place among the installation's servers: registered at start under the
//! store's owner id, heartbeating every [`HEARTBEAT_EVERY`] on the database's clock, recorded
//! as stopped on a graceful stop. At start, servers recorded in this process space (this
//! host's pid namespace) whose process is gone are recorded as stopped, so a restarted server
//! takes over its predecessor's work at once instead of waiting for its heartbeat to age.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::servers::ServerIdentity;
use crate::store::Store;

/// How often a server heartbeats; well inside [`crate::store::servers::SERVER_TTL_SECONDS`].
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);

/// This host's name, as the servers table records it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Where this process's pid means something: the kernel's boot id and the pid namespace
/// (containers on one host may share its name, never a pid namespace). Empty when unknown,
/// which no other server's gone process is judged by.
fn process_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let namespace = std::fs::read_link("/proc/self/ns/pid");
    match (boot, namespace) {
        (Ok(boot), Ok(namespace)) => format!("{} {}", boot.trim(), namespace.display()),
        _ => String::new(),
    }
}

/// Whether a process with this id runs in this process space.
fn process_runs(pid: i32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    pid > 0 && !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Records this server, after recording as stopped the servers of its process space (this
/// host, or this container) whose process is gone.
pub async fn register(store: &Store, listen: SocketAddr) -> anyhow::Result<()> {
    let space = process_space();
    if !space.is_empty() {
        let gone = store.stop_gone_servers(&space, process_runs).await?;
        if !gone.is_empty() {
            tracing::warn!(servers = ?gone, "recorded servers of this host whose process is gone as stopped");
        }
    }
    store
        .register_server(&ServerIdentity {
            host: host_name(),
            process_space: space,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listen: listen.to_string(),
        })
        .await?;
    Ok(())
}

/// Heartbeats until `stop` is cancelled. A server another one recorded as stopped must not go
/// on working beside whoever took its work over: it cancels `stop`, which shuts it down.
pub async fn heartbeat(store: Store, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {},
            _ = stop.cancelled() => return,
        }
        match store.heartbeat_server().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    server = %store.owner(),
                    "another server recorded this one as stopped; shutting down"
                );
                stop.cancel();
                return;
            }
            Err(error) => tracing::warn!(%error, "server heartbeat failed"),
        }
    }
}
