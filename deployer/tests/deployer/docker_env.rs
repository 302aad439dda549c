//! A docker-target environment for one test: the app images, a load balancer on a loopback port,
//! everything labelled with the test's id and removed by that label when dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use slipway_deployer::{
    DeployPolicy, DockerSettings, DockerTarget, HealthPolicy, LoadBalancerSettings,
};
use tokio::sync::OnceCell;

const TEST_LABEL: &str = "slipway.test";

/// Quick health checks, a watch of one second, blue kept warm for `retention`.
pub fn policy(retention: Duration) -> DeployPolicy {
    DeployPolicy {
        health: HealthPolicy {
            interval: Duration::from_millis(200),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            timeout: Duration::from_secs(20),
        },
        watch: Duration::from_secs(1),
        retention,
        lock_ttl: Duration::from_secs(10),
    }
}

/// `slipway-deployer-test/app:<tag>` for `v1`, `v2` and `bad` (whose /health answers 500).
pub fn image(tag: &str) -> String {
    format!("slipway-deployer-test/app:{tag}")
}

/// Builds the app images once per test run, from `slipway/debian:bookworm`, without a pull.
async fn build_images() {
    static BUILT: OnceCell<()> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let context = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/app");
            for (tag, version, health) in [
                ("v1", "v1", "ok"),
                ("v2", "v2", "ok"),
                ("bad", "bad", "fail"),
            ] {
                let built = Command::new("docker")
                    .env("DOCKER_BUILDKIT", "0")
                    .args(["build", "-q", "-t", &image(tag)])
                    .args(["--build-arg", &format!("VERSION={version}")])
                    .args(["--build-arg", &format!("HEALTH={health}")])
                    .arg(context)
                    .output()
                    .expect("docker build runs");
                let stderr = String::from_utf8_lossy(&built.stderr);
                assert!(built.status.success(), "docker build of {tag}: {stderr}");
            }
        })
        .await;
}

/// One test's environment; dropping it removes its containers and network.
pub struct DockerEnv {
    pub id: String,
    pub environment: String,
    pub docker: Docker,
    /// Where the load balancer listens.
    pub listen: SocketAddr,
    /// Its directory (configuration, map, runtime socket).
    pub dir: std::path::PathBuf,
}

impl DockerEnv {
    pub async fn new() -> DockerEnv {
        build_images().await;
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let docker = Docker::connect_with_local_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], crate::ports::free_port()));
        DockerEnv {
            environment: format!("dt-{id}"),
            dir: std::env::temp_dir().join(format!("slipway-deployer-test-{id}")),
            id,
            docker,
            listen,
        }
    }

    /// The settings a server makes for this environment.
    pub fn settings(&self) -> DockerSettings {
        DockerSettings {
            environment: self.environment.clone(),
            network: self.environment.clone(),
            name_prefix: "slipway-test-".to_owned(),
            labels: BTreeMap::from([(TEST_LABEL.to_owned(), self.id.clone())]),
            port: 8000,
            variables: BTreeMap::new(),
            drain_timeout: Duration::from_secs(5),
            load_balancer: LoadBalancerSettings {
                image: "slipway/haproxy:2.6".to_owned(),
                container: format!("{}-lb", self.environment),
                dir: self.dir.clone(),
                listen: self.listen,
                tls_pem: None,
                max_request_body_bytes: 100 << 20,
                health_path: "/health".to_owned(),
                labels: BTreeMap::new(),
                remote: false,
            },
        }
    }

    /// A target over the environment, as a (re)started server makes: the load balancer, if
    /// it runs, is adopted.
    pub async fn start_target(&mut self) -> Arc<DockerTarget> {
        Arc::new(DockerTarget::new(self.docker.clone(), self.settings()))
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The `slipway.fleet` label of every container of this test, sorted, deduplicated.
    pub async fn fleets_running(&self) -> Vec<String> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(
                [(
                    "label".to_owned(),
                    vec![format!("{TEST_LABEL}={}", self.id)],
                )]
                .into(),
            ),
            ..Default::default()
        };
        let containers = self.docker.list_containers(Some(options)).await.unwrap();
        let mut fleets: Vec<String> = containers
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get("slipway.fleet").cloned())
            .collect();
        fleets.sort();
        fleets.dedup();
        fleets
    }
}

impl Drop for DockerEnv {
    fn drop(&mut self) {
        let filter = format!("label={TEST_LABEL}={}", self.id);
        let listed = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .unwrap();
        let ids = String::from_utf8_lossy(&listed.stdout).to_string();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.environment])
            .output();
        // The files of a load balancer on a remote docker host.
        let _ = Command::new("docker")
            .args(["volume", "rm", &format!("{}-lb", self.environment)])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GET through the load balancer: the status and the body's first line.
pub async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<(u16, String), String> {
    let response = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).trim().to_owned(),
    ))
}

pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What one GET returned: the status and body, or why it failed.
pub type Answer = Result<(u16, String), String>;

/// Loops of GETs against the load balancer until stopped: every tenth asks for a slow response,
/// so some requests are in flight across each switch. Bounded to 20,000 requests.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let client = client();
                    let mut results = Vec::new();
                    let mut n = 0u32;
                    while !stop.load(Ordering::SeqCst) && results.len() < 5_000 {
                        n += 1;
                        let path = if n.is_multiple_of(10) {
                            "/slow?ms=300"
                        } else {
                            "/"
                        };
                        results.push(get(&client, &format!("http://{addr}{path}")).await);
                    }
                    results
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the loops; every result, in order per worker.
    pub async fn stop(self) -> Vec<Vec<Answer>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for worker in self.workers {
            all.push(worker.await.unwrap());
        }
        all
    }
}
