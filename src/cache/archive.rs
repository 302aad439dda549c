//! A cache archive: the cached paths as a gzipped tar, made from the directory the build's
//! volume was exported into, and unpacked into a staging directory, bounded, before it is
//! merged into a build's workspace without replacing any file of the commit.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::{Component, Path};

use anyhow::Context;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

/// Entries one archive may hold (files, directories and links).
pub const MAX_ENTRIES: u64 = 1_000_000;

/// Packs the contents of `dir` into the gzipped tar `archive`; its size. Symlinks stay links.
pub fn pack(dir: &Path, archive: &Path) -> anyhow::Result<u64> {
    let file =
        File::create(archive).with_context(|| format!("cannot write {}", archive.display()))?;
    // Fast compression: a cache is written on every passing build, and read on each.
    let mut builder = tar::Builder::new(GzEncoder::new(BufWriter::new(file), Compression::fast()));
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    let file = builder.into_inner()?.finish()?;
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Unpacks the gzipped tar `archive` into the empty directory `dest`, keeping only entries
/// under one of `paths` (files, directories and symlinks; nothing lands outside `dest`).
/// Contents over `limit_bytes`, or more than [`MAX_ENTRIES`] entries, are an error. Which of
/// `paths` the archive held.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    paths: &[String],
    limit_bytes: u64,
) -> anyhow::Result<BTreeSet<String>> {
    let file = File::open(archive).with_context(|| format!("cannot read {}", archive.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(true);
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut found = BTreeSet::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        entries += 1;
        bytes += entry.header().size()?;
        if entries > MAX_ENTRIES {
            anyhow::bail!("the archive holds more than {MAX_ENTRIES} entries");
        }
        if bytes > limit_bytes {
            anyhow::bail!("the archive unpacks to more than the limit of {limit_bytes} bytes");
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            continue;
        }
        let path = entry.path()?.into_owned();
        // Entries not unpacked are read past by the next.
        if let Some(cached) = cached_path_of(&path, paths) {
            found.insert(cached.clone());
            entry.unpack_in(dest)?;
        }
    }
    Ok(found)
}

/// The one of `paths` the entry `path` (`./a/b` or `a/b`) is, or is under.
fn cached_path_of<'p>(path: &Path, paths: &'p [String]) -> Option<&'p String> {
    let parts: Option<Vec<&str>> = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect();
    let joined = parts?.join("/");
    paths.iter().find(|cached| {
        joined == **cached
            || joined
                .strip_prefix(cached.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Moves what `staged` holds into `workspace`, never replacing what is there: a file, link or
/// directory the workspace lacks is moved whole; into a directory both have, the same rule
/// applies entry by entry. How many entries were left because the workspace had them.
pub fn merge(staged: &Path, workspace: &Path) -> io::Result<u64> {
    let mut kept = 0;
    for entry in std::fs::read_dir(staged)? {
        let entry = entry?;
        let from = entry.path();
        let to = workspace.join(entry.file_name());
        match std::fs::symlink_metadata(&to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::rename(&from, &to)?,
            Err(e) => return Err(e),
            Ok(existing) if existing.is_dir() && entry.file_type()?.is_dir() => {
                kept += merge(&from, &to)?;
            }
            Ok(_) => kept += 1,
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_directory_unpacks_under_the_cached_paths_only_and_merges_without_replacing() {
        let scratch = tempfile::tempdir().unwrap();
        let exported = scratch.path().join("exported");
        std::fs::create_dir_all(exported.join("deps/lib")).unwrap();
        std::fs::create_dir_all(exported.join(".cache/pip")).unwrap();
        std::fs::write(exported.join("deps/lib/a.txt"), "cached a").unwrap();
        std::fs::write(exported.join("deps/kept.txt"), "cached").unwrap();
        std::fs::write(exported.join(".cache/pip/wheel"), "w").unwrap();
        std::fs::write(exported.join("stray.txt"), "not cached").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", exported.join("deps/link")).unwrap();
        let archive = scratch.path().join("a.tar.gz");
        assert!(pack(&exported, &archive).unwrap() > 0);

        let staged = scratch.path().join("staged");
        std::fs::create_dir(&staged).unwrap();
        let paths = ["deps".to_owned(), ".cache/pip".to_owned()];
        let found = unpack(&archive, &staged, &paths, 1 << 20).unwrap();
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [".cache/pip", "deps"]
        );
        assert!(!staged.join("stray.txt").exists());
        assert_eq!(
            std::fs::read_link(staged.join("deps/link")).unwrap(),
            Path::new("/etc/passwd")
        );

        let workspace = scratch.path().join("workspace");
        std::fs::create_dir_all(workspace.join("deps")).unwrap();
        std::fs::write(workspace.join("deps/kept.txt"), "the commit's").unwrap();
        let kept = merge(&staged, &workspace).unwrap();
        assert_eq!(kept, 1);
        assert_eq!(
            std::fs::read_to_string(workspace.join("deps/kept.txt")).unwrap(),
            "the commit's"
        );
        assert_eq!(
            std::fs::read_to_string(workspace.join("deps/lib/a.txt")).unwrap(),
            "cached a"
        );
        assert!(workspace.join(".cache/pip/wheel").exists());

        let small = scratch.path().join("small");
        std::fs::create_dir(&small).unwrap();
        let error = unpack(&archive, &small, &paths, 4).unwrap_err();
        assert!(error.to_string().contains("limit of 4 bytes"), "{error}");
    }

    #[test]
    fn entries_outside_the_cached_paths_never_count_as_inside() {
        let paths = ["deps".to_owned(), ".cache/pip".to_owned()];
        let of = |path: &str| cached_path_of(Path::new(path), &paths).map(String::as_str);
        assert_eq!(of("./deps"), Some("deps"));
        assert_eq!(of("deps/x/y"), Some("deps"));
        assert_eq!(of("./.cache/pip/w"), Some(".cache/pip"));
        for outside in ["./.cache", "depsx/y", "deps/../etc", "/deps/x", "."] {
            assert_eq!(of(outside), None, "{outside}");
        }
    }
}
