//! The byte-level containers of a .deb: an `ar` archive holding gzip-compressed tarballs.
//!
//! Everything here is deterministic: fixed timestamps, sorted entries, no gzip name or time.
//! `data.tar.gz` and the `ar` archive are streamed to files, so a package's size never sits
//! in memory; only the small `control.tar.gz` is built in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use flate2::{Compression, GzBuilder};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use tar::{EntryType, Header};

use super::{DataContents, DataFile, PackageDefinition};
use crate::error::{Error, IoContext, Result};

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
    control_paragraph: &str,
    md5sums: &str,
    scripts: Vec<(&'static str, Vec<u8>)>,
) -> Vec<u8> {
    let mut members: BTreeMap<&str, (Vec<u8>, u32)> = BTreeMap::new();
    members.insert("control", (control_paragraph.as_bytes().to_vec(), 0o644));
    members.insert("md5sums", (md5sums.as_bytes().to_vec(), 0o644));
    if !definition.conffiles.is_empty() {
        members.insert(
            "conffiles",
            (super::control::conffiles(definition).into_bytes(), 0o644),
        );
    }
    for (name, script) in scripts {
        members.insert(name, (script, 0o755));
    }
    let epoch = definition.source_date_epoch;
    let mut tar = tar::Builder::new(Vec::new());
    append_in_memory(&mut tar, "./", directory_header(epoch), &[]);
    for (name, (contents, mode)) in members {
        append_in_memory(
            &mut tar,
            &format!("./{name}"),
            file_header(epoch, mode, "root", "root", contents.len() as u64),
            &contents,
        );
    }
    gzip(
        &tar.into_inner().expect("finishing a tar in memory"),
        Compression::best(),
    )
}

/// Streams `data.tar.gz` into `out`: every directory (parents first), then files, in path
/// order; sources are read in pieces as they are written. Returns `out` and the lower-case
/// hex MD5 of every regular file by path, as read while writing (for `md5sums`).
pub(crate) fn write_data_tar<W: Write>(
    files: &BTreeMap<String, DataFile>,
    epoch: u64,
    out: W,
) -> Result<(W, BTreeMap<String, String>)> {
    let failed = |source: io::Error| Error::Io {
        context: "writing data.tar.gz",
        path: "data.tar.gz".into(),
        source,
    };
    let directories = directories(files);
    let mut entries: BTreeMap<&str, Option<&DataFile>> =
        directories.iter().map(|d| (d.as_str(), None)).collect();
    entries.extend(files.iter().map(|(path, file)| (path.as_str(), Some(file))));
    let encoder = GzBuilder::new().mtime(0).write(out, Compression::best());
    let mut tar = tar::Builder::new(encoder);
    let mut md5s = BTreeMap::new();
    append(&mut tar, "./", directory_header(epoch), io::empty()).map_err(failed)?;
    for (path, file) in entries {
        let name = format!("./{path}");
        let Some(file) = file else {
            append(
                &mut tar,
                &format!("{name}/"),
                directory_header(epoch),
                io::empty(),
            )
            .map_err(failed)?;
            continue;
        };
        let header = file_header(epoch, file.mode, &file.owner, &file.group, file.size);
        let mut reader = match &file.contents {
            DataContents::Generated(bytes) => Md5Reader::new(Box::new(&bytes[..])),
            DataContents::Source(source) => {
                let opened =
                    std::fs::File::open(source).io_context("reading package source", source)?;
                Md5Reader::new(Box::new(opened.take(file.size)))
            }
        };
        append(&mut tar, &name, header, &mut reader).map_err(|e| match &file.contents {
            DataContents::Source(source) => Error::Io {
                context: "reading package source",
                path: source.clone(),
                source: e,
            },
            DataContents::Generated(_) => failed(e),
        })?;
        if reader.count != file.size {
            return Err(Error::invalid(
                format!("/{path}"),
                "source file changed size while it was being packaged",
            ));
        }
        md5s.insert(path.to_string(), hex::encode(reader.md5.finalize()));
    }
    let encoder = tar.into_inner().map_err(failed)?;
    let out = encoder.finish().map_err(failed)?;
    Ok((out, md5s))
}

/// Streams the `ar` archive into `out`: `debian-binary`, `control.tar.gz`, then `data_len`
/// bytes of `data.tar.gz` read from `data`. Returns the archive's size and lower-case hex
/// SHA-256, computed as it is written.
pub(crate) fn write_ar_deb(
    out: impl Write,
    control_tar_gz: &[u8],
    data: impl Read,
    data_len: u64,
    epoch: u64,
) -> io::Result<(u64, String)> {
    let mut out = HashingWriter::new(out);
    out.write_all(b"!<arch>\n")?;
    let members: [(&str, u64, Box<dyn Read + '_>); 3] = [
        ("debian-binary", 4, Box::new(&b"2.0\n"[..])),
        (
            "control.tar.gz",
            control_tar_gz.len() as u64,
            Box::new(control_tar_gz),
        ),
        ("data.tar.gz", data_len, Box::new(data.take(data_len))),
    ];
    for (name, size, mut contents) in members {
        let header = format!(
            "{name:<16}{epoch:<12}{:<6}{:<6}{:<8o}{:<10}`\n",
            0, 0, 0o100644, size
        );
        out.write_all(header.as_bytes())?;
        let copied = io::copy(&mut contents, &mut out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name} ended after {copied} of {size} bytes"),
            ));
        }
        if size % 2 == 1 {
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok((out.count, hex::encode(sha2::Digest::finalize(out.sha256))))
}

/// Counts and hashes (MD5) what passes through, for `md5sums`.
struct Md5Reader<'a> {
    inner: Box<dyn Read + 'a>,
    md5: Md5,
    count: u64,
}

impl<'a> Md5Reader<'a> {
    fn new(inner: Box<dyn Read + 'a>) -> Md5Reader<'a> {
        Md5Reader {
            inner,
            md5: Md5::new(),
            count: 0,
        }
    }
}

impl Read for Md5Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.md5.update(&buf[..read]);
        self.count += read as u64;
        Ok(read)
    }
}

/// Counts and hashes (SHA-256) what is written through it.
struct HashingWriter<W> {
    inner: W,
    sha256: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            sha256: <Sha256 as sha2::Digest>::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.sha256, &buf[..written]);
        self.count += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn directory_header(epoch: u64) -> Header {
    let mut header = base_header(epoch, 0o755, "root", "root");
    header.set_entry_type(EntryType::Directory);
    header.set_size(0);
    header
}

fn file_header(epoch: u64, mode: u32, owner: &str, group: &str, size: u64) -> Header {
    let mut header = base_header(epoch, mode, owner, group);
    header.set_entry_type(EntryType::Regular);
    header.set_size(size);
    header
}

fn base_header(epoch: u64, mode: u32, owner: &str, group: &str) -> Header {
    let mut header = Header::new_gnu();
    header.set_mode(mode & 0o7777);
    header.set_mtime(epoch);
    let (uid, user) = account(owner, USER_IDS);
    let (gid, group) = account(group, GROUP_IDS);
    header.set_uid(uid);
    header.set_gid(gid);
    // Names were validated as short ASCII, which always fits the 32-byte fields.
    header.set_username(user).expect("validated user name");
    header.set_groupname(group).expect("validated group name");
    header
}

/// The id and name recorded for an owner or group: a numeric one is an id with no name (dpkg
/// then uses the id as is), a name gets Debian's static id when it has one.
fn account<'a>(name: &'a str, table: &[(&str, u64)]) -> (u64, &'a str) {
    match name.parse::<u32>() {
        Ok(id) => (u64::from(id), ""),
        Err(_) => (well_known_id(name, table), name),
    }
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

fn append_in_memory(tar: &mut tar::Builder<Vec<u8>>, path: &str, header: Header, contents: &[u8]) {
    append(tar, path, header, contents).expect("writing a tar in memory");
}

/// Appends an entry whose name keeps dpkg's `./` prefix, with a GNU long-name record when
/// the path does not fit the 100-byte name field.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mut header: Header,
    contents: impl Read,
) -> io::Result<()> {
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
        tar.append(&long, &data[..])?;
    }
    let shown = name.len().min(100);
    header.as_old_mut().name[..shown].copy_from_slice(&name[..shown]);
    header.set_cksum();
    tar.append(&header, contents)
}
