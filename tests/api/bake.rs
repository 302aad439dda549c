//! The whole chain on its own: a passing push on the deploy branch is packaged, published and
//! baked (real Packer, Ansible and dockerd) into an image that runs the release; a bake that
//! Ansible fails leaves the build passed, the release published, its log, and nothing in Docker;
//! a rebake bakes a release again, without its checkout, into a new image.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bitbucket::Recorder;
use crate::builds::{commit_all, git, hello_config, hello_repository, push, wait_for_build};
use crate::helpers::{free_port, test_database, ServerChild, TestApp};
use crate::notify::{slack_env, slack_texts, with_slack};

pub const BUILD_AND_BAKE: Duration = Duration::from_secs(900);

/// Removes, on drop (panics included), the images the test's releases were baked into, the
/// containers it ran from them, and the containers of bakes a failed test left running.
pub struct Cleanup {
    label: String,
    pub bake_ids: Vec<String>,
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup {
            label: format!("slipway.test=bake-{}", uuid::Uuid::new_v4().simple()),
            bake_ids: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let containers = docker(&["ps", "-aq", "--filter", &format!("label={}", self.label)]).1;
        for id in containers.split_whitespace() {
            docker(&["rm", "-f", id]);
        }
        // Newest first: an incremental image is the child of the one before.
        for bake_id in self.bake_ids.iter().rev() {
            // A bake a failed test left running (a server dropped mid-bake).
            let containers = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=slipway.bake={bake_id}"),
            ])
            .1;
            for id in containers.split_whitespace() {
                docker(&["rm", "-f", id]);
            }
            let images = docker(&[
                "images",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label=slipway.baked-by={bake_id}"),
            ])
            .1;
            for id in images.split_whitespace() {
                docker(&["rmi", "-f", id]);
            }
        }
    }
}

pub fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Runs `image` as the deployer would (host network, `PORT` set) and returns its `GET /` body.
fn run_and_ask(cleanup: &Cleanup, image: &str) -> String {
    let port = free_port();
    let (ok, container) = docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "-e",
        &format!("PORT={port}"),
        "--label",
        &cleanup.label,
        image,
    ]);
    assert!(ok, "docker run {image}: {container}");
    let container = container.trim().to_string();
    let started = Instant::now();
    let body = loop {
        if let Some(body) = http_get(port) {
            break body;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let logs = docker(&["logs", &container]).1;
            panic!("{image} did not answer on port {port}: {logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    docker(&["rm", "-f", &container]);
    body
}

fn http_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// `slipway/hello-<8 hex>:v<n>`, the per-server image name.
fn assert_image_name(image: &str, version: &str) {
    let (repository, tag) = image.split_once(':').unwrap();
    let suffix = repository.strip_prefix("slipway/hello-").unwrap_or("");
    assert!(
        suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit()) && tag == version,
        "unexpected image name {image}"
    );
}

// Multi-threaded: the test blocks on docker and the CLI while the server must answer them.
/// The app for `repo`, telling Slack (the recorder) of each release baked or failing to bake.
async fn spawn_with_slack(repo: &std::path::Path) -> (TestApp, Recorder) {
    let recorder = Recorder::start().await;
    let (var, url) = slack_env(&recorder);
    let app = TestApp::spawn_with_env(
        &with_slack(&hello_config(repo), &["baked", "bake_failed"]),
        test_database(),
        &[(var, &url)],
    )
    .await;
    (app, recorder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_push_is_baked_into_an_image_that_runs_it_and_the_next_bakes_incrementally() {
    let mut cleanup = Cleanup::new();
    let repo = hello_repository();
    let (app, recorder) = spawn_with_slack(repo.path()).await;
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    let started = Instant::now();
    let build = wait_for_build(&app, push(&app, "main", &first).await, BUILD_AND_BAKE).await;
    eprintln!(
        "build, publish and full bake of v1: {:?}",
        started.elapsed()
    );
    assert_eq!(build["status"], "passed", "{build}");

    let v1 = app.wait_for_bake("hello", "v1").await;
    cleanup
        .bake_ids
        .push(v1["bake_id"].as_str().unwrap().to_string());
    let log = app.bake_log("hello", "v1").await;
    assert_eq!(v1["status"], "published", "{v1}");
    assert_eq!(v1["bake_status"], "baked", "{v1}\n{log}");
    let image = v1["image"].as_str().unwrap();
    assert_image_name(image, "v1");
    assert_eq!(
        docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .1
            .trim(),
        v1["image_id"].as_str().unwrap()
    );
    // The release lists its one image by kind: the Docker image, no AMI (no aws environment).
    assert_eq!(
        v1["images"],
        serde_json::json!([{"kind": "docker", "id": v1["image_id"], "name": image,
            "status": "baked", "reason": null, "bake_key": v1["bake_key"],
            "baked_at": v1["baked_at"]}]),
        "{v1}"
    );
    assert!(
        log.contains("full bake from slipway/debian:bookworm"),
        "{log}"
    );
    assert!(
        log.contains("TASK [slipway : Install exactly hello=1]"),
        "{log}"
    );
    let answer = run_and_ask(&cleanup, image);
    assert!(answer.contains("\"version\": \"v1\""), "{answer}");

    std::fs::write(repo.path().join("CHANGES"), "second release\n").unwrap();
    let second = commit_all(repo.path(), "second");
    let started = Instant::now();
    let build = wait_for_build(&app, push(&app, "main", &second).await, BUILD_AND_BAKE).await;
    eprintln!(
        "build, publish and incremental bake of v2: {:?}",
        started.elapsed()
    );
    assert_eq!(build["status"], "passed", "{build}");
    let v2 = app.wait_for_bake("hello", "v2").await;
    cleanup
        .bake_ids
        .push(v2["bake_id"].as_str().unwrap().to_string());
    let log = app.bake_log("hello", "v2").await;
    assert_eq!(v2["bake_status"], "baked", "{v2}\n{log}");
    let image2 = v2["image"].as_str().unwrap();
    assert_image_name(image2, "v2");
    assert!(
        log.contains(&format!("incremental bake from {image}")),
        "{log}"
    );
    let answer = run_and_ask(&cleanup, image2);
    assert!(answer.contains("\"version\": \"v2\""), "{answer}");
    // One Slack message per baked release, naming its image.
    let texts = slack_texts(&recorder, 2).await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    for (text, image) in texts.iter().zip([image, image2]) {
        assert!(
            text.contains(&format!("baked: docker image {image} <"))
                && text.contains("/api/v1/projects/hello/releases|details>"),
            "{text}"
        );
    }

    // The CLI lists each release's image.
    let listed = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["releases", "--server", &app.address, "--token", &app.token])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.contains("IMAGE") && table.contains(image) && table.contains(image2),
        "{table}"
    );
    app.stop().await;
}

async fn post_rebake(app: &TestApp, version: &str) -> (u16, Value) {
    let response = app
        .http
        .post(format!(
            "{}/api/v1/projects/hello/releases/{version}/rebake",
            app.address
        ))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebake_bakes_a_release_again_without_its_checkout_into_a_new_image() {
    let mut cleanup = Cleanup::new();
    let repo = hello_repository();
    let app = TestApp::spawn(&hello_config(repo.path())).await;
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    let build = wait_for_build(&app, push(&app, "main", &commit).await, BUILD_AND_BAKE).await;
    assert_eq!(build["status"], "passed", "{build}");
    let v1 = app.wait_for_bake("hello", "v1").await;
    cleanup
        .bake_ids
        .push(v1["bake_id"].as_str().unwrap().to_string());
    assert_eq!(v1["bake_status"], "baked", "{v1}");
    let first_id = v1["image_id"].as_str().unwrap().to_string();

    // Unknown releases: a 404 that names the releases that can be rebaked.
    let (status, body) = post_rebake(&app, "v7").await;
    assert_eq!(status, 404, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("v7") && message.contains("can be rebaked: v1"),
        "{message}"
    );

    // The checkout is long gone; the rebake runs from what the first bake recorded.
    let started = Instant::now();
    let (status, body) = post_rebake(&app, "v1").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["version"], "v1", "{body}");
    // Queued like any bake: the bake queue takes it from there.
    assert_eq!(body["bake_status"], "queued", "{body}");
    // A second rebake while the first is queued or runs is refused.
    let (status, body) = post_rebake(&app, "v1").await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("is baking") || error.contains("is queued to bake"),
        "{body}"
    );

    let v1 = app.wait_for_bake("hello", "v1").await;
    eprintln!("rebake of v1: {:?}", started.elapsed());
    let log = app.bake_log("hello", "v1").await;
    assert_eq!(v1["bake_status"], "baked", "{v1}\n{log}");
    assert!(log.contains("rebake requested"), "{log}");
    assert!(!log.contains("reusing"), "{log}");
    assert!(
        log.contains("TASK [slipway : Install exactly hello=1]"),
        "{log}"
    );
    let image = v1["image"].as_str().unwrap();
    assert_image_name(image, "v1");
    let second_id = v1["image_id"].as_str().unwrap();
    assert_ne!(second_id, first_id, "the rebake recorded the old image");
    assert_eq!(
        docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .1
            .trim(),
        second_id
    );
    let answer = run_and_ask(&cleanup, image);
    assert!(answer.contains("\"version\": \"v1\""), "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bake_ansible_fails_leaves_the_build_passed_the_release_published_and_nothing_behind() {
    let mut cleanup = Cleanup::new();
    let repo = hello_repository();
    let spec = std::fs::read_to_string(repo.path().join(".slipway.yml")).unwrap();
    let broken = spec.replace(
        "depends: [python3]",
        "depends: [python3, no-such-package-slipway]",
    );
    assert_ne!(spec, broken);
    std::fs::write(repo.path().join(".slipway.yml"), broken).unwrap();
    let commit = commit_all(repo.path(), "depend on a package that does not exist");
    let (app, recorder) = spawn_with_slack(repo.path()).await;
    let build = wait_for_build(&app, push(&app, "main", &commit).await, BUILD_AND_BAKE).await;
    assert_eq!(build["status"], "passed", "{build}");

    let v1 = app.wait_for_bake("hello", "v1").await;
    let bake_id = v1["bake_id"].as_str().unwrap().to_string();
    cleanup.bake_ids.push(bake_id.clone());
    let log = app.bake_log("hello", "v1").await;
    assert_eq!(v1["status"], "published", "{v1}");
    assert_eq!(v1["bake_status"], "failed", "{v1}\n{log}");
    assert_eq!(v1["image"], Value::Null, "{v1}");
    assert_eq!(v1["images"][0]["status"], "failed", "{v1}");
    assert_eq!(v1["images"][0]["id"], Value::Null, "{v1}");
    let reason = v1["bake_reason"].as_str().unwrap();
    assert_eq!(v1["images"][0]["reason"], reason, "{v1}");
    assert!(
        reason.contains("fatal: [default]: FAILED!") && reason.contains("hello=1"),
        "{reason}"
    );
    assert!(log.contains("no-such-package-slipway"), "{log}");
    // One Slack message, with the reason and a link to the bake's log.
    let texts = slack_texts(&recorder, 1).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].starts_with("hello v1: the docker bake failed: ")
            && texts[0].contains("hello=1")
            && texts[0]
                .ends_with("/api/v1/projects/hello/releases/v1/bake-log?kind=docker|details>"),
        "{}",
        texts[0]
    );

    let (ok, containers) = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=slipway.bake={bake_id}"),
    ]);
    assert!(
        ok && containers.trim().is_empty(),
        "containers left: {containers}"
    );
    let (ok, images) = docker(&[
        "images",
        "-q",
        "--filter",
        &format!("label=slipway.baked-by={bake_id}"),
    ]);
    assert!(ok && images.trim().is_empty(), "images left: {images}");
    app.stop().await;
}

/// `slipway server` (the real binary) in `dir`, killed with SIGKILL on drop.
pub(crate) struct ServerProcess {
    server: ServerChild,
}

impl ServerProcess {
    pub(crate) fn start(dir: &std::path::Path) -> ServerProcess {
        ServerProcess::start_at(dir, "127.0.0.1:0")
    }

    /// Listening on `listen`: a restarted server keeps its address (and so its bake keys,
    /// which cover the repository's URL).
    pub(crate) fn start_at(dir: &std::path::Path, listen: &str) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
        command
            .args(["server", "--listen", listen])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env_remove("SLIPWAY_DATABASE_URL");
        ServerProcess {
            server: ServerChild::spawn(command),
        }
    }

    pub(crate) fn address(&self) -> &str {
        &self.server.address
    }

    /// kill -9, leaving the bake it was running for the next start.
    pub(crate) fn kill_9(self) {
        self.server.kill_9();
    }

    /// Release v1 of project hello once its bake ended, at most [`BUILD_AND_BAKE`] after
    /// `since`.
    pub(crate) async fn v1_when_baked(&self, token: &str, since: Instant) -> Value {
        loop {
            let v1 = self.releases(token).await[0].clone();
            if !matches!(v1["bake_status"].as_str(), Some("queued" | "baking")) {
                return v1;
            }
            assert!(
                since.elapsed() < BUILD_AND_BAKE,
                "the bake never ended: {v1}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) async fn releases(&self, token: &str) -> Value {
        self.get(token, "/api/v1/projects/hello/releases").await
    }

    pub(crate) async fn get(&self, token: &str, path: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.server.address))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}
