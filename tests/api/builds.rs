//! A push becomes a real build: examples/hello cloned at the pushed commit, its pipeline run
//! against dockerd with the Postgres sidecar, steps and logs recorded, live logs streamed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{project_config, sign, TestApp};

const SECRET: &str = "hello-secret";

/// A git repository holding a copy of examples/hello; returns its directory.
pub fn hello_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let status = Command::new("cp")
        .arg("-a")
        .arg(example.join("."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit_all(dir.path(), "hello");
    dir
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.test"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A Bitbucket Cloud push of `commit` on `branch`.
pub fn push_body(repository: &str, branch: &str, commit: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "repository": {"full_name": repository},
        "push": {"changes": [{"old": null, "new": {"type": "branch", "name": branch, "target": {"hash": commit}}}]}
    }))
    .unwrap()
}

/// Pushes `commit` on `branch` of `repository` (signed with `secret`) to the server at
/// `address`; the number of the build it queued.
pub(crate) async fn push_queued(
    address: &str,
    (repository, secret): (&str, &str),
    branch: &str,
    commit: &str,
) -> i64 {
    let body = push_body(repository, branch, commit);
    let response = reqwest::Client::new()
        .post(format!("{address}/hooks/bitbucket"))
        .header("X-Event-Key", "repo:push")
        .header("X-Hub-Signature", sign(secret, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    answer["queued"][0]["number"]
        .as_i64()
        .expect("a build was queued")
}

/// Pushes `commit` of main to project hello of the real binary listening at `address`.
pub async fn push_to(address: &str, commit: &str) {
    let body = push_body("acme/hello", "main", commit);
    let queued = reqwest::Client::new()
        .post(format!("{address}/hooks/bitbucket"))
        .header("X-Event-Key", "repo:push")
        .header("X-Hub-Signature", sign("hello-secret", &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 202);
}

pub async fn push(app: &TestApp, branch: &str, commit: &str) -> i64 {
    let body = push_body("acme/hello", branch, commit);
    let response = app
        .post_hook("repo:push", &body, Some(&sign(SECRET, &body)), None)
        .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    answer["queued"][0]["number"]
        .as_i64()
        .expect("a build was queued")
}

pub async fn wait_for_build(app: &TestApp, number: i64, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let build = app
            .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
            .await;
        let status = build["status"].as_str().unwrap().to_string();
        if !matches!(status.as_str(), "queued" | "running") {
            return build;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "build {number} still {status} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn hello_config(repo: &Path) -> String {
    project_config(
        "acme/hello",
        SECRET,
        &format!("file://{}", repo.display()),
        "^main$",
    )
}

fn step<'a>(build: &'a Value, name: &str) -> &'a Value {
    build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("step {name} in {build}"))
}

fn docker_leftovers(build_id: &str) -> String {
    let label = format!("label=slipway.build={}", build_id.replace('-', ""));
    let mut found = String::new();
    for kind in [
        &["ps", "-aq"][..],
        &["network", "ls", "-q"],
        &["volume", "ls", "-q"],
    ] {
        let output = Command::new("docker")
            .args(kind)
            .args(["--filter", &label])
            .output()
            .unwrap();
        found.push_str(String::from_utf8_lossy(&output.stdout).trim());
    }
    found
}

#[tokio::test]
async fn a_push_runs_the_pipeline_with_its_sidecar_and_records_steps_and_logs() {
    let repo = hello_repository();
    let app = TestApp::spawn(&hello_config(repo.path())).await;
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    let number = push(&app, "main", &commit).await;

    // Follow the log live while the build runs.
    let follow = app
        .get(&format!(
            "/api/v1/projects/hello/builds/{number}/logs?follow=true"
        ))
        .await;
    assert_eq!(follow.status(), 200);
    let streamed = tokio::time::timeout(Duration::from_secs(300), follow.text())
        .await
        .expect("the stream ends with the build")
        .unwrap();

    let build = wait_for_build(&app, number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(build["commit"], commit);
    assert_eq!(step(&build, "migrate")["status"], "passed");
    assert_eq!(step(&build, "test")["status"], "passed");
    assert_eq!(step(&build, "notify-failure")["status"], "skipped");
    assert!(step(&build, "test")["duration_ms"].as_i64().unwrap() > 0);

    let lines: Vec<Value> = app
        .get_json(&format!("/api/v1/projects/hello/builds/{number}/logs"))
        .await
        .as_array()
        .unwrap()
        .clone();
    let text: Vec<&str> = lines.iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert!(
        text.iter()
            .any(|l| l.contains("applying migrations/002_create_visits.sql")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|l| l.starts_with("OK")),
        "the unittest summary is in the log: {text:?}"
    );
    assert!(
        streamed.contains("applying migrations/001_create_greetings.sql"),
        "live stream carried the lines"
    );
    assert!(streamed.contains("event: end"), "{streamed}");
    assert!(streamed.contains("\"status\":\"passed\""), "{streamed}");

    assert_eq!(
        docker_leftovers(build["id"].as_str().unwrap()),
        "",
        "teardown removed everything"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failing_test_fails_the_build_and_runs_the_failure_step() {
    let repo = hello_repository();
    std::fs::write(
        repo.path().join("tests/test_broken.py"),
        "import unittest\n\nclass Broken(unittest.TestCase):\n    def test_fails(self):\n        self.assertEqual(1, 2)\n",
    )
    .unwrap();
    let commit = commit_all(repo.path(), "a failing test");
    let app = TestApp::spawn(&hello_config(repo.path())).await;
    let number = push(&app, "main", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(step(&build, "test")["status"], "failed");
    assert_eq!(step(&build, "test")["exit_code"], 1);
    assert_eq!(step(&build, "notify-failure")["status"], "passed");
    assert!(
        build["reason"].as_str().unwrap().contains("test"),
        "{build}"
    );
    assert_eq!(docker_leftovers(build["id"].as_str().unwrap()), "");
    app.stop().await;
}

#[tokio::test]
async fn a_bad_pipeline_file_fails_the_build_with_its_line() {
    let repo = hello_repository();
    let spec = std::fs::read_to_string(repo.path().join(".slipway.yml")).unwrap();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        spec.replace("  - name: test\n", "  - name: test\n    colour: blue\n"),
    )
    .unwrap();
    let commit = commit_all(repo.path(), "typo");
    let app = TestApp::spawn(&hello_config(repo.path())).await;
    let number = push(&app, "main", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(60)).await;
    assert_eq!(build["status"], "failed");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.starts_with(".slipway.yml: line "), "{reason}");
    assert!(reason.contains("colour"), "{reason}");
    app.stop().await;
}

#[tokio::test]
async fn cancel_stops_a_running_build_and_rebuild_queues_the_same_commit() {
    let repo = hello_repository();
    let spec = std::fs::read_to_string(repo.path().join(".slipway.yml")).unwrap();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        spec.replace("python3 -m unittest discover -s tests -v", "sleep 300"),
    )
    .unwrap();
    let commit = commit_all(repo.path(), "slow");
    let app = TestApp::spawn(&hello_config(repo.path())).await;
    let number = push(&app, "main", &commit).await;

    // Wait until the slow step runs, then cancel.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let build = app
            .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
            .await;
        if build["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "test" && s["status"] == "running")
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the test step never started: {build}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cancelled = app
        .http
        .post(format!(
            "{}/api/v1/projects/hello/builds/{number}/cancel",
            app.address
        ))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let build = wait_for_build(&app, number, Duration::from_secs(60)).await;
    assert_eq!(build["status"], "cancelled", "{build}");
    assert_eq!(docker_leftovers(build["id"].as_str().unwrap()), "");

    let rebuilt: Value = app
        .http
        .post(format!(
            "{}/api/v1/projects/hello/builds/{number}/rebuild",
            app.address
        ))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rebuilt["number"], number + 1);
    assert_eq!(rebuilt["commit"], commit);
    app.stop().await;
}
