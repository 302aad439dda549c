//! Housekeeping (`[retention]`), run by a server shortly after it starts: old builds deleted
//! with their logs (never one that made a release), old versions of a package removed from
//! the signed apt repository, and Docker images of old releases removed, never those of a
//! release live or kept warm in an environment.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::builds::{commit_all, push_body};
use crate::deploy::{image, insert_release, Api, Project};
use crate::helpers::{sign, TestApp};
use crate::release_order::wait_for_build;
use crate::servers::{bytes, quick_repository};

const SECRET: &str = "retention-secret";

async fn push(app: &TestApp, branch: &str, commit: &str) -> i64 {
    let body = push_body("acme/shared", branch, commit);
    let response = app
        .post_hook("repo:push", &body, Some(&sign(SECRET, &body)), None)
        .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let number = answer["queued"][0]["number"].as_i64().expect("a build");
    let build = wait_for_build(app, "shared", number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");
    number
}

/// Waits until `check` holds, for at most a minute.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(60), "{what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_builds_and_old_package_versions_go_and_releases_builds_stay() {
    let repo = quick_repository();
    let apt = tempfile::tempdir().unwrap();
    let text = format!(
        "[apt]\ndir = \"{}\"\n[[projects]]\nname = \"shared\"\nrepository = \"acme/shared\"\nclone_url = \"file://{}\"\nwebhook_secret = \"{SECRET}\"\nbranches = \"^(main|feature/.+)$\"\n",
        apt.path().display(),
        repo.path().display()
    );
    let first = TestApp::spawn(&text).await;
    let mut builds = Vec::new();
    for (n, branch) in [
        "main",
        "main",
        "feature/a",
        "feature/b",
        "main",
        "main",
        "feature/c",
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(repo.path().join("app.txt"), format!("{}\n", n + 1)).unwrap();
        let commit = commit_all(repo.path(), &format!("change {}", n + 1));
        builds.push((push(&first, branch, &commit).await, branch));
    }
    assert_eq!(
        builds.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    let releases = first.get_json("/api/v1/projects/shared/releases").await;
    assert_eq!(releases.as_array().unwrap().len(), 4, "{releases}");

    // A server with housekeeping: keep the newest 2 builds (and those that made a release)
    // and the newest 2 versions of the package.
    let housekeeping = format!("{text}[retention]\nbuild_keep = 2\napt_keep = 2\n");
    let second = TestApp::spawn_beside(&housekeeping, &first).await;
    eventually("builds 3 and 4 are deleted", async || {
        second
            .get("/api/v1/projects/shared/builds/3")
            .await
            .status()
            == 404
            && second
                .get("/api/v1/projects/shared/builds/4")
                .await
                .status()
                == 404
    })
    .await;
    for number in [1, 2, 5, 6, 7] {
        let build = second
            .get_json(&format!("/api/v1/projects/shared/builds/{number}"))
            .await;
        assert_eq!(build["status"], "passed", "build {number} stays: {build}");
    }
    assert_eq!(
        second
            .get("/api/v1/projects/shared/builds/3/logs")
            .await
            .status(),
        404,
        "its log went with it"
    );
    eventually("v1 and v2 leave the repository", async || {
        let releases = second.get_json("/api/v1/projects/shared/releases").await;
        releases.as_array().unwrap().iter().all(|r| {
            r["package_removed_at"].is_null()
                == ["v3", "v4"].contains(&r["version"].as_str().unwrap())
        })
    })
    .await;
    let index =
        String::from_utf8(bytes(&first, "/apt/dists/stable/main/binary-amd64/Packages").await)
            .unwrap();
    let versions: Vec<&str> = index
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .collect();
    assert_eq!(versions, ["3", "4"], "{index}");
    assert_eq!(
        first
            .get("/apt/pool/main/s/shared/shared_1_all.deb")
            .await
            .status(),
        404
    );
    assert_eq!(
        first
            .get("/apt/pool/main/s/shared/shared_4_all.deb")
            .await
            .status(),
        200
    );
    let keyring = apt.path().join("key.gpg");
    let verified = Command::new("gpgv")
        .arg("--keyring")
        .arg(&keyring)
        .arg(apt.path().join("dists/stable/InRelease"))
        .output()
        .unwrap();
    assert!(verified.status.success(), "the index is signed again");
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_old_releases_go_unless_an_environment_runs_or_keeps_them() {
    let project = Project::new(1).await;
    let name = project.name.clone();
    // Images of this test's own, so removing them takes nothing from other tests.
    let tagged: Vec<String> = (1..=3)
        .map(|n| format!("slipway-api-test/{name}:v{n}"))
        .collect();
    for (n, tag) in tagged.iter().enumerate() {
        let source = image(if n == 1 { "v2" } else { "v1" });
        let done = Command::new("docker")
            .args(["tag", &source, tag])
            .output()
            .unwrap();
        assert!(done.status.success());
    }
    let text = project.config("watch = \"1s\"\nretention = \"1h\"");
    let first = TestApp::spawn(&text).await;
    let api = Api::of(&first);
    for (n, tag) in tagged.iter().enumerate() {
        let number = n as i64 + 1;
        insert_release(&first.database_url, &name, number, tag, true).await;
        api.wait_live(&name, "dev", &format!("v{number}")).await;
    }

    let housekeeping = format!("{text}[retention]\nimage_keep = 1\n");
    let second = TestApp::spawn_beside(&housekeeping, &first).await;
    let exists = |tag: &str| {
        Command::new("docker")
            .args(["image", "inspect", tag])
            .output()
            .unwrap()
            .status
            .success()
    };
    let v1 = async || {
        let releases = second
            .get_json(&format!("/api/v1/projects/{name}/releases"))
            .await;
        let found = releases
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == "v1");
        found.unwrap().clone()
    };
    eventually("v1's image is recorded removed", async || {
        v1().await["images"][0]["status"] == "removed"
    })
    .await;
    assert!(!exists(&tagged[0]), "v1's image is gone from dockerd");
    assert!(exists(&tagged[1]), "v2's fleet is warm: its image stays");
    assert!(exists(&tagged[2]), "v3 is live: its image stays");
    let v1 = v1().await;
    assert_eq!(v1["bake_status"], "removed", "{v1}");
    assert!(
        v1["images"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("image_keep"),
        "{v1}"
    );
    let (status, body) = Api::of(&second)
        .post(
            &format!("/projects/{name}/environments/dev/rollback"),
            json!({ "to": "v1" }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("removed"), "{body}");
    second.stop().await;
    first.stop().await;
    for tag in &tagged {
        let _ = Command::new("docker").args(["rmi", tag]).output();
    }
}
