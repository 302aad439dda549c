//! Real runs against dockerd. Every object a test creates carries `slipway.test=<test id>`,
//! and every test ends by checking, with the docker CLI, that nothing with its label is left.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use slipway_pipeline::engine::{ContainerConfig, Engine, NetworkAttachment};
use slipway_pipeline::spec::Event;
use slipway_pipeline::{
    compile, parse, reap, run, BuildInfo, BuildOutcome, BuildStatus, DockerEngine, RunOptions,
    StepStatus, WorkspaceExport,
};
use tokio_util::sync::CancellationToken;

use super::recorder::{statuses, Recorder};

const TEST_LABEL: &str = "slipway.test";

fn test_id() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("t{}-{nanos}-{n}", std::process::id())
}

pub(super) struct DockerRun {
    pub(super) outcome: BuildOutcome,
    pub(super) recorder: Recorder,
    pub(super) elapsed: Duration,
}

#[derive(Default)]
pub(super) struct Options<'a> {
    pub(super) secrets: &'a [(&'a str, &'a str)],
    pub(super) run: RunOptions,
    pub(super) cancel_after: Option<Duration>,
    pub(super) workspace: Option<PathBuf>,
}

/// Runs `yaml` for a fresh build labelled with a fresh test id, then checks that no
/// container, network or volume with that label is left.
pub(super) async fn run_docker(yaml: &str, options: Options<'_>) -> DockerRun {
    let engine = DockerEngine::connect(None).await.expect("dockerd answers");
    let id = test_id();
    let build = BuildInfo {
        project: "acme/hello".to_owned(),
        number: 7,
        build_id: id.clone(),
        commit: "c0ffee".to_owned(),
        branch: "main".to_owned(),
        event: Event::Push,
        extra_labels: BTreeMap::from([(TEST_LABEL.to_owned(), id.clone())]),
        extra_env: Default::default(),
    };
    let plan = compile(&parse(yaml).unwrap(), &build).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(
        scratch.path().join("from-host.txt"),
        "hello from the host\n",
    )
    .unwrap();
    let workspace = options
        .workspace
        .unwrap_or_else(|| scratch.path().to_owned());
    let secrets: HashMap<String, String> = options
        .secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cancel = CancellationToken::new();
    if let Some(after) = options.cancel_after {
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            trigger.cancel();
        });
    }
    let recorder = Recorder::default();
    let started = Instant::now();
    let outcome = run(
        &plan,
        &engine,
        &workspace,
        &secrets,
        &recorder,
        cancel,
        &options.run,
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(outcome.teardown_errors, Vec::<String>::new());
    assert_nothing_left(&id);
    DockerRun {
        outcome,
        recorder,
        elapsed,
    }
}

fn docker_names(args: &[&str], format: &str, id: &str) -> Vec<String> {
    let filter = format!("label={TEST_LABEL}={id}");
    let output = Command::new("docker")
        .args(args)
        .args(["--filter", &filter, "--format", format])
        .output()
        .expect("docker CLI runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_nothing_left(id: &str) {
    assert_eq!(
        docker_names(&["ps", "-a"], "{{.Names}}", id),
        Vec::<String>::new(),
        "containers left"
    );
    assert_eq!(
        docker_names(&["network", "ls"], "{{.Name}}", id),
        Vec::<String>::new(),
        "networks left"
    );
    assert_eq!(
        docker_names(&["volume", "ls"], "{{.Name}}", id),
        Vec::<String>::new(),
        "volumes left"
    );
}

fn hello_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello")
}

#[tokio::test]
async fn the_hello_example_migrates_and_passes_its_tests_against_a_postgres_sidecar() {
    let yaml = std::fs::read_to_string(hello_dir().join(".slipway.yml")).unwrap();
    let options = Options {
        workspace: Some(hello_dir()),
        ..Default::default()
    };
    let run = run_docker(&yaml, options).await;
    let migrate = run.recorder.lines("migrate");
    let test = run.recorder.lines("test");
    assert_eq!(
        run.outcome.status,
        BuildStatus::Passed,
        "{:?}\nmigrate: {migrate:#?}\ntest: {test:#?}",
        run.outcome
    );
    assert_eq!(
        statuses(&run.outcome),
        [
            ("migrate".to_owned(), StepStatus::Passed),
            ("test".to_owned(), StepStatus::Passed),
            ("notify-failure".to_owned(), StepStatus::Skipped),
        ]
    );
    assert!(
        migrate[0].starts_with("+ for migration in migrations/*.sql"),
        "{migrate:?}"
    );
    assert!(
        migrate.contains(&"applying migrations/002_create_visits.sql".to_owned()),
        "{migrate:?}"
    );
    assert!(
        test.iter()
            .any(|l| l.contains("test_both_tables_exist") && l.ends_with("ok")),
        "{test:?}"
    );
    assert!(
        test.iter().any(|l| l.starts_with("Ran 9 tests")),
        "{test:?}"
    );
}

#[tokio::test]
async fn steps_share_the_workspace_and_the_sidecar_and_a_failing_step_fails_the_build() {
    let yaml = r#"
services:
  - name: postgres
    image: slipway/postgres:15
    environment: {POSTGRES_PASSWORD: pw, POSTGRES_DB: app}
    ready: {command: "pg_isready -h localhost -U postgres", timeout: 60s}
steps:
  - name: write
    image: slipway/debian:bookworm
    commands:
      - cat from-host.txt
      - echo "$SLIPWAY_PROJECT#$SLIPWAY_BUILD_NUMBER on $SLIPWAY_BRANCH, CI=$CI" > note.txt
  - name: query
    image: slipway/postgres:15
    environment: {PGHOST: postgres, PGUSER: postgres, PGPASSWORD: pw, PGDATABASE: app}
    commands:
      - cat note.txt
      - psql -X -A -t -c "select 40 + 2"
  - name: fail
    image: slipway/debian:bookworm
    commands: ["echo about to fail", "exit 3", "echo never printed"]
  - name: skipped-after-failure
    image: slipway/debian:bookworm
    commands: ["true"]
  - name: report
    image: slipway/debian:bookworm
    commands: ["echo reporting failure"]
    when: {status: [failure]}
"#;
    let run = run_docker(yaml, Options::default()).await;
    assert_eq!(run.outcome.status, BuildStatus::Failed, "{:?}", run.outcome);
    assert_eq!(
        run.outcome.message.as_deref(),
        Some("step `fail` failed with exit code 3")
    );
    assert_eq!(
        statuses(&run.outcome),
        [
            ("write".to_owned(), StepStatus::Passed),
            ("query".to_owned(), StepStatus::Passed),
            ("fail".to_owned(), StepStatus::Failed),
            ("skipped-after-failure".to_owned(), StepStatus::Skipped),
            ("report".to_owned(), StepStatus::Passed),
        ]
    );
    assert!(run
        .recorder
        .lines("write")
        .contains(&"hello from the host".to_owned()));
    let query = run.recorder.lines("query");
    assert!(
        query.contains(&"acme/hello#7 on main, CI=true".to_owned()),
        "{query:?}"
    );
    assert!(query.contains(&"42".to_owned()), "{query:?}");
    assert_eq!(
        run.recorder.lines("fail"),
        ["+ echo about to fail", "about to fail", "+ exit 3"]
    );
}

#[tokio::test]
async fn cancelling_a_running_step_stops_the_build_promptly() {
    let yaml =
        "steps:\n  - {name: sleep, image: slipway/debian:bookworm, commands: [\"sleep 300\"]}\n";
    let options = Options {
        cancel_after: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let run = run_docker(yaml, options).await;
    assert_eq!(run.outcome.status, BuildStatus::Cancelled);
    assert_eq!(
        statuses(&run.outcome),
        [("sleep".to_owned(), StepStatus::Cancelled)]
    );
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
}

#[tokio::test]
async fn a_step_over_its_timeout_is_killed_and_fails_the_build() {
    let yaml = "steps:\n  - {name: sleep, image: slipway/debian:bookworm, commands: [\"sleep 300\"], timeout: 2s}\n";
    let run = run_docker(yaml, Options::default()).await;
    assert_eq!(run.outcome.status, BuildStatus::Failed);
    assert_eq!(
        statuses(&run.outcome),
        [("sleep".to_owned(), StepStatus::TimedOut)]
    );
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
}

#[tokio::test]
async fn secret_values_never_reach_the_observer() {
    let yaml = r#"
steps:
  - name: deploy
    image: slipway/debian:bookworm
    secrets: [DEPLOY_TOKEN]
    commands: ['echo "token is $DEPLOY_TOKEN; again $DEPLOY_TOKEN" >&2']
"#;
    let options = Options {
        secrets: &[("DEPLOY_TOKEN", "hunter2-xyz")],
        ..Default::default()
    };
    let run = run_docker(yaml, options).await;
    assert_eq!(run.outcome.status, BuildStatus::Passed);
    let lines = run.recorder.lines("deploy");
    assert!(
        lines.contains(&"token is ****; again ****".to_owned()),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| !l.contains("hunter2")), "{lines:?}");
}

#[tokio::test]
async fn a_loud_step_is_cut_at_the_cap_and_still_drains_to_completion() {
    let yaml = "steps:\n  - {name: loud, image: slipway/debian:bookworm, commands: [\"yes | head -c 4000000\", \"echo done\"]}\n";
    let run_options = RunOptions {
        log_cap_bytes_per_step: 10_000,
        ..Default::default()
    };
    let run = run_docker(
        yaml,
        Options {
            run: run_options,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(run.outcome.status, BuildStatus::Passed);
    let lines = run.recorder.lines("loud");
    let forwarded: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(forwarded < 10_000 + 200, "{forwarded} bytes forwarded");
    assert_eq!(
        lines.last().unwrap(),
        "[slipway] log cut at 10000 bytes: the rest of this step's output is not kept"
    );
    assert!(!lines.contains(&"done".to_owned()));
}

#[tokio::test]
async fn a_passing_builds_workspace_is_exported_with_what_its_steps_made_within_a_limit() {
    let yaml = r#"
steps:
  - name: build
    image: slipway/debian:bookworm
    commands:
      - mkdir -p dist && printf built > dist/app && chmod 0750 dist/app
      - mkfifo dist/pipe && ln -s /etc/passwd dist/passwd
"#;
    let export = |dir: &Path, limit_bytes| Options {
        run: RunOptions {
            export_workspace: Some(WorkspaceExport {
                dir: dir.to_owned(),
                limit_bytes,
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let exported = tempfile::tempdir().unwrap();
    let run = run_docker(yaml, export(exported.path(), 1 << 20)).await;
    assert_eq!(run.outcome.status, BuildStatus::Passed, "{:?}", run.outcome);
    let app = exported.path().join("dist/app");
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "built");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(app.metadata().unwrap().permissions().mode() & 0o777, 0o750);
    assert_eq!(
        std::fs::read_to_string(exported.path().join("from-host.txt")).unwrap(),
        "hello from the host\n"
    );
    assert_eq!(
        std::fs::read_link(exported.path().join("dist/passwd")).unwrap(),
        Path::new("/etc/passwd"),
        "a link is kept as a link, never followed"
    );
    assert!(
        !exported.path().join("dist/pipe").exists(),
        "a pipe is not content"
    );

    let small = tempfile::tempdir().unwrap();
    let run = run_docker(yaml, export(small.path(), 2048)).await;
    assert_eq!(run.outcome.status, BuildStatus::Errored);
    let message = run.outcome.message.unwrap();
    assert!(
        message.contains("export") && message.contains("larger than the limit of 2048 bytes"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_image_with_pull_never_errors_the_build_without_pulling() {
    let yaml = "steps:\n  - {name: build, image: \"slipway/absent:1\", pull: never, commands: [\"true\"]}\n";
    let run = run_docker(yaml, Options::default()).await;
    assert_eq!(run.outcome.status, BuildStatus::Errored);
    let message = run.outcome.message.unwrap();
    assert!(
        message.contains("image `slipway/absent:1` is not present"),
        "{message}"
    );
}

#[tokio::test]
async fn a_service_that_never_listens_fails_the_build_with_its_last_output() {
    let yaml = r#"
services:
  - name: postgres
    image: slipway/postgres:15
    # Long enough for PostgreSQL to start and say so on a loaded machine.
    ready: {tcp: 6543, timeout: 20s}
steps:
  - {name: build, image: slipway/debian:bookworm, commands: ["true"]}
"#;
    let run = run_docker(yaml, Options::default()).await;
    assert_eq!(run.outcome.status, BuildStatus::Failed);
    let message = run.outcome.message.unwrap();
    assert!(
        message.starts_with("service `postgres` (slipway/postgres:15) not ready after 20s"),
        "{message}"
    );
    assert!(message.contains("ready to accept connections"), "{message}");
}

#[tokio::test]
async fn reap_removes_what_a_crashed_server_left_behind() {
    let engine = DockerEngine::connect(None).await.unwrap();
    let id = test_id();
    let labels = BTreeMap::from([(TEST_LABEL.to_owned(), id.clone())]);
    let name = format!("slipway-reap-{id}");
    engine.create_network(&name, &labels).await.unwrap();
    engine.create_volume(&name, &labels).await.unwrap();
    let config = ContainerConfig {
        name: name.clone(),
        image: "slipway/debian:bookworm".to_owned(),
        env: BTreeMap::new(),
        entrypoint: None,
        cmd: Some(vec!["sleep".to_owned(), "300".to_owned()]),
        workdir: None,
        network: Some(NetworkAttachment {
            network: name.clone(),
            alias: "left".to_owned(),
            lane: None,
        }),
        mount: None,
        labels: labels.clone(),
    };
    engine.start_container(&config).await.unwrap();
    let reaped = reap(&engine, &format!("{TEST_LABEL}={id}")).await.unwrap();
    assert_eq!(
        (reaped.containers, reaped.networks, reaped.volumes),
        (1, 1, 1)
    );
    assert_nothing_left(&id);
}
