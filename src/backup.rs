//! `slipway backup` and `slipway restore`: an installation's state in one file, and back.
//!
//! A backup is a gzipped tar (mode 0600: it holds the signing key) of `manifest.json` (what
//! it is: format, Slipway's version, when, the installation id and the signing key's
//! fingerprint), `database.sql` (`pg_dump` of Slipway's database, which holds everything but
//! files: builds, releases, deployments, tokens, the servers and the signing key) and `apt/`
//! (the apt repository: every published package and the signed index; not with `[apt] s3`,
//! where the bucket keeps the repository and this server's directory is a working copy). It
//! is written to a temporary file beside the destination and renamed into place, so a failed
//! backup leaves no partial file.
//!
//! A restore goes into an empty database and an empty (or absent) apt directory only, and
//! checks both before it changes anything; the database is restored in one transaction. A
//! server started on the restored database and directory serves the same repository, signed
//! with the same key, and answers to the same tokens.
//!
//! The database is the config's `database_url`, or the embedded cluster in the data directory
//! (started for the command when no server runs it, and stopped again after). `pg_dump` and
//! `psql` get the connection through libpq's environment variables, so a password never
//! reaches a process argument.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::store::embedded::{self, EmbeddedPostgres};

/// The backup format this version writes and reads.
const FORMAT: u32 = 1;
/// The one directory a backup's entries are under.
const ROOT: &str = "slipway-backup";

/// What a backup is, as its `manifest.json` says.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    slipway_version: String,
    created_at: chrono::DateTime<chrono::Utc>,
    installation: String,
    signing_key: Option<String>,
}

/// Slipway's database, reachable by libpq's tools for the length of a command.
struct Database {
    /// libpq's environment: host, port, user, password, database.
    env: Vec<(&'static str, String)>,
    bin_dir: PathBuf,
    /// The embedded cluster this command started, stopped when it is done.
    started: Option<EmbeddedPostgres>,
}

impl Database {
    fn open(config: &Config) -> anyhow::Result<Database> {
        match &config.database_url {
            Some(url) => Ok(Database {
                env: libpq_env(url.expose())?,
                bin_dir: embedded::find_bin_dir()?,
                started: None,
            }),
            None => {
                let cluster = EmbeddedPostgres::start(&config.data_dir)
                    .context("starting the embedded PostgreSQL of the data directory")?;
                Ok(Database {
                    env: libpq_env(&cluster.connection_string())?,
                    bin_dir: cluster.bin_dir().to_path_buf(),
                    started: cluster.started_here().then_some(cluster),
                })
            }
        }
    }

    /// `program` (`pg_dump`, `psql`) with the connection in its environment.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        for variable in ["PGSERVICE", "PGSERVICEFILE", "PGPASSFILE", "PGOPTIONS"] {
            command.env_remove(variable);
        }
        command.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }

    /// One value from an SQL query (`psql -Atc`), trimmed.
    fn query(&self, sql: &str) -> anyhow::Result<String> {
        let output = self
            .command("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !output.status.success() {
            bail!(
                "psql failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn close(self) -> anyhow::Result<()> {
        if let Some(cluster) = self.started {
            cluster.stop().context("stopping the embedded PostgreSQL")?;
        }
        Ok(())
    }
}

/// libpq's environment for `conninfo` (a URL or key=value pairs).
fn libpq_env(conninfo: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    use tokio_postgres::config::Host;
    // Never echo the string back: it may carry a password.
    let config: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|_| anyhow::anyhow!("database_url is not a PostgreSQL connection string"))?;
    let mut env = Vec::new();
    if let Some(host) = config.get_hosts().first() {
        let host = match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        };
        env.push(("PGHOST", host));
    }
    if let Some(port) = config.get_ports().first() {
        env.push(("PGPORT", port.to_string()));
    }
    if let Some(user) = config.get_user() {
        env.push(("PGUSER", user.to_owned()));
    }
    if let Some(password) = config.get_password() {
        env.push(("PGPASSWORD", String::from_utf8_lossy(password).into_owned()));
    }
    if let Some(database) = config.get_dbname() {
        env.push(("PGDATABASE", database.to_owned()));
    }
    Ok(env)
}

/// Writes the installation's backup to `out`.
pub fn backup(config: &Config, out: &Path) -> anyhow::Result<()> {
    let database = Database::open(config)?;
    let written = write_backup(config, &database, out);
    database.close()?;
    written
}

fn write_backup(config: &Config, database: &Database, out: &Path) -> anyhow::Result<()> {
    let installation = database
        .query("SELECT id FROM server_identity LIMIT 1")
        .context("reading the installation's id (is this Slipway's database?)")?;
    if installation.is_empty() {
        bail!("the database holds no Slipway installation yet: start a server on it first");
    }
    let signing_key =
        Some(database.query("SELECT fingerprint FROM signing_key")?).filter(|f| !f.is_empty());
    let scratch = tempfile::tempdir().context("making a scratch directory")?;
    let dump = scratch.path().join("database.sql");
    let status = database
        .command("pg_dump")
        .args(["--no-owner", "--no-privileges", "--format=plain", "--file"])
        .arg(&dump)
        .stdin(Stdio::null())
        .status()
        .context("running pg_dump")?;
    if !status.success() {
        bail!("pg_dump failed ({status}); its error is above");
    }
    let manifest = Manifest {
        format: FORMAT,
        slipway_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: chrono::Utc::now(),
        installation,
        signing_key,
    };
    let partial = partial_path(out);
    let written = (|| {
        let file = private_file(&partial)?;
        let mut archive = tar::Builder::new(GzEncoder::new(file, flate2::Compression::default()));
        archive.follow_symlinks(false);
        let manifest = serde_json::to_vec_pretty(&manifest)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
        archive.append_data(
            &mut header,
            format!("{ROOT}/manifest.json"),
            manifest.as_slice(),
        )?;
        archive.append_path_with_name(&dump, format!("{ROOT}/database.sql"))?;
        if config.apt_s3.is_none() && config.apt_dir.is_dir() {
            archive.append_dir_all(format!("{ROOT}/apt"), &config.apt_dir)?;
        }
        archive.into_inner()?.finish()?.sync_all()?;
        Ok::<_, anyhow::Error>(())
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(error.context(format!("writing {}", out.display())));
    }
    std::fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Restores the backup at `from` into the config's database and apt directory, both empty.
pub fn restore(config: &Config, from: &Path) -> anyhow::Result<String> {
    let scratch = tempfile::tempdir().context("making a scratch directory")?;
    let manifest = unpack(from, scratch.path())?;
    if !is_empty_dir(&config.apt_dir)? {
        bail!(
            "the apt directory {} is not empty; a restore writes only into an empty one",
            config.apt_dir.display()
        );
    }
    let database = Database::open(config)?;
    let restored = restore_database(&database, &scratch.path().join(ROOT).join("database.sql"));
    database.close()?;
    restored?;
    let apt = scratch.path().join(ROOT).join("apt");
    if apt.is_dir() {
        move_dir(&apt, &config.apt_dir)?;
    }
    Ok(format!(
        "restored installation {} (backup of {}, Slipway {}){}",
        manifest.installation,
        manifest.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        manifest.slipway_version,
        manifest
            .signing_key
            .map(|key| format!(", signing key {key}"))
            .unwrap_or_default()
    ))
}

fn restore_database(database: &Database, dump: &Path) -> anyhow::Result<()> {
    let tables = database.query(
        "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )?;
    if tables != "0" {
        bail!(
            "the database already holds {tables} tables; a restore goes only into an empty database"
        );
    }
    let output = database
        .command("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-f",
        ])
        .arg(dump)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .context("running psql")?;
    if !output.status.success() {
        bail!(
            "restoring the database failed, and it was left as it was: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Unpacks the backup at `from` under `into`, checking what it is first; its manifest.
fn unpack(from: &Path, into: &Path) -> anyhow::Result<Manifest> {
    let file = File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    let mut archive = tar::Archive::new(GzDecoder::new(file));
    archive.set_preserve_permissions(true);
    for entry in archive
        .entries()
        .with_context(|| format!("{} is not a Slipway backup", from.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let path = entry.path()?.into_owned();
        if !path.starts_with(ROOT) {
            bail!(
                "{} is not a Slipway backup: it holds {}",
                from.display(),
                path.display()
            );
        }
        // `unpack_in` refuses entries that would land outside `into`.
        if !entry.unpack_in(into)? {
            bail!("{} holds an entry outside its directory", from.display());
        }
    }
    let manifest_path = into.join(ROOT).join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("{} is not a Slipway backup", from.display()))?,
    )
    .with_context(|| format!("{}: its manifest.json is not one", from.display()))?;
    if manifest.format != FORMAT {
        bail!(
            "{} is a backup of format {}; this Slipway reads format {FORMAT}",
            from.display(),
            manifest.format
        );
    }
    if !into.join(ROOT).join("database.sql").is_file() {
        bail!("{} holds no database.sql", from.display());
    }
    Ok(manifest)
}

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Moves `from`'s entries into `to` (made when absent): a rename where it can, else a copy.
fn move_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if std::fs::rename(entry.path(), &target).is_err() {
            let status = Command::new("cp")
                .arg("-a")
                .arg(entry.path())
                .arg(&target)
                .status()?;
            if !status.success() {
                bail!(
                    "cannot copy {} to {}",
                    entry.path().display(),
                    target.display()
                );
            }
        }
    }
    Ok(())
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

fn private_file(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_gets_the_connection_in_its_environment() {
        let env = libpq_env("postgres://slipway:s3cret@db.internal:6543/slipway").unwrap();
        assert_eq!(
            env,
            [
                ("PGHOST", "db.internal".to_owned()),
                ("PGPORT", "6543".to_owned()),
                ("PGUSER", "slipway".to_owned()),
                ("PGPASSWORD", "s3cret".to_owned()),
                ("PGDATABASE", "slipway".to_owned()),
            ]
        );
        let error = libpq_env("postgres://slipway:s3cret@[bad").unwrap_err();
        assert!(!format!("{error:#}").contains("s3cret"), "{error:#}");
    }

    #[test]
    fn an_archive_that_is_not_a_backup_is_refused_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.tar.gz");
        let file = File::create(&path).unwrap();
        let mut archive = tar::Builder::new(GzEncoder::new(file, flate2::Compression::fast()));
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        archive
            .append_data(&mut header, "etc/passwd", &b"x\n"[..])
            .unwrap();
        archive.into_inner().unwrap().finish().unwrap();
        let into = dir.path().join("into");
        std::fs::create_dir(&into).unwrap();
        let error = unpack(&path, &into).unwrap_err().to_string();
        assert!(
            error.contains("is not a Slipway backup: it holds etc/passwd"),
            "{error}"
        );
        assert!(is_empty_dir(&into).unwrap());
    }
}
