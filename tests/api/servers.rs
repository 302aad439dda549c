//! Several servers on one database: pushes split over two servers each build once and release
//! without a gap; both serve one repository signed with one key; a cancel asked of either
//! stops a build wherever it runs; concurrent promotes of one
//! environment from both give one deployment and one refusal; the servers list shows each
//! with what it runs; and kill -9 of the server running a deployment leaves it to the other.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::builds::{commit_all, git, push_queued};
use crate::deploy::{events, image, insert_release, Api, Project, Server};
use crate::helpers::TestApp;
use crate::release_order::wait_for_build;

const SECRET: &str = "servers-secret";

/// A repository whose one step prints a line once per run and whose package is one file, so
/// a build takes a few seconds and its release is not baked (no systemd unit).
pub(crate) fn quick_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = "steps:\n  - name: work\n    image: slipway/debian:bookworm\n    commands:\n      - echo \"ran once as $(cat /proc/sys/kernel/random/uuid)\"\npackage:\n  name: shared\n  architecture: all\n  maintainer: \"Acme Ops <ops@acme.test>\"\n  description: \"servers test package\"\n  files:\n    - {src: app.txt, dest: /usr/share/shared/app.txt, mode: \"0644\"}\n";
    std::fs::write(dir.path().join(".slipway.yml"), spec).unwrap();
    std::fs::write(dir.path().join("app.txt"), "0\n").unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit_all(dir.path(), "first");
    dir
}

pub(crate) fn config(repo: &Path, apt: &Path) -> String {
    format!(
        "max_concurrent_builds = 2\n[apt]\ndir = \"{}\"\n[[projects]]\nname = \"shared\"\nrepository = \"acme/shared\"\nclone_url = \"file://{}\"\nwebhook_secret = \"{SECRET}\"\nbranches = \"^main$\"\n",
        apt.display(),
        repo.display()
    )
}

pub(crate) async fn push(app: &TestApp, commit: &str) -> i64 {
    push_queued(&app.address, ("acme/shared", SECRET), "main", commit).await
}

/// `(number, commit)` of each release in `releases` (an answer of the releases API), oldest
/// first; every one must be published.
pub(crate) fn published(releases: &[Value]) -> Vec<(i64, String)> {
    let mut published: Vec<(i64, String)> = releases
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "published", "{r}");
            let version = r["version"].as_str().unwrap();
            (
                version.trim_start_matches('v').parse().unwrap(),
                r["commit"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    published.sort();
    published
}

/// The ids of the live servers in an answer of `GET /api/v1/servers`.
fn live_servers(servers: &Value) -> BTreeSet<String> {
    servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["live"] == true)
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET path` from `app`, as bytes.
pub(crate) async fn bytes(app: &TestApp, path: &str) -> Vec<u8> {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.bytes().await.unwrap().to_vec()
}

/// Runs `apt-get update` in a container against the repository of the server at `address`
/// (trusting `key`), then `commands`; what they printed. Panics if any fails or apt warns.
pub(crate) fn apt_get(address: &str, key: &[u8], commands: &str) -> String {
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("key.gpg"), key).unwrap();
    let port = address.rsplit(':').next().unwrap();
    let script = format!(
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*\n\
         echo 'deb [signed-by=/keys/key.gpg] http://127.0.0.1:{port}/apt stable main' > /etc/apt/sources.list.d/slipway.list\n\
         apt-get update 2>&1\n\
         {commands}"
    );
    let output = Command::new("docker")
        .args(["run", "--rm", "--network", "host"])
        .arg("-v")
        .arg(format!("{}:/keys:ro", keys.path().display()))
        .args(["slipway/debian:bookworm", "sh", "-ec", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(!text.contains("W: "), "apt-get update warned: {text}");
    text
}

// Multi-threaded: both servers build while the test waits on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_build_each_push_once_and_serve_one_signed_repository() {
    let repo = quick_repository();
    let apt = tempfile::tempdir().unwrap();
    let text = config(repo.path(), apt.path());
    let first = TestApp::spawn(&text).await;
    let second = TestApp::spawn_beside(&text, &first).await;

    // 20 commits, pushed in turn to one server then the other.
    let mut commits = Vec::new();
    for n in 1..=20 {
        std::fs::write(repo.path().join("app.txt"), format!("{n}\n")).unwrap();
        let commit = commit_all(repo.path(), &format!("change {n}"));
        let app = if n % 2 == 0 { &second } else { &first };
        let number = push(app, &commit).await;
        commits.push((number, commit));
    }
    let numbers: BTreeSet<i64> = commits.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (1..=20).collect(),
        "one build per push, numbered without a gap"
    );

    let started = Instant::now();
    let mut ran_on = BTreeSet::new();
    for (number, _) in &commits {
        let build = wait_for_build(&first, "shared", *number, Duration::from_secs(600)).await;
        assert_eq!(build["status"], "passed", "{build}");
        ran_on.insert(build["server"].as_str().unwrap().to_owned());
        let lines = second
            .get_json(&format!(
                "/api/v1/projects/shared/builds/{number}/logs?limit=10000"
            ))
            .await;
        let runs = lines
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["line"].as_str().unwrap().starts_with("ran once as "))
            .count();
        assert_eq!(runs, 1, "build {number} ran exactly once: {lines}");
    }
    eprintln!("20 builds on two servers took {:?}", started.elapsed());
    let servers = first.get_json("/api/v1/servers").await;
    let ids = live_servers(&servers);
    assert_eq!(ids.len(), 2, "both servers are live: {servers:#}");
    assert!(ran_on.is_subset(&ids), "builds ran on {ran_on:?}");
    assert_eq!(ran_on.len(), 2, "both servers built: {ran_on:?}");
    assert!(ids.contains(servers["answered_by"].as_str().unwrap()));

    // Releases: numbered 1..N without a gap or a duplicate, in the commits' order.
    let releases = first.get_json("/api/v1/projects/shared/releases").await;
    let releases = published(releases.as_array().unwrap());
    let count = releases.len() as i64;
    assert!(count >= 1);
    assert_eq!(
        releases.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        (1..=count).collect::<Vec<_>>(),
        "release numbers have no gap or duplicate"
    );
    let order: Vec<usize> = releases
        .iter()
        .map(|(_, commit)| commits.iter().position(|(_, c)| c == commit).unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "releases follow the commits: {order:?}"
    );

    // One repository, signed with one key, the same from either server, and apt-get trusts it.
    for path in [
        "/apt/dists/stable/InRelease",
        "/apt/dists/stable/main/binary-amd64/Packages",
        "/apt/key.gpg",
    ] {
        assert_eq!(
            bytes(&first, path).await,
            bytes(&second, path).await,
            "{path}"
        );
    }
    let key = bytes(&second, "/apt/key.gpg").await;
    for app in [&first, &second] {
        let text = apt_get(&app.address, &key, "apt-cache madison shared");
        let newest = text
            .lines()
            .filter_map(|l| l.split('|').nth(1))
            .map(|version| version.trim().parse::<i64>().unwrap())
            .max();
        assert_eq!(newest, Some(count), "the newest release is listed: {text}");
    }
    let homes: Vec<String> = [&first, &second]
        .iter()
        .map(|app| {
            let listed = Command::new("gpg")
                .env("GNUPGHOME", app.data_dir().join("gpg"))
                .args(["--batch", "--with-colons", "--list-secret-keys"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&listed.stdout)
                .lines()
                .find(|l| l.starts_with("fpr:"))
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(homes[0], homes[1], "one signing key for the installation");

    // A cancel asked of the server that does not run the build stops it.
    let spec = std::fs::read_to_string(repo.path().join(".slipway.yml")).unwrap();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        spec.replace("echo \"ran once", "sleep 300; echo \"ran once"),
    )
    .unwrap();
    let slow = commit_all(repo.path(), "slow");
    let number = push(&first, &slow).await;
    let path = format!("/api/v1/projects/shared/builds/{number}");
    let running = loop {
        let build = first.get_json(&path).await;
        if build["status"] == "running" && !build["steps"].as_array().unwrap().is_empty() {
            break build;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut other = &first;
    for app in [&first, &second] {
        if app.get_json("/api/v1/servers").await["answered_by"] != running["server"] {
            other = app;
        }
    }
    let asked = Instant::now();
    let response = other
        .http
        .post(format!("{}{path}/cancel", other.address))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cancelled = loop {
        let build = other.get_json(&path).await;
        if build["status"] != "running" {
            break build;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "still running: {build}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    eprintln!(
        "a cancel through the other server took {:?}",
        asked.elapsed()
    );
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_promotes_of_one_environment_from_two_servers_give_one_deployment_and_one_409() {
    let project = Project::new(2).await;
    let text = project.config("watch = \"1s\"");
    let first = TestApp::spawn(&text).await;
    let second = TestApp::spawn_beside(&text, &first).await;
    let name = project.name.clone();
    insert_release(&first.database_url, &name, 1, &image("v1"), true).await;
    let (a, b) = (Api::of(&first), Api::of(&second));
    a.wait_live(&name, "dev", "v1").await;

    let path = format!("/projects/{name}/environments/prod/promote");
    let body = json!({ "release": "v1" });
    let (one, two) = tokio::join!(a.post(&path, body.clone()), b.post(&path, body));
    let mut statuses = [one.0, two.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{one:?} {two:?}");
    let (refused, stream) = if one.0 == 409 {
        (one.1, two.1)
    } else {
        (two.1, one.1)
    };
    let refused: Value = serde_json::from_str(&refused).unwrap();
    assert!(
        refused["error"].as_str().unwrap().contains("prod"),
        "{refused}"
    );
    let last = events(&stream).pop().unwrap();
    assert_eq!(last["deployment"]["release"], "v1", "{stream}");
    let prod = b.environment(&name, "prod").await;
    let deployments = prod["deployments"].as_array().unwrap();
    assert_eq!(deployments.len(), 1, "one deployment: {prod:#}");
    assert_eq!(prod["live"]["release"], "v1");
    second.stop().await;
    first.stop().await;
}

/// Waits until `check` holds for the environment as `api` reports it.
async fn wait_environment(
    api: &Api,
    project: &str,
    environment: &str,
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    api.wait_for(project, environment, limit, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_running_a_deployment_leaves_it_to_the_other_within_the_lock_ttl() {
    let project = Project::new(1).await;
    let name = project.name.clone();
    let (first_dir, database_url) = project.server_dir("watch = \"20s\"\nretention = \"0s\"");
    let second_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        first_dir.path().join("slipway.toml"),
        second_dir.path().join("slipway.toml"),
    )
    .unwrap();
    let first = Server::start(first_dir.path());
    let second = Server::start_beside(second_dir.path(), first.api.token());
    insert_release(&database_url, &name, 1, &image("v1"), true).await;
    first.api.wait_live(&name, "dev", "v1").await;

    // v2 goes to dev by itself; whichever server runs it is killed while it watches v2.
    insert_release(&database_url, &name, 2, &image("v2"), true).await;
    let watching = wait_environment(&first.api, &name, "dev", Duration::from_secs(60), |e| {
        e["deployments"][0]["release"] == "v2" && e["deployments"][0]["state"] == "watching"
    })
    .await;
    let holder = watching["lock"]["owner"].as_str().unwrap().to_owned();
    let servers = first.api.get("/servers").await;
    assert_eq!(live_servers(&servers).len(), 2, "{servers:#}");
    let running = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == holder.as_str())
        .unwrap_or_else(|| panic!("the lock holder {holder} is a server: {servers:#}"));
    assert!(
        running["running"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "environment" && w["environment"] == "dev"),
        "{servers:#}"
    );
    let (victim, survivor) = if first.api.get("/servers").await["answered_by"] == holder.as_str() {
        (first, second)
    } else {
        (second, first)
    };
    let killed = Instant::now();
    victim.server.kill_9();

    // The survivor takes the environment's lock and finishes the deployment.
    let taken = wait_environment(&survivor.api, &name, "dev", Duration::from_secs(30), |e| {
        e["lock"]["owner"]
            .as_str()
            .is_some_and(|owner| owner != holder)
            || e["deployments"][0]["state"] == "succeeded"
    })
    .await;
    let taken_after = killed.elapsed();
    eprintln!("the other server took the deployment over {taken_after:?} after kill -9");
    assert!(
        taken_after < Duration::from_secs(30),
        "within the lock's time to live: {taken:#}"
    );
    let dev = wait_environment(&survivor.api, &name, "dev", Duration::from_secs(90), |e| {
        let state = e["deployments"][0]["state"].as_str().unwrap_or("");
        ["succeeded", "rolled_back", "failed"].contains(&state) && e["lock"].is_null()
    })
    .await;
    assert_eq!(dev["deployments"][0]["state"], "succeeded", "{dev:#}");
    assert_eq!(dev["live"]["release"], "v2");
    let body = reqwest::get(project.url(0))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), "v2");
    assert_eq!(
        project.running_releases(),
        ["v2", "v2"],
        "only the live fleet runs"
    );
    let servers = survivor.api.get("/servers").await;
    let dead = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] != servers["answered_by"])
        .unwrap()
        .clone();
    assert_eq!(dead["live"], false, "{servers:#}");
    drop(survivor);
}
