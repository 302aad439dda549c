//! The runtime's decisions, over the contract-enforcing fake engine.

use std::collections::HashMap;
use std::time::Duration;

use slipway_pipeline::{
    compile, parse, reap, run, BuildOutcome, BuildStatus, Plan, RunOptions, StepStatus,
};
use tokio_util::sync::CancellationToken;

use super::fake::{Behaviour, FakeEngine};
use super::recorder::{statuses, Recorder};
use super::snapshots::build_info;

fn plan(yaml: &str) -> Plan {
    compile(&parse(yaml).unwrap(), &build_info()).unwrap()
}

fn exit(code: i64, lines: &[&str]) -> Behaviour {
    Behaviour::Exit {
        lines: lines.iter().map(|l| l.to_string()).collect(),
        code,
    }
}

struct Run {
    outcome: BuildOutcome,
    recorder: Recorder,
}

async fn run_with(
    yaml: &str,
    engine: &FakeEngine,
    secrets: &[(&str, &str)],
    options: RunOptions,
    cancel: CancellationToken,
) -> Run {
    let workspace = tempfile::tempdir().unwrap();
    let secrets: HashMap<String, String> = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let recorder = Recorder::default();
    let plan = plan(yaml);
    let outcome = run(
        &plan,
        engine,
        workspace.path(),
        &secrets,
        &recorder,
        cancel,
        &options,
    )
    .await;
    assert_eq!(
        engine.violations(),
        Vec::<String>::new(),
        "the runtime broke the engine contract"
    );
    assert_eq!(
        engine.remaining(),
        Vec::<String>::new(),
        "teardown left objects behind"
    );
    assert_eq!(recorder.finished_count(), 1);
    Run { outcome, recorder }
}

async fn run_fake(yaml: &str, engine: &FakeEngine) -> Run {
    run_with(
        yaml,
        engine,
        &[],
        RunOptions::default(),
        CancellationToken::new(),
    )
    .await
}

const THREE_STEPS: &str = r#"
services:
  - {name: db, image: slipway/postgres:15, ready: {tcp: 5432}}
steps:
  - {name: first, image: img, commands: ["true"]}
  - {name: second, image: img, commands: ["true"]}
  - {name: on-failure, image: img, commands: ["true"], when: {status: [failure]}}
"#;

fn passed(name: &str) -> (String, StepStatus) {
    (name.to_owned(), StepStatus::Passed)
}

fn with_status(name: &str, status: StepStatus) -> (String, StepStatus) {
    (name.to_owned(), status)
}

#[tokio::test]
async fn a_passing_build_sets_up_waits_for_services_runs_steps_in_order_and_tears_down() {
    let engine = FakeEngine::new().with("db", Behaviour::ReadyAfter { attempts: 3 });
    let options = RunOptions {
        ready_poll_interval: Duration::from_millis(10),
        ..Default::default()
    };
    let run = run_with(THREE_STEPS, &engine, &[], options, CancellationToken::new()).await;
    assert_eq!(run.outcome.status, BuildStatus::Passed);
    assert_eq!(
        statuses(&run.outcome),
        [
            passed("first"),
            passed("second"),
            with_status("on-failure", StepStatus::Skipped)
        ]
    );
    let calls: Vec<String> = engine
        .calls()
        .into_iter()
        .map(|call| match call.strip_prefix("start ") {
            // Starts keep the alias; other calls are reduced to the operation.
            Some(alias) => format!("start {alias}"),
            None => call.split_whitespace().next().unwrap().to_owned(),
        })
        .collect();
    let first = |name: &str| calls.iter().position(|c| c == name).unwrap();
    assert!(first("create_network") < first("create_volume"));
    assert!(first("create_volume") < first("start db"));
    assert_eq!(calls.iter().filter(|c| *c == "tcp_ready").count(), 3);
    assert!(first("tcp_ready") < first("copy_into_volume"));
    assert!(first("copy_into_volume") < first("start first"));
    assert!(first("start first") < first("start second"));
    assert!(!calls.contains(&"start on-failure".to_owned()));
    assert_eq!(calls.last().unwrap(), "remove_volume");
    assert_eq!(
        run.recorder.events(),
        [
            "started first",
            "finished first Passed",
            "started second",
            "finished second Passed",
            "finished on-failure Skipped",
            "build Passed",
        ]
    );
}

#[tokio::test]
async fn a_failed_step_skips_success_steps_and_runs_failure_steps() {
    let engine = FakeEngine::new().with("first", exit(2, &["boom"]));
    let run = run_fake(THREE_STEPS, &engine).await;
    assert_eq!(run.outcome.status, BuildStatus::Failed);
    assert_eq!(
        run.outcome.message.as_deref(),
        Some("step `first` failed with exit code 2")
    );
    assert_eq!(
        statuses(&run.outcome),
        [
            with_status("first", StepStatus::Failed),
            with_status("second", StepStatus::Skipped),
            passed("on-failure"),
        ]
    );
    assert_eq!(run.outcome.steps[0].result.exit_code, Some(2));
    assert_eq!(run.recorder.lines("first"), ["boom"]);
}

#[tokio::test]
async fn teardown_runs_after_a_failed_setup_and_unreached_steps_are_cancelled() {
    let engine = FakeEngine::new().failing("create_volume");
    let run = run_fake(THREE_STEPS, &engine).await;
    assert_eq!(run.outcome.status, BuildStatus::Errored);
    assert!(run
        .outcome
        .message
        .as_deref()
        .unwrap()
        .contains("injected failure"));
    assert!(statuses(&run.outcome)
        .iter()
        .all(|(_, s)| *s == StepStatus::Cancelled));
    let calls = engine.calls();
    assert!(calls.iter().any(|c| c.starts_with("remove_network")));
    assert!(calls.iter().any(|c| c.starts_with("remove_volume")));
}

#[tokio::test]
async fn a_missing_image_errors_the_build_and_names_the_image() {
    let engine = FakeEngine::new().without_image("img");
    let run = run_fake(THREE_STEPS, &engine).await;
    assert_eq!(run.outcome.status, BuildStatus::Errored);
    let message = run.outcome.message.clone().unwrap();
    assert!(message.contains("image `img` is not present"), "{message}");
    assert!(
        message.contains("with `pull: never` it is never pulled"),
        "{message}"
    );
}

#[tokio::test]
async fn a_service_that_never_gets_ready_fails_the_build_with_its_last_lines() {
    let yaml = r#"
services:
  - {name: db, image: slipway/postgres:15, ready: {command: "pg_isready", timeout: 1s}}
steps:
  - {name: first, image: img, commands: ["true"]}
"#;
    let engine = FakeEngine::new().with(
        "db",
        Behaviour::ReadyAfter {
            attempts: usize::MAX,
        },
    );
    let options = RunOptions {
        ready_poll_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let run = run_with(yaml, &engine, &[], options, CancellationToken::new()).await;
    assert_eq!(run.outcome.status, BuildStatus::Failed);
    let message = run.outcome.message.clone().unwrap();
    assert!(
        message.starts_with("service `db` (slipway/postgres:15) not ready after 1s"),
        "{message}"
    );
    assert!(message.contains("service line 3"), "{message}");
    assert_eq!(
        statuses(&run.outcome),
        [with_status("first", StepStatus::Cancelled)]
    );
    assert!(
        engine
            .calls()
            .iter()
            .filter(|c| c.starts_with("exec"))
            .count()
            > 5
    );
}

#[tokio::test]
async fn a_step_timeout_kills_the_step_fails_the_build_and_failure_steps_still_run() {
    let yaml = r#"
steps:
  - {name: slow, image: img, commands: ["sleep 100"], timeout: 1s}
  - {name: on-failure, image: img, commands: ["true"], when: {status: [failure]}}
"#;
    let engine = FakeEngine::new().with(
        "slow",
        Behaviour::Hang {
            lines: vec!["tick".into()],
        },
    );
    let run = run_fake(yaml, &engine).await;
    assert_eq!(run.outcome.status, BuildStatus::Failed);
    assert_eq!(
        run.outcome.message.as_deref(),
        Some("step `slow` timed out after 1s")
    );
    assert_eq!(
        statuses(&run.outcome),
        [
            with_status("slow", StepStatus::TimedOut),
            passed("on-failure")
        ]
    );
    assert_eq!(run.recorder.lines("slow"), ["tick"]);
}

#[tokio::test]
async fn the_build_timeout_stops_the_running_step_and_cancels_the_rest() {
    let yaml = r#"
timeout: 1s
steps:
  - {name: slow, image: img, commands: ["sleep 100"]}
  - {name: on-failure, image: img, commands: ["true"], when: {status: [failure]}}
"#;
    let engine = FakeEngine::new().with("slow", Behaviour::Hang { lines: vec![] });
    let run = run_fake(yaml, &engine).await;
    assert_eq!(run.outcome.status, BuildStatus::Failed);
    assert_eq!(
        run.outcome.message.as_deref(),
        Some("the build timed out after 1s")
    );
    assert_eq!(
        statuses(&run.outcome),
        [
            with_status("slow", StepStatus::TimedOut),
            with_status("on-failure", StepStatus::Cancelled)
        ]
    );
}

#[tokio::test]
async fn cancelling_stops_the_build_and_still_tears_down() {
    let engine = FakeEngine::new().with("first", Behaviour::Hang { lines: vec![] });
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let run = run_with(THREE_STEPS, &engine, &[], RunOptions::default(), cancel).await;
    assert_eq!(run.outcome.status, BuildStatus::Cancelled);
    assert!(statuses(&run.outcome)
        .iter()
        .all(|(_, s)| *s == StepStatus::Cancelled));
}

#[tokio::test]
async fn a_panic_inside_the_run_errors_the_build_and_teardown_still_runs() {
    let engine = FakeEngine::new().with("second", Behaviour::PanicOnStart);
    let run = run_fake(THREE_STEPS, &engine).await;
    assert_eq!(run.outcome.status, BuildStatus::Errored);
    assert!(run
        .outcome
        .message
        .clone()
        .unwrap()
        .contains("asked to panic when starting second"));
    assert_eq!(statuses(&run.outcome)[0], passed("first"));
}

#[tokio::test]
async fn secrets_are_masked_everywhere_in_a_line_and_missing_ones_error_before_setup() {
    let yaml = r#"
steps:
  - {name: deploy, image: img, commands: ["deploy"], secrets: [TOKEN]}
"#;
    let engine =
        FakeEngine::new().with("deploy", exit(0, &["token=s3cret, again s3cret", "clean"]));
    let run = run_with(
        yaml,
        &engine,
        &[("TOKEN", "s3cret")],
        RunOptions::default(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        run.recorder.lines("deploy"),
        ["token=****, again ****", "clean"]
    );

    let engine = FakeEngine::new();
    let run = run_fake(yaml, &engine).await;
    assert_eq!(run.outcome.status, BuildStatus::Errored);
    assert_eq!(
        run.outcome.message.as_deref(),
        Some("secret `TOKEN` needed by step `deploy` was not supplied")
    );
    assert!(!engine.calls().iter().any(|c| c.starts_with("create")));
}

#[tokio::test]
async fn output_past_the_cap_is_cut_with_one_notice() {
    let yaml = "steps:\n  - {name: loud, image: img, commands: [\"yes\"]}\n";
    let lines: Vec<String> = (0..1000).map(|n| format!("line {n:04}")).collect();
    let engine = FakeEngine::new().with("loud", Behaviour::Exit { lines, code: 0 });
    let options = RunOptions {
        log_cap_bytes_per_step: 100,
        ..Default::default()
    };
    let run = run_with(yaml, &engine, &[], options, CancellationToken::new()).await;
    let seen = run.recorder.lines("loud");
    assert_eq!(seen.len(), 10 + 1, "{seen:?}");
    assert_eq!(seen[9], "line 0009");
    assert!(seen[10].contains("log cut at 100 bytes"));
    assert_eq!(run.outcome.status, BuildStatus::Passed);
}

#[tokio::test]
async fn steps_excluded_by_branch_or_event_never_start() {
    let yaml = r#"
steps:
  - {name: release, image: img, commands: ["true"], when: {branch: ["release/*"]}}
  - {name: tags, image: img, commands: ["true"], when: {event: [tag]}}
  - {name: main, image: img, commands: ["true"], when: {branch: [main], event: [push]}}
"#;
    let engine = FakeEngine::new();
    let run = run_fake(yaml, &engine).await;
    assert_eq!(
        statuses(&run.outcome),
        [
            with_status("release", StepStatus::Skipped),
            with_status("tags", StepStatus::Skipped),
            passed("main")
        ]
    );
    let reason = run.outcome.steps[0].result.reason.clone().unwrap();
    assert_eq!(reason, "branch `main` matches none of release/*");
    assert!(!engine
        .calls()
        .iter()
        .any(|c| c == "start release" || c == "start tags"));
}

#[tokio::test]
async fn reap_removes_everything_carrying_the_label_and_nothing_else() {
    let engine = FakeEngine::new();
    let ours = [("slipway.owner".to_owned(), "slipway".to_owned())].into();
    let theirs = [("owner".to_owned(), "someone".to_owned())].into();
    engine.leave_behind("crashed", &ours);
    engine.leave_behind("unrelated", &theirs);
    let reaped = reap(&engine, "slipway.owner=slipway").await.unwrap();
    assert_eq!(
        (reaped.containers, reaped.networks, reaped.volumes),
        (1, 1, 1)
    );
    let mut remaining = engine.remaining();
    remaining.sort();
    assert_eq!(remaining, ["unrelated", "unrelated-net", "unrelated-vol"]);
}

#[tokio::test]
async fn a_container_made_ahead_for_a_step_that_is_skipped_never_starts_nor_errors_the_build() {
    let yaml = r#"
steps:
  - {name: first, image: img, commands: ["exit 1"]}
  - {name: second, image: absent, commands: ["true"]}
  - {name: on-failure, image: img, commands: ["true"], when: {status: [failure]}}
"#;
    let engine = FakeEngine::new()
        .with("first", exit(1, &[]))
        .without_image("absent");
    let run = run_fake(yaml, &engine).await;
    assert_eq!(run.outcome.status, BuildStatus::Failed, "{:?}", run.outcome);
    assert_eq!(
        statuses(&run.outcome),
        [
            with_status("first", StepStatus::Failed),
            with_status("second", StepStatus::Skipped),
            passed("on-failure"),
        ]
    );
    let calls = engine.calls();
    // Made while `first` ran, with the image missing: that only matters if the step starts.
    assert!(calls.contains(&"create second".to_owned()), "{calls:?}");
    assert!(!calls.contains(&"start second".to_owned()), "{calls:?}");
}
