//! The observer a server build runs with: it hands every event to a writer task that records
//! steps and log lines in the store (in batches) and forwards lines to live readers.

use std::collections::HashMap;
use std::sync::Mutex;

use slipway_pipeline::{BuildOutcome, LogLine, Observer, Plan, StepResult, StepStatus};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::queue::LiveEvent;
use crate::store::builds::LogLineRecord;
use crate::store::Store;

/// Lines written to the store in one statement, at most.
const BATCH: usize = 500;

enum Event {
    Started(String),
    Line(String, LogLine),
    Finished(String, StepResult),
}

pub struct StoreObserver {
    events: mpsc::UnboundedSender<Event>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl StoreObserver {
    /// Records the plan's steps as pending and starts the writer.
    pub async fn start(
        store: Store,
        build: Uuid,
        plan: &Plan,
        live: broadcast::Sender<LiveEvent>,
    ) -> StoreObserver {
        let positions: HashMap<String, i32> = plan
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| (step.name.clone(), i as i32))
            .collect();
        for (name, position) in &positions {
            if let Err(e) = store
                .record_step(build, *position, name, "pending", None)
                .await
            {
                tracing::error!(%build, error = %e, "cannot record a build's steps");
            }
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write(store, build, positions, receiver, live));
        StoreObserver {
            events,
            writer: Mutex::new(Some(writer)),
        }
    }

    /// Waits until everything observed so far is in the store.
    pub async fn finish(self) {
        let writer = self.writer.lock().expect("observer lock").take();
        drop(self.events);
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }

    fn send(&self, event: Event) {
        // The writer lives until `finish`; a send can only fail after it, when nothing is left to record.
        let _ = self.events.send(event);
    }
}

impl Observer for StoreObserver {
    fn step_started(&self, step: &str) {
        self.send(Event::Started(step.to_string()));
    }
    fn log_line(&self, step: &str, line: &LogLine) {
        self.send(Event::Line(step.to_string(), line.clone()));
    }
    fn step_finished(&self, step: &str, result: &StepResult) {
        self.send(Event::Finished(step.to_string(), result.clone()));
    }
    fn build_finished(&self, _outcome: &BuildOutcome) {}
}

async fn write(
    store: Store,
    build: Uuid,
    positions: HashMap<String, i32>,
    mut events: mpsc::UnboundedReceiver<Event>,
    live: broadcast::Sender<LiveEvent>,
) {
    let mut seq = 0i64;
    let mut pending: Vec<LogLineRecord> = Vec::new();
    while let Some(first) = events.recv().await {
        let mut next = Some(first);
        while let Some(event) = next.take() {
            match event {
                Event::Line(step, line) => {
                    seq += 1;
                    let record = LogLineRecord {
                        seq,
                        step,
                        at: line.at,
                        stream: match line.stream {
                            slipway_pipeline::engine::OutputStream::Stdout => "stdout".into(),
                            slipway_pipeline::engine::OutputStream::Stderr => "stderr".into(),
                        },
                        line: line.text,
                    };
                    let _ = live.send(LiveEvent::Line(record.clone()));
                    pending.push(record);
                }
                Event::Started(step) => {
                    flush(&store, build, &mut pending).await;
                    record(&store, build, &positions, &step, "running", None).await;
                }
                Event::Finished(step, result) => {
                    flush(&store, build, &mut pending).await;
                    record(
                        &store,
                        build,
                        &positions,
                        &step,
                        status_name(result.status),
                        result.exit_code.map(|c| c as i32),
                    )
                    .await;
                }
            }
            if pending.len() < BATCH {
                next = events.try_recv().ok();
            }
        }
        flush(&store, build, &mut pending).await;
    }
}

async fn flush(store: &Store, build: Uuid, pending: &mut Vec<LogLineRecord>) {
    if let Err(e) = store.append_log_lines(build, pending).await {
        tracing::error!(%build, error = %e, lines = pending.len(), "cannot store log lines");
    }
    pending.clear();
}

async fn record(
    store: &Store,
    build: Uuid,
    positions: &HashMap<String, i32>,
    step: &str,
    status: &str,
    exit_code: Option<i32>,
) {
    let Some(position) = positions.get(step) else {
        return;
    };
    if let Err(e) = store
        .record_step(build, *position, step, status, exit_code)
        .await
    {
        tracing::error!(%build, step, error = %e, "cannot record a step");
    }
}

fn status_name(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Passed => "passed",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
        StepStatus::Cancelled => "cancelled",
        StepStatus::TimedOut => "timed_out",
    }
}
