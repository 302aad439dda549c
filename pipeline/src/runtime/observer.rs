//! What a build reports while it runs: the observer seam and the result types it receives.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::OutputStream;

/// Receives a build's progress. Calls come in order from the task running the build:
/// for each step `step_started` (only for steps that run), `log_line`s, then exactly one
/// `step_finished` (also for skipped steps and steps the build never reached); finally
/// `build_finished` once, after teardown. Implementations must not block for long: hand the
/// data to a channel or buffer.
pub trait Observer: Send + Sync {
    fn step_started(&self, step: &str);
    fn log_line(&self, step: &str, line: &LogLine);
    fn step_finished(&self, step: &str, result: &StepResult);
    fn build_finished(&self, outcome: &BuildOutcome);
}

/// One line of a step's output, secrets already masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub stream: OutputStream,
    pub text: String,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Passed,
    Failed,
    Skipped,
    Cancelled,
    TimedOut,
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub status: StepStatus,
    /// The container's exit code, when it exited by itself.
    pub exit_code: Option<i64>,
    pub duration: Duration,
    /// Why a step was skipped, cancelled or timed out.
    pub reason: Option<String>,
}

impl StepResult {
    pub fn not_run(status: StepStatus, reason: impl Into<String>) -> StepResult {
        StepResult {
            status,
            exit_code: None,
            duration: Duration::ZERO,
            reason: Some(reason.into()),
        }
    }
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    /// Every step that ran passed.
    Passed,
    /// A step failed or timed out, a service never got ready, or the build timed out.
    Failed,
    /// The infrastructure failed (engine unreachable, image missing, secret not supplied).
    Errored,
    /// The caller cancelled the build.
    Cancelled,
}

/// The outcome of a whole build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildOutcome {
    pub status: BuildStatus,
    /// What went wrong, for every status but `passed` with no failed step.
    pub message: Option<String>,
    pub steps: Vec<StepOutcome>,
    pub duration: Duration,
    /// Objects teardown could not remove (they carry the build's labels, so `reap` finds them).
    pub teardown_errors: Vec<String>,
}

/// A step's name and result, in plan order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub name: String,
    pub result: StepResult,
}
