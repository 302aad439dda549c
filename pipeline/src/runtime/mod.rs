//! Runs a compiled plan over an engine: setup, services, workspace, steps, and teardown that
//! always runs.

mod migrations;
mod observer;
mod output;
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
use crate::spec::StatusCondition;

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
    /// Applies the plan's `migrations:`; a plan with migrations errors without one.
    pub migrator: Option<MigratorHandle>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            log_cap_bytes_per_step: 4 * 1024 * 1024,
            ready_poll_interval: Duration::from_millis(500),
            migrator: None,
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
    };
    let mut results = Vec::new();
    let body = AssertUnwindSafe(execute(&build, workspace, &mut results))
        .catch_unwind()
        .await;
    let halt = match body {
        Ok(halt) => halt,
        Err(panic) => Some(Halt::Errored(format!(
            "the build runner panicked: {}",
            panic_message(panic.as_ref())
        ))),
    };
    for step in plan.steps.iter().skip(results.len()) {
        let result =
            StepResult::not_run(StepStatus::Cancelled, "the build stopped before this step");
        observer.step_finished(&step.name, &result).await;
        results.push(StepOutcome {
            name: step.name.clone(),
            result,
        });
    }
    let teardown_errors = teardown::teardown(plan, engine).await;
    let outcome = outcome(
        halt,
        results,
        started.elapsed(),
        teardown_errors,
        &build.stop,
    );
    tracing::info!(status = ?outcome.status, "Build finished.");
    observer.build_finished(&outcome).await;
    outcome
}

async fn execute(
    build: &Build<'_>,
    workspace: &Path,
    results: &mut Vec<StepOutcome>,
) -> Option<Halt> {
    let setup = async {
        check_secrets(build)?;
        let plan = build.plan;
        build
            .engine
            .create_network(&plan.network, &plan.labels)
            .await?;
        build
            .engine
            .create_volume(&plan.volume, &plan.labels)
            .await?;
        services::start_and_wait(build).await?;
        build
            .engine
            .copy_into_volume(&plan.volume, workspace, &plan.labels)
            .await?;
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
    run_steps(build, results).await
}

async fn run_steps(build: &Build<'_>, results: &mut Vec<StepOutcome>) -> Option<Halt> {
    let mut first_failure: Option<String> = None;
    for step in &build.plan.steps {
        let current = if first_failure.is_some() {
            StatusCondition::Failure
        } else {
            StatusCondition::Success
        };
        let result = if let Some(reason) = &step.skipped {
            StepResult::not_run(StepStatus::Skipped, reason.clone())
        } else if !step.run_on.contains(&current) {
            StepResult::not_run(StepStatus::Skipped, status_skip_reason(current))
        } else {
            match steps::run_step(build, step).await {
                Ok((result, None)) => result,
                Ok((result, Some(halt))) => {
                    build.observer.step_finished(&step.name, &result).await;
                    results.push(StepOutcome {
                        name: step.name.clone(),
                        result,
                    });
                    return Some(halt);
                }
                Err(error) => {
                    let result = StepResult::not_run(StepStatus::Cancelled, error.to_string());
                    build.observer.step_finished(&step.name, &result).await;
                    results.push(StepOutcome {
                        name: step.name.clone(),
                        result,
                    });
                    return Some(error.into());
                }
            }
        };
        if first_failure.is_none() {
            first_failure = failure_message(&step.name, &result);
        }
        build.observer.step_finished(&step.name, &result).await;
        results.push(StepOutcome {
            name: step.name.clone(),
            result,
        });
    }
    first_failure.map(Halt::Failed)
}

fn failure_message(step: &str, result: &StepResult) -> Option<String> {
    match (result.status, result.exit_code) {
        (StepStatus::Failed, Some(code)) => {
            Some(format!("step `{step}` failed with exit code {code}"))
        }
        (StepStatus::TimedOut, _) => Some(format!(
            "step `{step}` {}",
            result.reason.as_deref().unwrap_or("timed out")
        )),
        (StepStatus::Failed, None) => Some(format!("step `{step}` failed")),
        _ => None,
    }
}

fn status_skip_reason(current: StatusCondition) -> String {
    match current {
        StatusCondition::Success => "runs only after a failure, and nothing failed".to_owned(),
        StatusCondition::Failure => "an earlier step failed".to_owned(),
    }
}

fn check_secrets(build: &Build<'_>) -> Result<(), Halt> {
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
