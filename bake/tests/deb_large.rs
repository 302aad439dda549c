//! A package of several hundred MB of files is built and published with flat memory: sources, the
//! compressed data member and the .deb stream through files and are hashed as they pass.
//! Its own test binary, so the process's peak RSS (VmHWM) is this test's alone.

mod common;

use std::io::Write;
use std::time::Instant;

use common::{run, EPOCH};
use slipway_bake::{deb, AptRepository, MaintainerScripts, PackageDefinition, PackageFile, Signer};

/// A 300 MB file of zeros, written sparse (no disk used): 300 MB to read, tiny compressed.
const ZEROS_BYTES: u64 = 300_000_000;
/// 64 MB of incompressible bytes: the .deb itself is that large, for publishing.
const NOISE_BYTES: u64 = 64_000_000;
/// What building and publishing may add to the process's peak RSS: well under either file.
const MEMORY_BUDGET_BYTES: u64 = 32 * 1024 * 1024;

/// The process's peak resident set size (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Writes `bytes` of xorshift output, 1 MiB at a time.
fn write_noise(path: &std::path::Path, bytes: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for word in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let take = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..take]).unwrap();
        left -= take as u64;
    }
    file.flush().unwrap();
}

#[test]
fn a_package_of_364_mb_of_files_is_built_and_published_with_flat_memory() {
    let (workspace, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::File::create(workspace.path().join("zeros.bin"))
        .unwrap()
        .set_len(ZEROS_BYTES)
        .unwrap();
    write_noise(&workspace.path().join("noise.bin"), NOISE_BYTES);
    let definition = PackageDefinition {
        name: "bigapp".into(),
        version: "1".into(),
        architecture: "all".into(),
        maintainer: "Slipway Tests <tests@slipway.example>".into(),
        description: "a large test package".into(),
        long_description: String::new(),
        depends: Vec::new(),
        files: vec![
            PackageFile::new("zeros.bin", "/usr/share/bigapp/zeros.bin", 0o644),
            PackageFile::new("noise.bin", "/usr/share/bigapp/noise.bin", 0o644),
        ],
        conffiles: Vec::new(),
        systemd_unit: None,
        maintainer_scripts: MaintainerScripts::default(),
        extra_files: Vec::new(),
        source_date_epoch: EPOCH,
    };
    let signer = Signer::open_or_create(
        &data.path().join("gpg"),
        "Slipway apt <apt@slipway.example>",
    )
    .unwrap();
    let repository = AptRepository::open(&data.path().join("apt"), signer).unwrap();
    let out = tempfile::tempdir().unwrap();

    let before = peak_rss();
    let started = Instant::now();
    let package = deb::build(&definition, workspace.path(), out.path()).unwrap();
    let built_in = started.elapsed();
    let record = repository.publish(&package.path, &package.info).unwrap();
    let published_in = started.elapsed() - built_in;
    let after = peak_rss();
    eprintln!(
        "364 MB of files: .deb {} bytes, built in {built_in:?}, published in {published_in:?}; \
         peak RSS {} KiB before, {} KiB after (+{} KiB)",
        package.info.size,
        before / 1024,
        after / 1024,
        (after - before) / 1024
    );
    assert!(
        after - before < MEMORY_BUDGET_BYTES,
        "peak RSS grew by {} KiB building and publishing 364 MB of files",
        (after - before) / 1024
    );

    // The streamed hash is the file's, and the pool holds that same file.
    let (ok, sums) = run(
        "sha256sum",
        &[
            package.path.to_str().unwrap(),
            repository.root().join(&record.pool_path).to_str().unwrap(),
        ],
    );
    assert!(ok, "{sums}");
    let hashes: Vec<&str> = sums.lines().map(|l| &l[..64]).collect();
    assert_eq!(hashes, vec![package.info.sha256.as_str(); 2], "{sums}");
    assert_eq!(
        std::fs::metadata(&package.path).unwrap().len(),
        package.info.size
    );
    // dpkg-deb reads the archive back: both files are there at their full size.
    let (ok, contents) = run("dpkg-deb", &["--contents", package.path.to_str().unwrap()]);
    assert!(ok, "{contents}");
    for (size, name) in [(ZEROS_BYTES, "zeros.bin"), (NOISE_BYTES, "noise.bin")] {
        assert!(
            contents
                .lines()
                .any(|line| line.contains(&format!(" {size} "))
                    && line.ends_with(&format!("./usr/share/bigapp/{name}"))),
            "{contents}"
        );
    }
    assert!(package.info.size > NOISE_BYTES, "{}", package.info.size);
}
