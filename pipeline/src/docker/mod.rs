//! [`DockerEngine`]: the [`Engine`] over dockerd's API through bollard.

mod archive;
mod convert;
mod export;
mod lines;
mod pull;

pub use pull::{ImageReference, Mirror, Registries, RegistryLogin, DOCKER_HUB, MAX_PROGRESS_LINES};

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, DownloadFromContainerOptions,
    InspectContainerOptions, LogsOptions, RemoveContainerOptions, RemoveVolumeOptions,
    UploadToContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::{StreamExt, TryStreamExt};

use crate::engine::{
    ContainerConfig, Engine, EngineError, Gate, Labels, Leftovers, OutputChunk, OutputLine,
    OutputStream, PathsExport, PullProgress, Staged, VolumeMount,
};
use crate::spec::PullPolicy;

use lines::LineSplitter;

/// The image of the stopped helper container that receives the workspace archive, and of
/// the lanes, which run its `sleep`; this one exists wherever Slipway was bootstrapped.
pub const DEFAULT_HELPER_IMAGE: &str = "slipway/debian:bookworm";

/// A container engine backed by dockerd.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    helper_image: String,
    registries: Arc<Registries>,
}

impl DockerEngine {
    /// Connects to `docker_host` (`unix:///path` or `tcp://host:port`), or when `None` to
    /// `DOCKER_HOST` or the local socket, and negotiates the API version with the daemon.
    pub async fn connect(docker_host: Option<&str>) -> Result<DockerEngine, EngineError> {
        let docker = match docker_host {
            None => Docker::connect_with_defaults(),
            Some(host) if host.starts_with("unix://") => {
                Docker::connect_with_unix(host, 120, bollard::API_DEFAULT_VERSION)
            }
            Some(host) => Docker::connect_with_http(host, 120, bollard::API_DEFAULT_VERSION),
        }
        .map_err(|e| EngineError::failed("connect", e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| EngineError::failed("negotiate API version", e))?;
        Ok(DockerEngine::with_client(docker))
    }

    /// An engine over a client the caller made and shares (a server has one per dockerd);
    /// nothing is contacted here, and the caller negotiates the API version.
    pub fn with_client(docker: Docker) -> DockerEngine {
        DockerEngine {
            docker,
            helper_image: DEFAULT_HELPER_IMAGE.to_owned(),
            registries: Arc::default(),
        }
    }

    /// The builds (their [`crate::plan::BUILD_LABEL`] values) that left a container, network
    /// or volume labelled `label` in dockerd: what [`crate::reap`] by build would remove.
    pub async fn builds_labelled(
        &self,
        label: &str,
    ) -> Result<std::collections::BTreeSet<String>, EngineError> {
        let build_of = |labels: Option<std::collections::HashMap<String, String>>| {
            labels.and_then(|mut labels| labels.remove(crate::plan::BUILD_LABEL))
        };
        let (containers, networks, volumes) = self.labelled(label).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| build_of(c.labels))
            .chain(networks.into_iter().filter_map(|n| build_of(n.labels)))
            .chain(volumes.into_iter().filter_map(|v| build_of(Some(v.labels))))
            .collect())
    }

    /// The containers (stopped ones too), networks and volumes labelled `label`.
    async fn labelled(
        &self,
        label: &str,
    ) -> Result<
        (
            Vec<bollard::models::ContainerSummary>,
            Vec<bollard::models::Network>,
            Vec<bollard::models::Volume>,
        ),
        EngineError,
    > {
        let operation = format!("list objects labelled {label}");
        let containers = self
            .docker
            .list_containers(Some(convert::list_containers_options(label)))
            .await
            .map_err(|e| failed(&operation, e))?;
        let networks = self
            .docker
            .list_networks(Some(convert::list_networks_options(label)))
            .await
            .map_err(|e| failed(&operation, e))?;
        let volumes = self
            .docker
            .list_volumes(Some(convert::list_volumes_options(label)))
            .await
            .map_err(|e| failed(&operation, e))?;
        Ok((containers, networks, volumes.volumes.unwrap_or_default()))
    }

    /// Pulls through `registries`' mirror and with its logins (a project's, for one build);
    /// without it, images come from their registries anonymously.
    pub fn with_registries(mut self, registries: Registries) -> DockerEngine {
        self.registries = Arc::new(registries);
        self
    }

    /// Uses another local image for the workspace copy helper.
    pub fn with_helper_image(mut self, image: impl Into<String>) -> DockerEngine {
        self.helper_image = image.into();
        self
    }

    async fn create(&self, config: &ContainerConfig) -> Result<(), EngineError> {
        self.create_with(config, convert::container_body(config))
            .await
    }

    async fn create_with(
        &self,
        config: &ContainerConfig,
        body: ContainerCreateBody,
    ) -> Result<(), EngineError> {
        let options = CreateContainerOptions {
            name: Some(config.name.clone()),
            ..Default::default()
        };
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => Ok(()),
            Err(error) if status(&error) == Some(404) => Err(EngineError::ImageMissing {
                image: config.image.clone(),
            }),
            Err(error) => Err(failed(&format!("create container {}", config.name), error)),
        }
    }

    /// Starts a created container; one that cannot start is removed.
    async fn start(&self, container: &str) -> Result<(), EngineError> {
        let started = self
            .docker
            .start_container(
                container,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await;
        if let Err(error) = started {
            self.remove_container(container).await?;
            return Err(failed(&format!("start container {container}"), error));
        }
        Ok(())
    }
}

/// The gate of a container started with [`convert::gated`]: its shell waits for a line on
/// stdin, which only this writes.
struct StdinGate {
    container: String,
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

#[async_trait::async_trait]
impl Gate for StdinGate {
    async fn open(mut self: Box<Self>) -> Result<(), EngineError> {
        use tokio::io::AsyncWriteExt;
        let operation = format!("start the command of {}", self.container);
        self.input
            .write_all(convert::GATE_OPEN)
            .await
            .map_err(|e| EngineError::failed(&operation, e))?;
        self.input
            .flush()
            .await
            .map_err(|e| EngineError::failed(&operation, e))
    }
}

/// The gate of a container that was only created: opening it starts the container.
struct StartGate<'e> {
    engine: &'e DockerEngine,
    container: String,
}

#[async_trait::async_trait]
impl Gate for StartGate<'_> {
    async fn open(self: Box<Self>) -> Result<(), EngineError> {
        self.engine.start(&self.container).await
    }
}

fn status(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn failed(operation: &str, error: DockerError) -> EngineError {
    EngineError::failed(operation, error)
}

/// Removal of something already gone is success: teardown must be idempotent.
fn absent_is_ok(operation: &str, result: Result<(), DockerError>) -> Result<(), EngineError> {
    match result {
        Err(error) if status(&error) != Some(404) => Err(failed(operation, error)),
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl Engine for DockerEngine {
    async fn create_network(&self, name: &str, labels: &Labels) -> Result<(), EngineError> {
        self.docker
            .create_network(convert::network_request(name, labels))
            .await
            .map(drop)
            .map_err(|e| failed(&format!("create network {name}"), e))
    }

    async fn start_lane(
        &self,
        name: &str,
        network: &str,
        labels: &Labels,
    ) -> Result<(), EngineError> {
        let lane = ContainerConfig {
            name: name.to_owned(),
            image: self.helper_image.clone(),
            env: Default::default(),
            entrypoint: None,
            cmd: None,
            workdir: None,
            network: None,
            mount: None,
            labels: labels.clone(),
        };
        let body = convert::lane_body(&self.helper_image, network, labels);
        self.create_with(&lane, body).await?;
        self.start(name).await
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<(), EngineError> {
        self.docker
            .create_volume(convert::volume_request(name, labels))
            .await
            .map(drop)
            .map_err(|e| failed(&format!("create volume {name}"), e))
    }

    async fn copy_into_volume(
        &self,
        volume: &str,
        source: &Path,
        labels: &Labels,
    ) -> Result<(), EngineError> {
        let operation = format!("copy {} into volume {volume}", source.display());
        let helper = ContainerConfig {
            name: format!("{volume}-copy"),
            ..volume_helper(&self.helper_image, volume, labels)
        };
        self.create(&helper).await?;
        let options = UploadToContainerOptions {
            path: "/workspace".to_owned(),
            ..Default::default()
        };
        // Streamed: the archive is made while dockerd reads it, never held whole in memory.
        let archive = archive::tar_stream(source.to_owned());
        let uploaded = self
            .docker
            .upload_to_container(
                &helper.name,
                Some(options),
                bollard::body_try_stream(archive),
            )
            .await
            .map_err(|e| failed(&operation, e));
        let removed = self.remove_container(&helper.name).await;
        uploaded.and(removed)
    }

    async fn export_volume(
        &self,
        volume: &str,
        dest: &Path,
        limit_bytes: u64,
        labels: &Labels,
    ) -> Result<u64, EngineError> {
        let operation = format!("export volume {volume}");
        let helper = ContainerConfig {
            name: format!("{volume}-export"),
            ..volume_helper(&self.helper_image, volume, labels)
        };
        self.create(&helper).await?;
        // `/workspace/.` makes dockerd send the volume's contents as `./...`, without the
        // mount point's own name.
        let options = DownloadFromContainerOptions {
            path: "/workspace/.".to_owned(),
        };
        let archive = self
            .docker
            .download_from_container(&helper.name, Some(options));
        let exported =
            export::unpack_stream(archive, dest, limit_bytes, "for packaging", &operation).await;
        let removed = self.remove_container(&helper.name).await;
        let size = exported?;
        removed?;
        Ok(size)
    }

    async fn export_paths(
        &self,
        volume: &str,
        paths: &[String],
        dest: &Path,
        limit_bytes: u64,
        labels: &Labels,
    ) -> Result<PathsExport, EngineError> {
        let helper = ContainerConfig {
            name: format!("{volume}-export-paths"),
            ..volume_helper(&self.helper_image, volume, labels)
        };
        self.create(&helper).await?;
        let exported = self
            .download_paths(&helper.name, paths, dest, limit_bytes)
            .await;
        let removed = self.remove_container(&helper.name).await;
        let exported = exported?;
        removed?;
        Ok(exported)
    }

    fn pull_image(&self, image: &str, policy: PullPolicy) -> PullProgress {
        pull::pull_image(self.docker.clone(), self.registries.clone(), image, policy)
    }

    async fn start_container(&self, config: &ContainerConfig) -> Result<(), EngineError> {
        self.create(config).await?;
        self.start(&config.name).await
    }

    async fn stage(&self, config: &ContainerConfig) -> Result<Staged<'_>, EngineError> {
        // Held back by a shell gate when the command is known (a step's always is): the
        // container then starts now, while earlier steps run, and its command begins the
        // moment the gate opens. Without an entrypoint the image's own would be lost, so such
        // a container is only created and started at the gate.
        let gated = config.entrypoint.is_some();
        let body = convert::without_log(convert::container_body(config));
        let body = if gated { convert::gated(body) } else { body };
        self.create_with(config, body).await?;
        let options = AttachContainerOptions {
            stream: true,
            stdin: gated,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = self
            .docker
            .attach_container(&config.name, Some(options))
            .await;
        let attached = match attached {
            Ok(attached) => attached,
            Err(error) => {
                self.remove_container(&config.name).await?;
                return Err(failed(&format!("attach to {}", config.name), error));
            }
        };
        let operation = format!("read output of {}", config.name);
        let chunks = attached.output.filter_map(move |frame| {
            let chunk = match frame {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Some(Ok(OutputChunk {
                        stream: OutputStream::Stdout,
                        bytes: message,
                    }))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(OutputChunk {
                    stream: OutputStream::Stderr,
                    bytes: message,
                })),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(error) => Some(Err(EngineError::failed(&operation, error))),
            };
            futures::future::ready(chunk)
        });
        let gate: Box<dyn Gate> = if gated {
            self.start(&config.name).await?;
            Box::new(StdinGate {
                container: config.name.clone(),
                input: attached.input,
            })
        } else {
            Box::new(StartGate {
                engine: self,
                container: config.name.clone(),
            })
        };
        Ok(Staged {
            output: chunks.boxed(),
            gate,
        })
    }

    async fn recent_output(
        &self,
        container: &str,
        lines: usize,
    ) -> Result<Vec<OutputLine>, EngineError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let frames: Vec<LogOutput> = self
            .docker
            .logs(container, Some(options))
            .try_collect()
            .await
            .map_err(|e| failed(&format!("read output of {container}"), e))?;
        let mut splitter = LineSplitter::default();
        let mut output: Vec<OutputLine> = frames
            .into_iter()
            .flat_map(|frame| split_frame(&mut splitter, frame))
            .collect();
        output.extend(splitter.finish());
        Ok(output)
    }

    async fn wait_exit(&self, container: &str) -> Result<i64, EngineError> {
        let options = WaitContainerOptions {
            condition: "not-running".to_owned(),
        };
        let mut waits = self.docker.wait_container(container, Some(options));
        match waits.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(error)) => Err(failed(&format!("wait for {container}"), error)),
            None => Err(EngineError::failed(
                format!("wait for {container}"),
                "the engine closed the wait without an exit code",
            )),
        }
    }

    async fn exec(&self, container: &str, command: &[String]) -> Result<i64, EngineError> {
        let operation = format!("exec in {container}");
        let options = CreateExecOptions {
            cmd: Some(command.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(container, options)
            .await
            .map_err(|e| failed(&operation, e))?;
        let started = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| failed(&operation, e))?;
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(frame) = output.next().await {
                frame.map_err(|e| failed(&operation, e))?;
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| failed(&operation, e))?;
        inspected
            .exit_code
            .ok_or_else(|| EngineError::failed(&operation, "the command reported no exit code"))
    }

    async fn tcp_ready(
        &self,
        container: &str,
        network: &str,
        port: u16,
    ) -> Result<bool, EngineError> {
        let operation = format!("inspect {container}");
        let inspected = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .map_err(|e| failed(&operation, e))?;
        let state = inspected.state.unwrap_or_default();
        if state.running != Some(true) {
            let code = state.exit_code.unwrap_or_default();
            return Err(EngineError::failed(
                operation,
                format!("the container is not running (exit code {code})"),
            ));
        }
        let address = inspected
            .network_settings
            .and_then(|settings| settings.networks)
            .and_then(|mut networks| networks.remove(network))
            .and_then(|endpoint| endpoint.ip_address)
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let Some(ip) = address else {
            return Ok(false);
        };
        let connect = tokio::net::TcpStream::connect(SocketAddr::new(ip, port));
        Ok(matches!(
            tokio::time::timeout(Duration::from_secs(1), connect).await,
            Ok(Ok(_))
        ))
    }

    async fn remove_container(&self, container: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let removed = self.docker.remove_container(container, Some(options)).await;
        absent_is_ok(&format!("remove container {container}"), removed)
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        let removed = self.docker.remove_network(name).await;
        absent_is_ok(&format!("remove network {name}"), removed)
    }

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let removed = self
            .docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
            .await;
        absent_is_ok(&format!("remove volume {name}"), removed)
    }

    async fn list_labelled(&self, label: &str) -> Result<Leftovers, EngineError> {
        let (containers, networks, volumes) = self.labelled(label).await?;
        Ok(Leftovers {
            containers: containers.into_iter().filter_map(|c| c.id).collect(),
            networks: networks.into_iter().filter_map(|n| n.name).collect(),
            volumes: volumes.into_iter().map(|v| v.name).collect(),
        })
    }
}

impl DockerEngine {
    /// Downloads each of `paths` from the helper container's `/workspace` into its parent's
    /// place under `dest`; what dockerd answers 404 for is missing.
    async fn download_paths(
        &self,
        helper: &str,
        paths: &[String],
        dest: &Path,
        limit_bytes: u64,
    ) -> Result<PathsExport, EngineError> {
        let mut exported = PathsExport::default();
        for path in paths {
            let operation = format!("export `{path}` from the workspace");
            let options = DownloadFromContainerOptions {
                path: format!("/workspace/{path}"),
            };
            let mut archive = Box::pin(
                self.docker
                    .download_from_container(helper, Some(options))
                    .peekable(),
            );
            if let Some(Err(error)) = archive.as_mut().peek().await {
                if status(error) == Some(404) {
                    exported.missing.push(path.clone());
                    continue;
                }
            }
            // dockerd names the entries from the path's last component.
            let parent = match Path::new(path).parent() {
                Some(parent) => dest.join(parent),
                None => dest.to_path_buf(),
            };
            std::fs::create_dir_all(&parent).map_err(|e| EngineError::failed(&operation, e))?;
            let room = limit_bytes.saturating_sub(exported.bytes);
            exported.bytes +=
                export::unpack_stream(archive, &parent, room, "for the cache", &operation).await?;
        }
        Ok(exported)
    }
}

/// A container that is never started, with `volume` at `/workspace`: dockerd's archive API
/// reads and writes the volume through it.
fn volume_helper(image: &str, volume: &str, labels: &Labels) -> ContainerConfig {
    ContainerConfig {
        name: String::new(),
        image: image.to_owned(),
        env: Default::default(),
        entrypoint: None,
        cmd: Some(vec!["true".to_owned()]),
        workdir: None,
        network: None,
        mount: Some(VolumeMount {
            volume: volume.to_owned(),
            target: "/workspace".to_owned(),
        }),
        labels: labels.clone(),
    }
}

fn split_frame(splitter: &mut LineSplitter, frame: LogOutput) -> Vec<OutputLine> {
    match frame {
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            splitter.push(OutputStream::Stdout, &message)
        }
        LogOutput::StdErr { message } => splitter.push(OutputStream::Stderr, &message),
        LogOutput::StdIn { .. } => Vec::new(),
    }
}
