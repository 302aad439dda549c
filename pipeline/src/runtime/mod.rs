//! Runs a compiled plan over an engine: setup, services, workspace, steps, and teardown that
//! always runs.

mod cache;
mod export;
mod lanes;
mod migrations;
mod observer;
mod output;
mod pull;
mod schedule;
mod services;
mod steps;
mod teardown;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineError};
use crate::plan::Plan;

pub use cache::{BuildCache, CacheHandle, CacheReport};
pub use export::WorkspaceExport;
pub use migrations::{Migrator, MigratorHandle};
pub use observer::{
    BuildOutcome, BuildStatus, LogChunk, Observer, StepOutcome, StepResult, StepStatus,
};
pub use output::MASK;
pub use teardown::{reap, Reaped};

/// Knobs of a run that are not part of the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Output of one step forwarded to the observer before it is cut.
    pub log_cap_bytes_per_step: u64,
    /// How often a service's readiness is probed.
    pub ready_poll_interval: Duration,
    /// Where to copy the workspace once every step passed (for packaging); `None` skips it.
    pub export_workspace: Option<WorkspaceExport>,
    /// Applies the plan's `migrations:`; a plan with migrations errors without one.
    pub migrator: Option<MigratorHandle>,
    /// Keeps the plan's `cache:`; without one its steps are skipped.
    pub cache: Option<CacheHandle>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            log_cap_bytes_per_step: 4 * 1024 * 1024,
            ready_poll_interval: Duration::from_millis(500),
            export_workspace: None,
            migrator: None,
            cache: None,
        }
    }
}

/// Why a build stopped before its last step.
#[derive(Debug)]
enum Halt {
    Failed(String),
    Errored(String),
    Cancelled,
    BuildTimedOut,
}

impl From<EngineError> for Halt {
    fn from(error: EngineError) -> Halt {
        Halt::Errored(error.to_string())
    }
}

/// Cancellation and the whole-build deadline, awaited at every wait point.
struct Stop {
    cancel: CancellationToken,
    deadline: Instant,
    timeout: Duration,
}

impl Stop {
    /// Resolves when the build must stop; never resolves otherwise.
    async fn interrupted(&self) -> Halt {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Halt::Cancelled,
            _ = tokio::time::sleep_until(self.deadline) => Halt::BuildTimedOut,
        }
    }
}

/// Everything a running build reads.
struct Build<'a> {
    plan: &'a Plan,
    engine: &'a dyn Engine,
    secrets: &'a HashMap<String, String>,
    observer: &'a dyn Observer,
    options: &'a RunOptions,
    stop: Stop,
    /// The lanes steps run in (never locked across an await).
    lanes: std::sync::Mutex<lanes::Lanes>,
    /// The cache steps finished so far.
    cache_reported: cache::Reported,
}

/// Runs `plan`: the workspace directory is copied into the build's volume, `secrets` fill the
/// steps' `secrets` by name. Teardown runs whatever happens (failure, timeout, cancel, a
/// panic inside the run); only dropping this future skips it, which `reap` then covers.
#[tracing::instrument(skip_all, fields(build = %plan.build.build_id, project = %plan.build.project))]
pub async fn run(
    plan: &Plan,
    engine: &dyn Engine,
    workspace: &Path,
    secrets: &HashMap<String, String>,
    observer: &dyn Observer,
    cancel: CancellationToken,
    options: &RunOptions,
) -> BuildOutcome {
    let started = Instant::now();
    let timeout = Duration::from_secs(plan.timeout_seconds);
    let build = Build {
        plan,
        engine,
        secrets,
        observer,
        options,
        stop: Stop {
            cancel,
            deadline: started + timeout,
            timeout,
        },
        lanes: std::sync::Mutex::new(lanes::Lanes::new(&plan.network)),
        cache_reported: cache::Reported::default(),
    };
    let mut results: Vec<Option<StepResult>> = vec![None; plan.steps.len()];
    let body = AssertUnwindSafe(async {
        let halt = execute(&build, workspace, &mut results).await;
        let halt = export::after_steps(&build, halt).await;
        cache::after_steps(&build, halt).await
    })
    .catch_unwind()
    .await;
    let halt = match body {
        Ok(halt) => halt,
        Err(panic) => Some(Halt::Errored(format!(
            "the build runner panicked: {}",
            panic_message(panic.as_ref())
        ))),
    };
    cache::report_unreached(&build).await;
    let mut steps = Vec::with_capacity(plan.steps.len());
    for (step, result) in plan.steps.iter().zip(results) {
        let result = match result {
            Some(result) => result,
            None => {
                let result = StepResult::not_run(
                    StepStatus::Cancelled,
                    "the build stopped before this step",
                );
                observer.step_finished(&step.name, &result).await;
                result
            }
        };
        steps.push(StepOutcome {
            name: step.name.clone(),
            result,
        });
    }
    let lanes = build.lanes.lock().map(|l| l.names()).unwrap_or_default();
    let teardown_errors = teardown::teardown(plan, engine, &lanes).await;
    let outcome = outcome(halt, steps, started.elapsed(), teardown_errors, &build.stop);
    tracing::info!(status = ?outcome.status, "Build finished.");
    observer.build_finished(&outcome).await;
    outcome
}

async fn execute(
    build: &Build<'_>,
    workspace: &Path,
    results: &mut [Option<StepResult>],
) -> Option<Halt> {
    let setup = async {
        check_secrets(build)?;
        let plan = build.plan;
        let engine = build.engine;
        // Independent setup overlaps: it is time every build pays before its first step.
        tokio::try_join!(
            engine.create_network(&plan.network, &plan.labels),
            engine.create_volume(&plan.volume, &plan.labels),
        )?;
        // The cache lands in the workspace before it goes into the volume.
        let copy = async {
            cache::restore(build, workspace).await;
            engine
                .copy_into_volume(&plan.volume, workspace, &plan.labels)
                .await
                .map_err(Halt::from)
        };
        // The first lane too: a step's container can then be staged in it at once.
        let first_lane = async {
            let runs_in_lane =
                |step: &crate::plan::StepPlan| !step.detach && step.skipped.is_none();
            if plan.steps.iter().any(runs_in_lane) {
                let lane = build.lanes.lock().expect("lanes").first();
                engine
                    .start_lane(&lane.name, &plan.network, &plan.labels)
                    .await?;
            }
            Ok::<(), Halt>(())
        };
        tokio::try_join!(services::start_and_wait(build), copy, first_lane)?;
        migrations::run(build, workspace).await?;
        Ok::<(), Halt>(())
    };
    let setup = tokio::select! {
        biased;
        done = setup => done,
        halt = build.stop.interrupted() => Err(halt),
    };
    if let Err(halt) = setup {
        return Some(halt);
    }
    schedule::run_steps(build, results).await
}

fn check_secrets(build: &Build<'_>) -> Result<(), Halt> {
    for service in &build.plan.services {
        if let Some((variable, missing)) = service
            .env_from_secrets
            .iter()
            .find(|(_, name)| !build.secrets.contains_key(*name))
        {
            return Err(Halt::Errored(format!(
                "secret `{missing}` needed by service `{}` (as `{variable}`) was not supplied",
                service.name
            )));
        }
    }
    for step in build
        .plan
        .steps
        .iter()
        .filter(|step| step.skipped.is_none())
    {
        if let Some(missing) = step
            .secrets
            .iter()
            .find(|name| !build.secrets.contains_key(*name))
        {
            return Err(Halt::Errored(format!(
                "secret `{missing}` needed by step `{}` was not supplied",
                step.name
            )));
        }
        if let Some((variable, missing)) = step
            .env_from_secrets
            .iter()
            .find(|(_, name)| !build.secrets.contains_key(*name))
        {
            return Err(Halt::Errored(format!(
                "secret `{missing}` needed by step `{}` (as `{variable}`) was not supplied",
                step.name
            )));
        }
    }
    Ok(())
}

fn outcome(
    halt: Option<Halt>,
    steps: Vec<StepOutcome>,
    duration: Duration,
    teardown_errors: Vec<String>,
    stop: &Stop,
) -> BuildOutcome {
    let (status, message) = match halt {
        None => (BuildStatus::Passed, None),
        Some(Halt::Failed(message)) => (BuildStatus::Failed, Some(message)),
        Some(Halt::Errored(message)) => (BuildStatus::Errored, Some(message)),
        Some(Halt::Cancelled) => (
            BuildStatus::Cancelled,
            Some("the build was cancelled".to_owned()),
        ),
        Some(Halt::BuildTimedOut) => (
            BuildStatus::Failed,
            Some(format!(
                "the build timed out after {}s",
                stop.timeout.as_secs()
            )),
        ),
    };
    BuildOutcome {
        status,
        message,
        steps,
        duration,
        teardown_errors,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
