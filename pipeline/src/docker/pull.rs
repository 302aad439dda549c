//! Images from registries: the pull policies, the logins a project gives, the server's mirror
//! for Docker Hub images, and pull progress cut down to one line per layer state change.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{CreateImageOptions, RemoveImageOptions, TagImageOptions};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::engine::{EngineError, PullProgress};
use crate::spec::PullPolicy;

/// How Docker Hub is named in errors and looked up in [`Registries::logins`].
pub const DOCKER_HUB: &str = "docker.io";

/// Progress lines shown for one pull at most; an image of many layers says the rest is cut.
pub const MAX_PROGRESS_LINES: usize = 300;

/// Where images come from and with which logins; plain values the caller resolved.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    /// Docker Hub images (no registry host in the reference) are pulled from here first.
    pub mirror: Option<Mirror>,
    /// Logins by registry host as written in image references (`registry.acme.test:5000`,
    /// [`DOCKER_HUB`] for Docker Hub).
    pub logins: BTreeMap<String, RegistryLogin>,
}

/// A registry that serves Docker Hub's images (a pull-through cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port]`, as in an image reference.
    pub host: String,
    /// Whether a pull the mirror cannot serve is tried again from Docker Hub.
    pub fallback_to_origin: bool,
}

/// Credentials for one registry, given to dockerd in the request's auth header only.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryLogin {
    Password {
        username: String,
        password: String,
    },
    /// An identity token (as `docker login` keeps for token-based logins).
    Token(String),
}

impl fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryLogin::Password { username, .. } => {
                write!(f, "Password {{ username: {username:?}, password: **** }}")
            }
            RegistryLogin::Token(_) => f.write_str("Token(****)"),
        }
    }
}

/// An image reference split as dockerd reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// `None` for Docker Hub.
    pub registry: Option<String>,
    /// The repository path without the registry (`library/` is added for Hub's official images).
    pub repository: String,
    /// `:tag` or `@sha256:...`; `latest` when the reference names neither.
    pub tag: String,
    pub by_digest: bool,
}

impl ImageReference {
    pub fn parse(image: &str) -> ImageReference {
        let (name, tag, by_digest) = match image.split_once('@') {
            Some((name, digest)) => (name, digest.to_owned(), true),
            None => match image.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => (name, tag.to_owned(), false),
                _ => (image, "latest".to_owned(), false),
            },
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_owned()), rest.to_owned())
            }
            _ => (None, name.to_owned()),
        };
        let repository = if registry.is_none() && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        ImageReference {
            registry,
            repository,
            tag,
            by_digest,
        }
    }

    /// The registry as errors name it.
    pub fn registry_name(&self) -> &str {
        self.registry.as_deref().unwrap_or(DOCKER_HUB)
    }
}

/// Makes `image` present as `policy` says; see [`crate::Engine::pull_image`].
pub(super) fn pull_image(
    docker: Docker,
    registries: std::sync::Arc<Registries>,
    image: &str,
    policy: PullPolicy,
) -> PullProgress {
    let (sender, receiver) = mpsc::channel(16);
    let image = image.to_owned();
    // The pull runs as its own task so its code reads in order; dropping the stream makes the
    // next send fail, which ends the task and drops dockerd's pull request.
    tokio::spawn(async move {
        let progress = Progress { sender };
        if let Err(error) = ensure(&docker, &registries, &image, policy, &progress).await {
            let _ = progress.sender.send(Err(error)).await;
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
    .boxed()
}

struct Progress {
    sender: mpsc::Sender<Result<String, EngineError>>,
}

impl Progress {
    /// Sends a line; false once the reader is gone.
    async fn line(&self, text: String) -> bool {
        self.sender.send(Ok(text)).await.is_ok()
    }
}

async fn ensure(
    docker: &Docker,
    registries: &Registries,
    image: &str,
    policy: PullPolicy,
    progress: &Progress,
) -> Result<(), EngineError> {
    if policy != PullPolicy::Always && is_present(docker, image).await? {
        return Ok(());
    }
    if policy == PullPolicy::Never {
        return Err(EngineError::ImageMissing {
            image: image.to_owned(),
        });
    }
    let reference = ImageReference::parse(image);
    let mirror = registries
        .mirror
        .as_ref()
        .filter(|_| reference.registry.is_none() && !reference.by_digest);
    let Some(mirror) = mirror else {
        let from = reference.registry_name().to_owned();
        return pull_from(docker, registries, image, &from, image, progress).await;
    };
    let through_mirror = format!("{}/{}", mirror.host, reference.repository);
    let mirrored = format!("{through_mirror}:{}", reference.tag);
    match pull_from(docker, registries, image, &mirror.host, &mirrored, progress).await {
        Ok(()) => name_as_docker_hub(docker, image, &mirrored, &reference).await,
        Err(error) if mirror.fallback_to_origin => {
            progress
                .line(format!("{error}; pulling from {DOCKER_HUB} instead"))
                .await;
            pull_from(docker, registries, image, DOCKER_HUB, image, progress).await
        }
        Err(error) => Err(error),
    }
}

async fn is_present(docker: &Docker, image: &str) -> Result<bool, EngineError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(error) => Err(EngineError::failed(format!("inspect image {image}"), error)),
    }
}

/// Pulls `source` (the image itself, or its copy on the mirror) from `registry`, sending
/// progress; errors name `image` as the user wrote it and `registry`.
async fn pull_from(
    docker: &Docker,
    registries: &Registries,
    image: &str,
    registry: &str,
    source: &str,
    progress: &Progress,
) -> Result<(), EngineError> {
    let started = Instant::now();
    if !progress
        .line(format!("pulling image {image} from {registry}"))
        .await
    {
        return Ok(());
    }
    let reference = ImageReference::parse(source);
    let from_image = match &reference.registry {
        Some(host) => format!("{host}/{}", reference.repository),
        None => reference.repository.clone(),
    };
    let options = CreateImageOptions {
        from_image: Some(from_image),
        tag: Some(reference.tag.clone()),
        ..Default::default()
    };
    let credentials = registries
        .logins
        .get(registry)
        .map(|login| credentials(registry, login));
    let mut events = docker.create_image(Some(options), None, credentials);
    let mut throttle = Throttle::default();
    while let Some(event) = events.next().await {
        let event = event.map_err(|error| pull_failed(image, registry, &error))?;
        if let Some(message) = event.error_detail.and_then(|d| d.message).or(event.error) {
            return Err(failure(image, registry, &message));
        }
        let Some(line) = throttle.line(event.id.as_deref(), event.status.as_deref()) else {
            continue;
        };
        if !progress.line(line).await {
            return Ok(());
        }
    }
    progress
        .line(format!(
            "pulled image {image} from {registry} in {:.1}s",
            started.elapsed().as_secs_f64()
        ))
        .await;
    Ok(())
}

/// A Docker Hub image pulled from the mirror takes its Hub name, and loses the mirror's, as
/// dockerd's own mirrors leave it.
async fn name_as_docker_hub(
    docker: &Docker,
    image: &str,
    mirrored: &str,
    reference: &ImageReference,
) -> Result<(), EngineError> {
    let (repository, tag) = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (image.to_owned(), reference.tag.clone()),
    };
    let options = TagImageOptions {
        repo: Some(repository),
        tag: Some(tag),
    };
    docker
        .tag_image(mirrored, Some(options))
        .await
        .map_err(|e| EngineError::failed(format!("tag {mirrored} as {image}"), e))?;
    let untag = RemoveImageOptions {
        force: false,
        noprune: true,
    };
    docker
        .remove_image(mirrored, Some(untag), None)
        .await
        .map(drop)
        .map_err(|e| EngineError::failed(format!("untag {mirrored}"), e))
}

fn credentials(registry: &str, login: &RegistryLogin) -> DockerCredentials {
    let serveraddress = Some(if registry == DOCKER_HUB {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.to_owned()
    });
    match login {
        RegistryLogin::Password { username, password } => DockerCredentials {
            username: Some(username.clone()),
            password: Some(password.clone()),
            serveraddress,
            ..Default::default()
        },
        RegistryLogin::Token(token) => DockerCredentials {
            identitytoken: Some(token.clone()),
            serveraddress,
            ..Default::default()
        },
    }
}

fn pull_failed(image: &str, registry: &str, error: &DockerError) -> EngineError {
    let message = match error {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    };
    failure(image, registry, &message)
}

/// dockerd reports a failed pull as text only; the cause a user acts on comes first.
fn failure(image: &str, registry: &str, message: &str) -> EngineError {
    let text = message.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let cause = if has(&["repository does not exist or may require"]) {
        "not found, or not authorized"
    } else if has(&[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "incorrect username or password",
        "denied",
    ]) {
        "unauthorized"
    } else if has(&["manifest unknown", "not found", "does not exist"]) {
        "not found"
    } else if has(&[
        "connection refused",
        "no such host",
        "timeout",
        "dial tcp",
        "network is unreachable",
        "eof",
    ]) {
        "unreachable"
    } else {
        "failed"
    };
    EngineError::PullFailed {
        image: image.to_owned(),
        registry: registry.to_owned(),
        reason: format!("{cause} ({})", message.trim()),
    }
}

/// Keeps the lines worth a log: a layer's state when it changes (not every byte count), and
/// messages about the whole image; at most [`MAX_PROGRESS_LINES`].
#[derive(Default)]
struct Throttle {
    layers: HashMap<String, String>,
    shown: usize,
}

impl Throttle {
    fn line(&mut self, id: Option<&str>, status: Option<&str>) -> Option<String> {
        let status = status?.trim();
        if status.is_empty() || self.shown > MAX_PROGRESS_LINES {
            return None;
        }
        let line = match id {
            Some(id) => {
                if self.layers.get(id).is_some_and(|last| last == status) {
                    return None;
                }
                self.layers.insert(id.to_owned(), status.to_owned());
                format!("{id}: {status}")
            }
            None => status.to_owned(),
        };
        self.shown += 1;
        if self.shown > MAX_PROGRESS_LINES {
            return Some(format!(
                "more than {MAX_PROGRESS_LINES} progress lines: the rest are not shown"
            ));
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(image: &str) -> (Option<String>, String, String) {
        let r = ImageReference::parse(image);
        (r.registry, r.repository, r.tag)
    }

    #[test]
    fn references_split_as_dockerd_reads_them() {
        assert_eq!(
            parsed("golang:1.22"),
            (None, "library/golang".into(), "1.22".into())
        );
        assert_eq!(
            parsed("acme/app"),
            (None, "acme/app".into(), "latest".into())
        );
        assert_eq!(
            parsed("127.0.0.1:5000/acme/app:v2"),
            (
                Some("127.0.0.1:5000".into()),
                "acme/app".into(),
                "v2".into()
            )
        );
        assert_eq!(
            parsed("localhost/app"),
            (Some("localhost".into()), "app".into(), "latest".into())
        );
        assert_eq!(
            parsed("registry.acme.test:5000/app"),
            (
                Some("registry.acme.test:5000".into()),
                "app".into(),
                "latest".into()
            )
        );
        let digest = ImageReference::parse("acme/app@sha256:abc");
        assert!(digest.by_digest);
        assert_eq!(digest.tag, "sha256:abc");
        assert_eq!(digest.registry_name(), DOCKER_HUB);
    }

    #[test]
    fn progress_shows_each_layer_state_once() {
        let mut throttle = Throttle::default();
        let events = [
            (Some("v1"), "Pulling from acme/app"),
            (Some("a1"), "Pulling fs layer"),
            (Some("a1"), "Downloading"),
            (Some("a1"), "Downloading"),
            (Some("a1"), "Downloading"),
            (Some("a1"), "Download complete"),
            (Some("a1"), "Extracting"),
            (Some("a1"), "Extracting"),
            (Some("a1"), "Pull complete"),
            (None, "Digest: sha256:0"),
        ];
        let lines: Vec<String> = events
            .iter()
            .filter_map(|(id, status)| throttle.line(*id, Some(status)))
            .collect();
        assert_eq!(
            lines,
            [
                "v1: Pulling from acme/app",
                "a1: Pulling fs layer",
                "a1: Downloading",
                "a1: Download complete",
                "a1: Extracting",
                "a1: Pull complete",
                "Digest: sha256:0"
            ]
        );
    }

    #[test]
    fn progress_of_a_huge_image_is_cut() {
        let mut throttle = Throttle::default();
        let shown = (0..10_000)
            .filter_map(|i| throttle.line(Some(&format!("layer{i}")), Some("Pulling fs layer")))
            .count();
        assert_eq!(shown, MAX_PROGRESS_LINES + 1);
    }

    #[test]
    fn failures_name_their_cause() {
        let cause = |message: &str| match failure("img", "reg", message) {
            EngineError::PullFailed { reason, .. } => reason,
            other => panic!("{other}"),
        };
        assert!(
            cause("Head \"http://127.0.0.1:1/v2/a/manifests/v\": no basic auth credentials")
                .starts_with("unauthorized")
        );
        assert!(
            cause("manifest for 127.0.0.1:1/a:v not found: manifest unknown")
                .starts_with("not found")
        );
        assert!(cause(
            "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"
        )
        .starts_with("unreachable"));
        let error = failure("img", "reg", "unauthorized: authentication required");
        assert_eq!(
            error.to_string(),
            "cannot pull image `img` from registry `reg`: unauthorized (unauthorized: authentication required)"
        );
    }

    #[test]
    fn logins_never_show_in_debug_output() {
        let login = RegistryLogin::Password {
            username: "ci".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{login:?}").contains("hunter2"));
        assert!(!format!("{:?}", RegistryLogin::Token("t0ken".into())).contains("t0ken"));
    }
}
