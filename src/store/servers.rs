//! The servers of the installation: each `slipway server` process registers under an id of
//! its own and heartbeats on the database's clock. A server is live while it has not stopped
//! and its last heartbeat is younger than [`SERVER_TTL_SECONDS`]; what a server that is not
//! live owned (running builds, their packaging, bakes, environment locks) may be taken over.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreResult};

/// A server whose last heartbeat is older than this is dead (it heartbeats every few seconds).
pub const SERVER_TTL_SECONDS: i64 = 15;

/// SQL true when the server whose id is `owner` is live; `owner` is an SQL expression of
/// type uuid (NULL, as on rows from before servers were recorded, is never live).
pub(crate) fn owner_live(owner: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM servers live WHERE live.id = {owner} AND live.stopped_at IS NULL
             AND live.heartbeat_at > now() - interval '{SERVER_TTL_SECONDS} seconds')"
    )
}

/// One server process, as the installation sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerRecord {
    pub id: Uuid,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub listen: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// Heartbeating and not stopped.
    pub live: bool,
}

/// How a process tells the installation who it is.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub host: String,
    pub pid: i32,
    /// The kernel boot and pid namespace the pid means something in.
    pub process_space: String,
    pub version: String,
    pub listen: String,
}

impl Store {
    /// Records this store's process as a live server.
    pub async fn register_server(&self, identity: &ServerIdentity) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO servers (id, host, pid, process_space, version, listen)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &self.owner(),
                    &identity.host,
                    &identity.pid,
                    &identity.process_space,
                    &identity.version,
                    &identity.listen,
                ],
            )
            .await?;
        Ok(())
    }

    /// Refreshes this server's heartbeat. A server that another one recorded as stopped (it
    /// was thought gone) stays stopped: `false` then, and it must stop taking work.
    pub async fn heartbeat_server(&self) -> StoreResult<bool> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE servers SET heartbeat_at = now() WHERE id = $1 AND stopped_at IS NULL",
                &[&self.owner()],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records this server's graceful stop: what it owned may be taken over at once.
    pub async fn stop_server(&self) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE servers SET stopped_at = now() WHERE id = $1 AND stopped_at IS NULL",
                &[&self.owner()],
            )
            .await?;
        Ok(())
    }

    /// Records as stopped the servers of `process_space` (other than this one) whose process
    /// is gone, as `running(pid)` says: a server restarted on the same host need not wait for
    /// its predecessor's heartbeat to age. Returns the ids it stopped.
    pub async fn stop_gone_servers(
        &self,
        process_space: &str,
        running: impl Fn(i32) -> bool,
    ) -> StoreResult<Vec<Uuid>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, pid FROM servers
                 WHERE process_space = $1 AND stopped_at IS NULL AND id <> $2",
                &[&process_space, &self.owner()],
            )
            .await?;
        let mut stopped = Vec::new();
        for row in rows {
            let (id, pid): (Uuid, i32) = (row.get(0), row.get(1));
            if !running(pid) {
                client
                    .execute(
                        "UPDATE servers SET stopped_at = now() WHERE id = $1 AND stopped_at IS NULL",
                        &[&id],
                    )
                    .await?;
                stopped.push(id);
            }
        }
        Ok(stopped)
    }

    /// The servers of the installation: the live ones first, then those stopped or silent
    /// within the last day, newest first.
    pub async fn servers(&self) -> StoreResult<Vec<ServerRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT id, host, pid, version, listen, started_at, heartbeat_at, stopped_at,
                         {} AS live
                     FROM servers s
                     WHERE s.heartbeat_at > now() - interval '1 day' OR s.stopped_at IS NULL
                     ORDER BY live DESC, s.started_at DESC",
                    owner_live("s.id")
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| ServerRecord {
                id: row.get(0),
                host: row.get(1),
                pid: row.get(2),
                version: row.get(3),
                listen: row.get(4),
                started_at: row.get(5),
                heartbeat_at: row.get(6),
                stopped_at: row.get(7),
                live: row.get(8),
            })
            .collect())
    }
}

/// What a server runs now: a build, a bake, or an environment it holds the lock of.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    Build {
        project: String,
        number: i64,
    },
    Bake {
        project: String,
        release: String,
        image: String,
        region: String,
    },
    Environment {
        project: String,
        environment: String,
        since: DateTime<Utc>,
    },
}

impl Store {
    /// What each server runs now, by server id: running builds, bakes, and environment
    /// locks that have not expired.
    pub async fn server_work(&self) -> StoreResult<Vec<(Uuid, Work)>> {
        let client = self.client().await?;
        let mut work = Vec::new();
        for row in client
            .query(
                "SELECT owner, project, number FROM builds WHERE status = 'running' AND owner IS NOT NULL
                 ORDER BY number",
                &[],
            )
            .await?
        {
            let work_item = Work::Build {
                project: row.get(1),
                number: row.get(2),
            };
            work.push((row.get(0), work_item));
        }
        for row in client
            .query(
                "SELECT i.owner, r.project, 'v' || r.number, i.kind, i.region
                 FROM release_images i JOIN releases r ON r.id = i.release_id
                 WHERE i.status = 'baking' AND i.owner IS NOT NULL ORDER BY r.number",
                &[],
            )
            .await?
        {
            let work_item = Work::Bake {
                project: row.get(1),
                release: row.get(2),
                image: row.get(3),
                region: row.get(4),
            };
            work.push((row.get(0), work_item));
        }
        for row in client
            .query(
                "SELECT owner, project, environment, acquired_at FROM environment_locks
                 WHERE heartbeat_at + ttl_ms * interval '1 millisecond' >= now()
                 ORDER BY project, environment",
                &[],
            )
            .await?
        {
            let Ok(owner) = Uuid::parse_str(row.get::<_, &str>(0)) else {
                continue;
            };
            let work_item = Work::Environment {
                project: row.get(1),
                environment: row.get(2),
                since: row.get(3),
            };
            work.push((owner, work_item));
        }
        Ok(work)
    }
}
