//! The observer a build runs with: it hands every event through a bounded channel to a
//! writer task that records steps and log chunks through a [`BuildRecorder`] (the store, for
//! a server's build; the server that leased it, for an agent's), then forwards the recorded
//! chunks to live readers.

use std::collections::HashMap;
use std::sync::Arc;

use slipway_pipeline::engine::OutputStream;
use slipway_pipeline::spec;
use slipway_pipeline::{BuildOutcome, LogChunk, Observer, Plan, StepResult, StepStatus};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::queue::LiveEvent;
use crate::store::builds::LogChunkRecord;
use crate::store::Store;

/// Events waiting for the writer, at most: a build that outruns the store waits for it
/// (each chunk is at most about 64 KiB, so this bounds the memory in flight).
const CHANNEL_EVENTS: usize = 16;

/// Bytes of chunks written to the store in one statement, about.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// Where one attempt of a build records its steps (by position in the plan) and its log
/// chunks (numbered by the observer).
#[async_trait::async_trait]
pub trait BuildRecorder: Send + Sync + 'static {
    async fn record_step(
        &self,
        position: i32,
        name: &str,
        status: &str,
        exit_code: Option<i32>,
    ) -> anyhow::Result<()>;
    async fn append_log_chunks(&self, chunks: &[LogChunkRecord]) -> anyhow::Result<()>;
}

/// A server's build: recorded in the store directly.
pub struct StoreRecorder {
    pub store: Store,
    pub build: Uuid,
    pub attempt: i32,
}

#[async_trait::async_trait]
impl BuildRecorder for StoreRecorder {
    async fn record_step(
        &self,
        position: i32,
        name: &str,
        status: &str,
        exit_code: Option<i32>,
    ) -> anyhow::Result<()> {
        Ok(self
            .store
            .record_step(self.build, self.attempt, position, name, status, exit_code)
            .await?)
    }
    async fn append_log_chunks(&self, chunks: &[LogChunkRecord]) -> anyhow::Result<()> {
        Ok(self
            .store
            .append_log_chunks(self.build, self.attempt, chunks)
            .await?)
    }
}

/// The position of each step of `plan` in its build: the `cache-restore` and `migrations`
/// steps, when there are, run before the plan's steps, and `cache-save` after them.
pub fn step_positions(plan: &Plan) -> HashMap<String, i32> {
    let cached = |name: &str| plan.cache.as_ref().map(|_| name.to_owned());
    let migrations = plan
        .migrations
        .as_ref()
        .map(|_| slipway_pipeline::spec::MIGRATIONS_STEP.to_owned());
    cached(spec::CACHE_RESTORE_STEP)
        .into_iter()
        .chain(migrations)
        .chain(plan.steps.iter().map(|step| step.name.clone()))
        .chain(cached(spec::CACHE_SAVE_STEP))
        .enumerate()
        .map(|(i, name)| (name, i as i32))
        .collect()
}

enum Event {
    Started(String),
    Chunk(String, LogChunk),
    Finished(String, StepResult),
}

pub struct StoreObserver {
    events: mpsc::Sender<Event>,
    writer: JoinHandle<LogLoss>,
}

/// Log lines the store refused: the build's log is incomplete when there are any.
#[derive(Debug, Default)]
pub struct LogLoss {
    pub lines: u64,
}

impl StoreObserver {
    /// Records the plan's steps as pending and starts the writer; the log's lines are
    /// numbered from `first_line` on, and shown to `live` readers once recorded.
    pub async fn start(
        recorder: Arc<dyn BuildRecorder>,
        plan: &Plan,
        first_line: i64,
        live: Option<broadcast::Sender<LiveEvent>>,
    ) -> StoreObserver {
        let positions = step_positions(plan);
        for (name, position) in &positions {
            if let Err(e) = recorder.record_step(*position, name, "pending", None).await {
                tracing::error!(error = format!("{e:#}"), "cannot record a build's steps");
            }
        }
        let (events, receiver) = mpsc::channel(CHANNEL_EVENTS);
        let writer = Writer {
            recorder,
            positions,
            live,
            next_line: first_line,
            loss: LogLoss::default(),
        };
        StoreObserver {
            events,
            writer: tokio::spawn(writer.run(receiver)),
        }
    }

    /// Waits until everything observed is in the store; says what the store refused.
    pub async fn finish(self) -> LogLoss {
        drop(self.events);
        match self.writer.await {
            Ok(loss) => loss,
            Err(e) => {
                tracing::error!(error = %e, "the build log writer stopped");
                LogLoss { lines: 1 }
            }
        }
    }

    async fn send(&self, event: Event) {
        // The writer lives until `finish`; a send can only fail after it, when nothing is left to record.
        let _ = self.events.send(event).await;
    }
}

#[async_trait::async_trait]
impl Observer for StoreObserver {
    async fn step_started(&self, step: &str) {
        self.send(Event::Started(step.to_string())).await;
    }
    async fn log_chunk(&self, step: &str, chunk: LogChunk) {
        self.send(Event::Chunk(step.to_string(), chunk)).await;
    }
    async fn step_finished(&self, step: &str, result: &StepResult) {
        self.send(Event::Finished(step.to_string(), result.clone()))
            .await;
    }
    async fn build_finished(&self, _outcome: &BuildOutcome) {}
}

struct Writer {
    recorder: Arc<dyn BuildRecorder>,
    positions: HashMap<String, i32>,
    live: Option<broadcast::Sender<LiveEvent>>,
    next_line: i64,
    loss: LogLoss,
}

impl Writer {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) -> LogLoss {
        while let Some(event) = events.recv().await {
            let (step, chunk) = match event {
                Event::Chunk(step, chunk) => (step, chunk),
                other => {
                    self.record(other).await;
                    continue;
                }
            };
            // Chunks already waiting go in the same statement.
            let mut batch = vec![self.number(step, chunk)];
            let mut bytes = batch[0].data.len();
            let mut after = None;
            while bytes < BATCH_BYTES {
                match events.try_recv() {
                    Ok(Event::Chunk(step, chunk)) => {
                        bytes += chunk.bytes.len();
                        batch.push(self.number(step, chunk));
                    }
                    Ok(other) => {
                        after = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.store_chunks(batch).await;
            if let Some(event) = after {
                self.record(event).await;
            }
        }
        self.loss
    }

    fn number(&mut self, step: String, chunk: LogChunk) -> LogChunkRecord {
        let lines = chunk.line_count() as i32;
        let record = LogChunkRecord {
            first_line: self.next_line,
            lines,
            step,
            stream: match chunk.stream {
                OutputStream::Stdout => "stdout".into(),
                OutputStream::Stderr => "stderr".into(),
            },
            at: chunk.at,
            data: chunk.bytes,
        };
        self.next_line += i64::from(lines);
        record
    }

    /// Stores a batch (one retry: a brief outage should not cost lines), then shows it to
    /// live readers, so a reader that falls behind finds in the store all it missed.
    async fn store_chunks(&mut self, batch: Vec<LogChunkRecord>) {
        let mut stored = self.recorder.append_log_chunks(&batch).await;
        if stored.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            stored = self.recorder.append_log_chunks(&batch).await;
        }
        if let Err(e) = stored {
            let lines: u64 = batch.iter().map(|c| c.lines as u64).sum();
            tracing::error!(error = format!("{e:#}"), lines, "cannot store log lines");
            self.loss.lines += lines;
            return;
        }
        let Some(live) = &self.live else { return };
        for chunk in batch {
            // No live reader is no error.
            let _ = live.send(LiveEvent::Chunk(Arc::new(chunk)));
        }
    }

    async fn record(&self, event: Event) {
        let (step, status, exit_code) = match &event {
            Event::Started(step) => (step, "running", None),
            Event::Finished(step, result) => (
                step,
                status_name(result.status),
                result.exit_code.map(|c| c as i32),
            ),
            Event::Chunk(..) => return,
        };
        let Some(position) = self.positions.get(step) else {
            return;
        };
        if let Err(e) = self
            .recorder
            .record_step(*position, step, status, exit_code)
            .await
        {
            tracing::error!(step, error = format!("{e:#}"), "cannot record a step");
        }
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
