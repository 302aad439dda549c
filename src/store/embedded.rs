//! The embedded PostgreSQL cluster: when no `database_url` is configured, Slipway runs its own
//! cluster in `<data_dir>/postgres` with the system's `initdb` and `pg_ctl`.
//!
//! The cluster listens only on a Unix socket in `<data_dir>/run`. PostgreSQL refuses to run as
//! root, so when Slipway runs as root the cluster runs as the `postgres` user (created by
//! Debian's package) and its directories belong to that user. A cluster left running by a
//! killed server is reused; a stale pid file left by a dead one is cleared.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::unistd::{chown, Uid, User};

/// Where Debian installs the server binaries (not always on PATH).
const DEBIAN_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The database Slipway keeps its state in.
pub const DATABASE: &str = "slipway";
/// The superuser created by initdb.
pub const SUPERUSER: &str = "postgres";
/// Unix socket paths are limited to 107 bytes by the kernel.
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot find PostgreSQL's {0} (looked in {DEBIAN_BIN_DIR} and on PATH); run scripts/bootstrap or set database_url")]
    MissingBinary(&'static str),
    #[error("the embedded PostgreSQL must run as an unprivileged user, and user `postgres` does not exist; install Debian's postgresql package or set database_url")]
    NoUnprivilegedUser,
    #[error("data directory {path} is too deep for a Unix socket path ({len} bytes, at most {MAX_SOCKET_PATH}); choose a shorter --data-dir")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// A running embedded cluster. [`EmbeddedPostgres::stop`] shuts it down; dropping it does not,
/// so that a crash leaves a cluster the next start can reuse.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<User>,
    /// Whether this start started it (it was not running already).
    started_here: bool,
}

impl EmbeddedPostgres {
    /// Starts (creating on first use, or reusing if already running) the cluster under
    /// `data_dir`, and makes sure the `slipway` database exists.
    pub fn start(data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        let data_dir = absolute(data_dir)?;
        if data_dir.to_str().is_none() {
            return Err(EmbeddedError::Command {
                what: "choosing the data directory".into(),
                detail: format!("{} is not valid UTF-8", data_dir.display()),
            });
        }
        let mut cluster = EmbeddedPostgres {
            pgdata: data_dir.join("postgres"),
            socket_dir: data_dir.join("run"),
            bin_dir: find_bin_dir()?,
            run_as: unprivileged_user()?,
            started_here: false,
        };
        let socket_len = cluster.socket_dir.join(".s.PGSQL.5432").as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(EmbeddedError::SocketPathTooLong {
                path: data_dir,
                len: socket_len,
            });
        }
        cluster.check_reachable(&data_dir)?;
        cluster.prepare_directories()?;
        if !cluster.pgdata.join("PG_VERSION").exists() {
            tracing::info!(pgdata = %cluster.pgdata.display(), "creating the embedded PostgreSQL cluster");
            cluster.initdb()?;
        }
        if cluster.is_running() {
            tracing::info!(pgdata = %cluster.pgdata.display(), "reusing the embedded PostgreSQL cluster left running");
        } else {
            cluster.clear_stale_pid_file();
            cluster.pg_ctl_start()?;
            cluster.started_here = true;
        }
        cluster.ensure_database()?;
        Ok(cluster)
    }

    /// Whether [`EmbeddedPostgres::start`] started it, rather than finding it running (a
    /// command working beside a running server must leave its cluster running).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Where its `pg_dump` and `psql` are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A tokio-postgres connection string for the `slipway` database.
    pub fn connection_string(&self) -> String {
        format!(
            "host={} user={SUPERUSER} dbname={DATABASE}",
            self.socket_dir.display()
        )
    }

    /// A connection string for another database of the same cluster.
    pub fn connection_string_for(&self, database: &str) -> String {
        format!(
            "host={} user={SUPERUSER} dbname={database}",
            self.socket_dir.display()
        )
    }

    /// Runs SQL with psql against the `postgres` database (for creating databases).
    pub fn psql(&self, sql: &str) -> Result<String, EmbeddedError> {
        let out = self.run(
            "psql",
            [
                "-h",
                path_str(&self.socket_dir),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-XAtqc",
                sql,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops the cluster (fast shutdown: open sessions are ended, nothing committed is lost).
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        self.run(
            "pg_ctl",
            [
                "stop",
                "-D",
                path_str(&self.pgdata),
                "-m",
                "fast",
                "-w",
                "-s",
            ],
        )?;
        Ok(())
    }

    /// The unprivileged user must be able to pass through every directory above the cluster.
    fn check_reachable(&self, data_dir: &Path) -> Result<(), EmbeddedError> {
        use std::os::unix::fs::MetadataExt;
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        for dir in data_dir.ancestors() {
            let Ok(meta) = std::fs::metadata(dir) else {
                continue;
            };
            let passable = meta.mode() & 0o001 != 0
                || (meta.uid() == user.uid.as_raw() && meta.mode() & 0o100 != 0);
            if !passable {
                return Err(EmbeddedError::Command {
                    what: "preparing the embedded PostgreSQL".into(),
                    detail: format!(
                        "it runs as user {}, which cannot enter {} (mode {:o}); choose a data dir it can reach, or set database_url",
                        user.name,
                        dir.display(),
                        meta.mode() & 0o777
                    ),
                });
            }
        }
        Ok(())
    }

    fn prepare_directories(&self) -> Result<(), EmbeddedError> {
        for dir in [&self.pgdata, &self.socket_dir] {
            std::fs::create_dir_all(dir).map_err(|source| EmbeddedError::Io {
                context: format!("cannot create {}", dir.display()),
                source,
            })?;
            set_mode(dir, 0o700)?;
            if let Some(user) = &self.run_as {
                chown(dir.as_path(), Some(user.uid), Some(user.gid)).map_err(|e| {
                    EmbeddedError::Io {
                        context: format!("cannot give {} to user {}", dir.display(), user.name),
                        source: e.into(),
                    }
                })?;
            }
        }
        Ok(())
    }

    fn initdb(&self) -> Result<(), EmbeddedError> {
        self.run(
            "initdb",
            [
                "-D",
                path_str(&self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        // Only the Unix socket: the cluster is private to this server.
        let settings = format!(
            "\n# Slipway's embedded cluster\nlisten_addresses = ''\nunix_socket_directories = '{}'\n",
            self.socket_dir.display()
        );
        let conf = self.pgdata.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|source| EmbeddedError::Io {
            context: format!("cannot read {}", conf.display()),
            source,
        })?;
        text.push_str(&settings);
        std::fs::write(&conf, text).map_err(|source| EmbeddedError::Io {
            context: format!("cannot write {}", conf.display()),
            source,
        })
    }

    fn is_running(&self) -> bool {
        self.run("pg_ctl", ["status", "-D", path_str(&self.pgdata)])
            .is_ok()
    }

    /// A pid file whose process is gone, or belongs to something other than postgres (pid
    /// reuse after a reboot or a container restart), would stop pg_ctl from starting.
    fn clear_stale_pid_file(&self) {
        let pid_file = self.pgdata.join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return;
        };
        let pid = text.lines().next().unwrap_or("").trim();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "postgres" {
            tracing::warn!(pid, "removing stale PostgreSQL pid file");
            let _ = std::fs::remove_file(&pid_file);
        }
    }

    fn pg_ctl_start(&self) -> Result<(), EmbeddedError> {
        let log = self.pgdata.join("server.log");
        // `-w` waits until the server accepts connections; -t bounds recovery after a crash.
        self.run(
            "pg_ctl",
            [
                "start",
                "-D",
                path_str(&self.pgdata),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "120",
                "-s",
            ],
        )
        .map_err(|e| EmbeddedError::Command {
            what: "starting the embedded PostgreSQL".into(),
            detail: format!("{e}; last lines of {}:\n{}", log.display(), tail(&log, 10)),
        })?;
        Ok(())
    }

    fn ensure_database(&self) -> Result<(), EmbeddedError> {
        let exists = self.psql(&format!(
            "SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
        ))?;
        if exists != "1" {
            self.psql(&format!("CREATE DATABASE {DATABASE}"))?;
        }
        Ok(())
    }

    fn run<I, S>(&self, program: &'static str, args: I) -> Result<Output, EmbeddedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(self.bin_dir.join(program));
        command.args(args).current_dir("/");
        if let Some(user) = &self.run_as {
            use std::os::unix::process::CommandExt;
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            command.env("HOME", &user.dir);
        }
        let output = command.output().map_err(|source| EmbeddedError::Io {
            context: format!("cannot run {program}"),
            source,
        })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(EmbeddedError::Command {
                what: program.to_string(),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }
}

/// Debian's PostgreSQL binaries, else the first directory on `PATH` with `initdb` and `pg_ctl`.
pub fn find_bin_dir() -> Result<PathBuf, EmbeddedError> {
    let debian = PathBuf::from(DEBIAN_BIN_DIR);
    if debian.join("initdb").exists() {
        return Ok(debian);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .ok_or(EmbeddedError::MissingBinary("initdb"))
}

/// `None` when Slipway itself is unprivileged; the `postgres` user when it runs as root.
fn unprivileged_user() -> Result<Option<User>, EmbeddedError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name(SUPERUSER) {
        Ok(Some(user)) => Ok(Some(user)),
        _ => Err(EmbeddedError::NoUnprivilegedUser),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, EmbeddedError> {
    std::fs::create_dir_all(path).map_err(|source| EmbeddedError::Io {
        context: format!("cannot create data directory {}", path.display()),
        source,
    })?;
    std::fs::canonicalize(path).map_err(|source| EmbeddedError::Io {
        context: format!("cannot resolve data directory {}", path.display()),
        source,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        EmbeddedError::Io {
            context: format!("cannot set the mode of {}", path.display()),
            source,
        }
    })
}

/// Paths under the data directory, which `start` checked is UTF-8.
fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
