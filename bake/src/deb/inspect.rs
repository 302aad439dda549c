//! Reads what a .deb says about itself, for a package built elsewhere (by a build agent) that
//! the server publishes: the archive must be the shape [`super::build`] writes (`debian-binary`
//! 2.0, then `control.tar.gz`, then a data member), and its control paragraph must name the
//! package, version and architecture.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use sha2::Digest;

use super::{deb_filename, PackageInfo};
use crate::error::{Error, IoContext, Result};

/// The largest `control.tar.gz` read, and the largest control paragraph in it.
const CONTROL_LIMIT: u64 = 4 * 1024 * 1024;

/// The [`PackageInfo`] of the .deb at `path`: its control paragraph's name, version and
/// architecture, its size and SHA-256. A file that is not a .deb of that shape is refused,
/// saying what is wrong.
pub fn inspect(path: &Path) -> Result<PackageInfo> {
    let filename = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bad = |reason: String| Error::PackageMismatch {
        filename: filename.clone(),
        reason,
    };
    let file = File::open(path).io_context("opening package", path)?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 8];
    read_or(&mut reader, &mut magic, path)?;
    if &magic != b"!<arch>\n" {
        return Err(bad("not an ar archive".into()));
    }
    let (name, size) =
        member_header(&mut reader, path)?.ok_or_else(|| bad("empty archive".into()))?;
    if name != "debian-binary" || size != 4 {
        return Err(bad(format!(
            "the first member is `{name}`, not debian-binary"
        )));
    }
    let mut version = [0u8; 4];
    read_or(&mut reader, &mut version, path)?;
    if &version != b"2.0\n" {
        return Err(bad("debian-binary is not 2.0".into()));
    }
    let (name, size) =
        member_header(&mut reader, path)?.ok_or_else(|| bad("no control member".into()))?;
    if name != "control.tar.gz" {
        return Err(bad(format!(
            "the second member is `{name}`, not control.tar.gz"
        )));
    }
    if size > CONTROL_LIMIT {
        return Err(bad(format!(
            "control.tar.gz is larger than {CONTROL_LIMIT} bytes"
        )));
    }
    let mut control_tar = Vec::new();
    (&mut reader)
        .take(size)
        .read_to_end(&mut control_tar)
        .io_context("reading package", path)?;
    let control = control_paragraph(&control_tar)
        .map_err(|e| bad(format!("control.tar.gz: {e}")))?
        .ok_or_else(|| bad("control.tar.gz holds no ./control".into()))?;
    if size % 2 == 1 {
        let mut pad = [0u8; 1];
        read_or(&mut reader, &mut pad, path)?;
    }
    match member_header(&mut reader, path)? {
        Some((name, _)) if name.starts_with("data.tar") => {}
        Some((name, _)) => return Err(bad(format!("the third member is `{name}`, not data.tar"))),
        None => return Err(bad("no data member".into())),
    }
    let field = |key: &str| {
        control.lines().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|value| value.trim().to_owned())
        })
    };
    let (Some(name), Some(version), Some(architecture)) =
        (field("Package"), field("Version"), field("Architecture"))
    else {
        return Err(bad(
            "the control paragraph lacks Package, Version or Architecture".into(),
        ));
    };
    let (size, sha256) = size_and_sha256(path)?;
    Ok(PackageInfo {
        filename: deb_filename(&name, &version, &architecture),
        name,
        version,
        architecture,
        size,
        sha256,
        control,
    })
}

fn read_or(reader: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<()> {
    reader.read_exact(buf).io_context("reading package", path)
}

/// The next ar member's name and size; `None` at the end of the archive.
fn member_header(reader: &mut impl Read, path: &Path) -> Result<Option<(String, u64)>> {
    let mut header = [0u8; 60];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e).io_context("reading package", path),
    }
    let text = String::from_utf8_lossy(&header);
    let name = text[..16].trim_end().trim_end_matches('/').to_owned();
    let size = text[48..58]
        .trim()
        .parse::<u64>()
        .map_err(|_| Error::PackageMismatch {
            filename: path.display().to_string(),
            reason: format!("member `{name}` has no valid size"),
        })?;
    Ok(Some((name, size)))
}

/// `./control` of a gzipped control tar, read bounded.
fn control_paragraph(control_tar_gz: &[u8]) -> io::Result<Option<String>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(control_tar_gz));
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?.into_owned();
        if path == Path::new("./control") || path == Path::new("control") {
            let mut text = String::new();
            entry.take(CONTROL_LIMIT).read_to_string(&mut text)?;
            return Ok(Some(text));
        }
    }
    Ok(None)
}

fn size_and_sha256(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).io_context("opening package", path)?;
    let mut hasher = sha2::Sha256::new();
    let size = io::copy(&mut file, &mut hasher).io_context("reading package", path)?;
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::{build, PackageDefinition, PackageFile};

    #[test]
    fn a_built_package_reads_back_as_built_and_anything_else_is_refused() {
        let workspace = tempfile::tempdir().unwrap();
        std::fs::write(workspace.path().join("hello"), b"#!/bin/sh\necho hi\n").unwrap();
        let definition = PackageDefinition {
            name: "hello".into(),
            version: "7".into(),
            architecture: "all".into(),
            maintainer: "Hello Team <hello@example.com>".into(),
            description: "says hello".into(),
            long_description: String::new(),
            depends: Vec::new(),
            files: vec![PackageFile::new("hello", "/usr/bin/hello", 0o755)],
            conffiles: Vec::new(),
            systemd_unit: None,
            maintainer_scripts: Default::default(),
            extra_files: Vec::new(),
            source_date_epoch: 1_700_000_000,
        };
        let out = tempfile::tempdir().unwrap();
        let built = build(&definition, workspace.path(), out.path()).unwrap();
        assert_eq!(inspect(&built.path).unwrap(), built.info);

        let text = out.path().join("not.deb");
        std::fs::write(&text, b"hello").unwrap();
        let refused = inspect(&text).unwrap_err().to_string();
        assert!(refused.contains("not.deb"), "{refused}");

        // Cut short inside the data member: the control member still reads, but not the file.
        let bytes = std::fs::read(&built.path).unwrap();
        let cut = out.path().join("cut.deb");
        std::fs::write(&cut, &bytes[..200]).unwrap();
        assert!(inspect(&cut).is_err());
    }
}
