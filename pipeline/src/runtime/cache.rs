//! The build's cache steps: `cache-restore` unpacks a saved archive into the workspace before
//! it is copied into the build's volume, and `cache-save`, after every step passed, exports
//! the cached paths from the volume for the caller's [`BuildCache`] to keep. Neither ever
//! fails the build: a problem is a line of the step's log. Where archives live (a directory,
//! a bucket) is the caller's business.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use tokio::time::Instant;

use super::observer::{LogChunk, StepResult, StepStatus};
use super::output::SecretMask;
use super::{Build, Halt};
use crate::engine::{OutputStream, PathsExport};
use crate::spec::{CachePlan, CACHE_RESTORE_STEP, CACHE_SAVE_STEP};

/// What a restore or a save did, for the step's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// What happened (the key, what was restored or saved, how large).
    pub lines: Vec<String>,
    /// Why nothing (or not everything) was restored or saved, when something went wrong.
    pub problem: Option<String>,
}

impl CacheReport {
    pub fn problem(lines: Vec<String>, problem: impl Into<String>) -> CacheReport {
        CacheReport {
            lines,
            problem: Some(problem.into()),
        }
    }
}

/// Keeps one project's cache between its builds. One value serves one build: the key a
/// restore resolved (from the commit's files) is the key its save uses.
///
/// Call order: `restore` once, before the workspace is copied into the build's volume; then,
/// only when every step passed, `export_dir` and `save` once.
#[async_trait::async_trait]
pub trait BuildCache: Send + Sync {
    /// Resolves the keys for `branch` from the files in `workspace` (the commit's), and
    /// unpacks the archive saved under the key, or else the fallback key, into `workspace`,
    /// under `cache.paths` only and never over a file of the commit.
    async fn restore(&self, cache: &CachePlan, branch: &str, workspace: &Path) -> CacheReport;

    /// The largest archive of the cached paths a save takes.
    fn limit_bytes(&self) -> u64;

    /// An empty host directory for the paths exported from the build's volume.
    fn export_dir(&self) -> Result<PathBuf, String>;

    /// Keeps what `exported` holds (the paths as the steps left them; `missing` ones were
    /// not in the workspace) under the key the restore resolved.
    async fn save(&self, cache: &CachePlan, exported: &Path, missing: &[String]) -> CacheReport;
}

/// The cache a run uses; compared by identity so [`super::RunOptions`] stays comparable.
#[derive(Clone)]
pub struct CacheHandle(pub Arc<dyn BuildCache>);

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BuildCache")
    }
}

impl PartialEq for CacheHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CacheHandle {}

/// Which cache steps a build has finished, so none is left unreported however it ends.
#[derive(Default)]
pub(super) struct Reported {
    restore: AtomicBool,
    save: AtomicBool,
}

impl Reported {
    fn flag(&self, step: &str) -> &AtomicBool {
        if step == CACHE_RESTORE_STEP {
            &self.restore
        } else {
            &self.save
        }
    }
}

/// Finishes the cache steps the build never reached (it stopped before them, or panicked)
/// as cancelled.
pub(super) async fn report_unreached(build: &Build<'_>) {
    if build.plan.cache.is_none() {
        return;
    }
    for step in [CACHE_RESTORE_STEP, CACHE_SAVE_STEP] {
        finish_unreached(build, step).await;
    }
}

/// Finishes `step` as cancelled unless it was finished already.
async fn finish_unreached(build: &Build<'_>, step: &str) {
    if !build.cache_reported.flag(step).swap(true, Ordering::SeqCst) {
        let result =
            StepResult::not_run(StepStatus::Cancelled, "the build stopped before this step");
        build.observer.step_finished(step, &result).await;
    }
}

/// Runs `cache-restore` when the plan has a cache.
pub(super) async fn restore(build: &Build<'_>, workspace: &Path) {
    let Some(cache) = &build.plan.cache else {
        return;
    };
    let Some(handle) = &build.options.cache else {
        return not_run(build, CACHE_RESTORE_STEP, "this runner keeps no cache").await;
    };
    build.observer.step_started(CACHE_RESTORE_STEP).await;
    let started = Instant::now();
    let report = handle
        .0
        .restore(cache, &build.plan.build.branch, workspace)
        .await;
    finish(build, CACHE_RESTORE_STEP, report, started).await;
}

/// Runs `cache-save` after the steps: only when they passed (else the step is skipped).
/// Only a cancel or the build's deadline stops it, and then the build stops.
pub(super) async fn after_steps(build: &Build<'_>, halt: Option<Halt>) -> Option<Halt> {
    let Some(cache) = &build.plan.cache else {
        return halt;
    };
    // A build that stopped during its setup never restored.
    finish_unreached(build, CACHE_RESTORE_STEP).await;
    if halt.is_some() {
        not_run(
            build,
            CACHE_SAVE_STEP,
            "the build did not pass: nothing is saved",
        )
        .await;
        return halt;
    }
    let Some(handle) = &build.options.cache else {
        not_run(build, CACHE_SAVE_STEP, "this runner keeps no cache").await;
        return halt;
    };
    build.observer.step_started(CACHE_SAVE_STEP).await;
    let started = Instant::now();
    let report = tokio::select! {
        biased;
        report = save(build, cache, handle) => report,
        halt = build.stop.interrupted() => {
            let result = StepResult::not_run(StepStatus::Cancelled, "the build stopped during the save");
            build.cache_reported.flag(CACHE_SAVE_STEP).store(true, Ordering::SeqCst);
            build.observer.step_finished(CACHE_SAVE_STEP, &result).await;
            return Some(halt);
        }
    };
    finish(build, CACHE_SAVE_STEP, report, started).await;
    None
}

/// Exports the cached paths from the build's volume and hands them to the cache.
async fn save(build: &Build<'_>, cache: &CachePlan, handle: &CacheHandle) -> CacheReport {
    let plan = build.plan;
    let dir = match handle.0.export_dir() {
        Ok(dir) => dir,
        Err(why) => return CacheReport::problem(Vec::new(), format!("not saved: {why}")),
    };
    let exported = build
        .engine
        .export_paths(
            &plan.volume,
            &cache.paths,
            &dir,
            handle.0.limit_bytes(),
            &plan.labels,
        )
        .await;
    match exported {
        Ok(PathsExport { missing, .. }) if missing.len() == cache.paths.len() => {
            CacheReport::problem(
                Vec::new(),
                format!(
                    "not saved: the workspace holds none of {}",
                    cache.paths.join(", ")
                ),
            )
        }
        Ok(PathsExport { missing, .. }) => handle.0.save(cache, &dir, &missing).await,
        Err(error) => CacheReport::problem(Vec::new(), format!("not saved: {error}")),
    }
}

/// Logs `report` and finishes the step: passed, with the problem as its reason if any.
async fn finish(build: &Build<'_>, step: &str, report: CacheReport, started: Instant) {
    log(build, step, report.lines, OutputStream::Stdout).await;
    let reason = report.problem.map(|problem| format!("cache {problem}"));
    log(
        build,
        step,
        reason.iter().cloned().collect(),
        OutputStream::Stderr,
    )
    .await;
    let result = StepResult {
        status: StepStatus::Passed,
        exit_code: None,
        duration: started.elapsed(),
        reason,
    };
    build
        .cache_reported
        .flag(step)
        .store(true, Ordering::SeqCst);
    build.observer.step_finished(step, &result).await;
}

/// One chunk of `lines` in the step's log, secrets masked.
async fn log(build: &Build<'_>, step: &str, lines: Vec<String>, stream: OutputStream) {
    let mut bytes = Vec::new();
    for line in lines {
        let masked = SecretMask::new(build.secrets).mask_text(&line);
        bytes.extend_from_slice(masked.as_bytes());
        bytes.push(b'\n');
    }
    if !bytes.is_empty() {
        let chunk = LogChunk {
            at: Utc::now(),
            stream,
            bytes,
        };
        build.observer.log_chunk(step, chunk).await;
    }
}

async fn not_run(build: &Build<'_>, step: &str, reason: &str) {
    let result = StepResult::not_run(StepStatus::Skipped, reason);
    build
        .cache_reported
        .flag(step)
        .store(true, Ordering::SeqCst);
    build.observer.step_finished(step, &result).await;
}
