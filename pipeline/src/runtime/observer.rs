//! What a build reports while it runs: the observer seam and the result types it receives.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::OutputStream;

/// Receives a build's progress, from the task running the build. For each step, in order:
/// `step_started` (only for steps that run), `log_chunk`s, then exactly one `step_finished`
/// (also for skipped steps and steps the build never reached). Steps that run at the same
/// time (independent steps of a `depends_on` graph, detached steps) interleave their calls,
/// and may await them concurrently: the step name tells them apart. Finally
/// `build_finished` once, after teardown.
///
/// An implementation may make the build wait (a full channel to a slow store is the
/// backpressure that bounds memory), but must not block the thread: await instead.
#[async_trait::async_trait]
pub trait Observer: Send + Sync {
    async fn step_started(&self, step: &str);
    async fn log_chunk(&self, step: &str, chunk: LogChunk);
    async fn step_finished(&self, step: &str, result: &StepResult);
    async fn build_finished(&self, outcome: &BuildOutcome);
}

/// Whole lines of one stream of a step's output, secrets already masked. Every line ends
/// with `\n` (a line cut at [`crate::engine::MAX_LINE_BYTES`] too). The bytes are the
/// container's own: they may hold NUL or invalid UTF-8, which a reader shows as it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// When the first line arrived.
    pub at: DateTime<Utc>,
    pub stream: OutputStream,
    pub bytes: Vec<u8>,
}

impl LogChunk {
    /// The lines, without their newlines.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let body = self.bytes.strip_suffix(b"\n").unwrap_or(&self.bytes);
        body.split(|&byte| byte == b'\n')
            .take(if self.bytes.is_empty() { 0 } else { usize::MAX })
    }

    pub fn line_count(&self) -> usize {
        self.bytes.iter().filter(|&&byte| byte == b'\n').count()
    }
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
