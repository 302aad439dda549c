//! Shared fixtures: a realistic workspace for a `hello` service and a signed repository.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use slipway_bake::{ExtraFile, MaintainerScripts, PackageDefinition, PackageFile};

pub const EPOCH: u64 = 1_700_000_000;

/// Writes the sources of the `hello` service under `root` and returns its definition.
pub fn hello_definition(root: &Path, version: &str) -> PackageDefinition {
    write(
        root,
        "build/hello",
        "#!/bin/sh\necho \"hello from $(cat /usr/share/hello/VERSION)\"\n",
        0o755,
    );
    write(root, "deploy/hello.conf", "greeting = hello\n", 0o644);
    write(
        root,
        "deploy/secret.conf",
        "token = not-a-real-secret\n",
        0o640,
    );
    write(root, "deploy/hello.service", "[Unit]\nDescription=Hello service\n\n[Service]\nExecStart=/usr/bin/hello\n\n[Install]\nWantedBy=multi-user.target\n", 0o644);
    write(
        root,
        "deploy/postinst",
        "#!/bin/sh\nset -e\necho configured > /var/lib/hello/postinst-ran\n",
        0o755,
    );
    let mut secret = PackageFile::new("deploy/secret.conf", "/etc/hello/secret.conf", 0o640);
    secret.group = "www-data".into();
    PackageDefinition {
        name: "hello".into(),
        version: version.into(),
        architecture: "all".into(),
        maintainer: "Slipway Tests <tests@slipway.example>".into(),
        description: "greets whoever asks".into(),
        long_description:
            "A small service used to test Slipway's packaging.\n\nIt prints a greeting.".into(),
        depends: vec!["python3".into()],
        files: vec![
            PackageFile::new("build/hello", "/usr/bin/hello", 0o755),
            PackageFile::new("deploy/hello.conf", "/etc/hello/hello.conf", 0o644),
            secret,
        ],
        conffiles: vec![
            "/etc/hello/hello.conf".into(),
            "/etc/hello/secret.conf".into(),
        ],
        systemd_unit: Some("deploy/hello.service".into()),
        maintainer_scripts: MaintainerScripts {
            postinst: Some("deploy/postinst".into()),
            ..Default::default()
        },
        extra_files: vec![
            ExtraFile {
                dest: "/usr/share/hello/VERSION".into(),
                contents: format!("{version}\n").into_bytes(),
                mode: 0o644,
            },
            ExtraFile {
                dest: "/var/lib/hello/.keep".into(),
                contents: Vec::new(),
                mode: 0o644,
            },
        ],
        source_date_epoch: EPOCH,
    }
}

/// A minimal package (one small file) for repository tests and the benchmark's shape.
pub fn tiny_definition(root: &Path, name: &str, version: &str) -> PackageDefinition {
    write(root, "tiny.txt", "tiny\n", 0o644);
    PackageDefinition {
        name: name.into(),
        version: version.into(),
        architecture: "amd64".into(),
        maintainer: "Slipway Tests <tests@slipway.example>".into(),
        description: "a tiny test package".into(),
        long_description: String::new(),
        depends: Vec::new(),
        files: vec![PackageFile::new(
            "tiny.txt",
            format!("/usr/share/{name}/tiny.txt"),
            0o644,
        )],
        conffiles: Vec::new(),
        systemd_unit: None,
        maintainer_scripts: MaintainerScripts::default(),
        extra_files: Vec::new(),
        source_date_epoch: EPOCH,
    }
}

pub fn write(root: &Path, relative: &str, contents: &str, mode: u32) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a command in the C locale and UTC, returning (success, stdout + stderr).
pub fn run(program: &str, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(program)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}
