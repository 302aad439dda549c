//! `slipway backup` and `slipway restore` (the real binary): a backup of an installation with
//! releases, restored into a fresh database and data directory, gives a server that serves
//! the same signed repository, answers to the same tokens and numbers the next release after
//! the last; a restore into a database or apt directory that is not empty changes nothing; and
//! the embedded cluster of a data directory is backed up and restored with no server running.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::builds::commit_all;
use crate::helpers::{test_database, TestApp};
use crate::release_order::wait_for_build;
use crate::servers::{bytes, config, push, quick_repository};

/// `slipway ARGS` with the config file `config`; its exit status and output.
fn slipway(config: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SLIPWAY_DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

async fn wait_released(app: &TestApp, number: i64) {
    let build = wait_for_build(app, "shared", number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_serves_the_same_repository_and_goes_on_numbering_releases() {
    let repo = quick_repository();
    let first_apt = tempfile::tempdir().unwrap();
    let text = config(repo.path(), first_apt.path());
    let first = TestApp::spawn(&text).await;
    for n in 1..=2 {
        std::fs::write(repo.path().join("app.txt"), format!("{n}\n")).unwrap();
        let commit = commit_all(repo.path(), &format!("change {n}"));
        wait_released(&first, push(&first, &commit).await).await;
    }

    let work = tempfile::tempdir().unwrap();
    let first_config = work.path().join("first.toml");
    std::fs::write(
        &first_config,
        format!(
            "database_url = \"{}\"\ndata_dir = \"{}\"\n[apt]\ndir = \"{}\"\n",
            first.database_url,
            first.data_dir().display(),
            first_apt.path().display()
        ),
    )
    .unwrap();
    let backup = work.path().join("slipway.backup");
    let (ok, out) = slipway(
        &first_config,
        &["backup", "--out", backup.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&backup).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the backup holds the signing key");
    assert!(!work.path().join("slipway.backup.partial").exists());

    // A fresh database and data directory.
    let database = test_database();
    let data_dir = work.path().join("restored");
    let apt = data_dir.join("apt");
    let restored_config = format!(
        "database_url = \"{database}\"\ndata_dir = \"{}\"\n",
        data_dir.display()
    );
    let restore = |name: &str, config: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, config).unwrap();
        slipway(&path, &["restore", "--from", backup.to_str().unwrap()])
    };
    let (ok, out) = restore("restored.toml", &restored_config);
    assert!(ok, "{out}");
    assert!(out.contains("restored installation "), "{out}");
    assert!(out.contains("signing key "), "{out}");

    // Again: the database is not empty now; nothing changes.
    let other_apt = work.path().join("other-apt");
    let again_config = format!(
        "database_url = \"{database}\"\n[apt]\ndir = \"{}\"\n",
        other_apt.display()
    );
    let (ok, out) = restore("again.toml", &again_config);
    assert!(!ok, "{out}");
    assert!(
        out.contains("a restore goes only into an empty database"),
        "{out}"
    );
    assert!(!other_apt.exists(), "nothing was written");
    let (ok, out) = restore("restored.toml", &restored_config);
    assert!(!ok, "{out}");
    assert!(out.contains("is not empty"), "{out}");

    // A server on what was restored: the same repository, tokens and release numbers.
    let restored_text = text.replace(
        &first_apt.path().display().to_string(),
        &apt.display().to_string(),
    );
    let restored = TestApp::spawn_with_token(&restored_text, database, &first.token).await;
    for path in [
        "/apt/dists/stable/InRelease",
        "/apt/dists/stable/main/binary-amd64/Packages",
        "/apt/key.gpg",
        "/apt/pool/main/s/shared/shared_2_all.deb",
    ] {
        assert_eq!(
            bytes(&first, path).await,
            bytes(&restored, path).await,
            "{path}"
        );
    }
    let releases = restored.get_json("/api/v1/projects/shared/releases").await;
    assert_eq!(releases[0]["version"], "v2", "{releases}");
    first.stop().await;

    std::fs::write(repo.path().join("app.txt"), "3\n").unwrap();
    let commit = commit_all(repo.path(), "change 3");
    wait_released(&restored, push(&restored, &commit).await).await;
    let releases = restored.get_json("/api/v1/projects/shared/releases").await;
    assert_eq!(releases[0]["version"], "v3", "{releases}");
    assert_eq!(releases[0]["status"], "published", "{releases}");
    let index =
        String::from_utf8(bytes(&restored, "/apt/dists/stable/main/binary-amd64/Packages").await)
            .unwrap();
    assert!(index.contains("Version: 3"), "{index}");
    let keys = tempfile::tempdir().unwrap();
    let keyring = keys.path().join("key.gpg");
    std::fs::write(&keyring, bytes(&restored, "/apt/key.gpg").await).unwrap();
    let in_release = keys.path().join("InRelease");
    std::fs::write(
        &in_release,
        bytes(&restored, "/apt/dists/stable/InRelease").await,
    )
    .unwrap();
    let verified = Command::new("gpgv")
        .arg("--keyring")
        .arg(&keyring)
        .arg(&in_release)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "the new index is signed with the restored key: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    restored.stop().await;
}

/// `slipway ARGS` in `dir` (no config file there: the embedded defaults); its output.
fn slipway_in(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .current_dir(dir)
        .env_remove("SLIPWAY_DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// A directory the embedded cluster's user (postgres) can enter.
fn reachable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// GET `path` of the server at `address` with `token`: its status and body.
async fn fetch(address: &str, path: &str, token: &str) -> (u16, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(format!("{address}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.bytes().await.unwrap().to_vec(),
    )
}

/// SIGTERM, and the graceful stop's end.
fn stop(mut server: crate::server_process::Server) {
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(server.child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_cluster_is_backed_up_and_restored_while_no_server_runs() {
    let first = reachable_dir();
    let server = crate::server_process::start(first.path());
    let token = crate::helpers::read_token(&first.path().join(".slipway"));
    let (_, key) = fetch(&server.address, "/apt/key.gpg", &token).await;
    let (_, index) = fetch(&server.address, "/apt/dists/stable/InRelease", &token).await;
    stop(server);

    let backup = first.path().join("installation.backup");
    let (ok, out) = slipway_in(first.path(), &["backup", "--out", backup.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        !first
            .path()
            .join(".slipway/postgres/postmaster.pid")
            .exists(),
        "the cluster the backup started is stopped again"
    );

    let second = reachable_dir();
    let (ok, out) = slipway_in(
        second.path(),
        &["restore", "--from", backup.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert!(!second
        .path()
        .join(".slipway/postgres/postmaster.pid")
        .exists());
    let server = crate::server_process::start(second.path());
    assert!(
        !second.path().join(".slipway/admin.token").exists(),
        "the installation's tokens came back: no new one is made"
    );
    let (status, _) = fetch(&server.address, "/api/v1/servers", &token).await;
    assert_eq!(status, 200, "the first installation's token works");
    assert_eq!(fetch(&server.address, "/apt/key.gpg", &token).await.1, key);
    assert_eq!(
        fetch(&server.address, "/apt/dists/stable/InRelease", &token)
            .await
            .1,
        index
    );
    stop(server);
}
