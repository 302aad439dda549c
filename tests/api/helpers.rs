//! Spawning the app for a test: a fresh database per test in one shared embedded cluster,
//! port 0, a temporary data directory, and helpers per endpoint.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use slipway::config::{self, Config, Overrides};
use slipway::server::Application;
use slipway::store::embedded::EmbeddedPostgres;
use tokio_util::sync::CancellationToken;

/// One cluster for the whole test binary; each test gets its own database in it.
fn cluster() -> &'static EmbeddedPostgres {
    static CLUSTER: OnceLock<EmbeddedPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = std::env::temp_dir().join("slipway-tests");
        EmbeddedPostgres::start(&dir).expect("starting the test PostgreSQL cluster")
    })
}

/// The longest a test waits for a release's bake (queued behind others on a loaded machine).
pub const BAKE_LIMIT: Duration = Duration::from_secs(900);

pub struct TestApp {
    pub address: String,
    /// The test's own database, for tests that seed rows directly.
    pub database_url: String,
    pub token: String,
    /// Kept so the directory lives as long as the app.
    _data_dir: tempfile::TempDir,
    pub http: reqwest::Client,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A config file body with one project named `hello` for `repository` and `secret`.
pub fn project_config(repository: &str, secret: &str, clone_url: &str, branches: &str) -> String {
    format!(
        "[[projects]]\nname = \"hello\"\nrepository = \"{repository}\"\nclone_url = \"{clone_url}\"\nwebhook_secret = \"{secret}\"\nbranches = \"{branches}\"\n"
    )
}

impl TestApp {
    /// Starts the app with `config_text` as its slipway.toml (listen and data dir overridden).
    pub async fn spawn(config_text: &str) -> TestApp {
        TestApp::spawn_with_database(config_text, test_database()).await
    }

    /// Like [`TestApp::spawn`], with `database_url` as the server's database.
    pub async fn spawn_with_database(config_text: &str, database_url: String) -> TestApp {
        TestApp::spawn_with_env(config_text, database_url, &[]).await
    }

    /// Like [`TestApp::spawn_with_database`], with `vars` as the environment the config reads.
    pub async fn spawn_with_env(
        config_text: &str,
        database_url: String,
        vars: &[(&str, &str)],
    ) -> TestApp {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let raw = config::parse(config_text, "test config").expect("test config parses");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data_dir.path().to_path_buf()),
        };
        let url = database_url.clone();
        let env = move |key: &str| match key {
            "SLIPWAY_DATABASE_URL" => Some(url.clone()),
            _ => vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()),
        };
        let config: Config =
            config::resolve(raw, "test config", &overrides, &env).expect("test config resolves");
        let app = Application::build(config).await.expect("app builds");
        let address = format!("http://{}", app.local_addr());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(app.run_until(async move { stopped.cancelled().await }));
        let token = read_token(data_dir.path());
        TestApp {
            address,
            database_url,
            token,
            _data_dir: data_dir,
            http: reqwest::Client::new(),
            stop,
            task: Some(task),
        }
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self._data_dir.path()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON body")
    }

    pub async fn post_hook(
        &self,
        event: &str,
        body: &[u8],
        signature: Option<&str>,
        delivery: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/hooks/bitbucket", self.address))
            .header("X-Event-Key", event)
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature", signature);
        }
        if let Some(delivery) = delivery {
            request = request.header("X-Request-UUID", delivery);
        }
        request.send().await.expect("request sent")
    }

    /// Release `version` of `project` as the API lists it.
    pub async fn release(&self, project: &str, version: &str) -> Value {
        let releases = self
            .get_json(&format!("/api/v1/projects/{project}/releases"))
            .await;
        releases
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == version)
            .unwrap_or_else(|| panic!("no release {version} in {releases}"))
            .clone()
    }

    /// Release `version` of `project` once its Docker image's bake (a stage after the build)
    /// ended: neither queued nor baking.
    pub async fn wait_for_bake(&self, project: &str, version: &str) -> Value {
        let deadline = tokio::time::Instant::now() + BAKE_LIMIT;
        loop {
            let release = self.release(project, version).await;
            if !matches!(release["bake_status"].as_str(), Some("queued" | "baking")) {
                return release;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bake of {version} did not end within {BAKE_LIMIT:?}: {release}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The bake log of release `version`'s Docker image, one line each.
    pub async fn bake_log(&self, project: &str, version: &str) -> String {
        let lines = self
            .get_json(&format!(
                "/api/v1/projects/{project}/releases/{version}/bake-log"
            ))
            .await;
        lines
            .as_array()
            .unwrap()
            .iter()
            .map(|l| format!("{}\n", l["line"].as_str().unwrap()))
            .collect()
    }

    pub async fn builds(&self) -> Vec<Value> {
        let body = self.get_json("/api/v1/projects/hello/builds").await;
        body.as_array().expect("a list").clone()
    }

    /// Stops the server gracefully and waits for it.
    /// Stops the server gracefully, waits for it, and removes the images its releases were
    /// baked into (named `slipway/<package>-<first 8 hex digits of the server id>`).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
        let store = slipway::store::Store::connect(&self.database_url)
            .await
            .expect("test database");
        let server_tag = store
            .server_id()
            .await
            .expect("server id")
            .simple()
            .to_string()[..8]
            .to_string();
        store.close();
        remove_baked_images(&server_tag);
    }
}

/// A fresh database in the shared test cluster; its connection string.
pub fn test_database() -> String {
    let database = format!("test_{}", uuid::Uuid::new_v4().simple());
    let cluster = cluster();
    cluster
        .psql(&format!("CREATE DATABASE {database}"))
        .expect("creating the test database");
    cluster.connection_string_for(&database)
}

pub fn read_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.token"))
        .expect("admin token written")
        .trim()
        .to_string()
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The recorded Bitbucket Cloud delivery in shared/fixtures.
pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/bitbucket/cloud-signed-push.json")
}

/// Removes every image whose repository ends in `-<server_tag>`.
fn remove_baked_images(server_tag: &str) {
    let listed = std::process::Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .expect("docker images");
    let suffix = format!("-{server_tag}");
    let images: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|image| {
            image
                .split(':')
                .next()
                .is_some_and(|repo| repo.ends_with(&suffix))
        })
        .map(str::to_string)
        .collect();
    if !images.is_empty() {
        let _ = std::process::Command::new("docker")
            .arg("rmi")
            .arg("-f")
            .args(&images)
            .output();
    }
}
