//! Passing builds on the deploy branch become releases, published to the signed apt repository
//! the server serves, where real apt-get installs them.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::builds::{commit_all, git, hello_config, hello_repository, push, wait_for_build};
use crate::helpers::TestApp;

/// Runs `script` in a bookworm container on the host network with the repo's key at /keys.
fn in_container(keys: &std::path::Path, script: &str) -> (bool, String) {
    let output = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "host",
            "--label",
            "slipway.test=releases",
        ])
        .arg("-v")
        .arg(format!("{}:/keys:ro", keys.display()))
        .args(["slipway/debian:bookworm", "sh", "-ec", script])
        .output()
        .expect("docker runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn apt_setup(port: u16) -> String {
    format!(
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*\n\
         echo 'deb [signed-by=/keys/key.gpg] http://127.0.0.1:{port}/apt stable main' > /etc/apt/sources.list.d/slipway.list\n\
         apt-get update 2>&1\n"
    )
}

// Multi-threaded: the test blocks on docker and the CLI while the server must answer them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_deploy_branch_builds_become_releases_that_apt_get_installs() {
    let repo = hello_repository();
    let app = TestApp::spawn(&hello_config(repo.path())).await;
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    let build = wait_for_build(
        &app,
        push(&app, "main", &first).await,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(build["status"], "passed", "{build}");

    let releases = app.get_json("/api/v1/projects/hello/releases").await;
    let v1 = &releases[0];
    assert_eq!(v1["version"], "v1");
    assert_eq!(v1["commit"], first);
    assert_eq!(v1["status"], "published");
    assert_eq!(v1["package"]["filename"], "hello_1_all.deb");
    assert_eq!(v1["package"]["sha256"].as_str().unwrap().len(), 64);

    // The CLI lists it.
    let listed = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["releases", "--server", &app.address, "--token", &app.token])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.contains("v1") && table.contains("hello_1_all.deb") && table.contains(&first[..12]),
        "{table}"
    );

    // Real apt-get, with the repository added signed-by the key the server serves.
    let keys = tempfile::tempdir().unwrap();
    let key = app
        .http
        .get(format!("{}/apt/key.gpg", app.address))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(keys.path().join("key.gpg"), &key).unwrap();
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let (ok, out) = in_container(
        keys.path(),
        &format!("{}apt-get install -y -q hello=1 2>&1\ncat /usr/share/hello/VERSION\ntest -x /usr/lib/hello/hello.py\ntest -f /etc/hello/hello.conf", apt_setup(port)),
    );
    assert!(ok, "{out}");
    assert!(
        !out.lines()
            .any(|l| l.starts_with("W:") || l.starts_with("E:")),
        "apt-get update warned:\n{out}"
    );
    assert!(out.lines().any(|l| l == "v1"), "{out}");

    // A second release: both versions stay installable.
    std::fs::write(repo.path().join("CHANGES"), "second release\n").unwrap();
    let second = commit_all(repo.path(), "second");
    let build = wait_for_build(
        &app,
        push(&app, "main", &second).await,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(build["status"], "passed", "{build}");
    let releases = app.get_json("/api/v1/projects/hello/releases").await;
    assert_eq!(releases.as_array().unwrap().len(), 2);
    assert_eq!(releases[0]["version"], "v2");
    let (ok, out) = in_container(
        keys.path(),
        &format!(
            "{}apt-cache madison hello\napt-get install -y -q hello=2 2>&1\ncat /usr/share/hello/VERSION\napt-get install -y -q --allow-downgrades hello=1 2>&1\ncat /usr/share/hello/VERSION",
            apt_setup(port)
        ),
    );
    assert!(ok, "{out}");
    let versions: Vec<&str> = out.lines().filter(|l| l.starts_with("v")).collect();
    assert_eq!(versions, vec!["v2", "v1"], "{out}");
    assert!(
        out.contains("hello |          2 |") && out.contains("hello |          1 |"),
        "{out}"
    );
    app.stop().await;
}

#[tokio::test]
async fn builds_off_the_deploy_branch_make_no_release() {
    let repo = hello_repository();
    let config = hello_config(repo.path()).replace(
        "branches = \"^main$\"",
        "branches = \"^(main|feature/.*)$\"",
    );
    let app = TestApp::spawn(&config).await;
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    let build = wait_for_build(
        &app,
        push(&app, "feature/x", &commit).await,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(build["status"], "passed", "{build}");
    let releases: Value = app.get_json("/api/v1/projects/hello/releases").await;
    assert_eq!(releases, serde_json::json!([]));
    app.stop().await;
}
