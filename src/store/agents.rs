//! Build agents and the leases of the builds they run (see `migrations/V19__agents.sql`).
//!
//! An agent's build is held by its lease, on the database's clock: handed out unconfirmed
//! for [`CONFIRM_SECONDS`], confirmed by the agent once it has the build, then renewed by
//! its heartbeats. Every server sweeps expired leases ([`Store::expire_agent_leases`]): an
//! unconfirmed one puts the build back in the queue as it was; a confirmed one queues it
//! again as attempt 2 when it was attempt 1 and had not reached packaging, and otherwise
//! errors it, "agent lost".

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::builds::{build_from_row, Build, BuildStatus, BUILD_COLUMNS};
use super::tokens::digest;
use super::{Store, StoreResult};

/// How long an agent has to confirm a lease it was handed (it received the build).
pub const CONFIRM_SECONDS: i64 = 10;

/// What an agent says about itself when it registers.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub name: String,
    pub capacity: i32,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub host: String,
    pub instance_id: Option<String>,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRecord {
    pub id: Uuid,
    pub name: String,
    pub capacity: i32,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub host: String,
    /// The machine it runs on, as it said (`--instance-id`).
    pub instance_id: Option<String>,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    pub draining: bool,
    pub stopped_at: Option<DateTime<Utc>>,
    /// `idle`, `busy`, `draining`, `stopped`, or `lost` (no heartbeat for longer than a lease).
    pub state: String,
    /// The builds it runs now, as `<project>#<number>`.
    pub running: Vec<String>,
}

/// What a heartbeat tells the agent back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// Builds it reported that it must stop: cancelled, or no longer leased to it.
    pub stop: Vec<Uuid>,
    /// Take no new work and exit once the running builds end.
    pub drain: bool,
}

/// What the lease sweep did.
#[derive(Debug, Default)]
pub struct ExpiredLeases {
    /// Handed out, never confirmed: queued again as they were.
    pub unconfirmed: Vec<Uuid>,
    /// Lost with their agent before packaging: queued again as their next attempt.
    pub requeued: Vec<Uuid>,
    /// Lost with their agent on their second attempt or while packaging: errored.
    pub errored: Vec<Uuid>,
}

const AGENT_COLUMNS: &str =
    "a.id, a.name, a.capacity, a.labels, a.version, a.host, a.registered_at,
    a.heartbeat_at, a.draining, a.stopped_at,
    ARRAY(SELECT b.project || '#' || b.number FROM builds b
          WHERE b.agent_id = a.id AND b.status = 'running' ORDER BY b.started_at),
    a.heartbeat_at < now() - make_interval(secs => $LEASE), a.instance_id";

fn agent_from_row(row: &tokio_postgres::Row) -> AgentRecord {
    let Json(labels): Json<BTreeMap<String, String>> = row.get(3);
    let running: Vec<String> = row.get(10);
    let draining: bool = row.get(8);
    let stopped_at: Option<DateTime<Utc>> = row.get(9);
    let lost: bool = row.get(11);
    let state = if stopped_at.is_some() {
        "stopped"
    } else if lost {
        "lost"
    } else if draining {
        "draining"
    } else if running.is_empty() {
        "idle"
    } else {
        "busy"
    };
    AgentRecord {
        id: row.get(0),
        name: row.get(1),
        capacity: row.get(2),
        labels,
        version: row.get(4),
        host: row.get(5),
        instance_id: row.get(12),
        registered_at: row.get(6),
        last_heartbeat: row.get(7),
        draining,
        stopped_at,
        state: state.to_owned(),
        running,
    }
}

fn agent_columns(lease_seconds: i64) -> String {
    AGENT_COLUMNS.replace("$LEASE", &lease_seconds.to_string())
}

impl Store {
    /// Registers an agent under its name with a new credential (stored hashed). A name
    /// registered before is the same agent started again: it gets the new credential, and
    /// the builds its earlier process held lose their lease now, for the sweep to queue again.
    pub async fn register_agent(&self, agent: &NewAgent, credential: &str) -> StoreResult<Uuid> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "INSERT INTO agents (id, name, capacity, labels, version, host, credential_sha256,
                     instance_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (name) DO UPDATE SET capacity = EXCLUDED.capacity,
                     labels = EXCLUDED.labels, version = EXCLUDED.version, host = EXCLUDED.host,
                     instance_id = EXCLUDED.instance_id,
                     credential_sha256 = EXCLUDED.credential_sha256, registered_at = now(),
                     heartbeat_at = now(), draining = false, stopped_at = NULL
                 RETURNING id",
                &[
                    &Uuid::new_v4(),
                    &agent.name,
                    &agent.capacity,
                    &Json(&agent.labels),
                    &agent.version,
                    &agent.host,
                    &digest(credential),
                    &agent.instance_id,
                ],
            )
            .await?;
        let id: Uuid = row.get(0);
        tx.execute(
            "UPDATE builds SET lease_expires = now() - interval '1 second'
             WHERE agent_id = $1 AND status = 'running'",
            &[&id],
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The agent a credential was given to, unless it stopped.
    pub async fn agent_by_credential(
        &self,
        credential: &str,
    ) -> StoreResult<Option<(Uuid, String)>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, name FROM agents WHERE credential_sha256 = $1 AND stopped_at IS NULL",
                &[&digest(credential)],
            )
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    pub async fn list_agents(&self, lease_seconds: i64) -> StoreResult<Vec<AgentRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {} FROM agents a ORDER BY a.name",
                    agent_columns(lease_seconds)
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(agent_from_row).collect())
    }

    /// Asks the agent of that name to drain; `None` when there is none.
    pub async fn drain_agent(
        &self,
        name: &str,
        lease_seconds: i64,
    ) -> StoreResult<Option<AgentRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "WITH drained AS (UPDATE agents SET draining = true WHERE name = $1 RETURNING id)
                     SELECT {} FROM agents a WHERE a.id IN (SELECT id FROM drained)",
                    agent_columns(lease_seconds)
                ),
                &[&name],
            )
            .await?;
        Ok(row.as_ref().map(agent_from_row))
    }

    /// Records the agent's heartbeat: renews the leases of the builds it runs (`running`:
    /// each build's id and attempt), and says which of them to stop and whether to drain.
    pub async fn agent_heartbeat(
        &self,
        agent: Uuid,
        running: &[(Uuid, i32)],
        draining: bool,
        lease_seconds: i64,
    ) -> StoreResult<HeartbeatAnswer> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "UPDATE agents SET heartbeat_at = now(), draining = draining OR $2
                 WHERE id = $1 RETURNING draining",
                &[&agent, &draining],
            )
            .await?;
        let ids: Vec<Uuid> = running.iter().map(|(id, _)| *id).collect();
        let attempts: Vec<i32> = running.iter().map(|(_, attempt)| *attempt).collect();
        let kept = client
            .query(
                // A lease not confirmed yet (the agent is fetching the source) is kept but
                // not renewed: only the confirmation starts it.
                "UPDATE builds b SET lease_expires = CASE WHEN b.lease_confirmed
                         THEN now() + make_interval(secs => $4) ELSE b.lease_expires END
                 FROM unnest($2::uuid[], $3::int[]) AS r(id, attempt)
                 WHERE b.id = r.id AND b.attempt = r.attempt AND b.agent_id = $1
                   AND b.status = 'running' AND b.cancel_requested_at IS NULL
                 RETURNING b.id",
                &[&agent, &ids, &attempts, &(lease_seconds as f64)],
            )
            .await?;
        let kept: Vec<Uuid> = kept.iter().map(|row| row.get(0)).collect();
        Ok(HeartbeatAnswer {
            stop: ids.into_iter().filter(|id| !kept.contains(id)).collect(),
            drain: row.get(0),
        })
    }

    /// Hands the oldest queued build to the agent, unless it drains or runs as many builds as
    /// its capacity; the lease must be confirmed within [`CONFIRM_SECONDS`].
    pub async fn lease_build(&self, agent: Uuid) -> StoreResult<Option<Build>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "UPDATE builds SET status = 'running', started_at = now(), owner = NULL,
                         agent_id = a.id, agent_name = a.name, lease_confirmed = false,
                         lease_expires = now() + interval '{CONFIRM_SECONDS} seconds'
                     FROM agents a
                     WHERE a.id = $1 AND NOT a.draining AND a.stopped_at IS NULL
                       AND (SELECT count(*) FROM builds r WHERE r.agent_id = a.id AND r.status = 'running') < a.capacity
                       AND builds.id = (SELECT q.id FROM builds q WHERE q.status = 'queued'
                                          AND (q.labels IS NULL OR q.labels <@ a.labels)
                                        ORDER BY q.queued_at, q.number LIMIT 1
                                        FOR UPDATE OF q SKIP LOCKED)
                     RETURNING {}",
                    BUILD_COLUMNS
                        .split(", ")
                        .map(|column| format!("builds.{column}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &[&agent],
            )
            .await?;
        Ok(row.as_ref().map(build_from_row))
    }

    /// The build `id` when its attempt `attempt` is leased to `agent` and running.
    pub async fn leased_build(
        &self,
        agent: Uuid,
        id: Uuid,
        attempt: i32,
    ) -> StoreResult<Option<Build>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "SELECT {BUILD_COLUMNS} FROM builds
                     WHERE id = $1 AND attempt = $2 AND agent_id = $3 AND status = 'running'"
                ),
                &[&id, &attempt, &agent],
            )
            .await?;
        Ok(row.as_ref().map(build_from_row))
    }

    /// Confirms the lease of a build handed to `agent`; false when it is no longer its.
    pub async fn confirm_lease(
        &self,
        agent: Uuid,
        id: Uuid,
        attempt: i32,
        lease_seconds: i64,
    ) -> StoreResult<bool> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE builds SET lease_confirmed = true,
                     lease_expires = now() + make_interval(secs => $4)
                 WHERE id = $1 AND attempt = $2 AND agent_id = $3 AND status = 'running'",
                &[&id, &attempt, &agent, &(lease_seconds as f64)],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records how the agent's attempt of a build ended; false when it is no longer its.
    pub async fn finish_leased_build(
        &self,
        agent: Uuid,
        id: Uuid,
        attempt: i32,
        status: BuildStatus,
        reason: Option<&str>,
    ) -> StoreResult<bool> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE builds SET status = $4, finished_at = now(), lease_expires = NULL,
                     reason = CASE WHEN $4 = 'cancelled' AND cancel_reason IS NOT NULL
                                   THEN cancel_reason ELSE $5 END
                 WHERE id = $1 AND attempt = $2 AND agent_id = $3 AND status = 'running'",
                &[&id, &attempt, &agent, &status.as_str(), &reason],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records that the agent stopped (it drained and exited).
    pub async fn stop_agent(&self, agent: Uuid) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE agents SET stopped_at = now(), draining = true WHERE id = $1",
                &[&agent],
            )
            .await?;
        Ok(())
    }

    /// Ends the leases that expired (see the module's description).
    pub async fn expire_agent_leases(&self) -> StoreResult<ExpiredLeases> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let ids = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|row| row.get(0)).collect();
        let unconfirmed = tx
            .query(
                "UPDATE builds SET status = 'queued', started_at = NULL, agent_id = NULL,
                     agent_name = NULL, lease_expires = NULL
                 WHERE status = 'running' AND agent_id IS NOT NULL AND NOT lease_confirmed
                   AND lease_expires < now()
                 RETURNING id",
                &[],
            )
            .await?;
        let requeued = tx
            .query(
                "UPDATE builds b SET status = 'queued', started_at = NULL, attempt = attempt + 1,
                     agent_id = NULL, agent_name = NULL, lease_expires = NULL,
                     lease_confirmed = false,
                     reason = 'attempt ' || attempt || ' was lost with agent ' || agent_name || '; queued again'
                 WHERE status = 'running' AND agent_id IS NOT NULL AND lease_expires < now()
                   AND attempt = 1 AND cancel_requested_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.build_id = b.id)
                 RETURNING id",
                &[],
            )
            .await?;
        let errored = tx
            .query(
                "UPDATE builds SET status = 'errored', finished_at = now(), lease_expires = NULL,
                     reason = 'agent lost: agent ' || agent_name || ' stopped answering during attempt ' || attempt
                 WHERE status = 'running' AND agent_id IS NOT NULL AND lease_expires < now()
                 RETURNING id",
                &[],
            )
            .await?;
        tx.commit().await?;
        Ok(ExpiredLeases {
            unconfirmed: ids(unconfirmed),
            requeued: ids(requeued),
            errored: ids(errored),
        })
    }

    /// The release build `build` numbered and is still packaging: `(id, number)`.
    pub async fn packaging_release_of(&self, build: Uuid) -> StoreResult<Option<(Uuid, i64)>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, number FROM releases WHERE build_id = $1 AND status = 'packaging'",
                &[&build],
            )
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    /// The labels of agent `agent`.
    pub async fn agent_labels(&self, agent: Uuid) -> StoreResult<BTreeMap<String, String>> {
        let row = self
            .client()
            .await?
            .query_one("SELECT labels FROM agents WHERE id = $1", &[&agent])
            .await?;
        let Json(labels): Json<BTreeMap<String, String>> = row.get(0);
        Ok(labels)
    }

    /// Records the labels a running build's `.slipway.yml` asks for.
    pub async fn record_build_labels(
        &self,
        build: Uuid,
        labels: &BTreeMap<String, String>,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE builds SET labels = $2 WHERE id = $1",
                &[&build, &Json(labels)],
            )
            .await?;
        Ok(())
    }

    /// Says again why each queued build that asks for labels waits, from the agents there
    /// are now (agents come, go and are lost while it waits).
    pub async fn refresh_waiting_reasons(&self, lease_seconds: i64) -> StoreResult<()> {
        let waiting = self
            .client()
            .await?
            .query(
                "SELECT id, labels FROM builds
                 WHERE status = 'queued' AND labels IS NOT NULL AND labels <> '{}'::jsonb",
                &[],
            )
            .await?;
        if waiting.is_empty() {
            return Ok(());
        }
        let agents = self.list_agents(lease_seconds).await?;
        let client = self.client().await?;
        for row in waiting {
            let (id, Json(labels)): (Uuid, Json<BTreeMap<String, String>>) =
                (row.get(0), row.get(1));
            client
                .execute(
                    "UPDATE builds SET reason = $2 WHERE id = $1 AND status = 'queued'",
                    &[&id, &waiting_reason(&labels, &agents)],
                )
                .await?;
        }
        Ok(())
    }

    /// Puts a running build that its taker cannot run (its labels ask for another agent) back
    /// in the queue, where it keeps its place, with its labels and why it waits.
    pub async fn defer_build(
        &self,
        build: Uuid,
        labels: &BTreeMap<String, String>,
        reason: &str,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE builds SET status = 'queued', started_at = NULL, owner = NULL,
                     agent_id = NULL, agent_name = NULL, lease_expires = NULL,
                     lease_confirmed = false, labels = $2, reason = $3
                 WHERE id = $1 AND status = 'running'",
                &[&build, &Json(labels), &reason],
            )
            .await?;
        Ok(())
    }
}

/// Why a build with `labels` waits: which agents there are, with their labels.
pub fn waiting_reason(labels: &BTreeMap<String, String>, agents: &[AgentRecord]) -> String {
    let wanted = join_labels(labels);
    let live: Vec<String> = agents
        .iter()
        .filter(|agent| agent.stopped_at.is_none())
        .map(|agent| format!("{} ({})", agent.name, join_labels(&agent.labels)))
        .collect();
    if live.is_empty() {
        format!("waits for an agent labelled {wanted}: no agent is registered")
    } else {
        format!(
            "waits for an agent labelled {wanted}; agents: {}",
            live.join(", ")
        )
    }
}

fn join_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "nothing".to_owned();
    }
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether an agent with `have` may run a build that asks for `wanted`.
pub fn labels_match(wanted: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    wanted
        .iter()
        .all(|(key, value)| have.get(key) == Some(value))
}
