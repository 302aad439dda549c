//! Notifications: a failing build and an automatic rollback each send one Slack-shaped message
//! (through a refused first attempt) with a link to the build or the deployment; a fixed build
//! and a deployment reach a signed JSON webhook; each target gets only the events it asked for,
//! and every delivery shows in the API.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::bitbucket::{Call, Recorder};
use crate::builds::{commit_all, push_queued};
use crate::deploy::{image, insert_release, Api, Project};
use crate::helpers::TestApp;
use crate::servers::quick_repository;

const SECRET: &str = "notify-secret";
const HOOK_SECRET: &str = "notify-hook-signing-secret";
/// The part of a Slack webhook URL that is its credential.
const SLACK_TOKEN: &str = "T0001/B0002/notifyslacktoken";

/// The calls `recorder` received on `path_start`, once there are at least `count`.
async fn calls_on(recorder: &Recorder, path_start: &str, count: usize) -> Vec<Call> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let calls: Vec<Call> = recorder
            .calls()
            .into_iter()
            .filter(|c| c.path.starts_with(path_start))
            .collect();
        if calls.len() >= count {
            return calls;
        }
        assert!(Instant::now() < deadline, "{calls:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_fixes_deployments_and_rollbacks_reach_the_targets_that_asked_for_them() {
    let recorder = Recorder::start().await;
    let project = Project::new(1).await;
    let name = project.name.clone();
    let repo = quick_repository();
    let spec = std::fs::read_to_string(repo.path().join(".slipway.yml")).unwrap();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        spec.replace("echo \"ran once", "exit 3; echo \"ran once"),
    )
    .unwrap();
    let failing = commit_all(repo.path(), "break the build");
    std::fs::write(repo.path().join(".slipway.yml"), &spec).unwrap();
    let fixed = commit_all(repo.path(), "fix the build");
    let config = project
        .config("watch = \"6s\"")
        .replace(
            "clone_url = \"file:///nonexistent\"\n",
            &format!(
                "clone_url = \"file://{}\"\nwebhook_secret = \"{SECRET}\"\n[[projects.notify]]\nkind = \"slack\"\nurl_env = \"SLACK_URL\"\non = [\"build_failed\", \"rolled_back\"]\n[[projects.notify]]\nkind = \"webhook\"\nurl_env = \"HOOK_URL\"\nsecret_env = \"HOOK_SECRET\"\non = [\"build_fixed\", \"deployed\"]\n",
                repo.path().display()
            ),
        );
    let slack_url = format!("{}/services/{SLACK_TOKEN}", recorder.address);
    let hook_url = format!("{}/hooks/slipway", recorder.address);
    let app = TestApp::spawn_with_env(
        &config,
        crate::helpers::test_database(),
        &[
            ("SLACK_URL", slack_url.as_str()),
            ("HOOK_URL", hook_url.as_str()),
            ("HOOK_SECRET", HOOK_SECRET),
        ],
    )
    .await;
    let api = Api::of(&app);

    // A failing build: one Slack message, after one refused attempt, linking to the build.
    recorder.answers.lock().unwrap().push_back(500);
    let number = push_queued(
        &app.address,
        (&format!("acme/{name}"), SECRET),
        "main",
        &failing,
    )
    .await;
    let slack = calls_on(&recorder, "/services/", 2).await;
    assert_eq!(
        slack[0].raw, slack[1].raw,
        "the retry sends the same message"
    );
    let text = slack[1].body["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("{name} build #{number} failed on main (")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "<{}/api/v1/projects/{name}/builds/{number}|details>",
            app.address
        )),
        "{text}"
    );
    assert_eq!(slack[1].content_type, "application/json");
    let fields: Vec<&String> = slack[1].body.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["text"], "Slack's incoming webhook shape");

    // Fixed: the signed webhook hears of it; Slack did not ask.
    let number = push_queued(
        &app.address,
        (&format!("acme/{name}"), SECRET),
        "main",
        &fixed,
    )
    .await;
    let hooks = calls_on(&recorder, "/hooks/slipway", 1).await;
    let fixed_call = &hooks[0];
    assert_eq!(
        fixed_call.body["event"], "build_fixed",
        "{:?}",
        fixed_call.body
    );
    assert_eq!(fixed_call.body["project"], name.as_str());
    assert_eq!(fixed_call.body["facts"]["build"], number);
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(&fixed_call.raw);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        fixed_call.headers["x-slipway-signature"].to_str().unwrap(),
        signature
    );
    assert_eq!(
        fixed_call.headers["x-slipway-event"].to_str().unwrap(),
        "build_fixed"
    );

    // v1 reaches dev by itself (deployed, by Slipway); v2's instances die while it is watched,
    // and Slipway rolls it back to v1's warm fleet.
    insert_release(&app.database_url, &name, 101, &image("v1"), true).await;
    api.wait_live(&name, "dev", "v101").await;
    let hooks = calls_on(&recorder, "/hooks/slipway", 2).await;
    assert_eq!(hooks[1].body["event"], "deployed", "{:?}", hooks[1].body);
    assert_eq!(hooks[1].body["by"], "slipway");
    assert!(hooks[1].body["text"]
        .as_str()
        .unwrap()
        .contains("v101 deployed to dev (by Slipway)"));
    insert_release(&app.database_url, &name, 102, &image("v2"), true).await;
    api.wait_for(&name, "dev", Duration::from_secs(60), |e| {
        e["deployments"][0]["release"] == "v102" && e["deployments"][0]["state"] == "watching"
    })
    .await;
    let killed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker ps -q --filter label=slipway.project={name} --filter label=slipway.release=v102 --filter label=slipway.role=instance | xargs -r docker kill"
        ))
        .output()
        .unwrap();
    assert!(killed.status.success());
    let dev = api
        .wait_for(&name, "dev", Duration::from_secs(60), |e| {
            e["deployments"][0]["release"] == "v102"
                && e["deployments"][0]["state"] == "rolled_back"
        })
        .await;
    let deployment = dev["deployments"][0]["id"].as_str().unwrap().to_owned();
    let slack = calls_on(&recorder, "/services/", 3).await;
    assert_eq!(slack.len(), 3, "one message per event: {slack:#?}");
    let text = slack[2].body["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("{name} v102 rolled back automatically in dev: ")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "<{}/api/v1/projects/{name}/deployments/{deployment}|details>",
            app.address
        )),
        "{text}"
    );

    // Every delivery is listed with its outcome; no URL (nor its token) is shown.
    let listed = app
        .get_json(&format!("/api/v1/projects/{name}/notifications"))
        .await;
    let listed = listed.as_array().unwrap();
    let events: Vec<(&str, &str, i64)> = listed
        .iter()
        .rev()
        .map(|n| {
            assert_eq!(n["outcome"], "delivered", "{n}");
            (
                n["event"].as_str().unwrap(),
                n["kind"].as_str().unwrap(),
                n["attempts"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("build_failed", "slack", 1),
            ("build_fixed", "webhook", 0),
            ("deployed", "webhook", 0),
            ("rolled_back", "slack", 0)
        ]
    );
    let text = Value::Array(listed.clone()).to_string();
    assert!(!text.contains(SLACK_TOKEN) && !text.contains(HOOK_SECRET));
    app.stop().await;
}

/// `config` with a Slack target for `events` of its last project, at the URL that
/// [`slack_env`] names.
pub fn with_slack(config: &str, events: &[&str]) -> String {
    format!("{config}\n[[projects.notify]]\nkind = \"slack\"\nurl_env = \"SLACK_URL\"\non = {events:?}\n")
}

/// The environment that points [`with_slack`]'s target at `recorder`.
pub fn slack_env(recorder: &Recorder) -> (&'static str, String) {
    (
        "SLACK_URL",
        format!("{}/services/{SLACK_TOKEN}", recorder.address),
    )
}

/// The texts of the Slack messages `recorder` got, once there are `count`; with the count it
/// got within a further second (so a test sees a duplicate).
pub async fn slack_texts(recorder: &Recorder, count: usize) -> Vec<String> {
    calls_on(recorder, "/services/", count).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    calls_on(recorder, "/services/", count)
        .await
        .iter()
        .map(|call| call.body["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}
