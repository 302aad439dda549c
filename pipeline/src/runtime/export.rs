//! After the steps passed: the build's workspace volume copied out to the host for packaging,
//! before teardown removes it.

use std::path::PathBuf;

use super::{Build, Halt};

/// Where a passing build's workspace goes, and how large it may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceExport {
    /// An existing, empty host directory.
    pub dir: PathBuf,
    /// The largest archive of the workspace accepted; past it the build errors.
    pub limit_bytes: u64,
}

/// Exports the workspace when the build passed and asked for it; a failure (the limit, the
/// engine) errors the build, since what it produced cannot be packaged.
pub(super) async fn after_steps(build: &Build<'_>, halt: Option<Halt>) -> Option<Halt> {
    let (None, Some(export)) = (&halt, &build.options.export_workspace) else {
        return halt;
    };
    let plan = build.plan;
    let exported = tokio::select! {
        biased;
        exported = build.engine.export_volume(&plan.volume, &export.dir, export.limit_bytes, &plan.labels) => exported,
        halt = build.stop.interrupted() => return Some(halt),
    };
    match exported {
        Ok(size) => {
            tracing::debug!(bytes = size, "exported the workspace");
            None
        }
        Err(error) => Some(Halt::Errored(format!(
            "cannot export the workspace for packaging: {error}"
        ))),
    }
}
