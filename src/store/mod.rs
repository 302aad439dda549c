//! The state store: PostgreSQL through a tokio-postgres pool, Slipway's schema applied from
//! `migrations/` at start, and the queries the service needs, grouped by what they are about.

pub mod agents;
pub mod app_schema;
pub mod apt;
pub mod audit;
pub mod autoscale;
pub mod build_reports;
pub mod builds;
pub mod deployments;
pub mod embedded;
pub mod metrics;
pub mod notifications;
pub mod outbox;
pub mod release_images;
pub mod releases;
pub mod retention;
pub mod servers;
pub mod sessions;
pub mod signing_key;
pub mod tokens;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use uuid::Uuid;

/// How long a request waits for a connection (a free one, or a new one to PostgreSQL) before
/// it fails: an unreachable database gives 503 and a retry, never a request that hangs.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

mod embedded_migrations {
    refinery::embed_migrations!("migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database_url: {0}")]
    BadUrl(String),
    #[error("cannot get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("applying Slipway's schema migrations failed: {0}")]
    Migration(#[from] refinery::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A handle on the store; cheap to clone. Each store opened is one owner: the id the work it
/// claims is recorded under (see [`servers`]).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    owner: Uuid,
}

impl Store {
    /// Connects with `conninfo` (a `postgres://` URL or `key=value` pairs) and applies any
    /// pending migrations.
    pub async fn connect(conninfo: &str) -> StoreResult<Store> {
        // Never echo the string back: it may carry a password.
        let config = tokio_postgres::Config::from_str(conninfo)
            .map_err(|e| StoreError::BadUrl(e.to_string()))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECTION_TIMEOUT))
            .create_timeout(Some(CONNECTION_TIMEOUT))
            .recycle_timeout(Some(CONNECTION_TIMEOUT))
            .build()
            .map_err(|e| StoreError::BadUrl(e.to_string()))?;
        let store = Store {
            pool,
            owner: Uuid::new_v4(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut client = self.pool.get().await?;
        // Serialize concurrent starts against the same database.
        client
            .execute("SELECT pg_advisory_lock(4242001)", &[])
            .await?;
        let result = embedded_migrations::migrations::runner()
            .run_async(&mut **client)
            .await;
        client
            .execute("SELECT pg_advisory_unlock(4242001)", &[])
            .await?;
        result?;
        Ok(())
    }

    pub async fn ping(&self) -> StoreResult<()> {
        self.pool.get().await?.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    /// The id this process claims work under: its row in `servers`, the owner of the builds
    /// and bakes it runs and of the environment locks it holds.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// The installation's identity, made on the first start against the database and shared
    /// by every server on it: names and labels of what Slipway starts in dockerd carry it.
    pub async fn server_id(&self) -> StoreResult<Uuid> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO server_identity (id) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM server_identity)",
                &[&Uuid::new_v4()],
            )
            .await?;
        let row = client
            .query_one("SELECT id FROM server_identity LIMIT 1", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Closes every connection; used before the embedded cluster is stopped.
    pub fn close(&self) {
        self.pool.close();
    }

    pub(crate) async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }
}

/// The next number of `kind` for `project`, inside the caller's transaction so a number is
/// only used if what it numbers is committed.
pub(crate) async fn next_number(
    tx: &deadpool_postgres::Transaction<'_>,
    project: &str,
    kind: &str,
) -> StoreResult<i64> {
    let row = tx
        .query_one(
            "INSERT INTO counters (project, kind, last) VALUES ($1, $2, 1)
             ON CONFLICT (project, kind) DO UPDATE SET last = counters.last + 1
             RETURNING last",
            &[&project, &kind],
        )
        .await?;
    Ok(row.get(0))
}
