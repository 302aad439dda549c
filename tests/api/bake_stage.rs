//! The bake as its own stage of a release (real Packer, Ansible and dockerd): a build ends when
//! its package is published, so a long bake holds no build slot and never delays the next
//! push's build; `max_concurrent_bakes` queues a second release's bake behind the first; a
//! graceful stop queues a running bake again; a bake interrupted by kill -9 of the real binary
//! is reaped and re-run by the next start, once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::bake::{docker, Cleanup, ServerProcess, BUILD_AND_BAKE};
use crate::builds::{commit_all, git, hello_config, hello_repository, push, wait_for_build};
use crate::helpers::{HeldBakeRecords, TestApp};

/// The file the held bake waits for in its container.
pub(crate) const GO: &str = "/tmp/slipway-test-go";

/// A team playbook whose one task holds the bake until the test creates [`GO`] in the bake's
/// container: a bake as long as the test needs, without sleeping longer than that.
pub(crate) fn add_held_playbook(repo: &Path) {
    std::fs::create_dir_all(repo.join("deploy")).unwrap();
    std::fs::write(
        repo.join("deploy/bake.yml"),
        format!(
            "- name: A long bake, held until the test lets it go\n  hosts: all\n  gather_facts: false\n  tasks:\n    - name: Wait for the go\n      ansible.builtin.shell: \"for i in $(seq 900); do if [ -e {GO} ]; then rm -f {GO}; exit 0; fi; sleep 1; done; exit 1\"\n      changed_when: false\n"
        ),
    )
    .unwrap();
    let spec = std::fs::read_to_string(repo.join(".slipway.yml")).unwrap();
    std::fs::write(
        repo.join(".slipway.yml"),
        spec + "\nbake:\n  playbook: deploy/bake.yml\n",
    )
    .unwrap();
}

/// Lets the held bake `bake_id` go on: creates [`GO`] in its container once it runs.
async fn let_go(bake_id: &str) {
    let label = format!("label=slipway.bake={bake_id}");
    let deadline = Instant::now() + BUILD_AND_BAKE;
    loop {
        let (_, containers) = docker(&["ps", "-q", "--filter", &label]);
        if let Some(container) = containers.split_whitespace().next() {
            if docker(&["exec", container, "touch", GO]).0 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the bake {bake_id} never ran");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap()
}

// Multi-threaded: the test blocks on docker and the CLI while the server must answer them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_bake_holds_no_build_slot_and_the_next_release_waits_in_the_bake_queue() {
    let mut cleanup = Cleanup::new();
    let repo = hello_repository();
    add_held_playbook(repo.path());
    let first = commit_all(repo.path(), "a long bake");
    let config = format!(
        "max_concurrent_builds = 1\nmax_concurrent_bakes = 1\n{}",
        hello_config(repo.path())
    );
    let app = TestApp::spawn(&config).await;

    // The build ends when v1 is published, while its bake is held.
    let started = Instant::now();
    let build1 = wait_for_build(&app, push(&app, "main", &first).await, BUILD_AND_BAKE).await;
    eprintln!("build and publish of v1: {:?}", started.elapsed());
    assert_eq!(build1["status"], "passed", "{build1}");
    let v1 = app.release("hello", "v1").await;
    let v1_bake = v1["bake_id"].as_str().unwrap().to_string();
    cleanup.bake_ids.push(v1_bake.clone());
    assert!(
        matches!(v1["bake_status"].as_str(), Some("queued" | "baking")),
        "{v1}"
    );

    // The next push builds while v1 bakes: with one build slot, the bake holds none.
    std::fs::write(repo.path().join("CHANGES"), "second release\n").unwrap();
    let second = commit_all(repo.path(), "second");
    let started = Instant::now();
    let build2 = wait_for_build(&app, push(&app, "main", &second).await, BUILD_AND_BAKE).await;
    eprintln!(
        "build and publish of v2 while v1 bakes: {:?}",
        started.elapsed()
    );
    assert_eq!(build2["status"], "passed", "{build2}");
    let v1 = app.release("hello", "v1").await;
    assert_eq!(v1["bake_status"], "baking", "{v1}");
    assert_eq!(v1["images"][0]["status"], "baking", "{v1}");
    // One bake at a time: v2's waits in the queue.
    let v2 = app.release("hello", "v2").await;
    let v2_bake = v2["bake_id"].as_str().unwrap().to_string();
    cleanup.bake_ids.push(v2_bake.clone());
    assert_eq!(v2["bake_status"], "queued", "{v2}");
    assert_eq!(
        v2["images"],
        serde_json::json!([{"kind": "docker", "id": null, "status": "queued",
            "reason": null, "bake_key": null, "baked_at": null}]),
        "{v2}"
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["releases", "--server", &app.address, "--token", &app.token])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.contains("images: docker queued") && table.contains("images: docker baking"),
        "{table}"
    );

    let held = Instant::now();
    let_go(&v1_bake).await;
    let v1 = app.wait_for_bake("hello", "v1").await;
    let log = app.bake_log("hello", "v1").await;
    assert_eq!(v1["bake_status"], "baked", "{v1}\n{log}");
    eprintln!("v1 baked {:?} after it was let go", held.elapsed());
    let v1_baked = time(&v1["baked_at"]);
    assert!(time(&build1["finished_at"]) < v1_baked, "{build1}\n{v1}");
    assert!(time(&build2["finished_at"]) < v1_baked, "{build2}\n{v1}");

    // v2's bake starts once v1's has ended.
    let deadline = Instant::now() + BUILD_AND_BAKE;
    let lines = loop {
        let v2 = app.release("hello", "v2").await;
        let lines = app
            .get_json("/api/v1/projects/hello/releases/v2/bake-log?kind=docker")
            .await;
        if v2["bake_status"] == "baking" && !lines.as_array().unwrap().is_empty() {
            break lines;
        }
        assert!(Instant::now() < deadline, "v2 never baked: {v2}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(time(&lines[0]["at"]) >= v1_baked, "{v1}\n{lines}");

    // A log of an image the release does not have is empty; a kind that does not exist is
    // refused, naming the query.
    let lines = app
        .get_json("/api/v1/projects/hello/releases/v2/bake-log?kind=ami&region=eu-west-1")
        .await;
    assert_eq!(lines, serde_json::json!([]));
    let response = app
        .get("/api/v1/projects/hello/releases/v2/bake-log?kind=vmdk")
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("query `kind`"),
        "{body}"
    );

    // A graceful stop during v2's held bake removes what it made and queues it again for the
    // next start, the attempt not counted.
    let database_url = app.database_url.clone();
    let stopping = Instant::now();
    app.stop().await;
    eprintln!("graceful stop during a bake: {:?}", stopping.elapsed());
    let (client, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT r.bake_status, i.status, i.attempts FROM releases r
             JOIN release_images i ON i.release_id = r.id WHERE r.number = 2",
            &[],
        )
        .await
        .unwrap();
    let (release, image, attempts): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (release.as_str(), image.as_str(), attempts),
        ("queued", "queued", 0)
    );
    let label = format!("label=slipway.bake={v2_bake}");
    let (ok, left) = docker(&["ps", "-aq", "--filter", &label]);
    assert!(ok && left.trim().is_empty(), "containers left: {left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bake_interrupted_by_kill_9_is_reaped_and_baked_again_by_the_next_start() {
    use std::os::unix::fs::PermissionsExt;
    let mut cleanup = Cleanup::new();
    let repo = hello_repository();
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    // The embedded cluster runs as user postgres, which must be able to reach the data dir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("slipway.toml"), hello_config(repo.path())).unwrap();
    let first = ServerProcess::start(dir.path());
    let token = crate::helpers::read_token(&dir.path().join(".slipway"));
    crate::builds::push_to(first.address(), &commit).await;

    // Wait until the bake's container runs, then kill -9 the server.
    let deadline = Instant::now() + BUILD_AND_BAKE;
    let (bake_id, killed_container) = loop {
        let releases = first.releases(&token).await;
        if let Some(bake_id) = releases[0]["bake_id"].as_str() {
            let label = format!("label=slipway.bake={bake_id}");
            let running = docker(&["ps", "-q", "--filter", &label]).1;
            if let Some(container) = running.split_whitespace().next() {
                break (bake_id.to_string(), container.to_string());
            }
        }
        assert!(Instant::now() < deadline, "no bake started: {releases}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    cleanup.bake_ids.push(bake_id.clone());
    first.kill_9();

    // The next start reaps what the bake left and bakes it again, to the end.
    let restarted = Instant::now();
    let second = ServerProcess::start(dir.path());
    let v1 = second.v1_when_baked(&token, restarted).await;
    eprintln!(
        "the interrupted bake re-run and ended {:?} after the restart",
        restarted.elapsed()
    );
    let lines = second
        .get(&token, "/api/v1/projects/hello/releases/v1/bake-log")
        .await;
    assert_eq!(v1["status"], "published", "{v1}");
    assert_eq!(v1["bake_status"], "baked", "{v1}\n{lines}");
    assert_eq!(v1["images"][0]["status"], "baked", "{v1}");
    assert!(
        lines
            .to_string()
            .contains("baking again: the server stopped"),
        "{lines}"
    );
    let image = v1["image"].as_str().unwrap();
    assert_eq!(
        docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .1
            .trim(),
        v1["image_id"].as_str().unwrap()
    );
    // Nothing of the interrupted bake is left: no container with the bake's label (the
    // killed one included), and the one image is the re-run's.
    let containers = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=slipway.bake={bake_id}"),
    ])
    .1;
    assert!(
        containers.trim().is_empty(),
        "containers left: {containers}"
    );
    assert!(
        !docker(&["inspect", &killed_container]).0,
        "the killed bake's container {killed_container} is still there"
    );
    let images = docker(&[
        "images",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=slipway.baked-by={bake_id}"),
    ])
    .1;
    assert_eq!(
        images.split_whitespace().collect::<Vec<_>>(),
        [v1["image_id"].as_str().unwrap()],
        "images of the bake"
    );
    drop(second);
}

/// The ids of the images a bake committed (`slipway.baked-by`), tagged or not.
fn images_of_bake(bake_id: &str) -> Vec<String> {
    let label = format!("label=slipway.baked-by={bake_id}");
    let (ok, images) = docker(&["images", "-aq", "--no-trunc", "--filter", &label]);
    assert!(ok, "{images}");
    let mut images: Vec<String> = images.split_whitespace().map(str::to_owned).collect();
    images.dedup();
    images
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_image_is_committed_but_before_it_is_recorded_then_restart_reuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let mut cleanup = Cleanup::new();
    let repo = hello_repository();
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let database_url = crate::helpers::test_database();
    std::fs::write(
        dir.path().join("slipway.toml"),
        format!(
            "database_url = \"{database_url}\"\n{}",
            hello_config(repo.path())
        ),
    )
    .unwrap();
    // The repository's URL (the server's address) is in the bake key: the restarted server
    // listens where the first one did.
    let listen = format!("127.0.0.1:{}", crate::helpers::free_port());
    let first = ServerProcess::start_at(dir.path(), &listen);
    let token = crate::helpers::read_token(&dir.path().join(".slipway"));
    // The database holds the statement that records the image as baked: the server is killed
    // after Packer committed and tagged the image, before Slipway recorded it.
    let hold = HeldBakeRecords::install(&database_url, "docker").await;
    crate::builds::push_to(first.address(), &commit).await;
    hold.wait(BUILD_AND_BAKE).await;
    let v1 = first.releases(&token).await[0].clone();
    assert_eq!(v1["images"][0]["status"], "baking", "{v1}");
    let bake_id = v1["bake_id"].as_str().unwrap().to_owned();
    cleanup.bake_ids.push(bake_id.clone());
    let key = v1["images"][0]["bake_key"].as_str().unwrap().to_owned();
    let made = images_of_bake(&bake_id);
    assert_eq!(made.len(), 1, "Packer committed the image: {made:?}");
    let labels = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"slipway.bake-key\"}}",
        &made[0],
    ])
    .1;
    assert_eq!(labels.trim(), key, "the image carries its bake key");
    let first_log = first
        .get(&token, "/api/v1/projects/hello/releases/v1/bake-log")
        .await
        .to_string();
    for packer_line in ["TASK [", "Committing the container"] {
        assert!(first_log.contains(packer_line), "{first_log}");
    }
    first.kill_9();
    hold.release().await;

    // The next start keeps the finished image, and the re-run records it instead of baking.
    let restarted = Instant::now();
    let second = ServerProcess::start_at(dir.path(), &listen);
    let v1 = second.v1_when_baked(&token, restarted).await;
    eprintln!(
        "the interrupted bake's image was recorded {:?} after the restart",
        restarted.elapsed()
    );
    let log = second
        .get(&token, "/api/v1/projects/hello/releases/v1/bake-log")
        .await
        .to_string();
    assert_eq!(v1["bake_status"], "baked", "{v1}\n{log}");
    assert_eq!(v1["image_id"], made[0].as_str(), "{v1}");
    assert_eq!(v1["images"][0]["bake_key"], key.as_str(), "{v1}");
    assert!(log.contains("baking again"), "{log}");
    assert!(
        log.contains(&format!("reusing {}", v1["image"].as_str().unwrap())),
        "{log}"
    );
    for packer_line in ["TASK [", "Committing the container"] {
        assert!(!log.contains(packer_line), "Packer ran again: {log}");
    }
    let image = v1["image"].as_str().unwrap();
    assert_eq!(
        docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .1
            .trim(),
        made[0]
    );
    assert_eq!(images_of_bake(&bake_id), made, "the one image of the bake");
    let label = format!("label=slipway.bake={bake_id}");
    let (ok, left) = docker(&["ps", "-aq", "--filter", &label]);
    assert!(ok && left.trim().is_empty(), "containers left: {left}");
    drop(second);
}

/// Seeds release `number` of project hello, published, whose Docker image a server left
/// `baking` after `attempts` claims; `recipe`: with the command a bake needs.
async fn seed_interrupted_bake(database_url: &str, number: i64, attempts: i32, recipe: bool) {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let (build, release) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    client
        .execute(
            "INSERT INTO builds (id, project, number, branch, commit, event, status)
             VALUES ($1, 'hello', $2, 'main', 'abc123', 'push', 'passed')",
            &[&build, &number],
        )
        .await
        .unwrap();
    let command = recipe.then(|| vec!["/usr/bin/true".to_string()]);
    client
        .execute(
            "INSERT INTO releases (id, project, number, build_id, commit, status, bake_status,
                 image_command, exposed_ports)
             VALUES ($1, 'hello', $2, $3, 'abc123', 'published', 'baking', $4, '{8000}')",
            &[&release, &number, &build, &command],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO release_images (release_id, kind, status, attempts, started_at)
             VALUES ($1, 'docker', 'baking', $2, now())",
            &[&release, &attempts],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bake_interrupted_a_second_time_fails_at_the_next_start_and_a_first_runs_again() {
    let database_url = crate::helpers::test_database();
    let config = hello_config(Path::new("/nonexistent/hello"));
    // Connecting migrates the database.
    slipway::store::Store::connect(&database_url)
        .await
        .unwrap()
        .close();
    seed_interrupted_bake(&database_url, 1, 2, true).await;
    seed_interrupted_bake(&database_url, 2, 1, false).await;

    let app = TestApp::spawn_with_database(&config, database_url).await;
    let v1 = app.release("hello", "v1").await;
    assert_eq!(v1["bake_status"], "failed", "{v1}");
    assert_eq!(
        v1["bake_reason"],
        "the server stopped while this release was baking, for the second time: not baked again"
    );
    assert_eq!(v1["images"][0]["status"], "failed", "{v1}");
    assert_eq!(v1["images"][0]["reason"], v1["bake_reason"], "{v1}");
    // Interrupted once, v2 was queued and claimed again: its bake ran (and failed on what the
    // seed lacks) rather than failing as interrupted.
    let v2 = app.wait_for_bake("hello", "v2").await;
    assert_eq!(v2["bake_status"], "failed", "{v2}");
    let reason = v2["bake_reason"].as_str().unwrap();
    assert!(
        reason.contains("the release has no recorded bake recipe"),
        "{reason}"
    );
    app.stop().await;
}
