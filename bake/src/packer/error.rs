//! Why a bake failed, grouped by what the caller does about it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// The request holds a value the template cannot carry: fix the configuration.
    #[error("bake request, {field}: {reason}")]
    InvalidRequest { field: &'static str, reason: String },

    /// `packer validate` refused the template with these variables.
    #[error("packer validate of `{}` ({source_name}) failed: {output}", template.display())]
    InvalidTemplate {
        template: PathBuf,
        source_name: &'static str,
        output: String,
    },

    /// Packer ran and the build failed; `reason` is Packer's own summary (such as
    /// "Error executing Ansible: Non-zero exit status"); the full log went to the observer.
    #[error("packer build of {artifact} failed: {reason}")]
    BuildFailed { artifact: String, reason: String },

    /// Packer exited successfully without naming the artifact it made.
    #[error("packer build of {artifact} reported no artifact id")]
    NoArtifact { artifact: String },

    #[error("packer build of {artifact} timed out after {after:?}")]
    TimedOut { artifact: String, after: Duration },

    #[error("packer build of {artifact} was cancelled")]
    Cancelled { artifact: String },

    /// The Packer binary is not there: install Packer or name where it is.
    #[error("Packer is not installed: `{}` was not found", program.display())]
    PackerMissing { program: PathBuf },

    /// Packer could not be run for another reason (permissions, resources).
    #[error("running `{}`: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },

    /// A request to dockerd the bake relies on (inspect, tag, cleanup) failed.
    #[error("docker {action} failed: {message}")]
    Docker {
        action: &'static str,
        message: String,
    },

    /// An EC2 call an AMI bake relies on (its security group, cleanup, retention) failed.
    #[error("EC2 {action} failed: {message}")]
    Aws {
        action: &'static str,
        message: String,
    },

    #[error("{context} `{}`: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}
