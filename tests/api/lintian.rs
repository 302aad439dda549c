//! Lintian's verdict on each release's package: recorded on the release and shown by the API
//! and `slipway releases`. (examples/hello's package is checked clean in release_order.rs,
//! whose release of it is baked and deployed anyway.)

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::builds::{commit_all, git, push_body};
use crate::helpers::{sign, TestApp};

const SECRET: &str = "lintian-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_records_lintian_errors_and_warnings_and_a_clean_one_none() {
    let name = format!("l{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let repo = tempfile::tempdir().unwrap();
    // Deliberate problems: the description starts with the package name (an error), and a
    // command in /usr/bin has no manual page (a warning).
    let spec = "steps:\n  - name: noop\n    image: slipway/debian:bookworm\n    commands: [\"true\"]\npackage:\n  name: linted\n  architecture: all\n  maintainer: \"Acme Ops <ops@acme.test>\"\n  description: \"linted is a package with problems\"\n  files:\n    - {src: linted, dest: /usr/bin/linted, mode: \"0755\"}\n";
    std::fs::write(repo.path().join(".slipway.yml"), spec).unwrap();
    std::fs::write(repo.path().join("linted"), "#!/bin/sh\necho linted\n").unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let flawed = commit_all(repo.path(), "flawed");
    let config = format!(
        "[[projects]]\nname = \"{name}\"\nrepository = \"acme/{name}\"\nclone_url = \"file://{}\"\nwebhook_secret = \"{SECRET}\"\nbranches = \"^main$\"\n",
        repo.path().display()
    );
    let app = TestApp::spawn(&config).await;

    let started = Instant::now();
    release(&app, &name, &flawed).await;
    let v1 = &checked(&app, &name).await[0];
    eprintln!("build, publish and lintian of v1: {:?}", started.elapsed());
    let lintian = &v1["lintian"];
    assert_eq!(lintian["status"], "issues", "{v1}");
    assert_eq!(
        lintian["errors"],
        json!(["E: linted: description-starts-with-package-name"]),
        "{v1}"
    );
    let warnings: Vec<&str> = lintian["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings.contains(&"W: linted: no-manual-page [usr/bin/linted]"),
        "{v1}"
    );

    // Fixed: the next release is clean.
    std::fs::write(
        repo.path().join(".slipway.yml"),
        spec.replace(
            "linted is a package with problems",
            "example without problems",
        )
        .replace("/usr/bin/linted", "/usr/share/linted/linted"),
    )
    .unwrap();
    let fixed = commit_all(repo.path(), "fixed");
    release(&app, &name, &fixed).await;
    let v2 = &checked(&app, &name).await[0];
    assert_eq!(v2["version"], "v2");
    assert_eq!(
        v2["lintian"],
        json!({"status": "clean", "errors": [], "warnings": [], "note": null}),
        "{v2}"
    );

    // The CLI shows both verdicts and the tags.
    let listed = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["releases", "--server", &app.address, "--token", &app.token])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.contains("LINTIAN"), "{table}");
    let line = |version: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{version} ")))
            .unwrap_or_else(|| panic!("{version} in {table}"))
            .to_string()
    };
    assert!(
        line("v1").contains(&format!("1E {}W", warnings.len())),
        "{table}"
    );
    assert!(line("v2").contains(" clean "), "{table}");
    assert!(
        table.contains("lintian: E: linted: description-starts-with-package-name"),
        "{table}"
    );
    app.stop().await;
}

/// The releases once lintian checked the newest (it runs after the publish, beside the bake).
async fn checked(app: &TestApp, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let releases = app
            .get_json(&format!("/api/v1/projects/{name}/releases"))
            .await;
        if !releases[0]["lintian"].is_null() {
            return releases;
        }
        assert!(Instant::now() < deadline, "lintian never ran: {releases}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Pushes `commit` to main and waits until its build passed with a published release.
async fn release(app: &TestApp, name: &str, commit: &str) {
    let body = push_body(&format!("acme/{name}"), "main", commit);
    let response = app
        .post_hook("repo:push", &body, Some(&sign(SECRET, &body)), None)
        .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let number = answer["queued"][0]["number"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let build = app
            .get_json(&format!("/api/v1/projects/{name}/builds/{number}"))
            .await;
        if !matches!(build["status"].as_str(), Some("queued" | "running")) {
            assert_eq!(build["status"], "passed", "{build}");
            return;
        }
        assert!(Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
