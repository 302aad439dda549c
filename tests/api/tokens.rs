//! Scoped tokens, revocation and the audit trail, against the real server and PostgreSQL: a
//! read-only token is refused every action, a dev-deploy token cannot touch prod, a revoked
//! token is refused, names and scopes are checked, and the audit trail says who asked.

use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

use crate::helpers::TestApp;

/// One test's project with environments `dev` and `prod` (docker, on free loopback ports),
/// and the removal of whatever its deployments made (by the `slipway.project` label).
struct Project {
    name: String,
}

impl Project {
    fn new() -> Project {
        Project {
            name: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        }
    }

    fn config(&self) -> String {
        let mut text = format!(
            "[[projects]]\nname = \"{0}\"\nrepository = \"acme/{0}\"\nclone_url = \"file:///nonexistent\"\n",
            self.name
        );
        for environment in ["dev", "prod"] {
            let port = crate::helpers::free_port();
            text.push_str(&format!(
                "[[projects.environments]]\nname = \"{environment}\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:{port}\"\ninstances = 1\n"
            ));
        }
        text
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let label = format!("label=slipway.project={}", self.name);
        for (list, remove) in [
            (&["ps", "-aq"][..], &["rm", "-f"][..]),
            (&["network", "ls", "-q"][..], &["network", "rm"][..]),
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

/// A request with `token`; the status and the body (JSON when it is, else a string).
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, format!("{}/api/v1{path}", app.address))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// A new token with `scopes`, made with the admin token; its id and secret.
async fn make_token(app: &TestApp, name: &str, scopes: &[&str]) -> (i64, String) {
    let body = json!({ "name": name, "scopes": scopes });
    let (status, created) = call(app, Method::POST, "/tokens", &app.token, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], name);
    let token = created["token"].as_str().unwrap().to_owned();
    (created["id"].as_i64().unwrap(), token)
}

async fn database(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&app.database_url, NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Build 1 of `project` (passed) and release v1 made from it, baked into an image that does
/// not exist: deploying it starts, then fails at the launch without touching anything else.
async fn seed_build_and_release(app: &TestApp, project: &str) {
    let client = database(app).await;
    let build = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO builds (id, project, number, branch, commit, event, status)
             VALUES ($1, $2, 1, 'main', 'abc123', 'push', 'passed')",
            &[&build, &project],
        )
        .await
        .unwrap();
    // The numbers are taken, as if the server had given them.
    client
        .execute(
            "INSERT INTO counters (project, kind, last) VALUES ($1, 'build', 1), ($1, 'release', 1)",
            &[&project],
        )
        .await
        .unwrap();
    client
        .execute(
            "WITH r AS (INSERT INTO releases (id, project, number, build_id, commit, status, bake_status, image)
             VALUES ($1, $2, 1, $3, 'abc123', 'published', 'baked', 'slipway-tokens-test/absent:v1')
             RETURNING id, bake_status, image)
             INSERT INTO release_images (release_id, kind, status, image)
             SELECT id, 'docker', bake_status, image FROM r",
            &[&uuid::Uuid::new_v4(), &project, &build],
        )
        .await
        .unwrap();
}

async fn audit(app: &TestApp) -> Vec<Value> {
    let (status, events) = call(app, Method::GET, "/audit", &app.token, None).await;
    assert_eq!(status, 200, "{events}");
    events.as_array().unwrap().clone()
}

#[tokio::test]
async fn a_read_only_token_is_refused_every_action_and_a_dev_deployer_cannot_touch_prod() {
    let project = Project::new();
    let app = TestApp::spawn(&project.config()).await;
    let p = project.name.clone();
    seed_build_and_release(&app, &p).await;
    let (_, reader) = make_token(&app, "dashboard", &["read"]).await;
    let (_, dev_deployer) = make_token(&app, "dev deploys", &["deploy:dev"]).await;

    // Every action: 403 naming the missing scope, and nothing happens.
    let actions: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::POST,
            format!("/projects/{p}/builds/1/cancel"),
            json!({}),
            "build",
        ),
        (
            Method::POST,
            format!("/projects/{p}/builds/1/rebuild"),
            json!({}),
            "build",
        ),
        (
            Method::POST,
            format!("/projects/{p}/environments/dev/promote"),
            json!({ "release": "v1" }),
            "deploy:dev",
        ),
        (
            Method::POST,
            format!("/projects/{p}/environments/prod/promote"),
            json!({ "release": "v1" }),
            "deploy:prod",
        ),
        (
            Method::POST,
            format!("/projects/{p}/environments/prod/rollback"),
            json!({ "to": "v1" }),
            "deploy:prod",
        ),
        (
            Method::POST,
            format!("/projects/{p}/releases/v1/rebake"),
            json!({}),
            "admin",
        ),
        (
            Method::POST,
            "/tokens".to_owned(),
            json!({ "name": "mine", "scopes": ["admin"] }),
            "admin",
        ),
        (Method::GET, "/tokens".to_owned(), Value::Null, "admin"),
        (Method::DELETE, "/tokens/1".to_owned(), Value::Null, "admin"),
        (Method::GET, "/audit".to_owned(), Value::Null, "admin"),
    ];
    for (method, path, body, scope) in &actions {
        let body = (!body.is_null()).then(|| body.clone());
        let (status, answer) = call(&app, method.clone(), path, &reader, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(answer["missing_scope"], *scope, "{method} {path}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains(&format!("lacks the scope {scope}"))
                && message.contains("it has: read"),
            "{message}"
        );
    }
    let builds = app.get_json(&format!("/api/v1/projects/{p}/builds")).await;
    assert_eq!(
        builds.as_array().unwrap().len(),
        1,
        "nothing was queued: {builds}"
    );
    assert_eq!(builds[0]["status"], "passed", "nothing was cancelled");
    let (_, tokens) = call(&app, Method::GET, "/tokens", &app.token, None).await;
    assert_eq!(
        tokens.as_array().unwrap().len(),
        3,
        "no token was made: {tokens}"
    );
    assert!(tokens
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["revoked_at"].is_null()));

    // Every read: 200.
    for path in [
        "/projects".to_owned(),
        format!("/projects/{p}/builds"),
        format!("/projects/{p}/builds/1"),
        format!("/projects/{p}/builds/1/logs"),
        format!("/projects/{p}/releases"),
        format!("/projects/{p}/releases/v1/bake-log"),
        format!("/projects/{p}/environments"),
    ] {
        let (status, answer) = call(&app, Method::GET, &path, &reader, None).await;
        assert_eq!(status, 200, "GET {path}: {answer}");
    }

    // The dev deployer may deploy to dev (authorized: the unknown release gets its 404) but
    // not to prod; it may read, and do nothing else.
    let dev_promote = format!("/projects/{p}/environments/dev/promote");
    let (status, answer) = call(
        &app,
        Method::POST,
        &dev_promote,
        &dev_deployer,
        Some(json!({ "release": "v9" })),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("deployable releases: v1"),
        "{answer}"
    );
    let dev_rollback = format!("/projects/{p}/environments/dev/rollback");
    let (status, answer) = call(
        &app,
        Method::POST,
        &dev_rollback,
        &dev_deployer,
        Some(json!({ "to": "v9" })),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    for (path, body) in [
        (
            format!("/projects/{p}/environments/prod/promote"),
            json!({ "release": "v1" }),
        ),
        (
            format!("/projects/{p}/environments/prod/rollback"),
            json!({ "to": "v1" }),
        ),
    ] {
        let (status, answer) = call(&app, Method::POST, &path, &dev_deployer, Some(body)).await;
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer["missing_scope"], "deploy:prod", "{answer}");
    }
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/projects/{p}/builds/1/rebuild"),
        &dev_deployer,
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &app,
        Method::GET,
        &format!("/projects/{p}/environments"),
        &dev_deployer,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        audit(&app)
            .await
            .iter()
            .all(|e| e["action"] == "token_create"),
        "refusals are not actions"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_audit_trail_shows_who_promoted_cancelled_rebuilt_and_made_tokens() {
    let project = Project::new();
    let app = TestApp::spawn(&project.config()).await;
    let p = project.name.clone();
    seed_build_and_release(&app, &p).await;
    let (builder_id, builder) = make_token(&app, "ci builds", &["build"]).await;
    let (manager_id, manager) = make_token(&app, "release manager", &["deploy:prod", "read"]).await;

    let (status, rebuilt) = call(
        &app,
        Method::POST,
        &format!("/projects/{p}/builds/1/rebuild"),
        &builder,
        None,
    )
    .await;
    assert_eq!(status, 201, "{rebuilt}");
    assert_eq!(rebuilt["number"], 2);
    let (status, cancelled) = call(
        &app,
        Method::POST,
        &format!("/projects/{p}/builds/2/cancel"),
        &builder,
        None,
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");

    // The promotion starts (the image it names does not exist, so it fails at the launch).
    let path = format!("/projects/{p}/environments/prod/promote");
    let (status, stream) = call(
        &app,
        Method::POST,
        &path,
        &manager,
        Some(json!({ "release": "v1" })),
    )
    .await;
    assert_eq!(status, 200, "{stream}");

    let events = audit(&app).await;
    let summary: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            (
                text(&e["action"]),
                text(&e["token"]["name"]),
                text(&e["subject"]),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("promote", "release manager", "v1"),
        ("cancel", "ci builds", "build 2"),
        ("rebuild", "ci builds", "build 1"),
        (
            "token_create",
            "admin",
            &*format!("token {manager_id} (release manager)"),
        ),
        (
            "token_create",
            "admin",
            &*format!("token {builder_id} (ci builds)"),
        ),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(summary, expected, "newest first: {events:#?}");
    let promote = &events[0];
    assert_eq!(promote["token"]["id"], manager_id);
    assert_eq!(promote["project"], p);
    assert_eq!(promote["environment"], "prod");
    assert!(promote["at"].is_string());
    assert_eq!(events[2]["detail"]["queued"], 2);

    // The deployment names who asked for it too.
    let deployment = promote["deployment"].as_str().expect("the deployment's id");
    let (status, record) = call(
        &app,
        Method::GET,
        &format!("/projects/{p}/deployments/{deployment}"),
        &manager,
        None,
    )
    .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(
        record["requested_by"],
        json!({ "id": manager_id, "name": "release manager" })
    );

    // Paging and filtering.
    let (_, page) = call(
        &app,
        Method::GET,
        &format!("/audit?limit=2&before={}", events[1]["id"]),
        &app.token,
        None,
    )
    .await;
    let actions: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rebuild", "token_create"]);
    let (_, mine) = call(
        &app,
        Method::GET,
        &format!("/audit?project={p}"),
        &app.token,
        None,
    )
    .await;
    assert_eq!(mine.as_array().unwrap().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_token_gets_401_and_names_and_scopes_are_checked() {
    let project = Project::new();
    let app = TestApp::spawn(&project.config()).await;
    let (id, ci) = make_token(&app, "ci", &["read", "build"]).await;
    let (status, _) = call(&app, Method::GET, "/projects", &ci, None).await;
    assert_eq!(status, 200);

    // The list shows ids, names, scopes and times, never a secret or a hash.
    let (status, listed) = call(&app, Method::GET, "/tokens", &app.token, None).await;
    assert_eq!(status, 200);
    let listed_text = listed.to_string();
    assert!(
        !listed_text.contains(&ci) && !listed_text.contains(&app.token),
        "{listed}"
    );
    assert!(!listed_text.contains("sha256"), "{listed}");
    let ci_listed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap();
    assert_eq!(ci_listed["scopes"], json!(["read", "build"]));
    assert!(ci_listed["last_used_at"].is_string(), "{ci_listed}");
    assert!(ci_listed["revoked_at"].is_null());
    assert_eq!(listed[0]["name"], "admin");
    assert_eq!(listed[0]["scopes"], json!(["admin"]));

    let (status, revoked) = call(
        &app,
        Method::DELETE,
        &format!("/tokens/{id}"),
        &app.token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, answer) = call(&app, Method::GET, "/projects", &ci, None).await;
    assert_eq!(status, 401);
    assert!(
        answer["error"].as_str().unwrap().contains("was revoked"),
        "{answer}"
    );
    let (status, _) = call(&app, Method::DELETE, "/tokens/999", &app.token, None).await;
    assert_eq!(status, 404);
    // The last admin token cannot go: nobody could make tokens any more.
    let (status, answer) = call(&app, Method::DELETE, "/tokens/1", &app.token, None).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("last admin token"),
        "{answer}"
    );

    // A 2 MB name: 400, a short answer, nothing stored.
    let huge = "n".repeat(2_000_000);
    let response = app
        .http
        .post(format!("{}/api/v1/tokens", app.address))
        .bearer_auth(&app.token)
        .json(&json!({ "name": huge, "scopes": ["read"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer = response.bytes().await.unwrap();
    assert!(answer.len() < 512, "{} bytes", answer.len());
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("65536 bytes"),
        "{answer}"
    );

    for (body, expected) in [
        (
            json!({ "name": "n".repeat(101), "scopes": ["read"] }),
            "1 to 100 characters",
        ),
        (
            json!({ "name": "a\u{0}b", "scopes": ["read"] }),
            "control character",
        ),
        (
            json!({ "name": "  ", "scopes": ["read"] }),
            "not only spaces",
        ),
        (json!({ "name": "ok", "scopes": [] }), "1 to 32 scopes"),
        (json!({ "name": "ok" }), "missing field `scopes`"),
        (
            json!({ "name": "ok", "scopes": ["write"] }),
            "unknown scope \"write\"",
        ),
        (
            json!({ "name": "ok", "scopes": ["deploy:prdo"] }),
            "scope \"deploy:prdo\" names no configured environment; environments: dev, prod",
        ),
    ] {
        let (status, answer) = call(
            &app,
            Method::POST,
            "/tokens",
            &app.token,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: {message}");
    }
    let (_, listed) = call(&app, Method::GET, "/tokens", &app.token, None).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "nothing was made: {listed}"
    );
    let revokes = audit(&app).await;
    assert_eq!(revokes[0]["action"], "token_revoke");
    assert_eq!(revokes[0]["subject"], format!("token {id} (ci)"));
    app.stop().await;
}

#[tokio::test]
async fn a_store_failure_in_a_deployment_answers_500_without_the_database_error() {
    let project = Project::new();
    let app = TestApp::spawn(&project.config()).await;
    let p = project.name.clone();
    seed_build_and_release(&app, &p).await;
    // The deployer can no longer reach its lock table: a failure of the store, not the user.
    database(&app)
        .await
        .execute(
            "ALTER TABLE environment_locks RENAME TO environment_locks_gone",
            &[],
        )
        .await
        .unwrap();
    let path = format!("/projects/{p}/environments/prod/promote");
    let (status, answer) = call(
        &app,
        Method::POST,
        &path,
        &app.token,
        Some(json!({ "release": "v1" })),
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("the state store failed to"), "{message}");
    assert!(message.contains("server log"), "{message}");
    for internal in [
        "environment_locks",
        "relation",
        "db error",
        "ERROR",
        "deployment store:",
    ] {
        assert!(
            !message.contains(internal),
            "{internal:?} leaked: {message}"
        );
    }
    app.stop().await;
}

/// Runs the `slipway` binary against `app` (the test's runtime keeps serving meanwhile);
/// whether it succeeded, its stdout and its stderr.
async fn slipway(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    // The token goes in the environment, not the arguments `ps` shows.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .args(["--server", &app.address])
        .env("SLIPWAY_TOKEN", &app.token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output.status.success(), stdout, stderr)
}

#[tokio::test]
async fn the_token_and_audit_commands_make_list_revoke_and_show() {
    let project = Project::new();
    let app = TestApp::spawn(&project.config()).await;
    let (ok, token, stderr) = slipway(
        &app,
        &[
            "token",
            "create",
            "--name",
            "deployer",
            "--scope",
            "read",
            "--scope",
            "deploy:dev",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let token = token.trim();
    assert!(token.starts_with("slw_") && token.len() == 68, "{token}");
    assert!(stderr.contains("with scopes read,deploy:dev"), "{stderr}");
    let (status, _) = call(&app, Method::GET, "/projects", token, None).await;
    assert_eq!(status, 200);

    let (ok, _, stderr) = slipway(&app, &["token", "create", "--name", "x"]).await;
    assert!(
        !ok && stderr.contains("--scope"),
        "a scope is required: {stderr}"
    );
    let (ok, _, stderr) = slipway(
        &app,
        &["token", "create", "--name", "x", "--scope", "deploy:qa"],
    )
    .await;
    assert!(!ok, "unknown environment");
    assert!(
        stderr.contains("400") && stderr.contains("environments: dev, prod"),
        "{stderr}"
    );

    let (ok, list, stderr) = slipway(&app, &["token", "list"]).await;
    assert!(ok, "{stderr}");
    let line = list
        .lines()
        .find(|l| l.contains("deployer"))
        .expect("listed");
    assert!(line.contains("read,deploy:dev"), "{list}");
    assert!(!list.contains(token), "{list}");

    let (ok, out, stderr) = slipway(&app, &["token", "revoke", "2"]).await;
    assert!(ok, "{stderr}");
    assert!(out.contains("token 2 (deployer) revoked at"), "{out}");
    let (status, _) = call(&app, Method::GET, "/projects", token, None).await;
    assert_eq!(status, 401);

    let (ok, out, stderr) = slipway(&app, &["audit"]).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("AT") && lines[0].contains("ACTION"),
        "{out}"
    );
    assert!(
        lines[1].contains("admin (1)")
            && lines[1].contains("token_revoke")
            && lines[1].contains("token 2 (deployer)"),
        "{out}"
    );
    assert!(lines[2].contains("token_create"), "{out}");
    app.stop().await;
}
