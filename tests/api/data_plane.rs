//! The docker target's data plane through the server: the load balancer (HAProxy in its own
//! container) serves while Slipway is killed and restarted, through deploys and rollbacks,
//! comes back when removed, and two installations on one dockerd neither collide nor hide a
//! conflict over a listen address.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::deploy::{image, insert_release, Api, Load, Project, Server};
use crate::helpers::TestApp;

fn started_at(container: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn failures(answers: &[Result<String, String>]) -> Vec<&Result<String, String>> {
    answers.iter().filter(|a| a.is_err()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_restart_deploy_and_rollback_under_load_fail_no_request() {
    let project = Project::new(1).await;
    let (dir, database_url) = project.server_dir("watch = \"1s\"\nretention = \"10m\"");
    let name = project.name.clone();

    let first = Server::start(dir.path());
    insert_release(&database_url, &name, 1, &image("v1"), true).await;
    let dev = first.api.wait_live(&name, "dev", "v1").await;
    let container = dev["load_balancer"]["container"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = started_at(&container);

    // kill -9 of the server, a second without it, and a restart: v1 answers throughout.
    let load = Load::start(project.url(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.server.kill_9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = Server::start(dir.path());
    second
        .api
        .wait_for(&name, "dev", Duration::from_secs(60), |e| {
            e["busy"].is_null() && e["load_balancer"]["state"] == "running"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers = load.stop().await;
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    assert!(answers.len() > 50, "the load ran: {}", answers.len());
    assert!(answers.iter().all(|a| a.as_deref() == Ok("v1")));
    let across_the_restart = answers.len() as u64;
    eprintln!("{across_the_restart} requests across kill -9 and the restart, none failed");
    assert_eq!(
        started_at(&container),
        before,
        "the load balancer was adopted, not restarted"
    );

    // A deploy of v2 and a rollback to warm v1, under load.
    let load = Load::start(project.url(0));
    insert_release(&database_url, &name, 2, &image("v2"), true).await;
    second.api.wait_live(&name, "dev", "v2").await;
    let path = format!("/projects/{name}/environments/dev/rollback");
    let (status, stream) = second.api.post(&path, json!({ "to": "v1" })).await;
    assert_eq!(status, 200, "{stream}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answers = load.stop().await;
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    assert!(answers.iter().any(|a| a.as_deref() == Ok("v2")));
    assert_eq!(answers.last().unwrap().as_deref(), Ok("v1"));
    eprintln!(
        "{} requests across the deploy and the rollback, none failed",
        answers.len()
    );

    // The status shows the load balancer and its counters.
    let status = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["status", "--project", &name])
        .env("SLIPWAY_SERVER", second.api.address())
        .env("SLIPWAY_TOKEN", second.api.token())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "load balancer {container} on 127.0.0.1:{}: running",
            project.ports[0]
        )),
        "{out}"
    );
    assert!(out.contains("answered 5xx"), "{out}");
    let dev = second.api.environment(&name, "dev").await;
    let frontend = frontend(&dev);
    let total = answers.len() as u64;
    assert!(
        frontend["requests"].as_u64().unwrap() >= total,
        "{frontend}"
    );
    // Every request has its line in the access log, the ones while no server ran included.
    let log = dir
        .path()
        .join(format!(".slipway/balancers/{name}-dev/access.log"));
    let log = std::fs::read_to_string(log).unwrap();
    let lines = log
        .lines()
        .filter(|l| l.contains("\"GET / HTTP/1.1\""))
        .count() as u64;
    let total = total + across_the_restart;
    assert!(
        lines >= total,
        "{lines} access log lines for {total} requests"
    );
    drop(second);
}

/// The load balancer's frontend row in an environment's statistics.
fn frontend(environment: &Value) -> Value {
    environment["load_balancer"]["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == "FRONTEND")
        .cloned()
        .unwrap_or_else(|| panic!("no frontend: {environment:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_removed_behind_the_servers_back_comes_back_with_the_live_release() {
    let project = Project::new(1).await;
    let app = TestApp::spawn(&project.config("")).await;
    let api = Api::of(&app);
    let name = project.name.clone();
    insert_release(&app.database_url, &name, 1, &image("v1"), true).await;
    let dev = api.wait_live(&name, "dev", "v1").await;
    let container = dev["load_balancer"]["container"]
        .as_str()
        .unwrap()
        .to_owned();

    let removed = Command::new("docker")
        .args(["rm", "-f", &container])
        .output()
        .unwrap();
    assert!(removed.status.success());
    let gone = Instant::now();
    let deadline = gone + Duration::from_secs(20);
    let body = loop {
        if let Ok(response) = reqwest::get(project.url(0)).await {
            break response.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the listener did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "the load balancer served again {:?} after its removal",
        gone.elapsed()
    );
    assert_eq!(body.trim(), "v1");
    // HAProxy checks the instances again from the start: both pass within seconds.
    let dev = api
        .wait_for(&name, "dev", Duration::from_secs(10), |e| {
            e["health"]["healthy"] == 2
        })
        .await;
    assert_eq!(dev["load_balancer"]["state"], "running");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_installation_on_one_dockerd_deploys_beside_the_first_and_a_taken_port_is_named() {
    let first = Project::new(1).await;
    let first_app = TestApp::spawn(&first.config("")).await;
    let name = first.name.clone();
    insert_release(&first_app.database_url, &name, 1, &image("v1"), true).await;
    let first_dev = Api::of(&first_app).wait_live(&name, "dev", "v1").await;

    // The same project and environment in another installation (its own database), as a
    // server started on a fresh data directory beside a running fleet would be.
    let second = Project {
        name: name.clone(),
        ports: vec![crate::helpers::free_port()],
    };
    let second_app = TestApp::spawn(&second.config("")).await;
    insert_release(&second_app.database_url, &name, 1, &image("v2"), true).await;
    let second_dev = Api::of(&second_app).wait_live(&name, "dev", "v1").await;
    assert_ne!(
        first_dev["load_balancer"]["container"],
        second_dev["load_balancer"]["container"]
    );
    let body = |url: String| async move { reqwest::get(url).await.unwrap().text().await.unwrap() };
    assert_eq!(body(first.url(0)).await.trim(), "v1");
    assert_eq!(body(second.url(0)).await.trim(), "v2");
    let mut releases = first.running_releases();
    releases.dedup();
    assert_eq!(
        releases,
        ["v1"],
        "both installations run their own v1 fleet"
    );
    assert_eq!(first.running_releases().len(), 4);

    // A third one asking for the first's listen address is told who holds it.
    let third_app = TestApp::spawn(&first.config("")).await;
    insert_release(&third_app.database_url, &name, 1, &image("v1"), true).await;
    let third = Api::of(&third_app);
    let dev = third
        .wait_for(&name, "dev", Duration::from_secs(60), |e| {
            e["deployments"][0]["state"] == "failed"
        })
        .await;
    let reason = dev["deployments"][0]["reason"].as_str().unwrap();
    let holder = first_dev["load_balancer"]["container"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "127.0.0.1:{} is in use by load balancer {holder} of another Slipway installation",
            first.ports[0]
        )),
        "{reason}"
    );
    assert_eq!(body(first.url(0)).await.trim(), "v1", "the first serves on");
    assert_eq!(
        first.running_releases().len(),
        4,
        "the third left nothing running"
    );
    third_app.stop().await;
    second_app.stop().await;
    first_app.stop().await;
    drop(second);
}
