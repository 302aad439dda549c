//! Simulated build hosts for tests of several hosts on one machine: each is a network namespace
//! joined to the host by a veth pair, with a dockerd of its own inside, so that what crosses the
//! "network" between a server on the host and an agent really crosses an interface the test can
//! cut, and each agent builds on a dockerd that shares nothing with the host's.
//!
//! Everything here blocks (it runs `ip`, `docker` and waits for dockerd): call it before a
//! server starts on a test's runtime, or from `spawn_blocking`.
//!
//! What this machine taught (see also /work/shared/DESIGN.md, "Beyond one machine"):
//! - dockerd is started with `nsenter --net=...`, never `ip netns exec`, which remounts /sys in
//!   a mount namespace of its own and hides the cgroup v1 mounts ("Devices cgroup isn't
//!   mounted"). With only the network namespace entered, its mounts (overlay layers, the
//!   containers' network namespace files) are in the host's mount namespace, where `Drop` can
//!   see and remove them.
//! - Without `--containerd`, each dockerd starts a containerd of its own under its exec-root
//!   (the host's dockerd does the same, under /var/run/docker), so several run side by side;
//!   each also gets its own containerd namespace, in case a system containerd ever answers at
//!   /run/containerd/containerd.sock and all of them share it.
//! - /etc/docker/daemon.json here sets `live-restore` (containers outlive their dockerd) and the
//!   host's address pools: each dockerd here reads an empty config file of its own instead.
//! - `--iptables` stays on: dockerd's rules go into the namespace's own tables (the host's are
//!   untouched), where they masquerade containers' traffic to the namespace's address, so a
//!   container reaches the host's side of the veth too. A process in the namespace reaches a
//!   container's bridge address directly.
//! - A dockerd answers within a second or two, but copying `slipway/postgres:15` and
//!   `slipway/debian:bookworm` into one takes about 25 s, and into three at once about 35 s.
//! - The self-test takes indexes 8 and 9; tests of several hosts should take theirs from 1..=7
//!   so as not to wait for it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Begins the names of everything an [`AgentHost`] makes (namespace, veth ends, directory,
/// lock), so that what a dead test process left can be found and removed.
const PREFIX: &str = "slwt";

/// Where the hosts' directories and locks go: on disk (dockerd's overlay2 needs a real file
/// system under its data-root), and cleaned by this module rather than by reboots.
const WORK_DIR: &str = "/var/tmp";

/// How long dockerd may take to answer on its socket before the test gives up.
const DOCKERD_START: Duration = Duration::from_secs(60);

/// One simulated build host: a network namespace joined to the host by a veth pair, with its
/// own dockerd (own data-root, exec-root, pidfile, unix socket, bridge subnet). Dropping it
/// removes all of it: containers, processes, mounts, namespace, veth and directory.
pub struct AgentHost {
    index: u8,
    /// `slwt-<pid>-<index>`: the namespace's name, the directory's, and dockerd's containerd
    /// namespace; found in the command line of dockerd, its containerd and every shim.
    name: String,
    /// The veth end on the host (holds `host_ip`), and the one inside the namespace.
    host_veth: String,
    ns_veth: String,
    /// `/var/tmp/slwt-<pid>-<index>`: dockerd's data-root, exec-root, socket, pidfile, log.
    dir: PathBuf,
    /// None until dockerd is spawned (a setup that fails before is cleaned up all the same).
    dockerd: Option<Child>,
    /// Held for the host's life: one host per index at a time, across test processes too
    /// (the index fixes the host's addresses). Released after `Drop` has cleaned up.
    _lock: Flock<File>,
}

impl AgentHost {
    /// Makes host `index` (1..=9), which picks its addresses: the veth's host side
    /// 10.251.<index>.1/24, its namespace side 10.251.<index>.2/24 (with the default route
    /// through the host side), and dockerd's bridge `--bip 10.250.<index>.1/24`. Waits while
    /// another host of the same index lives, in this test process or another. Removes first
    /// what test processes that died left (their namespaces, veths, dockerds, mounts, dirs).
    /// Panics with the tail of dockerd's log when it does not answer within a minute.
    pub fn start(index: u8) -> AgentHost {
        assert!(
            (1..=9).contains(&index),
            "an agent host's index is 1..=9, not {index}"
        );
        let lock_path = Path::new(WORK_DIR).join(format!("{PREFIX}.{index}.lock"));
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", lock_path.display()));
        let lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", lock_path.display()));
        remove_stale(index);

        let pid = std::process::id();
        let name = format!("{PREFIX}-{pid}-{index}");
        let mut host = AgentHost {
            index,
            dir: Path::new(WORK_DIR).join(&name),
            host_veth: format!("{PREFIX}{pid}h{index}"),
            ns_veth: format!("{PREFIX}{pid}n{index}"),
            name,
            dockerd: None,
            _lock: lock,
        };
        // From here on a panic drops `host`, which removes whatever was made so far.
        std::fs::create_dir(&host.dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", host.dir.display()));
        host.join_network();
        host.spawn_dockerd();
        host
    }

    /// The namespace, the veth pair between it and the host, and the addresses and routes.
    fn join_network(&self) {
        let (name, host_veth, ns_veth) = (&self.name, &self.host_veth, &self.ns_veth);
        let index = self.index;
        ip(&["netns", "add", name]);
        ip(&[
            "link", "add", host_veth, "type", "veth", "peer", "name", ns_veth, "netns", name,
        ]);
        let host_address = format!("10.251.{index}.1/24");
        ip(&["addr", "add", &host_address, "dev", host_veth]);
        ip(&["link", "set", host_veth, "up"]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        let ns_address = format!("10.251.{index}.2/24");
        ip(&["-n", name, "addr", "add", &ns_address, "dev", ns_veth]);
        ip(&["-n", name, "link", "set", ns_veth, "up"]);
        let gateway = self.host_ip();
        ip(&["-n", name, "route", "add", "default", "via", &gateway]);
    }

    /// Starts dockerd in the namespace and waits until it answers `/_ping` on its socket.
    fn spawn_dockerd(&mut self) {
        let config = self.dir.join("daemon.json");
        std::fs::write(&config, "{}\n").expect("writing dockerd's config");
        let log_path = self.dir.join("dockerd.log");
        let log = File::create(&log_path).expect("creating dockerd's log");
        let child = self
            .command(Path::new("dockerd"))
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("-H")
            .arg(self.docker_host())
            .arg("--bip")
            .arg(format!("10.250.{}.1/24", self.index))
            .arg("--containerd-namespace")
            .arg(&self.name)
            .arg("--containerd-plugins-namespace")
            .arg(format!("{}-plugins", self.name))
            // Drop removes the containers first; whatever is left stops without waiting.
            .arg("--shutdown-timeout")
            .arg("1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log's handle"))
            .stderr(log)
            .spawn()
            .expect("nsenter runs dockerd");
        let child = self.dockerd.insert(child);
        let socket = self.dir.join("docker.sock");
        let deadline = Instant::now() + DOCKERD_START;
        loop {
            if pings(&socket) {
                return;
            }
            let exited = child.try_wait().expect("checking on dockerd");
            if exited.is_some() || Instant::now() > deadline {
                let state = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => format!("did not answer within {DOCKERD_START:?}"),
                };
                panic!(
                    "dockerd of {} {state}; the end of {}:\n{}",
                    self.name,
                    log_path.display(),
                    tail(&log_path, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The host's side of the veth: what a process in the namespace dials to reach a server
    /// on the host (which listens on this address or on 0.0.0.0).
    pub fn host_ip(&self) -> String {
        format!("10.251.{}.1", self.index)
    }

    /// `unix:///var/tmp/slwt-<pid>-<index>/docker.sock`: this host's dockerd, for `docker -H`
    /// and for an agent's docker host setting.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// The network namespace's name (under /var/run/netns).
    pub fn netns(&self) -> &str {
        &self.name
    }

    /// Copies `images` from the host's dockerd into this host's (`docker save | docker -H
    /// <sock> load`), since a dockerd starts with none and no registry is reachable. An image
    /// this dockerd already has with the host's id is skipped; the others go in one stream
    /// (layers they share are copied once). Panics when the host's dockerd lacks one
    /// (scripts/bootstrap builds them).
    pub fn load_images(&self, images: &[&str]) {
        let missing: Vec<&str> = images
            .iter()
            .copied()
            .filter(|image| {
                let on_host = image_id(Command::new("docker"), image).unwrap_or_else(|| {
                    panic!("the host's dockerd has no image {image}: run scripts/bootstrap")
                });
                image_id(self.docker(), image).as_ref() != Some(&on_host)
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        let mut save = Command::new("docker")
            .arg("save")
            .args(&missing)
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save runs");
        let stream = save.stdout.take().expect("docker save's output");
        let load = self
            .docker()
            .arg("load")
            .arg("--quiet")
            .stdin(stream)
            .output()
            .expect("docker load runs");
        let saved = save.wait().expect("waiting for docker save");
        assert!(
            saved.success() && load.status.success(),
            "copying {missing:?} into {}: save {saved}, load {}: {}",
            self.name,
            load.status,
            String::from_utf8_lossy(&load.stderr)
        );
    }

    /// `program` run inside the namespace (`nsenter --net=/var/run/netns/NAME -- program`),
    /// for the caller to add arguments, environment and stdio to and spawn. nsenter execs the
    /// program, so the child's pid is the program's. Whatever still runs in the namespace when
    /// the host is dropped is killed.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        command
    }

    /// Cuts the namespace off the host: the veth's host side goes down, so packets either way
    /// are dropped (connections hang, as across a real partition, rather than being refused).
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_veth, "down"]);
    }

    /// Undoes [`AgentHost::cut`], returning once the namespace's side has its carrier back.
    /// The neighbour (ARP) entries that failed during the cut are flushed on both sides:
    /// left, they fail the first connection after the restore at once with "No route to host".
    pub fn restore(&self) {
        ip(&["link", "set", &self.host_veth, "up"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let shown = ip(&["-n", &self.name, "-o", "link", "show", "dev", &self.ns_veth]);
            if shown.contains("LOWER_UP") {
                ip(&["-n", &self.name, "neigh", "flush", "dev", &self.ns_veth]);
                ip(&["neigh", "flush", "dev", &self.host_veth]);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come back up: {shown}",
                self.ns_veth
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What builds left on this dockerd: the containers (stopped ones included), networks and
    /// volumes labelled `slipway.build` (any value), counted.
    pub fn build_leftovers(&self) -> (usize, usize, usize) {
        let count = |object: &[&str]| {
            let output = self
                .docker()
                .args(object)
                .args(["-q", "--filter", "label=slipway.build"])
                .output()
                .expect("docker runs");
            assert!(
                output.status.success(),
                "listing {object:?} on {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).lines().count()
        };
        (
            count(&["ps", "-a"]),
            count(&["network", "ls"]),
            count(&["volume", "ls"]),
        )
    }

    /// The docker client, pointed at this host's dockerd.
    fn docker(&self) -> Command {
        let mut docker = Command::new("docker");
        docker.arg("-H").arg(self.docker_host());
        docker
    }
}

impl Drop for AgentHost {
    /// Removes the containers and stops dockerd (which then unmounts what it mounted and
    /// stops its containerd); then kills whatever still runs (dockerd, containerd, shims and
    /// their containers, anything in the namespace), unmounts what is still mounted under the
    /// directory, and removes the namespace, the veth and the directory. The host's dockerd
    /// and its objects are never touched: only the socket under the directory is used.
    fn drop(&mut self) {
        if let Some(child) = &mut self.dockerd {
            if matches!(child.try_wait(), Ok(None)) {
                let socket = self.dir.join("docker.sock");
                let docker = |args: &[&str]| {
                    Command::new("timeout")
                        .arg("30")
                        .arg("docker")
                        .arg("-H")
                        .arg(format!("unix://{}", socket.display()))
                        .args(args)
                        .stderr(Stdio::null())
                        .output()
                        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                        .unwrap_or_default()
                };
                let containers = docker(&["ps", "-aq"]);
                if !containers.trim().is_empty() {
                    let mut rm = vec!["rm", "-f", "-v"];
                    rm.extend(containers.split_whitespace());
                    docker(&rm);
                }
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(20);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        force_clean(&self.name, &self.dir, &[&self.host_veth, &self.ns_veth]);
        if let Some(child) = &mut self.dockerd {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `ip args`, panicking with its error when it fails; returns what it printed.
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether a dockerd answers `GET /_ping` on `socket`.
fn pings(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: dockerd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .lines()
        .next()
        .is_some_and(|status| status.contains(" 200 "))
}

/// The id of `image` on the dockerd `docker` (a docker client command) points at, if it has it.
fn image_id(mut docker: Command, image: &str) -> Option<String> {
    let output = docker
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .stderr(Stdio::null())
        .output()
        .expect("docker runs");
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !id.is_empty()).then_some(id)
}

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The pid and index in a name this module gives: `slwt-<pid>-<index>` (namespace,
/// directory) or `slwt<pid>h<index>` / `slwt<pid>n<index>` (veth ends).
fn owner(name: &str) -> Option<(u32, u8)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, index) = match rest.strip_prefix('-') {
        Some(rest) => rest.split_once('-')?,
        None => rest.split_once(['h', 'n'])?,
    };
    let index: u8 = index.parse().ok()?;
    Some((pid.parse().ok()?, index))
}

/// Removes what hosts of test processes that are gone left, and anything left with `index`:
/// its lock is held, so no live host has that index.
fn remove_stale(index: u8) {
    let mut names: Vec<String> = ip(&["netns", "list"])
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    if let Ok(entries) = std::fs::read_dir(WORK_DIR) {
        names.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    // `ip -o link` prints `N: NAME@PEER: ...`.
    names.extend(ip(&["-o", "link"]).lines().filter_map(|line| {
        let name = line.split(": ").nth(1)?;
        Some(name.split('@').next()?.to_string())
    }));
    let stale: HashSet<(u32, u8)> = names
        .iter()
        .filter_map(|name| owner(name))
        .filter(|&(pid, stale_index)| {
            stale_index == index || !Path::new(&format!("/proc/{pid}")).exists()
        })
        .collect();
    for (pid, stale_index) in stale {
        let name = format!("{PREFIX}-{pid}-{stale_index}");
        force_clean(
            &name,
            &Path::new(WORK_DIR).join(&name),
            &[
                &format!("{PREFIX}{pid}h{stale_index}"),
                &format!("{PREFIX}{pid}n{stale_index}"),
            ],
        );
    }
}

/// Removes all of host `name` whatever state it is in: kills its processes (those whose
/// command line names it, such as dockerd, containerd and the shims, and those in its
/// namespace) with all their descendants (the containers' processes), unmounts what is
/// mounted under `dir`, removes the containers' cgroups, the veth ends `veths`, the namespace
/// and `dir`. Never panics (it runs in `Drop`); what it cannot remove it reports.
fn force_clean(name: &str, dir: &Path, veths: &[&str]) {
    let netns_file = format!("/var/run/netns/{name}");
    let netns = std::fs::metadata(&netns_file)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    for round in 0.. {
        let pids = processes_of(name, netns);
        if pids.is_empty() {
            break;
        }
        if round == 50 {
            eprintln!("netns: processes of {name} survive SIGKILL: {pids:?}");
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let prefix = format!("{}/", dir.display());
    for round in 0.. {
        let mounted: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
            .filter(|point| point.starts_with(&prefix) || Path::new(point) == dir)
            .collect();
        if mounted.is_empty() {
            break;
        }
        if round == 5 {
            eprintln!("netns: still mounted under {}: {mounted:?}", dir.display());
            break;
        }
        // Deepest first; lazily, so a busy one cannot stop the rest.
        for point in mounted.iter().rev() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(point)
                .stderr(Stdio::null())
                .status();
        }
    }

    // A dockerd killed with its containers leaves their (empty) cgroups behind.
    if let Ok(containers) = std::fs::read_dir(dir.join("data/containers")) {
        let controllers: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for container in containers.flatten() {
            for controller in &controllers {
                let _ = std::fs::remove_dir(controller.join("docker").join(container.file_name()));
            }
        }
    }

    for veth in veths {
        let _ = Command::new("ip")
            .args(["link", "del", veth])
            .stderr(Stdio::null())
            .status();
    }
    if Path::new(&netns_file).exists() {
        let deleted = Command::new("ip").args(["netns", "del", name]).output();
        if !deleted.is_ok_and(|out| out.status.success()) {
            eprintln!("netns: could not delete the namespace {name}");
        }
    }
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("netns: could not remove {}: {e}", dir.display());
        }
    }
}

/// The live processes of host `name`: those whose command line holds `name` as a word (its
/// dockerd, containerd and shims name its directory or its containerd namespace), those in
/// the network namespace `netns` (device and inode of its file), and all their descendants.
/// Never this process.
fn processes_of(name: &str, netns: Option<(u64, u64)>) -> Vec<u32> {
    let me = std::process::id();
    let mut parents: HashMap<u32, u32> = HashMap::new();
    let mut found: HashSet<u32> = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || pid == 1 {
            continue;
        }
        // `pid (comm) state ppid ...`, where comm may hold anything but ends at the last ')'.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue; // dead already, only waiting for its parent to reap it
        }
        if let Some(ppid) = fields.get(1).and_then(|p| p.parse().ok()) {
            parents.insert(pid, ppid);
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let in_netns = netns.is_some_and(|netns| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| (m.dev(), m.ino()) == netns)
        });
        if in_netns || names_word(&String::from_utf8_lossy(&cmdline), name) {
            found.insert(pid);
        }
    }
    // Descendants: shims are reparented away from containerd, but the containers' processes
    // stay their children.
    loop {
        let more: Vec<u32> = parents
            .iter()
            .filter(|(pid, ppid)| found.contains(ppid) && !found.contains(pid))
            .map(|(&pid, _)| pid)
            .filter(|&pid| pid != me)
            .collect();
        if more.is_empty() {
            break;
        }
        found.extend(more);
    }
    found.into_iter().collect()
}

/// Whether `text` holds `name` not followed by a digit (`slwt-12-1` is not in `slwt-12-13`,
/// and indexes are one digit, so no name is the start of another's).
fn names_word(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(at, _)| {
        !text[at + name.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// Two hosts at once (indexes 8 and 9, which tests of several hosts leave free): a container
/// runs on one's dockerd and is counted as a build's leftover; a process in the namespace
/// reaches it and a listener on the host, not while the host is cut off, and again once it is
/// restored; and dropping the hosts leaves no namespace, veth, process, mount or directory.
#[test]
fn a_namespace_host_runs_containers_it_can_reach() {
    let started = Instant::now();
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| AgentHost::start(8));
        let second = scope.spawn(|| AgentHost::start(9));
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_ne!(first.netns(), second.netns());
    assert_ne!(first.docker_host(), second.docker_host());
    eprintln!("two hosts up after {:?}", started.elapsed());

    let image = "slipway/debian:bookworm";
    first.load_images(&[image]);
    let copied = Instant::now();
    first.load_images(&[image]); // already there: nothing to copy
    assert!(copied.elapsed() < Duration::from_secs(5));
    assert_eq!(
        docker(&second, &["images", "-q"]),
        "",
        "the second has no images"
    );

    // A "build's" container (a TCP listener, as postgres would be), network and volume.
    let listener = "import socket\n\
                    s = socket.create_server(('0.0.0.0', 5432))\n\
                    while True: s.accept()[0].close()\n";
    let container = docker(
        &first,
        &[
            "run",
            "-d",
            "--label",
            "slipway.build=x",
            image,
            "python3",
            "-c",
            listener,
        ],
    );
    docker(
        &first,
        &["network", "create", "--label", "slipway.build=x", "probe"],
    );
    docker(&first, &["volume", "create", "--label", "slipway.build=x"]);
    assert_eq!(first.build_leftovers(), (1, 1, 1));
    assert_eq!(second.build_leftovers(), (0, 0, 0));
    let bridge_ip = docker(
        &first,
        &[
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            &container,
        ],
    );
    assert!(bridge_ip.starts_with("10.250.8."), "{bridge_ip}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !reaches(&first, &bridge_ip, 5432) {
        assert!(
            Instant::now() < deadline,
            "the namespace never reached its container at {bridge_ip}:5432"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The host, from each namespace, and not across a cut.
    let on_first = std::net::TcpListener::bind((first.host_ip().as_str(), 0)).unwrap();
    let on_second = std::net::TcpListener::bind((second.host_ip().as_str(), 0)).unwrap();
    let first_port = on_first.local_addr().unwrap().port();
    let second_port = on_second.local_addr().unwrap().port();
    assert!(reaches(&first, &first.host_ip(), first_port));
    assert!(reaches(&second, &second.host_ip(), second_port));
    first.cut();
    assert!(!reaches(&first, &first.host_ip(), first_port), "cut off");
    assert!(reaches(&second, &second.host_ip(), second_port), "not cut");
    first.restore();
    assert!(reaches(&first, &first.host_ip(), first_port), "restored");

    // Dropped with the container still running.
    let hosts = [
        (
            first.netns().to_string(),
            first.dir.clone(),
            first.host_veth.clone(),
        ),
        (
            second.netns().to_string(),
            second.dir.clone(),
            second.host_veth.clone(),
        ),
    ];
    drop(first);
    drop(second);
    let namespaces = ip(&["netns", "list"]);
    let links = ip(&["-o", "link"]);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for (name, dir, veth) in hosts {
        assert!(!namespaces.contains(&name), "{name} in {namespaces}");
        assert!(!links.contains(&veth), "{veth} in {links}");
        assert!(!mounts.contains(dir.to_str().unwrap()), "{mounts}");
        assert!(!dir.exists(), "{}", dir.display());
        assert_eq!(processes_of(&name, None), Vec::<u32>::new(), "{name}");
    }
    eprintln!("done after {:?}", started.elapsed());
}

/// Runs `docker -H <host's socket> args`, panicking when it fails; returns its trimmed output.
fn docker(host: &AgentHost, args: &[&str]) -> String {
    let output = host.docker().args(args).output().expect("docker runs");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Whether a process in `host`'s namespace connects to `ip:port` within 3 seconds.
fn reaches(host: &AgentHost, ip: &str, port: u16) -> bool {
    let mut connect = host
        .command(Path::new("bash"))
        .arg("-c")
        .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nsenter runs bash");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(status) = connect.try_wait().expect("waiting for bash") {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = connect.kill();
            let _ = connect.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
