//! An observer that records what a build reported, for assertions.

use std::sync::Mutex;

use slipway_pipeline::runtime::StepOutcome;
use slipway_pipeline::{BuildOutcome, LogChunk, Observer, StepResult, StepStatus};

#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<String>>,
    lines: Mutex<Vec<(String, String)>>,
    finished: Mutex<Vec<BuildOutcome>>,
}

impl Recorder {
    /// `started <step>`, `finished <step> <status>` and `build <status>`, in order.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// The text of the lines a step logged.
    pub fn lines(&self, step: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|(name, _)| name == step)
            .map(|(_, text)| text.clone())
            .collect()
    }

    pub fn finished_count(&self) -> usize {
        self.finished.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl Observer for Recorder {
    async fn step_started(&self, step: &str) {
        self.events.lock().unwrap().push(format!("started {step}"));
    }

    async fn log_chunk(&self, step: &str, chunk: LogChunk) {
        let mut lines = self.lines.lock().unwrap();
        for line in chunk.lines() {
            let text = String::from_utf8_lossy(line).into_owned();
            lines.push((step.to_owned(), text));
        }
    }

    async fn step_finished(&self, step: &str, result: &StepResult) {
        let entry = format!("finished {step} {:?}", result.status);
        self.events.lock().unwrap().push(entry);
    }

    async fn build_finished(&self, outcome: &BuildOutcome) {
        let entry = format!("build {:?}", outcome.status);
        self.events.lock().unwrap().push(entry);
        self.finished.lock().unwrap().push(outcome.clone());
    }
}

/// The status of each step, by name, in plan order.
pub fn statuses(outcome: &BuildOutcome) -> Vec<(String, StepStatus)> {
    outcome
        .steps
        .iter()
        .map(|StepOutcome { name, result }| (name.clone(), result.status))
        .collect()
}
