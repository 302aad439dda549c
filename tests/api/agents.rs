//! Build agents: `slipway agent` processes that lease builds from the server and run them on
//! their own dockerd, streaming steps and logs back and uploading the package a passing build
//! makes, which the server checks and publishes.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::builds::{git, hello_config, hello_repository, push, wait_for_build};
use crate::helpers::TestApp;

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

    /// The arguments of an agent of this name dialing `server`, working in `work_dir`.
    pub fn command(server: &str, name: &str, work_dir: &Path, docker_host: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
        command
            .args(["agent", "--server", server, "--token", "-", "--name", name])
            .arg("--work-dir")
            .arg(work_dir)
            .args(["--docker-host", docker_host]);
        command
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
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
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
            std::thread::sleep(Duration::from_millis(200));
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
    let made: Value = app
        .http
        .post(format!("{}/api/v1/tokens", app.address))
        .bearer_auth(&app.token)
        .json(&json!({"name": "agents", "scopes": ["agent"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

// Multi-threaded: the test waits on the agent process while the server must answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_runs_on_an_agent_and_the_server_publishes_the_package_it_uploads() {
    let repo = hello_repository();
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
    let head = git(repo.path(), &["rev-parse", "HEAD"]);
    let number = push(&app, "main", &head).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = app
        .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
        .await;
    assert_eq!(waiting["status"], "queued", "{waiting}");

    let work = tempfile::tempdir().unwrap();
    let docker_host = "unix:///var/run/docker.sock";
    let mut command = AgentProcess::command(&app.address, "builder-1", work.path(), docker_host);
    command.args(["--capacity", "1", "--labels", "arch=amd64,disk=ssd"]);
    let mut agent = AgentProcess::spawn(command, &token);

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

    let listed = agents(&app).await;
    let listed = &listed[0];
    assert_eq!(listed["name"], "builder-1", "{listed}");
    assert_eq!(listed["capacity"], 1);
    assert_eq!(listed["labels"], json!({"arch": "amd64", "disk": "ssd"}));
    assert_eq!(listed["state"], "idle", "{listed}");
    assert_eq!(listed["version"], env!("CARGO_PKG_VERSION"));

    // SIGTERM with nothing running: the agent exits at once, recorded as stopped, and leaves
    // nothing behind.
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert_eq!(agents(&app).await[0]["state"], "stopped");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
    assert_eq!(agent_objects(docker_host, "builder-1"), 0);
    assert!(!agent.log().contains(&token), "the agent logged its token");
}
