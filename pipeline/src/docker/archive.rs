//! Packs a host directory into a tar archive, the form Docker's archive upload takes.

use std::path::Path;

/// A tar of the contents of `dir` (paths relative to it), symlinks kept as links.
pub fn tar_directory(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::tar_directory;

    #[test]
    fn archive_holds_the_directory_contents_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/hello.py"), "print('hi')\n").unwrap();
        let bytes = tar_directory(dir.path()).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| entry.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(paths.contains(&"app/hello.py".to_owned()), "{paths:?}");
        assert!(paths.iter().all(|p| !p.starts_with('/')), "{paths:?}");
    }
}
