//! Renders the apt index files of one generation: `Packages`, `Packages.gz` and `Release`.

use sha2::{Digest, Sha256};

use super::catalogue::Catalogue;
use crate::deb::{gzip, md5_hex};

/// The one suite the repository publishes.
pub const SUITE: &str = "stable";
pub(crate) const COMPONENT: &str = "main";

/// One index file, relative to `dists/stable/`.
pub(crate) struct IndexFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub sha256: String,
}

impl IndexFile {
    fn new(path: String, contents: Vec<u8>) -> IndexFile {
        let sha256 = hex::encode(Sha256::digest(&contents));
        IndexFile {
            path,
            contents,
            sha256,
        }
    }
}

/// `Packages` and `Packages.gz` for every architecture of the catalogue.
pub(crate) fn package_indexes(catalogue: &Catalogue) -> Vec<IndexFile> {
    let mut files = Vec::new();
    for architecture in catalogue.architectures() {
        let mut packages = String::new();
        for entry in &catalogue.packages {
            let arch = &entry.info.architecture;
            if arch == &architecture || arch == "all" {
                packages.push_str(entry.info.control.trim_end());
                packages.push_str(&format!(
                    "\nFilename: {}\nSize: {}\nMD5sum: {}\nSHA256: {}\n\n",
                    entry.pool_path, entry.info.size, entry.md5, entry.info.sha256
                ));
            }
        }
        let dir = format!("{COMPONENT}/binary-{architecture}");
        files.push(IndexFile::new(
            format!("{dir}/Packages.gz"),
            // The index is rewritten on every publish: favour speed over the last few percent.
            gzip(packages.as_bytes(), flate2::Compression::fast()),
        ));
        files.push(IndexFile::new(
            format!("{dir}/Packages"),
            packages.into_bytes(),
        ));
    }
    files
}

/// The unsigned `Release` listing every index with its size, MD5 and SHA-256.
pub(crate) fn release(
    catalogue: &Catalogue,
    indexes: &[IndexFile],
    date: chrono::DateTime<chrono::Utc>,
) -> String {
    let mut release = format!(
        "Origin: Slipway\nLabel: Slipway\nSuite: {SUITE}\nCodename: {SUITE}\nDate: {}\nArchitectures: {}\n\
         Components: {COMPONENT}\nDescription: Slipway releases\nAcquire-By-Hash: yes\n",
        date.format("%a, %d %b %Y %H:%M:%S UTC"),
        catalogue.architectures().join(" "),
    );
    release.push_str("MD5Sum:\n");
    for file in indexes {
        let md5 = md5_hex(&file.contents);
        release.push_str(&format!(" {md5} {} {}\n", file.contents.len(), file.path));
    }
    release.push_str("SHA256:\n");
    for file in indexes {
        release.push_str(&format!(
            " {} {} {}\n",
            file.sha256,
            file.contents.len(),
            file.path
        ));
    }
    release
}

/// The `(sha256, path)` of every index a `Release` lists, read back from its SHA256 section.
pub(crate) fn listed_sha256(release: &str) -> Vec<(String, String)> {
    release
        .lines()
        .skip_while(|line| *line != "SHA256:")
        .skip(1)
        .take_while(|line| line.starts_with(' '))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (hash, _size, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some((hash.to_string(), path.to_string()))
        })
        .collect()
}
