//! Makes a step's or service's image present before its container starts: a step's log shows
//! the pull, a service's goes to the server's log; a failed pull stops the build with the
//! engine's error, which names the image and the registry.

use chrono::Utc;
use futures::StreamExt;

use super::{Build, Halt, LogChunk, StepResult, StepStatus};
use crate::engine::{EngineError, OutputStream};
use crate::plan::{ServicePlan, StepPlan};

/// A progress line longer than this is cut (dockerd's messages are short; this bounds them).
const MAX_PULL_LINE_BYTES: usize = 1024;

/// Pulls the step's image as its policy says, writing progress to the step's log. When the
/// build is stopped meanwhile, returns the step's result and why the build stops.
pub(super) async fn step_image(
    build: &Build<'_>,
    step: &StepPlan,
) -> Result<Option<(StepResult, Halt)>, EngineError> {
    let mut progress = build.engine.pull_image(&step.image, step.pull);
    let pulled = async {
        while let Some(item) = progress.next().await {
            let line = match &item {
                Ok(line) => line.clone(),
                Err(error) => error.to_string(),
            };
            let chunk = LogChunk {
                at: Utc::now(),
                stream: OutputStream::Stderr,
                bytes: log_line(&line).into_bytes(),
            };
            build.observer.log_chunk(&step.name, chunk).await;
            item?;
        }
        Ok(())
    };
    tokio::select! {
        biased;
        halt = build.stop.interrupted() => Ok(Some(interrupted(halt))),
        pulled = pulled => pulled.map(|()| None),
    }
}

/// Pulls a service's image as its policy says; progress goes to the server's log.
pub(super) async fn service_image(build: &Build<'_>, service: &ServicePlan) -> Result<(), Halt> {
    let mut progress = build.engine.pull_image(&service.image, service.pull);
    let pulled = async {
        while let Some(line) = progress.next().await {
            tracing::info!(service = %service.name, "{}", log_line(&line?).trim_end());
        }
        Ok::<(), EngineError>(())
    };
    tokio::select! {
        biased;
        halt = build.stop.interrupted() => Err(halt),
        pulled = pulled => pulled.map_err(Halt::from),
    }
}

fn interrupted(halt: Halt) -> (StepResult, Halt) {
    let (status, reason) = match halt {
        Halt::BuildTimedOut => (StepStatus::TimedOut, "the build timed out"),
        _ => (StepStatus::Cancelled, "the build was cancelled"),
    };
    (StepResult::not_run(status, reason), halt)
}

/// One log line: marked as Slipway's, on one line, bounded.
fn log_line(text: &str) -> String {
    let mut line: String = text.replace(['\n', '\r'], " ");
    if line.len() > MAX_PULL_LINE_BYTES {
        let mut cut = MAX_PULL_LINE_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    format!("[slipway] {line}\n")
}
