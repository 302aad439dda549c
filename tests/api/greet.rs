//! The compiled sample application, examples/greet, through the whole chain: a push builds it
//! (a step compiles a C binary that is not in the repository), the package holds what the
//! step produced, apt-get installs it from the server's repository and the installed binary
//! runs, the release is baked and deployed to a docker environment by itself, and the running
//! binary answers with its release.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::builds::{commit_all, git};
use crate::helpers::{free_port, sign, TestApp};

const SECRET: &str = "greet-webhook-secret";
const BUILD_AND_BAKE: Duration = Duration::from_secs(900);

/// A project of its own (unique name and listener port), whose containers and networks are
/// removed by their `slipway.project` label when dropped, panics included.
struct Project {
    name: String,
    port: u16,
}

impl Project {
    fn new() -> Project {
        Project {
            name: format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            port: free_port(),
        }
    }

    fn config(&self, repo: &Path) -> String {
        format!(
            "[[projects]]\nname = \"{name}\"\nrepository = \"acme/{name}\"\nclone_url = \"file://{repo}\"\n\
             webhook_secret = \"{SECRET}\"\nbranches = \"^main$\"\n\
             [[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:{port}\"\n\
             instances = 1\nhealth_path = \"/health\"\nwatch = \"1s\"\n",
            name = self.name,
            repo = repo.display(),
            port = self.port,
        )
    }

    async fn push(&self, app: &TestApp, commit: &str) -> i64 {
        let body = serde_json::to_vec(&serde_json::json!({
            "repository": {"full_name": format!("acme/{}", self.name)},
            "push": {"changes": [{"old": null, "new": {"type": "branch", "name": "main", "target": {"hash": commit}}}]}
        }))
        .unwrap();
        let response = app
            .post_hook("repo:push", &body, Some(&sign(SECRET, &body)), None)
            .await;
        assert_eq!(response.status(), 202);
        let answer: Value = response.json().await.unwrap();
        answer["queued"][0]["number"].as_i64().expect("queued")
    }

    async fn wait_for_build(&self, app: &TestApp, number: i64) -> Value {
        let deadline = Instant::now() + BUILD_AND_BAKE;
        loop {
            let build = app
                .get_json(&format!("/api/v1/projects/{}/builds/{number}", self.name))
                .await;
            if !matches!(build["status"].as_str(), Some("queued" | "running")) {
                return build;
            }
            assert!(Instant::now() < deadline, "build still running: {build}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_live(&self, app: &TestApp, release: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let environments = app
                .get_json(&format!("/api/v1/projects/{}/environments", self.name))
                .await;
            let dev = environments[0].clone();
            if dev["live"]["release"] == release && dev["busy"].is_null() {
                return dev;
            }
            assert!(Instant::now() < deadline, "not live: {dev:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let label = format!("label=slipway.project={}", self.name);
        for (list, remove) in [
            (&["ps", "-aq"][..], &["rm", "-f"][..]),
            (&["network", "ls", "-q"], &["network", "rm"]),
        ] {
            let out = Command::new("docker")
                .args(list)
                .args(["--filter", &label])
                .output()
                .unwrap();
            let ids = String::from_utf8_lossy(&out.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(remove).args(&ids).output();
            }
        }
    }
}

/// examples/greet as a fresh repository with one commit on `main`.
fn greet_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/greet");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(example.join("."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(copied.success());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit_all(dir.path(), "greet");
    dir
}

/// Runs `script` in a bookworm container on the host network, the repository key at /keys.
fn in_container(keys: &Path, script: &str) -> (bool, String) {
    let output = Command::new("docker")
        .args(["run", "--rm", "--network", "host"])
        .args(["--label", "slipway.test=greet"])
        .arg("-v")
        .arg(format!("{}:/keys:ro", keys.display()))
        .args(["slipway/debian:bookworm", "sh", "-ec", script])
        .output()
        .expect("docker runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

// Multi-threaded: the test blocks on docker while the server must answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_binary_is_built_packaged_installed_baked_and_deployed_answering_with_its_release(
) {
    let project = Project::new();
    let repo = greet_repository();
    assert!(
        !repo.path().join("dist").exists(),
        "the binary is not in the repository: only the build makes it"
    );
    let app = TestApp::spawn(&project.config(repo.path())).await;
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    let started = Instant::now();
    let number = project.push(&app, &commit).await;
    let build = project.wait_for_build(&app, number).await;
    eprintln!(
        "greet: build, package and publish of v1: {:?}",
        started.elapsed()
    );
    assert_eq!(build["status"], "passed", "{build:#}");

    // The package holds the binary the compile step produced, found by the `dist/**` glob.
    let releases = app
        .get_json(&format!("/api/v1/projects/{}/releases", project.name))
        .await;
    let v1 = &releases[0];
    assert_eq!(v1["version"], "v1", "{releases:#}");
    assert_eq!(v1["status"], "published", "{v1:#}");
    assert_eq!(v1["package"]["filename"], "greet_1_amd64.deb", "{v1:#}");
    eprintln!(
        "greet: greet_1_amd64.deb is {} bytes",
        v1["package"]["size"]
    );

    // apt-get installs it from the server's signed repository; the installed binary runs
    // and reports the release from /usr/share/greet/VERSION.
    let keys = tempfile::tempdir().unwrap();
    let key = app.get("/apt/key.gpg").await.bytes().await.unwrap();
    std::fs::write(keys.path().join("key.gpg"), &key).unwrap();
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let binary_port = free_port();
    let script = format!(
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*\n\
         echo 'deb [signed-by=/keys/key.gpg] http://127.0.0.1:{port}/apt stable main' > /etc/apt/sources.list.d/slipway.list\n\
         apt-get update -q >/dev/null 2>&1\n\
         apt-get install -y -q greet=1 >/dev/null 2>&1\n\
         dpkg -L greet\n\
         stat -c 'mode %a' /usr/lib/greet/greet\n\
         head -c 4 /usr/lib/greet/greet | od -An -c | tr -d ' \\n'; echo\n\
         PORT={binary_port} /usr/lib/greet/greet & sleep 0.5\n\
         python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:{binary_port}/\").read().decode())'\n\
         kill $!\n"
    );
    let (ok, out) = in_container(keys.path(), &script);
    assert!(ok, "{out}");
    for expected in [
        "/usr/lib/greet/greet",
        "/usr/share/greet/VERSION",
        "/lib/systemd/system/greet.service",
        "mode 755",
        "177ELF",
        r#"{"app": "greet", "release": "v1"}"#,
    ] {
        assert!(
            out.lines().any(|l| l.contains(expected)),
            "{expected}:\n{out}"
        );
    }

    // Baked into an image, and deployed to dev by itself: the running binary answers with
    // its release through the environment's load balancer.
    let v1 = app.wait_for_bake(&project.name, "v1").await;
    eprintln!(
        "greet: build, package, publish and bake of v1: {:?}",
        started.elapsed()
    );
    assert_eq!(v1["bake_status"], "baked", "{v1:#}");
    let deploy_started = Instant::now();
    let dev = project.wait_live(&app, "v1").await;
    eprintln!(
        "greet: live in dev {:?} after the build ended",
        deploy_started.elapsed()
    );
    assert_eq!(dev["health"]["healthy"], 1, "{dev:#}");
    let url = format!("http://127.0.0.1:{}", project.port);
    let answer: Value = reqwest::get(format!("{url}/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"app": "greet", "release": "v1"}),
        "the compiled binary answers with its release"
    );
    let health = reqwest::get(format!("{url}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
    app.stop().await;
}
