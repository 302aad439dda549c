//! The byte-level containers of a .deb: an `ar` archive holding gzip-compressed tarballs.
//!
//! Everything here is deterministic: fixed timestamps, sorted entries, no gzip name or time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use flate2::{Compression, GzBuilder};
use tar::{EntryType, Header};

use super::validate::WorkspaceRoot;
use super::{control, DataFile, PackageDefinition};
use crate::error::Result;

/// Gzip with no file name and a zero timestamp (`gzip -n`); packages use `Compression::best()`.
pub(crate) fn gzip(bytes: &[u8], level: Compression) -> Vec<u8> {
    let mut encoder = GzBuilder::new().mtime(0).write(Vec::new(), level);
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// Every ancestor directory of every file (`usr`, `usr/bin`, ...), without the root.
pub(crate) fn directories(files: &BTreeMap<String, DataFile>) -> BTreeSet<String> {
    let mut directories = BTreeSet::new();
    for path in files.keys() {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            directories.insert(path[..end].to_string());
            end += 1;
        }
    }
    directories
}

/// `control.tar.gz`: control, md5sums, conffiles and maintainer scripts, sorted by name.
pub(crate) fn control_tar(
    definition: &PackageDefinition,
    root: &WorkspaceRoot,
    control_paragraph: &str,
    files: &BTreeMap<String, DataFile>,
) -> Result<Vec<u8>> {
    let mut members: BTreeMap<&str, (Vec<u8>, u32)> = BTreeMap::new();
    members.insert("control", (control_paragraph.as_bytes().to_vec(), 0o644));
    members.insert(
        "md5sums",
        (control::md5sums(definition, files).into_bytes(), 0o644),
    );
    if !definition.conffiles.is_empty() {
        members.insert(
            "conffiles",
            (control::conffiles(definition).into_bytes(), 0o644),
        );
    }
    let scripts = &definition.maintainer_scripts;
    for (name, source) in [
        ("preinst", &scripts.preinst),
        ("postinst", &scripts.postinst),
        ("prerm", &scripts.prerm),
        ("postrm", &scripts.postrm),
    ] {
        if let Some(source) = source {
            let script = root.read(source, name)?;
            if !script.starts_with(b"#!") {
                return Err(crate::Error::invalid(
                    name,
                    "maintainer script must start with `#!`",
                ));
            }
            members.insert(name, (script, 0o755));
        }
    }
    let epoch = definition.source_date_epoch;
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "./", directory_header(epoch), &[]);
    for (name, (contents, mode)) in members {
        append(
            &mut tar,
            &format!("./{name}"),
            file_header(epoch, mode, "root", "root", contents.len()),
            &contents,
        );
    }
    Ok(gzip(
        &tar.into_inner().expect("finishing a tar in memory"),
        Compression::best(),
    ))
}

/// `data.tar.gz`: every directory (parents first), then files, in path order.
pub(crate) fn data_tar(files: &BTreeMap<String, DataFile>, epoch: u64) -> Vec<u8> {
    let directories = directories(files);
    let mut entries: BTreeMap<&str, Option<&DataFile>> =
        directories.iter().map(|d| (d.as_str(), None)).collect();
    entries.extend(files.iter().map(|(path, file)| (path.as_str(), Some(file))));
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "./", directory_header(epoch), &[]);
    for (path, file) in entries {
        match file {
            None => append(
                &mut tar,
                &format!("./{path}/"),
                directory_header(epoch),
                &[],
            ),
            Some(file) => {
                let header = file_header(
                    epoch,
                    file.mode,
                    &file.owner,
                    &file.group,
                    file.contents.len(),
                );
                append(&mut tar, &format!("./{path}"), header, &file.contents);
            }
        }
    }
    gzip(
        &tar.into_inner().expect("finishing a tar in memory"),
        Compression::best(),
    )
}

/// The `ar` archive: `debian-binary`, `control.tar.gz`, `data.tar.gz`, in that order.
pub(crate) fn ar_deb(control_tar_gz: &[u8], data_tar_gz: &[u8], epoch: u64) -> Vec<u8> {
    let mut ar = b"!<arch>\n".to_vec();
    for (name, contents) in [
        ("debian-binary", &b"2.0\n"[..]),
        ("control.tar.gz", control_tar_gz),
        ("data.tar.gz", data_tar_gz),
    ] {
        let header = format!(
            "{name:<16}{epoch:<12}{:<6}{:<6}{:<8o}{:<10}`\n",
            0,
            0,
            0o100644,
            contents.len()
        );
        ar.extend_from_slice(header.as_bytes());
        ar.extend_from_slice(contents);
        if contents.len() % 2 == 1 {
            ar.push(b'\n');
        }
    }
    ar
}

fn directory_header(epoch: u64) -> Header {
    let mut header = base_header(epoch, 0o755, "root", "root");
    header.set_entry_type(EntryType::Directory);
    header.set_size(0);
    header
}

fn file_header(epoch: u64, mode: u32, owner: &str, group: &str, size: usize) -> Header {
    let mut header = base_header(epoch, mode, owner, group);
    header.set_entry_type(EntryType::Regular);
    header.set_size(size as u64);
    header
}

fn base_header(epoch: u64, mode: u32, owner: &str, group: &str) -> Header {
    let mut header = Header::new_gnu();
    header.set_mode(mode & 0o7777);
    header.set_mtime(epoch);
    header.set_uid(well_known_id(owner, USER_IDS));
    header.set_gid(well_known_id(group, GROUP_IDS));
    // Names were validated as short ASCII, which always fits the 32-byte fields.
    header.set_username(owner).expect("validated user name");
    header.set_groupname(group).expect("validated group name");
    header
}

/// Debian's static ids (base-passwd). Other names get id 0: dpkg resolves the name on the
/// target first, so the id only matters where that name does not exist.
const USER_IDS: &[(&str, u64)] = &[
    ("root", 0),
    ("daemon", 1),
    ("bin", 2),
    ("sys", 3),
    ("www-data", 33),
    ("nobody", 65534),
];
const GROUP_IDS: &[(&str, u64)] = &[
    ("root", 0),
    ("daemon", 1),
    ("bin", 2),
    ("sys", 3),
    ("adm", 4),
    ("www-data", 33),
    ("nogroup", 65534),
];

fn well_known_id(name: &str, table: &[(&str, u64)]) -> u64 {
    table
        .iter()
        .find(|(known, _)| *known == name)
        .map_or(0, |(_, id)| *id)
}

/// Appends an entry whose name keeps dpkg's `./` prefix, with a GNU long-name record when
/// the path does not fit the 100-byte name field.
fn append(tar: &mut tar::Builder<Vec<u8>>, path: &str, mut header: Header, contents: &[u8]) {
    let name = path.as_bytes();
    if name.len() > 100 {
        let mut long = Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_mtime(0);
        long.set_entry_type(EntryType::GNULongName);
        long.set_size(name.len() as u64 + 1);
        long.set_cksum();
        let mut data = name.to_vec();
        data.push(0);
        tar.append(&long, &data[..])
            .expect("writing a tar in memory");
    }
    let shown = name.len().min(100);
    header.as_old_mut().name[..shown].copy_from_slice(&name[..shown]);
    header.set_cksum();
    tar.append(&header, contents)
        .expect("writing a tar in memory");
}
