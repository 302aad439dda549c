//! Runs Packer in its own process group, streams its output, and stops the whole group on a
//! timeout or a cancellation.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::error::BakeError;
use super::output::{parse_line, PackerEvent};
use super::BakeObserver;

/// How long Packer gets after SIGTERM to stop its container or instance before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Error lines kept per kind for the failure reason: the first ones say why; the observer
/// sees every line, so memory does not grow with a chatty failing bake.
const KEPT_ERRORS: usize = 50;

/// How one Packer run ended, with what it reported.
#[derive(Debug)]
pub(crate) struct PackerRun {
    pub ending: Ending,
    pub artifact_ids: Vec<String>,
    /// Why builds failed: `error` lines, else `ui,error` lines, else stderr.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

/// Kills the group if the run is abandoned (its future dropped) before Packer exited.
struct ProcessGroup {
    pgid: Option<Pid>,
}

impl ProcessGroup {
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            if let Err(error) = killpg(pgid, signal) {
                tracing::debug!(%pgid, ?signal, %error, "signalling packer's process group");
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// Runs `packer <args>` and feeds every human-readable line to `observer`.
pub(crate) async fn run_packer(
    packer: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    observer: &mut (dyn BakeObserver + Send),
    cancel: &CancellationToken,
) -> Result<PackerRun, BakeError> {
    let mut child = Command::new(packer)
        .args(args)
        .envs(env)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| spawn_error(packer, source))?;
    let mut group = ProcessGroup {
        pgid: child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw),
    };
    let mut stdout = child.stdout.take().map(|out| BufReader::new(out).lines());
    let mut stderr = child.stderr.take().map(|err| BufReader::new(err).lines());
    let mut collected = Collected::default();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    let mut stopping: Option<Ending> = None;
    let mut terminated = false;

    while stdout.is_some() || stderr.is_some() {
        tokio::select! {
            line = next_line(&mut stdout) => match line {
                Some(line) => collected.stdout_line(&line, observer),
                None => stdout = None,
            },
            line = next_line(&mut stderr) => match line {
                Some(line) => collected.stderr_line(line, observer),
                None => stderr = None,
            },
            () = &mut deadline, if stopping.is_none() => {
                observer.line(&format!("==> slipway: bake timed out after {timeout:?}, stopping packer"));
                stopping = Some(Ending::TimedOut);
            }
            () = cancel.cancelled(), if stopping.is_none() => {
                observer.line("==> slipway: bake cancelled, stopping packer");
                stopping = Some(Ending::Cancelled);
            }
            () = &mut grace => {
                group.signal(Signal::SIGKILL);
                break;
            }
        }
        if stopping.is_some() && !terminated {
            // Packer stops its container or instance on SIGTERM; SIGKILL follows after the grace.
            group.signal(Signal::SIGTERM);
            grace
                .as_mut()
                .reset(tokio::time::Instant::now() + STOP_GRACE);
            terminated = true;
        }
    }
    let status = child.wait().await.map_err(|source| BakeError::Spawn {
        program: packer.to_path_buf(),
        source,
    })?;
    // Packer has exited; whatever it started and left in its group goes with it.
    group.signal(Signal::SIGKILL);
    group.pgid = None;
    Ok(collected.into_run(stopping.unwrap_or(Ending::Exited(status))))
}

/// A missing binary is named as such: it is the one cause an operator fixes by installing.
pub(crate) fn spawn_error(packer: &Path, source: std::io::Error) -> BakeError {
    if source.kind() == std::io::ErrorKind::NotFound {
        BakeError::PackerMissing {
            program: packer.to_path_buf(),
        }
    } else {
        BakeError::Spawn {
            program: packer.to_path_buf(),
            source,
        }
    }
}

async fn next_line<R>(lines: &mut Option<tokio::io::Lines<R>>) -> Option<String>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    match lines {
        // A read error ends the stream like end of file: Packer's exit status still decides.
        Some(lines) => lines.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Appends `item` unless `KEPT_ERRORS` are kept already.
fn keep(kept: &mut Vec<String>, item: String) {
    if kept.len() < KEPT_ERRORS {
        kept.push(item);
    }
}

#[derive(Default)]
struct Collected {
    artifact_ids: Vec<String>,
    build_errors: Vec<String>,
    ui_errors: Vec<String>,
    stderr: Vec<String>,
}

impl Collected {
    fn stdout_line(&mut self, line: &str, observer: &mut (dyn BakeObserver + Send)) {
        match parse_line(line) {
            PackerEvent::Ui { error, text } => {
                for text_line in text.lines().filter(|l| !l.trim().is_empty()) {
                    observer.line(text_line);
                }
                if error {
                    keep(&mut self.ui_errors, text.trim().to_string());
                }
            }
            PackerEvent::ArtifactId { id, .. } => keep(&mut self.artifact_ids, id),
            PackerEvent::BuildError { message } => keep(&mut self.build_errors, message),
            PackerEvent::Plain(text) => observer.line(&text),
            PackerEvent::Other => {}
        }
    }

    fn stderr_line(&mut self, line: String, observer: &mut (dyn BakeObserver + Send)) {
        observer.line(&line);
        keep(&mut self.stderr, line);
    }

    fn into_run(self, ending: Ending) -> PackerRun {
        let errors = [self.build_errors, self.ui_errors, self.stderr]
            .into_iter()
            .find(|errors| !errors.is_empty())
            .unwrap_or_default();
        PackerRun {
            ending,
            artifact_ids: self.artifact_ids,
            errors,
        }
    }
}

/// Kills the process groups of Packer runs of the bake `bake_id` that are still alive: what a
/// server killed mid-bake left running (Packer runs in its own process group, which outlives
/// the server; its `-var bake_id=<id>` argument names the bake). Returns the process group
/// ids killed, after each is gone. For a server starting up, before it reaps the bake.
pub async fn stop_orphaned_packer(bake_id: &str) -> Vec<i32> {
    let wanted = format!("bake_id={bake_id}");
    let mut groups = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0);
        let is_packer = args
            .next()
            .is_some_and(|program| program.ends_with(b"packer"));
        if is_packer && args.any(|arg| arg == wanted.as_bytes()) {
            if let Ok(group) = nix::unistd::getpgid(Some(Pid::from_raw(pid))) {
                groups.insert(group.as_raw());
            }
        }
    }
    for &group in &groups {
        tracing::warn!(bake = %bake_id, pgid = group, "killing the Packer run a stopped server left");
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
    // Gone once no process of the group is left (its parent, dead, was the server).
    for _ in 0..100 {
        let alive = groups
            .iter()
            .any(|&group| killpg(Pid::from_raw(group), None).is_ok());
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    groups.into_iter().collect()
}
