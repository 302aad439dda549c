//! Dependencies that come and go: a dockerd of the test's own stopped and started again (queued
//! builds wait, then run), PostgreSQL cut off behind a socket proxy (503s that say so, then
//! recovery), and `/healthz` versus `/api/v1/health` while something is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::builds::{commit_all, git, push, wait_for_build};
use crate::helpers::{project_config, test_database, TestApp};

const QUICK_PIPELINE: &str =
    "steps:\n  - name: hi\n    image: slipway/debian:bookworm\n    commands:\n      - echo hi\n";
const SLOW_PIPELINE: &str = "steps:\n  - name: wait\n    image: slipway/debian:bookworm\n    commands:\n      - echo started\n      - sleep 600\n";

/// A git repository whose `.slipway.yml` is `pipeline`, committed on `main`.
fn tiny_repository(pipeline: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join(".slipway.yml"), pipeline).unwrap();
    commit_all(dir.path(), "tiny pipeline");
    dir
}

/// A new commit of `repo` with `pipeline`; its id.
fn commit_pipeline(repo: &Path, pipeline: &str, message: &str) -> String {
    std::fs::write(repo.join(".slipway.yml"), pipeline).unwrap();
    std::fs::write(repo.join("change"), message).unwrap();
    commit_all(repo, message)
}

fn tiny_config(repo: &Path, extra: &str) -> String {
    let project = project_config(
        "acme/hello",
        "hello-secret",
        &format!("file://{}", repo.display()),
        "^main$",
    );
    format!("{extra}{project}")
}

async fn healthz(app: &TestApp) -> (u16, Value) {
    let response = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn build_status(app: &TestApp, number: i64) -> String {
    app.get_json(&format!("/api/v1/projects/hello/builds/{number}"))
        .await["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A dockerd of the test's own, in a network namespace of its own, with its own data, exec
/// root, socket and bridge; stopped and removed with everything it made when dropped.
struct OwnDockerd {
    netns: String,
    root: tempfile::TempDir,
    child: Option<Child>,
    /// iptables rules of [`OwnDockerd::link_to_host`]: (table, rule).
    rules: Vec<(String, String)>,
}

impl OwnDockerd {
    fn start() -> OwnDockerd {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let netns = format!("slipway-deps-{id}");
        let root = tempfile::Builder::new().prefix("sw-dd-").tempdir().unwrap();
        run("ip", &["netns", "add", &netns]);
        let mut dockerd = OwnDockerd {
            netns,
            root,
            child: None,
            rules: Vec::new(),
        };
        dockerd.start_daemon();
        dockerd
    }

    fn socket(&self) -> PathBuf {
        self.root.path().join("d.sock")
    }

    fn address(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn start_daemon(&mut self) {
        let dir = self.root.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        // Not the host's daemon.json: its live-restore would keep containers running while
        // this dockerd is stopped, which is what the tests cut off.
        let config = dir.join("daemon.json");
        std::fs::write(&config, "{}").unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(self.address())
            .args(["--bip", "10.250.0.1/24"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting a second dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["version"]).0 {
            assert!(
                Instant::now() < deadline,
                "the test's dockerd did not answer within 60 s: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops dockerd gracefully (it stops its containers) and waits until it has exited.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // nsenter execs dockerd, so the child is dockerd itself.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Runs the docker CLI against this dockerd: (success, stdout + stderr).
    fn docker(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new("docker")
            .arg("-H")
            .arg(self.address())
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    /// Links this dockerd's network namespace to the machine's with a veth pair; returns the
    /// machine side's address, which containers with `--network=host` here reach (a server
    /// listening there serves them its apt repository). Beyond it, their traffic is routed and
    /// masqueraded as the machine's own containers' is (a full bake reaches Debian's archive).
    /// Deleting the namespace removes the pair; dropping `self`, the rules.
    fn link_to_host(&mut self) -> &'static str {
        let id = &self.netns["slipway-deps-".len()..];
        let (outside, inside) = (format!("swh-{id}"), format!("swn-{id}"));
        run(
            "ip",
            &[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ],
        );
        run("ip", &["link", "set", &inside, "netns", &self.netns]);
        run("ip", &["addr", "add", "10.251.7.1/30", "dev", &outside]);
        run("ip", &["link", "set", &outside, "up"]);
        let inside_commands: [&[&str]; 4] = [
            &["addr", "add", "10.251.7.2/30", "dev", &inside],
            &["link", "set", &inside, "up"],
            &["link", "set", "lo", "up"],
            &["route", "add", "default", "via", "10.251.7.1"],
        ];
        for command in inside_commands {
            run(
                "ip",
                &[&["netns", "exec", &self.netns, "ip"][..], command].concat(),
            );
        }
        let rules = [
            format!("nat POSTROUTING -s 10.251.7.0/30 ! -o {outside} -j MASQUERADE"),
            format!("filter FORWARD -i {outside} -j ACCEPT"),
            format!(
                "filter FORWARD -o {outside} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            ),
        ];
        for rule in rules {
            let (table, rule) = rule.split_once(' ').unwrap();
            let rule: Vec<&str> = rule.split(' ').collect();
            run("iptables", &[&["-t", table, "-I"][..], &rule].concat());
            self.rules.push((table.to_owned(), rule.join(" ")));
        }
        "10.251.7.1"
    }

    /// Copies an image of the machine's dockerd into this one.
    fn load_image(&self, image: &str) {
        let script = format!("docker save {image} | docker -H {} load", self.address());
        run("sh", &["-c", &script]);
    }
}

impl Drop for OwnDockerd {
    fn drop(&mut self) {
        self.stop_daemon();
        // Whatever a killed dockerd left mounted under its roots, deepest first.
        let root = self.root.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut mounted: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|point| point.starts_with(&root))
            .collect();
        mounted.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in mounted {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        for (table, rule) in &self.rules {
            let _ = Command::new("iptables")
                .args(["-t", table, "-D"])
                .args(rule.split(' '))
                .status();
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn builds_queued_while_dockerd_is_down_run_when_it_comes_back() {
    let mut dockerd = OwnDockerd::start();
    dockerd.load_image("slipway/debian:bookworm");
    let repo = tiny_repository(QUICK_PIPELINE);
    let extra = format!("docker_host = \"{}\"\n", dockerd.address());

    // dockerd is down when the server starts: a push waits in the queue.
    dockerd.stop_daemon();
    let app = TestApp::spawn(&tiny_config(repo.path(), &extra)).await;
    let first = push(&app, "main", &git(repo.path(), &["rev-parse", "HEAD"])).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(build_status(&app, first).await, "queued");
    assert_eq!(healthz(&app).await, (503, json!({"status": "unavailable"})));

    // It comes up: the build runs there (not on the machine's dockerd) and passes.
    let since = chrono::Utc::now().timestamp().to_string();
    dockerd.start_daemon();
    let up = Instant::now();
    let build = wait_for_build(&app, first, Duration::from_secs(120)).await;
    assert_eq!(build["status"], "passed", "{build}");
    eprintln!(
        "dockerd down at start: the queued build passed {:?} after it came up",
        up.elapsed()
    );
    let until = (chrono::Utc::now().timestamp() + 1).to_string();
    let (ok, created) = dockerd.docker(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--format",
        "{{.Actor.Attributes.image}}",
    ]);
    assert!(
        ok && created.contains("slipway/debian:bookworm"),
        "{created}"
    );
    assert_eq!(healthz(&app).await, (200, json!({"status": "ok"})));

    // dockerd goes away under a running build: it errors, saying why.
    let slow = commit_pipeline(repo.path(), SLOW_PIPELINE, "slow");
    let running = push(&app, "main", &slow).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while build_status(&app, running).await != "running" {
        assert!(Instant::now() < deadline, "build {running} never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped_at = Instant::now();
    dockerd.stop_daemon();
    eprintln!("dockerd stopped in {:?}", stopped_at.elapsed());
    let build = wait_for_build(&app, running, Duration::from_secs(60)).await;
    assert_eq!(build["status"], "errored", "{build}");
    let reason = build["reason"].as_str().unwrap();
    let expected = format!(
        "dockerd at {} became unreachable during the build",
        dockerd.address()
    );
    assert!(reason.starts_with(&expected), "{reason}");

    // While dockerd is down: the load balancer's check says only that, the API says what.
    assert_eq!(healthz(&app).await, (503, json!({"status": "unavailable"})));
    let health = app.get_json("/api/v1/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["docker"]["status"], "unavailable", "{health}");
    assert_eq!(health["docker"]["address"], dockerd.address(), "{health}");
    assert_eq!(health["database"]["status"], "ok", "{health}");

    // Builds pushed now stay queued, not errored, for as long as dockerd is down.
    let second = push(
        &app,
        "main",
        &commit_pipeline(repo.path(), QUICK_PIPELINE, "two"),
    )
    .await;
    let third = push(
        &app,
        "main",
        &commit_pipeline(repo.path(), QUICK_PIPELINE, "three"),
    )
    .await;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        for number in [second, third] {
            assert_eq!(build_status(&app, number).await, "queued");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // dockerd comes back: the queue notices by itself, and both builds run and pass.
    dockerd.start_daemon();
    let back = Instant::now();
    for number in [second, third] {
        let build = wait_for_build(&app, number, Duration::from_secs(90)).await;
        assert_eq!(build["status"], "passed", "{build}");
    }
    eprintln!(
        "dockerd down for {:?}; both queued builds passed {:?} after it came back",
        back.duration_since(stopped_at),
        back.elapsed()
    );
    assert!(back.elapsed() < Duration::from_secs(60));
    assert_eq!(healthz(&app).await, (200, json!({"status": "ok"})));

    // What the cut-off build could not tear down was reaped once dockerd was back.
    for kind in [
        &["ps", "-aq"][..],
        &["network", "ls", "-q"],
        &["volume", "ls", "-q"],
    ] {
        let (ok, left) = dockerd.docker(&[kind, &["--filter", "label=slipway.server"]].concat());
        assert!(ok && left.trim().is_empty(), "{kind:?} left: {left}");
    }
    app.stop().await;
}

/// A repository whose pipeline is [`QUICK_PIPELINE`] and whose package `tiny` (one script, a
/// systemd unit, no dependencies) bakes into an image with the held team playbook
/// ([`crate::bake_stage::add_held_playbook`]).
fn tiny_packaged_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    let package = "package:\n  name: tiny\n  architecture: all\n  maintainer: \"Acme Ops <ops@acme.test>\"\n  description: \"A tiny packaged app\"\n  files:\n    - {src: tiny.sh, dest: /usr/bin/tiny, mode: \"0755\"}\n  systemd_unit: tiny.service\n";
    std::fs::write(
        dir.path().join(".slipway.yml"),
        format!("{QUICK_PIPELINE}{package}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tiny.sh"),
        "#!/bin/sh\nexec sleep infinity\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tiny.service"),
        "[Unit]\nDescription=tiny\n\n[Service]\nExecStart=/usr/bin/tiny\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    crate::bake_stage::add_held_playbook(dir.path());
    commit_all(dir.path(), "tiny packaged app");
    dir
}

/// The held bake `bake_id` on `dockerd` goes on (see [`crate::bake_stage::GO`]).
async fn let_go_on(dockerd: &OwnDockerd, bake_id: &str) {
    let label = format!("label=slipway.bake={bake_id}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, containers) = dockerd.docker(&["ps", "-q", "--filter", &label]);
        if let Some(container) = containers.split_whitespace().next() {
            if dockerd
                .docker(&["exec", container, "touch", crate::bake_stage::GO])
                .0
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the bake {bake_id} never ran");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the held bake's container runs on `dockerd`.
async fn bake_container_runs(dockerd: &OwnDockerd, bake_id: &str) {
    let label = format!("label=slipway.bake={bake_id}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while dockerd
        .docker(&["ps", "-q", "--filter", &label])
        .1
        .trim()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the bake {bake_id} never ran");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_docker_bake_cut_off_by_dockerd_waits_queued_and_bakes_when_it_comes_back() {
    let mut dockerd = OwnDockerd::start();
    dockerd.load_image("slipway/debian:bookworm");
    let host = dockerd.link_to_host();
    let repo = tiny_packaged_repository();
    let extra = format!("docker_host = \"{}\"\n", dockerd.address());
    let app = TestApp::spawn_at(&tiny_config(repo.path(), &extra), &format!("{host}:0")).await;
    let build = push(&app, "main", &git(repo.path(), &["rev-parse", "HEAD"])).await;
    let build = wait_for_build(&app, build, Duration::from_secs(120)).await;
    assert_eq!(build["status"], "passed", "{build}");
    let v1 = app.release("hello", "v1").await;
    let bake_id = v1["bake_id"].as_str().unwrap().to_owned();

    // dockerd stops while the bake runs: the bake goes back to the queue, not to failed.
    bake_container_runs(&dockerd, &bake_id).await;
    let stopped_at = Instant::now();
    dockerd.stop_daemon();
    while stopped_at.elapsed() < Duration::from_secs(20) {
        let v1 = app.release("hello", "v1").await;
        assert_ne!(v1["bake_status"], "failed", "{v1}");
        assert_ne!(v1["images"][0]["status"], "failed", "{v1}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let v1 = app.release("hello", "v1").await;
    assert_eq!(v1["bake_status"], "queued", "{v1}");
    assert_eq!(v1["images"][0]["status"], "queued", "{v1}");

    // dockerd comes back: the queue notices by itself, and the bake runs to the end.
    dockerd.start_daemon();
    let back = Instant::now();
    let_go_on(&dockerd, &bake_id).await;
    let v1 = app.wait_for_bake("hello", "v1").await;
    let log = app.bake_log("hello", "v1").await;
    assert_eq!(v1["bake_status"], "baked", "{v1}\n{log}");
    eprintln!(
        "dockerd down for {:?}; the bake ended {:?} after it came back",
        back.duration_since(stopped_at),
        back.elapsed()
    );
    let image = v1["image"].as_str().unwrap();
    let (ok, id) = dockerd.docker(&["image", "inspect", "--format", "{{.Id}}", image]);
    assert!(ok, "{id}");
    assert_eq!(id.trim(), v1["image_id"].as_str().unwrap());
    // The cut-off attempt's build container is gone, like the finished one's.
    let label = format!("label=slipway.bake={bake_id}");
    let (ok, left) = dockerd.docker(&["ps", "-aq", "--filter", &label]);
    assert!(ok && left.trim().is_empty(), "containers left: {left}");
    app.stop().await;
}

#[tokio::test]
async fn health_names_what_is_missing_while_healthz_says_only_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}", dir.path().join("absent.sock").display());
    // A port nothing listens on, for an AWS endpoint that is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let repo = tiny_repository(QUICK_PIPELINE);
    let extra = format!("docker_host = \"{socket}\"\npacker = \"/nonexistent/bin/packer\"\n");
    let aws = format!(
        "[[projects.environments]]\nname = \"prod\"\ntarget = \"aws\"\nregion = \"eu-west-1\"\nendpoint_url = \"http://{closed}\"\nlistener_arn = \"arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/x/1/2\"\ntarget_groups = [\"arn:blue\", \"arn:green\"]\nlaunch_template_id = \"lt-0abc\"\n[projects.ami]\nregion = \"eu-west-1\"\nsource_ami = \"ami-785db401\"\napt_url = \"https://slipway.example.com/apt/\"\nendpoint_url = \"http://{closed}\"\n"
    );
    let app = TestApp::spawn(&(tiny_config(repo.path(), &extra) + &aws)).await;

    let (status, body) = healthz(&app).await;
    assert_eq!((status, &body), (503, &json!({"status": "unavailable"})));

    let health = app.get_json("/api/v1/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["database"], json!({"status": "ok"}));
    let docker = &health["docker"];
    assert_eq!(docker["status"], "unavailable", "{health}");
    assert_eq!(docker["address"], socket.as_str(), "{health}");
    assert!(docker["reason"].as_str().unwrap().len() > 10, "{health}");
    let packer = &health["packer"];
    assert_eq!(packer["status"], "unavailable", "{health}");
    assert_eq!(packer["binary"], "/nonexistent/bin/packer", "{health}");
    assert!(
        packer["reason"].as_str().unwrap().starts_with("not found"),
        "{health}"
    );
    let aws = &health["aws"][0];
    assert_eq!(aws["project"], "hello", "{health}");
    assert_eq!(aws["environment"], "prod", "{health}");
    assert_eq!(aws["status"], "unavailable", "{health}");
    let reason = aws["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("cannot connect to {closed}")),
        "{health}"
    );

    // Without a token the detail is not served.
    let anonymous = app
        .http
        .get(format!("{}/api/v1/health", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // A build pushed while dockerd is unreachable waits in the queue rather than erroring.
    let number = push(&app, "main", &git(repo.path(), &["rev-parse", "HEAD"])).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(build_status(&app, number).await, "queued");
    app.stop().await;
}

#[tokio::test]
async fn with_the_database_cut_off_the_api_answers_503_at_once_and_recovers() {
    let direct = test_database();
    let cluster_dir = conninfo_host(&direct);
    let proxy_dir = tempfile::tempdir().unwrap();
    let through_proxy = direct.replace(
        &format!("host={cluster_dir}"),
        &format!("host={}", proxy_dir.path().display()),
    );
    let mut proxy = SocketProxy::start(proxy_dir.path(), Path::new(&cluster_dir));
    let app = TestApp::spawn_with_database("", through_proxy).await;
    assert_eq!(healthz(&app).await, (200, json!({"status": "ok"})));

    proxy.stop();
    let asked = Instant::now();
    assert_eq!(healthz(&app).await, (503, json!({"status": "unavailable"})));
    let response = app.get("/api/v1/projects").await;
    let took = asked.elapsed();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "the state store is unavailable; see the server log"})
    );
    eprintln!("with the database cut off, /healthz and an API call answered in {took:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");

    proxy = SocketProxy::start(proxy_dir.path(), Path::new(&cluster_dir));
    assert_eq!(healthz(&app).await, (200, json!({"status": "ok"})));
    assert_eq!(app.get("/api/v1/projects").await.status(), 200);
    app.stop().await;
    proxy.stop();
}

/// `host=DIR` of a key=value connection string.
fn conninfo_host(conninfo: &str) -> String {
    conninfo
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix("host="))
        .expect("a host")
        .to_string()
}

/// Forwards PostgreSQL's socket (`.s.PGSQL.5432`) from one directory to another; stopping
/// it closes every forwarded connection, as a database going away does.
struct SocketProxy {
    socket: PathBuf,
    tasks: JoinSet<()>,
}

impl SocketProxy {
    fn start(dir: &Path, target_dir: &Path) -> SocketProxy {
        const SOCKET: &str = ".s.PGSQL.5432";
        let socket = dir.join(SOCKET);
        let target = target_dir.join(SOCKET);
        let listener = UnixListener::bind(&socket).unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        SocketProxy { socket, tasks }
    }

    fn stop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.tasks.abort_all();
        let _ = std::fs::remove_file(&self.socket);
    }
}
