//! The application's own database migrations (not Slipway's schema): reads a directory of
//! SQL files (`V<N>__name.sql` as refinery keeps them, or `<N>_name.sql` as Goose does) and
//! applies the pending ones to a PostgreSQL database, each in its own transaction, tracked
//! in that database's `slipway_schema_migrations` table. Builds (against the service
//! sidecar) and deployments (against the environment's `DATABASE_URL`) use this one applier.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

/// Largest total of a release's migration files, in bytes: they are stored with the release.
pub const MAX_MIGRATIONS_BYTES: u64 = 8 * 1024 * 1024;
/// Most migration files one directory may hold.
pub const MAX_MIGRATION_FILES: usize = 10_000;
/// How long a connection to an application database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The table, in the application's database, that records which migrations ran.
pub const TRACKING_TABLE: &str = "slipway_schema_migrations";
/// Taken for the whole run, so two appliers (two servers, a retried deployment) never
/// apply the same migration twice: `hashtext('slipway_schema_migrations')` is not stable
/// across versions, so a fixed number.
const ADVISORY_LOCK: i64 = 0x534c_4950_5741_5901;

/// One SQL file; its version is the file name's leading number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    /// The file name, e.g. `V2__add_visits.sql`.
    pub name: String,
    pub sql: String,
}

/// A migration this run applied, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub elapsed: Duration,
}

/// What a run did: the migrations applied now, and the database's version after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub applied: Vec<Applied>,
    pub version: Option<i64>,
}

/// Why migrations could not be applied; the message names the file and the database's error.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("migration {name} failed: {message}")]
    Failed { name: String, message: String },
    #[error("the migrations table slipway_schema_migrations: {0}")]
    Tracking(String),
}

/// The highest version among `migrations`: the schema a release expects.
pub fn schema_version(migrations: &[Migration]) -> Option<i64> {
    migrations.iter().map(|m| m.version).max()
}

/// The version a migration file name carries: `V12__name.sql` or `12_name.sql` give 12;
/// `None` for any other name.
pub fn version_of(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".sql")?;
    let (digits, rest) = match stem.strip_prefix('V') {
        Some(rest) => {
            let cut = rest.find("__")?;
            (&rest[..cut], &rest[cut + 2..])
        }
        None => {
            let cut = stem.find('_')?;
            (&stem[..cut], &stem[cut + 1..])
        }
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || rest.is_empty() {
        return None;
    }
    digits.parse().ok()
}

/// Reads the migration files of `dir` (named relative to the workspace as `shown`), ordered
/// by version. Files not ending in `.sql` are ignored; a `.sql` file without a version, a
/// symlink, a duplicate version or too much SQL is an error naming the file.
pub fn read_dir(dir: &Path, shown: &str) -> Result<Vec<Migration>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the migrations directory {shown}: {e}"))?;
    let mut by_version: BTreeMap<i64, Migration> = BTreeMap::new();
    let mut total: u64 = 0;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {shown}: {e}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sql") {
            continue;
        }
        let file_type = entry
            .file_type()
            .map_err(|e| format!("cannot read {shown}/{name}: {e}"))?;
        if !file_type.is_file() {
            return Err(format!(
                "{shown}/{name}: a migration must be a regular file, not a symlink or directory"
            ));
        }
        let version = version_of(&name).ok_or_else(|| {
            format!("{shown}/{name}: expected a name like V1__create.sql or 001_create.sql")
        })?;
        total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        if total > MAX_MIGRATIONS_BYTES || by_version.len() >= MAX_MIGRATION_FILES {
            return Err(format!(
                "{shown}: the migrations are over the limit of {MAX_MIGRATION_FILES} files or {} MiB",
                MAX_MIGRATIONS_BYTES / 1024 / 1024
            ));
        }
        let sql = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("cannot read {shown}/{name}: {e}"))?;
        let migration = Migration {
            version,
            name: name.clone(),
            sql,
        };
        if let Some(other) = by_version.insert(version, migration) {
            return Err(format!(
                "{shown}: {} and {name} both have version {version}",
                other.name
            ));
        }
    }
    Ok(by_version.into_values().collect())
}

/// Connects to the database at `url` (a `postgres://` URL or `key=value` pairs). The URL is
/// never part of an error: it may carry a password.
pub async fn connect(url: &str) -> Result<Client, ApplyError> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|_| ApplyError::Connect("the database URL is not valid".into()))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    connect_with(&config).await
}

/// Connects with an already built configuration.
pub async fn connect_with(config: &tokio_postgres::Config) -> Result<Client, ApplyError> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| ApplyError::Connect(format!("timed out after {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| ApplyError::Connect(database_message(&e)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "an application database connection ended");
        }
    });
    Ok(client)
}

/// Applies the migrations of `migrations` the database has not recorded, in version order,
/// each in its own transaction with its tracking row; `progress` hears each one as it ends.
pub async fn apply(
    client: &mut Client,
    migrations: &[Migration],
    progress: &mut (dyn FnMut(&Applied) + Send),
) -> Result<Outcome, ApplyError> {
    let tracking = |e: tokio_postgres::Error| ApplyError::Tracking(database_message(&e));
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (
                 version    bigint PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )"
        ))
        .await
        .map_err(tracking)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&ADVISORY_LOCK])
        .await
        .map_err(tracking)?;
    let result = apply_pending(client, migrations, progress).await;
    // A session lock: it also ends with the connection, should this unlock fail.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&ADVISORY_LOCK])
        .await;
    let applied = result?;
    Ok(Outcome {
        applied,
        version: current_version(client).await?,
    })
}

/// The highest version the database has recorded; `None` before any migration ran.
pub async fn current_version(client: &Client) -> Result<Option<i64>, ApplyError> {
    let row = client
        .query_one(&format!("SELECT max(version) FROM {TRACKING_TABLE}"), &[])
        .await
        .map_err(|e| ApplyError::Tracking(database_message(&e)))?;
    Ok(row.get(0))
}

async fn apply_pending(
    client: &mut Client,
    migrations: &[Migration],
    progress: &mut (dyn FnMut(&Applied) + Send),
) -> Result<Vec<Applied>, ApplyError> {
    let rows = client
        .query(&format!("SELECT version FROM {TRACKING_TABLE}"), &[])
        .await
        .map_err(|e| ApplyError::Tracking(database_message(&e)))?;
    let done: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let mut applied = Vec::new();
    for migration in migrations.iter().filter(|m| !done.contains(&m.version)) {
        let started = Instant::now();
        let failed = |e: tokio_postgres::Error| ApplyError::Failed {
            name: migration.name.clone(),
            message: database_message(&e),
        };
        let transaction = client.transaction().await.map_err(failed)?;
        transaction
            .batch_execute(&migration.sql)
            .await
            .map_err(failed)?;
        transaction
            .execute(
                &format!("INSERT INTO {TRACKING_TABLE} (version, name) VALUES ($1, $2)"),
                &[&migration.version, &migration.name],
            )
            .await
            .map_err(failed)?;
        transaction.commit().await.map_err(failed)?;
        let done = Applied {
            version: migration.version,
            name: migration.name.clone(),
            elapsed: started.elapsed(),
        };
        progress(&done);
        applied.push(done);
    }
    Ok(applied)
}

/// The server's own words for a database error (with its position in the SQL when it
/// gave one), else the client's.
fn database_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut message = format!("{}: {}", db.severity(), db.message());
            if let Some(tokio_postgres::error::ErrorPosition::Original(position)) = db.position() {
                message.push_str(&format!(" (at character {position})"));
            }
            message
        }
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_refinery_and_goose_names() {
        assert_eq!(version_of("V1__create.sql"), Some(1));
        assert_eq!(version_of("V12__add_visits.sql"), Some(12));
        assert_eq!(version_of("001_create_greetings.sql"), Some(1));
        assert_eq!(version_of("20240101120000_x.sql"), Some(20240101120000));
        assert_eq!(version_of("create.sql"), None);
        assert_eq!(version_of("V1_create.sql"), None);
        assert_eq!(version_of("V__x.sql"), None);
        assert_eq!(version_of("1_.sql"), None);
        assert_eq!(version_of("V1__x.txt"), None);
    }

    #[test]
    fn a_directory_is_read_in_version_order_and_bad_names_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("010_b.sql"), "SELECT 2;").unwrap();
        std::fs::write(dir.path().join("002_a.sql"), "SELECT 1;").unwrap();
        std::fs::write(dir.path().join("README.md"), "not sql").unwrap();
        let read = read_dir(dir.path(), "migrations").unwrap();
        let versions: Vec<i64> = read.iter().map(|m| m.version).collect();
        assert_eq!(versions, [2, 10]);
        assert_eq!(schema_version(&read), Some(10));

        std::fs::write(dir.path().join("V2__again.sql"), "SELECT 3;").unwrap();
        let err = read_dir(dir.path(), "migrations").unwrap_err();
        assert!(err.contains("both have version 2"), "{err}");
        std::fs::remove_file(dir.path().join("V2__again.sql")).unwrap();
        std::fs::write(dir.path().join("latest.sql"), "").unwrap();
        let err = read_dir(dir.path(), "migrations").unwrap_err();
        assert!(err.starts_with("migrations/latest.sql: expected"), "{err}");
    }
}
