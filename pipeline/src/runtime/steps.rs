//! Runs one step's container: the shell script, output forwarding, step timeout and cancel.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lanes::Lane;
use super::output::StepOutput;
use super::{Build, Halt, LogChunk, StepResult, StepStatus};
use crate::engine::{
    ContainerConfig, EngineError, NetworkAttachment, OutputChunks, OutputStream, Staged,
    VolumeMount,
};
use crate::plan::{Plan, StepPlan};

/// A step whose container runs, its output not read yet.
pub(super) struct Running {
    output: OutputChunks,
    started: Instant,
}

/// Stages `step`'s container in `lane` (none: on the network by itself), starting the lane
/// first if it is new: ready and attached to its output, its command held back.
pub(super) async fn stage_step<'a>(
    build: &Build<'a>,
    step: &StepPlan,
    lane: Option<&Lane>,
) -> Result<Staged<'a>, EngineError> {
    if let Some(lane) = lane.filter(|lane| lane.new) {
        let plan = build.plan;
        build
            .engine
            .start_lane(&lane.name, &plan.network, &plan.labels)
            .await?;
    }
    let lane = lane.map(|lane| lane.name.as_str());
    build
        .engine
        .stage(&step_container(build.plan, step, build.secrets, lane))
        .await
}

/// A step stopped with the build before its container started: its result and why.
pub(super) type StoppedBeforeStart = (StepResult, Halt);

/// Makes `step`'s image present as its pull policy says (the pull shows in the step's log),
/// then lets its container run the command: the one `staged` ahead of time (in `lane`), or
/// a new one.
pub(super) async fn start_step<'a>(
    build: &Build<'a>,
    step: &StepPlan,
    lane: Option<Lane>,
    staged: Option<Result<Staged<'a>, EngineError>>,
) -> Result<Result<Running, StoppedBeforeStart>, EngineError> {
    build.observer.step_started(&step.name).await;
    let started = Instant::now();
    let pulled = super::pull::step_image(build, step).await;
    if !matches!(pulled, Ok(None)) {
        if let Some(Ok(_)) = staged {
            // Teardown removes it again if this fails.
            let _ = build.engine.remove_container(&step.container).await;
        }
    }
    if let Some(stopped) = pulled? {
        return Ok(Err(stopped));
    }
    let staged = match staged {
        Some(Ok(staged)) => staged,
        // Staged ahead before its image was pulled: staged again now that it is present.
        Some(Err(_)) | None => stage_step(build, step, lane.as_ref()).await?,
    };
    staged.gate.open().await?;
    Ok(Ok(Running {
        output: staged.output,
        started,
    }))
}

/// Follows a started step to its end and returns its result, plus the reason the build must
/// stop if it must. `end_of_build` stops a detached step once the others are done.
#[tracing::instrument(skip_all, fields(build = %build.plan.build.build_id, step = %step.name), err)]
pub(super) async fn finish_step(
    build: &Build<'_>,
    step: &StepPlan,
    running: Running,
    end_of_build: &CancellationToken,
) -> Result<(StepResult, Option<Halt>), EngineError> {
    let engine = build.engine;
    let exited = async {
        let (code, ()) = tokio::join!(
            engine.wait_exit(&step.container),
            forward_output(build, step, running.output)
        );
        code
    };
    tokio::pin!(exited);
    let step_timeout = step.timeout_seconds.map(Duration::from_secs);
    let ended = tokio::select! {
        biased;
        halt = build.stop.interrupted() => Ended::Interrupted(halt),
        _ = sleep_or_forever(step_timeout) => Ended::StepTimedOut,
        _ = end_of_build.cancelled(), if step.detach => Ended::Stopped,
        code = &mut exited => Ended::Exited(code?),
    };
    let duration = running.started.elapsed();
    let (status, exit_code, reason, halt) = match ended {
        Ended::Exited(0) => (StepStatus::Passed, Some(0), None, None),
        Ended::Exited(code) => (StepStatus::Failed, Some(code), None, None),
        Ended::StepTimedOut => {
            let seconds = step_timeout.unwrap_or_default().as_secs();
            let reason = format!("timed out after {seconds}s");
            (StepStatus::TimedOut, None, Some(reason), None)
        }
        Ended::Stopped => {
            let reason = "detached: stopped when the other steps had finished".to_owned();
            (StepStatus::Cancelled, None, Some(reason), None)
        }
        Ended::Interrupted(Halt::BuildTimedOut) => {
            let reason = "the build timed out".to_owned();
            (
                StepStatus::TimedOut,
                None,
                Some(reason),
                Some(Halt::BuildTimedOut),
            )
        }
        Ended::Interrupted(halt) => {
            let reason = "the build was cancelled".to_owned();
            (StepStatus::Cancelled, None, Some(reason), Some(halt))
        }
    };
    if exit_code.is_none() {
        engine.remove_container(&step.container).await?;
        // The killed container's stream ends now: what it wrote up to here is kept.
        let _ = tokio::time::timeout(FLUSH_AFTER_KILL, exited).await;
    }
    let result = StepResult {
        status,
        exit_code,
        duration,
        reason,
    };
    Ok((result, halt))
}

/// How long the output of a killed step may take to drain before its result is reported.
const FLUSH_AFTER_KILL: Duration = Duration::from_secs(1);

enum Ended {
    Exited(i64),
    StepTimedOut,
    /// A detached step still running when the build's other steps had finished.
    Stopped,
    Interrupted(Halt),
}

async fn sleep_or_forever(timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => tokio::time::sleep(timeout).await,
        None => std::future::pending().await,
    }
}

/// Masks, caps and forwards the output in chunks as it arrives, at the speed the engine
/// delivers it. Once the cap is reached it stops reading: the engine then discards the rest,
/// so the container runs on unblocked and the step ends when it does.
async fn forward_output(build: &Build<'_>, step: &StepPlan, mut output: OutputChunks) {
    let mut pending = StepOutput::new(build.secrets, build.options.log_cap_bytes_per_step);
    let mut quiet_deadline = Instant::now();
    loop {
        let next = if pending.has_partial_chunk() {
            match tokio::time::timeout_at(quiet_deadline, output.next()).await {
                Ok(next) => next,
                // The output went quiet: readers see what came so far.
                Err(_) => {
                    send(build, step, pending.take_all()).await;
                    continue;
                }
            }
        } else {
            output.next().await
        };
        let chunk = match next {
            Some(Ok(chunk)) => chunk,
            Some(Err(error)) => {
                tracing::warn!(step = %step.name, %error, "Reading step output failed.");
                pending.notice(
                    OutputStream::Stderr,
                    "[slipway] reading this step's output failed: the rest of it is not kept",
                );
                break;
            }
            None => break,
        };
        let was_filling = pending.has_partial_chunk();
        pending.push(chunk.stream, &chunk.bytes);
        let ready = pending.take_ready();
        // A chunk begun by this frame waits at most QUIET_FLUSH from now.
        if !was_filling || !ready.is_empty() {
            quiet_deadline = Instant::now() + QUIET_FLUSH;
        }
        send(build, step, ready).await;
        if pending.is_cut() {
            break;
        }
    }
    drop(output);
    send(build, step, pending.finish()).await;
}

/// How long lines wait in a chunk that is not full before readers see them.
const QUIET_FLUSH: Duration = Duration::from_millis(200);

async fn send(build: &Build<'_>, step: &StepPlan, chunks: Vec<LogChunk>) {
    for chunk in chunks {
        build.observer.log_chunk(&step.name, chunk).await;
    }
}

/// The container of a step: `sh -e -c` of its commands, each echoed as `+ command` first (or
/// the image's own entrypoint when it has none), in `lane` when it has one.
pub fn step_container(
    plan: &Plan,
    step: &StepPlan,
    secrets: &std::collections::HashMap<String, String>,
    lane: Option<&str>,
) -> ContainerConfig {
    let mut env: BTreeMap<String, String> = step.env.clone();
    for name in &step.secrets {
        if let Some(value) = secrets.get(name) {
            env.insert(name.clone(), value.clone());
        }
    }
    for (variable, name) in &step.env_from_secrets {
        if let Some(value) = secrets.get(name) {
            env.insert(variable.clone(), value.clone());
        }
    }
    ContainerConfig {
        name: step.container.clone(),
        image: step.image.clone(),
        env,
        // A step without commands is a plugin: its image's entrypoint runs.
        entrypoint: (!step.commands.is_empty())
            .then(|| vec!["/bin/sh".to_owned(), "-e".to_owned(), "-c".to_owned()]),
        cmd: (!step.commands.is_empty()).then(|| vec![script(&step.commands)]),
        workdir: Some(plan.workdir.clone()),
        network: Some(NetworkAttachment {
            network: plan.network.clone(),
            alias: step.name.clone(),
            lane: lane.map(str::to_owned),
        }),
        mount: Some(VolumeMount {
            volume: plan.volume.clone(),
            target: plan.workdir.clone(),
        }),
        labels: plan.labels.clone(),
    }
}

/// The shell script of a step: each command is printed (`+ command`) and then run; with
/// `printf`, as `echo` in `sh` would expand backslash escapes in the command's text.
pub fn script(commands: &[String]) -> String {
    let mut script = String::new();
    for command in commands {
        script.push_str(&format!(
            "printf '%s\\n' {}\n{command}\n",
            shell_quote(&format!("+ {command}"))
        ));
    }
    script
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::script;

    #[test]
    fn script_echoes_each_command_before_running_it() {
        let commands = vec!["make test".to_owned(), "echo 'it''s'".to_owned()];
        assert_eq!(
            script(&commands),
            "printf '%s\\n' '+ make test'\nmake test\nprintf '%s\\n' '+ echo '\\''it'\\'''\\''s'\\'''\necho 'it''s'\n"
        );
    }
}
