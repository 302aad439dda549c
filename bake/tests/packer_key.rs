//! The bake key: stable for equal inputs, different when any input changes.

use std::collections::BTreeMap;

use slipway_bake::bake_key;
use slipway_bake::packer::{read_playbook_dir, BakeKeyInputs};

/// One named way to alter the inputs.
type Change = (&'static str, fn(&mut Inputs));

struct Inputs {
    base_image_id: String,
    package_sha256: String,
    template: Vec<u8>,
    playbook_files: BTreeMap<String, Vec<u8>>,
    apt_key: Vec<u8>,
    variables: Vec<(&'static str, String)>,
    team: Option<String>,
}

impl Inputs {
    fn new() -> Inputs {
        Inputs {
            base_image_id: "sha256:1111".into(),
            package_sha256: "ab".repeat(32),
            template: br#"{"builders": []}"#.to_vec(),
            playbook_files: BTreeMap::from([
                ("bake.yml".to_string(), b"- hosts: all\n".to_vec()),
                ("roles/app/tasks/main.yml".to_string(), b"[]\n".to_vec()),
            ]),
            apt_key: b"key".to_vec(),
            variables: vec![("app", "hello".into()), ("release", "3".into())],
            team: None,
        }
    }

    fn key(&self) -> String {
        bake_key(&BakeKeyInputs {
            base_image_id: &self.base_image_id,
            package_sha256: &self.package_sha256,
            template: &self.template,
            playbook_files: &self.playbook_files,
            apt_key: &self.apt_key,
            variables: &self.variables,
            team: self.team.as_deref(),
        })
    }
}

#[test]
fn equal_inputs_give_an_equal_sha256_hex_key() {
    let key = Inputs::new().key();
    assert_eq!(key, Inputs::new().key());
    assert_eq!(key.len(), 64);
    assert!(key
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
}

#[test]
fn any_changed_input_changes_the_key() {
    let original = Inputs::new().key();
    let changes: Vec<Change> = vec![
        ("base image", |i| i.base_image_id = "sha256:2222".into()),
        ("package", |i| i.package_sha256 = "cd".repeat(32)),
        ("template", |i| i.template.push(b'\n')),
        ("playbook content", |i| {
            i.playbook_files
                .insert("bake.yml".into(), b"- hosts: web\n".to_vec());
        }),
        ("playbook file added", |i| {
            i.playbook_files.insert("vars.yml".into(), Vec::new());
        }),
        ("playbook file renamed", |i| {
            let contents = i.playbook_files.remove("bake.yml").unwrap();
            i.playbook_files.insert("site.yml".into(), contents);
        }),
        ("apt key", |i| i.apt_key.push(b'!')),
        ("variable", |i| i.variables[1].1 = "4".into()),
        ("team playbook added", |i| i.team = Some("ab".repeat(32))),
        // Length prefixes keep field boundaries: moving a byte across them is a change.
        ("boundary", |i| {
            i.base_image_id.push('a');
            i.package_sha256.remove(0);
        }),
    ];
    for (what, change) in changes {
        let mut inputs = Inputs::new();
        change(&mut inputs);
        assert_ne!(inputs.key(), original, "changing the {what} kept the key");
    }
}

#[test]
fn the_playbook_directory_is_read_recursively_by_relative_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("roles/app/tasks")).unwrap();
    std::fs::write(dir.path().join("bake.yml"), "- hosts: all\n").unwrap();
    std::fs::write(dir.path().join("roles/app/tasks/main.yml"), "[]\n").unwrap();
    let files = read_playbook_dir(dir.path()).unwrap();
    assert_eq!(files, Inputs::new().playbook_files);
}

#[test]
fn a_symbolic_link_out_of_the_playbook_directory_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("roles/app/files")).unwrap();
    std::fs::write(dir.path().join("bake.yml"), "- hosts: all\n").unwrap();
    // A link inside the directory counts as its target's name.
    std::os::unix::fs::symlink(
        "../../../bake.yml",
        dir.path().join("roles/app/files/copy.yml"),
    )
    .unwrap();
    let files = read_playbook_dir(dir.path()).unwrap();
    assert_eq!(
        files["roles/app/files/copy.yml"],
        b"symlink:../../../bake.yml"
    );
    std::os::unix::fs::symlink("/etc", dir.path().join("roles/app/files/etc")).unwrap();
    let error = read_playbook_dir(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("`roles/app/files/etc` is a symbolic link that leads outside"),
        "{error}"
    );
}
