//! The crate's error type, grouped by what the caller does about it.

use std::path::PathBuf;

/// Result alias for every fallible call of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The package definition is wrong: the user fixes their `package:` section.
    #[error("package definition, {entry}: {reason}")]
    InvalidDefinition { entry: String, reason: String },

    /// A source path leaves the workspace root (by `..`, absolutely, or through a symlink).
    #[error("package definition, {entry}: source `{}` escapes the workspace root", path.display())]
    PathEscapesRoot { entry: String, path: PathBuf },

    /// The pool already holds a different file under this name: versions are never rebuilt.
    #[error("apt pool already holds a different `{filename}`; publish a new version instead")]
    PoolConflict { filename: String },

    /// The .deb handed to `publish` does not match the `PackageInfo` describing it.
    #[error("package `{filename}` does not match its description: {reason}")]
    PackageMismatch { filename: String, reason: String },

    /// `gpg` failed; its stderr is included (it never contains secret material).
    #[error("gpg {action} failed: {stderr}")]
    Gpg {
        action: &'static str,
        stderr: String,
    },

    /// The repository catalogue is unreadable: an operator must look at it.
    #[error("apt catalogue `{}` is corrupt: {source}", path.display())]
    CorruptCatalogue {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("{context} `{}`: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn invalid(entry: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidDefinition {
            entry: entry.into(),
            reason: reason.into(),
        }
    }
}

/// Attaches what was being done, and to which path, to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn io_context(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            context,
            path: path.into(),
            source,
        })
    }
}
