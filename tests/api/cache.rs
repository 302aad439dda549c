//! Build caches against dockerd, with the archives in a server's data directory (the default)
//! and in an S3 bucket (moto): a project's second build restores what its first saved (its
//! step sees the files), another project with the same key starts cold, and a failing build
//! saves nothing. Archives no build used for `expire_days` are removed.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use slipway::cache::Caches;
use slipway::config::{CacheConfig, CacheStorage};

use crate::apt_s3::bucket;
use crate::aws_deploy::moto::{Moto, REGION};
use crate::aws_deploy::AWS_VARIABLES;
use crate::builds::{commit_all, git, push_queued};
use crate::deploy::Api;
use crate::helpers::{read_token, test_database, TestApp};
use crate::server_process;

const SECRET: &str = "cache-secret";
const BUCKET: &str = "slipway-cache";
const PREFIX: &str = "ci/cache/";

/// The step "installs" into `deps/` only when the cache did not bring it, and says which; a
/// commit holding `fail` fails after the install. No step makes `.cache/never`.
const SPEC: &str = r#"steps:
  - name: install
    image: slipway/debian:bookworm
    commands:
      - if [ -f deps/installed ]; then echo "warm from build $(cat deps/installed)"; else echo cold; mkdir -p deps; echo "$SLIPWAY_BUILD_NUMBER" > deps/installed; fi
      - test ! -f fail
cache:
  paths: [deps, .cache/never]
  key: "deps-{{ branch }}-{{ hash \"deps.lock\" }}"
"#;

/// A repository with the pipeline and a lock file; its head commit.
fn repository(failing: bool) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".slipway.yml"), SPEC).unwrap();
    std::fs::write(dir.path().join("deps.lock"), "left-pad==1.3.0\n").unwrap();
    if failing {
        std::fs::write(dir.path().join("fail"), "").unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    let commit = commit_all(dir.path(), "first");
    (dir, commit)
}

/// Projects `alpha` and `beta`, each with its repository.
fn projects(alpha: &Path, beta: &Path) -> String {
    [("alpha", alpha), ("beta", beta)]
        .iter()
        .map(|(name, repo)| {
            format!(
                "[[projects]]\nname = \"{name}\"\nrepository = \"acme/{name}\"\nclone_url = \"file://{}\"\nwebhook_secret = \"{SECRET}\"\nbranches = \"^main$\"\n",
                repo.display()
            )
        })
        .collect()
}

/// Pushes `commit` of `project` and waits for its build to end; the build and its log lines.
async fn build(api: &Api, project: &str, commit: &str) -> (Value, Vec<Value>) {
    let repository = format!("acme/{project}");
    let number = push_queued(api.address(), (&repository, SECRET), "main", commit).await;
    let path = format!("/projects/{project}/builds/{number}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let build = api.get(&path).await;
        if !matches!(build["status"].as_str(), Some("queued" | "running")) {
            let logs = api.get(&format!("{path}/logs")).await;
            return (build, logs.as_array().unwrap().clone());
        }
        assert!(Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lines `step` logged.
fn lines<'a>(logs: &'a [Value], step: &str) -> Vec<&'a str> {
    logs.iter()
        .filter(|line| line["step"] == step)
        .map(|line| line["line"].as_str().unwrap())
        .collect()
}

fn step_status<'a>(build: &'a Value, name: &str) -> &'a str {
    build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["name"] == name)
        .and_then(|step| step["status"].as_str())
        .unwrap_or_else(|| panic!("step {name} in {build}"))
}

/// alpha cold then warm; beta (same key) cold even after failing once: what a failed build
/// wrote was never saved, and alpha's archive is not beta's.
async fn exercise(api: &Api, alpha: &str, beta_failing: &str, beta: &str) {
    let (first, logs) = build(api, "alpha", alpha).await;
    assert_eq!(first["status"], "passed", "{first}");
    assert!(lines(&logs, "install").contains(&"cold"), "{logs:?}");
    let restore = lines(&logs, "cache-restore");
    assert!(
        restore[0].starts_with("no cache saved under key `deps-main-"),
        "{restore:?}"
    );
    let save = lines(&logs, "cache-save");
    assert_eq!(
        save[0],
        "`.cache/never` is not in the workspace: not cached"
    );
    assert!(
        save[1].starts_with("saved deps under key `deps-main-"),
        "{save:?}"
    );
    assert_eq!(step_status(&first, "cache-save"), "passed");

    let (second, logs) = build(api, "alpha", alpha).await;
    assert_eq!(second["status"], "passed", "{second}");
    let warm = format!("warm from build {}", first["number"]);
    assert!(lines(&logs, "install").contains(&warm.as_str()), "{logs:?}");
    let restore = lines(&logs, "cache-restore");
    assert!(
        restore[0].starts_with("restored deps from key `deps-main-"),
        "{restore:?}"
    );

    let (failed, logs) = build(api, "beta", beta_failing).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(lines(&logs, "install").contains(&"cold"), "{logs:?}");
    assert_eq!(step_status(&failed, "cache-save"), "skipped");

    let (passed, logs) = build(api, "beta", beta).await;
    assert_eq!(passed["status"], "passed", "{passed}");
    assert!(lines(&logs, "install").contains(&"cold"), "{logs:?}");
}

// Multi-threaded: the in-process server builds while the test waits on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_cache_is_restored_for_its_project_only_from_a_directory_or_a_bucket() {
    let moto = Moto::start().await;
    let s3 = bucket(&moto, BUCKET).await;
    let (alpha, alpha_commit) = repository(false);
    let (beta, beta_failing) = repository(true);
    std::fs::remove_file(beta.path().join("fail")).unwrap();
    let beta_commit = commit_all(beta.path(), "passes");

    // The default: archives in the data directory of an in-process server.
    let local = TestApp::spawn(&projects(alpha.path(), beta.path())).await;
    let local_api = Api::of(&local);
    // A bucket: the real binary, given moto's dummy credentials.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "database_url = \"{}\"\n[cache]\ns3 = {{ bucket = \"{BUCKET}\", prefix = \"{PREFIX}\", endpoint_url = \"{}\", region = \"{REGION}\" }}\n{}",
        test_database(),
        moto.endpoint,
        projects(alpha.path(), beta.path())
    );
    std::fs::write(dir.path().join("slipway.toml"), config).unwrap();
    let server = server_process::start_with_env(dir.path(), &AWS_VARIABLES);
    let bucket_api = Api::at(&server.address, &read_token(&dir.path().join(".slipway")));

    tokio::join!(
        exercise(&local_api, &alpha_commit, &beta_failing, &beta_commit),
        exercise(&bucket_api, &alpha_commit, &beta_failing, &beta_commit),
    );

    // Each project's archive in its own namespace, once per key: alpha's second build
    // restored its key and wrote nothing.
    let cache_dir = local.data_dir().join("cache");
    let archives = |project: &str| -> Vec<String> {
        std::fs::read_dir(cache_dir.join(project))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let key = archives("alpha");
    assert_eq!(key.len(), 1, "{key:?}");
    assert!(key[0].starts_with("deps-main-") && key[0].ends_with(".tar.gz"));
    assert_eq!(archives("beta"), key);
    let listed = s3.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    let mut objects: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    objects.sort();
    assert_eq!(
        objects,
        [
            format!("{PREFIX}alpha/{}", key[0]),
            format!("{PREFIX}beta/{}", key[0])
        ]
    );

    // Housekeeping removes what no build used for `expire_days`, and keeps the rest.
    let month_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(cache_dir.join("beta").join(&key[0]))
        .unwrap()
        .set_modified(month_ago)
        .unwrap();
    let caches = Caches::open(&CacheConfig {
        storage: CacheStorage::Dir(cache_dir.clone()),
        expire_after: Duration::from_secs(14 * 24 * 3600),
        limit_bytes: 1 << 20,
    })
    .await;
    assert_eq!(caches.expire().await.unwrap(), 1);
    assert!(archives("beta").is_empty());
    assert_eq!(archives("alpha"), key);
    local.stop().await;
}
