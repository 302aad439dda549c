//! The real `slipway` binary: start with no config, kill -9, restart, graceful stop.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::read_token;

pub use crate::helpers::ServerChild as Server;

/// Starts `slipway server` in `dir` (with its `slipway.toml`, if any) and waits until it listens.
pub fn start(dir: &Path) -> Server {
    start_with_env(dir, &[])
}

/// Like [`start`], with `vars` added to the server's environment.
pub fn start_with_env(dir: &Path, vars: &[(&str, &str)]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
    command
        .args(["server", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env_remove("SLIPWAY_DATABASE_URL")
        .envs(vars.iter().copied());
    Server::spawn(command)
}

async fn healthz(server: &Server) -> serde_json::Value {
    let response = reqwest::get(format!("{}/healthz", server.address))
        .await
        .expect("healthz answers");
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn token_works(server: &Server, token: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{}/api/v1/projects", server.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        == 200
}

#[tokio::test]
async fn starts_with_no_config_survives_kill_9_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded cluster runs as user postgres, which must be able to reach the data dir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().join(".slipway");

    let first = start(dir.path());
    assert_eq!(healthz(&first).await["status"], "ok");
    assert!(data_dir.join("postgres/PG_VERSION").exists());
    let token_file = data_dir.join("admin.token");
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let admin = read_token(&data_dir);
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/v1/tokens", first.address))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "kept", "scopes": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept = created["token"].as_str().unwrap().to_string();

    // kill -9: no chance to stop the cluster; the next start must reuse it.
    first.kill_9();

    let mut second = start(dir.path());
    assert_eq!(healthz(&second).await["status"], "ok");
    assert!(
        token_works(&second, &kept).await,
        "a token made before kill -9 still works"
    );
    assert_eq!(
        read_token(&data_dir),
        admin,
        "the admin token is not replaced"
    );

    // SIGTERM: a graceful stop that also stops the embedded cluster.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = second.child.wait().unwrap();
    assert!(status.success(), "graceful stop exits 0, got {status}");
    assert!(
        !data_dir.join("postgres/postmaster.pid").exists(),
        "the cluster was stopped"
    );

    // A stale pid file (a dead process) does not stop the next start.
    std::fs::write(data_dir.join("postgres/postmaster.pid"), "999999\n").unwrap();
    let mut third = start(dir.path());
    assert!(token_works(&third, &kept).await);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(third.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(third.child.wait().unwrap().success());
}

#[tokio::test]
async fn a_build_interrupted_by_kill_9_ends_errored_and_its_containers_are_reaped() {
    use crate::builds::{commit_all, hello_config, hello_repository};
    let repo = hello_repository();
    let spec = std::fs::read_to_string(repo.path().join(".slipway.yml")).unwrap();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        spec.replace("python3 -m unittest discover -s tests -v", "sleep 300"),
    )
    .unwrap();
    let commit = commit_all(repo.path(), "slow");

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("slipway.toml"), hello_config(repo.path())).unwrap();
    let first = start(dir.path());
    let token = read_token(&dir.path().join(".slipway"));
    let client = reqwest::Client::new();
    crate::builds::push_to(&first.address, &commit).await;
    let build_url = "/api/v1/projects/hello/builds/1";
    let get = |address: String| {
        let client = client.clone();
        let token = token.clone();
        let url = format!("{address}{build_url}");
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let build = loop {
        let build = get(first.address.clone()).await;
        if build["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "test" && s["status"] == "running")
        }) {
            break build;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow step never started: {build}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let label = format!(
        "label=slipway.build={}",
        build["id"].as_str().unwrap().replace('-', "")
    );
    let containers = || {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(!containers().is_empty(), "the build's containers run");

    first.kill_9(); // kill -9 in the middle of the build

    let second = start(dir.path());
    let build = get(second.address.clone()).await;
    assert_eq!(build["status"], "errored", "{build}");
    assert_eq!(
        build["reason"],
        "the server stopped while this build was running"
    );
    // The restarted server reaps in the background once dockerd answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !containers().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        containers(),
        "",
        "the restarted server reaped the build's containers"
    );
    let network = Command::new("docker")
        .args(["network", "ls", "-q", "--filter", &label])
        .output()
        .unwrap();
    assert!(network.stdout.is_empty());
    drop(second);
}
