//! Builds a Debian binary package natively and deterministically from a `PackageDefinition`.
//!
//! The same definition, workspace contents and `source_date_epoch` give a byte-identical .deb:
//! every timestamp is `source_date_epoch`, entries are sorted, owners default to root/root and
//! gzip carries no name or time.
//!
//! Memory stays flat whatever the package's size: sources are streamed into a compressed
//! `data.tar.gz` in a temporary file, then into the .deb on disk, hashed as it is written.

mod archive;
mod control;
mod inspect;
mod sources;
mod validate;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

pub(crate) use archive::gzip;
pub use inspect::inspect;
pub use sources::MAX_PACKAGE_FILES;
pub(crate) use validate::identity as validate_identity;

/// What goes into one .deb. Sources are relative to the workspace root passed to [`build`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageDefinition {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// `Full Name <email>`.
    pub maintainer: String,
    /// The one-line synopsis.
    pub description: String,
    /// The extended description; blank lines become ` .` paragraphs.
    pub long_description: String,
    pub depends: Vec<String>,
    pub files: Vec<PackageFile>,
    /// Absolute paths, each one of the package's files (normally under `/etc`).
    pub conffiles: Vec<String>,
    /// Installed as `/lib/systemd/system/<name>.service`.
    pub systemd_unit: Option<PathBuf>,
    pub maintainer_scripts: MaintainerScripts,
    /// Generated content, such as a VERSION file.
    pub extra_files: Vec<ExtraFile>,
    /// Every timestamp in the package (seconds since the epoch), as `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: u64,
}

/// One entry of the package's files. `source` is a file, a directory (every file under it)
/// or a glob whose components may hold `*` and `?`, and `**` for any number of directories
/// (`dist/**`, `lib/*.so`). A file lands at `dest` (or under it, when `dest` ends in `/`);
/// a directory or glob puts each selected file under `dest` at its path relative to the
/// source's literal prefix. `mode`, `owner` and `group` apply to every selected file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFile {
    pub source: PathBuf,
    pub dest: String,
    pub mode: u32,
    /// A user name, or a numeric id.
    pub owner: String,
    /// A group name, or a numeric id.
    pub group: String,
}

impl PackageFile {
    /// A root-owned file.
    pub fn new(source: impl Into<PathBuf>, dest: impl Into<String>, mode: u32) -> PackageFile {
        PackageFile {
            source: source.into(),
            dest: dest.into(),
            mode,
            owner: "root".into(),
            group: "root".into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintainerScripts {
    pub preinst: Option<PathBuf>,
    pub postinst: Option<PathBuf>,
    pub prerm: Option<PathBuf>,
    pub postrm: Option<PathBuf>,
}

/// A root-owned file whose bytes the caller generated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraFile {
    pub dest: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// What the apt repository and the release record need to know about a built .deb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Size of the .deb in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the .deb.
    pub sha256: String,
    /// `<name>_<version without epoch>_<architecture>.deb`.
    pub filename: String,
    /// The control paragraph, as in the package's `control` file.
    pub control: String,
}

/// A built .deb, on disk.
#[derive(Debug, Clone)]
pub struct DebPackage {
    /// `<out_dir>/<filename>`.
    pub path: PathBuf,
    pub info: PackageInfo,
}

/// The largest maintainer script accepted: they are read whole into `control.tar.gz`.
pub const MAINTAINER_SCRIPT_LIMIT: u64 = 1024 * 1024;

/// One regular file of `data.tar`, keyed by its path without the leading `/`.
pub(crate) struct DataFile {
    pub contents: DataContents,
    pub size: u64,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

/// Where a data file's bytes come from: generated here, or a workspace file read while writing.
pub(crate) enum DataContents {
    Generated(Vec<u8>),
    /// A canonical path inside the workspace root.
    Source(PathBuf),
}

/// Builds the .deb for `definition`, reading sources under `workspace_root`, and writes it as
/// `<out_dir>/<filename>` (replacing any file of that name). Temporary files go to `out_dir`
/// too, and nothing is left there when the build fails.
#[tracing::instrument(skip_all, fields(package = %definition.name, version = %definition.version), err(level = tracing::Level::WARN))]
pub fn build(
    definition: &PackageDefinition,
    workspace_root: &Path,
    out_dir: &Path,
) -> Result<DebPackage> {
    validate::control_fields(definition)?;
    let root = validate::WorkspaceRoot::new(workspace_root)?;
    let files = collect_data_files(definition, &root)?;
    validate::no_file_is_a_directory(&files)?;
    validate::conffiles(definition, &files)?;
    let scripts = maintainer_scripts(definition, &root)?;
    let control = control::control_paragraph(definition, &files);
    let epoch = definition.source_date_epoch;

    let (data, data_len, md5s) = write_data_tar(&files, epoch, out_dir)?;
    let control_tar = archive::control_tar(
        definition,
        &control,
        &control::md5sums(definition, &md5s),
        scripts,
    );
    let filename = deb_filename(
        &definition.name,
        &definition.version,
        &definition.architecture,
    );
    let path = out_dir.join(&filename);
    let (size, sha256) = write_deb(&path, &control_tar, data, data_len, epoch)?;
    let info = PackageInfo {
        name: definition.name.clone(),
        version: definition.version.clone(),
        architecture: definition.architecture.clone(),
        size,
        sha256,
        filename,
        control,
    };
    tracing::debug!(size = info.size, sha256 = %info.sha256, "built package");
    Ok(DebPackage { path, info })
}

/// `data.tar.gz` in an anonymous temporary file in `out_dir`, rewound; its length and the MD5
/// of each file by path.
fn write_data_tar(
    files: &BTreeMap<String, DataFile>,
    epoch: u64,
    out_dir: &Path,
) -> Result<(File, u64, BTreeMap<String, String>)> {
    let data =
        tempfile::tempfile_in(out_dir).io_context("creating a temporary file in", out_dir)?;
    let (data, md5s) = archive::write_data_tar(files, epoch, BufWriter::new(data))?;
    let mut data = data
        .into_inner()
        .map_err(|e| e.into_error())
        .io_context("writing data.tar.gz in", out_dir)?;
    let len = data
        .stream_position()
        .and_then(|len| data.rewind().map(|()| len))
        .io_context("reading data.tar.gz in", out_dir)?;
    Ok((data, len, md5s))
}

/// Writes the .deb to a temporary file beside `path`, then renames it to `path`, so `path` is
/// whole or absent; returns its size and SHA-256.
fn write_deb(
    path: &Path,
    control_tar: &[u8],
    data: File,
    data_len: u64,
    epoch: u64,
) -> Result<(u64, String)> {
    let dir = path.parent().expect("a package path has a directory");
    let mut output =
        tempfile::NamedTempFile::new_in(dir).io_context("creating a temporary file in", dir)?;
    let mut writer = BufWriter::new(output.as_file_mut());
    let (size, sha256) = archive::write_ar_deb(
        &mut writer,
        control_tar,
        BufReader::new(data),
        data_len,
        epoch,
    )
    .and_then(|written| writer.flush().map(|()| written))
    .io_context("writing package", path)?;
    drop(writer);
    output
        .persist(path)
        .map_err(|e| e.error)
        .io_context("writing package", path)?;
    Ok((size, sha256))
}

/// Lower-case hex MD5, which `md5sums` and apt indexes still carry next to SHA-256.
pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(<md5::Md5 as md5::Digest>::digest(bytes))
}

/// The pool file name Debian tools use: the epoch is left out.
pub fn deb_filename(name: &str, version: &str, architecture: &str) -> String {
    let version = version.split_once(':').map_or(version, |(_, rest)| rest);
    format!("{name}_{version}_{architecture}.deb")
}

fn collect_data_files(
    definition: &PackageDefinition,
    root: &validate::WorkspaceRoot,
) -> Result<BTreeMap<String, DataFile>> {
    let mut files = BTreeMap::new();
    for file in &definition.files {
        let entry = sources::entry_name(file);
        validate::owner_name(&file.owner, &entry)?;
        validate::owner_name(&file.group, &entry)?;
        for selected in sources::select(root, file)? {
            let data = DataFile {
                contents: DataContents::Source(selected.source),
                size: selected.size,
                mode: file.mode,
                owner: file.owner.clone(),
                group: file.group.clone(),
            };
            insert_file(&mut files, &selected.dest, data)?;
            if files.len() > MAX_PACKAGE_FILES {
                return Err(Error::invalid(
                    entry,
                    format!("the package would hold more than {MAX_PACKAGE_FILES} files"),
                ));
            }
        }
    }
    if let Some(unit) = &definition.systemd_unit {
        let dest = format!("/lib/systemd/system/{}.service", definition.name);
        let (source, size) = root.resolve(unit, &dest)?;
        let data = DataFile {
            contents: DataContents::Source(source),
            size,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
        };
        insert_file(&mut files, &dest, data)?;
    }
    for extra in &definition.extra_files {
        insert_file(
            &mut files,
            &extra.dest,
            generated_file(extra.contents.clone(), extra.mode),
        )?;
    }
    for (dest, contents) in control::default_docs(definition) {
        if !files.contains_key(dest.trim_start_matches('/')) {
            insert_file(&mut files, &dest, generated_file(contents, 0o644))?;
        }
    }
    Ok(files)
}

/// The maintainer scripts, read and checked before the long data pass so a bad one fails fast.
fn maintainer_scripts(
    definition: &PackageDefinition,
    root: &validate::WorkspaceRoot,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let scripts = &definition.maintainer_scripts;
    let mut read = Vec::new();
    for (name, source) in [
        ("preinst", &scripts.preinst),
        ("postinst", &scripts.postinst),
        ("prerm", &scripts.prerm),
        ("postrm", &scripts.postrm),
    ] {
        if let Some(source) = source {
            let script = root.read_small(source, name, MAINTAINER_SCRIPT_LIMIT)?;
            if !script.starts_with(b"#!") {
                return Err(Error::invalid(
                    name,
                    "maintainer script must start with `#!`",
                ));
            }
            read.push((name, script));
        }
    }
    Ok(read)
}

fn insert_file(files: &mut BTreeMap<String, DataFile>, dest: &str, file: DataFile) -> Result<()> {
    let key = validate::dest_path(dest)?;
    if files.insert(key, file).is_some() {
        return Err(Error::invalid(dest, "declared more than once"));
    }
    Ok(())
}

fn generated_file(contents: Vec<u8>, mode: u32) -> DataFile {
    DataFile {
        size: contents.len() as u64,
        contents: DataContents::Generated(contents),
        mode,
        owner: "root".into(),
        group: "root".into(),
    }
}
