//! The apt repository in an S3 bucket (`[apt] s3`, moto here): two servers on one database
//! that share no directory publish in turn, then at once, into one bucket, losing no package,
//! and serve the same signed repository from it, so apt-get installs the newest release
//! through either; a third server with an empty data directory serves it too, and its
//! retention removes old versions from the bucket; a bucket that is not there, or one holding
//! another installation's repository, stops a server at its start, saying why; and a bucket
//! that goes away shows in the health API while `/apt/` answers 502.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::aws_deploy::moto::{Moto, REGION};
use crate::aws_deploy::AWS_VARIABLES;
use crate::builds::{commit_all, push_queued};
use crate::deploy::Api;
use crate::helpers::{read_token, test_database};
use crate::server_process;
use crate::servers::{apt_get, published, quick_repository};

const SECRET: &str = "apt-s3-secret";
const BUCKET: &str = "slipway-apt";
const PREFIX: &str = "acme/apt/";

/// A server directory whose slipway.toml puts the repository in `bucket` of `moto`.
fn server_dir(
    database_url: &str,
    moto: &Moto,
    bucket: &str,
    repo: &Path,
    extra: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "database_url = \"{database_url}\"\n{extra}\n[apt]\ns3 = {{ bucket = \"{bucket}\", prefix = \"/{PREFIX}\", endpoint_url = \"{}\", region = \"{REGION}\" }}\n[[projects]]\nname = \"shared\"\nrepository = \"acme/shared\"\nclone_url = \"file://{}\"\nwebhook_secret = \"{SECRET}\"\nbranches = \"^main$\"\n",
        moto.endpoint,
        repo.display()
    );
    std::fs::write(dir.path().join("slipway.toml"), text).unwrap();
    dir
}

/// Waits until release `version` of the project is published; the release.
async fn wait_published(api: &Api, version: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let releases = api.get("/projects/shared/releases").await;
        let release = releases
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == version)
            .cloned();
        match release {
            Some(release) if release["status"] == "published" => return release,
            Some(release) if release["status"] == "failed" => panic!("{release}"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{version} unpublished: {releases}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `builds` have ended and no release is packaging; `(number, commit)` of each
/// release, oldest first, every one published.
async fn wait_settled(api: &Api, builds: &[i64]) -> Vec<(i64, String)> {
    let deadline = Instant::now() + Duration::from_secs(300);
    for number in builds {
        loop {
            let build = api.get(&format!("/projects/shared/builds/{number}")).await;
            match build["status"].as_str() {
                Some("passed") => break,
                Some("queued" | "running") => {}
                _ => panic!("{build}"),
            }
            assert!(Instant::now() < deadline, "{build}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    loop {
        let releases = api.get("/projects/shared/releases").await;
        let releases = releases.as_array().unwrap();
        if releases.iter().all(|r| r["status"] != "packaging") {
            return published(releases);
        }
        assert!(Instant::now() < deadline, "{releases:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET path` from the server at `address`, as bytes.
async fn fetch(address: &str, path: &str) -> Vec<u8> {
    let response = reqwest::get(format!("{address}{path}")).await.unwrap();
    assert_eq!(response.status(), 200, "GET {address}{path}");
    response.bytes().await.unwrap().to_vec()
}

/// The keys of the bucket, without the repository's prefix (asserted on every one).
async fn keys(s3: &aws_sdk_s3::Client) -> BTreeSet<String> {
    let listed = s3.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    listed
        .contents()
        .iter()
        .map(|object| {
            let key = object.key().unwrap();
            key.strip_prefix(PREFIX)
                .unwrap_or_else(|| panic!("{key} is outside the prefix"))
                .to_owned()
        })
        .collect()
}

async fn object(s3: &aws_sdk_s3::Client, relative: &str) -> Vec<u8> {
    let object = s3
        .get_object()
        .bucket(BUCKET)
        .key(format!("{PREFIX}{relative}"))
        .send()
        .await
        .unwrap();
    object.body.collect().await.unwrap().into_bytes().to_vec()
}

/// A client of moto's S3 and the bucket `name` made there, in [`REGION`].
pub(crate) async fn bucket(moto: &Moto, name: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&moto.config().await)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket(name)
        .create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(REGION))
                .build(),
        )
        .send()
        .await
        .unwrap();
    s3
}

fn deb(version: i64) -> String {
    format!("pool/main/s/shared/shared_{version}_all.deb")
}

// Multi-threaded: the servers build while the test waits on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sharing_no_directory_publish_to_and_serve_one_repository_in_a_bucket() {
    let moto = Moto::start().await;
    let s3 = bucket(&moto, BUCKET).await;
    let repo = quick_repository();
    let database_url = test_database();
    let dirs = [
        server_dir(&database_url, &moto, BUCKET, repo.path(), ""),
        server_dir(&database_url, &moto, BUCKET, repo.path(), ""),
    ];
    let first = server_process::start_with_env(dirs[0].path(), &AWS_VARIABLES);
    let second = server_process::start_with_env(dirs[1].path(), &AWS_VARIABLES);
    let token = read_token(&dirs[0].path().join(".slipway"));
    let servers = [&first, &second];
    let api = Api::at(&first.address, &token);

    // Four releases, published in turn by one server then the other; then four pushes at
    // once, two to each server, whose releases the servers publish concurrently.
    let mut written = BTreeMap::new();
    let mut builds = Vec::new();
    for n in 1..=8i64 {
        std::fs::write(repo.path().join("app.txt"), format!("{n}\n")).unwrap();
        let commit = commit_all(repo.path(), &format!("change {n}"));
        written.insert(commit.clone(), n);
        builds.push(
            push_queued(
                &servers[(n % 2) as usize].address,
                ("acme/shared", SECRET),
                "main",
                &commit,
            )
            .await,
        );
        if n <= 4 {
            wait_published(&api, &format!("v{n}")).await;
        }
    }
    let releases = wait_settled(&api, &builds).await;
    let count = releases.len() as i64;
    assert!(count >= 5, "{releases:?}");
    assert_eq!(
        releases.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        (1..=count).collect::<Vec<_>>(),
        "every release is published, numbered without a gap"
    );
    let newest = written[&releases[count as usize - 1].1];
    let stored = keys(&s3).await;
    for file in [
        "key.gpg",
        "db/catalogue.json",
        "dists/stable/InRelease",
        "dists/stable/Release",
        "dists/stable/Release.gpg",
        "dists/stable/main/binary-amd64/Packages",
        "dists/stable/main/binary-amd64/Packages.gz",
    ] {
        assert!(stored.contains(file), "{file} is in the bucket: {stored:?}");
    }
    let packages =
        String::from_utf8(object(&s3, "dists/stable/main/binary-amd64/Packages").await).unwrap();
    for version in 1..=count {
        assert!(stored.contains(&deb(version)), "{stored:?}");
        assert!(
            packages.contains(&format!("\nVersion: {version}\n")),
            "no publish lost another's: {packages}"
        );
    }
    let by_hash = stored.iter().filter(|k| k.contains("/by-hash/")).count();
    assert!(
        (2..=4).contains(&by_hash),
        "the live and the previous index by hash, no older: {stored:?}"
    );

    // Each server serves the bucket's bytes, whichever published them.
    for path in [
        "dists/stable/InRelease",
        "dists/stable/main/binary-amd64/Packages",
        "key.gpg",
        &deb(1),
        &deb(count),
    ] {
        let kept = object(&s3, path).await;
        for server in servers {
            assert_eq!(
                fetch(&server.address, &format!("/apt/{path}")).await,
                kept,
                "{path}"
            );
        }
    }
    for path in [
        "/apt/db/catalogue.json",
        "/apt/dists/../db/catalogue.json",
        "/apt/pool/none.deb",
    ] {
        let response = reqwest::get(format!("{}{path}", first.address))
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let key = fetch(&first.address, "/apt/key.gpg").await;
    for server in servers {
        let text = apt_get(
            &server.address,
            &key,
            "apt-get install -y -q shared >/dev/null 2>&1\necho \"installed $(cat /usr/share/shared/app.txt)\"",
        );
        assert!(
            text.contains(&format!("\ninstalled {newest}\n")),
            "the newest release installs: {text}"
        );
    }
    drop(first);
    drop(second);

    // A third server with an empty data directory: it never had a package, yet serves them
    // all; its retention (keep the newest) removes the others from the bucket.
    let third_dir = server_dir(
        &database_url,
        &moto,
        BUCKET,
        repo.path(),
        "[retention]\napt_keep = 1",
    );
    let third = server_process::start_with_env(third_dir.path(), &AWS_VARIABLES);
    assert!(!third_dir.path().join(".slipway/apt").join(deb(1)).exists());
    let started = Instant::now();
    loop {
        let stored = keys(&s3).await;
        if (1..count).all(|version| !stored.contains(&deb(version))) {
            assert!(stored.contains(&deb(count)), "{stored:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{stored:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let packages = String::from_utf8(
        fetch(
            &third.address,
            "/apt/dists/stable/main/binary-amd64/Packages",
        )
        .await,
    )
    .unwrap();
    let versions: Vec<&str> = packages
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .collect();
    assert_eq!(versions, [count.to_string()], "{packages}");
    let text = apt_get(&third.address, &key, "apt-cache madison shared");
    let listed: Vec<&str> = text.lines().filter(|l| l.contains(" | ")).collect();
    assert_eq!(listed.len(), 1, "only the newest is left: {text}");
    assert!(listed[0].contains(&format!(" {count} ")), "{text}");

    // A bucket that is not there, or that holds another installation's repository: the server
    // stops at its start and says why.
    let wrong = server_dir(&database_url, &moto, "no-such-bucket", repo.path(), "");
    let said = refused(wrong.path());
    assert!(
        said.contains("cannot reach the apt bucket s3://no-such-bucket/acme/apt/"),
        "{said}"
    );
    let other = server_dir(&test_database(), &moto, BUCKET, repo.path(), "");
    let said = refused(other.path());
    assert!(
        said.contains("s3://slipway-apt/acme/apt/ holds a repository signed with another key"),
        "{said}"
    );
    assert_eq!(
        object(&s3, "key.gpg").await,
        key,
        "the bucket's key is untouched"
    );

    // The bucket going away: the health API says so, and /apt/ answers 502, not stale files.
    let third_api = Api::at(&third.address, &token);
    let health = third_api.get("/health").await;
    assert_eq!(health["apt"]["status"], "ok", "{health}");
    assert_eq!(
        health["apt"]["bucket"], "s3://slipway-apt/acme/apt/",
        "{health}"
    );
    drop(moto);
    let health = third_api.get("/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["apt"]["status"], "unavailable", "{health}");
    let response = reqwest::get(format!("{}/apt/dists/stable/InRelease", third.address))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
}

/// Starts a server in `dir` that must exit before it listens; what it said.
fn refused(dir: &Path) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .envs(AWS_VARIABLES)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}
