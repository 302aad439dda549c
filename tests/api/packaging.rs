//! Slipway's own package (`scripts/package`, with the binary under test): its files, its
//! conffile and unit, and a second server of an installation made as the docs say: `apt-get
//! install` of the package in a fresh bookworm container, plus the shared database URL and
//! apt directory in /etc/slipway/slipway.toml.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::free_port;
use crate::helpers::TestApp;

/// Runs `program` with `args`; its output, and panics with it when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_installs_with_apt_get_and_joins_the_installation_as_a_second_server() {
    let out = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package");
    let printed = run(
        script,
        &[
            "--binary",
            env!("CARGO_BIN_EXE_slipway"),
            "--version",
            "3",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    let deb = out.path().join("slipway_3_amd64.deb");
    assert!(printed.contains(deb.to_str().unwrap()), "{printed}");
    let deb_text = deb.to_str().unwrap();
    assert_eq!(
        run("dpkg-deb", &["-f", deb_text, "Package"]).trim(),
        "slipway"
    );
    assert_eq!(run("dpkg-deb", &["-f", deb_text, "Version"]).trim(), "3");
    let contents = run("dpkg-deb", &["-c", deb_text]);
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/slipway"),
        ("-rw-r--r--", "./usr/share/slipway/packer/slipway.json"),
        ("-rw-r--r--", "./usr/share/slipway/ansible/bake.yml"),
        ("-rw-r--r--", "./lib/systemd/system/slipway.service"),
        ("-rw-r-----", "./etc/slipway/slipway.toml"),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{mode} {path} in {contents}"
        );
    }
    let control = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &["-e", deb_text, control.path().to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(control.path().join("conffiles")).unwrap(),
        "/etc/slipway/slipway.toml\n"
    );

    // The first server of the installation, publishing to a directory both mount.
    let apt = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        apt.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let shared = format!("[apt]\ndir = \"{}\"\n", apt.path().display());
    let first = TestApp::spawn(&shared).await;
    let socket_dir = first
        .database_url
        .split_whitespace()
        .find_map(|part| part.strip_prefix("host="))
        .unwrap()
        .to_owned();
    let port = free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"/var/lib/slipway\"\ndatabase_url = \"{}\"\n{shared}",
        first.database_url
    );
    let config_file = out.path().join("slipway.toml");
    std::fs::write(&config_file, config).unwrap();
    let name = format!("slipway-package-test-{port}");
    // apt-get installs the package and what it depends on (from Debian), then the server
    // starts as the unit would start it.
    let install = "apt-get update -q >/dev/null && apt-get install -y -q /pkg/slipway_3_amd64.deb >/tmp/install.log 2>&1 \
         || { cat /tmp/install.log; exit 1; }\n\
         cp /pkg/slipway.toml /etc/slipway/slipway.toml\n\
         exec /usr/bin/slipway server --config /etc/slipway/slipway.toml";
    let container = Command::new("docker")
        .args(["run", "-d", "--rm", "--network", "host", "--name", &name])
        .args(["-v", &format!("{}:/pkg:ro", out.path().display())])
        .args([
            "-v",
            &format!("{}:{}", apt.path().display(), apt.path().display()),
        ])
        .args(["-v", &format!("{socket_dir}:{socket_dir}")])
        .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
        .args(["slipway/debian:bookworm", "sh", "-ec", install])
        .output()
        .unwrap();
    assert!(
        container.status.success(),
        "{}",
        String::from_utf8_lossy(&container.stderr)
    );
    let _removed = RemoveOnDrop(name.clone());
    let second = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let http = reqwest::Client::new();
    while http
        .get(format!("{second}/healthz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        let logs = Command::new("docker").args(["logs", &name]).output();
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the installed server did not answer: {:?}",
            logs.map(|l| String::from_utf8_lossy(&l.stdout).to_string()
                + &String::from_utf8_lossy(&l.stderr))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("apt-get install and start took {:?}", started.elapsed());

    // One installation: the second server answers to the first's token, lists both servers,
    // and serves the repository the first serves, signed with the same key.
    let servers: serde_json::Value = http
        .get(format!("{second}/api/v1/servers"))
        .bearer_auth(&first.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listening: Vec<&str> = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["live"] == true)
        .map(|s| s["listen"].as_str().unwrap())
        .collect();
    assert_eq!(listening.len(), 2, "{servers:#}");
    assert!(
        listening.contains(&format!("127.0.0.1:{port}").as_str()),
        "{servers:#}"
    );
    for path in ["/apt/dists/stable/InRelease", "/apt/key.gpg"] {
        let from_second = http
            .get(format!("{second}{path}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let from_first = first.get(path).await.bytes().await.unwrap();
        assert_eq!(from_first, from_second, "{path}");
    }
    first.stop().await;
}

/// Removes the container named so when dropped.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}
