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

pub use crate::ports::free_port;

/// One cluster for the whole test binary; each test gets its own database in it. The cluster
/// outlives the run (the next one starts faster); the databases of runs whose process has ended
/// go when the next run starts, so the cluster holds one run's databases rather than every
/// run's (each is about 10 MB, and a run makes a few hundred).
fn cluster() -> &'static EmbeddedPostgres {
    static CLUSTER: OnceLock<EmbeddedPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = std::env::temp_dir().join("slipway-tests");
        let cluster = EmbeddedPostgres::start(&dir).expect("starting the test PostgreSQL cluster");
        let listed = cluster
            .psql("SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%'")
            .expect("listing the test databases");
        let old = now_secs() - 6 * 3600;
        for database in listed.lines() {
            // test_<seconds>_<pid>_<uuid>; names without a pid are from before they carried one.
            let mut parts = database.split('_').skip(1);
            let made = parts.next().and_then(|secs| secs.parse::<u64>().ok());
            let pid = parts.next().and_then(|pid| pid.parse::<u32>().ok());
            let running = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            // A pid is reused in time: past 6 hours a database goes whoever holds its pid.
            if !running || made.is_none_or(|made| made < old) {
                let _ = cluster.psql(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
            }
        }
        cluster
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
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
    /// Dropped after the server is told to stop: removes what it left in dockerd.
    _leftovers: Leftovers,
    /// The first 8 hex digits of the server id, which name the images its releases bake into.
    server_tag: String,
}

/// What a test's server left in dockerd (a build or fleet still running when the test ended or
/// failed, or a server killed on purpose), removed when this is dropped. Without it every such
/// test would keep a network, and dockerd's address pools run out after a few dozen.
pub struct Leftovers {
    /// None once a test kills the server on purpose, for its next start to find what it left.
    server_id: Option<String>,
    /// The server's database, whose releases name the build containers of its bakes.
    database_url: Option<String>,
}

impl Leftovers {
    pub fn of(server_id: &str) -> Leftovers {
        Leftovers {
            server_id: Some(server_id.to_string()),
            database_url: None,
        }
    }

    /// Also removes the build containers of bakes of the releases in `database_url`: a test
    /// app dropped mid-bake aborts its server, and Packer with it, before Packer removes its
    /// container (a later start of the server would reap it; none comes).
    pub fn with_database(mut self, database_url: &str) -> Leftovers {
        self.database_url = Some(database_url.to_string());
        self
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let Some(server_id) = &self.server_id else {
            return;
        };
        let docker = |args: &[&str]| -> Vec<String> {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let remove = |command: &[&str], ids: &[String]| {
            if !ids.is_empty() {
                let mut rm = command.to_vec();
                rm.extend(ids.iter().map(String::as_str));
                docker(&rm);
            }
        };
        for key in ["slipway.server", "slipway.deploy-server"] {
            let label = format!("label={key}={server_id}");
            remove(
                &["rm", "-f", "-v"],
                &docker(&["ps", "-aq", "--filter", &label]),
            );
            for list in ["network", "volume"] {
                remove(
                    &[list, "rm"],
                    &docker(&[list, "ls", "-q", "--filter", &label]),
                );
            }
        }
        if let Some(url) = &self.database_url {
            let bakes = release_bake_ids(url);
            let listed = docker(&[
                "ps",
                "-a",
                "--filter",
                "label=slipway.bake",
                "--format",
                "{{.ID}}={{.Label \"slipway.bake\"}}",
            ]);
            let containers: Vec<String> = listed
                .iter()
                .filter_map(|line| line.split_once('='))
                .filter(|(_, bake)| bakes.iter().any(|id| id == bake))
                .map(|(container, _)| container.to_string())
                .collect();
            remove(&["rm", "-f", "-v"], &containers);
        }
    }
}

/// The bake ids (release ids as 32 hex digits) of the releases in a test database.
///
/// It asks the cluster's own socket, whatever way the test's server reached the database: a
/// test may route the server through a proxy served by the very runtime this blocks.
fn release_bake_ids(database_url: &str) -> Vec<String> {
    let Some(database) = database_url
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix("dbname="))
    else {
        return Vec::new();
    };
    std::process::Command::new(cluster().bin_dir().join("psql"))
        .arg(cluster().connection_string_for(database))
        .args(["-XAtqc", "SELECT replace(id::text, '-', '') FROM releases"])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The address and server id of the line a `slipway server` logs when it listens.
pub fn listening(line: &str) -> Option<(String, String)> {
    if !line.contains("slipway server listening") {
        return None;
    }
    let field = |name: &str| {
        let at = line.find(name)? + name.len();
        line[at..].split_whitespace().next().map(str::to_string)
    };
    Some((field(" addr=")?, field(" server=")?))
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

    /// Like [`TestApp::spawn`], listening on `listen` (an address other than loopback, for
    /// builds and bakes on a dockerd in another network namespace).
    pub async fn spawn_at(config_text: &str, listen: &str) -> TestApp {
        TestApp::spawn_full(config_text, test_database(), &[], listen).await
    }

    /// Like [`TestApp::spawn_with_database`], with `vars` as the environment the config reads.
    pub async fn spawn_with_env(
        config_text: &str,
        database_url: String,
        vars: &[(&str, &str)],
    ) -> TestApp {
        TestApp::spawn_full(config_text, database_url, vars, "127.0.0.1:0").await
    }

    /// Another server of `first`'s installation: on its database, with a data directory of
    /// its own, answering to `first`'s admin token (made by the installation's first start).
    pub async fn spawn_beside(config_text: &str, first: &TestApp) -> TestApp {
        TestApp::spawn_with_token(config_text, first.database_url.clone(), &first.token).await
    }

    /// A server on `database_url`, which holds an installation whose admin token is `token`
    /// (the server writes none of its own then).
    pub async fn spawn_with_token(config_text: &str, database_url: String, token: &str) -> TestApp {
        TestApp::spawn_full_with(
            config_text,
            database_url,
            &[],
            "127.0.0.1:0",
            Some(token.to_owned()),
        )
        .await
    }

    async fn spawn_full(
        config_text: &str,
        database_url: String,
        vars: &[(&str, &str)],
        listen: &str,
    ) -> TestApp {
        TestApp::spawn_full_with(config_text, database_url, vars, listen, None).await
    }

    async fn spawn_full_with(
        config_text: &str,
        database_url: String,
        vars: &[(&str, &str)],
        listen: &str,
        token: Option<String>,
    ) -> TestApp {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let raw = config::parse(config_text, "test config").expect("test config parses");
        let overrides = Overrides {
            listen: Some(listen.into()),
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
        let leftovers = Leftovers::of(&app.server_id().to_string()).with_database(&database_url);
        let server_tag = app.server_id().simple().to_string()[..8].to_string();
        let address = format!("http://{}", app.local_addr());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(app.run_until(async move { stopped.cancelled().await }));
        let token = token.unwrap_or_else(|| read_token(data_dir.path()));
        TestApp {
            address,
            database_url,
            token,
            _data_dir: data_dir,
            http: reqwest::Client::new(),
            stop,
            task: Some(task),
            _leftovers: leftovers,
            server_tag,
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

    /// A new API token named `name` with `scopes`, made with the admin token: the API's answer
    /// (`id`, `name`, `scopes`, `token`, ...).
    pub async fn create_token(&self, name: &str, scopes: &[&str]) -> Value {
        let response = self
            .http
            .post(format!("{}/api/v1/tokens", self.address))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "name": name, "scopes": scopes }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "POST /api/v1/tokens");
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

    /// Stops the server gracefully, waits for it, and removes the images its releases were
    /// baked into (named `slipway/<package>-<server tag>`).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
        remove_baked_images(&self.server_tag);
    }
}

impl Drop for TestApp {
    /// A test that ends without [`TestApp::stop`] (or fails) stops its server where it is;
    /// `leftovers` then removes what it had running.
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A fresh database in the shared test cluster; its connection string.
pub fn test_database() -> String {
    let database = format!(
        "test_{}_{}_{}",
        now_secs(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let cluster = cluster();
    cluster
        .psql(&format!("CREATE DATABASE {database}"))
        .expect("creating the test database");
    cluster.connection_string_for(&database)
}

/// Holds, in a test server's database, every statement that records a release image of one
/// kind as baked (a trigger sleeps in it), so a test can kill the server after a bake made its
/// image and before Slipway recorded it.
pub struct HeldBakeRecords(tokio_postgres::Client);

impl HeldBakeRecords {
    /// Installs the hold for images of `kind` (`docker` or `ami`).
    pub async fn install(database_url: &str, kind: &str) -> HeldBakeRecords {
        let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
            .await
            .expect("connecting to the test database");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "CREATE FUNCTION hold_bake_records() RETURNS trigger AS $$
                 BEGIN PERFORM pg_sleep(3600); RETURN NEW; END $$ LANGUAGE plpgsql;
                 CREATE TRIGGER hold_bake_records BEFORE INSERT OR UPDATE ON release_images
                 FOR EACH ROW WHEN (NEW.kind = '{kind}' AND NEW.status = 'baked')
                 EXECUTE FUNCTION hold_bake_records();"
            ))
            .await
            .expect("installing the hold");
        HeldBakeRecords(client)
    }

    /// Waits until the server's statement is held, at most `limit`.
    pub async fn wait(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let row = self
                .0
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event = 'PgSleep'",
                    &[],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the image's record was never made"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After the server was killed: ends its held statement (which holds the table the
    /// trigger is dropped from) and removes the hold.
    pub async fn release(self) {
        self.0
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid();
                 DROP TRIGGER hold_bake_records ON release_images;",
            )
            .await
            .expect("removing the hold");
    }
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

/// The real `slipway server` binary as a child process: its stderr kept, killed (-9) when
/// dropped, and what it left in dockerd removed after.
pub struct ServerChild {
    pub child: std::process::Child,
    pub address: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    _leftovers: Leftovers,
}

impl ServerChild {
    /// Spawns `command` (a `slipway server` with its arguments) and waits until it listens;
    /// panics with its log if it exits first or does not listen within 120 s.
    pub fn spawn(mut command: std::process::Command) -> ServerChild {
        use std::io::BufRead;
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("slipway starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(listening) = listening(&line) {
                    let _ = tx.send(listening);
                }
                let mut log = kept.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
            // Dropping `tx` here ends the wait below if the server exited before listening.
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok((addr, server_id)) => ServerChild {
                child,
                address: format!("http://{addr}"),
                log,
                _leftovers: Leftovers::of(&server_id),
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not listen within 120 s:\n{}",
                    log.lock().expect("log lock")
                )
            }
        }
    }

    /// kill -9, leaving what the server had running for its next start (on the same data
    /// directory or database) to adopt or reap.
    pub fn kill_9(mut self) {
        self._leftovers.server_id = None;
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
