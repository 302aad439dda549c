//! Input that cannot hurt: signed deliveries whose fields Slipway refuses (400 naming the
//! field, nothing queued and nothing recorded as seen, so a corrected redelivery under the
//! same id is accepted), and a `.slipway.yml` that fans out through aliases.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::builds::{commit_all, hello_config, hello_repository, push, wait_for_build};
use crate::helpers::{project_config, sign, TestApp};

const SECRET: &str = "input-secret";
const GOOD_COMMIT: &str = "d7f300a32270053bdfd97a6d64113f58202c33e7";

fn cloud_push(branch: &str, commit: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "repository": {"full_name": "acme/hello"},
        "push": {"changes": [{"old": null, "new": {"type": "branch", "name": branch, "target": {"hash": commit}}}]}
    }))
    .unwrap()
}

async fn spawn() -> TestApp {
    // Every branch matches, so only validation can refuse; the clone URL is never reached.
    TestApp::spawn(&project_config(
        "acme/hello",
        SECRET,
        "file:///nonexistent/hello.git",
        "^.*$",
    ))
    .await
}

async fn refused(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_commit_that_is_not_a_full_hex_id_gets_400_and_a_fixed_redelivery_queues() {
    let app = spawn().await;
    let with_nul = format!("{GOOD_COMMIT}\0");
    for (index, commit) in ["-f", "origin/evil", "d7f300a", with_nul.as_str()]
        .into_iter()
        .enumerate()
    {
        let body = cloud_push("main", commit);
        let delivery = format!("bad-commit-{index}");
        let answer = app
            .post_hook(
                "repo:push",
                &body,
                Some(&sign(SECRET, &body)),
                Some(&delivery),
            )
            .await;
        let error = refused(answer).await;
        assert!(
            error.starts_with("push.changes[0].new.target.hash: "),
            "{commit:?}: {error}"
        );
        assert!(app.builds().await.is_empty(), "{commit:?} queued a build");
    }

    // Bitbucket redelivers under the same id once the sender is fixed: it must be accepted.
    let body = cloud_push("main", &GOOD_COMMIT.to_uppercase());
    let answer = app
        .post_hook(
            "repo:push",
            &body,
            Some(&sign(SECRET, &body)),
            Some("bad-commit-0"),
        )
        .await;
    assert_eq!(answer.status(), 202);
    let builds = app.builds().await;
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0]["commit"], GOOD_COMMIT, "stored in lowercase");
    app.stop().await;
}

#[tokio::test]
async fn bad_branch_names_and_control_characters_get_400_naming_the_field() {
    let app = spawn().await;
    for branch in [
        "-f",
        "main\0",
        "a..b",
        "feature/x.lock",
        "x@{1}",
        "evil\u{1b}[2J",
    ] {
        let body = cloud_push(branch, GOOD_COMMIT);
        let answer = app
            .post_hook("repo:push", &body, Some(&sign(SECRET, &body)), None)
            .await;
        let error = refused(answer).await;
        assert!(
            error.starts_with("push.changes[0].new.name: "),
            "{branch:?}: {error}"
        );
    }

    // Data Center: a NUL in the ref of an otherwise valid push refuses the whole delivery.
    let body = serde_json::to_vec(&json!({
        "repository": {"full_name": "acme/hello"},
        "changes": [
            {"refId": "refs/heads/main", "fromHash": "0", "toHash": GOOD_COMMIT, "type": "UPDATE"},
            {"refId": "refs/heads/ma\u{0}in", "fromHash": "0", "toHash": GOOD_COMMIT, "type": "UPDATE"}
        ]
    }))
    .unwrap();
    let answer = app
        .post_hook(
            "repo:refs_changed",
            &body,
            Some(&sign(SECRET, &body)),
            Some("dc-1"),
        )
        .await;
    let error = refused(answer).await;
    assert!(
        error.contains("changes[1].refId: contains the control character U+0000"),
        "{error}"
    );

    let body = cloud_push("main", GOOD_COMMIT);
    let long_id = "x".repeat(129);
    let answer = app
        .post_hook(
            "repo:push",
            &body,
            Some(&sign(SECRET, &body)),
            Some(&long_id),
        )
        .await;
    assert!(refused(answer).await.starts_with("header X-Request-UUID: "));
    assert!(app.builds().await.is_empty());
    app.stop().await;
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test]
async fn an_alias_fan_out_pipeline_fails_its_build_at_once_with_a_clear_error() {
    let repo = hello_repository();
    // One step of 1,000 long commands, then steps that are all `*step`: about 256 KB that
    // expand into gigabytes of commands without the alias budget.
    let mut spec = String::from("steps:\n- &step\n  name: build\n  image: debian\n  commands:\n");
    for i in 0..1000 {
        spec.push_str(&format!("  - \"echo {i:04} {}\"\n", "x".repeat(88)));
    }
    while spec.len() + 8 <= 256 * 1024 {
        spec.push_str("- *step\n");
    }
    std::fs::write(repo.path().join(".slipway.yml"), &spec).unwrap();
    let commit = commit_all(repo.path(), "fan out");
    let app = TestApp::spawn(&hello_config(repo.path())).await;

    // Peak RSS of this process (the server runs in it) from now on (Linux `clear_refs` 5).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let started = Instant::now();
    let number = push(&app, "main", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let peak = peak_rss_bytes();
    eprintln!("fan-out build failed {took:?} after the push; peak RSS {peak} bytes");

    assert_eq!(build["status"], "failed");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.starts_with(".slipway.yml: line "), "{reason}");
    assert!(reason.contains("counting each use of an alias"), "{reason}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Without the budget the server grew by gigabytes; other tests may share this process.
    assert!(peak < 500 * 1024 * 1024, "peak RSS {peak} bytes");
    app.stop().await;
}
