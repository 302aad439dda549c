//! Package entries beyond single files: directories and globs of what a build produced, with
//! modes and owners, deterministic, and nothing taken from outside the workspace.

mod common;

use std::path::Path;

use common::{run, tiny_definition, write};
use slipway_bake::{deb, Error, PackageDefinition, PackageFile};

/// A workspace as a compiling build leaves it: a `dist/` tree, a config directory and a
/// tool, each entry of a different kind.
fn build_output(root: &Path) -> PackageDefinition {
    write(root, "dist/bin/greet", "\x7fELF pretend binary", 0o755);
    write(root, "dist/share/greet/index.html", "<p>hi</p>\n", 0o600);
    write(root, "dist/share/greet/.keep", "", 0o644);
    write(root, "conf/greet.conf", "port = 8080\n", 0o644);
    write(root, "conf/extra/tls.conf", "tls = off\n", 0o644);
    write(root, "tools/greetctl", "#!/bin/sh\n", 0o755);
    write(root, "lib/libgreet.so", "so", 0o644);
    write(root, "lib/libgreet.a", "a", 0o644);
    let mut definition = tiny_definition(root, "greet", "3");
    let mut shared = PackageFile::new("dist/**", "/usr/lib/greet/", 0o755);
    shared.owner = "1000".into();
    shared.group = "www-data".into();
    definition.files = vec![
        shared,
        PackageFile::new("conf", "/etc/greet", 0o644),
        PackageFile::new("tools/greetctl", "/usr/bin/", 0o755),
        PackageFile::new("lib/*.so", "/usr/lib/greet/lib/", 0o644),
    ];
    definition
}

fn contents(path: &Path) -> Vec<(String, String, String)> {
    let (ok, text) = run("dpkg-deb", &["--contents", path.to_str().unwrap()]);
    assert!(ok, "{text}");
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (
                fields[0].to_string(),
                fields[1].to_string(),
                fields[5].to_string(),
            )
        })
        .filter(|(mode, _, _)| !mode.starts_with('d'))
        .collect()
}

#[test]
fn directories_and_globs_install_each_file_under_dest_with_the_entry_mode_and_owner() {
    let workspace = tempfile::tempdir().unwrap();
    let definition = build_output(workspace.path());
    let package = deb::build(&definition, workspace.path(), workspace.path()).unwrap();
    let listed = contents(&package.path);
    let expected = [
        ("-rwxr-xr-x", "1000/www-data", "./usr/lib/greet/bin/greet"),
        (
            "-rwxr-xr-x",
            "1000/www-data",
            "./usr/lib/greet/share/greet/index.html",
        ),
        (
            "-rwxr-xr-x",
            "1000/www-data",
            "./usr/lib/greet/share/greet/.keep",
        ),
        ("-rw-r--r--", "root/root", "./etc/greet/greet.conf"),
        ("-rw-r--r--", "root/root", "./etc/greet/extra/tls.conf"),
        ("-rwxr-xr-x", "root/root", "./usr/bin/greetctl"),
        ("-rw-r--r--", "root/root", "./usr/lib/greet/lib/libgreet.so"),
    ];
    for (mode, owner, path) in expected {
        assert!(
            listed.contains(&(mode.into(), owner.into(), path.into())),
            "expected {mode} {owner} {path} in {listed:#?}"
        );
    }
    assert_eq!(
        listed.len(),
        expected.len() + 2,
        "only the selected files, plus copyright and changelog: {listed:#?}"
    );
    let (_, extracted) = run(
        "dpkg-deb",
        &["--fsys-tarfile", package.path.to_str().unwrap()],
    );
    assert!(extracted.contains("\x7fELF pretend binary"));
}

#[test]
fn the_same_build_output_gives_byte_identical_packages_whatever_order_and_times() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let a = deb::build(&build_output(first.path()), first.path(), first.path()).unwrap();
    // The second workspace is written in another order, later, so directory order and
    // mtimes differ; the package must not.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write(second.path(), "lib/libgreet.a", "a", 0o644);
    write(second.path(), "conf/extra/tls.conf", "tls = off\n", 0o644);
    let b = deb::build(&build_output(second.path()), second.path(), second.path()).unwrap();
    assert_eq!(
        std::fs::read(&a.path).unwrap(),
        std::fs::read(&b.path).unwrap()
    );
    assert_eq!(a.info.sha256, b.info.sha256);
}

#[test]
fn globs_that_match_nothing_and_sources_escaping_the_workspace_are_refused_naming_the_entry() {
    let workspace = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "shadow", "root:*:1::::::\n", 0o600);
    let refused = |source: &str, dest: &str, prepare: &dyn Fn(&Path)| -> Error {
        let mut definition = build_output(workspace.path());
        prepare(workspace.path());
        definition.files.push(PackageFile::new(source, dest, 0o644));
        let error = deb::build(&definition, workspace.path(), workspace.path()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&format!("file `{source}` -> {dest}")),
            "the entry is named: {message}"
        );
        error
    };
    let none = |_: &Path| {};

    let error = refused("dist/**/*.jar", "/usr/share/java/", &none);
    assert!(error.to_string().contains("matches no file"), "{error}");
    let error = refused("missing", "/usr/share/greet/missing", &none);
    assert!(
        error.to_string().contains("is not in the workspace"),
        "{error}"
    );

    for source in ["../shadow", "dist/../../shadow"] {
        let error = refused(source, "/etc/stolen", &none);
        assert!(matches!(error, Error::PathEscapesRoot { .. }), "{error}");
    }
    let absolute = outside.path().join("shadow");
    let error = refused(absolute.to_str().unwrap(), "/etc/stolen", &none);
    assert!(matches!(error, Error::PathEscapesRoot { .. }), "{error}");

    // A link a step left inside a globbed directory, pointing outside.
    let target = outside.path().join("shadow");
    let link = move |root: &Path| {
        let _ = std::fs::remove_file(root.join("out/shadow"));
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::os::unix::fs::symlink(&target, root.join("out/shadow")).unwrap();
    };
    let error = refused("out/*", "/usr/share/greet/out/", &link);
    assert!(matches!(error, Error::PathEscapesRoot { .. }), "{error}");
    assert!(error.to_string().contains("out/shadow"), "{error}");
    // The same link named through its directory.
    let error = refused("out", "/usr/share/greet/out", &link);
    assert!(matches!(error, Error::PathEscapesRoot { .. }), "{error}");
    // A link to a directory outside, used as an entry's prefix.
    let outer = outside.path().to_path_buf();
    let error = refused("up/*", "/usr/share/greet/up/", &move |root: &Path| {
        let _ = std::fs::remove_file(root.join("up"));
        std::os::unix::fs::symlink(&outer, root.join("up")).unwrap();
    });
    assert!(matches!(error, Error::PathEscapesRoot { .. }), "{error}");
}

#[test]
fn two_entries_selecting_the_same_destination_are_refused() {
    let workspace = tempfile::tempdir().unwrap();
    let mut definition = build_output(workspace.path());
    definition
        .files
        .push(PackageFile::new("lib", "/usr/lib/greet/lib", 0o644));
    let message = deb::build(&definition, workspace.path(), workspace.path())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("/usr/lib/greet/lib/libgreet.so: declared more than once"),
        "{message}"
    );
}
