//! Build agents: `slipway agent` processes that lease builds from the server and run them on
//! their own dockerd, streaming steps and logs back and uploading the package a passing build
//! makes, which the server checks and publishes.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::builds::{commit_all, git, hello_config, hello_repository, push, wait_for_build};
use crate::helpers::TestApp;
use crate::netns::AgentHost;

/// A `slipway agent` process, its stderr kept.
pub struct AgentProcess {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
}

impl AgentProcess {
    /// Spawns `command` (a `slipway agent ... --token -`), handing it `token` on stdin, out
    /// of sight of `ps`.
    pub fn spawn(mut command: Command, token: &str) -> AgentProcess {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("slipway agent starts");
        let mut stdin = child.stdin.take().expect("piped stdin");
        writeln!(stdin, "{token}").expect("token written");
        drop(stdin);
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut log = kept.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        AgentProcess { child, log }
    }

    /// Adds to `command` (the slipway binary, run directly or in a network namespace) the
    /// arguments of an agent of this name dialing `server`, working in `work_dir` on the
    /// dockerd at `docker_host`; the token comes on stdin.
    pub fn agent_args(
        command: &mut Command,
        server: &str,
        name: &str,
        work_dir: &Path,
        docker_host: &str,
    ) {
        command
            .args(["agent", "--server", server, "--token", "-", "--name", name])
            .arg("--work-dir")
            .arg(work_dir)
            .args(["--docker-host", docker_host]);
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` (`TERM`, `KILL`) to the agent.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the agent to exit, panicking with its log after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("agent waited for") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent did not exit within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new API token of scope `agent`.
pub async fn agent_token(app: &TestApp) -> String {
    let made = app.create_token("agents", &["agent"]).await;
    made["token"].as_str().expect("a token").to_owned()
}

/// The server's agents, by name.
pub async fn agents(app: &TestApp) -> Vec<Value> {
    app.get_json("/api/v1/agents").await["agents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Containers, networks and volumes labelled as this agent's on the dockerd of `docker_host`.
fn agent_objects(docker_host: &str, name: &str) -> usize {
    let label = format!("label=slipway.agent={name}");
    [
        vec!["ps", "-aq"],
        vec!["network", "ls", "-q"],
        vec!["volume", "ls", "-q"],
    ]
    .into_iter()
    .map(|mut args| {
        args.extend(["--filter", &label]);
        let out = Command::new("docker")
            .args(["-H", docker_host])
            .args(&args)
            .output()
            .expect("docker runs");
        String::from_utf8_lossy(&out.stdout).lines().count()
    })
    .sum()
}

/// A step that "installs" into `deps/` unless the cache brought it, and says which; and one
/// that waits while the commit holds a file `wait`.
const CACHED_STEPS: &str = "  - name: install\n    image: slipway/debian:bookworm\n    commands:\n      - if [ -f deps/installed ]; then echo \"warm from build $(cat deps/installed)\"; else echo cold; mkdir -p deps; echo \"$SLIPWAY_BUILD_NUMBER\" > deps/installed; fi\n      - if [ -f wait ]; then sleep 120; fi\n\n";

/// Pushes `commit` and waits for its build to end on an agent; the build and its log's text.
async fn agent_build(app: &TestApp, commit: &str, agent: &AgentProcess) -> (Value, Vec<String>) {
    let number = push(app, "main", commit).await;
    let build = wait_for_build(app, number, Duration::from_secs(300)).await;
    let logs: Value = app
        .get_json(&format!("/api/v1/projects/hello/builds/{number}/logs"))
        .await;
    let text = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(build["agent"], "builder-1", "{build}\n{}", agent.log());
    (build, text)
}

// Multi-threaded: the test waits on the agent process while the server must answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_runs_on_an_agent_and_the_server_publishes_the_package_it_uploads() {
    let repo = hello_repository();
    let spec = repo.path().join(".slipway.yml");
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "steps:\n",
        &format!(
            "cache:\n  paths: [deps]\n  key: \"deps-{{{{ branch }}}}\"\n\nsteps:\n{CACHED_STEPS}"
        ),
    );
    std::fs::write(&spec, text).unwrap();
    let head = commit_all(repo.path(), "a cache");
    let config = format!(
        "max_concurrent_builds = 0\n[agents]\nlease_seconds = 6\n{}",
        hello_config(repo.path())
    );
    let app = TestApp::spawn(&config).await;
    let token = agent_token(&app).await;
    // A token made for agents registers them and reads nothing.
    let read = app
        .http
        .get(format!("{}/api/v1/projects", app.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 403);

    // With max_concurrent_builds = 0 the server runs no build itself.
    let number = push(&app, "main", &head).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = app
        .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
        .await;
    assert_eq!(waiting["status"], "queued", "{waiting}");

    let work = tempfile::tempdir().unwrap();
    let docker_host = "unix:///var/run/docker.sock";
    let spawn_agent = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
        AgentProcess::agent_args(
            &mut command,
            &app.address,
            "builder-1",
            work.path(),
            docker_host,
        );
        command.args(["--capacity", "1", "--labels", "arch=amd64,disk=ssd"]);
        AgentProcess::spawn(command, &token)
    };
    let mut agent = spawn_agent();

    let build = wait_for_build(&app, number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}\n{}", agent.log());
    assert_eq!(build["agent"], "builder-1", "{build}");
    assert_eq!(build["attempt"], 1, "{build}");
    let steps: Vec<(&str, &str)> = build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert!(steps.contains(&("migrate", "passed")), "{steps:?}");
    assert!(steps.contains(&("test", "passed")), "{steps:?}");
    let logs: Value = app
        .get_json(&format!("/api/v1/projects/hello/builds/{number}/logs"))
        .await;
    let text: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(text.contains(&"cold"), "{text:?}");
    assert!(
        text.iter().any(|l| l.starts_with("applying migrations/")),
        "{text:?}"
    );

    // The package the agent built is the release's, published by the server.
    let releases = app.get_json("/api/v1/projects/hello/releases").await;
    let v1 = &releases[0];
    assert_eq!(v1["version"], "v1", "{releases}");
    assert_eq!(v1["status"], "published", "{v1}");
    let filename = v1["package"]["filename"].as_str().unwrap();
    assert_eq!(filename, "hello_1_all.deb");
    let served = app
        .http
        .get(format!("{}/apt/pool/main/h/hello/{filename}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let bytes = served.bytes().await.unwrap();
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert_eq!(v1["package"]["sha256"], sha256);

    // The cache the agent saved went to the server's cache directory, and the next build
    // restores it.
    assert!(app
        .data_dir()
        .join("cache/hello/deps-main.tar.gz")
        .is_file());
    let (build, text) = agent_build(&app, &head, &agent).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert!(
        text.contains(&format!("warm from build {number}")),
        "{text:?}"
    );

    let listed = agents(&app).await;
    let listed = &listed[0];
    assert_eq!(listed["name"], "builder-1", "{listed}");
    assert_eq!(listed["capacity"], 1);
    assert_eq!(listed["labels"], json!({"arch": "amd64", "disk": "ssd"}));
    assert_eq!(listed["state"], "idle", "{listed}");
    assert_eq!(listed["version"], env!("CARGO_PKG_VERSION"));
    let table = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["agents", "--server", &app.address])
        .env("SLIPWAY_TOKEN", &app.token)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("builder-1"))
        .unwrap_or("");
    assert!(
        row.contains(" idle ") && row.contains("arch=amd64,disk=ssd"),
        "{table}"
    );

    // A build whose labels the agent lacks: it reads them and puts the build back, saying why.
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("labels:\n  arch: arm64\n{text}")).unwrap();
    let arm = push(&app, "main", &commit_all(repo.path(), "arm64 only")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let build = app
            .get_json(&format!("/api/v1/projects/hello/builds/{arm}"))
            .await;
        let reason =
            "waits for an agent labelled arch=arm64; agents: builder-1 (arch=amd64,disk=ssd)";
        if build["status"] == "queued" && build["reason"] == reason {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    std::fs::write(&spec, text).unwrap();

    // A second SIGTERM cancels the running build: it tears down, and the agent exits.
    std::fs::write(repo.path().join("wait"), "").unwrap();
    let waiting = commit_all(repo.path(), "wait");
    let number = push(&app, "main", &waiting).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let build = app
            .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
            .await;
        let installing = build["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "install" && s["status"] == "running");
        if installing {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    agent.signal("TERM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", agent.log());
    let build = wait_for_build(&app, number, Duration::from_secs(30)).await;
    assert_eq!(build["status"], "cancelled", "{build}");
    assert_eq!(agents(&app).await[0]["state"], "stopped");
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}\n{}", agent.log());
    assert_eq!(
        agent_objects(docker_host, "builder-1"),
        0,
        "{}",
        agent.log()
    );

    // Started again, it registers under its name; `slipway agent drain` makes it exit.
    let mut agent = spawn_agent();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while agents(&app).await[0]["state"] != "idle" {
        assert!(tokio::time::Instant::now() < deadline, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let drained = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["agent", "drain", "builder-1", "--server", &app.address])
        .env("SLIPWAY_TOKEN", &app.token)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&drained.stdout);
    assert!(drained.status.success(), "{drained:?}");
    assert!(said.contains("agent builder-1 is draining"), "{said}");
    let status = agent.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert_eq!(agents(&app).await[0]["state"], "stopped");
    let unknown = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["agent", "drain", "builder-9", "--server", &app.address])
        .env("SLIPWAY_TOKEN", &app.token)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(
        said.contains("no agent named \"builder-9\"; agents: builder-1"),
        "{said}"
    );
    assert!(!agent.log().contains(&token), "the agent logged its token");
    // The release may still be baking: a stop cancels its bake, and removes an image it made.
    app.stop().await;
}

/// The project's builds, newest first.
async fn builds(app: &TestApp) -> Vec<Value> {
    app.get_json("/api/v1/projects/hello/builds?limit=100")
        .await
        .as_array()
        .cloned()
        .unwrap()
}

/// The number of a build `agent` runs now with its `slow` step running: mid-build. Pushes
/// `head` whenever nothing is queued, so the agent gets work, counting the pushes in
/// `pushed`; waits up to `limit`.
async fn mid_build_on(
    app: &TestApp,
    agent: &str,
    head: &str,
    pushed: &mut usize,
    limit: Duration,
) -> i64 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let all = builds(app).await;
        if all.iter().all(|build| build["status"] != "queued") {
            push(app, "main", head).await;
            *pushed += 1;
        }
        for build in all {
            if build["status"] != "running" || build["agent"] != agent {
                continue;
            }
            let number = build["number"].as_i64().unwrap();
            let build = app
                .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
                .await;
            let slow = build["steps"].as_array().unwrap().iter().any(|step| {
                step["name"] == "slow"
                    && step["status"] == "running"
                    && step["attempt"] == build["attempt"]
            });
            if slow {
                return number;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{agent} was not mid-build within {limit:?}: {:?}",
            builds(app).await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs a blocking call on one of the simulated hosts off the runtime's threads.
async fn on_host<T: Send + 'static>(
    hosts: &Arc<Vec<AgentHost>>,
    index: usize,
    call: impl FnOnce(&AgentHost) -> T + Send + 'static,
) -> T {
    let hosts = hosts.clone();
    tokio::task::spawn_blocking(move || call(&hosts[index]))
        .await
        .unwrap()
}

// Three agents, each with its own dockerd in its own network namespace, reached only through
// their veth pairs: twelve builds spread over them while one agent is killed mid-build, one
// drains on SIGTERM mid-build, and one is cut off mid-build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_in_their_own_namespaces_survive_a_kill_a_drain_and_a_cut() {
    let hosts: Arc<Vec<AgentHost>> = Arc::new(
        tokio::task::spawn_blocking(|| {
            std::thread::scope(|scope| {
                let started: Vec<_> = (1..=3u8)
                    .map(|index| {
                        scope.spawn(move || {
                            let host = AgentHost::start(index);
                            host.load_images(&["slipway/postgres:15", "slipway/debian:bookworm"]);
                            host
                        })
                    })
                    .collect();
                started.into_iter().map(|h| h.join().unwrap()).collect()
            })
        })
        .await
        .unwrap(),
    );
    // A step that takes a while, for an agent to be stopped in the middle of a build.
    let repo = hello_repository();
    let spec = repo.path().join(".slipway.yml");
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "  - name: test\n",
        "  - name: slow\n    image: slipway/debian:bookworm\n    commands:\n      - sleep 8\n\n  - name: test\n",
    );
    std::fs::write(&spec, text).unwrap();
    let head = commit_all(repo.path(), "a slow step");
    let config = format!(
        "max_concurrent_builds = 0\n[agents]\nlease_seconds = 6\n{}",
        hello_config(repo.path())
    );
    let app = TestApp::spawn_at(&config, "0.0.0.0:0").await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let token = agent_token(&app).await;
    let work = tempfile::tempdir().unwrap();
    let start_agent = |index: usize| {
        let host = &hosts[index];
        let name = format!("agent-{}", index + 1);
        let mut command = host.command(Path::new(env!("CARGO_BIN_EXE_slipway")));
        AgentProcess::agent_args(
            &mut command,
            &format!("http://{}:{port}", host.host_ip()),
            &name,
            &work.path().join(&name),
            &host.docker_host(),
        );
        AgentProcess::spawn(command, &token)
    };
    let mut agents: Vec<AgentProcess> = (0..3).map(start_agent).collect();
    let mut pushed = 0;
    for _ in 0..4 {
        push(&app, "main", &head).await;
        pushed += 1;
    }

    // kill -9 of an agent mid-build: the build is queued again and passes on another agent.
    let killed = mid_build_on(
        &app,
        "agent-1",
        &head,
        &mut pushed,
        Duration::from_secs(180),
    )
    .await;
    agents[0].signal("KILL");
    agents[0].wait_exit(Duration::from_secs(10)).await;
    let build = wait_for_build(&app, killed, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(build["attempt"], 2, "{build}");
    assert_ne!(build["agent"], "agent-1", "{build}");
    let attempts: Vec<i64> = build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["attempt"].as_i64().unwrap())
        .collect();
    assert!(attempts.contains(&1) && attempts.contains(&2), "{build}");
    // The agent comes back; at its start it removes what its killed process ran.
    agents[0] = start_agent(0);

    // SIGTERM mid-build: the build finishes there, the agent exits, and takes no new build.
    let drained = mid_build_on(
        &app,
        "agent-2",
        &head,
        &mut pushed,
        Duration::from_secs(180),
    )
    .await;
    let asked_to_drain = chrono::Utc::now();
    agents[1].signal("TERM");
    let status = agents[1].wait_exit(Duration::from_secs(180)).await;
    assert!(status.success(), "{status:?}\n{}", agents[1].log());
    let build = app
        .get_json(&format!("/api/v1/projects/hello/builds/{drained}"))
        .await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(
        (build["agent"].as_str(), build["attempt"].as_i64()),
        (Some("agent-2"), Some(1))
    );

    // Cut off mid-build: the lease expires and the build passes on another agent.
    let cut = mid_build_on(
        &app,
        "agent-3",
        &head,
        &mut pushed,
        Duration::from_secs(180),
    )
    .await;
    on_host(&hosts, 2, AgentHost::cut).await;
    let build = wait_for_build(&app, cut, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(
        (build["agent"].as_str(), build["attempt"].as_i64()),
        (Some("agent-1"), Some(2))
    );
    // Back on the network, it hears that the build is no longer its and stops it.
    on_host(&hosts, 2, AgentHost::restore).await;

    while pushed < 12 {
        push(&app, "main", &head).await;
        pushed += 1;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let finished = loop {
        let all = builds(&app).await;
        if all
            .iter()
            .all(|b| !matches!(b["status"].as_str(), Some("queued" | "running")))
        {
            break all;
        }
        assert!(tokio::time::Instant::now() < deadline, "{all:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(finished.len(), pushed);
    for build in &finished {
        assert_eq!(build["status"], "passed", "{build}");
    }
    for name in ["agent-1", "agent-2", "agent-3"] {
        assert!(
            finished.iter().any(|b| b["agent"] == name),
            "{name} ran none of {finished:?}"
        );
    }
    for build in finished.iter().filter(|b| b["agent"] == "agent-2") {
        let started: chrono::DateTime<chrono::Utc> =
            build["started_at"].as_str().unwrap().parse().unwrap();
        assert!(
            started < asked_to_drain,
            "agent-2 took {build} after SIGTERM"
        );
    }

    // Nothing of those builds remains on any dockerd once the agents are idle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for index in 0..3 {
        loop {
            let left = on_host(&hosts, index, AgentHost::build_leftovers).await;
            if left == (0, 0, 0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent-{} left {left:?}",
                index + 1
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    for index in [0, 2] {
        agents[index].signal("TERM");
        let status = agents[index].wait_exit(Duration::from_secs(60)).await;
        assert!(status.success(), "{}", agents[index].log());
    }
}

// A build whose .slipway.yml asks for labels waits, saying why, until an agent that has them
// takes it: the server (which has none) and an agent with others leave it queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_with_labels_waits_for_an_agent_that_has_them() {
    let repo = hello_repository();
    let spec = repo.path().join(".slipway.yml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("labels:\n  arch: arm64\n{text}")).unwrap();
    let head = commit_all(repo.path(), "arm64 only");
    let app = TestApp::spawn(&hello_config(repo.path())).await;
    let token = agent_token(&app).await;
    let number = push(&app, "main", &head).await;
    let path = format!("/api/v1/projects/hello/builds/{number}");
    let waits = |build: &Value, reason: &str| {
        build["status"] == "queued" && build["reason"].as_str() == Some(reason)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let build = app.get_json(&path).await;
        if waits(
            &build,
            "waits for an agent labelled arch=arm64: no agent is registered",
        ) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let work = tempfile::tempdir().unwrap();
    let spawn_agent = |name: &str, labels: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
        let dir = work.path().join(name);
        let docker_host = "unix:///var/run/docker.sock";
        AgentProcess::agent_args(&mut command, &app.address, name, &dir, docker_host);
        command.args(["--labels", labels]);
        AgentProcess::spawn(command, &token)
    };
    let _other = spawn_agent("amd64-1", "arch=amd64");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while agents(&app).await.iter().all(|a| a["state"] != "idle") {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // What the build says it waits for names the agents there are now.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let build = app.get_json(&path).await;
        if waits(
            &build,
            "waits for an agent labelled arch=arm64; agents: amd64-1 (arch=amd64)",
        ) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.get_json(&path).await["status"], "queued");

    let arm = spawn_agent("arm-1", "arch=arm64,disk=ssd");
    let build = wait_for_build(&app, number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}\n{}", arm.log());
    assert_eq!(build["agent"], "arm-1", "{build}");
}

/// An agent that speaks `/agent/v1` from the test itself, to let leases lapse on purpose.
struct ProbeAgent {
    http: reqwest::Client,
    address: String,
    credential: String,
}

impl ProbeAgent {
    async fn register(app: &TestApp, name: &str) -> ProbeAgent {
        let registered: Value = app
            .http
            .post(format!("{}/api/v1/agents", app.address))
            .bearer_auth(&app.token)
            .json(&json!({"name": name, "capacity": 4, "version": "probe", "host": "test"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ProbeAgent {
            http: app.http.clone(),
            address: app.address.clone(),
            credential: registered["credential"].as_str().unwrap().to_owned(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/agent/v1{path}", self.address))
            .bearer_auth(&self.credential)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Leases a build; its id and attempt.
    async fn lease(&self) -> (String, i64) {
        let response = self.post("/lease", json!({})).await;
        assert_eq!(response.status(), 200);
        let lease: Value = response.json().await.unwrap();
        (
            lease["id"].as_str().unwrap().to_owned(),
            lease["attempt"].as_i64().unwrap(),
        )
    }

    async fn confirm(&self, id: &str, attempt: i64) {
        let confirmed = self
            .post(
                &format!("/builds/{id}/confirm"),
                json!({"attempt": attempt}),
            )
            .await;
        assert_eq!(confirmed.status(), 204);
    }
}

/// Waits until build `number` satisfies `done`; the build.
async fn build_until(app: &TestApp, number: i64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let build = app
            .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
            .await;
        if done(&build) {
            return build;
        }
        assert!(tokio::time::Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

// Leases that lapse: one never confirmed puts the build back as it was; a confirmed one that
// stops being renewed queues the build again once, as attempt 2, whose own lapse errors it;
// and a build that reached packaging is errored at once, its release failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_leases_queue_a_build_again_once_then_error_it() {
    let repo = hello_repository();
    let head = git(repo.path(), &["rev-parse", "HEAD"]);
    let config = format!(
        "max_concurrent_builds = 0\n[agents]\nlease_seconds = 3\n{}",
        hello_config(repo.path())
    );
    let app = TestApp::spawn(&config).await;
    let probe = ProbeAgent::register(&app, "probe").await;
    let number = push(&app, "main", &head).await;

    let (id, attempt) = probe.lease().await;
    assert_eq!(attempt, 1);
    let leased = app
        .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
        .await;
    assert_eq!(
        (leased["status"].as_str(), leased["agent"].as_str()),
        (Some("running"), Some("probe"))
    );
    // Never confirmed: back in the queue as it was.
    let build = build_until(&app, number, |b| b["status"] == "queued").await;
    assert_eq!(
        (build["attempt"].as_i64(), build["agent"].as_str()),
        (Some(1), None)
    );

    // Confirmed, never renewed: queued again as attempt 2.
    let (again, attempt) = probe.lease().await;
    assert_eq!((again.as_str(), attempt), (id.as_str(), 1));
    // A heartbeat between the lease and its confirmation keeps the build the agent's.
    let reply: Value = probe
        .post(
            "/heartbeat",
            json!({"running": [{"id": id, "attempt": 1}], "draining": false}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["stop"], json!([]), "{reply}");
    probe.confirm(&id, 1).await;
    let build = build_until(&app, number, |b| b["attempt"] == 2).await;
    assert_eq!(build["status"], "queued", "{build}");
    assert_eq!(
        build["reason"],
        "attempt 1 was lost with agent probe; queued again"
    );
    let (_, attempt) = probe.lease().await;
    assert_eq!(attempt, 2);
    probe.confirm(&id, 2).await;
    // What the lost attempt still sends is refused.
    let late = probe
        .post(
            &format!("/builds/{id}/steps"),
            json!({"attempt": 1, "position": 0, "name": "migrate", "status": "passed", "exit_code": 0}),
        )
        .await;
    assert_eq!(late.status(), 409);
    let build = build_until(&app, number, |b| b["status"] != "running").await;
    assert_eq!(build["status"], "errored", "{build}");
    assert_eq!(
        build["reason"],
        "agent lost: agent probe stopped answering during attempt 2"
    );

    // Lost while packaging: errored at once, and the release it numbered fails.
    let number = push(&app, "main", &head).await;
    let (id, _) = probe.lease().await;
    probe.confirm(&id, 1).await;
    let slot: Value = probe
        .post(&format!("/builds/{id}/release"), json!({"attempt": 1}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(slot["slot"], "numbered", "{slot}");
    assert_eq!(slot["number"], 1, "{slot}");
    let build = build_until(&app, number, |b| b["status"] != "running").await;
    assert_eq!(build["status"], "errored", "{build}");
    assert_eq!(build["attempt"], 1, "{build}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v1 = app.release("hello", "v1").await;
        if v1["status"] == "failed" {
            assert_eq!(v1["reason"], slipway::releases::INTERRUPTED_REASON, "{v1}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v1}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
