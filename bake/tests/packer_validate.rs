//! `packer validate` of the real template: the amazon-ebs source with realistic variables
//! passes offline, a missing required variable fails, and unsafe request values are refused;
//! the request's translation into variables and its bake key.

mod packer_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use packer_support::workspace_root;
use slipway_bake::packer::validate;
use slipway_bake::{
    AmazonEbsSource, BakeError, BakeRequest, BakeSource, Communicator, DockerSource, SourceAmi,
};

fn amazon_request() -> BakeRequest {
    let root = workspace_root();
    BakeRequest {
        packer: PathBuf::from("packer"),
        template: root.join("packer/slipway.json"),
        playbook_dir: root.join("ansible"),
        source: BakeSource::AmazonEbs(AmazonEbsSource {
            region: "eu-west-1".into(),
            source_ami: SourceAmi::Filter {
                owners: vec!["136693071363".into()],
                name: "debian-12-amd64-*".into(),
            },
            instance_type: "t3.small".into(),
            subnet_id: Some("subnet-0a1b2c3d4e5f67890".into()),
            security_group_ids: Vec::new(),
            iam_instance_profile: None,
            ssh_username: "admin".into(),
            volume_size: None,
            encrypted: false,
            kms_key_id: None,
            tags: BTreeMap::new(),
            endpoint_url: None,
            communicator: Communicator::Ssh,
            bake_key: "0123abcd".into(),
        }),
        app: "hello".into(),
        package: "hello".into(),
        version: "42".into(),
        release: 42,
        commit: "9fceb02d0ae598e95dc970b74767f19372d61af8".into(),
        apt_url: "https://slipway.example.com/apt/".into(),
        apt_key_path: PathBuf::from("/var/lib/slipway/apt/key.gpg"),
        security_updates: true,
        bake_id: "hello-v42-7".into(),
        timeout: Duration::from_secs(1800),
        env: BTreeMap::new(),
        team: None,
        scratch_dir: std::env::temp_dir(),
        provisioning: slipway_bake::DEFAULT_PROVISIONING.to_string(),
    }
}

#[tokio::test]
async fn the_amazon_ebs_source_validates_offline_with_realistic_variables() {
    let request = amazon_request();
    // No AWS credentials or endpoint: validate must not need them.
    let mut offline = request.clone();
    offline
        .env
        .insert("AWS_ACCESS_KEY_ID".into(), String::new());
    offline
        .env
        .insert("AWS_SECRET_ACCESS_KEY".into(), String::new());
    offline
        .env
        .insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
    validate(&offline).await.unwrap();
    assert_eq!(request.artifact_name(), "hello-v42");
}

#[tokio::test]
async fn the_docker_source_validates() {
    let mut request = amazon_request();
    request.source = BakeSource::Docker(DockerSource {
        base_image: "slipway/debian:bookworm".into(),
        image_repository: "slipway/hello".into(),
        tag: "v42".into(),
        command: vec!["/usr/bin/hello".into()],
        exposed_ports: vec![8080],
        bake_key: "0123abcd".into(),
    });
    validate(&request).await.unwrap();
    assert_eq!(request.artifact_name(), "slipway/hello:v42");
}

#[test]
fn a_missing_required_variable_fails_validation() {
    let request = amazon_request();
    let mut command = Command::new("packer");
    command
        .args(["validate", "-only=amazon-ebs"])
        .env("CHECKPOINT_DISABLE", "1");
    for (name, value) in request.variables() {
        if name != "commit" {
            command.arg("-var").arg(format!("{name}={value}"));
        }
    }
    let output = command.arg(&request.template).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("required variable not set: commit"), "{text}");
}

#[tokio::test]
async fn a_missing_playbook_fails_validation_naming_it() {
    let mut request = amazon_request();
    request.playbook_dir = PathBuf::from("/nonexistent/ansible");
    match validate(&request).await {
        Err(BakeError::InvalidTemplate { output, .. }) => {
            assert!(output.contains("/nonexistent/ansible/bake.yml"), "{output}")
        }
        other => panic!("expected an invalid template, got {other:?}"),
    }
}

#[tokio::test]
async fn values_the_template_would_misread_are_refused_before_packer_runs() {
    let mut request = amazon_request();
    request.version = "1 --extra-vars evil=1".into();
    match validate(&request).await {
        Err(BakeError::InvalidRequest { field, .. }) => assert_eq!(field, "version"),
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

#[test]
fn the_docker_settings_become_template_variables() {
    let mut request = amazon_request();
    request.source = BakeSource::Docker(DockerSource {
        base_image: "slipway/hello:v41".into(),
        image_repository: "slipway/hello".into(),
        tag: "v42".into(),
        command: vec!["/usr/bin/hello".into(), "--port".into(), "8080".into()],
        exposed_ports: vec![8080, 9090],
        bake_key: "0123abcd".into(),
    });
    let variables: BTreeMap<_, _> = request.variables().into_iter().collect();
    assert_eq!(
        variables["docker_cmd"],
        r#"["/usr/bin/hello","--port","8080"]"#
    );
    assert_eq!(variables["docker_expose"], "8080 9090");
    assert_eq!(variables["base_image"], "slipway/hello:v41");
    assert_eq!(
        variables["playbook_file"],
        request.playbook_dir.join("bake.yml").display().to_string()
    );
    assert!(
        !variables.contains_key("region"),
        "the other source keeps its defaults"
    );
    // The bake key ignores the per-bake id and file locations, not what shapes the image.
    let names: Vec<&str> = request
        .key_variables()
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert!(!names.contains(&"bake_id") && !names.contains(&"apt_key_file"));
    // The image carries its key as a label; the key cannot cover itself.
    assert_eq!(variables["bake_key"], "0123abcd");
    assert!(!names.contains(&"bake_key"));
    assert!(names.contains(&"docker_cmd") && names.contains(&"security_updates"));
}

#[test]
fn a_request_reads_its_template_playbooks_and_key_for_the_bake_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut request = amazon_request();
    request.apt_key_path = dir.path().join("key.gpg");
    std::fs::write(&request.apt_key_path, b"key").unwrap();
    let key = request.bake_key("ami-0123", &"ab".repeat(32)).unwrap();
    assert_eq!(key, request.bake_key("ami-0123", &"ab".repeat(32)).unwrap());
    request.bake_id = "another-attempt".into();
    assert_eq!(key, request.bake_key("ami-0123", &"ab".repeat(32)).unwrap());
    request.release = 43;
    assert_ne!(key, request.bake_key("ami-0123", &"ab".repeat(32)).unwrap());
}

#[tokio::test]
async fn a_missing_packer_binary_is_named_as_missing() {
    let mut request = amazon_request();
    request.packer = PathBuf::from("/nonexistent/bin/packer");
    let error = validate(&request)
        .await
        .expect_err("there is no such binary");
    assert!(
        matches!(&error, BakeError::PackerMissing { program } if program == &request.packer),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "Packer is not installed: `/nonexistent/bin/packer` was not found"
    );
}
