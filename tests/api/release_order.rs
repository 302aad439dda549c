//! Releases follow the commits' order on the deploy branch, not the order builds finish: a
//! slow build of an older commit never becomes a newer release nor goes live after a newer
//! one; a rebuild of a released commit makes no release; unrelated history (a force push)
//! releases; and the auto-deploy never puts an older commit over the live one.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::NoTls;

use crate::builds::{commit_all, git, hello_repository, push_body};
use crate::deploy::{build_images, image, Api, Project};
use crate::helpers::{sign, TestApp};

const SECRET: &str = "order-secret";
/// A build of examples/hello waits for its release's bake, which may take minutes here.
const BUILD_AND_BAKE: Duration = Duration::from_secs(900);
/// Longer than a few rounds of the auto-deploy (every 2 s).
const AUTO_DEPLOY_ROUNDS: Duration = Duration::from_secs(7);

/// A config with project `name` built from the repository in `repo`, and `extra` after it.
fn config(name: &str, repo: &Path, extra: &str) -> String {
    format!(
        "[[projects]]\nname = \"{name}\"\nrepository = \"acme/{name}\"\nclone_url = \"file://{}\"\nwebhook_secret = \"{SECRET}\"\nbranches = \"^main$\"\n{extra}",
        repo.display()
    )
}

/// Pushes `commit` to main of project `name`; the number of the build it queued.
async fn push(app: &TestApp, name: &str, commit: &str) -> i64 {
    let body = push_body(&format!("acme/{name}"), "main", commit);
    let response = app
        .post_hook("repo:push", &body, Some(&sign(SECRET, &body)), None)
        .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    answer["queued"][0]["number"].as_i64().expect("a build")
}

/// Build `number` of project `name` once it ended, waiting at most `limit`.
pub(crate) async fn wait_for_build(
    app: &TestApp,
    name: &str,
    number: i64,
    limit: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let build = app
            .get_json(&format!("/api/v1/projects/{name}/builds/{number}"))
            .await;
        if !matches!(build["status"].as_str(), Some("queued" | "running")) {
            return build;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "build {number} unfinished after {limit:?}: {build}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `(version, commit)` of each release, oldest first.
async fn releases(app: &TestApp, name: &str) -> Vec<(String, String)> {
    let listed = app
        .get_json(&format!("/api/v1/projects/{name}/releases"))
        .await;
    let mut releases: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap().to_string(),
                r["commit"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    releases.reverse();
    releases
}

fn short(commit: &str) -> &str {
    &commit[..12]
}

fn is_ancestor(repo: &Path, older: &str, newer: &str) -> bool {
    std::process::Command::new("git")
        .current_dir(repo)
        .args(["merge-base", "--is-ancestor", older, newer])
        .status()
        .unwrap()
        .success()
}

// Multi-threaded: the server bakes and deploys while the test waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_build_of_an_older_commit_never_becomes_a_newer_release_nor_goes_live() {
    let project = Project::new(1).await;
    let name = project.name.clone();
    let repo = hello_repository();
    let spec_path = repo.path().join(".slipway.yml");
    let spec = std::fs::read_to_string(&spec_path).unwrap();
    let test_command = "      - python3 -m unittest discover -s tests -v\n";
    assert!(spec.contains(test_command));
    std::fs::write(
        &spec_path,
        spec.replace(test_command, &format!("      - sleep 30\n{test_command}")),
    )
    .unwrap();
    let older = commit_all(repo.path(), "slow tests");
    std::fs::write(&spec_path, &spec).unwrap();
    let newer = commit_all(repo.path(), "fast tests again");
    let environment = format!(
        "[[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:{}\"\ninstances = 1\nwatch = \"1s\"\n",
        project.ports[0]
    );
    let app = TestApp::spawn(&config(&name, repo.path(), &environment)).await;
    let api = Api::of(&app);

    let started = tokio::time::Instant::now();
    let slow = push(&app, &name, &older).await;
    let fast = push(&app, &name, &newer).await;
    let build = wait_for_build(&app, &name, fast, BUILD_AND_BAKE).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert!(build["release_skipped"].is_null(), "{build}");
    eprintln!(
        "build, release and bake of the newer commit: {:?}",
        started.elapsed()
    );
    let build = wait_for_build(&app, &name, slow, BUILD_AND_BAKE).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(
        build["release_skipped"],
        format!(
            "commit {} is an ancestor of v1's commit {}",
            short(&older),
            short(&newer)
        ),
        "{build}"
    );
    assert_eq!(
        releases(&app, &name).await,
        vec![("v1".to_string(), newer.clone())]
    );

    // examples/hello's package is lintian-clean.
    let v1 = &app
        .get_json(&format!("/api/v1/projects/{name}/releases"))
        .await[0];
    assert_eq!(v1["lintian"]["status"], "clean", "{v1}");
    assert_eq!(v1["lintian"]["errors"], serde_json::json!([]), "{v1}");
    assert_eq!(v1["lintian"]["warnings"], serde_json::json!([]), "{v1}");

    // v1 goes live once baked; after the slow build and several auto-deploy rounds nothing
    // else did.
    app.wait_for_bake(&name, "v1").await;
    api.wait_live(&name, "dev", "v1").await;
    tokio::time::sleep(AUTO_DEPLOY_ROUNDS).await;
    let dev = api.environment(&name, "dev").await;
    assert_eq!(dev["live"]["release"], "v1", "{dev}");
    let deployed: Vec<&str> = dev["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["release"].as_str().unwrap())
        .collect();
    assert_eq!(deployed, vec!["v1"], "{dev}");
    let answer = reqwest::get(project.url(0))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(answer.contains("\"version\": \"v1\""), "{answer}");
    app.stop().await;
}

/// A repository whose pipeline sleeps as many seconds as its file `delay` says and packages
/// `app.txt` (with no systemd unit, so its releases are not baked).
fn sleepy_repository(package: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        "steps:\n  - name: work\n    image: slipway/debian:bookworm\n    commands:\n      - sh work.sh\npackage:\n  name: {package}\n  architecture: all\n  maintainer: \"Acme Ops <ops@acme.test>\"\n  description: \"release order test package\"\n  files:\n    - {{src: app.txt, dest: /usr/share/{package}/app.txt, mode: \"0644\"}}\n"
    );
    std::fs::write(dir.path().join(".slipway.yml"), spec).unwrap();
    std::fs::write(dir.path().join("work.sh"), "sleep \"$(cat delay)\"\n").unwrap();
    std::fs::write(dir.path().join("app.txt"), "app\n").unwrap();
    std::fs::write(dir.path().join("delay"), "0\n").unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit_all(dir.path(), "first");
    dir
}

/// Commits a change of `delay` (and of `app.txt`, so every commit differs).
fn commit_delay(repo: &Path, seconds: u32, message: &str) -> String {
    std::fs::write(repo.join("delay"), format!("{seconds}\n")).unwrap();
    std::fs::write(repo.join("app.txt"), format!("{message}\n")).unwrap();
    commit_all(repo, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_follow_history_not_finishing_order_and_unrelated_history_releases() {
    let name = format!("o{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let repo = sleepy_repository("ordered");
    let app = TestApp::spawn(&config(&name, repo.path(), "")).await;
    let limit = Duration::from_secs(180);

    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    let build = wait_for_build(&app, &name, push(&app, &name, &first).await, limit).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(
        releases(&app, &name).await,
        vec![("v1".into(), first.clone())]
    );

    // The same commit again: passed, not released again.
    let build = wait_for_build(&app, &name, push(&app, &name, &first).await, limit).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(
        build["release_skipped"],
        format!("commit {} is v1's commit already", short(&first)),
        "{build}"
    );

    // The older of two commits finishes last: it makes no release.
    let slow = commit_delay(repo.path(), 8, "slow");
    let fast = commit_delay(repo.path(), 0, "fast");
    let (slow_build, fast_build) = (
        push(&app, &name, &slow).await,
        push(&app, &name, &fast).await,
    );
    let build = wait_for_build(&app, &name, slow_build, limit).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(
        build["release_skipped"],
        format!(
            "commit {} is an ancestor of v2's commit {}",
            short(&slow),
            short(&fast)
        ),
        "{build}"
    );
    let build = wait_for_build(&app, &name, fast_build, limit).await;
    assert!(build["release_skipped"].is_null(), "{build}");

    // A force push to unrelated history is not an ancestor: it releases.
    git(repo.path(), &["checkout", "-q", "--orphan", "rewritten"]);
    let rewritten = commit_delay(repo.path(), 0, "rewritten history");
    let build = wait_for_build(&app, &name, push(&app, &name, &rewritten).await, limit).await;
    assert!(build["release_skipped"].is_null(), "{build}");

    // Two builds finishing about at once are decided one after the other: whichever comes
    // first, no release's commit is an ancestor of an earlier release's.
    let parent = commit_delay(repo.path(), 1, "parent");
    let child = commit_delay(repo.path(), 1, "child");
    let (a, b) = (
        push(&app, &name, &parent).await,
        push(&app, &name, &child).await,
    );
    let parent_build = wait_for_build(&app, &name, a, limit).await;
    let child_build = wait_for_build(&app, &name, b, limit).await;
    assert!(child_build["release_skipped"].is_null(), "{child_build}");
    let released = releases(&app, &name).await;
    let versions: Vec<&str> = released.iter().map(|(v, _)| v.as_str()).collect();
    let mut expected = vec!["v1", "v2", "v3"];
    if parent_build["release_skipped"].is_null() {
        expected.extend(["v4", "v5"]);
    } else {
        expected.push("v4");
    }
    assert_eq!(versions, expected, "{released:?}\n{parent_build}");
    let commits: Vec<&str> = released.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(&commits[..3], [&first, &fast, &rewritten]);
    assert_eq!(commits.last(), Some(&child.as_str()));
    for (i, earlier) in commits.iter().enumerate() {
        for later in &commits[i + 1..] {
            assert!(
                !is_ancestor(repo.path(), later, earlier),
                "a later release's commit {later} is an ancestor of {earlier}"
            );
        }
    }
    app.stop().await;
}

/// Records release `number` of `project` for `commit`, baked into `image`, as a server
/// before release ordering may have (numbers out of commit order).
async fn insert_baked_release(
    database_url: &str,
    project: &str,
    number: i64,
    commit: &str,
    image: &str,
) {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let build = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO builds (id, project, number, branch, commit, event, status)
             VALUES ($1, $2, $3::bigint + 1000, 'main', $4, 'push', 'passed')",
            &[&build, &project, &number, &commit],
        )
        .await
        .unwrap();
    client
        .execute(
            "WITH r AS (INSERT INTO releases (id, project, number, build_id, commit, status, bake_status, image)
             VALUES ($1, $2, $3, $4, $5, 'published', 'baked', $6)
             RETURNING id, bake_status, image)
             INSERT INTO release_images (release_id, kind, status, image)
             SELECT id, 'docker', bake_status, image FROM r",
            &[&uuid::Uuid::new_v4(), &project, &number, &build, &commit, &image],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auto_deploy_never_puts_an_older_commit_over_the_live_one() {
    build_images().await;
    let project = Project::new(1).await;
    let name = project.name.clone();
    // A pipeline without a package: its build only fills the server's mirror.
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        "steps:\n  - name: noop\n    image: slipway/debian:bookworm\n    commands: [\"true\"]\n",
    )
    .unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let older = commit_all(repo.path(), "older");
    std::fs::write(repo.path().join("CHANGES"), "newer\n").unwrap();
    let newer = commit_all(repo.path(), "newer");
    let environment = format!(
        "[[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:{}\"\ninstances = 1\nwatch = \"1s\"\n",
        project.ports[0]
    );
    let app = TestApp::spawn(&config(&name, repo.path(), &environment)).await;
    let api = Api::of(&app);
    let build = wait_for_build(
        &app,
        &name,
        push(&app, &name, &newer).await,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(build["status"], "passed", "{build}");

    // Numbered out of commit order, as before releases were ordered: v1 is the newer commit.
    insert_baked_release(&app.database_url, &name, 1, &newer, &image("v1")).await;
    api.wait_live(&name, "dev", "v1").await;
    insert_baked_release(&app.database_url, &name, 2, &older, &image("v2")).await;
    let dev = api
        .wait_for(&name, "dev", Duration::from_secs(30), |e| {
            !e["auto_deploy_skipped"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(dev["auto_deploy_skipped"][0]["release"], "v2", "{dev}");
    assert_eq!(
        dev["auto_deploy_skipped"][0]["reason"],
        format!(
            "commit {} of v2 is an ancestor of commit {} of v1, live in dev",
            short(&older),
            short(&newer)
        ),
        "{dev}"
    );
    tokio::time::sleep(AUTO_DEPLOY_ROUNDS).await;
    let dev = api.environment(&name, "dev").await;
    assert_eq!(dev["live"]["release"], "v1", "{dev}");
    assert_eq!(dev["deployments"].as_array().unwrap().len(), 1, "{dev}");
    assert_eq!(dev["auto_deploy_skipped"].as_array().unwrap().len(), 1);

    // A release of unrelated history is deployed as usual.
    git(repo.path(), &["checkout", "-q", "--orphan", "rewritten"]);
    let rewritten = commit_all(repo.path(), "rewritten");
    let build = wait_for_build(
        &app,
        &name,
        push(&app, &name, &rewritten).await,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(build["status"], "passed", "{build}");
    insert_baked_release(&app.database_url, &name, 3, &rewritten, &image("v2")).await;
    api.wait_live(&name, "dev", "v3").await;
    app.stop().await;
}
