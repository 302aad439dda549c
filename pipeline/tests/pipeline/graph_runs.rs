//! Steps along a `depends_on` graph, Drone's settings and detached steps, run against dockerd.

use std::time::Duration;

use slipway_pipeline::{compile, parse, BuildStatus, StepStatus};

use super::docker_runs::{run_docker, Options};
use super::recorder::statuses;
use super::snapshots::build_info;

/// Two independent 5-second steps and a third after both.
const GRAPH: &str = r#"
steps:
  - name: slow-a
    image: slipway/debian:bookworm
    commands: ["sleep 5"]
  - name: slow-b
    image: slipway/debian:bookworm
    commands: ["sleep 5"]
  - name: both
    image: slipway/debian:bookworm
    depends_on: [slow-a, slow-b]
    commands: ["sleep 5"]
"#;

#[tokio::test]
async fn independent_steps_run_at_once_and_a_step_waits_for_all_it_depends_on() {
    let plan = compile(&parse(GRAPH).unwrap(), &build_info()).unwrap();
    let depends_on: Vec<&[String]> = plan.steps.iter().map(|s| &s.depends_on[..]).collect();
    assert_eq!(
        depends_on,
        [&[][..], &[], &["slow-a".to_owned(), "slow-b".to_owned()]]
    );

    let run = run_docker(GRAPH, Options::default()).await;
    assert_eq!(run.outcome.status, BuildStatus::Passed, "{:?}", run.outcome);
    let events = run.recorder.events();
    let at = |event: &str| events.iter().position(|e| e == event).expect(event);
    assert!(
        at("started slow-b") < at("finished slow-a Passed"),
        "{events:?}"
    );
    assert!(
        at("started slow-a") < at("finished slow-b Passed"),
        "{events:?}"
    );
    assert!(
        at("started both") > at("finished slow-a Passed"),
        "{events:?}"
    );
    assert!(
        at("started both") > at("finished slow-b Passed"),
        "{events:?}"
    );
    // 5 s + 5 s along the graph, where one after the other would take 15 s. The bound
    // compares with the steps' own durations, which include what a loaded dockerd adds to
    // each container's start: run in a row, the build would take at least their sum.
    let durations: Duration = run.outcome.steps.iter().map(|s| s.result.duration).sum();
    println!(
        "two parallel 5 s steps, then one: {:?} (the steps' durations add up to {durations:?})",
        run.elapsed
    );
    assert!(run.elapsed >= Duration::from_secs(10), "{:?}", run.elapsed);
    assert!(
        run.elapsed + Duration::from_secs(3) < durations,
        "{:?} for steps lasting {durations:?} in all",
        run.elapsed
    );
}

/// A detached web server a later step reads from, a detached step that fails, and plugin
/// settings and an environment variable taken from secrets.
const DRONE: &str = r#"
steps:
  - name: server
    image: slipway/debian:bookworm
    detach: true
    commands: ["echo serving the workspace", "python3 -m http.server 8000"]
  - name: crash
    image: slipway/debian:bookworm
    detach: true
    commands: ["exit 4"]
  - name: notify
    image: slipway/debian:bookworm
    environment:
      DB_PASSWORD: {from_secret: DB_PASSWORD}
    settings:
      channel: builds
      recipients: [ops, dev]
      webhook-token: {from_secret: SLACK_TOKEN}
    commands:
      - echo "$PLUGIN_CHANNEL $PLUGIN_RECIPIENTS $PLUGIN_WEBHOOK_TOKEN $DB_PASSWORD"
      - for i in $(seq 50); do python3 -c "import urllib.request as u; print(u.urlopen('http://server:8000/from-host.txt').read().decode())" 2>/dev/null && exit 0; sleep 0.2; done; exit 1
"#;

#[tokio::test]
async fn settings_and_secrets_reach_a_plugin_and_detached_steps_serve_the_build_without_failing_it()
{
    let secrets = [
        ("SLACK_TOKEN", "xoxb-sl4ck"),
        ("DB_PASSWORD", "pw-d4t4base"),
    ];
    let options = Options {
        secrets: &secrets,
        ..Default::default()
    };
    let run = run_docker(DRONE, options).await;
    let notify = run.recorder.lines("notify");
    assert_eq!(
        run.outcome.status,
        BuildStatus::Passed,
        "{:?}\n{notify:?}",
        run.outcome
    );
    assert_eq!(
        statuses(&run.outcome),
        [
            ("server".to_owned(), StepStatus::Cancelled),
            ("crash".to_owned(), StepStatus::Failed),
            ("notify".to_owned(), StepStatus::Passed),
        ]
    );
    assert!(
        notify.contains(&"builds ops,dev **** ****".to_owned()),
        "{notify:?}"
    );
    assert!(
        notify.contains(&"hello from the host".to_owned()),
        "{notify:?}"
    );
    let server = &run.outcome.steps[0].result;
    assert_eq!(
        server.reason.as_deref(),
        Some("detached: stopped when the other steps had finished")
    );
    let served = run.recorder.lines("server");
    assert!(
        served.contains(&"serving the workspace".to_owned()),
        "{served:?}"
    );
    assert!(
        served.iter().any(|l| l.contains("GET /from-host.txt")),
        "{served:?}"
    );
    assert_eq!(run.outcome.steps[1].result.exit_code, Some(4));
}

#[tokio::test]
async fn a_failure_skips_what_waits_for_it_while_other_branches_and_failure_steps_run() {
    let yaml = r#"
steps:
  - name: fail
    image: slipway/debian:bookworm
    commands: ["exit 3"]
  - name: independent
    image: slipway/debian:bookworm
    commands: ["sleep 2", "echo independent done"]
  - name: after-fail
    image: slipway/debian:bookworm
    depends_on: [fail]
    commands: ["echo never"]
  - name: notify-failure
    image: slipway/debian:bookworm
    depends_on: [after-fail, independent]
    when: {status: [failure]}
    commands: ["echo build failed"]
  - name: after-notify
    image: slipway/debian:bookworm
    depends_on: [notify-failure]
    commands: ["echo never"]
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
            ("fail".to_owned(), StepStatus::Failed),
            ("independent".to_owned(), StepStatus::Passed),
            ("after-fail".to_owned(), StepStatus::Skipped),
            ("notify-failure".to_owned(), StepStatus::Passed),
            ("after-notify".to_owned(), StepStatus::Skipped),
        ]
    );
    assert_eq!(
        run.outcome.steps[2].result.reason.as_deref(),
        Some("`fail`, which this step waits for, failed")
    );
    assert_eq!(
        run.recorder.lines("independent"),
        ["+ sleep 2", "+ echo independent done", "independent done"]
    );
    assert_eq!(
        run.recorder.lines("notify-failure"),
        ["+ echo build failed", "build failed"]
    );
}

#[tokio::test]
async fn a_from_secret_nobody_supplied_errors_the_build_before_anything_starts() {
    let yaml = r#"
steps:
  - name: notify
    image: slipway/debian:bookworm
    commands: ["true"]
    settings: {webhook: {from_secret: SLACK_WEBHOOK}}
"#;
    let run = run_docker(yaml, Options::default()).await;
    assert_eq!(run.outcome.status, BuildStatus::Errored);
    assert_eq!(
        run.outcome.message.as_deref(),
        Some(
            "secret `SLACK_WEBHOOK` needed by step `notify` (as `PLUGIN_WEBHOOK`) was not supplied"
        )
    );
    assert_eq!(run.recorder.events()[0], "finished notify Cancelled");
}

/// Two steps at once binding the same port, then a step in the lane one of them left.
const SAME_PORT: &str = r#"
steps:
  - name: listen-a
    image: slipway/debian:bookworm
    commands: &listen
      - "python3 -c \"import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 8181)); s.listen(); time.sleep(3)\""
      - echo listened
  - name: listen-b
    image: slipway/debian:bookworm
    commands: *listen
  - name: after
    image: slipway/debian:bookworm
    depends_on: [listen-a, listen-b]
    commands:
      - "python3 -c \"import socket; s = socket.socket(); s.bind(('0.0.0.0', 8181)); print('bound again')\""
      - cat
      - echo stdin was empty
"#;

#[tokio::test]
async fn steps_at_once_never_share_ports_and_a_step_reads_no_input() {
    let run = run_docker(SAME_PORT, Options::default()).await;
    assert_eq!(run.outcome.status, BuildStatus::Passed, "{:?}", run.outcome);
    for step in ["listen-a", "listen-b"] {
        assert!(
            run.recorder.lines(step).contains(&"listened".to_owned()),
            "{:?}",
            run.recorder.lines(step)
        );
    }
    let events = run.recorder.events();
    let at = |event: &str| events.iter().position(|e| e == event).expect(event);
    assert!(
        at("started listen-b") < at("finished listen-a Passed"),
        "{events:?}"
    );
    let after = run.recorder.lines("after");
    assert!(after.contains(&"bound again".to_owned()), "{after:?}");
    assert!(after.contains(&"stdin was empty".to_owned()), "{after:?}");
}

/// A staged container runs its command only once its gate opens; one whose gate is dropped
/// (its stager gone, as when the server dies) exits without running it.
#[tokio::test]
async fn a_staged_container_runs_its_command_only_through_its_gate() {
    use futures::StreamExt;
    use slipway_pipeline::engine::{ContainerConfig, Engine};
    use slipway_pipeline::DockerEngine;

    let engine = DockerEngine::connect(None).await.unwrap();
    let unique = format!(
        "slipway-gate-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let config = |name: &str| ContainerConfig {
        name: name.to_owned(),
        image: "slipway/debian:bookworm".to_owned(),
        env: Default::default(),
        entrypoint: Some(vec!["/bin/sh".to_owned(), "-c".to_owned()]),
        cmd: Some(vec!["echo ran; sleep 60".to_owned()]),
        workdir: None,
        network: None,
        mount: None,
        labels: Default::default(),
    };

    let dropped = format!("{unique}-dropped");
    let staged = engine.stage(&config(&dropped)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(staged);
    let code = tokio::time::timeout(Duration::from_secs(20), engine.wait_exit(&dropped))
        .await
        .expect("a container whose gate was dropped stops without running its command");
    engine.remove_container(&dropped).await.unwrap();
    assert_eq!(code.unwrap(), 125);

    let opened = format!("{unique}-opened");
    let staged = engine.stage(&config(&opened)).await.unwrap();
    staged.gate.open().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), staged.output.into_future())
        .await
        .unwrap()
        .0;
    engine.remove_container(&opened).await.unwrap();
    assert_eq!(&first.unwrap().unwrap().bytes[..], b"ran\n");
}

/// A Drone plugin as its image comes: no `commands`, its own entrypoint reading `PLUGIN_*`.
#[tokio::test]
async fn a_step_without_commands_runs_its_images_own_entrypoint_with_its_settings() {
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("docker runs");
        assert!(out.status.success(), "docker {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let unique = format!("{}-{}", std::process::id(), line!());
    let image = format!("slipway/test-plugin:{unique}");
    let maker = docker(&["create", "slipway/debian:bookworm", "true"]);
    docker(&[
        "commit",
        "--change",
        r#"ENTRYPOINT ["/bin/sh", "-c", "echo \"plugin: $PLUGIN_CHANNEL to $PLUGIN_WEBHOOK in $PWD\""]"#,
        &maker,
        &image,
    ]);
    docker(&["rm", &maker]);
    let yaml = format!(
        "steps:\n  - name: notify\n    image: {image}\n    settings:\n      channel: builds\n      webhook: {{from_secret: SLACK_TOKEN}}\n"
    );
    let secrets = [("SLACK_TOKEN", "xoxb-pl4gin")];
    let options = Options {
        secrets: &secrets,
        ..Default::default()
    };
    let run = run_docker(&yaml, options).await;
    docker(&["rmi", &image]);
    assert_eq!(run.outcome.status, BuildStatus::Passed, "{:?}", run.outcome);
    assert_eq!(
        run.recorder.lines("notify"),
        ["plugin: builds to **** in /workspace".to_owned()]
    );
}

/// A service's password from a secret: the step that knows it gets in, a wrong one does not.
const SERVICE_SECRET: &str = r#"
services:
  - name: db
    image: slipway/postgres:15
    environment:
      POSTGRES_PASSWORD: {from_secret: DB_PASSWORD}
    ready: {command: "pg_isready -h 127.0.0.1 -U postgres", timeout: 60s}
steps:
  - name: right
    image: slipway/postgres:15
    environment:
      PGPASSWORD: {from_secret: DB_PASSWORD}
    commands: ["psql -h db -U postgres -tAc 'select 40 + 2'"]
  - name: wrong
    image: slipway/postgres:15
    environment:
      PGPASSWORD: not-the-password
    commands: ["psql -h db -U postgres -tAc 'select 1'"]
"#;

#[tokio::test]
async fn a_service_takes_a_variable_from_a_secret() {
    let secrets = [("DB_PASSWORD", "s3rvice-pw")];
    let options = Options {
        secrets: &secrets,
        ..Default::default()
    };
    let run = run_docker(SERVICE_SECRET, options).await;
    assert_eq!(
        statuses(&run.outcome),
        [
            ("right".to_owned(), StepStatus::Passed),
            ("wrong".to_owned(), StepStatus::Failed),
        ],
        "{:?}",
        run.outcome
    );
    assert!(
        run.recorder.lines("right").contains(&"42".to_owned()),
        "{:?}",
        run.recorder.lines("right")
    );
    let wrong = run.recorder.lines("wrong").join("\n");
    assert!(wrong.contains("password authentication failed"), "{wrong}");

    // Not supplied: the build errors before anything starts, naming service and secret.
    let run = run_docker(SERVICE_SECRET, Options::default()).await;
    assert_eq!(run.outcome.status, BuildStatus::Errored);
    assert_eq!(
        run.outcome.message.as_deref(),
        Some(
            "secret `DB_PASSWORD` needed by service `db` (as `POSTGRES_PASSWORD`) was not supplied"
        )
    );
}
