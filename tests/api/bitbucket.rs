//! Bitbucket for real, against the real binary: a private repository cloned over HTTPS with
//! the project's token (read from a file), build statuses set on the commit in the shapes
//! Bitbucket Cloud and Data Center document, in order and through failed calls, and a wrong
//! token failing the build with a reason that names the project and never the token, which
//! appears in no log, answer, process argument or file of the data directory.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use serde_json::Value;

use crate::builds::{commit_all, git, push_queued};
use crate::helpers::sign;
use crate::servers::quick_repository;
use crate::sources::{assert_nowhere, base64, serve_git, serve_git_v0, ArgumentWatch, RealServer};

const SECRET: &str = "bitbucket-secret";
/// The project's access token: what the git server and the recorder accept.
const TOKEN: &str = "BBDC-tok3n-9d8f7e6a5b4c3d2e1f0a";
const WRONG_TOKEN: &str = "BBDC-wrong-1a2b3c4d5e6f7a8b9c0d";

/// One request the recording server received.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) authorization: String,
    pub(crate) content_type: String,
    pub(crate) body: Value,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) raw: Vec<u8>,
}

/// A stand-in for Bitbucket's API (or a team's webhook) on loopback: records every request,
/// answers a GET of a path in `documents` with that JSON, and the rest with the codes queued
/// in `answers` (then 201 for Bitbucket Cloud's paths, 204 for the others, as Bitbucket
/// documents).
pub(crate) struct Recorder {
    pub(crate) address: String,
    calls: Arc<Mutex<Vec<Call>>>,
    pub(crate) answers: Arc<Mutex<VecDeque<u16>>>,
    pub(crate) documents: Arc<Mutex<HashMap<String, Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub(crate) async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let answers: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let documents: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let (kept, queued, served) = (calls.clone(), answers.clone(), documents.clone());
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (kept, queued, served) = (kept.clone(), queued.clone(), served.clone());
            async move {
                let (parts, body) = request.into_parts();
                let text = |name: header::HeaderName| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let path = parts.uri.path().to_owned();
                kept.lock().unwrap().push(Call {
                    method: parts.method.to_string(),
                    authorization: text(header::AUTHORIZATION),
                    content_type: text(header::CONTENT_TYPE),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    path: path.clone(),
                    headers: parts.headers.clone(),
                    raw: bytes.to_vec(),
                });
                let document = served.lock().unwrap().get(&path).cloned();
                if let (Some(document), "GET") = (document, parts.method.as_str()) {
                    return Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(document.to_string()))
                        .unwrap();
                }
                let default = if path.starts_with("/2.0/") { 201 } else { 204 };
                let code = queued.lock().unwrap().pop_front().unwrap_or(default);
                let body = if code == 201 {
                    "{\"type\": \"commitstatus\"}"
                } else {
                    ""
                };
                Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body))
                    .unwrap()
            }
        });
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Recorder {
            address,
            calls,
            answers,
            documents,
            task,
        }
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

/// The states of `calls`, in the order they came.
fn states(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| c.body["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Waits until build `number` of `project` has ended and every status report of it is
/// settled; the build.
async fn settled(server: &RealServer, project: &str, number: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let build = server
            .get_json(&format!("/api/v1/projects/{project}/builds/{number}"))
            .await;
        let ended = !matches!(build["status"].as_str(), Some("queued" | "running"));
        let reports = build["status_reports"].as_array().unwrap();
        if ended && reports.len() >= 2 && reports.iter().all(|r| !r["outcome"].is_null()) {
            return build;
        }
        assert!(Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn project(name: &str, repository: &str, clone_url: &str, bitbucket: &str) -> String {
    format!(
        "[[projects]]\nname = \"{name}\"\nrepository = \"{repository}\"\nclone_url = \"{clone_url}\"\nwebhook_secret = \"{SECRET}\"\nbranches = \"^(main|broken)$\"\n[projects.bitbucket]\n{bitbucket}\n"
    )
}

fn private_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

// Multi-threaded: the git server and the recorder in this process answer the server while the
// test waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_builds_with_its_token_and_its_statuses_reach_bitbucket_in_order() {
    let repo = quick_repository();
    let main = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["checkout", "-q", "-b", "broken"]);
    let spec = std::fs::read_to_string(repo.path().join(".slipway.yml")).unwrap();
    std::fs::write(
        repo.path().join(".slipway.yml"),
        spec.replace("echo \"ran once", "exit 3; echo \"ran once"),
    )
    .unwrap();
    let broken = commit_all(repo.path(), "break the build");
    let served = tempfile::tempdir().unwrap();
    git(
        served.path(),
        &[
            "clone",
            "--bare",
            "--quiet",
            &repo.path().display().to_string(),
            "shared.git",
        ],
    );
    let git_server = serve_git(served.path().to_path_buf(), "x-token-auth", TOKEN).await;
    let git_v0 = serve_git_v0(served.path().to_path_buf(), "x-token-auth", TOKEN).await;
    let recorder = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let token_file = private_file(dir.path(), "token", TOKEN);
    let wrong_file = private_file(dir.path(), "wrong-token", WRONG_TOKEN);
    let clone_url = format!("http://{}/shared.git", git_server.address);
    let config = dir.path().join("slipway.toml");
    std::fs::write(
        &config,
        format!(
            "public_url = \"https://slipway.acme.test/\"\n{}{}{}",
            project(
                "shared",
                "acme/shared",
                &clone_url,
                &format!("api_url = \"{}\"\ntoken_file = \"{token_file}\"", recorder.address)
            ),
            project(
                "shared-dc",
                "ACME/shared-dc",
                &clone_url,
                &format!(
                    "flavour = \"datacenter\"\napi_url = \"{}/bitbucket/\"\ntoken_file = \"{token_file}\"",
                    recorder.address
                )
            ),
            project(
                "wrong",
                "acme/wrong",
                &clone_url,
                &format!("api_url = \"{}\"\ntoken_file = \"{wrong_file}\"", recorder.address)
            ),
        ) + &project(
            "shared-v0",
            "acme/shared-v0",
            &format!("http://{}/shared.git", git_v0.address),
            &format!("api_url = \"{}\"\ntoken_file = \"{token_file}\"", recorder.address),
        ),
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let server = RealServer::start(&config, &data_dir);
    let address = server.server.address.clone();
    let watch = ArgumentWatch::start();

    // Cloud: the final status is refused twice (500) and still arrives; the build passed.
    recorder.answers.lock().unwrap().extend([201, 500, 500]);
    let number = push_queued(&address, ("acme/shared", SECRET), "main", &main).await;
    let build = settled(&server, "shared", number).await;
    assert_eq!(build["status"], "passed", "{build}");
    // The clone is shallow: the mirror holds the built commit alone, of the repository's
    // commits on both branches.
    let count = |git_dir: &Path| git(git_dir, &["rev-list", "--all", "--count"]);
    assert_eq!(count(&served.path().join("shared.git")), "2");
    assert_eq!(count(&data_dir.join("mirrors/shared.git")), "1");
    let cloud = recorder.calls();
    assert_eq!(
        states(&cloud),
        ["INPROGRESS", "SUCCESSFUL", "SUCCESSFUL", "SUCCESSFUL"],
        "{cloud:#?}"
    );
    for call in &cloud {
        assert_eq!(call.method, "POST");
        assert_eq!(
            call.path,
            format!("/2.0/repositories/acme/shared/commit/{main}/statuses/build")
        );
        assert_eq!(call.authorization, format!("Bearer {TOKEN}"));
        assert_eq!(call.content_type, "application/json");
        assert_eq!(call.body["key"], "slipway-shared");
        assert_eq!(call.body["name"], format!("Slipway shared #{number}"));
        assert_eq!(
            call.body["url"],
            format!("https://slipway.acme.test/api/v1/projects/shared/builds/{number}")
        );
        let fields: Vec<&String> = call.body.as_object().unwrap().keys().collect();
        assert_eq!(
            fields,
            ["description", "key", "name", "state", "url"],
            "{call:?}"
        );
    }
    assert!(cloud[3].body["description"]
        .as_str()
        .unwrap()
        .starts_with("passed in "));
    let reports = build["status_reports"].as_array().unwrap();
    assert_eq!(reports.len(), 2, "{build}");
    assert_eq!(
        (
            &reports[0]["status"],
            &reports[0]["outcome"],
            &reports[0]["attempts"]
        ),
        (&"running".into(), &"delivered".into(), &0.into())
    );
    assert_eq!(
        (
            &reports[1]["status"],
            &reports[1]["outcome"],
            &reports[1]["attempts"]
        ),
        (&"passed".into(), &"delivered".into(), &2.into())
    );
    assert!(
        reports[1]["error"]
            .as_str()
            .unwrap()
            .contains("Bitbucket answered 500"),
        "the failed calls show on the build: {build}"
    );

    // Data Center: a push in its shape, a failing build, statuses on its builds resource.
    let body = serde_json::to_vec(&serde_json::json!({
        "eventKey": "repo:refs_changed",
        "repository": {"slug": "shared-dc", "project": {"key": "ACME"}},
        "changes": [{"ref": {"id": "refs/heads/broken", "displayId": "broken", "type": "BRANCH"},
                     "refId": "refs/heads/broken", "fromHash": main, "toHash": broken, "type": "UPDATE"}]
    }))
    .unwrap();
    let queued: Value = reqwest::Client::new()
        .post(format!("{address}/hooks/bitbucket"))
        .header("X-Event-Key", "repo:refs_changed")
        .header("X-Hub-Signature", sign(SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let number = queued["queued"][0]["number"].as_i64().expect("a build");
    let build = settled(&server, "shared-dc", number).await;
    assert_eq!(build["status"], "failed", "{build}");
    let dc: Vec<Call> = recorder.calls()[cloud.len()..].to_vec();
    assert_eq!(states(&dc), ["INPROGRESS", "FAILED"], "{dc:#?}");
    for call in &dc {
        assert_eq!(
            call.path,
            format!(
                "/bitbucket/rest/api/latest/projects/ACME/repos/shared-dc/commits/{broken}/builds"
            )
        );
        assert_eq!(call.authorization, format!("Bearer {TOKEN}"));
        assert_eq!(call.body["key"], "slipway-shared-dc");
        assert_eq!(call.body["buildNumber"], number.to_string());
        assert_eq!(call.body["ref"], "refs/heads/broken");
    }
    assert!(dc[0].body.get("duration").is_none(), "{:?}", dc[0]);
    assert!(dc[1].body["duration"].as_i64().unwrap() > 0, "{:?}", dc[1]);

    // A wrong token: the build fails at its clone, saying which project and why.
    let number = push_queued(&address, ("acme/wrong", SECRET), "main", &main).await;
    let build = settled(&server, "wrong", number).await;
    assert_eq!(build["status"], "errored", "{build}");
    let reason = build["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("cannot clone project `wrong`: "),
        "names the project: {reason}"
    );
    assert!(
        reason.contains("authentication failed: the repository refused the credentials"),
        "says why: {reason}"
    );

    // A server that serves only what its refs advertise refuses a fetch by id: a commit no
    // branch has at its head any more still builds, from the branches' history.
    git(repo.path(), &["checkout", "-q", "main"]);
    std::fs::write(repo.path().join("CHANGES"), "newer\n").unwrap();
    commit_all(repo.path(), "a newer commit on main");
    let shared = served.path().join("shared.git").display().to_string();
    git(repo.path(), &["push", "-q", &shared, "main"]);
    // (Pushed as `broken`'s, so that it makes no release of a package `shared` already has.)
    let number = push_queued(&address, ("acme/shared-v0", SECRET), "broken", &main).await;
    let build = settled(&server, "shared-v0", number).await;
    assert_eq!(build["status"], "passed", "{build}");
    assert_eq!(count(&data_dir.join("mirrors/shared-v0.git")), "3");
    let arguments = watch.stop();

    // The token is nowhere a user or another process can read.
    let mut answers = String::new();
    for path in [
        "/api/v1/projects".to_owned(),
        "/api/v1/projects/shared/builds".to_owned(),
        "/api/v1/projects/shared/builds/1".to_owned(),
        "/api/v1/projects/shared/builds/1/logs".to_owned(),
        format!("/api/v1/projects/wrong/builds/{number}"),
    ] {
        answers.push_str(&server.get_text(&path).await);
    }
    let basic = base64(format!("x-token-auth:{TOKEN}").as_bytes());
    let server_log = server.log();
    assert!(server_log.contains("reporting the build's status to Bitbucket failed; retrying"));
    assert_nowhere(
        &[TOKEN, WRONG_TOKEN, basic.as_str()],
        &[
            ("API answers", &answers),
            ("the server's log", &server_log),
            ("process arguments", &arguments.join("\n")),
        ],
        &server.data_dir,
    );
}
