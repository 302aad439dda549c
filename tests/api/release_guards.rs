//! What keeps releases sound: a package name belongs to one project (the first to package it,
//! or the one whose config declares it), a release the server was killed while packaging is
//! failed by the next start, and a bake's stored log is capped.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::builds::{commit_all, git, hello_config, hello_repository, push_body};
use crate::helpers::{sign, TestApp};

const BUILD: Duration = Duration::from_secs(300);

/// A repository whose pipeline is one quick step and whose package `hello` ships `app.txt`
/// holding `text`; no systemd unit, so the release's bake ends at once (nothing to start).
fn tiny_repository(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".slipway.yml"),
        "steps:\n  - name: check\n    image: slipway/debian:bookworm\n    commands:\n      - test -f app.txt\n\
         package:\n  name: hello\n  architecture: all\n  maintainer: \"Acme Ops <ops@acme.test>\"\n  \
         description: \"a tiny release\"\n  files:\n    - {src: app.txt, dest: /usr/share/hello/app.txt, mode: \"0644\"}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("app.txt"), text).unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit_all(dir.path(), "tiny");
    dir
}

/// A `[[projects]]` entry named `name` for `acme/<name>` at `repo`, with `extra` keys.
fn project(name: &str, repo: &Path, extra: &str) -> String {
    format!(
        "[[projects]]\nname = \"{name}\"\nrepository = \"acme/{name}\"\nclone_url = \"file://{}\"\n\
         webhook_secret = \"{name}-secret\"\nbranches = \"^main$\"\n{extra}",
        repo.display()
    )
}

/// Pushes the head of `repo` on main for project `name`; returns the build number.
async fn push_head(app: &TestApp, name: &str, repo: &Path) -> i64 {
    let commit = git(repo, &["rev-parse", "HEAD"]);
    let body = push_body(&format!("acme/{name}"), "main", &commit);
    let response = app
        .post_hook(
            "repo:push",
            &body,
            Some(&sign(&format!("{name}-secret"), &body)),
            None,
        )
        .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    answer["queued"][0]["number"].as_i64().expect("a build")
}

async fn finished_build(app: &TestApp, project: &str, number: i64) -> Value {
    let deadline = Instant::now() + BUILD;
    loop {
        let build = app
            .get_json(&format!("/api/v1/projects/{project}/builds/{number}"))
            .await;
        if !matches!(build["status"].as_str(), Some("queued" | "running")) {
            return build;
        }
        assert!(Instant::now() < deadline, "build still running: {build}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `hello` paragraphs of the apt index the server serves.
async fn served_hello_packages(app: &TestApp) -> Vec<String> {
    let index = app
        .http
        .get(format!(
            "{}/apt/dists/stable/main/binary-amd64/Packages",
            app.address
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    index
        .split("\n\n")
        .filter(|paragraph| paragraph.starts_with("Package: hello\n"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_first_published_by_one_project_cannot_be_published_by_another() {
    let (one, two) = (tiny_repository("from one\n"), tiny_repository("from two\n"));
    let config = format!(
        "{}{}",
        project("one", one.path(), ""),
        project("two", two.path(), "")
    );
    let app = TestApp::spawn(&config).await;

    let build = finished_build(&app, "one", push_head(&app, "one", one.path()).await).await;
    assert_eq!(build["status"], "passed", "{build}");
    let ones = app.get_json("/api/v1/projects/one/releases").await;
    assert_eq!(ones[0]["status"], "published", "{ones}");
    let sha256 = ones[0]["package"]["sha256"].as_str().unwrap().to_string();

    let build = finished_build(&app, "two", push_head(&app, "two", two.path()).await).await;
    let expected = "packaging v1 failed: package `hello` belongs to project `one` \
                    (it packaged it first); choose another package name in .slipway.yml";
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["reason"], expected, "{build}");
    let twos = app.get_json("/api/v1/projects/two/releases").await;
    assert_eq!(twos[0]["status"], "failed", "{twos}");
    assert_eq!(twos[0]["reason"], expected, "{twos}");
    assert_eq!(twos[0]["package"], Value::Null, "{twos}");

    // The repository serves project one's `hello` only.
    let served = served_hello_packages(&app).await;
    assert_eq!(served.len(), 1, "{served:?}");
    assert!(
        served[0].contains(&format!("\nSHA256: {sha256}")),
        "{served:?}"
    );

    // Project one keeps publishing under its name.
    std::fs::write(one.path().join("app.txt"), "from one, again\n").unwrap();
    commit_all(one.path(), "again");
    let build = finished_build(&app, "one", push_head(&app, "one", one.path()).await).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(served_hello_packages(&app).await.len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_name_declared_in_the_config_belongs_to_its_project_even_before_it_publishes() {
    let (one, two) = (tiny_repository("from one\n"), tiny_repository("from two\n"));
    let config = format!(
        "{}{}",
        project("one", one.path(), ""),
        project("two", two.path(), "packages = [\"hello\"]\n")
    );
    let app = TestApp::spawn(&config).await;

    let build = finished_build(&app, "one", push_head(&app, "one", one.path()).await).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(
        build["reason"],
        "packaging v1 failed: package `hello` belongs to project `two` (its config declares it); \
         choose another package name in .slipway.yml"
    );
    assert!(served_hello_packages(&app).await.is_empty());

    let build = finished_build(&app, "two", push_head(&app, "two", two.path()).await).await;
    assert_eq!(build["status"], "passed", "{build}");
    let served = served_hello_packages(&app).await;
    assert_eq!(served.len(), 1, "{served:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_killed_while_packaging_is_failed_with_a_reason_by_the_next_start() {
    use std::os::unix::fs::PermissionsExt;
    // 150 MB of one repeated line: small in git, yet packaging it takes long enough to see
    // the release `packaging` and kill the server. (Not zeros: a sparse checkout file would
    // reach dockerd as a sparse tar entry, which it refuses.)
    let repo = tiny_repository("big\n");
    let line = "slipway packaging test line\n".repeat(1 << 15);
    let mut big =
        std::io::BufWriter::new(std::fs::File::create(repo.path().join("big.bin")).unwrap());
    for _ in 0..(150_000_000 / line.len()) {
        std::io::Write::write_all(&mut big, line.as_bytes()).unwrap();
    }
    std::io::Write::flush(&mut big).unwrap();
    drop(big);
    let spec = std::fs::read_to_string(repo.path().join(".slipway.yml")).unwrap();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        format!("{spec}    - {{src: big.bin, dest: /usr/share/hello/big.bin, mode: \"0644\"}}\n"),
    )
    .unwrap();
    commit_all(repo.path(), "big");

    let dir = tempfile::tempdir().unwrap();
    // The embedded cluster runs as user postgres, which must be able to reach the data dir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("slipway.toml"),
        project("hello", repo.path(), ""),
    )
    .unwrap();
    let data_dir = dir.path().join(".slipway");
    let first = crate::bake::ServerProcess::start(dir.path());
    let token = crate::helpers::read_token(&data_dir);
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    crate::builds::push_to(first.address(), &commit).await;

    let deadline = Instant::now() + BUILD;
    loop {
        let releases = first.releases(&token).await;
        if releases[0]["status"] == "packaging" {
            break;
        }
        let build = first.get(&token, "/api/v1/projects/hello/builds/1").await;
        let over = build["finished_at"].is_string() || Instant::now() > deadline;
        if over || !releases.as_array().is_some_and(|r| r.is_empty()) {
            panic!("never seen packaging: releases {releases}, build {build}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill_9(); // kill -9 while packaging

    let second = crate::bake::ServerProcess::start(dir.path());
    let v1 = second.releases(&token).await[0].clone();
    assert_eq!(v1["status"], "failed", "{v1}");
    assert_eq!(
        v1["reason"],
        "the server or agent running its build stopped while this release was packaging; push again to release the commit"
    );
    assert_eq!(v1["package"], Value::Null, "{v1}");
    let staged: Vec<_> = std::fs::read_dir(data_dir.join("staging"))
        .unwrap()
        .collect();
    assert!(staged.is_empty(), "the half-built package is removed");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bake_log_is_stored_up_to_its_cap_with_a_notice_where_it_was_cut() {
    const LIMIT: usize = 3000;
    let repo = hello_repository();
    let config = format!(
        "bake_log_limit_bytes = {LIMIT}\n{}",
        hello_config(repo.path())
    );
    let app = TestApp::spawn(&config).await;
    let number = crate::builds::push(&app, "main", &git(repo.path(), &["rev-parse", "HEAD"])).await;
    let build = crate::builds::wait_for_build(&app, number, Duration::from_secs(900)).await;
    assert_eq!(build["status"], "passed", "{build}");
    let v1 = app.wait_for_bake("hello", "v1").await;
    assert_eq!(
        v1["bake_status"], "baked",
        "the cap does not affect the bake: {v1}"
    );

    let lines: Vec<String> = app
        .get_json("/api/v1/projects/hello/releases/v1/bake-log")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect();
    let cut = lines
        .iter()
        .position(|l| l.starts_with("==> slipway: bake log cut at 3000 bytes"))
        .unwrap_or_else(|| panic!("no cut notice in {lines:#?}"));
    let kept: usize = lines[..cut].iter().map(|l| l.len() + 1).sum();
    assert!(kept <= LIMIT, "{kept} bytes kept before the notice");
    assert_eq!(
        lines.len(),
        cut + 2,
        "the notice, then one summary: {lines:#?}"
    );
    assert!(
        lines[cut + 1].contains("of bake output were not stored"),
        "{lines:#?}"
    );
    app.stop().await;
}
