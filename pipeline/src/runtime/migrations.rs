//! The build's `migrations` step: after the services are ready and before the first step,
//! the caller's [`Migrator`] applies the application's migrations to the service's
//! database; the step's log says which ran. This crate knows nothing of PostgreSQL: the
//! root crate's migrator does the applying.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use tokio::time::Instant;

use super::observer::{LogChunk, StepResult, StepStatus};
use super::output::SecretMask;
use super::{Build, Halt};
use crate::engine::OutputStream;
use crate::spec::{MigrationsPlan, MIGRATIONS_STEP};

/// Applies a build's migrations to its service's database.
#[async_trait::async_trait]
pub trait Migrator: Send + Sync {
    /// Applies the migrations in `workspace`/`plan.dir` to the database of `plan.container`
    /// on `network`. Returns the log lines to show (which migrations ran), or, on failure,
    /// the lines so far and why.
    async fn migrate(
        &self,
        plan: &MigrationsPlan,
        network: &str,
        workspace: &Path,
    ) -> Result<Vec<String>, (Vec<String>, String)>;
}

/// The migrator a run uses; compared by identity so [`super::RunOptions`] stays comparable.
#[derive(Clone)]
pub struct MigratorHandle(pub Arc<dyn Migrator>);

impl fmt::Debug for MigratorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Migrator")
    }
}

impl PartialEq for MigratorHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MigratorHandle {}

/// Runs the `migrations` step when the plan has one; a failure fails the build.
pub(super) async fn run(build: &Build<'_>, workspace: &Path) -> Result<(), Halt> {
    let Some(plan) = &build.plan.migrations else {
        return Ok(());
    };
    let Some(migrator) = &build.options.migrator else {
        return Err(Halt::Errored(
            "the pipeline has `migrations:` but this runner cannot apply them".to_owned(),
        ));
    };
    build.observer.step_started(MIGRATIONS_STEP).await;
    let started = Instant::now();
    // A password from a secret is filled in only now; `check_secrets` saw it supplied.
    let mut plan = plan.clone();
    if let Some(name) = &plan.password_secret {
        plan.password = build.secrets.get(name).cloned().unwrap_or_default();
    }
    let result = migrator
        .0
        .migrate(&plan, &build.plan.network, workspace)
        .await;
    // What the applier says never shows a secret, the password included.
    let mask = |text: String| SecretMask::new(build.secrets).mask_text(&text);
    let (lines, failure) = match result {
        Ok(lines) => (lines.into_iter().map(mask).collect::<Vec<_>>(), None),
        Err((lines, why)) => (lines.into_iter().map(mask).collect(), Some(mask(why))),
    };
    let mut bytes: Vec<u8> = Vec::new();
    for line in lines.iter().chain(failure.iter()) {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    if !bytes.is_empty() {
        let chunk = LogChunk {
            at: Utc::now(),
            stream: if failure.is_some() {
                OutputStream::Stderr
            } else {
                OutputStream::Stdout
            },
            bytes,
        };
        build.observer.log_chunk(MIGRATIONS_STEP, chunk).await;
    }
    let result = StepResult {
        status: if failure.is_some() {
            StepStatus::Failed
        } else {
            StepStatus::Passed
        },
        exit_code: None,
        duration: started.elapsed(),
        reason: failure.clone(),
    };
    build.observer.step_finished(MIGRATIONS_STEP, &result).await;
    match failure {
        Some(why) => Err(Halt::Failed(format!(
            "step `{MIGRATIONS_STEP}` failed: {why}"
        ))),
        None => Ok(()),
    }
}
