//! How Slipway reaches a load balancer's files and runtime API: on this host, or through
//! dockerd's API alone.
//!
//! - [`Access::Local`] (a `unix://` docker host, which shares this host's filesystem): the
//!   files are in a directory bind-mounted into the container, read and written in place, and
//!   the runtime API is the Unix socket in it. The directory is the one the running container
//!   mounts, so another server of the installation on the host drives it too.
//! - [`Access::Remote`] (a `tcp://` docker host, which any server may drive): the files are in
//!   a Docker volume named after the container, written and read with the archive API (which
//!   reaches a stopped container's too), and each runtime command is an exec of `socat` in the
//!   container, connecting to the socket there.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{Mount, MountTypeEnum};
use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::config::MOUNT;
use super::runtime::{self, Runtime};
use crate::docker::status;
use crate::error::TargetError;

/// The runtime API's socket in the load balancer's directory.
pub const SOCKET: &str = "admin.sock";
/// At most this much of a file or a runtime answer is read through the Docker API.
const MAX_READ: u64 = 64 << 20;
/// How long one runtime command through an exec may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

/// One file of the load balancer's, as written.
pub struct File<'a> {
    pub name: &'a str,
    pub content: &'a str,
}

pub enum Access {
    Local(RwLock<PathBuf>),
    Remote,
}

impl Access {
    /// The directory on this host, when there is one.
    pub fn dir(&self) -> Option<PathBuf> {
        match self {
            Access::Local(dir) => Some(dir.read().unwrap_or_else(|p| p.into_inner()).clone()),
            Access::Remote => None,
        }
    }

    /// Follows the directory a running container mounts (see the module's documentation).
    pub fn follow(&self, container: &str, mounted: Option<PathBuf>) {
        let (Access::Local(dir), Some(mounted)) = (self, mounted) else {
            return;
        };
        let mut dir = dir.write().unwrap_or_else(|p| p.into_inner());
        if *dir != mounted {
            tracing::info!(%container, dir = %mounted.display(), "driving the load balancer through the directory it mounts");
            *dir = mounted;
        }
    }

    /// How the container mounts its files: the directory, or the volume named after it.
    pub fn mount(&self, container: &str) -> Mount {
        match self.dir() {
            Some(dir) => Mount {
                typ: Some(MountTypeEnum::BIND),
                source: Some(dir.display().to_string()),
                target: Some(MOUNT.to_owned()),
                ..Default::default()
            },
            None => Mount {
                typ: Some(MountTypeEnum::VOLUME),
                source: Some(container.to_owned()),
                target: Some(MOUNT.to_owned()),
                ..Default::default()
            },
        }
    }

    /// The uid HAProxy gives its socket: the directory's owner here (Slipway's user; the
    /// directory is made when missing), root in a volume (only execs in the container reach it).
    pub fn socket_uid(&self) -> Result<u32, TargetError> {
        use std::os::unix::fs::MetadataExt;
        match self.dir() {
            Some(dir) => Ok(create_private_dir(&dir)
                .and_then(|()| {
                    std::fs::metadata(&dir)
                        .map_err(|e| TargetError::platform(format!("read {}", dir.display()), e))
                })?
                .uid()),
            None => Ok(0),
        }
    }

    /// Sends one runtime command and returns its answer.
    pub async fn query(
        &self,
        docker: &Docker,
        container: &str,
        command: &str,
    ) -> Result<String, TargetError> {
        match self.dir() {
            Some(dir) => Runtime::new(&dir.join(SOCKET)).query(command).await,
            None => exec_query(docker, container, command).await,
        }
    }

    /// Whether the runtime API answers at all.
    pub async fn answers(&self, docker: &Docker, container: &str) -> bool {
        self.query(docker, container, "show info").await.is_ok()
    }

    /// The content of file `name`, `None` when there is none (or no container to read).
    pub async fn read(
        &self,
        docker: &Docker,
        container: &str,
        name: &str,
    ) -> Result<Option<String>, TargetError> {
        match self.dir() {
            Some(dir) => match std::fs::read_to_string(dir.join(name)) {
                Ok(text) => Ok(Some(text)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(TargetError::platform(
                    format!("read {}", dir.join(name).display()),
                    error,
                )),
            },
            None => download(docker, container, name).await,
        }
    }

    /// Writes `files` where they differ from what is there, and removes `gone`; returns
    /// whether anything changed. Here each file is replaced through a new file renamed over
    /// it (mode 0600); through dockerd, the changed ones go in one archive.
    pub async fn write(
        &self,
        docker: &Docker,
        container: &str,
        files: &[File<'_>],
        gone: &[&str],
    ) -> Result<bool, TargetError> {
        let mut changed = Vec::new();
        for file in files {
            let current = self.read(docker, container, file.name).await?;
            if current.as_deref() != Some(file.content) {
                changed.push(file);
            }
        }
        match self.dir() {
            Some(dir) => {
                create_private_dir(&dir)?;
                for file in &changed {
                    write_private(&dir.join(file.name), file.content)?;
                }
                let mut removed = false;
                for name in gone {
                    removed |= std::fs::remove_file(dir.join(name)).is_ok();
                }
                Ok(!changed.is_empty() || removed)
            }
            None => {
                if !changed.is_empty() {
                    upload(docker, container, &changed).await?;
                }
                let mut removed = false;
                for name in gone {
                    if self.read(docker, container, name).await?.is_some() {
                        exec(
                            docker,
                            container,
                            &["rm", "-f", &format!("{MOUNT}/{name}")],
                            None,
                        )
                        .await?;
                        removed = true;
                    }
                }
                Ok(!changed.is_empty() || removed)
            }
        }
    }

    /// Removes a socket a stopped load balancer left, before it starts again.
    pub fn clear_socket(&self) {
        if let Some(dir) = self.dir() {
            let _ = std::fs::remove_file(dir.join(SOCKET));
        }
    }

    /// Once `log` passed `limit` bytes: its content moves to `rotated` (replacing the older
    /// one) and it starts empty again (HAProxy appends to the same file). Returns whether it
    /// rotated.
    pub async fn rotate(
        &self,
        docker: &Docker,
        container: &str,
        log: &str,
        rotated: &str,
        limit: u64,
    ) -> Result<bool, TargetError> {
        match self.dir() {
            Some(dir) => {
                let path = dir.join(log);
                let size = match std::fs::metadata(&path) {
                    Ok(metadata) => metadata.len(),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(error) => {
                        return Err(TargetError::platform(
                            format!("read {}", path.display()),
                            error,
                        ))
                    }
                };
                if size <= limit {
                    return Ok(false);
                }
                let error = |e| TargetError::platform(format!("rotate {}", path.display()), e);
                std::fs::copy(&path, dir.join(rotated)).map_err(error)?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(error)?;
                Ok(true)
            }
            None => {
                // One shell in the container: the size test and the copy see the same file.
                let script = format!(
                    "f={MOUNT}/{log}; [ -f \"$f\" ] && [ \"$(stat -c %s \"$f\")\" -gt {limit} ] \
                     && cp \"$f\" {MOUNT}/{rotated} && : >\"$f\" && echo rotated || true"
                );
                let answer = exec(docker, container, &["sh", "-c", &script], None).await?;
                Ok(answer.trim() == "rotated")
            }
        }
    }
}

/// One runtime command through `socat` in the container.
async fn exec_query(
    docker: &Docker,
    container: &str,
    command: &str,
) -> Result<String, TargetError> {
    let socket = format!("UNIX-CONNECT:{MOUNT}/{SOCKET}");
    let input = format!("{command}\n");
    let answer = exec(
        docker,
        container,
        &["socat", "-t", "5", "-", &socket],
        Some(input.as_bytes()),
    )
    .await?;
    Ok(answer)
}

/// Runs `command` in the container with `input` on its stdin; its output. A command that
/// fails (or a container that is not running) is an error saying so.
async fn exec(
    docker: &Docker,
    container: &str,
    command: &[&str],
    input: Option<&[u8]>,
) -> Result<String, TargetError> {
    let action = runtime::action(&command.join(" "));
    let run = async {
        let options = CreateExecOptions {
            cmd: Some(command.iter().map(|s| s.to_string()).collect()),
            attach_stdin: Some(input.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = docker
            .create_exec(container, options)
            .await
            .map_err(|e| TargetError::platform(action.clone(), e))?;
        let started = docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| TargetError::platform(action.clone(), e))?;
        let mut output = Vec::new();
        if let StartExecResults::Attached {
            output: mut stream,
            input: mut stdin,
        } = started
        {
            if let Some(bytes) = input {
                stdin
                    .write_all(bytes)
                    .await
                    .map_err(|e| TargetError::platform(action.clone(), e))?;
                stdin
                    .shutdown()
                    .await
                    .map_err(|e| TargetError::platform(action.clone(), e))?;
            }
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| TargetError::platform(action.clone(), e))?;
                if (output.len() as u64) < MAX_READ {
                    output.extend_from_slice(&chunk.into_bytes());
                }
            }
        }
        let inspected = docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| TargetError::platform(action.clone(), e))?;
        let text = String::from_utf8_lossy(&output).into_owned();
        match inspected.exit_code {
            Some(0) => Ok(text),
            code => Err(TargetError::refused(
                action.clone(),
                format!("exited with {code:?}: {}", text.trim()),
            )),
        }
    };
    tokio::time::timeout(EXEC_TIMEOUT, run)
        .await
        .map_err(|_| TargetError::refused(action.clone(), "no answer within 10 s"))?
}

/// File `name` of the container's files through the archive API; `None` when it or the
/// container does not exist.
async fn download(
    docker: &Docker,
    container: &str,
    name: &str,
) -> Result<Option<String>, TargetError> {
    let path = format!("{MOUNT}/{name}");
    let options = DownloadFromContainerOptions { path: path.clone() };
    let mut archive = Vec::new();
    let mut stream = docker.download_from_container(container, Some(options));
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                if archive.len() as u64 + bytes.len() as u64 > MAX_READ {
                    return Err(TargetError::refused(
                        format!("read {path} of {container}"),
                        "over 64 MiB",
                    ));
                }
                archive.extend_from_slice(&bytes);
            }
            Err(error) if status(&error) == Some(404) => return Ok(None),
            Err(error) => {
                return Err(TargetError::platform(
                    format!("read {path} of {container}"),
                    error,
                ))
            }
        }
    }
    let mut entries = tar::Archive::new(archive.as_slice());
    let error = |e| TargetError::platform(format!("read {path} of {container}"), e);
    for entry in entries.entries().map_err(error)? {
        let mut entry = entry.map_err(error)?;
        if entry.header().entry_type().is_file() {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(error)?;
            return Ok(Some(text));
        }
    }
    Ok(None)
}

/// `files` into the container's directory through the archive API, mode 0600.
async fn upload(docker: &Docker, container: &str, files: &[&File<'_>]) -> Result<(), TargetError> {
    let action = format!("write the files of {container}");
    let mut archive = tar::Builder::new(Vec::new());
    for file in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.content.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        );
        archive
            .append_data(&mut header, file.name, file.content.as_bytes())
            .map_err(|e| TargetError::platform(action.clone(), e))?;
    }
    let archive = archive
        .into_inner()
        .map_err(|e| TargetError::platform(action.clone(), e))?;
    let options = UploadToContainerOptions {
        path: MOUNT.to_owned(),
        ..Default::default()
    };
    docker
        .upload_to_container(container, Some(options), bollard::body_full(archive.into()))
        .await
        .map_err(|e| TargetError::platform(action, e))
}

fn create_private_dir(dir: &Path) -> Result<(), TargetError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TargetError::platform(format!("create {}", dir.display()), e))
}

/// Replaces `path` with `content` through a new file renamed over it, mode 0600.
fn write_private(path: &Path, content: &str) -> Result<(), TargetError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |e| TargetError::platform(format!("write {}", path.display()), e);
    let partial = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(error)?;
    file.write_all(content.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&partial, path).map_err(error)
}
