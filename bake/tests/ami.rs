//! AMI bakes through Packer's `amazon-ebs` source against moto on loopback (communicator
//! `none`: moto runs no machine, so nothing connects anywhere and nothing is provisioned; the
//! docker source proves the playbook). A bake's AMI and snapshot carry the release's tags; a
//! failed bake and the reaper (after Packer was killed mid-bake) leave nothing behind;
//! retention deregisters exactly the AMIs not kept, with their snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, InstanceStateName};
use slipway_bake::ami::{AmazonEbsSource, BAKE_TAG};
use slipway_bake::{bake, AmiAccount, BakeError, BakeRequest, BakeSource, Communicator, SourceAmi};
use tokio_util::sync::CancellationToken;

/// Where scripts/bootstrap installs moto; `SLIPWAY_MOTO_SERVER` names another.
const MOTO_SERVER: &str = "/var/tmp/slipway/venv/bin/moto_server";
const REGION: &str = "eu-west-1";
/// An AMI moto lists in every region.
const SOURCE_AMI: &str = "ami-785db401";

struct Moto {
    server: std::process::Child,
    endpoint: String,
}

impl Moto {
    async fn start() -> Moto {
        // Dummy credentials, read by the SDK and by Packer from the environment as in
        // production (never from arguments); the same values in every test of this binary.
        static CREDENTIALS: Once = Once::new();
        CREDENTIALS.call_once(|| {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let program = std::env::var("SLIPWAY_MOTO_SERVER").unwrap_or(MOTO_SERVER.to_owned());
        let server = std::process::Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts (scripts/bootstrap installs it)");
        let moto = Moto {
            server,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto_server did not listen on port {port} within 20 s");
    }

    async fn ec2(&self) -> aws_sdk_ec2::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .load()
            .await;
        aws_sdk_ec2::Client::new(&config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn request(moto: &Moto, release: u64, source_ami: &str, bake_id: &str) -> BakeRequest {
    let root = workspace_root();
    BakeRequest {
        packer: PathBuf::from("packer"),
        template: root.join("packer/slipway.json"),
        playbook_dir: root.join("ansible"),
        source: BakeSource::AmazonEbs(AmazonEbsSource {
            region: REGION.into(),
            source_ami: SourceAmi::Id(source_ami.into()),
            instance_type: "t3.small".into(),
            subnet_id: None,
            security_group_ids: Vec::new(),
            iam_instance_profile: None,
            ssh_username: "admin".into(),
            volume_size: Some(12),
            encrypted: false,
            kms_key_id: None,
            tags: BTreeMap::from([("team".to_string(), "payments".to_string())]),
            endpoint_url: Some(moto.endpoint.clone()),
            communicator: Communicator::None,
            bake_key: format!("key{release:04}"),
        }),
        app: "hello".into(),
        package: "hello".into(),
        version: format!("{release}"),
        release,
        commit: format!("c0ffee{release:04}"),
        // Never fetched: with communicator `none` no provisioner reaches the machine.
        apt_url: "http://127.0.0.1:9/apt/".into(),
        apt_key_path: root.join("ansible/no_such_key.gpg"),
        security_updates: false,
        bake_id: bake_id.into(),
        timeout: Duration::from_secs(120),
        env: BTreeMap::new(),
        team: None,
        scratch_dir: std::env::temp_dir(),
        provisioning: slipway_bake::DEFAULT_PROVISIONING.to_string(),
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

async fn docker() -> bollard::Docker {
    // An AMI bake never calls dockerd; `bake` takes a client for the docker source.
    bollard::Docker::connect_with_defaults().expect("a Docker client")
}

/// What a bake could leave in the account.
#[derive(Debug, PartialEq, Eq)]
struct Census {
    live_instances: usize,
    key_pairs: usize,
    security_groups: usize,
    own_images: usize,
    own_snapshots: usize,
    volumes: usize,
}

async fn census(ec2: &aws_sdk_ec2::Client) -> Census {
    let instances = ec2.describe_instances().send().await.unwrap();
    let live_instances = instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
        .count();
    Census {
        live_instances,
        key_pairs: ec2
            .describe_key_pairs()
            .send()
            .await
            .unwrap()
            .key_pairs()
            .len(),
        security_groups: ec2
            .describe_security_groups()
            .send()
            .await
            .unwrap()
            .security_groups()
            .len(),
        own_images: ec2
            .describe_images()
            .owners("self")
            .send()
            .await
            .unwrap()
            .images()
            .len(),
        own_snapshots: ec2
            .describe_snapshots()
            .owner_ids("self")
            .send()
            .await
            .unwrap()
            .snapshots()
            .len(),
        volumes: ec2.describe_volumes().send().await.unwrap().volumes().len(),
    }
}

fn tags_of(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_owned(),
                t.value().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn bake_release(moto: &Moto, release: u64, bake_id: &str) -> (String, Vec<String>) {
    let request = request(moto, release, SOURCE_AMI, bake_id);
    let mut lines = Vec::new();
    let artifact = bake(
        &request,
        &docker().await,
        &mut |line: &str| lines.push(line.to_owned()),
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("bake of v{release}: {e}\n{}", lines.join("\n")));
    (artifact.id, lines)
}

#[tokio::test]
async fn a_baked_ami_and_its_snapshot_carry_the_release_and_nothing_else_is_left() {
    let moto = Moto::start().await;
    let ec2 = moto.ec2().await;
    let before = census(&ec2).await;
    let bake_id = unique("ami");
    let started = Instant::now();
    let (ami, lines) = bake_release(&moto, 7, &bake_id).await;
    eprintln!("AMI bake against moto took {:?}", started.elapsed());
    assert!(ami.starts_with("ami-"), "{ami}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("Found Image ID: {SOURCE_AMI}"))),
        "Packer's progress reaches the observer:\n{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|l| l.contains("PLAY [")),
        "no playbook runs with communicator none"
    );

    let images = ec2.describe_images().image_ids(&ami).send().await.unwrap();
    let image = &images.images()[0];
    assert_eq!(image.name(), Some("hello-v7"));
    let tags = tags_of(image.tags());
    for (key, value) in [
        ("project", "hello"),
        ("release", "v7"),
        ("commit", "c0ffee0007"),
        ("bake_key", "key0007"),
        (BAKE_TAG, bake_id.as_str()),
        ("team", "payments"),
        ("source_ami", SOURCE_AMI),
    ] {
        assert_eq!(
            tags.get(key).map(String::as_str),
            Some(value),
            "{key}: {tags:?}"
        );
    }
    let snapshot = image.block_device_mappings()[0]
        .ebs()
        .and_then(|e| e.snapshot_id())
        .expect("the AMI has a snapshot")
        .to_owned();
    let snapshots = ec2
        .describe_snapshots()
        .snapshot_ids(&snapshot)
        .send()
        .await
        .unwrap();
    let snapshot_tags = tags_of(snapshots.snapshots()[0].tags());
    for (key, value) in [
        ("project", "hello"),
        ("release", "v7"),
        ("commit", "c0ffee0007"),
        ("bake_key", "key0007"),
        (BAKE_TAG, bake_id.as_str()),
    ] {
        assert_eq!(
            snapshot_tags.get(key).map(String::as_str),
            Some(value),
            "{key}: {snapshot_tags:?}"
        );
    }

    // Only the AMI and its snapshot remain: no instance, key pair, group or volume.
    let after = census(&ec2).await;
    assert_eq!(
        after,
        Census {
            own_images: before.own_images + 1,
            own_snapshots: before.own_snapshots + 1,
            ..before
        }
    );
}

#[tokio::test]
async fn a_bake_from_a_missing_source_ami_fails_naming_it_and_leaves_nothing() {
    let moto = Moto::start().await;
    let ec2 = moto.ec2().await;
    let before = census(&ec2).await;
    let request = request(&moto, 3, "ami-0000000000deadbee", &unique("missing"));
    let mut lines = Vec::new();
    let error = bake(
        &request,
        &docker().await,
        &mut |line: &str| lines.push(line.to_owned()),
        &CancellationToken::new(),
    )
    .await
    .expect_err("no such source AMI");
    let BakeError::BuildFailed { reason, .. } = &error else {
        panic!("a build failure, not {error}");
    };
    assert!(
        reason.contains("ami-0000000000deadbee"),
        "the reason names the AMI: {reason}"
    );
    assert_eq!(census(&ec2).await, before);
}

/// Freezes the Packer of `bake_id` (and everything in its process group), as a crash of the
/// server would leave it mid-bake; the bake's future is then dropped, which kills the group.
fn freeze_packer(bake_id: &str) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("packer\0build") && cmdline.contains(&format!("bake_id={bake_id}\0"))
        {
            nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGSTOP,
            )
            .unwrap();
            return;
        }
    }
    panic!("no packer process of bake {bake_id}");
}

#[tokio::test]
async fn the_reaper_removes_what_a_killed_bake_left() {
    let moto = Moto::start().await;
    let ec2 = moto.ec2().await;
    let before = census(&ec2).await;
    let bake_id = unique("killed");
    let request = request(&moto, 5, SOURCE_AMI, &bake_id);
    let docker = docker().await;
    let cancel = CancellationToken::new();
    let (launched_tx, launched_rx) = tokio::sync::oneshot::channel();
    let mut launched_tx = Some(launched_tx);
    let mut observer = |line: &str| {
        // The instance runs, the key pair and group exist; the AMI is not made yet.
        if line.contains("Instance ID:") {
            freeze_packer(&bake_id);
            if let Some(tx) = launched_tx.take() {
                let _ = tx.send(());
            }
        }
    };
    tokio::select! {
        result = bake(&request, &docker, &mut observer, &cancel) => {
            panic!("the bake ended before it was killed: {result:?}")
        }
        _ = launched_rx => {}
    }
    // The bake's future is gone: its Packer got SIGKILL, like a server killed with -9.

    let left = census(&ec2).await;
    assert_eq!(left.live_instances, before.live_instances + 1, "{left:?}");
    assert_eq!(left.key_pairs, before.key_pairs + 1, "{left:?}");
    assert_eq!(left.security_groups, before.security_groups + 1, "{left:?}");

    let account = AmiAccount::connect(REGION, Some(&moto.endpoint)).await;
    let reaped = account.reap_bake(&bake_id, &BTreeSet::new()).await.unwrap();
    assert_eq!(reaped.instances.len(), 1, "{reaped:?}");
    assert_eq!(reaped.key_pairs, vec![format!("slipway-bake-{bake_id}")]);
    assert_eq!(reaped.security_groups.len(), 1, "{reaped:?}");
    assert_eq!(census(&ec2).await, before);
    assert!(
        account
            .reap_bake(&bake_id, &BTreeSet::new())
            .await
            .unwrap()
            .is_empty(),
        "reaping twice finds nothing"
    );
}

#[tokio::test]
async fn retention_deregisters_exactly_the_amis_not_kept_with_their_snapshots() {
    let moto = Moto::start().await;
    let ec2 = moto.ec2().await;
    let run = unique("keep");
    let mut amis = Vec::new();
    for release in 1..=4 {
        let (ami, _) = bake_release(&moto, release, &format!("{run}-v{release}")).await;
        amis.push(ami);
    }
    let snapshot_of = |ami: &str| {
        let ec2 = ec2.clone();
        let ami = ami.to_owned();
        async move {
            let images = ec2.describe_images().image_ids(ami).send().await.unwrap();
            images.images()[0].block_device_mappings()[0]
                .ebs()
                .and_then(|e| e.snapshot_id())
                .unwrap()
                .to_owned()
        }
    };
    let mut snapshots = Vec::new();
    for ami in &amis {
        snapshots.push(snapshot_of(ami).await);
    }
    // v2 is live (say), v4 the newest: both kept; v1 and v3 go.
    let keep: BTreeSet<String> = [amis[1].clone(), amis[3].clone()].into();
    let account = AmiAccount::connect(REGION, Some(&moto.endpoint)).await;
    let retained = account.retain("hello", &keep).await.unwrap();
    let mut deregistered = retained.deregistered.clone();
    deregistered.sort();
    let mut expected = vec![amis[0].clone(), amis[2].clone()];
    expected.sort();
    assert_eq!(deregistered, expected);
    let mut deleted = retained.deleted_snapshots.clone();
    deleted.sort();
    let mut expected_snapshots = vec![snapshots[0].clone(), snapshots[2].clone()];
    expected_snapshots.sort();
    assert_eq!(deleted, expected_snapshots);

    let remaining: BTreeSet<String> = ec2
        .describe_images()
        .owners("self")
        .filters(
            Filter::builder()
                .name("tag:project")
                .values("hello")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .filter_map(|i| i.image_id().map(str::to_owned))
        .collect();
    assert_eq!(remaining, keep);
    let snapshots_left: BTreeSet<String> = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_owned))
        .collect();
    assert!(snapshots_left.contains(&snapshots[1]) && snapshots_left.contains(&snapshots[3]));
    assert!(!snapshots_left.contains(&snapshots[0]) && !snapshots_left.contains(&snapshots[2]));
    // Another project's AMIs are not this project's to delete.
    assert_eq!(
        account.retain("other", &BTreeSet::new()).await.unwrap(),
        Default::default()
    );
    assert_eq!(
        account.retain("hello", &keep).await.unwrap(),
        Default::default(),
        "a second pass deletes nothing"
    );
}

#[tokio::test]
async fn a_failed_rebake_under_the_same_bake_id_keeps_the_earlier_ami() {
    let moto = Moto::start().await;
    let ec2 = moto.ec2().await;
    let bake_id = unique("rebake");
    let (ami, _) = bake_release(&moto, 9, &bake_id).await;
    let request = request(&moto, 9, "ami-0000000000deadbee", &bake_id);
    bake(
        &request,
        &docker().await,
        &mut |_: &str| {},
        &CancellationToken::new(),
    )
    .await
    .expect_err("no such source AMI");
    let images = ec2.describe_images().image_ids(&ami).send().await.unwrap();
    assert_eq!(images.images().len(), 1, "the earlier AMI {ami} stays");
}

#[tokio::test]
async fn a_finished_ami_is_copied_to_another_region_with_its_tags_and_reaped_there_by_its_bake() {
    let moto = Moto::start().await;
    let bake_id = unique("copy");
    let (ami, _) = bake_release(&moto, 8, &bake_id).await;
    let source = AmiAccount::connect(REGION, Some(&moto.endpoint)).await;
    let target = AmiAccount::connect("us-east-1", Some(&moto.endpoint)).await;

    let copy = target
        .copy_from(&source, &ami, Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(copy, ami);
    let ec2 = aws_sdk_ec2::Client::new(
        &aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&moto.endpoint)
            .load()
            .await,
    );
    let images = ec2.describe_images().image_ids(&copy).send().await.unwrap();
    let image = &images.images()[0];
    assert_eq!(image.name(), Some("hello-v8"));
    let tags = tags_of(image.tags());
    for (key, value) in [
        ("project", "hello"),
        ("release", "v8"),
        ("commit", "c0ffee0008"),
        ("bake_key", "key0008"),
        (BAKE_TAG, bake_id.as_str()),
        ("team", "payments"),
    ] {
        assert_eq!(
            tags.get(key).map(String::as_str),
            Some(value),
            "{key}: {tags:?}"
        );
    }
    // The copy counts as the project's finished AMI there, and not in the source region.
    let there = target.project_amis("hello").await.unwrap();
    assert_eq!(
        there
            .iter()
            .map(|a| (a.id.as_str(), a.finished()))
            .collect::<Vec<_>>(),
        [(copy.as_str(), true)]
    );
    assert!(!source
        .project_amis("hello")
        .await
        .unwrap()
        .iter()
        .any(|a| a.id == copy));

    // A crash's reaping in that region finds the copy by its bake's id.
    let reaped = target.reap_bake(&bake_id, &BTreeSet::new()).await.unwrap();
    assert_eq!(reaped.images, [copy]);
    assert!(target.project_amis("hello").await.unwrap().is_empty());

    // Only what Slipway baked and finished is copied.
    let error = target
        .copy_from(&source, SOURCE_AMI, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("carries no slipway_bake tag"),
        "{error}"
    );
}
