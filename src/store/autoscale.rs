//! What the autoscaler of build agents reads and records: the queue's size, the agents that
//! name their instance and how long each has idled (on the database's clock), the instances
//! it detached and has yet to terminate, and its turn (one server of an installation acts at
//! a time, under an advisory lock).

use std::future::Future;

use super::{Store, StoreResult};

/// The advisory lock a server holds while it scales the agents.
const AUTOSCALE_LOCK: i64 = 4242004;

/// Builds waiting for an agent, and builds agents run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSize {
    pub pending: i64,
    pub running: i64,
}

/// An agent that named its instance (`--instance-id`), as the autoscaler weighs it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceAgent {
    pub name: String,
    pub instance_id: String,
    pub stopped: bool,
    /// No heartbeat for longer than a lease.
    pub lost: bool,
    pub draining: bool,
    /// Builds it runs now.
    pub running: i64,
    /// Seconds since its last build ended, or since it registered when it ran none since.
    pub idle_seconds: f64,
    /// Seconds since its last heartbeat.
    pub silent_seconds: f64,
}

impl Store {
    /// Runs `work` unless another server of the installation is scaling now (`None` then).
    /// The lock is the transaction's: let go when `work` ends, fails, or its server dies.
    pub async fn in_autoscale_turn<T, Fut>(
        &self,
        work: impl FnOnce() -> Fut,
    ) -> StoreResult<Option<T>>
    where
        Fut: Future<Output = T>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&AUTOSCALE_LOCK])
            .await?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
        let done = work().await;
        if let Err(error) = tx.rollback().await {
            tracing::warn!(%error, "cannot end the autoscaler's turn cleanly");
        }
        Ok(Some(done))
    }

    /// Queued builds, and builds running on agents.
    pub async fn autoscale_queue(&self) -> StoreResult<QueueSize> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'queued'),
                        count(*) FILTER (WHERE status = 'running' AND agent_id IS NOT NULL)
                 FROM builds WHERE status IN ('queued', 'running')",
                &[],
            )
            .await?;
        Ok(QueueSize {
            pending: row.get(0),
            running: row.get(1),
        })
    }

    /// The agents that named their instance; `lease_seconds` decides which are lost.
    pub async fn instance_agents(&self, lease_seconds: i64) -> StoreResult<Vec<InstanceAgent>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT a.name, a.instance_id, a.stopped_at IS NOT NULL,
                        a.heartbeat_at < now() - make_interval(secs => $1), a.draining,
                        (SELECT count(*) FROM builds b
                         WHERE b.agent_id = a.id AND b.status = 'running'),
                        extract(epoch FROM now() - greatest(a.registered_at,
                            (SELECT max(b.finished_at) FROM builds b WHERE b.agent_id = a.id)))::float8,
                        extract(epoch FROM now() - a.heartbeat_at)::float8
                 FROM agents a WHERE a.instance_id IS NOT NULL ORDER BY a.name",
                &[&(lease_seconds as f64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| InstanceAgent {
                name: row.get(0),
                instance_id: row.get(1),
                stopped: row.get(2),
                lost: row.get(3),
                draining: row.get(4),
                running: row.get(5),
                idle_seconds: row.get(6),
                silent_seconds: row.get(7),
            })
            .collect())
    }

    /// Deletes the agent of that name once it is stopped or lost and runs no build (a lost
    /// agent's builds are queued again when their leases expire); false when it was kept.
    pub async fn forget_agent(&self, name: &str, lease_seconds: i64) -> StoreResult<bool> {
        let deleted = self
            .client()
            .await?
            .execute(
                "DELETE FROM agents a WHERE a.name = $1
                   AND (a.stopped_at IS NOT NULL
                        OR a.heartbeat_at < now() - make_interval(secs => $2))
                   AND NOT EXISTS (SELECT 1 FROM builds b
                                   WHERE b.agent_id = a.id AND b.status = 'running')",
                &[&name, &(lease_seconds as f64)],
            )
            .await?;
        Ok(deleted == 1)
    }

    /// Records that the autoscaler is detaching `instance` from its group to terminate it.
    pub async fn record_detached(&self, instance: &str) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO autoscale_detached (instance_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&instance],
            )
            .await?;
        Ok(())
    }

    /// The instances the autoscaler detached and has not yet terminated.
    pub async fn detached_instances(&self) -> StoreResult<Vec<String>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT instance_id FROM autoscale_detached ORDER BY detached_at",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Records that `instance` was terminated.
    pub async fn terminated(&self, instance: &str) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "DELETE FROM autoscale_detached WHERE instance_id = $1",
                &[&instance],
            )
            .await?;
        Ok(())
    }
}
