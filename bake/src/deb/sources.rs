//! Expands a package's file entries against the workspace: a file, a directory (every file
//! under it) or a glob (`dist/**`, `lib/*.so`), each matched file placed under `dest` at its
//! path relative to the entry's literal prefix, and none reached outside the workspace.

use std::fs::Metadata;
use std::path::{Component, Path, PathBuf};

use super::validate::WorkspaceRoot;
use super::PackageFile;
use crate::error::{Error, IoContext, Result};

/// Files one package may hold: a glob over a dependency tree must not grow without bound.
pub const MAX_PACKAGE_FILES: usize = 100_000;
/// Directories deeper than this below an entry's prefix are refused rather than walked.
const MAX_DEPTH: usize = 64;

/// One workspace file an entry selected, and where the package installs it.
pub(crate) struct Selected {
    /// The canonical path inside the workspace (a symlink's target, once checked).
    pub source: PathBuf,
    pub size: u64,
    pub dest: String,
}

/// How an entry is named in errors: its source and destination as written.
pub(crate) fn entry_name(file: &PackageFile) -> String {
    format!("file `{}` -> {}", file.source.display(), file.dest)
}

/// The files `file` selects, sorted by destination. A source that escapes the workspace, by
/// `..`, an absolute path or a symlink, is refused naming the entry, as is a source or glob
/// that selects nothing.
pub(crate) fn select(root: &WorkspaceRoot, file: &PackageFile) -> Result<Vec<Selected>> {
    let entry = entry_name(file);
    let escapes = |path: &Path| Error::PathEscapesRoot {
        entry: entry.clone(),
        path: path.to_path_buf(),
    };
    let Some(text) = file.source.to_str() else {
        return Err(Error::invalid(&entry, "source is not UTF-8"));
    };
    if file
        .source
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(escapes(&file.source));
    }
    let parts: Vec<&str> = text
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let literal = parts.iter().take_while(|p| !is_pattern(p)).count();
    let (prefix, pattern) = parts.split_at(literal);
    let base = root.canonical().join(prefix.join("/"));
    let base = match base.canonicalize() {
        Ok(base) => base,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::invalid(
                &entry,
                format!("`{}` is not in the workspace", prefix.join("/")),
            ))
        }
        Err(e) => return Err(e).io_context("reading package source", base),
    };
    if !base.starts_with(root.canonical()) {
        return Err(escapes(&file.source));
    }
    let metadata = base
        .metadata()
        .io_context("reading package source", &base)?;
    if pattern.is_empty() && metadata.is_file() {
        let dest = match file.dest.strip_suffix('/') {
            Some(dir) => format!("{dir}/{}", prefix.last().copied().unwrap_or_default()),
            None => file.dest.clone(),
        };
        return Ok(vec![Selected {
            source: base,
            size: metadata.len(),
            dest,
        }]);
    }
    if !metadata.is_dir() {
        return Err(Error::invalid(
            &entry,
            format!(
                "source `{}` is not a regular file or a directory",
                file.source.display()
            ),
        ));
    }
    let mut walk = Walk {
        root,
        entry: &entry,
        pattern,
        dest_dir: file.dest.trim_end_matches('/'),
        selected: Vec::new(),
    };
    walk.directory(&base, &mut Vec::new(), pattern.is_empty())?;
    if walk.selected.is_empty() {
        return Err(Error::invalid(
            &entry,
            format!(
                "`{}` matches no file in the workspace",
                file.source.display()
            ),
        ));
    }
    let mut selected = walk.selected;
    selected.sort_by(|a, b| a.dest.cmp(&b.dest));
    Ok(selected)
}

/// `*` and `?` make a path component a pattern; `**` alone spans any number of directories.
fn is_pattern(part: &str) -> bool {
    part.contains(['*', '?'])
}

/// A depth-first walk of one entry's prefix directory. Symlinks to files are followed once
/// checked to stay inside the workspace; symlinks to directories are not descended into, so
/// a walk always ends.
struct Walk<'a> {
    root: &'a WorkspaceRoot,
    entry: &'a str,
    pattern: &'a [&'a str],
    dest_dir: &'a str,
    selected: Vec<Selected>,
}

impl Walk<'_> {
    /// Visits `dir` (at `relative` below the prefix); `included` when the whole directory is
    /// selected (the entry names it, or a pattern matched it).
    fn directory(&mut self, dir: &Path, relative: &mut Vec<String>, included: bool) -> Result<()> {
        if relative.len() > MAX_DEPTH {
            return Err(Error::invalid(
                self.entry,
                format!(
                    "`{}` is nested more than {MAX_DEPTH} directories deep",
                    dir.display()
                ),
            ));
        }
        let listing = std::fs::read_dir(dir).io_context("listing package sources in", dir)?;
        let mut children = Vec::new();
        for child in listing {
            let child = child.io_context("listing package sources in", dir)?;
            let Ok(name) = child.file_name().into_string() else {
                return Err(Error::invalid(
                    self.entry,
                    format!("`{}` has a name that is not UTF-8", child.path().display()),
                ));
            };
            children.push(name);
        }
        children.sort();
        for name in children {
            let path = dir.join(&name);
            relative.push(name);
            let selected = included || matches(self.pattern, relative);
            let metadata = path
                .symlink_metadata()
                .io_context("reading package source", &path)?;
            if metadata.is_dir() {
                self.directory(&path, relative, selected)?;
            } else if selected {
                self.file(&path, metadata, relative)?;
            }
            relative.pop();
        }
        Ok(())
    }

    fn file(&mut self, path: &Path, metadata: Metadata, relative: &[String]) -> Result<()> {
        let (source, metadata) = if metadata.is_symlink() {
            let target = path
                .canonicalize()
                .io_context("reading package source", path)?;
            if !target.starts_with(self.root.canonical()) {
                return Err(Error::PathEscapesRoot {
                    entry: self.entry.to_owned(),
                    path: path
                        .strip_prefix(self.root.canonical())
                        .unwrap_or(path)
                        .to_path_buf(),
                });
            }
            let metadata = target
                .metadata()
                .io_context("reading package source", &target)?;
            (target, metadata)
        } else {
            (path.to_path_buf(), metadata)
        };
        // Sockets, pipes and devices a build left, and links to directories, are not content.
        if !metadata.is_file() {
            return Ok(());
        }
        if self.selected.len() == MAX_PACKAGE_FILES {
            return Err(Error::invalid(
                self.entry,
                format!("selects more than {MAX_PACKAGE_FILES} files"),
            ));
        }
        self.selected.push(Selected {
            source,
            size: metadata.len(),
            dest: format!("{}/{}", self.dest_dir, relative.join("/")),
        });
        Ok(())
    }
}

/// Whether the path components match the pattern's, `**` standing for zero or more. Dynamic
/// programming over (pattern, path) suffixes, so no pattern makes the walk exponential.
fn matches(pattern: &[&str], path: &[String]) -> bool {
    wildcard(
        pattern,
        path,
        |part| *part == "**",
        |part, name| component_matches(part.as_bytes(), name.as_bytes()),
    )
}

/// Shell-style matching of one name: `*` any run of bytes, `?` one byte.
fn component_matches(pattern: &[u8], name: &[u8]) -> bool {
    wildcard(pattern, name, |b| *b == b'*', |p, n| *p == b'?' || p == n)
}

/// `matched[i][j]`: whether `pattern[i..]` matches `subject[j..]`, where a `star` element
/// matches any run of subject elements and any other element one that `one` accepts.
fn wildcard<P, S>(
    pattern: &[P],
    subject: &[S],
    star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &S) -> bool,
) -> bool {
    let width = subject.len() + 1;
    let mut matched = vec![false; (pattern.len() + 1) * width];
    matched[pattern.len() * width + subject.len()] = true;
    for i in (0..pattern.len()).rev() {
        for j in (0..=subject.len()).rev() {
            matched[i * width + j] = if star(&pattern[i]) {
                matched[(i + 1) * width + j] || (j < subject.len() && matched[i * width + j + 1])
            } else {
                j < subject.len()
                    && one(&pattern[i], &subject[j])
                    && matched[(i + 1) * width + j + 1]
            };
        }
    }
    matched[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Vec<String> {
        text.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn globs_match_names_and_double_stars_span_directories() {
        assert!(matches(&["*.so"], &path("libgreet.so")));
        assert!(!matches(&["*.so"], &path("lib/libgreet.so")));
        assert!(matches(&["**"], &path("a/b/c")));
        assert!(matches(&["**", "*.so"], &path("libgreet.so")));
        assert!(matches(&["**", "*.so"], &path("a/b/libgreet.so")));
        assert!(matches(&["v?", "*"], &path("v1/x")));
        assert!(!matches(&["v?", "*"], &path("v10/x")));
        assert!(!matches(&["*.so"], &path("libgreet.so.1")));
    }
}
