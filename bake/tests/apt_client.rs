//! The headline check: a real Debian apt client in a container installs from the repository
//! served over HTTP, sees every version, and refuses an index altered after signing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{hello_definition, run};
use slipway_bake::{deb, AptRepository, Signer};

const IMAGE: &str = "slipway/debian:bookworm";

/// `python3 -m http.server` on an ephemeral loopback port, stopped on drop.
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    fn serve(dir: &Path) -> HttpServer {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "0",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting python3 http.server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split(" port ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|p| p.parse().ok());
        HttpServer {
            child,
            port: port.unwrap_or_else(|| panic!("unexpected http.server banner: {line}")),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A labelled container on the host network, removed on drop.
struct Container {
    id: String,
}

impl Container {
    fn start(test_id: &str, key: &Path) -> Container {
        let mount = format!("{}:/etc/apt/keyrings/slipway.gpg:ro", key.display());
        let label = format!("slipway.test={test_id}");
        let (ok, output) = run(
            "docker",
            &[
                "run",
                "-d",
                "--network",
                "host",
                "--label",
                &label,
                "-v",
                &mount,
                IMAGE,
                "sleep",
                "infinity",
            ],
        );
        assert!(ok, "docker run: {output}");
        Container {
            id: output.trim().to_string(),
        }
    }

    /// Runs a shell command inside; returns (success, stdout + stderr).
    fn sh(&self, script: &str) -> (bool, String) {
        run("docker", &["exec", &self.id, "sh", "-c", script])
    }

    fn ok(&self, script: &str) -> String {
        let (ok, output) = self.sh(script);
        assert!(ok, "`{script}` failed:\n{output}");
        output
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.id]);
    }
}

fn publish_hello(repository: &AptRepository, workspace: &Path, version: &str) {
    let package = deb::build(&hello_definition(workspace, version), workspace, workspace).unwrap();
    repository.publish(&package.path, &package.info).unwrap();
}

fn assert_clean_update(container: &Container) {
    let output = container.ok("apt-get update 2>&1");
    let noisy: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("W:") || l.starts_with("E:") || l.starts_with("Err:"))
        .collect();
    assert!(noisy.is_empty(), "apt-get update complained:\n{output}");
}

/// Appends a byte to `path`, through any hard links (by-hash) it has.
fn tamper(path: &Path) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    std::io::Write::write_all(&mut file, b"\n").unwrap();
}

#[test]
fn apt_get_installs_every_published_version_and_rejects_altered_indexes() {
    let (data, workspace) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let signer = Signer::open_or_create(
        &data.path().join("gpg"),
        "Slipway apt <apt@slipway.example>",
    )
    .unwrap();
    let repository = AptRepository::open(&data.path().join("apt"), signer).unwrap();
    publish_hello(&repository, workspace.path(), "1");
    let server = HttpServer::serve(repository.root());
    let test_id = format!("bake-apt-{}", std::process::id());
    let container = Container::start(&test_id, &repository.key_path());
    container.ok(&format!(
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* && echo 'deb [signed-by=/etc/apt/keyrings/slipway.gpg] http://127.0.0.1:{}/ stable main' > /etc/apt/sources.list.d/slipway.list",
        server.port
    ));

    assert_clean_update(&container);
    container.ok("DEBIAN_FRONTEND=noninteractive apt-get install -y hello=1");
    assert_eq!(container.ok("hello"), "hello from 1\n");
    assert_eq!(
        container.ok("stat -c '%a %U %G' /etc/hello/secret.conf"),
        "640 root www-data\n"
    );
    assert_eq!(
        container.ok("cat /var/lib/hello/postinst-ran"),
        "configured\n"
    );
    assert!(container
        .ok("test -f /lib/systemd/system/hello.service && echo present")
        .contains("present"));

    publish_hello(&repository, workspace.path(), "2");
    assert_clean_update(&container);
    let madison = container.ok("apt-cache madison hello");
    assert!(
        madison.contains(" 1 |") && madison.contains(" 2 |"),
        "both versions listed:\n{madison}"
    );
    container.ok("DEBIAN_FRONTEND=noninteractive apt-get install -y hello=2");
    assert_eq!(container.ok("hello"), "hello from 2\n");
    container.ok("DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades hello=1");
    assert_eq!(container.ok("hello"), "hello from 1\n");

    // An index altered after signing: its hash no longer matches the signed Release.
    let stable = repository.root().join("dists/stable");
    tamper(&stable.join("main/binary-amd64/Packages"));
    tamper(&stable.join("main/binary-amd64/Packages.gz"));
    let (ok, output) = container.sh("rm -rf /var/lib/apt/lists/* && apt-get update 2>&1");
    assert!(
        !ok && (output.contains("Hash Sum mismatch") || output.contains("unexpected size")),
        "{output}"
    );

    // A Release altered after signing: the signature no longer verifies.
    let in_release = stable.join("InRelease");
    let altered = std::fs::read_to_string(&in_release)
        .unwrap()
        .replace("Label: Slipway", "Label: Mallory");
    std::fs::write(&in_release, altered).unwrap();
    let (ok, output) = container.sh("rm -rf /var/lib/apt/lists/* && apt-get update 2>&1");
    assert!(!ok && output.contains("BADSIG"), "{output}");
}
