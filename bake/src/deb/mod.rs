//! Builds a Debian binary package natively and deterministically from a `PackageDefinition`.
//!
//! The same definition, workspace contents and `source_date_epoch` give a byte-identical .deb:
//! every timestamp is `source_date_epoch`, entries are sorted, owners default to root/root and
//! gzip carries no name or time.

mod archive;
mod control;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

pub(crate) use archive::gzip;
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFile {
    pub source: PathBuf,
    pub dest: String,
    pub mode: u32,
    pub owner: String,
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

/// A built .deb, in memory.
#[derive(Debug, Clone)]
pub struct DebPackage {
    pub bytes: Vec<u8>,
    pub info: PackageInfo,
}

impl DebPackage {
    /// Writes the .deb as `<dir>/<filename>` and returns that path.
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(&self.info.filename);
        std::fs::write(&path, &self.bytes).io_context("writing package", &path)?;
        Ok(path)
    }
}

/// One regular file of `data.tar`, keyed by its path without the leading `/`.
pub(crate) struct DataFile {
    pub contents: Vec<u8>,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

/// Builds the .deb for `definition`, reading sources under `workspace_root`.
#[tracing::instrument(skip_all, fields(package = %definition.name, version = %definition.version), err(level = tracing::Level::WARN))]
pub fn build(definition: &PackageDefinition, workspace_root: &Path) -> Result<DebPackage> {
    validate::control_fields(definition)?;
    let root = validate::WorkspaceRoot::new(workspace_root)?;
    let files = collect_data_files(definition, &root)?;
    validate::no_file_is_a_directory(&files)?;
    validate::conffiles(definition, &files)?;
    let control = control::control_paragraph(definition, &files);
    let control_tar = archive::control_tar(definition, &root, &control, &files)?;
    let data_tar = archive::data_tar(&files, definition.source_date_epoch);
    let bytes = archive::ar_deb(&control_tar, &data_tar, definition.source_date_epoch);
    let info = PackageInfo {
        name: definition.name.clone(),
        version: definition.version.clone(),
        architecture: definition.architecture.clone(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        filename: deb_filename(
            &definition.name,
            &definition.version,
            &definition.architecture,
        ),
        control,
    };
    tracing::debug!(size = info.size, sha256 = %info.sha256, "built package");
    Ok(DebPackage { bytes, info })
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
        validate::owner_name(&file.owner, &file.dest)?;
        validate::owner_name(&file.group, &file.dest)?;
        let data = DataFile {
            contents: root.read(&file.source, &file.dest)?,
            mode: file.mode,
            owner: file.owner.clone(),
            group: file.group.clone(),
        };
        insert_file(&mut files, &file.dest, data)?;
    }
    if let Some(unit) = &definition.systemd_unit {
        let dest = format!("/lib/systemd/system/{}.service", definition.name);
        insert_file(&mut files, &dest, root_file(root.read(unit, &dest)?, 0o644))?;
    }
    for extra in &definition.extra_files {
        insert_file(
            &mut files,
            &extra.dest,
            root_file(extra.contents.clone(), extra.mode),
        )?;
    }
    for (dest, contents) in control::default_docs(definition) {
        if !files.contains_key(dest.trim_start_matches('/')) {
            insert_file(&mut files, &dest, root_file(contents, 0o644))?;
        }
    }
    Ok(files)
}

fn insert_file(files: &mut BTreeMap<String, DataFile>, dest: &str, file: DataFile) -> Result<()> {
    let key = validate::dest_path(dest)?;
    if files.insert(key, file).is_some() {
        return Err(Error::invalid(dest, "declared more than once"));
    }
    Ok(())
}

fn root_file(contents: Vec<u8>, mode: u32) -> DataFile {
    DataFile {
        contents,
        mode,
        owner: "root".into(),
        group: "root".into(),
    }
}
