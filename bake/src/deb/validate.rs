//! Checks a package definition against Debian policy and the workspace boundary before building.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::{DataFile, PackageDefinition};
use crate::error::{Error, IoContext, Result};

/// Control fields: policy syntax for name, version and architecture; single-line fields
/// stay single-line so nothing can inject another field.
pub(crate) fn control_fields(definition: &PackageDefinition) -> Result<()> {
    identity(
        &definition.name,
        &definition.version,
        &definition.architecture,
    )?;
    let maintainer = &definition.maintainer;
    let address_ok = maintainer.split_once('<').is_some_and(|(name, rest)| {
        !name.trim().is_empty() && rest.ends_with('>') && rest.contains('@')
    });
    if !address_ok {
        return Err(Error::invalid(
            "maintainer",
            format!("`{maintainer}` is not `Full Name <email>`"),
        ));
    }
    single_line("maintainer", maintainer)?;
    single_line("description", &definition.description)?;
    if definition.description.trim().is_empty() {
        return Err(Error::invalid("description", "is empty"));
    }
    for dependency in &definition.depends {
        single_line("depends", dependency)?;
        if dependency.trim().is_empty() || dependency.contains(',') {
            return Err(Error::invalid(
                "depends",
                format!("`{dependency}` is not one dependency"),
            ));
        }
    }
    if definition
        .long_description
        .chars()
        .any(|c| c.is_control() && c != '\n')
    {
        return Err(Error::invalid(
            "long description",
            "contains control characters",
        ));
    }
    Ok(())
}

/// Name, version and architecture: they also form the package's file name and pool path.
pub(crate) fn identity(name: &str, version_: &str, arch: &str) -> Result<()> {
    package_name(name)?;
    version(version_)?;
    let arch_ok = arch.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && arch
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !arch_ok {
        return Err(Error::invalid(
            "architecture",
            format!("`{arch}` is not a Debian architecture"),
        ));
    }
    Ok(())
}

/// Policy 5.6.1: lower case letters, digits, `+ - .`; at least two characters; starts alphanumeric.
fn package_name(name: &str) -> Result<()> {
    let valid = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !valid {
        return Err(Error::invalid(
            "name",
            format!("`{name}` is not a Debian package name (a-z 0-9 + - ., 2+ characters)"),
        ));
    }
    Ok(())
}

/// Policy 5.6.12: `[epoch:]upstream_version[-debian_revision]`.
fn version(version: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid("version", format!("`{version}` {why}")));
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) => (Some(epoch), rest),
        None => (None, version),
    };
    if epoch.is_some_and(|e| e.is_empty() || !e.chars().all(|c| c.is_ascii_digit())) {
        return bad("has an epoch that is not a number");
    }
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((upstream, revision)) => (upstream, Some(revision)),
        None => (rest, None),
    };
    if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
        return bad("must start with a digit");
    }
    let upstream_ok = upstream.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || ".+~".contains(c)
            || (c == '-' && revision.is_some())
            || (c == ':' && epoch.is_some())
    });
    let revision_ok = revision.is_none_or(|r| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.~".contains(c))
    });
    if !upstream_ok || !revision_ok {
        return bad("has characters Debian versions do not allow");
    }
    Ok(())
}

pub(crate) fn owner_name(name: &str, entry: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 31
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !valid {
        return Err(Error::invalid(
            entry,
            format!("owner or group `{name}` is not a user name"),
        ));
    }
    Ok(())
}

/// An absolute destination without `.`/`..` components; returned without its leading `/`.
pub(crate) fn dest_path(dest: &str) -> Result<String> {
    let Some(relative) = dest.strip_prefix('/') else {
        return Err(Error::invalid(dest, "destination must be an absolute path"));
    };
    let parts: Vec<&str> = relative.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(Error::invalid(
            dest,
            "destination must not contain `..`, `.` or empty parts",
        ));
    }
    if dest.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            dest,
            "destination contains control characters",
        ));
    }
    Ok(relative.to_string())
}

/// A path cannot be both a file and the parent directory of another file.
pub(crate) fn no_file_is_a_directory(files: &BTreeMap<String, DataFile>) -> Result<()> {
    match super::archive::directories(files)
        .into_iter()
        .find(|dir| files.contains_key(dir))
    {
        Some(dir) => Err(Error::invalid(
            format!("/{dir}"),
            "is a file and also the directory of other files",
        )),
        None => Ok(()),
    }
}

pub(crate) fn conffiles(
    definition: &PackageDefinition,
    files: &BTreeMap<String, DataFile>,
) -> Result<()> {
    for conffile in &definition.conffiles {
        let key = dest_path(conffile)?;
        if !files.contains_key(&key) {
            return Err(Error::invalid(
                conffile,
                "conffile is not one of the package's files",
            ));
        }
    }
    Ok(())
}

fn single_line(entry: &str, value: &str) -> Result<()> {
    if value.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            entry,
            format!("`{}` must be a single line", value.escape_debug()),
        ));
    }
    Ok(())
}

/// The canonical workspace root; every source must resolve inside it.
pub(crate) struct WorkspaceRoot {
    canonical: PathBuf,
}

impl WorkspaceRoot {
    pub(crate) fn new(root: &Path) -> Result<WorkspaceRoot> {
        let canonical = root
            .canonicalize()
            .io_context("opening workspace root", root)?;
        Ok(WorkspaceRoot { canonical })
    }

    pub(crate) fn canonical(&self) -> &Path {
        &self.canonical
    }

    /// The canonical path and size of the regular file `source` (relative to the root),
    /// naming `entry` in any error.
    pub(crate) fn resolve(&self, source: &Path, entry: &str) -> Result<(PathBuf, u64)> {
        let escapes = || Error::PathEscapesRoot {
            entry: entry.to_string(),
            path: source.to_path_buf(),
        };
        if source
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(escapes());
        }
        let joined = self.canonical.join(source);
        let resolved = joined
            .canonicalize()
            .io_context("reading package source", &joined)?;
        if !resolved.starts_with(&self.canonical) {
            return Err(escapes());
        }
        let metadata = resolved
            .metadata()
            .io_context("reading package source", &resolved)?;
        if !metadata.is_file() {
            return Err(Error::invalid(
                entry,
                format!("source `{}` is not a regular file", source.display()),
            ));
        }
        Ok((resolved, metadata.len()))
    }

    /// Reads the small file `source` (a maintainer script) whole, refusing one over `limit` bytes.
    pub(crate) fn read_small(&self, source: &Path, entry: &str, limit: u64) -> Result<Vec<u8>> {
        let (resolved, size) = self.resolve(source, entry)?;
        if size > limit {
            return Err(Error::invalid(
                entry,
                format!(
                    "source `{}` is {size} bytes; at most {limit} are allowed",
                    source.display()
                ),
            ));
        }
        let mut contents = Vec::new();
        std::fs::File::open(&resolved)
            .and_then(|file| file.take(limit).read_to_end(&mut contents))
            .io_context("reading package source", &resolved)?;
        Ok(contents)
    }
}
