//! The application's schema and configuration: `migrations:` applied to the build's service
//! database before the steps (and a broken migration failing the build), a deployment
//! migrating the environment's database before its new fleet, a rollback across an
//! incompatible schema refused naming both versions (and the override), and the
//! environment's `env` reaching docker instances but never the API or the store.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::NoTls;

use crate::builds::{commit_all, hello_repository, push, wait_for_build};
use crate::deploy::{build_images, events, image, Api};
use crate::helpers::free_port;
use crate::helpers::{project_config, test_database, TestApp};

/// The hello example's pipeline with `migrations:` in place of its psql loop: the step
/// only passes when the migrations ran before it.
const PIPELINE: &str = "\
services:
  - name: postgres
    image: slipway/postgres:15
    environment: {POSTGRES_USER: hello, POSTGRES_PASSWORD: test, POSTGRES_DB: hello}
    ready: {tcp: 5432, timeout: 60s}
migrations: {dir: migrations, service: postgres}
steps:
  - name: check
    image: slipway/postgres:15
    environment: {PGHOST: postgres, PGUSER: hello, PGPASSWORD: test, PGDATABASE: hello}
    commands:
      - psql -X -v ON_ERROR_STOP=1 -c 'SELECT count(*) FROM greetings' -c 'SELECT count(*) FROM visits'
";

async fn log_of(app: &TestApp, number: i64, step: &str) -> Vec<String> {
    let lines: Vec<Value> = app
        .get_json(&format!(
            "/api/v1/projects/hello/builds/{number}/logs?limit=10000"
        ))
        .await
        .as_array()
        .unwrap()
        .clone();
    lines
        .iter()
        .filter(|line| line["step"] == step)
        .map(|line| line["line"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_applies_the_migrations_to_its_service_before_the_steps_and_a_broken_one_fails_it()
{
    let repo = hello_repository();
    std::fs::write(repo.path().join(".slipway.yml"), PIPELINE).unwrap();
    let commit = commit_all(repo.path(), "migrations: in the pipeline");
    let clone_url = format!("file://{}", repo.path().display());
    // Not the deploy branch: no release, so no bake.
    let config = project_config("acme/hello", "hello-secret", &clone_url, "^feature$");
    let app = TestApp::spawn(&config).await;

    let started = Instant::now();
    let number = push(&app, "feature", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(180)).await;
    assert_eq!(build["status"], "passed", "{build:#}");
    eprintln!("a build with two migrations took {:?}", started.elapsed());
    let steps: Vec<(&str, &str)> = build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("migrations", "passed"), ("check", "passed")]);
    let ran: Vec<(i64, &str)> = build["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["version"].as_i64().unwrap(), m["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ran,
        [
            (1, "001_create_greetings.sql"),
            (2, "002_create_visits.sql")
        ]
    );
    let log = log_of(&app, number, "migrations").await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("applied 001_create_greetings.sql (")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l == "schema version 2: 2 applied, 0 already there"),
        "{log:?}"
    );

    // A migration the database refuses fails the build before any step runs.
    std::fs::write(
        repo.path().join("migrations/003_broken.sql"),
        "CREATE TABLE broken (id serial PRIMARY KEY);\nALTER TABLE nowhere ADD COLUMN x int;\n",
    )
    .unwrap();
    let commit = commit_all(repo.path(), "a broken migration");
    let number = push(&app, "feature", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(180)).await;
    assert_eq!(build["status"], "failed", "{build:#}");
    let reason = build["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(
            "migration 003_broken.sql failed: ERROR: relation \"nowhere\" does not exist"
        ),
        "{build:#}"
    );
    assert_eq!(build["steps"][0]["status"], "failed", "{build:#}");
    assert_ne!(build["steps"][1]["status"], "passed", "{build:#}");
    // The two good ones ran again on the fresh sidecar; the broken one is not recorded.
    assert_eq!(
        build["migrations"].as_array().unwrap().len(),
        2,
        "{build:#}"
    );
    let log = log_of(&app, number, "migrations").await;
    assert!(
        log.iter().any(|l| l.contains("003_broken.sql failed")),
        "{log:?}"
    );
    app.stop().await;
}

/// Seeds release `number` of `project`, baked into `image`, expecting the schema of
/// `migrations` (file name, SQL), which are stored with it.
async fn insert_release(
    database_url: &str,
    project: &str,
    number: i64,
    image: &str,
    migrations: &[(&str, &str)],
) {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let build = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO builds (id, project, number, branch, commit, event, status)
             VALUES ($1, $2, $3, 'main', 'abc123', 'push', 'passed')",
            &[&build, &project, &number],
        )
        .await
        .unwrap();
    let release = uuid::Uuid::new_v4();
    let versions = migrations
        .iter()
        .map(|(name, _)| slipway::app_schema::version_of(name).unwrap());
    client
        .execute(
            "WITH r AS (INSERT INTO releases (id, project, number, build_id, commit, status, bake_status, image, schema_version)
             VALUES ($1, $2, $3, $4, 'abc123', 'published', 'baked', $5, $6)
             RETURNING id, bake_status, image)
             INSERT INTO release_images (release_id, kind, status, image)
             SELECT id, 'docker', bake_status, image FROM r",
            &[&release, &project, &number, &build, &image, &versions.clone().max()],
        )
        .await
        .unwrap();
    for ((name, sql), version) in migrations.iter().zip(versions) {
        client
            .execute(
                "INSERT INTO release_migrations (release_id, version, name, sql) VALUES ($1, $2, $3, $4)",
                &[&release, &version, name, sql],
            )
            .await
            .unwrap();
    }
}

/// Every row of every table of the database at `url`, as text.
async fn every_row(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let tables = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap();
    let mut text = String::new();
    for table in tables {
        let name: String = table.get(0);
        let rows = client
            .query(&format!("SELECT t::text FROM \"{name}\" t"), &[])
            .await
            .unwrap();
        for row in rows {
            text.push_str(&row.get::<_, String>(0));
            text.push('\n');
        }
    }
    text
}

async fn app_tables(url: &str) -> (Vec<String>, Vec<i64>) {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let tables = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let versions = client
        .query(
            "SELECT version FROM slipway_schema_migrations ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    (
        tables.iter().map(|r| r.get(0)).collect(),
        versions.iter().map(|r| r.get(0)).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_migrates_the_environments_database_and_an_older_schema_needs_the_override() {
    build_images().await;
    let project = format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (dev, prod) = (free_port(), free_port());
    // The application's database in prod: a database of the test cluster. The password
    // and the configured VERSION stand for secrets: neither may show outside the instances.
    let app_database = test_database();
    let secret = format!("pw{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let database_url = format!("{app_database} password={secret}");
    let configured = format!(
        "configured-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let config = format!(
        "[[projects]]\nname = \"{project}\"\nrepository = \"acme/{project}\"\nclone_url = \"file:///nonexistent\"\n\
         [[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:{dev}\"\ninstances = 1\n\
         [[projects.environments]]\nname = \"prod\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:{prod}\"\ninstances = 2\nretention = \"0s\"\nwatch = \"500ms\"\n\
         [projects.environments.env]\nDATABASE_URL = \"{database_url}\"\nVERSION = \"{configured}\"\n"
    );
    let app = TestApp::spawn(&config).await;
    let _cleanup = Cleanup(project.clone());
    let api = Api::of(&app);
    let v1 = [(
        "V1__greetings.sql",
        "CREATE TABLE greetings (id serial PRIMARY KEY, text text NOT NULL);",
    )];
    let v2 = [
        v1[0],
        (
            "V2__visits.sql",
            "CREATE TABLE visits (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());",
        ),
    ];
    let v3 = [
        v2[0],
        v2[1],
        (
            "V3__broken.sql",
            "CREATE TABLE half (id int); ALTER TABLE nowhere ADD COLUMN x int;",
        ),
    ];
    insert_release(&app.database_url, &project, 1, &image("v1"), &v1).await;
    insert_release(&app.database_url, &project, 2, &image("v2"), &v2).await;

    let releases = app
        .get_json(&format!("/api/v1/projects/{project}/releases"))
        .await;
    let expected: Vec<(&str, i64)> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap(),
                r["schema_version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(expected, [("v2", 2), ("v1", 1)]);

    // Promote v2 to prod: its migrations run on prod's database before the fleet starts.
    let started = Instant::now();
    let promote = format!("/projects/{project}/environments/prod/promote");
    let (status, stream) = api.post(&promote, json!({ "release": "v2" })).await;
    assert_eq!(status, 200, "{stream}");
    let environment = api.wait_live(&project, "prod", "v2").await;
    eprintln!(
        "promoting v2 with two migrations took {:?}",
        started.elapsed()
    );
    let (tables, versions) = app_tables(&app_database).await;
    assert_eq!(tables, ["greetings", "slipway_schema_migrations", "visits"]);
    assert_eq!(versions, [1, 2]);
    assert_eq!(environment["schema"]["version"], 2, "{environment:#}");
    assert_eq!(environment["schema"]["release"], "v2", "{environment:#}");
    let finished = events(&stream);
    let id = finished.last().unwrap()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deployment = api.deployment(&project, &id).await;
    let steps: Vec<&str> = deployment["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    let position = |name: &str| steps.iter().position(|s| *s == name);
    assert!(
        position("migrating").is_some() && position("migrating") < position("launching"),
        "{deployment:#}"
    );
    let migrating = &deployment["steps"][position("migrating").unwrap()];
    assert!(migrating["elapsed_ms"].is_i64(), "{deployment:#}");

    // Docker instances get the environment's configuration: the test app answers with
    // its VERSION, which the config overrides.
    let answer = reqwest::get(format!("http://127.0.0.1:{prod}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(answer.trim(), configured);

    // v1 expects schema 1, prod's database has 2: refused before anything changes.
    let rollback = format!("/projects/{project}/environments/prod/rollback");
    let (status, body) = api.post(&rollback, json!({ "to": "v1" })).await;
    assert_eq!(status, 409, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["error"],
        "release v1 expects schema 1 but prod's database is at schema 2; pass --allow-older-schema to roll back anyway"
    );
    assert_eq!(body["release_schema"], 1);
    assert_eq!(body["environment_schema"], 2);
    let (status, body) = api.post(&promote, json!({ "release": "v1" })).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("to deploy it anyway"), "{body}");
    let environment = api.environment(&project, "prod").await;
    assert_eq!(environment["live"]["release"], "v2");
    assert_eq!(environment["deployments"].as_array().unwrap().len(), 1);

    // The override rolls back; the database keeps its schema.
    let (status, stream) = api
        .post(&rollback, json!({ "to": "v1", "allow_older_schema": true }))
        .await;
    assert_eq!(status, 200, "{stream}");
    let environment = api.wait_live(&project, "prod", "v1").await;
    assert_eq!(environment["schema"]["version"], 2, "{environment:#}");
    assert_eq!(app_tables(&app_database).await.1, [1, 2]);

    // A migration the database refuses fails the deployment; v1 keeps serving.
    insert_release(&app.database_url, &project, 3, &image("v2"), &v3).await;
    let (status, stream) = api.post(&promote, json!({ "release": "v3" })).await;
    assert_eq!(status, 200, "{stream}");
    let last = events(&stream).pop().unwrap();
    assert_eq!(last["deployment"]["state"], "failed", "{last:#}");
    let reason = last["deployment"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(
            "migration V3__broken.sql failed: ERROR: relation \"nowhere\" does not exist"
        ),
        "{reason}"
    );
    let environment = api
        .wait_for(&project, "prod", Duration::from_secs(30), |e| {
            e["busy"].is_null()
        })
        .await;
    assert_eq!(environment["live"]["release"], "v1");
    assert_eq!(environment["schema"]["version"], 2);
    let (tables, versions) = app_tables(&app_database).await;
    assert!(!tables.contains(&"half".to_owned()), "{tables:?}");
    assert_eq!(versions, [1, 2]);

    // Neither value reaches the API or Slipway's store.
    let mut answers = String::new();
    for path in [
        format!("/api/v1/projects/{project}/environments"),
        format!("/api/v1/projects/{project}/releases"),
        format!("/api/v1/projects/{project}/deployments/{id}"),
        "/api/v1/audit".to_owned(),
    ] {
        answers.push_str(&app.get_json(&path).await.to_string());
    }
    let stored = every_row(&app.database_url).await;
    for value in [&secret, &configured] {
        assert!(!answers.contains(value.as_str()), "the API shows {value}");
        assert!(!stored.contains(value.as_str()), "the store holds {value}");
    }
    app.stop().await;
}

/// Removes the test's containers and networks (by their `slipway.project` label).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=slipway.project={}", self.0);
        for (list, remove) in [
            (&["ps", "-a"][..], &["rm", "-f"][..]),
            (&["network", "ls"][..], &["network", "rm"][..]),
        ] {
            let out = std::process::Command::new("docker")
                .args(list)
                .args(["-q", "--filter", &label])
                .output()
                .unwrap();
            let ids = String::from_utf8_lossy(&out.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(remove)
                    .args(&ids)
                    .output();
            }
        }
    }
}
