//! The apt repository's files, read back without HTTP: pool, indexes, signatures, generations.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{hello_definition, run, tiny_definition};
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use slipway_bake::{deb, AptRepository, Error, PackageInfo, Signer};

fn signed_repository(data: &Path) -> AptRepository {
    let signer =
        Signer::open_or_create(&data.join("gpg"), "Slipway apt <apt@slipway.example>").unwrap();
    AptRepository::open(&data.join("apt"), signer).unwrap()
}

fn build_into(
    workspace: &Path,
    definition: &slipway_bake::PackageDefinition,
) -> (std::path::PathBuf, PackageInfo) {
    let package = deb::build(definition, workspace, workspace).unwrap();
    (package.path, package.info)
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn publishing_two_versions_lists_both_in_signed_indexes_that_match_their_hashes() {
    let (data, workspace) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let repository = signed_repository(data.path());
    let root = repository.root().to_path_buf();
    for version in ["1", "2"] {
        let (path, info) = build_into(
            workspace.path(),
            &hello_definition(workspace.path(), version),
        );
        let record = repository.publish(&path, &info).unwrap();
        assert_eq!(
            record.pool_path,
            format!("pool/main/h/hello/hello_{version}_all.deb")
        );
        assert!(record.newly_published);
        assert_eq!(
            std::fs::read(root.join(&record.pool_path)).unwrap(),
            std::fs::read(&path).unwrap()
        );
    }

    let stable = root.join("dists/stable");
    let packages = read(stable.join("main/binary-amd64/Packages"));
    for version in ["1", "2"] {
        let paragraph = packages
            .split("\n\n")
            .find(|p| p.contains(&format!("Version: {version}\n")))
            .unwrap();
        let deb =
            std::fs::read(root.join(format!("pool/main/h/hello/hello_{version}_all.deb"))).unwrap();
        assert!(paragraph.starts_with("Package: hello\n"), "{paragraph}");
        assert!(paragraph.contains(&format!(
            "Filename: pool/main/h/hello/hello_{version}_all.deb\n"
        )));
        assert!(paragraph.contains(&format!("Size: {}\n", deb.len())));
        assert!(paragraph.contains(&format!("SHA256: {}", sha256_hex(&deb))));
    }
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut GzDecoder::new(
            std::fs::File::open(stable.join("main/binary-amd64/Packages.gz")).unwrap(),
        ),
        &mut unzipped,
    )
    .unwrap();
    assert_eq!(unzipped, packages);

    let release = read(stable.join("Release"));
    for field in [
        "Suite: stable\n",
        "Codename: stable\n",
        "Components: main\n",
        "Architectures: amd64\n",
        "Date: ",
        "MD5Sum:\n",
        "SHA256:\n",
    ] {
        assert!(release.contains(field), "missing {field:?} in\n{release}");
    }
    for index in [
        "main/binary-amd64/Packages",
        "main/binary-amd64/Packages.gz",
    ] {
        let bytes = std::fs::read(stable.join(index)).unwrap();
        let line = format!(" {} {} {index}\n", sha256_hex(&bytes), bytes.len());
        assert!(release.contains(&line), "missing {line:?} in\n{release}");
        let by_hash = stable
            .join(Path::new(index).parent().unwrap())
            .join("by-hash/SHA256")
            .join(sha256_hex(&bytes));
        assert_eq!(std::fs::read(by_hash).unwrap(), bytes);
    }

    let keyring = repository.key_path();
    let keyring = keyring.to_str().unwrap();
    let (ok, text) = run(
        "gpgv",
        &[
            "--keyring",
            keyring,
            stable.join("InRelease").to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    assert!(read(stable.join("InRelease")).contains(&release));
    let (ok, text) = run(
        "gpgv",
        &[
            "--keyring",
            keyring,
            stable.join("Release.gpg").to_str().unwrap(),
            stable.join("Release").to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
}

#[test]
fn each_publish_swaps_in_a_new_generation_and_keeps_only_the_previous_one() {
    let (data, workspace) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let repository = signed_repository(data.path());
    let dists = repository.root().join("dists");
    assert_eq!(
        std::fs::read_link(dists.join("stable")).unwrap(),
        Path::new(".stable-1")
    );
    let mut previous_packages_gz = Vec::new();
    for (generation, name) in [(2, "alpha"), (3, "bravo"), (4, "charlie")] {
        previous_packages_gz =
            std::fs::read(dists.join("stable/main/binary-amd64/Packages.gz")).unwrap();
        let (path, info) = build_into(
            workspace.path(),
            &tiny_definition(workspace.path(), name, "1.0"),
        );
        assert_eq!(
            repository.publish(&path, &info).unwrap().generation,
            generation
        );
    }
    assert_eq!(
        std::fs::read_link(dists.join("stable")).unwrap(),
        Path::new(".stable-4")
    );
    let mut generations: Vec<String> = std::fs::read_dir(&dists)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    generations.sort();
    assert_eq!(generations, [".stable-3", ".stable-4", "stable"]);
    // A client holding generation 3's InRelease still finds the index it names, by hash.
    let by_hash = dists
        .join("stable/main/binary-amd64/by-hash/SHA256")
        .join(sha256_hex(&previous_packages_gz));
    assert_eq!(std::fs::read(by_hash).unwrap(), previous_packages_gz);
    let packages = read(dists.join("stable/main/binary-amd64/Packages"));
    assert!(["alpha", "bravo", "charlie"]
        .iter()
        .all(|n| packages.contains(&format!("Package: {n}\n"))));
}

#[test]
fn republishing_is_idempotent_and_a_different_file_under_the_same_name_is_refused() {
    let (data, workspace) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let repository = signed_repository(data.path());
    let definition = tiny_definition(workspace.path(), "delta", "1.0");
    let (path, info) = build_into(workspace.path(), &definition);
    let first = repository.publish(&path, &info).unwrap();
    let again = repository.publish(&path, &info).unwrap();
    assert!(!again.newly_published);
    assert_eq!(again.generation, first.generation);

    let other = tempfile::tempdir().unwrap();
    let mut rebuilt = tiny_definition(other.path(), "delta", "1.0");
    rebuilt.source_date_epoch += 1;
    let (other_path, other_info) = build_into(other.path(), &rebuilt);
    assert_eq!(other_info.filename, info.filename);
    let error = repository.publish(&other_path, &other_info).unwrap_err();
    assert!(matches!(error, Error::PoolConflict { .. }), "{error}");
    assert!(error.to_string().contains("delta_1.0_amd64.deb"), "{error}");
    assert_eq!(
        std::fs::read(repository.root().join(&first.pool_path)).unwrap(),
        std::fs::read(&path).unwrap()
    );

    let mut smuggling = info.clone();
    smuggling.control.push_str("\nPackage: evil\nVersion: 1\n");
    let error = repository.publish(&path, &smuggling).unwrap_err();
    assert!(
        error.to_string().contains("single control paragraph"),
        "{error}"
    );

    let mut lying = info.clone();
    lying.sha256 = "0".repeat(64);
    let error = repository.publish(&path, &lying).unwrap_err();
    assert!(
        matches!(error, Error::PackageMismatch { .. }) && error.to_string().contains("sha256"),
        "{error}"
    );
}

#[test]
fn concurrent_publishers_in_two_handles_lose_nothing_and_reopening_keeps_the_catalogue() {
    let (data, workspace) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let handles = [
        Arc::new(signed_repository(data.path())),
        Arc::new(signed_repository(data.path())),
    ];
    let names: Vec<String> = (0..8).map(|i| format!("pkg{i}")).collect();
    let built: Vec<_> = names
        .iter()
        .map(|name| {
            let dir = workspace.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            build_into(&dir, &tiny_definition(&dir, name, "1.0"))
        })
        .collect();
    std::thread::scope(|scope| {
        for (i, (path, info)) in built.iter().enumerate() {
            let repository = Arc::clone(&handles[i % 2]);
            scope.spawn(move || repository.publish(path, info).unwrap());
        }
    });
    let reopened = signed_repository(data.path());
    let published: Vec<String> = reopened
        .packages()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(published.len(), 8);
    let packages = read(
        reopened
            .root()
            .join("dists/stable/main/binary-amd64/Packages"),
    );
    assert!(
        names
            .iter()
            .all(|n| packages.contains(&format!("Package: {n}\n"))),
        "{packages}"
    );
    assert_eq!(
        std::fs::read_link(reopened.root().join("dists/stable")).unwrap(),
        Path::new(".stable-9")
    );
}

#[test]
fn a_generation_left_unfinished_by_a_crash_is_redone_and_never_served() {
    let (data, workspace) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let repository = signed_repository(data.path());
    let dists = repository.root().join("dists");
    // What a publish that died before its swap leaves: a half-written next generation.
    std::fs::create_dir_all(dists.join(".stable-2/main/binary-amd64")).unwrap();
    std::fs::write(
        dists.join(".stable-2/main/binary-amd64/Packages"),
        "Package: half-written\n",
    )
    .unwrap();
    assert_eq!(
        std::fs::read_link(dists.join("stable")).unwrap(),
        Path::new(".stable-1")
    );

    let (path, info) = build_into(
        workspace.path(),
        &tiny_definition(workspace.path(), "echo", "1.0"),
    );
    assert_eq!(repository.publish(&path, &info).unwrap().generation, 2);
    let packages = read(dists.join("stable/main/binary-amd64/Packages"));
    assert!(
        packages.starts_with("Package: echo\n") && !packages.contains("half-written"),
        "{packages}"
    );
}

#[test]
fn a_removed_version_leaves_the_signed_index_and_the_pool_and_the_others_stay() {
    let (data, workspace) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let repository = signed_repository(data.path());
    let root = repository.root().to_path_buf();
    let mut records = Vec::new();
    for version in ["1", "2", "3"] {
        let (path, info) = build_into(
            workspace.path(),
            &hello_definition(workspace.path(), version),
        );
        records.push(repository.publish(&path, &info).unwrap());
    }
    let removed = repository
        .remove(&["hello_1_all.deb".to_owned(), "nothing_9_all.deb".to_owned()])
        .unwrap();
    let names: Vec<&str> = removed.iter().map(|r| r.filename.as_str()).collect();
    assert_eq!(names, ["hello_1_all.deb"]);
    assert_eq!(removed[0].pool_path, records[0].pool_path);
    assert!(!root.join(&records[0].pool_path).exists());
    for record in &records[1..] {
        assert!(root.join(&record.pool_path).exists());
    }
    let packages = read(root.join("dists/stable/main/binary-amd64/Packages"));
    assert!(!packages.contains("Version: 1\n"), "{packages}");
    assert!(packages.contains("Version: 2\n") && packages.contains("Version: 3\n"));
    let listed: Vec<String> = repository
        .packages()
        .unwrap()
        .into_iter()
        .map(|p| p.version)
        .collect();
    assert_eq!(listed, ["2", "3"]);
    let keyring = root.join("key.gpg");
    let (ok, text) = run(
        "gpgv",
        &[
            "--keyring",
            keyring.to_str().unwrap(),
            root.join("dists/stable/InRelease").to_str().unwrap(),
        ],
    );
    assert!(ok, "the new index is signed: {text}");
    assert!(repository
        .remove(&["hello_1_all.deb".to_owned()])
        .unwrap()
        .is_empty());
}

#[test]
fn a_copy_receives_the_index_by_hash_first_and_in_release_last_and_may_adopt_a_catalogue() {
    let (data, workspace) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let repository = signed_repository(data.path());
    let root = repository.root().to_path_buf();
    let mut records = Vec::new();
    for version in ["1", "2"] {
        let (path, info) = build_into(
            workspace.path(),
            &hello_definition(workspace.path(), version),
        );
        records.push(repository.publish(&path, &info).unwrap());
    }
    let files = repository.live_index_files().unwrap();
    assert_eq!(
        files[files.len() - 3..],
        [
            "dists/stable/Release",
            "dists/stable/Release.gpg",
            "dists/stable/InRelease"
        ]
    );
    let first_plain = files.iter().position(|f| !f.contains("/by-hash/")).unwrap();
    assert!(first_plain > 0, "{files:?}");
    assert!(files[first_plain..]
        .iter()
        .all(|f| !f.contains("/by-hash/")));
    assert!(files.contains(&"dists/stable/main/binary-amd64/Packages".to_owned()));
    for file in &files {
        assert!(root.join(file).is_file(), "{file}");
    }
    // Every by-hash index the live Release names is among them, under its hash.
    let release = read(root.join("dists/stable/Release"));
    let named = slipway_bake::apt::by_hash_files(&release);
    assert_eq!(named.len(), 2, "Packages and Packages.gz: {named:?}");
    let by_hash: Vec<&String> = files.iter().filter(|f| f.contains("/by-hash/")).collect();
    assert_eq!(by_hash.len(), 2, "only the live Release's: {files:?}");
    for file in &named {
        assert!(files.contains(file), "{file}");
        assert_eq!(
            file.rsplit('/').next().unwrap(),
            sha256_hex(&std::fs::read(root.join(file)).unwrap())
        );
    }

    // Adopting another copy's catalogue: the next publish indexes what it lists, and a
    // catalogue that does not parse changes nothing.
    let other = tempfile::tempdir().unwrap();
    let copy = signed_repository(other.path());
    let err = copy.adopt_catalogue(b"{not json").unwrap_err().to_string();
    assert!(err.contains("catalogue"), "{err}");
    copy.adopt_catalogue(&std::fs::read(repository.catalogue_path()).unwrap())
        .unwrap();
    assert_eq!(
        copy.pool_paths().unwrap(),
        [records[0].pool_path.clone(), records[1].pool_path.clone()]
    );
    let (path, info) = build_into(workspace.path(), &hello_definition(workspace.path(), "3"));
    copy.publish(&path, &info).unwrap();
    let packages = read(copy.root().join("dists/stable/main/binary-amd64/Packages"));
    for version in ["1", "2", "3"] {
        assert!(
            packages.contains(&format!("Version: {version}\n")),
            "{packages}"
        );
    }
}
