//! Sources without secrets and in bounded memory, against the real `slipway` binary: clone
//! credentials reach no workspace, log, answer or package; workspaces go when their build ends
//! or at the next start after a kill -9; 30 queued builds keep the server small.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use serde_json::Value;

use crate::builds::{commit_all, git, hello_repository, push_queued};
use crate::helpers::{read_token, ServerChild};

const HOOK_SECRET: &str = "sources-secret";

/// The real server, its stderr kept for inspection, killed (-9) when dropped.
pub(crate) struct RealServer {
    pub(crate) server: ServerChild,
    token: String,
    pub(crate) data_dir: PathBuf,
    http: reqwest::Client,
}

impl RealServer {
    /// Starts `slipway server` with `config` and the data dir `data_dir`; waits until it listens.
    pub(crate) fn start(config: &Path, data_dir: &Path) -> RealServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
        command
            .args(["server", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "info,slipway=debug")
            .env_remove("SLIPWAY_DATABASE_URL");
        RealServer {
            server: ServerChild::spawn(command),
            token: read_token(data_dir),
            data_dir: data_dir.to_path_buf(),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn log(&self) -> String {
        self.server.log()
    }

    /// A field of /proc/<pid>/status in kB, such as `VmHWM` (peak RSS) or `VmRSS`.
    fn memory_kb(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.server.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in {status}"))
    }

    pub(crate) async fn get_text(&self, path: &str) -> String {
        let response = self
            .http
            .get(format!("{}{path}", self.server.address))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "GET {path}");
        response.text().await.unwrap()
    }

    pub(crate) async fn get_json(&self, path: &str) -> Value {
        serde_json::from_str(&self.get_text(path).await).unwrap()
    }

    /// Pushes `commit` on `branch` of acme/hello; the number of the build it queued.
    async fn push(&self, branch: &str, commit: &str) -> i64 {
        push_queued(
            &self.server.address,
            ("acme/hello", HOOK_SECRET),
            branch,
            commit,
        )
        .await
    }

    async fn wait_for_build(&self, number: i64, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let build = self
                .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
                .await;
            if !matches!(build["status"].as_str(), Some("queued" | "running")) {
                return build;
            }
            assert!(
                Instant::now() < deadline,
                "build {number} unfinished: {build}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The directories in `<data_dir>/workspaces`.
    fn workspaces(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.data_dir.join("workspaces"))
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A directory the embedded cluster's `postgres` user can enter, with a config file for
/// project hello fetching from `clone_url`.
fn server_dir(clone_url: &str, extra: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("slipway.toml");
    std::fs::write(
        &config,
        format!(
            "{extra}[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"{clone_url}\"\nwebhook_secret = \"{HOOK_SECRET}\"\nbranches = \"^(main|feature)$\"\ndeploy_branch = \"main\"\n"
        ),
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    (dir, config, data_dir)
}

/// A git smart-HTTP server on loopback in front of `git http-backend`, answering only
/// requests that carry the user and password (HTTP basic auth).
pub(crate) struct GitHttpServer {
    pub(crate) address: SocketAddr,
    authorized: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn serve_git(root: PathBuf, user: &str, password: &str) -> GitHttpServer {
    serve_git_speaking(root, user, password, true).await
}

/// Like [`serve_git`], speaking git's protocol v0 only, as a server that serves only the
/// commits its refs advertise (no fetch by a commit's id).
pub(crate) async fn serve_git_v0(root: PathBuf, user: &str, password: &str) -> GitHttpServer {
    serve_git_speaking(root, user, password, false).await
}

async fn serve_git_speaking(
    root: PathBuf,
    user: &str,
    password: &str,
    protocol_v2: bool,
) -> GitHttpServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
    let authorized = Arc::new(AtomicUsize::new(0));
    let counted = authorized.clone();
    let user = user.to_string();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (root, expected, counted, user) = (
            root.clone(),
            expected.clone(),
            counted.clone(),
            user.clone(),
        );
        async move {
            let given = request.headers().get(header::AUTHORIZATION);
            if given.and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")
                    .body(Body::empty())
                    .unwrap();
            }
            counted.fetch_add(1, Ordering::SeqCst);
            http_backend(&root, &user, protocol_v2, request).await
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    GitHttpServer {
        address,
        authorized,
        task,
    }
}

/// One request through `git http-backend` as CGI.
async fn http_backend(
    root: &Path,
    user: &str,
    protocol_v2: bool,
    request: axum::extract::Request,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    let header_value = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", header_value("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header_value("content-encoding"))
        .env(
            "GIT_PROTOCOL",
            if protocol_v2 {
                header_value("git-protocol")
            } else {
                String::new()
            },
        )
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &body)
        .await
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    let out = output.stdout;
    let (head_end, body_start) = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (i, i + 4),
        None => {
            let i = out.windows(2).position(|w| w == b"\n\n").unwrap();
            (i, i + 2)
        }
    };
    let mut response = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&out[..head_end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.split_whitespace().next().unwrap().parse().unwrap();
            response = response.status(code);
        } else {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from(out[body_start..].to_vec()))
        .unwrap()
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Asserts that no piece of any of `secrets` is in any of `texts` (each named by what it is)
/// nor in any file under `data_dir` (the mirror, the apt repository, the database files).
pub(crate) fn assert_nowhere(secrets: &[&str], texts: &[(&str, &String)], data_dir: &Path) {
    for (what, text) in texts {
        for secret in secrets {
            let leaked = pieces_of(secret, text);
            assert!(leaked.is_empty(), "{what} hold {leaked:?}");
        }
    }
    for secret in secrets {
        let holding = files_holding(data_dir, secret.as_bytes());
        assert!(holding.is_empty(), "{holding:?} hold a secret");
    }
}

/// Every piece of `secret` (8 characters or more) that occurs in `text`.
fn pieces_of(secret: &str, text: &str) -> Vec<String> {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(8)
        .map(|w| w.iter().collect::<String>())
        .filter(|piece| text.contains(piece.as_str()))
        .collect()
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

const USER: &str = "ci-bot";
/// Has an '@' that the clone URL carries percent-encoded.
const PASSWORD: &str = "Pw-9f3kq@7ZxLm2";
const PASSWORD_IN_URL: &str = "Pw-9f3kq%407ZxLm2";

// Multi-threaded: the git server in this process answers the server's fetches while the test
// blocks on processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_clone_url_reaches_no_workspace_log_answer_or_package() {
    let repo = hello_repository();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        "clone: {git: true}\n\
         steps:\n\
         \x20 - name: inspect\n\
         \x20   image: slipway/debian:bookworm\n\
         \x20   commands:\n\
         \x20     - cat .git/config\n\
         \x20     - env\n\
         \x20     - ls -la\n\
         \x20     - ls -la .git\n\
         package:\n\
         \x20 name: hello\n\
         \x20 architecture: all\n\
         \x20 maintainer: \"Acme Ops <ops@acme.test>\"\n\
         \x20 description: \"hello with its git config\"\n\
         \x20 files:\n\
         \x20   - {src: app/hello.py, dest: /usr/lib/hello/hello.py, mode: \"0755\"}\n\
         \x20   - {src: gitconfig, dest: /usr/share/hello/gitconfig}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(".git/config", repo.path().join("gitconfig")).unwrap();
    let commit = commit_all(repo.path(), "ship the git config");
    let served = tempfile::tempdir().unwrap();
    git(
        served.path(),
        &[
            "clone",
            "--bare",
            "--quiet",
            &repo.path().display().to_string(),
            "hello.git",
        ],
    );
    let git_server = serve_git(served.path().to_path_buf(), USER, PASSWORD).await;
    let clone_url = format!(
        "http://{USER}:{PASSWORD_IN_URL}@{}/hello.git",
        git_server.address
    );
    let (_dir, config, data_dir) = server_dir(&clone_url, "");
    let server = RealServer::start(&config, &data_dir);

    let watch = ArgumentWatch::start();
    let number = server.push("main", &commit).await;
    let build = server
        .wait_for_build(number, Duration::from_secs(300))
        .await;
    assert_eq!(build["status"], "passed", "{build}");
    let arguments = watch.stop();
    assert!(
        arguments.iter().any(|a| a.contains("fetch")),
        "the watch saw git fetch: {arguments:?}"
    );
    assert!(
        git_server.authorized.load(Ordering::SeqCst) > 0,
        "the server fetched with the credentials"
    );
    assert_eq!(
        server.workspaces(),
        Vec::<PathBuf>::new(),
        "the workspace went with the build"
    );

    let log = server
        .get_text(&format!("/api/v1/projects/hello/builds/{number}/logs"))
        .await;
    assert!(
        log.contains("[core]"),
        "the step printed .git/config: {log}"
    );
    assert!(
        log.contains("SLIPWAY_COMMIT="),
        "the step printed env: {log}"
    );
    assert!(
        log.contains(".slipway.yml"),
        "the step listed the workspace: {log}"
    );
    assert!(!log.contains("[remote"), ".git has no remote: {log}");

    let mut answers = log.clone();
    for path in [
        "/api/v1/projects".to_string(),
        "/api/v1/projects/hello/builds".to_string(),
        format!("/api/v1/projects/hello/builds/{number}"),
        "/api/v1/projects/hello/releases".to_string(),
    ] {
        answers.push_str(&server.get_text(&path).await);
    }
    let releases: Value = server.get_json("/api/v1/projects/hello/releases").await;
    assert_eq!(releases[0]["status"], "published", "{releases}");

    // The .deb ships the workspace's .git/config, which holds no credential.
    let filename = releases[0]["package"]["filename"].as_str().unwrap();
    let deb = walk_for(&data_dir.join("apt/pool"), filename).expect("the published .deb");
    let unpacked = tempfile::tempdir().unwrap();
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(unpacked.path())
        .status()
        .unwrap();
    assert!(status.success());
    let shipped =
        std::fs::read_to_string(unpacked.path().join("usr/share/hello/gitconfig")).unwrap();
    assert!(shipped.contains("[core]"), "{shipped}");

    let basic = base64(format!("{USER}:{PASSWORD}").as_bytes());
    let server_log = server.log();
    assert_nowhere(
        &[PASSWORD, PASSWORD_IN_URL, basic.as_str()],
        &[
            ("the build log and API answers", &answers),
            ("the packaged .git/config", &shipped),
            ("the server's log", &server_log),
            ("the arguments of git processes", &arguments.join("\n")),
        ],
        &data_dir,
    );
    assert!(data_dir.join("mirrors/hello.git/HEAD").exists());
}

/// Collects the command lines of git processes while a build runs, as `ps` would show them.
pub(crate) struct ArgumentWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl ArgumentWatch {
    pub(crate) fn start() -> ArgumentWatch {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stopped.load(Ordering::SeqCst) {
                for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    let line = String::from_utf8_lossy(&bytes).replace('\0', " ");
                    if line.starts_with("git") || line.contains("/git") {
                        seen.insert(line);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            seen.into_iter().collect()
        });
        ArgumentWatch { stop, thread }
    }

    pub(crate) fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn walk_for(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = walk_for(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

#[tokio::test]
async fn a_build_killed_with_the_server_leaves_no_workspace_after_the_next_start() {
    let repo = hello_repository();
    let spec = std::fs::read_to_string(repo.path().join(".slipway.yml")).unwrap();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        spec.replace("python3 -m unittest discover -s tests -v", "sleep 300"),
    )
    .unwrap();
    let commit = commit_all(repo.path(), "slow");
    let (_dir, config, data_dir) = server_dir(&format!("file://{}", repo.path().display()), "");
    let first = RealServer::start(&config, &data_dir);
    let number = first.push("feature", &commit).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let build = first
            .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
            .await;
        if build["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "test" && s["status"] == "running")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow step never started: {build}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let workspaces = first.workspaces();
    assert_eq!(workspaces.len(), 1, "{workspaces:?}");
    assert!(workspaces[0].join(".slipway.yml").exists());
    assert!(
        !workspaces[0].join(".git").exists(),
        "no .git unless the pipeline asks for it"
    );

    first.server.kill_9(); // kill -9 in the middle of the build
    assert!(workspaces[0].exists(), "a killed server cannot clean up");

    let second = RealServer::start(&config, &data_dir);
    assert_eq!(second.workspaces(), Vec::<PathBuf>::new());
    let build = second
        .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
        .await;
    assert_eq!(build["status"], "errored", "{build}");
}

const BUILDS: usize = 30;
const AT_ONCE: usize = 6;

#[tokio::test]
async fn thirty_builds_queued_at_once_keep_the_server_under_200_mb() {
    let repo = hello_repository();
    let mut commits = Vec::new();
    for i in 0..BUILDS {
        std::fs::write(repo.path().join("BUILD"), format!("{i}\n")).unwrap();
        commits.push(commit_all(repo.path(), &format!("build {i}")));
    }
    // Two shared cores cannot run 30 pipelines with their sidecars at once: six run at a
    // time while the rest wait in the queue.
    let (_dir, config, data_dir) = server_dir(
        &format!("file://{}", repo.path().display()),
        &format!("max_concurrent_builds = {AT_ONCE}\n"),
    );
    let server = RealServer::start(&config, &data_dir);
    let started = Instant::now();
    let mut numbers = Vec::new();
    for commit in &commits {
        numbers.push(server.push("feature", commit).await);
    }
    let mut peak_rss_kb = 0;
    for number in &numbers {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            peak_rss_kb = peak_rss_kb.max(server.memory_kb("VmRSS"));
            let build = server
                .get_json(&format!("/api/v1/projects/hello/builds/{number}"))
                .await;
            if !matches!(build["status"].as_str(), Some("queued" | "running")) {
                assert_eq!(build["status"], "passed", "{build}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "build {number} unfinished: {build}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let hwm_kb = server.memory_kb("VmHWM");
    eprintln!(
        "{BUILDS} builds ({AT_ONCE} at a time) in {:.0} s; server VmHWM {} MB, highest sampled VmRSS {} MB",
        started.elapsed().as_secs_f64(),
        hwm_kb / 1024,
        peak_rss_kb / 1024
    );
    assert!(hwm_kb < 200 * 1024, "VmHWM {hwm_kb} kB");
    assert_eq!(server.workspaces(), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn a_large_workspace_streams_to_dockerd_in_bounded_memory() {
    const SIZE: usize = 160 << 20;
    let repo = hello_repository();
    // Incompressible, so neither git nor the archive can make it small.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut big = Vec::with_capacity(SIZE);
    while big.len() < SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        big.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::write(repo.path().join("big.bin"), &big).unwrap();
    drop(big);
    std::fs::write(
        repo.path().join(".slipway.yml"),
        "steps:\n  - name: size\n    image: slipway/debian:bookworm\n    commands: [\"stat -c 'size %s' big.bin\"]\n",
    )
    .unwrap();
    let commit = commit_all(repo.path(), "a large file");
    let (_dir, config, data_dir) = server_dir(&format!("file://{}", repo.path().display()), "");
    let server = RealServer::start(&config, &data_dir);
    let before_kb = server.memory_kb("VmHWM");
    let started = Instant::now();
    let number = server.push("feature", &commit).await;
    let build = server
        .wait_for_build(number, Duration::from_secs(300))
        .await;
    assert_eq!(build["status"], "passed", "{build}");
    let log = server
        .get_text(&format!("/api/v1/projects/hello/builds/{number}/logs"))
        .await;
    assert!(log.contains(&format!("size {SIZE}")), "{log}");
    let hwm_kb = server.memory_kb("VmHWM");
    eprintln!(
        "a {} MB workspace built in {:.0} s; server VmHWM {} MB before the build, {} MB after",
        SIZE >> 20,
        started.elapsed().as_secs_f64(),
        before_kb / 1024,
        hwm_kb / 1024
    );
    assert!(
        hwm_kb < before_kb + 64 * 1024,
        "VmHWM grew from {before_kb} kB to {hwm_kb} kB for a {SIZE}-byte file"
    );
}
