//! SSH clones with a deploy key, against a real sshd on loopback: a project with its key and
//! the host's pinned key builds; a host key other than the pinned one, or a key the server does
//! not authorize, fails the build saying which.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::builds::{commit_all, git, push_queued};
use crate::helpers::free_port;
use crate::helpers::TestApp;
use crate::release_order::wait_for_build;
use crate::servers::quick_repository;

const SECRET: &str = "ssh-secret";

/// sshd on a loopback port, accepting the public keys in `authorized`; killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

impl Sshd {
    fn start(dir: &Path, authorized: &Path) -> Sshd {
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        keygen(&dir.join("host_key"));
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host_key\nAuthorizedKeysFile {1}\nPidFile {0}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n",
                dir.display(),
                authorized.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts (scripts/bootstrap installs openssh-server)");
        let sshd = Sshd { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    /// A known_hosts line pinning `public_key` (a `.pub` file's text) for this server.
    fn known_hosts(&self, public_key: &str) -> String {
        let mut fields = public_key.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("[127.0.0.1]:{} {kind} {key}\n", self.port)
    }
}

fn project(name: &str, clone_url: &str, key: &Path, known_hosts: &Path) -> String {
    format!(
        "[[projects]]\nname = \"{name}\"\nrepository = \"acme/{name}\"\nclone_url = \"{clone_url}\"\nwebhook_secret = \"{SECRET}\"\n[projects.bitbucket]\nssh_key_file = \"{}\"\nknown_hosts = \"{}\"\n",
        key.display(),
        known_hosts.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_key_clones_over_ssh_and_a_wrong_host_key_or_deploy_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path();
    keygen(&keys.join("deploy"));
    keygen(&keys.join("stranger"));
    keygen(&keys.join("other_host"));
    std::fs::copy(keys.join("deploy.pub"), keys.join("authorized_keys")).unwrap();
    let sshd = Sshd::start(keys, &keys.join("authorized_keys"));
    let host_key = std::fs::read_to_string(keys.join("host_key.pub")).unwrap();
    std::fs::write(keys.join("known_hosts"), sshd.known_hosts(&host_key)).unwrap();
    let other = std::fs::read_to_string(keys.join("other_host.pub")).unwrap();
    std::fs::write(keys.join("wrong_hosts"), sshd.known_hosts(&other)).unwrap();

    let repo = quick_repository();
    let main = git(repo.path(), &["rev-parse", "HEAD"]);
    std::fs::write(repo.path().join("app.txt"), "ssh\n").unwrap();
    let commit = commit_all(repo.path(), "over ssh");
    assert_ne!(main, commit);
    git(
        keys,
        &[
            "clone",
            "--bare",
            "--quiet",
            &repo.path().display().to_string(),
            "shared.git",
        ],
    );
    let url = format!(
        "ssh://root@127.0.0.1:{}{}/shared.git",
        sshd.port,
        keys.display()
    );
    let config = [
        project(
            "ssh-ok",
            &url,
            &keys.join("deploy"),
            &keys.join("known_hosts"),
        ),
        project(
            "ssh-host",
            &url,
            &keys.join("deploy"),
            &keys.join("wrong_hosts"),
        ),
        project(
            "ssh-key",
            &url,
            &keys.join("stranger"),
            &keys.join("known_hosts"),
        ),
    ]
    .concat();
    let app = TestApp::spawn(&config).await;

    let number = push_queued(&app.address, ("acme/ssh-ok", SECRET), "main", &commit).await;
    let build = wait_for_build(&app, "ssh-ok", number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");

    for (name, why) in [
        ("ssh-host", "the host's key is not one known_hosts pins"),
        (
            "ssh-key",
            "authentication failed: the repository refused the credentials",
        ),
    ] {
        let number = push_queued(
            &app.address,
            (&format!("acme/{name}"), SECRET),
            "main",
            &commit,
        )
        .await;
        let build = wait_for_build(&app, name, number, Duration::from_secs(300)).await;
        assert_eq!(build["status"], "errored", "{build}");
        let reason = build["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!("cannot clone project `{name}`: ")) && reason.contains(why),
            "{reason}"
        );
    }
    app.stop().await;
}
