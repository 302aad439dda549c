//! Benchmarks the docker target's blue/green operations against the real dockerd, with
//! references measured in the same run:
//!
//! 1. rollback to the warm v1 fleet (`Deployer::rollback` after v2 was deployed with v1 kept
//!    warm), timed from the call until a GET through the proxy answers v1, against the bare
//!    backend swap inside the proxy (`Proxy::route`, median of many calls) and the target's
//!    `switch_traffic` (one docker container listing plus that swap);
//! 2. full deploys of a 3-instance fleet: `Deployer::deploy` from the call to its return,
//!    i.e. lock, launch of 3 containers, health checks until every instance passed twice
//!    (checked every 100 ms), the proxy switch and the bookkeeping; the watch period is zero
//!    and blue is kept warm, so no watch and no retirement is included;
//! 3. failed requests (non-200 or transport errors) out of all requests of a bounded loopback
//!    load loop through the proxy, during the deploy of v2 and during the rollback to v1.
//!
//! The app images (tests/data/app, FROM slipway/debian:bookworm, never pulled) are built here
//! with tags unique to the run; images, containers and the network carry the label
//! `slipway.bench=<run id>` and are removed by it at the end, also on failure.
//!
//! Usage: deploy_bench [run-id]   (scripts/bench-deploy passes one and cleans by it too)

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use slipway_deployer::{
    DeployPolicy, DeployRequest, Deployer, DeploymentState, DockerTarget, HealthPolicy,
    MemoryDeploymentStore, MemoryLockStore, Proxy, Target,
};

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const LABEL: &str = "slipway.bench";
const INSTANCES: u32 = 3;
const LOAD_WORKERS: usize = 4;
/// Per worker: a load loop never sends more than this, nor runs longer than `LOAD_LIMIT`.
const LOAD_MAX_REQUESTS: usize = 20_000;
const LOAD_LIMIT: Duration = Duration::from_secs(60);
const ROUTE_TRIALS: usize = 10_000;

/// Removes everything labelled with the run's id when dropped: containers, network, images.
struct Cleanup {
    run: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={LABEL}={}", self.run);
        let ids = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .args(["--filter", &filter])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let remove = |args: &[&str], ids: Vec<String>| {
            if !ids.is_empty() {
                let _ = Command::new("docker").args(args).args(&ids).output();
            }
        };
        remove(&["rm", "-f"], ids(&["ps", "-aq"]));
        remove(&["network", "rm"], ids(&["network", "ls", "-q"]));
        remove(&["rmi", "-f"], ids(&["images", "-q"]));
    }
}

fn image(run: &str, version: &str) -> String {
    format!("slipway-deploy-bench/app:{version}-{run}")
}

fn build_image(run: &str, version: &str) -> BenchResult<()> {
    let context = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/app");
    let built = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "--pull=false", "-t", &image(run, version)])
        .args(["--label", &format!("{LABEL}={run}")])
        .args(["--build-arg", &format!("VERSION={version}")])
        .arg(context)
        .output()?;
    if !built.status.success() {
        let stderr = String::from_utf8_lossy(&built.stderr);
        return Err(format!("docker build of {version}: {stderr}").into());
    }
    Ok(())
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A GET: the status and the body's first line, or why it failed.
async fn get(client: &HttpClient, url: &str) -> Result<(u16, String), String> {
    let response = client
        .get(url.parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&body.to_bytes()).trim().to_owned();
    Ok((status, body))
}

/// A bounded load loop: `LOAD_WORKERS` tokio tasks GET the proxy (every tenth request is
/// `/slow?ms=300`, so requests are in flight across a switch) until the operation is over,
/// and each stops by itself after `LOAD_MAX_REQUESTS` requests or `LOAD_LIMIT` regardless.
struct Load {
    done: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let done = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + LOAD_LIMIT;
        let workers = (0..LOAD_WORKERS)
            .map(|_| {
                let done = done.clone();
                tokio::spawn(async move {
                    let client = client();
                    let (mut sent, mut failures) = (0usize, Vec::new());
                    while !done.load(Ordering::SeqCst)
                        && sent < LOAD_MAX_REQUESTS
                        && Instant::now() < deadline
                    {
                        sent += 1;
                        let path = if sent.is_multiple_of(10) {
                            "/slow?ms=300"
                        } else {
                            "/"
                        };
                        match get(&client, &format!("http://{addr}{path}")).await {
                            Ok((200, _)) => {}
                            Ok((status, body)) => failures.push(format!("{status} {body}")),
                            Err(error) => failures.push(error),
                        }
                    }
                    (sent, failures)
                })
            })
            .collect();
        Load { done, workers }
    }

    /// Lets the loops see the end of the operation (they finish their request in flight):
    /// the requests sent and the failures.
    async fn finish(self) -> BenchResult<(usize, Vec<String>)> {
        self.done.store(true, Ordering::SeqCst);
        let (mut sent, mut failures) = (0, Vec::new());
        for worker in self.workers {
            let (n, f) = worker.await?;
            sent += n;
            failures.extend(f);
        }
        Ok((sent, failures))
    }
}

/// The addresses the proxy should route to for `fleet`, as the target computes them.
async fn backends_of(
    docker: &Docker,
    run: &str,
    fleet: &str,
    network: &str,
) -> BenchResult<Vec<SocketAddr>> {
    let options = ListContainersOptions {
        filters: Some(
            [(
                "label".to_owned(),
                vec![format!("{LABEL}={run}"), format!("slipway.fleet={fleet}")],
            )]
            .into(),
        ),
        ..Default::default()
    };
    let mut addrs = Vec::new();
    for container in docker.list_containers(Some(options)).await? {
        let ip = container
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|n| n.get(network).and_then(|e| e.ip_address.clone()));
        if let Some(ip) = ip {
            addrs.push(SocketAddr::new(ip.parse()?, 8000));
        }
    }
    Ok(addrs)
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn check(what: &str, state: DeploymentState, reason: Option<String>) -> BenchResult<()> {
    match state {
        DeploymentState::RetainingBlue | DeploymentState::Succeeded => Ok(()),
        other => Err(format!("{what} ended {other:?}: {reason:?}").into()),
    }
}

fn failures_line(what: &str, sent: usize, failures: &[String]) -> String {
    let mut line = format!(
        "failed requests during {what}: {} of {sent} ({:.3}%)",
        failures.len(),
        100.0 * failures.len() as f64 / sent.max(1) as f64
    );
    if let Some(first) = failures.first() {
        line.push_str(&format!("; first: {first}"));
    }
    line
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult<()> {
    let run = std::env::args().nth(1).unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        id[..8].to_owned()
    });
    let _cleanup = Cleanup { run: run.clone() };
    let result = bench(&run).await;
    if let Err(error) = &result {
        eprintln!("deploy_bench: {error}");
    }
    result
}

async fn bench(run: &str) -> BenchResult<()> {
    let started = Instant::now();
    println!("deploy_bench: run {run}: building images v1 and v2");
    for version in ["v1", "v2"] {
        build_image(run, version)?;
    }

    let docker = Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let (proxy, serve) = Proxy::bind("127.0.0.1:0".parse()?).await?;
    let serving = tokio::spawn(serve);
    let environment = format!("bench-{run}");
    let labels = BTreeMap::from([(LABEL.to_owned(), run.to_owned())]);
    let target = Arc::new(
        DockerTarget::new(
            docker.clone(),
            &environment,
            &environment,
            proxy.clone(),
            labels,
            8000,
        )
        .with_drain_timeout(Duration::from_secs(5)),
    );
    let policy = DeployPolicy {
        health: HealthPolicy {
            interval: Duration::from_millis(100),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            timeout: Duration::from_secs(30),
        },
        watch: Duration::ZERO,
        retention: Duration::from_secs(3600),
        lock_ttl: Duration::from_secs(30),
    };
    let deployer = Deployer::new(
        environment.clone(),
        "bench",
        target.clone(),
        Arc::new(MemoryDeploymentStore::default()),
        Arc::new(MemoryLockStore::default()),
        policy,
    );
    let request = |version: &str| DeployRequest {
        release: version.to_owned(),
        image: image(run, version),
        instances: INSTANCES,
    };
    let url = format!("http://{}/", proxy.local_addr());
    let http = client();

    // v1, nothing live yet, no load.
    let t = Instant::now();
    let v1 = deployer.deploy(&request("v1")).await?;
    let first_deploy = t.elapsed();
    check("deploy of v1", v1.state, v1.reason)?;
    if get(&http, &url).await != Ok((200, "v1".to_owned())) {
        return Err("v1 does not answer through the proxy".into());
    }

    // v2 under load; v1 stays warm.
    let load = Load::start(proxy.local_addr());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let v2 = deployer.deploy(&request("v2")).await?;
    let second_deploy = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (deploy_sent, deploy_failures) = load.finish().await?;
    check("deploy of v2", v2.state, v2.reason)?;
    if get(&http, &url).await != Ok((200, "v2".to_owned())) {
        return Err("v2 does not answer through the proxy after its deploy".into());
    }

    // Rollback to the warm v1 under load, timed until a GET answers v1.
    let load = Load::start(proxy.local_addr());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let poll = async {
        let poller = client();
        loop {
            if let Ok((200, body)) = get(&poller, &url).await {
                if body == "v1" {
                    return t.elapsed();
                }
            }
        }
    };
    let rollback_to_v1 = request("v1");
    let (back, served) = tokio::join!(deployer.rollback(&rollback_to_v1), poll);
    let returned = t.elapsed();
    let back = back?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rollback_sent, rollback_failures) = load.finish().await?;
    check("rollback to v1", back.state, back.reason)?;
    if back.kind != slipway_deployer::DeploymentKind::SwitchBack {
        return Err(format!("the rollback was a {:?}, not a switch", back.kind).into());
    }

    // References: the bare swap inside the proxy, and the target's switch (v1 is live, so
    // routing to it again changes nothing).
    let v1_fleet = target.fleet_for("v1", &image(run, "v1"));
    let backends = backends_of(&docker, run, &v1_fleet.id, &environment).await?;
    if backends.len() != INSTANCES as usize {
        return Err(format!("v1 has {} backends, not {INSTANCES}", backends.len()).into());
    }
    let mut swaps = Vec::with_capacity(ROUTE_TRIALS);
    for _ in 0..ROUTE_TRIALS {
        let t = Instant::now();
        proxy.route(v1_fleet.clone(), backends.clone());
        swaps.push(t.elapsed());
    }
    swaps.sort();
    let swap = swaps[swaps.len() / 2];
    let mut switches = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        target.switch_traffic(&v1_fleet).await?;
        switches.push(t.elapsed());
    }
    switches.sort();
    let switch = switches[switches.len() / 2];
    if get(&http, &url).await != Ok((200, "v1".to_owned())) {
        return Err("v1 does not answer after the reference switches".into());
    }
    serving.abort();

    println!("1. rollback to the warm v1 fleet (Deployer::rollback -> switch back, under load):");
    println!(
        "   until a GET through the proxy answers v1: {}",
        ms(served)
    );
    println!(
        "   until Deployer::rollback returned:        {}",
        ms(returned)
    );
    println!(
        "   reference, bare proxy swap (Proxy::route, median of {ROUTE_TRIALS}): {:.3} us",
        swap.as_secs_f64() * 1e6
    );
    println!(
        "   reference, DockerTarget::switch_traffic (container listing + swap, median of 20): {}",
        ms(switch)
    );
    println!(
        "   ratio rollback-served / bare swap: {:.0}x; / switch_traffic: {:.1}x",
        served.as_secs_f64() / swap.as_secs_f64().max(1e-9),
        served.as_secs_f64() / switch.as_secs_f64().max(1e-9)
    );
    println!(
        "2. full deploy of a {INSTANCES}-instance fleet (Deployer::deploy call to return: lock, \
         launch {INSTANCES} containers, health 2 passes at 100 ms, switch, bookkeeping; watch 0, \
         blue kept warm, no retirement):"
    );
    println!("   v2 over live v1, under load: {}", ms(second_deploy));
    println!("   v1, first deploy, no load:   {}", ms(first_deploy));
    println!(
        "3. bounded loopback load ({LOAD_WORKERS} tokio tasks, every 10th GET /slow?ms=300, \
         from 300 ms before to 300 ms after each operation):"
    );
    println!(
        "   {}",
        failures_line("the deploy of v2", deploy_sent, &deploy_failures)
    );
    println!(
        "   {}",
        failures_line("the rollback to v1", rollback_sent, &rollback_failures)
    );
    println!(
        "deploy_bench: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
