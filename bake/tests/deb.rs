//! The .deb builder, checked with Debian's own tools: dpkg-deb and lintian.

mod common;

use std::path::PathBuf;

use common::{hello_definition, run, write};
use slipway_bake::{deb, Error, PackageFile};

fn built_hello(version: &str) -> (tempfile::TempDir, PathBuf, slipway_bake::PackageInfo) {
    let workspace = tempfile::tempdir().unwrap();
    let package = deb::build(
        &hello_definition(workspace.path(), version),
        workspace.path(),
        workspace.path(),
    )
    .unwrap();
    (workspace, package.path, package.info)
}

#[test]
fn dpkg_deb_shows_the_declared_control_fields() {
    let (_workspace, path, info) = built_hello("1.2-3");
    assert_eq!(info.filename, "hello_1.2-3_all.deb");
    let (ok, text) = run("dpkg-deb", &["--info", path.to_str().unwrap()]);
    assert!(ok, "{text}");
    for expected in [
        " Package: hello\n",
        " Version: 1.2-3\n",
        " Architecture: all\n",
        " Maintainer: Slipway Tests <tests@slipway.example>\n",
        " Depends: python3\n",
        " Section: misc\n",
        " Priority: optional\n",
        " Description: greets whoever asks\n  A small service used to test Slipway's packaging.\n  .\n  It prints a greeting.\n",
        "conffiles",
        "md5sums",
        "postinst",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let (_, conffiles) = run("dpkg-deb", &["--info", path.to_str().unwrap(), "conffiles"]);
    assert_eq!(conffiles, "/etc/hello/hello.conf\n/etc/hello/secret.conf\n");
    let (_, size) = run(
        "dpkg-deb",
        &["--field", path.to_str().unwrap(), "Installed-Size"],
    );
    assert!(size.trim().parse::<u64>().unwrap() > 0);
}

#[test]
fn dpkg_deb_lists_files_with_declared_modes_owners_and_parent_directories() {
    let (_workspace, path, _) = built_hello("1");
    let (ok, text) = run("dpkg-deb", &["--contents", path.to_str().unwrap()]);
    assert!(ok, "{text}");
    let listed: Vec<(String, String, String)> = text
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (
                fields[0].to_string(),
                fields[1].to_string(),
                fields[5].to_string(),
            )
        })
        .collect();
    let expect = |mode: &str, owner: &str, path: &str| {
        assert!(
            listed.contains(&(mode.into(), owner.into(), path.into())),
            "expected {mode} {owner} {path} in:\n{text}"
        );
    };
    expect("drwxr-xr-x", "root/root", "./");
    expect("drwxr-xr-x", "root/root", "./usr/");
    expect("drwxr-xr-x", "root/root", "./usr/bin/");
    expect("-rwxr-xr-x", "root/root", "./usr/bin/hello");
    expect("-rw-r--r--", "root/root", "./etc/hello/hello.conf");
    expect("-rw-r-----", "root/www-data", "./etc/hello/secret.conf");
    expect(
        "-rw-r--r--",
        "root/root",
        "./lib/systemd/system/hello.service",
    );
    expect("-rw-r--r--", "root/root", "./usr/share/hello/VERSION");
    expect("-rw-r--r--", "root/root", "./usr/share/doc/hello/copyright");
    expect(
        "-rw-r--r--",
        "root/root",
        "./usr/share/doc/hello/changelog.gz",
    );
    let dates: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert!(
        dates.iter().all(|d| *d == "2023-11-14"),
        "every mtime is source_date_epoch: {dates:?}"
    );
}

#[test]
fn lintian_reports_no_errors_on_a_realistic_package() {
    let (_workspace, path, _) = built_hello("1.0");
    let (ok, text) = run(
        "lintian",
        &["--tag-display-limit", "0", path.to_str().unwrap()],
    );
    let errors: Vec<&str> = text.lines().filter(|line| line.starts_with("E:")).collect();
    assert!(ok && errors.is_empty(), "lintian errors:\n{text}");
}

#[test]
fn building_twice_gives_byte_identical_packages() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let a = deb::build(
        &hello_definition(first.path(), "7"),
        first.path(),
        first.path(),
    )
    .unwrap();
    let b = deb::build(
        &hello_definition(second.path(), "7"),
        second.path(),
        out.path(),
    )
    .unwrap();
    let (a_bytes, b_bytes) = (
        std::fs::read(&a.path).unwrap(),
        std::fs::read(&b.path).unwrap(),
    );
    assert_eq!(a_bytes, b_bytes);
    assert_eq!(a.info, b.info);
    assert_eq!(a.info.size, a_bytes.len() as u64);
    assert_eq!(
        a.info.sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&a_bytes))
    );
    let names = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(out.path()),
        vec!["hello_7_all.deb"],
        "no temporary file is left"
    );
}

#[test]
fn sources_escaping_the_workspace_are_refused_naming_the_entry() {
    let workspace = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "passwd", "root:x:0:0\n", 0o644);
    std::os::unix::fs::symlink(outside.path().join("passwd"), workspace.path().join("link"))
        .unwrap();
    let outside_file = outside.path().join("passwd");
    for source in [
        PathBuf::from("../passwd"),
        outside_file,
        PathBuf::from("link"),
    ] {
        let mut definition = hello_definition(workspace.path(), "1");
        definition
            .files
            .push(PackageFile::new(&source, "/usr/share/hello/stolen", 0o644));
        let error = deb::build(&definition, workspace.path(), workspace.path()).unwrap_err();
        assert!(
            matches!(error, Error::PathEscapesRoot { .. }),
            "{source:?}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("/usr/share/hello/stolen") && message.contains("escapes"),
            "{message}"
        );
    }
}

#[test]
fn bad_destinations_conffiles_names_and_versions_are_refused() {
    let workspace = tempfile::tempdir().unwrap();
    let refused = |change: &dyn Fn(&mut slipway_bake::PackageDefinition), needle: &str| {
        let mut definition = hello_definition(workspace.path(), "1");
        change(&mut definition);
        let message = deb::build(&definition, workspace.path(), workspace.path())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(needle),
            "expected {needle:?} in {message:?}"
        );
    };
    refused(
        &|d| d.files[0].dest = "usr/bin/hello".into(),
        "usr/bin/hello",
    );
    refused(
        &|d| d.files[0].dest = "/usr/../etc/shadow".into(),
        "/usr/../etc/shadow",
    );
    refused(
        &|d| d.files[1].dest = "/usr/bin/hello".into(),
        "declared more than once",
    );
    refused(
        &|d| d.conffiles.push("/etc/hello/missing.conf".into()),
        "/etc/hello/missing.conf",
    );
    refused(
        &|d| d.extra_files[0].dest = "/usr/bin".into(),
        "/usr/bin: is a file and also the directory",
    );
    refused(
        &|d| d.maintainer_scripts.postinst = Some("deploy/hello.conf".into()),
        "postinst: maintainer script must start with `#!`",
    );
    refused(&|d| d.name = "Hello_World".into(), "Hello_World");
    refused(&|d| d.version = "v1".into(), "`v1` must start with a digit");
    refused(&|d| d.version = "1.0-".into(), "`1.0-`");
    refused(&|d| d.maintainer = "nobody".into(), "Full Name <email>");
    refused(
        &|d| d.description = "one\nPackage: evil".into(),
        "single line",
    );
}
