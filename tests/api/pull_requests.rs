//! Pull requests and tags: a Cloud pull request (its commit named by an abbreviated id)
//! builds its source commit with `SLIPWAY_EVENT=pull_request` and the pull request in the
//! environment, skips push-only steps and never becomes a release, even from the deploy
//! branch; a pull request from a fork (Cloud or Data Center) builds the fork's commit with no
//! secrets; a tag push builds as
//! `event: tag`; a pull request whose branch moved on queues nothing; a fork whose clone URL
//! `clone_url` does not tell is fetched from the one Bitbucket's API gives; and with `auto_cancel`, a
//! newer push cancels the older builds of its branch, except on the deploy branch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::bitbucket::Recorder;
use crate::builds::{commit_all, git};
use crate::helpers::{sign, TestApp};
use crate::release_order::wait_for_build;
use crate::sources::serve_git;

const SECRET: &str = "pr-secret";
const TOKEN: &str = "pr-token-value-4f3e2d1c";
/// The project's Bitbucket token: the git server and the API's stand-in accept it.
const BITBUCKET_TOKEN: &str = "pr-bitbucket-token-8a7b6c5d";

/// A repository at `<root>/acme/prs` (so that its forks are at `<root>/<owner>/prs`) whose
/// first step prints the build's variables and uses a secret, and whose second runs on pushes
/// only; its package makes a release of a deploy-branch push.
fn repository(root: &Path) -> PathBuf {
    let dir = root.join("acme/prs");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = "steps:\n  - name: show\n    image: slipway/debian:bookworm\n    secrets: [TOKEN]\n    commands:\n      - env | grep '^SLIPWAY_' | sort\n      - echo \"token=$TOKEN\"\n  - name: push-only\n    image: slipway/debian:bookworm\n    commands: [\"echo pushed\"]\n    when:\n      event: [push]\npackage:\n  name: prs\n  architecture: all\n  maintainer: \"Acme Ops <ops@acme.test>\"\n  description: \"pull request test package\"\n  files:\n    - {src: app.txt, dest: /usr/share/prs/app.txt, mode: \"0644\"}\n";
    std::fs::write(dir.join(".slipway.yml"), spec).unwrap();
    std::fs::write(dir.join("app.txt"), "0\n").unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    commit_all(&dir, "first");
    dir
}

/// A fork of `repo` at `<root>/<owner>/prs` with a commit of its own on branch `forked`; that
/// commit.
fn fork(root: &Path, repo: &Path, owner: &str) -> String {
    let dir = root.join(owner).join("prs");
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    git(
        root,
        &[
            "clone",
            "-q",
            &repo.display().to_string(),
            &dir.display().to_string(),
        ],
    );
    git(&dir, &["checkout", "-q", "-b", "forked"]);
    std::fs::write(dir.join("app.txt"), format!("from {owner}\n")).unwrap();
    commit_all(&dir, "a change from a fork")
}

async fn deliver(app: &TestApp, event: &str, body: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let response = app
        .post_hook(event, &body, Some(&sign(SECRET, &body)), None)
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn cloud_pull_request(number: i64, source: &str, target: &str, commit: &str, from: &str) -> Value {
    json!({
        "repository": {"full_name": "acme/prs"},
        "pullrequest": {
            "id": number, "title": format!("Change {source}"), "state": "OPEN",
            "source": {"branch": {"name": source}, "commit": {"hash": commit}, "repository": {"full_name": from}},
            "destination": {"branch": {"name": target}, "commit": {"hash": "0123456789ab"}, "repository": {"full_name": "acme/prs"}}
        }
    })
}

/// The lines build `number` printed.
async fn log(app: &TestApp, number: i64) -> String {
    let lines = app
        .get_json(&format!(
            "/api/v1/projects/prs/builds/{number}/logs?limit=1000"
        ))
        .await;
    lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("{}\n", l["line"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_requests_and_tags_build_as_their_events_and_never_release() {
    let root = tempfile::tempdir().unwrap();
    let repo = repository(root.path());
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.join("app.txt"), "feature\n").unwrap();
    let feature = commit_all(&repo, "a feature");
    git(&repo, &["checkout", "-q", "main"]);
    let main = git(&repo, &["rev-parse", "HEAD"]);
    let from_bob = fork(root.path(), &repo, "bob");
    let from_carol = fork(root.path(), &repo, "~CAROL");
    let config = format!(
        "[[projects]]\nname = \"prs\"\nrepository = \"acme/prs\"\nclone_url = \"file://{}\"\nwebhook_secret = \"{SECRET}\"\n[projects.secrets]\nTOKEN = \"{TOKEN}\"\n",
        repo.display()
    );
    let app = TestApp::spawn(&config).await;

    // A Cloud pull request of `feature` into main, named by 12 hex digits.
    let (status, answer) = deliver(
        &app,
        "pullrequest:created",
        &cloud_pull_request(42, "feature", "main", &feature[..12], "acme/prs"),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["queued"][0]["commit"],
        feature.as_str(),
        "the full id"
    );
    assert_eq!(answer["queued"][0]["event"], "pull_request");
    let number = answer["queued"][0]["number"].as_i64().unwrap();
    let build = wait_for_build(&app, "prs", number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(build["pull_request"]["number"], 42, "{build}");
    assert_eq!(build["pull_request"]["from_fork"], false, "{build}");
    assert_eq!(
        (&build["author"], &build["message"]),
        (&json!("Test"), &json!("a feature")),
        "the commit's author and message line"
    );
    let text = log(&app, number).await;
    for line in [
        "SLIPWAY_EVENT=pull_request",
        "SLIPWAY_PULL_REQUEST=42",
        "SLIPWAY_PULL_REQUEST_TITLE=Change feature",
        "SLIPWAY_SOURCE_BRANCH=feature",
        "SLIPWAY_TARGET_BRANCH=main",
        "SLIPWAY_SOURCE_REPOSITORY=acme/prs",
        "SLIPWAY_BRANCH=feature",
        "token=****",
    ] {
        assert!(text.contains(&format!("{line}\n")), "{line} in {text}");
    }
    let steps = app
        .get_json(&format!("/api/v1/projects/prs/builds/{number}"))
        .await["steps"]
        .clone();
    let push_only = steps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "push-only")
        .unwrap();
    assert_eq!(push_only["status"], "skipped", "{steps}");

    // A pull request from the deploy branch passes and still makes no release.
    let (status, answer) = deliver(
        &app,
        "pullrequest:updated",
        &cloud_pull_request(43, "main", "release", &main[..12], "acme/prs"),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let number = answer["queued"][0]["number"].as_i64().unwrap();
    let build = wait_for_build(&app, "prs", number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");

    // A tag push builds as `event: tag`.
    let tag = json!({"repository": {"full_name": "acme/prs"}, "push": {"changes": [
        {"old": null, "new": {"type": "tag", "name": "v1.0.0", "target": {"hash": main}}}]}});
    let (status, answer) = deliver(&app, "repo:push", &tag).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["queued"][0]["event"], "tag");
    let number = answer["queued"][0]["number"].as_i64().unwrap();
    let build = wait_for_build(&app, "prs", number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");
    let text = log(&app, number).await;
    assert!(
        text.contains("SLIPWAY_EVENT=tag\n") && text.contains("SLIPWAY_TAG=v1.0.0\n"),
        "{text}"
    );
    let releases = app.get_json("/api/v1/projects/prs/releases").await;
    assert_eq!(
        releases,
        json!([]),
        "no pull request or tag makes a release"
    );

    // Pull requests from forks (Cloud, by an abbreviated id; Data Center): the fork's commit
    // builds, with no secrets, and the build says why it stopped.
    let cloud_fork = cloud_pull_request(44, "forked", "main", &from_bob[..12], "bob/prs");
    let dc_fork = json!({"eventKey": "pr:opened", "pullRequest": {"id": 7, "title": "From a fork",
        "fromRef": {"id": "refs/heads/forked", "displayId": "forked", "latestCommit": from_carol,
                    "repository": {"slug": "prs", "project": {"key": "~CAROL"}}},
        "toRef": {"id": "refs/heads/main", "displayId": "main", "latestCommit": main,
                  "repository": {"slug": "prs", "project": {"key": "ACME"}}}}});
    for (event, body, commit, source) in [
        ("pullrequest:created", &cloud_fork, &from_bob, "bob/prs"),
        ("pr:opened", &dc_fork, &from_carol, "~CAROL/prs"),
    ] {
        let (status, answer) = deliver(&app, event, body).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["queued"][0]["commit"], commit.as_str());
        let number = answer["queued"][0]["number"].as_i64().unwrap();
        let build = wait_for_build(&app, "prs", number, Duration::from_secs(300)).await;
        assert_eq!(build["status"], "errored", "{build}");
        assert_eq!(build["pull_request"]["from_fork"], true, "{build}");
        assert_eq!(
            build["pull_request"]["source_repository"], source,
            "{build}"
        );
        let reason = build["reason"].as_str().unwrap();
        assert!(
            reason.contains("secret `TOKEN` needed by step `show` was not supplied")
                && reason.contains("a pull request from a fork gets no secrets"),
            "{reason}"
        );
        assert!(!log(&app, number).await.contains(TOKEN));
    }

    // A pull request whose branch moved on since the event was sent queues nothing.
    let (status, answer) = deliver(
        &app,
        "pullrequest:updated",
        &cloud_pull_request(42, "feature", "main", "abcdef123456", "acme/prs"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["ignored"].as_str().unwrap().contains("moved on"),
        "{answer}"
    );
    app.stop().await;
}

/// Waits until build `number` of project `name` runs a step.
async fn wait_running(app: &TestApp, name: &str, number: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let build = app
            .get_json(&format!("/api/v1/projects/{name}/builds/{number}"))
            .await;
        if build["status"] == "running" && !build["steps"].as_array().unwrap().is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_push_cancels_the_older_builds_of_its_branch_but_not_of_the_deploy_branch() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "steps:\n  - name: wait\n    image: slipway/debian:bookworm\n    commands: [\"sleep $(cat delay)\"]\n";
    std::fs::write(dir.path().join(".slipway.yml"), spec).unwrap();
    std::fs::write(dir.path().join("delay"), "0\n").unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit_all(dir.path(), "first");
    let config = format!(
        "max_concurrent_builds = 4\n[[projects]]\nname = \"prs\"\nrepository = \"acme/prs\"\nclone_url = \"file://{}\"\nwebhook_secret = \"{SECRET}\"\nbranches = \".*\"\nauto_cancel = true\n",
        dir.path().display()
    );
    let app = TestApp::spawn(&config).await;
    let pushes = std::cell::Cell::new(0);
    let push = |branch: &str, delay: &str| {
        git(dir.path(), &["checkout", "-q", "-B", branch]);
        std::fs::write(dir.path().join("delay"), format!("{delay}\n")).unwrap();
        pushes.set(pushes.get() + 1);
        std::fs::write(dir.path().join("push"), pushes.get().to_string()).unwrap();
        let commit = commit_all(dir.path(), &format!("{branch} {delay}"));
        json!({"repository": {"full_name": "acme/prs"}, "push": {"changes": [
            {"old": null, "new": {"type": "branch", "name": branch, "target": {"hash": commit}}}]}})
    };
    let queued = |answer: Value| answer["queued"][0]["number"].as_i64().unwrap();

    // On a feature branch: a running build and a queued one are both superseded.
    let slow = queued(deliver(&app, "repo:push", &push("feature", "300")).await.1);
    wait_running(&app, "prs", slow).await;
    let (_, answer) = deliver(&app, "repo:push", &push("feature", "300")).await;
    let middle = queued(answer);
    let newest = queued(deliver(&app, "repo:push", &push("feature", "0")).await.1);
    for (number, by) in [(slow, middle), (middle, newest)] {
        let build = wait_for_build(&app, "prs", number, Duration::from_secs(60)).await;
        assert_eq!(build["status"], "cancelled", "{build}");
        assert_eq!(
            build["reason"],
            format!("superseded by build #{by}"),
            "{build}"
        );
    }
    let build = wait_for_build(&app, "prs", newest, Duration::from_secs(120)).await;
    assert_eq!(build["status"], "passed", "{build}");

    // On the deploy branch every push builds.
    let older = queued(deliver(&app, "repo:push", &push("main", "2")).await.1);
    let newer = queued(deliver(&app, "repo:push", &push("main", "0")).await.1);
    for number in [older, newer] {
        let build = wait_for_build(&app, "prs", number, Duration::from_secs(120)).await;
        assert_eq!(build["status"], "passed", "{build}");
    }
    app.stop().await;
}

/// A pull request from a fork that `clone_url` cannot tell the URL of (it names a mirror's
/// path, not `acme/prs`) is fetched from the clone URL Bitbucket's API gives for the fork,
/// with the project's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_clone_url_does_not_name_is_fetched_from_the_url_bitbucket_gives() {
    let root = tempfile::tempdir().unwrap();
    let repo = repository(root.path());
    let from_bob = fork(root.path(), &repo, "bob");
    let served = tempfile::tempdir().unwrap();
    for (source, bare) in [
        (&repo, "mirror/prs-mirror.git"),
        (&root.path().join("bob/prs"), "bob/prs.git"),
    ] {
        let (source, bare) = (source.display().to_string(), served.path().join(bare));
        git(
            served.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &source,
                &bare.display().to_string(),
            ],
        );
    }
    let git_server = serve_git(served.path().to_path_buf(), "x-token-auth", BITBUCKET_TOKEN).await;
    let recorder = Recorder::start().await;
    let links = json!({"links": {"clone": [
        {"name": "https", "href": format!("http://bob@{}/bob/prs.git", git_server.address)},
        {"name": "ssh", "href": format!("git@{}:bob/prs.git", git_server.address.ip())}]}});
    recorder
        .documents
        .lock()
        .unwrap()
        .insert("/2.0/repositories/bob/prs".into(), links);
    let token_file = root.path().join("token");
    std::fs::write(&token_file, BITBUCKET_TOKEN).unwrap();
    let config = format!(
        "[[projects]]\nname = \"prs\"\nrepository = \"acme/prs\"\nclone_url = \"http://{}/mirror/prs-mirror.git\"\nwebhook_secret = \"{SECRET}\"\ntrust_forks = true\n[projects.secrets]\nTOKEN = \"{TOKEN}\"\n[projects.bitbucket]\napi_url = \"{}\"\ntoken_file = \"{}\"\n",
        git_server.address,
        recorder.address,
        token_file.display()
    );
    let app = TestApp::spawn(&config).await;

    let body = cloud_pull_request(46, "forked", "main", &from_bob[..12], "bob/prs");
    let (status, answer) = deliver(&app, "pullrequest:created", &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["queued"][0]["commit"], from_bob.as_str());
    let number = answer["queued"][0]["number"].as_i64().unwrap();
    let build = wait_for_build(&app, "prs", number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert!(log(&app, number)
        .await
        .contains("SLIPWAY_SOURCE_REPOSITORY=bob/prs"));
    let asked: Vec<_> = recorder
        .calls()
        .into_iter()
        .filter(|call| call.method == "GET")
        .collect();
    assert_eq!(asked.len(), 1, "{asked:#?}");
    assert_eq!(asked[0].path, "/2.0/repositories/bob/prs");
    assert_eq!(asked[0].authorization, format!("Bearer {BITBUCKET_TOKEN}"));
    app.stop().await;
}
