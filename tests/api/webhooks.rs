use crate::helpers::{fixture_path, project_config, sign, TestApp};

const SECRET: &str = "Gkvl$k$wyNpQAF42";
const SIGNATURE: &str = "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035";

fn fixture_app_config() -> String {
    // A clone URL that cannot be cloned: these tests are about what gets queued.
    project_config(
        "nfalco79/test-repos",
        SECRET,
        "file:///nonexistent/test-repos.git",
        "^feature/.*$",
    )
}

#[tokio::test]
async fn the_recorded_delivery_queues_exactly_one_build_of_its_branch_and_commit() {
    let app = TestApp::spawn(&fixture_app_config()).await;
    let body = std::fs::read(fixture_path()).unwrap();
    let response = app
        .post_hook("repo:push", &body, Some(SIGNATURE), Some("delivery-1"))
        .await;
    assert_eq!(response.status(), 202);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["queued"].as_array().unwrap().len(), 1);

    let builds = app.builds().await;
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0]["number"], 1);
    assert_eq!(builds[0]["branch"], "feature/webhook");
    assert_eq!(
        builds[0]["commit"],
        "d7f300a32270053bdfd97a6d64113f58202c33e7"
    );

    // The same delivery again (Bitbucket retries) queues nothing new.
    let again = app
        .post_hook("repo:push", &body, Some(SIGNATURE), Some("delivery-1"))
        .await;
    assert_eq!(again.status(), 200);
    let answer: serde_json::Value = again.json().await.unwrap();
    assert!(answer["ignored"]
        .as_str()
        .unwrap()
        .contains("already received"));
    assert_eq!(app.builds().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_changed_hex_digit_in_the_signature_queues_nothing() {
    let app = TestApp::spawn(&fixture_app_config()).await;
    let body = std::fs::read(fixture_path()).unwrap();
    let mut forged = SIGNATURE.to_string();
    forged.replace_range(20..21, if &SIGNATURE[20..21] == "a" { "b" } else { "a" });
    let response = app
        .post_hook("repo:push", &body, Some(&forged), Some("d1"))
        .await;
    assert_eq!(response.status(), 401);
    let missing = app.post_hook("repo:push", &body, None, Some("d2")).await;
    assert_eq!(missing.status(), 401);
    assert!(app.builds().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn bad_bodies_and_other_repositories_get_clear_answers() {
    let app = TestApp::spawn(&fixture_app_config()).await;

    let malformed = app
        .post_hook("repo:push", b"{\"push\":", Some("sha256=00"), None)
        .await;
    assert_eq!(malformed.status(), 400);

    let huge = vec![b' '; 2 * 1024 * 1024];
    let too_big = app.post_hook("repo:push", &huge, None, None).await;
    assert_eq!(too_big.status(), 413);

    let other = br#"{"repository":{"full_name":"someone/else"},"push":{"changes":[]}}"#;
    let ignored = app
        .post_hook("repo:push", other, Some(&sign(SECRET, other)), None)
        .await;
    assert_eq!(ignored.status(), 200);
    let answer: serde_json::Value = ignored.json().await.unwrap();
    assert_eq!(
        answer["ignored"],
        "no project is configured for repository `someone/else`"
    );

    let ping = app
        .post_hook("diagnostics:ping", b"{\"test\":true}", None, None)
        .await;
    assert_eq!(ping.status(), 202);
    assert!(app.builds().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn data_center_pushes_queue_matching_branches_and_skip_deletions() {
    let secret = "dc-secret";
    let app = TestApp::spawn(&project_config(
        "ACME/hello",
        secret,
        "file:///nonexistent.git",
        "^(main|release/.*)$",
    ))
    .await;
    let body = br#"{"eventKey":"repo:refs_changed","repository":{"slug":"hello","project":{"key":"ACME"}},"changes":[
        {"refId":"refs/heads/main","fromHash":"a1","toHash":"1111111111111111111111111111111111111111","type":"UPDATE"},
        {"refId":"refs/heads/release/2.0","fromHash":"0000000000000000000000000000000000000000","toHash":"2222222222222222222222222222222222222222","type":"ADD"},
        {"refId":"refs/heads/experiment","fromHash":"b1","toHash":"3333333333333333333333333333333333333333","type":"UPDATE"},
        {"refId":"refs/heads/release/1.0","fromHash":"c1","toHash":"0000000000000000000000000000000000000000","type":"DELETE"}]}"#;
    let response = app
        .post_hook("repo:refs_changed", body, Some(&sign(secret, body)), None)
        .await;
    assert_eq!(response.status(), 202);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["skipped"].as_array().unwrap().len(), 2, "{answer}");

    let mut builds: Vec<(String, String)> = app
        .builds()
        .await
        .iter()
        .map(|b| {
            (
                b["branch"].as_str().unwrap().to_string(),
                b["commit"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    builds.sort();
    assert_eq!(
        builds,
        vec![
            ("main".to_string(), "1".repeat(40)),
            ("release/2.0".to_string(), "2".repeat(40)),
        ]
    );
    app.stop().await;
}
