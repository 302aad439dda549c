//! Blue/green deployments through the server, against real dockerd: auto-deploy to the first
//! environment, promote, rollback to a warm fleet under load, a release that never turns
//! healthy, the environment lock, unknown releases, and kill -9 of the real binary mid-deploy.
//!
//! Release rows are seeded straight into each test's database as baked, with images built
//! here from `deployer/tests/data/app`, so these tests do not depend on the bake.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use crate::bitbucket::Recorder;
use crate::helpers::{free_port, read_token, test_database, ServerChild, TestApp};
use crate::notify::{slack_env, slack_texts, with_slack};
use crate::tcp_dockerd::TcpDockerd;

/// The app image of `tag`: `v1`, `v2` (answering / with their version) or `bad` (whose
/// /health answers 500).
pub(crate) fn image(tag: &str) -> String {
    format!("slipway-api-test/app:{tag}")
}

/// Builds the app images once per test run, from `slipway/debian:bookworm`, without a pull.
pub(crate) async fn build_images() {
    static BUILT: OnceCell<()> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let context = concat!(env!("CARGO_MANIFEST_DIR"), "/deployer/tests/data/app");
            for (tag, health) in [("v1", "ok"), ("v2", "ok"), ("bad", "fail")] {
                let built = tokio::process::Command::new("docker")
                    .env("DOCKER_BUILDKIT", "0")
                    .args(["build", "-q", "-t", &image(tag)])
                    .args(["--build-arg", &format!("VERSION={tag}")])
                    .args(["--build-arg", &format!("HEALTH={health}")])
                    .arg(context)
                    .output()
                    .await
                    .expect("docker build runs");
                let stderr = String::from_utf8_lossy(&built.stderr);
                assert!(built.status.success(), "docker build of {tag}: {stderr}");
            }
        })
        .await;
}

/// One test's project: a unique name, its environments' ports, and the removal of every
/// container and network it made (by the `slipway.project` label) when dropped.
pub(crate) struct Project {
    pub(crate) name: String,
    pub(crate) ports: Vec<u16>,
}

impl Project {
    pub(crate) async fn new(environments: usize) -> Project {
        build_images().await;
        Project {
            name: format!("d{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            ports: (0..environments).map(|_| free_port()).collect(),
        }
    }

    /// A config with this project and environments `dev` (and `prod`), each with `extra`.
    pub(crate) fn config(&self, extra: &str) -> String {
        let mut text = format!(
            "[[projects]]\nname = \"{0}\"\nrepository = \"acme/{0}\"\nclone_url = \"file:///nonexistent\"\n",
            self.name
        );
        for (name, port) in ["dev", "prod"].iter().zip(&self.ports) {
            text.push_str(&format!(
                "[[projects.environments]]\nname = \"{name}\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:{port}\"\ninstances = 2\n{extra}\n"
            ));
        }
        text
    }

    /// A directory for the real binary (its `slipway.toml` naming a fresh test database and
    /// this project with `extra`), and that database's URL.
    pub(crate) fn server_dir(&self, extra: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let database_url = test_database();
        let config = format!("database_url = \"{database_url}\"\n{}", self.config(extra));
        std::fs::write(dir.path().join("slipway.toml"), config).unwrap();
        (dir, database_url)
    }

    pub(crate) fn url(&self, environment: usize) -> String {
        format!("http://127.0.0.1:{}/", self.ports[environment])
    }

    /// The releases of this project's running containers, one entry per container.
    pub(crate) fn running_releases(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "--format", "{{.Label \"slipway.release\"}}"])
            .args(["--filter", "label=slipway.role=instance"])
            .args(["--filter", &format!("label=slipway.project={}", self.name)])
            .output()
            .unwrap();
        let mut releases: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        releases.sort();
        releases
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let label = format!("label=slipway.project={}", self.name);
        for (kind, list) in [("container", "ps"), ("network", "network")] {
            let mut args = vec![list];
            if list == "network" {
                args.push("ls");
            } else {
                args.push("-a");
            }
            let out = Command::new("docker")
                .args(&args)
                .args(["-q", "--filter", &label])
                .output()
                .unwrap();
            let ids = String::from_utf8_lossy(&out.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let remove: &[&str] = if kind == "container" {
                    &["rm", "-f"]
                } else {
                    &["network", "rm"]
                };
                let _ = Command::new("docker").args(remove).args(&ids).output();
            }
        }
    }
}

/// Seeds release `number` of `project`, baked into `image` when `baked`.
pub(crate) async fn insert_release(
    database_url: &str,
    project: &str,
    number: i64,
    image: &str,
    baked: bool,
) {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let build = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO builds (id, project, number, branch, commit, event, status)
             VALUES ($1, $2, $3, 'main', 'abc123', 'push', 'passed')",
            &[&build, &project, &number],
        )
        .await
        .unwrap();
    let bake_status = if baked { "baked" } else { "failed" };
    let image = baked.then_some(image);
    client
        .execute(
            "WITH r AS (INSERT INTO releases (id, project, number, build_id, commit, status, bake_status, image)
             VALUES ($1, $2, $3, $4, 'abc123', 'published', $5, $6)
             RETURNING id, bake_status, image)
             INSERT INTO release_images (release_id, kind, status, image)
             SELECT id, 'docker', bake_status, image FROM r",
            &[&uuid::Uuid::new_v4(), &project, &number, &build, &bake_status, &image],
        )
        .await
        .unwrap();
}

/// A client of one server's API.
#[derive(Clone)]
pub(crate) struct Api {
    address: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// A client of the server at `address` (`http://host:port`) with `token`.
    pub(crate) fn at(address: &str, token: &str) -> Api {
        Api {
            address: address.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn of(app: &TestApp) -> Api {
        Api {
            address: app.address.clone(),
            token: app.token.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn environment(&self, project: &str, name: &str) -> Value {
        let url = format!("{}/api/v1/projects/{project}/environments", self.address);
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let environments: Vec<Value> = response.json().await.unwrap();
        environments
            .into_iter()
            .find(|e| e["name"] == name)
            .expect("the environment is listed")
    }

    /// Waits until `check` holds for the environment, for at most `limit`.
    pub(crate) async fn wait_for(
        &self,
        project: &str,
        name: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let environment = self.environment(project, name).await;
            if check(&environment) {
                return environment;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting: {environment:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn wait_live(&self, project: &str, name: &str, release: &str) -> Value {
        self.wait_for(project, name, Duration::from_secs(90), |e| {
            e["live"]["release"] == release && e["busy"].is_null()
        })
        .await
    }

    /// `GET /api/v1<path>`, which must answer 200 with JSON.
    pub(crate) async fn get(&self, path: &str) -> Value {
        let url = format!("{}/api/v1{path}", self.address);
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// Posts an operation; its status and body (the whole event stream when accepted).
    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, String) {
        let url = format!("{}/api/v1{path}", self.address);
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub(crate) async fn deployment(&self, project: &str, id: &str) -> Value {
        let url = format!(
            "{}/api/v1/projects/{project}/deployments/{id}",
            self.address
        );
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

/// The data of each event in a server-sent event stream.
pub(crate) fn events(stream: &str) -> Vec<Value> {
    stream
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| serde_json::from_str(data.trim()).expect("events carry JSON"))
        .collect()
}

/// Requests to an environment's listener in a loop until stopped: what each answered.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Result<String, String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub(crate) fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (stopped, answered) = (stop.clone(), answers.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stopped.load(Ordering::SeqCst) {
                let answer = match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        Ok(r.text().await.unwrap_or_default().trim().to_owned())
                    }
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                };
                answered.lock().unwrap().push(answer);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Load {
            stop,
            answers,
            task,
        }
    }

    pub(crate) async fn stop(self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let answers = self.answers.lock().unwrap().clone();
        answers
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baked_release_reaches_dev_by_itself_and_promote_takes_it_to_prod() {
    let project = Project::new(2).await;
    let app = TestApp::spawn(&project.config("watch = \"1s\"")).await;
    let api = Api::of(&app);
    let name = project.name.clone();
    insert_release(&app.database_url, &name, 1, &image("v1"), true).await;
    api.wait_live(&name, "dev", "v1").await;
    assert_eq!(
        reqwest::get(project.url(0))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "v1\n"
    );

    let args = [
        "promote",
        "--env",
        "prod",
        "--server",
        &app.address,
        "--token",
        &app.token,
        "--project",
        &name,
    ]
    .map(str::to_owned);
    let promoted = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&promoted.stdout);
    let stderr = String::from_utf8_lossy(&promoted.stderr);
    assert!(promoted.status.success(), "{stdout}\n{stderr}");
    for step in ["launching", "waiting_healthy", "switching", "watching"] {
        assert!(
            stdout.contains(&format!("v1 {step} done in ")),
            "{step}:\n{stdout}"
        );
    }
    assert!(stdout.contains("v1 is live in prod"), "{stdout}");
    assert_eq!(
        reqwest::get(project.url(1))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "v1\n"
    );

    let prod = api.environment(&name, "prod").await;
    assert_eq!(prod["live"]["release"], "v1");
    assert_eq!(prod["health"]["healthy"], 2, "{prod:#}");
    let id = prod["deployments"][0]["id"].as_str().unwrap();
    let deployment = api.deployment(&name, id).await;
    let steps = deployment["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["step"] == "launching" && s["elapsed_ms"].is_number()),
        "{deployment:#}"
    );
    assert!(steps.iter().all(|s| s["error"].is_null()), "{deployment:#}");

    let args = [
        "status",
        "--server",
        &app.address,
        "--token",
        &app.token,
        "--project",
        &name,
    ]
    .map(str::to_owned);
    let status = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{stdout}");
    assert!(stdout.contains("prod (docker): live v1"), "{stdout}");
    assert!(stdout.contains("2/2 healthy"), "{stdout}");
    app.stop().await;
}

#[tokio::test]
async fn rollback_to_the_warm_fleet_is_a_switch_without_failed_requests() {
    let project = Project::new(1).await;
    let app = TestApp::spawn(&project.config("watch = \"1s\"")).await;
    let api = Api::of(&app);
    let name = project.name.clone();
    insert_release(&app.database_url, &name, 1, &image("v1"), true).await;
    api.wait_live(&name, "dev", "v1").await;
    insert_release(&app.database_url, &name, 2, &image("v2"), true).await;
    api.wait_live(&name, "dev", "v2").await;
    assert_eq!(
        project.running_releases(),
        ["v1", "v1", "v2", "v2"],
        "v1 is kept warm"
    );

    let load = Load::start(project.url(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = format!("/projects/{name}/environments/dev/rollback");
    let started = Instant::now();
    let (status, stream) = api.post(&path, json!({ "to": "v1" })).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answers = load.stop().await;

    assert_eq!(status, 200, "{stream}");
    let events = events(&stream);
    let last = events.last().unwrap();
    assert_eq!(last["event"], "finished", "{stream}");
    assert_eq!(last["deployment"]["kind"], "switch_back");
    assert_eq!(last["deployment"]["state"], "retaining_blue");
    assert!(
        !events.iter().any(|e| e["step"] == "launching"),
        "no launch: {stream}"
    );
    assert!(
        took < Duration::from_secs(10),
        "a switch, not a deploy: {took:?}"
    );
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(answers.len() > 20, "the load ran: {}", answers.len());
    assert_eq!(answers.last().unwrap().as_deref(), Ok("v1"));
    assert_eq!(api.environment(&name, "dev").await["live"]["release"], "v1");
    app.stop().await;
}

#[tokio::test]
async fn a_release_that_never_turns_healthy_gets_no_traffic_and_holds_the_lock_meanwhile() {
    let project = Project::new(1).await;
    let recorder = Recorder::start().await;
    let (var, url) = slack_env(&recorder);
    let app = TestApp::spawn_with_env(
        &with_slack(
            &project.config("watch = \"1s\"\nhealth_timeout = \"8s\""),
            &["deploy_failed"],
        ),
        test_database(),
        &[(var, &url)],
    )
    .await;
    let api = Api::of(&app);
    let name = project.name.clone();
    insert_release(&app.database_url, &name, 1, &image("v1"), true).await;
    api.wait_live(&name, "dev", "v1").await;

    let load = Load::start(project.url(0));
    insert_release(&app.database_url, &name, 2, &image("bad"), true).await;
    api.wait_for(&name, "dev", Duration::from_secs(30), |e| {
        e["deployments"][0]["release"] == "v2" && e["busy"].is_object()
    })
    .await;
    let path = format!("/projects/{name}/environments/dev/promote");
    let (status, body) = api.post(&path, json!({ "release": "v1" })).await;
    assert_eq!(status, 409, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("deploying v2"),
        "{body}"
    );
    let this_server = api.get("/servers").await["answered_by"].clone();
    assert_eq!(body["holder"]["owner"], this_server, "{body}");
    assert!(body["holder"]["acquired_at"].is_string(), "{body}");

    let dev = api
        .wait_for(&name, "dev", Duration::from_secs(60), |e| {
            e["deployments"][0]["state"] == "failed"
        })
        .await;
    let answers = load.stop().await;
    let reason = dev["deployments"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("not healthy"), "{reason}");
    assert_eq!(dev["live"]["release"], "v1");
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok("v1")),
        "only v1 served"
    );
    assert_eq!(
        project.running_releases(),
        ["v1", "v1"],
        "the bad fleet is gone"
    );
    // One Slack message, with the reason and a link to the deployment.
    let texts = slack_texts(&recorder, 1).await;
    let deployment = dev["deployments"][0]["id"].as_str().unwrap();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].starts_with(&format!("{name} v2 failed to deploy to dev (by Slipway): "))
            && texts[0].contains("not healthy")
            && texts[0].ends_with(&format!(
                "/api/v1/projects/{name}/deployments/{deployment}|details>"
            )),
        "{}",
        texts[0]
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_or_unbaked_release_is_refused_with_the_deployable_ones() {
    let project = Project::new(2).await;
    let app = TestApp::spawn(&project.config("")).await;
    let api = Api::of(&app);
    let name = project.name.clone();
    insert_release(&app.database_url, &name, 1, &image("v1"), true).await;
    insert_release(&app.database_url, &name, 2, &image("v2"), false).await;
    let path = format!("/projects/{name}/environments/prod/promote");
    for release in ["v2", "v9", "latest"] {
        let (status, body) = api.post(&path, json!({ "release": release })).await;
        assert_eq!(status, 404, "{release}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["deployable"], json!(["v1"]), "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("deployable releases: v1"),
            "{body}"
        );
    }
    let (status, body) = api
        .post(
            &format!("/projects/{name}/environments/dev/promote"),
            json!({}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("first environment"), "{body}");
    let (status, body) = api
        .post(
            &format!("/projects/{name}/environments/qa/rollback"),
            json!({ "to": "v1" }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("environments: dev, prod"), "{body}");
    app.stop().await;
}

/// The real binary in `dir` (reading its slipway.toml); killed when dropped.
pub(crate) struct Server {
    pub(crate) server: ServerChild,
    pub(crate) api: Api,
}

impl Server {
    pub(crate) fn start(dir: &Path) -> Server {
        Server::start_with_token(dir, None)
    }

    /// Another server of an installation whose token is `token`: its slipway.toml in `dir`
    /// names the installation's database.
    pub(crate) fn start_beside(dir: &Path, token: &str) -> Server {
        Server::start_with_token(dir, Some(token))
    }

    fn start_with_token(dir: &Path, token: Option<&str>) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
        command
            .args(["server", "--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env_remove("SLIPWAY_DATABASE_URL");
        let server = ServerChild::spawn(command);
        let api = Api {
            address: server.address.clone(),
            token: token.map_or_else(|| read_token(&dir.join(".slipway")), str::to_owned),
            http: reqwest::Client::new(),
        };
        Server { server, api }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_launch_and_switch_then_restart_finishes_with_only_the_live_fleet() {
    let project = Project::new(1).await;
    let (dir, database_url) = project.server_dir("watch = \"1s\"\nretention = \"0s\"");
    let name = project.name.clone();

    let first = Server::start(dir.path());
    insert_release(&database_url, &name, 1, &image("v1"), true).await;
    first.api.wait_live(&name, "dev", "v1").await;
    insert_release(&database_url, &name, 2, &image("v2"), true).await;
    first
        .api
        .wait_for(&name, "dev", Duration::from_secs(30), |e| {
            e["deployments"][0]["release"] == "v2"
                && ["launching", "waiting_healthy"]
                    .contains(&e["deployments"][0]["state"].as_str().unwrap_or(""))
        })
        .await;
    first.server.kill_9(); // kill -9 with green launched (or launching) and traffic still on v1

    let second = Server::start(dir.path());
    let dev = second
        .api
        .wait_for(&name, "dev", Duration::from_secs(90), |e| {
            let state = e["deployments"][0]["state"].as_str().unwrap_or("");
            ["succeeded", "rolled_back", "failed"].contains(&state) && e["busy"].is_null()
        })
        .await;
    let live = dev["live"]["release"].as_str().unwrap().to_owned();
    assert_eq!(dev["deployments"][0]["state"], "succeeded", "{dev:#}");
    assert_eq!(live, "v2");
    let body = reqwest::get(project.url(0))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), live);
    assert_eq!(
        project.running_releases(),
        [live.clone(), live],
        "only the live fleet runs"
    );
    drop(second);
}

#[tokio::test]
async fn a_lock_held_by_another_live_server_refuses_with_its_holder_until_that_server_dies() {
    let project = Project::new(2).await;
    let app = TestApp::spawn(&project.config("")).await;
    let api = Api::of(&app);
    let name = project.name.clone();
    insert_release(&app.database_url, &name, 1, &image("v1"), true).await;
    let (client, connection) = tokio_postgres::connect(&app.database_url, NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Another server of the installation, heartbeating elsewhere.
    let other = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO servers (id, host, pid, process_space, version, listen)
             VALUES ($1, 'elsewhere', 1, 'another boot', '0', '10.0.0.2:8080')",
            &[&other],
        )
        .await
        .unwrap();
    let owner = other.to_string();
    // The server's own recovery at start holds the lock for a moment: take it once it is free.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client
        .execute(
            "INSERT INTO environment_locks (project, environment, owner, acquired_at, heartbeat_at, ttl_ms)
             VALUES ($1, 'prod', $2, now() - interval '1 minute', now(), 600000)
             ON CONFLICT DO NOTHING",
            &[&name, &owner],
        )
        .await
        .unwrap()
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the lock never came free");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And its busy mark ends right after it lets the lock go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let path = format!("/projects/{name}/environments/prod/promote");
    let (status, body) = api.post(&path, json!({ "release": "v1" })).await;
    assert_eq!(status, 409, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["holder"]["owner"], owner.as_str(), "{body}");
    assert!(body["holder"]["acquired_at"].is_string(), "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("locked by {owner} since")),
        "{body}"
    );
    let prod = api.environment(&name, "prod").await;
    assert_eq!(prod["lock"]["owner"], owner.as_str());
    assert!(prod["live"].is_null(), "nothing ran: {prod:#}");
    let servers = api.get("/servers").await;
    let listed = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == owner.as_str())
        .unwrap_or_else(|| panic!("{servers:#}"));
    assert_eq!(listed["live"], true);
    assert_eq!(listed["running"][0]["environment"], "prod", "{servers:#}");

    // The other server stopped heartbeating: its lock, fresh as it is, is taken over.
    client
        .execute(
            "UPDATE servers SET heartbeat_at = now() - interval '1 minute' WHERE id = $1",
            &[&other],
        )
        .await
        .unwrap();
    let (status, stream) = api.post(&path, json!({ "release": "v1" })).await;
    assert_eq!(status, 200, "{stream}");
    let last = events(&stream).pop().unwrap();
    assert_eq!(last["deployment"]["release"], "v1", "{stream}");
    let state = last["deployment"]["state"].as_str().unwrap();
    assert!(["retaining_blue", "succeeded"].contains(&state), "{stream}");
    let prod = api.environment(&name, "prod").await;
    assert_eq!(prod["live"]["release"], "v1");
    assert!(
        prod["lock"].is_null(),
        "released after the deployment: {prod:#}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_on_a_docker_host_reached_over_tcp_is_deployed_through_its_api() {
    let project = Project::new(2).await;
    let tcp = TcpDockerd::start();
    // prod, the last section, names its docker host.
    let config = format!(
        "{}docker_host = \"{}\"\n",
        project.config("watch = \"1s\""),
        tcp.address
    );
    let app = TestApp::spawn(&config).await;
    let api = Api::of(&app);
    let name = project.name.clone();
    insert_release(&app.database_url, &name, 1, &image("v1"), true).await;
    api.wait_live(&name, "dev", "v1").await;
    let (status, stream) = api
        .post(
            &format!("/projects/{name}/environments/prod/promote"),
            json!({ "release": "v1" }),
        )
        .await;
    assert_eq!(status, 200, "{stream}");
    let prod = api.wait_live(&name, "prod", "v1").await;
    assert_eq!(prod["load_balancer"]["state"], "running", "{prod:#}");
    assert!(
        prod["load_balancer"]["stats"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["name"] == "FRONTEND"),
        "{prod:#}"
    );
    assert_eq!(prod["health"]["healthy"], 2, "{prod:#}");
    let body = reqwest::get(project.url(1))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), "v1");
    let container = prod["load_balancer"]["container"]
        .as_str()
        .unwrap()
        .to_owned();
    let mounts = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Type}}{{end}}",
            &container,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mounts.stdout).trim(), "volume");
    app.stop().await;
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    let _ = Command::new("docker")
        .args(["volume", "rm", "-f", &container])
        .output();
}
