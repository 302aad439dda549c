//! The docker target's load balancer (HAProxy in its own container) against the real dockerd:
//! what passes through it (WebSockets across a switch, large uploads, TLS with HTTP/2, the
//! forwarded headers, the size limit), and that it outlives the target that made it.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_deployer::{DeployPolicy, Deployer, DeploymentState, DeploymentStore, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::docker_env::{client, get, image, DockerEnv};
use crate::support::{request, Stores};
use crate::tcp_dockerd::TcpDockerd;

fn policy() -> DeployPolicy {
    DeployPolicy {
        watch: Duration::ZERO,
        ..crate::docker_env::policy(Duration::from_secs(3600))
    }
}

/// A deployer over a new target of `env` that deployed `releases` in turn, two instances each.
async fn deployed(env: &mut DockerEnv, stores: &Stores, releases: &[&str]) -> Deployer {
    let target = env.start_target().await;
    let deployer = stores.deployer(&env.environment, "a", target, policy());
    for release in releases {
        let done = deployer
            .deploy(&request(release, &image(release), 2))
            .await
            .unwrap();
        assert!(
            matches!(
                done.state,
                DeploymentState::Succeeded | DeploymentState::RetainingBlue
            ),
            "{done:?}"
        );
    }
    deployer
}

/// A WebSocket client: the handshake, then text messages and their answers.
struct WebSocket(TcpStream);

impl WebSocket {
    async fn open(addr: std::net::SocketAddr) -> WebSocket {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let handshake = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(handshake.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        WebSocket(stream)
    }

    async fn say(&mut self, text: &str) -> String {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame).await.unwrap();
        let mut header = [0u8; 2];
        self.0.read_exact(&mut header).await.unwrap();
        let mut reply = vec![0u8; (header[1] & 0x7f) as usize];
        self.0.read_exact(&mut reply).await.unwrap();
        String::from_utf8(reply).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_before_a_switch_keeps_working_until_it_closes() {
    let mut env = DockerEnv::new().await;
    let stores = Stores::default();
    let deployer = deployed(&mut env, &stores, &["v1"]).await;
    let mut socket = WebSocket::open(env.listen).await;
    assert_eq!(socket.say("before").await, "v1 before");

    let v2 = deployer
        .deploy(&request("v2", &image("v2"), 2))
        .await
        .unwrap();
    assert_eq!(v2.state, DeploymentState::RetainingBlue, "{v2:?}");
    let url = format!("http://{}/", env.listen);
    assert_eq!(get(&client(), &url).await, Ok((200, "v2".to_owned())));
    // The old connection still reaches v1, which is warm; a new one reaches v2.
    assert_eq!(socket.say("after").await, "v1 after");
    let mut new = WebSocket::open(env.listen).await;
    assert_eq!(new.say("new").await, "v2 new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_upload_passes_and_a_body_over_the_limit_is_refused() {
    let mut env = DockerEnv::new().await;
    let stores = Stores::default();
    deployed(&mut env, &stores, &["v1"]).await;
    let file = env.dir.with_extension("upload");
    let body: Vec<u8> = (0..50u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let expected = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&body))
    };
    let url = format!("http://{}/upload", env.listen);
    let upload = curl(
        "%{http_code}",
        &["--data-binary", &format!("@{}", file.display()), &url],
    );
    assert_eq!(
        upload,
        ("200".to_owned(), format!("v1 {} {expected}", 50 << 20))
    );
    std::fs::remove_file(&file).unwrap();
    // The access log has its line: the status, and the request.
    let log = std::fs::read_to_string(env.dir.join("access.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("POST /upload"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(" 200 "), "{line}");

    // Past max_request_body_bytes (100 MiB here), refused before it reaches the fleet.
    let over = curl(
        "%{http_code}",
        &[
            "-H",
            &format!("Content-Length: {}", (100u64 << 20) + 1),
            "-X",
            "POST",
            &url,
        ],
    );
    assert_eq!(over.0, "413", "{over:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_with_http2_and_the_forwarded_headers_are_set() {
    let env = DockerEnv::new().await;
    let pem = self_signed(&env);
    let stores = Stores::default();
    let mut settings = env.settings();
    settings.load_balancer.tls_pem = Some(pem);
    let target = Arc::new(slipway_deployer::DockerTarget::new(
        env.docker.clone(),
        settings,
    ));
    let deployer = stores.deployer(&env.environment, "a", target, policy());
    let v1 = deployer
        .deploy(&request("v1", &image("v1"), 1))
        .await
        .unwrap();
    assert_eq!(v1.state, DeploymentState::Succeeded, "{v1:?}");

    let url = format!("https://localhost:{}/headers", env.listen.port());
    let (written, body) = curl(
        "%{http_code} %{http_version}",
        &["-k", "--http2", "-H", "X-Forwarded-For: 203.0.113.9", &url],
    );
    assert_eq!(written, "200 2", "{body}");
    let headers: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(
        headers["x-forwarded-host"],
        format!("localhost:{}", env.listen.port())
    );
    // The client's own value is kept and the address HAProxy saw appended.
    assert_eq!(
        headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1",
        "{headers}"
    );
    // Plain HTTP is not served on a TLS listener.
    let plain = curl("%{http_code}", &[&format!("http://{}/", env.listen)]);
    assert_ne!(plain.0, "200", "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_balancer_outlives_its_target_and_comes_back_with_the_live_routing() {
    let mut env = DockerEnv::new().await;
    let stores = Stores::default();
    let deployer = deployed(&mut env, &stores, &["v1", "v2"]).await;
    drop(deployer);
    let container = format!("{}-lb", env.environment);
    let started = inspect(&container, "{{.Id}} {{.State.StartedAt}}");
    let url = format!("http://{}/", env.listen);
    // Nothing of Slipway runs now: the load balancer serves on.
    assert_eq!(get(&client(), &url).await, Ok((200, "v2".to_owned())));

    // A new target (a restarted server) adopts it as it is.
    let target = env.start_target().await;
    let live = stores.deployments.live(&env.environment).await.unwrap();
    target.adopt(live.as_ref()).await.unwrap();
    assert_eq!(inspect(&container, "{{.Id}} {{.State.StartedAt}}"), started);
    assert_eq!(
        target.current_live().await.unwrap().map(|f| f.release),
        Some("v2".to_owned())
    );

    // Removed behind Slipway's back, it comes back routing to the recorded live fleet, with
    // the warm one registered too, so a switch back needs no launch.
    let removed = Command::new("docker")
        .args(["rm", "-f", &container])
        .output()
        .unwrap();
    assert!(removed.status.success());
    assert!(get(&client(), &url).await.is_err());
    let deployer = stores.deployer(&env.environment, "a", target.clone(), policy());
    deployer.recover().await.unwrap();
    assert_ne!(inspect(&container, "{{.Id}} {{.State.StartedAt}}"), started);
    assert_eq!(get(&client(), &url).await, Ok((200, "v2".to_owned())));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let back = deployer.switch_back("v1").await.unwrap();
    assert_eq!(back.state, DeploymentState::RetainingBlue, "{back:?}");
    eprintln!("switch back after the restart took {:?}", started.elapsed());
    assert_eq!(get(&client(), &url).await, Ok((200, "v1".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_server_on_the_host_drives_the_running_load_balancer_through_its_directory() {
    let mut env = DockerEnv::new().await;
    let stores = Stores::default();
    drop(deployed(&mut env, &stores, &["v1", "v2"]).await);
    let container = format!("{}-lb", env.environment);
    let started = inspect(&container, "{{.Id}} {{.State.StartedAt}}");
    let url = format!("http://{}/", env.listen);

    // Another server of the installation: its own data directory, the same container.
    let mut settings = env.settings();
    let own_dir = env.dir.with_extension("other-server");
    settings.load_balancer.dir = own_dir.clone();
    let target = Arc::new(slipway_deployer::DockerTarget::new(
        env.docker.clone(),
        settings,
    ));
    let live = stores.deployments.live(&env.environment).await.unwrap();
    target.adopt(live.as_ref()).await.unwrap();
    assert_eq!(
        inspect(&container, "{{.Id}} {{.State.StartedAt}}"),
        started,
        "adopted, not restarted"
    );
    assert_eq!(
        target.balancer().dir(),
        Some(env.dir.clone()),
        "driven through the directory it mounts"
    );
    assert!(!own_dir.exists(), "nothing written where it does not live");
    let map = || std::fs::read_to_string(env.dir.join("live.map")).unwrap();
    let before = map();
    let deployer = stores.deployer(&env.environment, "b", target, policy());
    let back = deployer.switch_back("v1").await.unwrap();
    assert_eq!(back.state, DeploymentState::RetainingBlue, "{back:?}");
    assert_eq!(get(&client(), &url).await, Ok((200, "v1".to_owned())));
    assert_ne!(
        map(),
        before,
        "the switch is persisted where the load balancer reads it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_a_warm_fleet_that_is_not_healthy_replaces_it_saying_why() {
    let mut env = DockerEnv::new().await;
    let stores = Stores::default();
    let deployer = deployed(&mut env, &stores, &["v1", "v2"]).await;
    // One instance of warm v1 stops; the load balancer's checks see it within two seconds.
    let v1 = format!("slipway-test-{}-v1-0", env.environment);
    let stopped = Command::new("docker")
        .args(["stop", "-t", "0", &v1])
        .output()
        .unwrap();
    assert!(stopped.status.success());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let back = deployer
        .rollback(&request("v1", &image("v1"), 2))
        .await
        .unwrap();
    assert_eq!(back.kind, slipway_deployer::DeploymentKind::Deploy);
    assert_eq!(back.state, DeploymentState::RetainingBlue, "{back:?}");
    let failed = stores
        .deployments
        .all()
        .into_iter()
        .find(|d| d.kind == slipway_deployer::DeploymentKind::SwitchBack)
        .unwrap();
    assert_eq!(failed.state, DeploymentState::Failed);
    let reason = failed.reason.unwrap();
    assert!(
        reason.contains("the warm fleet") && reason.contains("not healthy") && reason.contains(&v1),
        "{reason}"
    );
    let url = format!("http://{}/", env.listen);
    assert_eq!(get(&client(), &url).await, Ok((200, "v1".to_owned())));
}

/// `curl -s` with `args`: what `-w write_out` printed (after the body), and the body.
fn curl(write_out: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "--max-time", "60", "-w"])
        .arg(format!("\n{write_out}"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, written) = text.rsplit_once('\n').unwrap_or(("", &text));
    (written.to_owned(), body.trim_end().to_owned())
}

fn inspect(container: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A certificate for `localhost` and its key, made with openssl, as one PEM.
fn self_signed(env: &DockerEnv) -> String {
    let dir = env.dir.with_extension("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("key.pem")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    pem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_setting_reloads_the_running_load_balancer_without_failing_a_request() {
    let mut env = DockerEnv::new().await;
    let stores = Stores::default();
    deployed(&mut env, &stores, &["v1"]).await;
    let container = format!("{}-lb", env.environment);
    let started = inspect(&container, "{{.Id}} {{.State.StartedAt}}");
    let url = format!("http://{}/upload", env.listen);
    let post = |length: usize| {
        let url = url.clone();
        move || {
            let body = "x".repeat(length);
            curl("%{http_code}", &["--data-binary", &body, &url]).0
        }
    };
    assert_eq!(post(2000)(), "200");

    // A server started with a lower limit adopts the load balancer and reloads it.
    let load = crate::docker_env::Load::start(env.listen, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut settings = env.settings();
    settings.load_balancer.max_request_body_bytes = 1000;
    let target = slipway_deployer::DockerTarget::new(env.docker.clone(), settings);
    let live = stores.deployments.live(&env.environment).await.unwrap();
    target.adopt(live.as_ref()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = load.stop().await;

    assert_eq!(inspect(&container, "{{.Id}} {{.State.StartedAt}}"), started);
    assert_eq!(post(2000)(), "413");
    let total: usize = results.iter().map(Vec::len).sum();
    let failed: Vec<_> = results
        .iter()
        .flatten()
        .filter(|r| !matches!(r, Ok((200, _))))
        .collect();
    assert!(failed.is_empty(), "{failed:?} of {total}");
    assert!(total > 20, "{total}");
}

#[tokio::test]
async fn the_access_log_is_rotated_past_its_limit_keeping_one_older_file() {
    let dir = tempfile_dir();
    let settings = slipway_deployer::LoadBalancerSettings {
        image: "unused".to_owned(),
        container: "unused".to_owned(),
        dir: dir.clone(),
        listen: "127.0.0.1:1".parse().unwrap(),
        tls_pem: None,
        max_request_body_bytes: 1,
        health_path: "/health".to_owned(),
        labels: Default::default(),
        remote: false,
    };
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let balancer = slipway_deployer::LoadBalancer::new(docker, settings);
    assert!(!balancer.rotate_access_log(10).await.unwrap(), "no log yet");
    std::fs::write(dir.join("access.log"), "0123456789").unwrap();
    assert!(
        !balancer.rotate_access_log(10).await.unwrap(),
        "at the limit"
    );
    std::fs::write(dir.join("access.log"), "first line\n").unwrap();
    assert!(balancer.rotate_access_log(10).await.unwrap());
    assert_eq!(std::fs::read_to_string(dir.join("access.log")).unwrap(), "");
    assert_eq!(
        std::fs::read_to_string(dir.join("access.log.1")).unwrap(),
        "first line\n"
    );
    std::fs::write(dir.join("access.log"), "second line\n").unwrap();
    assert!(balancer.rotate_access_log(10).await.unwrap());
    assert_eq!(
        std::fs::read_to_string(dir.join("access.log.1")).unwrap(),
        "second line\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("slipway-rotate-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_made_before_the_load_balancer_is_adopted_and_replaced_without_a_gap() {
    let mut env = DockerEnv::new().await;
    let stores = Stores::default();
    // What the version with the listener inside the server left: instances without the role
    // label or the installation's prefix, on a network named after the environment alone.
    let old_network = format!("old-{}", env.environment);
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    docker(&["network", "create", &old_network]);
    let fleet = format!("{}-v1", env.environment);
    let image_v1 = image("v1");
    for index in 0..2 {
        let labels = [
            "slipway.owner=slipway".to_owned(),
            format!("slipway.environment={}", env.environment),
            format!("slipway.test={}", env.id),
            format!("slipway.fleet={fleet}"),
            "slipway.release=v1".to_owned(),
            format!("slipway.image={}", image("v1")),
        ];
        let mut args = vec!["run", "-d", "--network", &old_network, "-e", "PORT=8000"];
        let name = format!("{fleet}-{index}");
        args.extend(["--name", &name]);
        for label in &labels {
            args.extend(["--label", label]);
        }
        args.push(&image_v1);
        docker(&args);
    }
    let live = slipway_deployer::FleetRef {
        id: fleet.clone(),
        release: "v1".to_owned(),
        image: image("v1"),
    };
    stores
        .deployments
        .set_live(&env.environment, &live)
        .await
        .unwrap();

    let target = env.start_target().await;
    let deployer = stores.deployer(&env.environment, "a", target, policy());
    deployer.recover().await.unwrap();
    let url = format!("http://{}/", env.listen);
    assert_eq!(get(&client(), &url).await, Ok((200, "v1".to_owned())));

    let load = crate::docker_env::Load::start(env.listen, 2);
    let v2 = deployer
        .deploy(&request("v2", &image("v2"), 2))
        .await
        .unwrap();
    let results = load.stop().await;
    assert_eq!(v2.state, DeploymentState::RetainingBlue, "{v2:?}");
    assert_eq!(v2.blue.unwrap().id, fleet);
    let failed: Vec<_> = results
        .iter()
        .flatten()
        .filter(|r| !matches!(r, Ok((200, _))))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(get(&client(), &url).await, Ok((200, "v2".to_owned())));
    let back = deployer.switch_back("v1").await.unwrap();
    assert_eq!(back.state, DeploymentState::RetainingBlue, "{back:?}");
    assert_eq!(get(&client(), &url).await, Ok((200, "v1".to_owned())));
    drop(env);
    let _ = Command::new("docker")
        .args(["network", "rm", &old_network])
        .output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_on_a_docker_host_reached_over_tcp_is_driven_through_its_api_alone() {
    let env = DockerEnv::new().await;
    let tcp = TcpDockerd::start();
    let remote =
        bollard::Docker::connect_with_http(&tcp.address, 120, bollard::API_DEFAULT_VERSION)
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
    let mut settings = env.settings();
    settings.load_balancer.remote = true;
    let target = Arc::new(slipway_deployer::DockerTarget::new(remote, settings));
    let stores = Stores::default();
    let deployer = stores.deployer(&env.environment, "a", target.clone(), policy());
    for release in ["v1", "v2"] {
        deployer
            .deploy(&request(release, &image(release), 2))
            .await
            .unwrap();
    }
    let url = format!("http://{}/", env.listen);
    assert_eq!(get(&client(), &url).await, Ok((200, "v2".to_owned())));
    assert!(!env.dir.exists(), "nothing written on this host");
    assert_eq!(target.balancer().dir(), None);
    let container = format!("{}-lb", env.environment);
    assert_eq!(
        inspect(&container, "{{range .Mounts}}{{.Type}} {{.Name}}{{end}}"),
        format!("volume {container}")
    );

    // The runtime API through an exec: a switch back, and the statistics.
    let back = deployer.switch_back("v1").await.unwrap();
    assert_eq!(back.state, DeploymentState::RetainingBlue, "{back:?}");
    assert_eq!(get(&client(), &url).await, Ok((200, "v1".to_owned())));
    let status = target.balancer().status().await.unwrap();
    assert!(
        status.stats.iter().any(|row| row.name == "FRONTEND"),
        "{status:?}"
    );
    let live = target.current_live().await.unwrap().unwrap();
    assert_eq!(live.release, "v1");

    // The files in the volume, read through the archive API even while it is stopped.
    let stopped = Command::new("docker")
        .args(["stop", &container])
        .output()
        .unwrap();
    assert!(stopped.status.success());
    let persisted = target.balancer().persisted_routing().await.unwrap();
    assert_eq!(persisted.servers.len(), 4, "{persisted:?}");
    let routing_live = persisted.live.expect("a live slot");
    assert!(
        persisted
            .of(routing_live)
            .all(|server| server.name.contains("-v1-")),
        "{persisted:?}"
    );
    // Started again (files uploaded into the new container's volume) with the live routing.
    deployer.recover().await.unwrap();
    assert_eq!(get(&client(), &url).await, Ok((200, "v1".to_owned())));

    // The access log, rotated by a shell in the container.
    assert!(target.balancer().rotate_access_log(0).await.unwrap());
    let listed = Command::new("docker")
        .args(["exec", &container, "ls", "/etc/slipway-lb"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("access.log.1"), "{listed}");
}
