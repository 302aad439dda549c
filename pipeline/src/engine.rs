//! The container engine seam: what the runtime asks of Docker (or of a fake in tests).

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::spec::PullPolicy;

/// Labels put on every object a build creates.
pub type Labels = BTreeMap<String, String>;

/// A container to create and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The container's name, unique per build; every other call refers to it by this name.
    pub name: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command when set.
    pub cmd: Option<Vec<String>>,
    pub workdir: Option<String>,
    /// The network to join; `None` leaves the container without a network.
    pub network: Option<NetworkAttachment>,
    pub mount: Option<VolumeMount>,
    pub labels: Labels,
}

/// A network a container joins, and the host name other containers on it use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAttachment {
    pub network: String,
    pub alias: String,
    /// A lane (see [`Engine::start_lane`]) whose network namespace the container shares
    /// instead of getting its own: it is on `network` at the lane's address, and `alias` is
    /// not registered.
    pub lane: Option<String>,
}

/// A named volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub volume: String,
    pub target: String,
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One line of a container's output, without its trailing newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub stream: OutputStream,
    pub text: String,
}

/// A line longer than this is cut into pieces, so one endless line cannot fill memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Raw bytes of one output stream as the engine delivered them: not aligned to line ends,
/// and not necessarily UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub bytes: Bytes,
}

/// A container's output, frame by frame, ending when the container stops.
pub type OutputChunks = BoxStream<'static, Result<OutputChunk, EngineError>>;

/// Progress of making an image present: one line per change worth showing, ending when the
/// image is present; an error ends it.
pub type PullProgress = BoxStream<'static, Result<String, EngineError>>;

/// What [`Engine::export_paths`] copied out of a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathsExport {
    /// The size of the archives the paths came as.
    pub bytes: u64,
    /// The paths the volume does not hold.
    pub missing: Vec<String>,
}

/// Objects carrying a label, found by [`Engine::list_labelled`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
}

/// Errors of the engine, grouped by what the caller does about them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The user names an image that is not on this machine and was not pulled (`pull: never`).
    #[error("image `{image}` is not present on the container engine (with `pull: never` it is never pulled: build, load or pull it on this machine first)")]
    ImageMissing { image: String },
    /// The registry refused the pull, or could not be reached.
    #[error("cannot pull image `{image}` from registry `{registry}`: {reason}")]
    PullFailed {
        image: String,
        registry: String,
        reason: String,
    },
    /// The engine could not be reached or refused an operation.
    #[error("container engine: {operation}: {message}")]
    Failed { operation: String, message: String },
}

impl EngineError {
    pub fn failed(operation: impl Into<String>, message: impl ToString) -> EngineError {
        EngineError::Failed {
            operation: operation.into(),
            message: message.to_string(),
        }
    }
}

/// A step's container made ready by [`Engine::stage`]: its output, and the gate that lets
/// its command run.
pub struct Staged<'e> {
    pub output: OutputChunks,
    pub gate: Box<dyn Gate + 'e>,
}

/// Holds a staged container's command back until opened.
#[async_trait::async_trait]
pub trait Gate: Send {
    /// Lets the command run.
    async fn open(self: Box<Self>) -> Result<(), EngineError>;
}

/// A container engine, as the runtime drives it for one build.
///
/// Lifecycle, in call order for one build:
/// 1. `create_network` and `create_volume` (setup, concurrently). Both carry the build's labels.
/// 2. `pull_image` then `start_container` for each service; `tcp_ready` / `exec` probe them,
///    repeatedly, until ready; `recent_output` may be read to explain a service that never got
///    ready.
/// 3. `copy_into_volume` once, before any step starts (while the services start), and
///    `start_lane` for the first lane; more lanes when steps run at once.
/// 4. For each step, once the steps it depends on are done (independent steps at the same
///    time): `pull_image`, `stage` (possibly earlier, while other steps run: a container
///    staged ahead is removed, its command never run, if its step does not run), opening its
///    gate, then reading its output and `wait_exit` (concurrently for the same container), then
///    `remove_container`: once it has exited (while later steps run), or to kill a step that
///    ran out of time, was cancelled, or was detached and outlived the other steps.
/// 5. `export_volume` at most once, after the last step, when the build passed and its
///    workspace is to be packaged; `export_paths` at most once, after the last step, when the
///    build passed and its cache is to be saved.
/// 6. Teardown: `remove_container` for every container of the plan and every lane
///    (concurrently), then
///    `remove_network` and `remove_volume` (concurrently).
///
/// Containers of one build run concurrently (services next to steps); different builds use
/// different names and may call the same engine concurrently, so implementations hold no
/// per-build state.
///
/// Duties: teardown is idempotent and safe after a failed or partial setup; removing an
/// object that does not exist succeeds. Only `pull_image` pulls: starting a container whose
/// image is absent is an error. Everything created carries the labels given, so
/// `list_labelled` finds what a crashed server left behind.
#[async_trait::async_trait]
pub trait Engine: Send + Sync {
    /// Creates a bridge network on which containers reach each other by alias.
    async fn create_network(&self, name: &str, labels: &Labels) -> Result<(), EngineError>;

    /// Starts a lane: a container holding a network namespace on `network` and running
    /// nothing else, which step containers share (`NetworkAttachment::lane`) one after
    /// another; joining one is much cheaper than connecting a container of its own. Removed
    /// with `remove_container`.
    async fn start_lane(
        &self,
        name: &str,
        network: &str,
        labels: &Labels,
    ) -> Result<(), EngineError>;

    /// Creates an empty named volume.
    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<(), EngineError>;

    /// Copies the contents of the host directory `source` to the root of `volume`.
    async fn copy_into_volume(
        &self,
        volume: &str,
        source: &Path,
        labels: &Labels,
    ) -> Result<(), EngineError>;

    /// Copies the contents of `volume` into the existing empty host directory `dest`, streamed
    /// (never held whole in memory), and returns the size of the archive it came as. An
    /// archive over `limit_bytes` is an error naming the limit; entries never land outside
    /// `dest`.
    async fn export_volume(
        &self,
        volume: &str,
        dest: &Path,
        limit_bytes: u64,
        labels: &Labels,
    ) -> Result<u64, EngineError>;

    /// Copies each of `paths` (relative to the volume's root) out of `volume` to the same
    /// place under the existing host directory `dest`, streamed like `export_volume`. A path
    /// the volume does not hold is left out and returned. Archives over `limit_bytes` in
    /// all are an error naming the limit; entries never land outside `dest`.
    async fn export_paths(
        &self,
        volume: &str,
        paths: &[String],
        dest: &Path,
        limit_bytes: u64,
        labels: &Labels,
    ) -> Result<PathsExport, EngineError>;

    /// Makes `image` present as `policy` says, pulling it when needed; the progress stream must
    /// be read to its end before a container of the image starts. With `never`, an absent image
    /// is [`EngineError::ImageMissing`]; a failed pull is [`EngineError::PullFailed`], naming
    /// the image and the registry. This default, for engines without registries, pulls nothing.
    fn pull_image(&self, _image: &str, _policy: PullPolicy) -> PullProgress {
        Box::pin(futures::stream::empty())
    }

    /// Creates and starts a container; the image must already be present.
    async fn start_container(&self, config: &ContainerConfig) -> Result<(), EngineError>;

    /// Makes a step's container ready to run its command, ahead of the step's turn: created,
    /// attached to its stdout and stderr (so not a byte is missed), and, where the engine
    /// can hold the command back, already started with the command waiting at a gate. The
    /// command runs once `gate.open()` is called, never before; a container whose gate is
    /// dropped unopened never runs its command. The stream ends when the container stops or
    /// is removed. The output goes to this stream only (the engine keeps no log of it): a
    /// container waits while the stream is read slowly, and once the stream is dropped the
    /// rest of its output is discarded at once.
    async fn stage(&self, config: &ContainerConfig) -> Result<Staged<'_>, EngineError>;

    /// The last `lines` lines the container wrote.
    async fn recent_output(
        &self,
        container: &str,
        lines: usize,
    ) -> Result<Vec<OutputLine>, EngineError>;

    /// Waits until the container stops and returns its exit code.
    async fn wait_exit(&self, container: &str) -> Result<i64, EngineError>;

    /// Runs `command` inside the running container and returns its exit code.
    async fn exec(&self, container: &str, command: &[String]) -> Result<i64, EngineError>;

    /// Whether the container accepts a TCP connection on `port` at its address on `network`.
    /// A container that has stopped is an error, not "not yet".
    async fn tcp_ready(
        &self,
        container: &str,
        network: &str,
        port: u16,
    ) -> Result<bool, EngineError>;

    /// Kills (if running) and removes the container and its anonymous volumes.
    async fn remove_container(&self, container: &str) -> Result<(), EngineError>;

    async fn remove_network(&self, name: &str) -> Result<(), EngineError>;

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError>;

    /// Containers (running or not), networks and volumes carrying `label` (`key=value`).
    async fn list_labelled(&self, label: &str) -> Result<Leftovers, EngineError>;
}
