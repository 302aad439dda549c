//! Fixtures for the Packer tests and the bake benchmark: a small Python web app packaged as a
//! .deb, published to a signed repository served on loopback, and bake requests for it.

#![allow(dead_code)] // the test binaries and the benchmark each use a different subset

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slipway_bake::{
    deb, AptRepository, BakeRequest, BakeSource, DockerSource, ExtraFile, MaintainerScripts,
    PackageDefinition, PackageFile, PackageInfo, Signer,
};

pub const BASE_IMAGE: &str = "slipway/debian:bookworm";

/// A client of the local dockerd (or `DOCKER_HOST`'s), its API version negotiated.
pub async fn local_docker() -> bollard::Docker {
    bollard::Docker::connect_with_defaults()
        .expect("a Docker client")
        .negotiate_version()
        .await
        .expect("dockerd answers")
}
pub const PACKAGE: &str = "bakeapp";

/// Answers every GET with the installed VERSION file's contents.
const APP: &str = r#"import http.server, sys
VERSION = open("/usr/share/bakeapp/VERSION").read().strip()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("bakeapp " + VERSION + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// One signed repository, served over HTTP on loopback, with the app's releases in it.
/// Dropping it stops the server and removes every image and container of its id.
pub struct Fixture {
    pub id: String,
    pub repository: AptRepository,
    server: Child,
    port: u16,
    data: tempfile::TempDir,
}

impl Fixture {
    pub fn new(prefix: &str) -> Fixture {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let id = format!("{prefix}-{}-{nanos}", std::process::id());
        let data = tempfile::tempdir().unwrap();
        let signer = Signer::open_or_create(
            &data.path().join("gpg"),
            "Slipway bake tests <bake@slipway.example>",
        )
        .unwrap();
        let repository = AptRepository::open(&data.path().join("apt"), signer).unwrap();
        let (server, port) = serve(repository.root());
        Fixture {
            id,
            repository,
            server,
            port,
            data,
        }
    }

    /// Builds and publishes version `version` of the app; returns its description.
    pub fn publish(&self, version: &str) -> PackageInfo {
        self.publish_depending(version, &[])
    }

    /// Like [`Fixture::publish`], with Debian packages the app depends on besides python3.
    pub fn publish_depending(&self, version: &str, depends: &[&str]) -> PackageInfo {
        let workspace = self.data.path().join(format!("workspace-{version}"));
        std::fs::create_dir_all(&workspace).unwrap();
        let mut definition = app_definition(&workspace, version);
        definition
            .depends
            .extend(depends.iter().map(|name| name.to_string()));
        let package = deb::build(&definition, &workspace, &workspace).unwrap();
        self.repository
            .publish(&package.path, &package.info)
            .unwrap();
        package.info
    }

    pub fn image_repository(&self) -> String {
        format!("slipway/bake-test-{}", self.id)
    }

    /// A docker-source bake of `version` as release `release`, from `base_image`, whose CMD
    /// serves on `app_port`.
    pub fn request(
        &self,
        release: u64,
        version: &str,
        base_image: &str,
        app_port: u16,
    ) -> BakeRequest {
        let root = workspace_root();
        BakeRequest {
            packer: PathBuf::from("packer"),
            template: root.join("packer/slipway.json"),
            playbook_dir: root.join("ansible"),
            source: BakeSource::Docker(DockerSource {
                base_image: base_image.to_string(),
                image_repository: self.image_repository(),
                tag: format!("v{release}"),
                command: vec![
                    "/usr/bin/python3".into(),
                    format!("/usr/lib/{PACKAGE}/app.py"),
                    app_port.to_string(),
                ],
                exposed_ports: vec![app_port],
                bake_key: String::new(),
            }),
            app: PACKAGE.into(),
            package: PACKAGE.into(),
            version: version.into(),
            release,
            commit: format!("c0ffee{release:04}"),
            apt_url: format!("http://127.0.0.1:{}/", self.port),
            apt_key_path: self.repository.key_path(),
            security_updates: false,
            bake_id: format!("{}-v{release}", self.id),
            timeout: Duration::from_secs(300),
            env: BTreeMap::new(),
            team: None,
            scratch_dir: std::env::temp_dir(),
            provisioning: slipway_bake::DEFAULT_PROVISIONING.to_string(),
        }
    }

    /// Runs `image` on the host network and returns what the app answers on `port`.
    pub fn run_and_ask(&self, image: &str, port: u16) -> String {
        let label = format!("slipway.test={}", self.id);
        let (ok, output) = docker(&["run", "-d", "--network", "host", "--label", &label, image]);
        assert!(ok, "docker run {image}: {output}");
        let container = output.trim().to_string();
        let answer = http_get(port, Duration::from_secs(20));
        let (_, logs) = docker(&["logs", &container]);
        docker(&["rm", "-f", &container]);
        answer.unwrap_or_else(|| panic!("{image} never answered on {port}; logs:\n{logs}"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // Signing started a gpg-agent for the key directory, which is about to go.
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.data.path().join("gpg"))
            .args(["--kill", "gpg-agent"])
            .output();
        for label in [
            format!("label=slipway.test={}", self.id),
            format!("label=slipway.bake={}", self.id),
        ] {
            let (_, ids) = docker(&["ps", "-aq", "--filter", &label]);
            for id in ids.split_whitespace() {
                docker(&["rm", "-f", id]);
            }
        }
        let (_, images) = docker(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &self.image_repository(),
        ]);
        for image in images.split_whitespace() {
            docker(&["rmi", "-f", image]);
        }
    }
}

/// The repository checkout holding `packer/` and `ansible/`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs docker, returning (success, stdout + stderr).
pub fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("running docker");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn app_definition(root: &Path, version: &str) -> PackageDefinition {
    let source = root.join("app.py");
    std::fs::write(&source, APP).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o644)).unwrap();
    PackageDefinition {
        name: PACKAGE.into(),
        version: version.into(),
        architecture: "all".into(),
        maintainer: "Slipway Tests <tests@slipway.example>".into(),
        description: "answers HTTP requests with its version".into(),
        long_description: String::new(),
        depends: vec!["python3".into()],
        files: vec![PackageFile::new(
            "app.py",
            format!("/usr/lib/{PACKAGE}/app.py"),
            0o644,
        )],
        conffiles: Vec::new(),
        systemd_unit: None,
        maintainer_scripts: MaintainerScripts::default(),
        extra_files: vec![ExtraFile {
            dest: format!("/usr/share/{PACKAGE}/VERSION"),
            contents: format!("{version}\n").into_bytes(),
            mode: 0o644,
        }],
        source_date_epoch: 1_700_000_000,
    }
}

/// `python3 -m http.server` on an ephemeral loopback port.
fn serve(dir: &Path) -> (Child, u16) {
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
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected http.server banner: {line}"));
    (child, port)
}

/// The body of `GET /` on loopback `port`, retried until `patience` runs out.
fn http_get(port: u16, patience: Duration) -> Option<String> {
    let started = Instant::now();
    while started.elapsed() < patience {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let mut response = String::new();
            if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
                && stream.read_to_string(&mut response).is_ok()
            {
                if let Some((_, body)) = response.split_once("\r\n\r\n") {
                    return Some(body.to_string());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}
