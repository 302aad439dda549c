//! The server's Docker clients, one per dockerd: the server's `docker_host` (the build queue,
//! the bake service and the docker environments that name no other share clones of it), and
//! each other `docker_host` an environment names. A client is built once at start without
//! contacting dockerd.
//!
//! bollard connects per request, so there is no connection to lose: "reconnecting" means that
//! nothing caches a failed state, and that the API version is negotiated each time
//! [`DockerClient::check`] finds dockerd answering (clones share the negotiated version, so
//! one check readies them all, also after dockerd was down at start).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::{BollardRequest, Docker};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How long one request may take; image builds and log follows are streams, not one request.
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// How long [`DockerClient::check`] waits for dockerd's answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why dockerd cannot be used now.
#[derive(Debug, Clone, thiserror::Error)]
#[error("dockerd at {address} is unreachable: {reason}")]
pub struct DockerUnreachable {
    pub address: String,
    pub reason: String,
}

/// A handle on dockerd at one address; cheap to clone.
#[derive(Clone)]
pub struct DockerClient {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    address: String,
}

impl fmt::Debug for DockerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerClient")
            .field("address", &self.inner.address)
            .finish()
    }
}

impl DockerClient {
    /// A client for `address` (`unix:///path` or `tcp://host:port`, as the config checked);
    /// nothing is contacted yet.
    pub fn new(address: &str) -> anyhow::Result<DockerClient> {
        let version = bollard::API_DEFAULT_VERSION;
        let docker = match address.strip_prefix("unix://") {
            Some(path) => unix_client(PathBuf::from(path)),
            None => Docker::connect_with_http(address, REQUEST_TIMEOUT_SECS, version),
        }
        .map_err(|e| anyhow::anyhow!("cannot make a Docker client for {address}: {e}"))?;
        Ok(DockerClient {
            inner: Arc::new(Inner {
                docker,
                address: address.to_owned(),
            }),
        })
    }

    /// dockerd's address as configured.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The shared bollard client, for the crates that drive dockerd themselves.
    pub fn client(&self) -> Docker {
        self.inner.docker.clone()
    }

    /// Asks dockerd for its version and negotiates the API version with it; the API version
    /// in use (e.g. `1.41`) when dockerd answers.
    pub async fn check(&self) -> Result<String, DockerUnreachable> {
        let unreachable = |reason: String| DockerUnreachable {
            address: self.inner.address.clone(),
            reason,
        };
        let negotiated = tokio::time::timeout(CHECK_TIMEOUT, self.client().negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {CHECK_TIMEOUT:?}")))?
            .map_err(|e| unreachable(with_causes(&e)))?;
        let version = negotiated.client_version();
        Ok(format!(
            "{}.{}",
            version.major_version, version.minor_version
        ))
    }
}

/// A client of the Unix socket at `path` that connects at each request. bollard's own
/// `connect_with_unix` refuses a socket that does not exist yet, which is exactly the case
/// of a dockerd that is down when the server starts.
fn unix_client(path: PathBuf) -> Result<Docker, bollard::errors::Error> {
    let mut builder = Client::builder(TokioExecutor::new());
    // A pooled connection to a dockerd that restarted is dead: always connect afresh.
    builder.pool_max_idle_per_host(0);
    let client = Arc::new(builder.build(UnixSocket(Arc::new(path))));
    let transport = move |request: BollardRequest| {
        let client = client.clone();
        async move { Ok(client.request(request).await?) }
    };
    // The URI's host is never resolved: every request goes to the socket.
    Docker::connect_with_custom_transport(
        transport,
        Some("http://dockerd"),
        REQUEST_TIMEOUT_SECS,
        bollard::API_DEFAULT_VERSION,
    )
}

/// Connects to a Unix socket whatever the URI says.
#[derive(Clone)]
struct UnixSocket(Arc<PathBuf>);

impl tower_service::Service<hyper::Uri> for UnixSocket {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(&*path).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// An error with its causes: bollard's own text ("client error (Connect)") omits the one
/// that says what happened ("No such file or directory").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_absent_socket_is_unreachable_and_named() {
        let client = DockerClient::new("unix:///nonexistent/slipway-test.sock").unwrap();
        let error = client.check().await.expect_err("nothing listens there");
        assert_eq!(error.address, "unix:///nonexistent/slipway-test.sock");
        assert!(error
            .to_string()
            .starts_with("dockerd at unix:///nonexistent/slipway-test.sock is unreachable: "));
        assert!(
            error.reason.contains("No such file or directory"),
            "{error}"
        );
    }
}
