//! Runs a build's steps along their dependency graph: each step starts once every step it
//! depends on has finished (a detached one: has started), so independent steps run at once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::lanes::Lanes;
use super::steps::{self, Running, StoppedBeforeStart};
use super::{Build, Halt, StepResult, StepStatus};
use crate::engine::{EngineError, Staged};
use crate::plan::StepPlan;
use crate::spec::{PullPolicy, StatusCondition};

/// Where a step is in its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Starting,
    Running,
    Done,
}

/// What a step's future reports back to the scheduler.
enum Progress<'a> {
    /// A step's container was staged ahead of its start.
    Created(usize, Result<Staged<'a>, EngineError>),
    Started(
        usize,
        Result<Result<Running, StoppedBeforeStart>, EngineError>,
    ),
    Finished(usize, Result<(StepResult, Option<Halt>), EngineError>),
    /// A finished step's container is gone (removed while the next steps run).
    Removed,
}

type Task<'a> = Pin<Box<dyn Future<Output = Progress<'a>> + Send + 'a>>;

/// Runs the steps and fills `results` (plan order) for every step it decided; a step left
/// `None` was never reached. Returns why the build stopped or failed, if it did.
pub(super) async fn run_steps(
    build: &Build<'_>,
    results: &mut [Option<StepResult>],
) -> Option<Halt> {
    let mut graph = Graph::new(&build.plan.steps);
    let end_of_build = CancellationToken::new();
    let mut tasks: FuturesUnordered<Task<'_>> = FuturesUnordered::new();
    let mut first_failure: Option<String> = None;
    let mut halt: Option<Halt> = None;
    let mut ahead = Ahead::default();
    loop {
        while halt.is_none() {
            let Some(index) = graph.next_ready() else {
                break;
            };
            let step = &graph.steps[index];
            match graph.decide(index) {
                Some(result) => {
                    graph.finish(index, &result);
                    lanes(build).release(index);
                    // One still being made is removed when it is (see `Progress::Created`).
                    if ahead.created.remove(&index).is_some() {
                        tasks.push(remove(build, step));
                    }
                    build.observer.step_finished(&step.name, &result).await;
                    results[index] = Some(result);
                }
                None => {
                    graph.phase[index] = Phase::Starting;
                    // A container still being made ahead is started once it exists.
                    if ahead.creating != Some(index) {
                        let created = ahead.created.remove(&index);
                        tasks.push(start(build, step, index, created, &mut ahead));
                    }
                }
            }
        }
        // The next step's container is staged while the running ones run: opening its gate
        // is then all that stands between one step's end and the next one's first line.
        if halt.is_none() && ahead.creating.is_none() && ahead.created.is_empty() {
            if let Some(index) = graph.next_to_create() {
                let step = &graph.steps[index];
                ahead.creating = Some(index);
                let lane =
                    (!step.detach).then(|| lanes(build).reserve(index, &graph.depends_on[index]));
                if let Some(lane) = &lane {
                    ahead.lanes.insert(index, lane.index);
                }
                tasks.push(Box::pin(async move {
                    Progress::Created(index, steps::stage_step(build, step, lane.as_ref()).await)
                }));
            }
        }
        if halt.is_some() || graph.only_detached_left() {
            end_of_build.cancel();
        }
        let Some(progress) = tasks.next().await else {
            break;
        };
        let (index, ended) = match progress {
            Progress::Removed => continue,
            Progress::Created(index, created) => {
                ahead.creating = None;
                let step = &graph.steps[index];
                match graph.phase[index] {
                    Phase::Starting => {
                        tasks.push(start(build, step, index, Some(created), &mut ahead))
                    }
                    Phase::Waiting => {
                        ahead.created.insert(index, created);
                    }
                    Phase::Running | Phase::Done => tasks.push(remove(build, step)),
                }
                continue;
            }
            Progress::Started(index, Ok(Ok(running))) => {
                let step = &graph.steps[index];
                graph.phase[index] = Phase::Running;
                let end_of_build = &end_of_build;
                tasks.push(Box::pin(async move {
                    let ended = steps::finish_step(build, step, running, end_of_build).await;
                    Progress::Finished(index, ended)
                }));
                continue;
            }
            Progress::Started(index, Ok(Err((result, stopped)))) => {
                (index, Ok((result, Some(stopped))))
            }
            Progress::Started(index, Err(error)) => (index, Err(error)),
            Progress::Finished(index, ended) => (index, ended),
        };
        let step = &graph.steps[index];
        let result = match ended {
            Ok((result, step_halt)) => {
                if halt.is_none() {
                    halt = step_halt;
                }
                result
            }
            Err(error) => {
                // The engine failed: steps still running are stopped by teardown.
                tasks = FuturesUnordered::new();
                halt = Some(Halt::Errored(error.to_string()));
                StepResult::not_run(StepStatus::Cancelled, error.to_string())
            }
        };
        if first_failure.is_none() && !step.detach {
            first_failure = failure_message(&step.name, &result);
        }
        graph.finish(index, &result);
        lanes(build).release(index);
        build.observer.step_finished(&step.name, &result).await;
        let exited = result.exit_code.is_some();
        results[index] = Some(result);
        if halt.is_none() && exited {
            tasks.push(remove(build, step));
        }
    }
    halt.or(first_failure.map(Halt::Failed))
}

/// The container staged ahead of its step's start, at most one at a time.
#[derive(Default)]
struct Ahead<'a> {
    /// The step whose container is being made.
    creating: Option<usize>,
    /// Staged and not started yet (or the error staging it, reported if the step starts).
    created: HashMap<usize, Result<Staged<'a>, EngineError>>,
    /// The lane each step staged ahead was staged in.
    lanes: HashMap<usize, usize>,
}

/// The build's lanes, for a decision that does not wait.
fn lanes<'b>(build: &'b Build<'_>) -> std::sync::MutexGuard<'b, Lanes> {
    build
        .lanes
        .lock()
        .expect("the lanes' lock is never held across a panic")
}

/// Starts `step` in a lane (the one it was staged in if still free), with the container
/// `created` ahead if any; one staged in a lane now taken is staged again.
fn start<'a>(
    build: &'a Build<'a>,
    step: &'a StepPlan,
    index: usize,
    created: Option<Result<Staged<'a>, EngineError>>,
    ahead: &mut Ahead<'a>,
) -> Task<'a> {
    let staged_in = ahead.lanes.remove(&index);
    let lane = (!step.detach).then(|| lanes(build).claim(index, staged_in));
    let moved = lane
        .as_ref()
        .is_some_and(|lane| Some(lane.index) != staged_in);
    Box::pin(async move {
        let created = match created {
            Some(Ok(_)) if moved => {
                // Teardown removes it again if this fails.
                let _ = build.engine.remove_container(&step.container).await;
                None
            }
            created => created,
        };
        Progress::Started(index, steps::start_step(build, step, lane, created).await)
    })
}

fn remove<'a>(build: &'a Build<'a>, step: &'a StepPlan) -> Task<'a> {
    Box::pin(async move {
        // Teardown removes it again if this fails, so the error can wait for it.
        let _ = build.engine.remove_container(&step.container).await;
        Progress::Removed
    })
}

/// The steps, what each depends on, and how far each has come.
struct Graph<'p> {
    steps: &'p [StepPlan],
    depends_on: Vec<Vec<usize>>,
    phase: Vec<Phase>,
    /// For each finished step: the failed step upstream of it (itself included), if any.
    failed_upstream: Vec<Option<usize>>,
}

impl<'p> Graph<'p> {
    fn new(steps: &'p [StepPlan]) -> Graph<'p> {
        let index: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, step)| (step.name.as_str(), i))
            .collect();
        // The spec was validated: every name is a step and the graph has no cycle.
        let depends_on = steps
            .iter()
            .map(|step| {
                step.depends_on
                    .iter()
                    .filter_map(|name| index.get(name.as_str()).copied())
                    .collect()
            })
            .collect();
        Graph {
            steps,
            depends_on,
            phase: vec![Phase::Waiting; steps.len()],
            failed_upstream: vec![None; steps.len()],
        }
    }

    /// The first waiting step (in file order) whose dependencies are out of the way.
    fn next_ready(&self) -> Option<usize> {
        (0..self.steps.len()).find(|&i| {
            self.phase[i] == Phase::Waiting
                && self.depends_on[i].iter().all(|&d| {
                    self.phase[d] == Phase::Done
                        || (self.steps[d].detach && self.phase[d] == Phase::Running)
                })
        })
    }

    /// The first waiting step (in file order) that the plan does not skip: the step most
    /// likely to start next, whose container can be made ahead. Not one whose image is pulled
    /// before every run: its container is made once the pull has followed the tag.
    fn next_to_create(&self) -> Option<usize> {
        (0..self.steps.len()).find(|&i| {
            self.phase[i] == Phase::Waiting
                && self.steps[i].skipped.is_none()
                && self.steps[i].pull != PullPolicy::Always
        })
    }

    /// The first failed step among what `index` depends on, directly or further up.
    fn failure_before(&self, index: usize) -> Option<usize> {
        self.depends_on[index]
            .iter()
            .filter_map(|&d| self.failed_upstream[d])
            .min()
    }

    /// The result of a step that does not run (excluded by `when`), or `None` to run it.
    fn decide(&self, index: usize) -> Option<StepResult> {
        let step = &self.steps[index];
        if let Some(reason) = &step.skipped {
            return Some(StepResult::not_run(StepStatus::Skipped, reason.clone()));
        }
        let failed = self.failure_before(index);
        let current = match failed {
            Some(_) => StatusCondition::Failure,
            None => StatusCondition::Success,
        };
        if step.run_on.contains(&current) {
            return None;
        }
        let reason = match failed {
            None => "runs only after a failure, and nothing it depends on failed".to_owned(),
            Some(failed) => format!(
                "`{}`, which this step waits for, failed",
                self.steps[failed].name
            ),
        };
        Some(StepResult::not_run(StepStatus::Skipped, reason))
    }

    /// Records how a step ended; a detached step's failure stays its own.
    fn finish(&mut self, index: usize, result: &StepResult) {
        self.phase[index] = Phase::Done;
        let failed = matches!(result.status, StepStatus::Failed | StepStatus::TimedOut);
        self.failed_upstream[index] = if failed && !self.steps[index].detach {
            Some(index)
        } else {
            self.failure_before(index)
        };
    }

    /// True once every step that is not detached is done: detached ones may then stop.
    fn only_detached_left(&self) -> bool {
        self.steps
            .iter()
            .zip(&self.phase)
            .all(|(step, phase)| step.detach || *phase == Phase::Done)
    }
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
