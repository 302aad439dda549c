//! Builds, their steps and log chunks: the persistent build queue.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::servers::owner_live;
use super::{next_number, Store, StoreResult};

/// A build's state. `queued` and `running` are live; the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    Queued,
    Running,
    Passed,
    Failed,
    Errored,
    Cancelled,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Queued => "queued",
            BuildStatus::Running => "running",
            BuildStatus::Passed => "passed",
            BuildStatus::Failed => "failed",
            BuildStatus::Errored => "errored",
            BuildStatus::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> BuildStatus {
        match text {
            "queued" => BuildStatus::Queued,
            "running" => BuildStatus::Running,
            "passed" => BuildStatus::Passed,
            "failed" => BuildStatus::Failed,
            "cancelled" => BuildStatus::Cancelled,
            _ => BuildStatus::Errored,
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, BuildStatus::Queued | BuildStatus::Running)
    }
}

/// What a push (a pull request, a tag, a person) asks to build.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub project: String,
    pub branch: String,
    pub commit: String,
    pub event: String,
    /// For a pull request build: the pull request.
    pub pull_request: Option<PullRequestInfo>,
    /// Whether it cancels the project's older queued and running builds of the same branch
    /// (of a push) or the same pull request (the project's `auto_cancel`).
    pub supersedes: bool,
}

/// The pull request a build is of, as its steps' environment and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestInfo {
    pub number: i64,
    pub title: String,
    pub source_branch: String,
    pub target_branch: String,
    /// The repository the commits come from (`owner/slug`, `KEY/slug`).
    pub source_repository: String,
    /// From another repository than the project's: its build gets no secrets unless the
    /// project trusts forks.
    pub from_fork: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Build {
    pub id: Uuid,
    pub project: String,
    pub number: i64,
    pub branch: String,
    pub commit: String,
    pub event: String,
    pub status: BuildStatus,
    pub reason: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why this passing deploy-branch build did not become a release (its commit does not
    /// follow the newest release's), e.g. `commit 1a2b3c4d5e6f is an ancestor of v7's commit
    /// 9f8e7d6c5b4a`; `None` otherwise.
    pub release_skipped: Option<String>,
    /// The server that claimed it (its id in the installation's servers), once it ran.
    pub server: Option<Uuid>,
    /// The pull request a `pull_request` build is of.
    pub pull_request: Option<PullRequestInfo>,
    /// The commit's author and the first line of its message, once the build checked it out.
    pub author: Option<String>,
    pub message: Option<String>,
    /// The agent that runs (or ran) its latest attempt, by name; `None` when a server ran it.
    pub agent: Option<String>,
    /// 1, or 2 when the agent running the first attempt was lost and the build was queued
    /// again; each attempt keeps its steps and log lines.
    pub attempt: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// The attempt of the build the step ran in.
    pub attempt: i32,
    pub position: i32,
    pub name: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

/// One line of a build's log as the API shows it: `seq` numbers the build's lines from 1;
/// bytes that are not UTF-8 show as U+FFFD.
#[derive(Debug, Clone, Serialize)]
pub struct LogLineRecord {
    pub seq: i64,
    pub step: String,
    pub at: DateTime<Utc>,
    pub stream: String,
    pub line: String,
}

/// A stored run of whole lines of one step and stream (see `build_log_chunks`).
#[derive(Debug, Clone)]
pub struct LogChunkRecord {
    /// The `seq` of the chunk's first line.
    pub first_line: i64,
    pub lines: i32,
    pub step: String,
    pub stream: String,
    pub at: DateTime<Utc>,
    /// The lines, each ending in a newline, as the step wrote them (secrets masked).
    pub data: Vec<u8>,
}

impl LogChunkRecord {
    /// Its lines as the API shows them.
    pub fn to_lines(&self) -> impl Iterator<Item = LogLineRecord> + '_ {
        let body = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
        body.split(|&byte| byte == b'\n')
            .enumerate()
            .map(move |(index, line)| LogLineRecord {
                seq: self.first_line + index as i64,
                step: self.step.clone(),
                at: self.at,
                stream: self.stream.clone(),
                line: String::from_utf8_lossy(line).into_owned(),
            })
    }
}

/// Text in one page of a log, about: a page stops at the first line past it.
pub const LOG_PAGE_BYTES: usize = 1024 * 1024;

/// Chunks read per query while a page fills.
const CHUNKS_PER_QUERY: i64 = 32;

pub(super) const BUILD_COLUMNS: &str = "id, project, number, branch, commit, event, status, reason, queued_at, started_at, finished_at, release_skipped, owner, pull_request, author, message, agent_name, attempt";

pub(super) fn build_from_row(row: &tokio_postgres::Row) -> Build {
    Build {
        id: row.get(0),
        project: row.get(1),
        number: row.get(2),
        branch: row.get(3),
        commit: row.get(4),
        event: row.get(5),
        status: BuildStatus::parse(row.get(6)),
        reason: row.get(7),
        queued_at: row.get(8),
        started_at: row.get(9),
        finished_at: row.get(10),
        release_skipped: row.get(11),
        server: row.get(12),
        pull_request: row
            .get::<_, Option<Json<PullRequestInfo>>>(13)
            .map(|Json(info)| info),
        author: row.get(14),
        message: row.get(15),
        agent: row.get(16),
        attempt: row.get(17),
    }
}

/// Cancels the builds `newer` supersedes: the older queued and running builds of its project
/// and branch (a push's, a person's) or of its pull request. Queued ones end at once; running
/// ones are asked to stop (their server sees it within a second).
async fn supersede(tx: &tokio_postgres::Transaction<'_>, newer: &Build) -> StoreResult<()> {
    let reason = format!("superseded by build #{}", newer.number);
    let (same, key): (&str, String) = match &newer.pull_request {
        Some(pr) => (
            "event = 'pull_request' AND pull_request->>'number' = $4",
            pr.number.to_string(),
        ),
        None => (
            "event IN ('push', 'manual', 'rebuild') AND branch = $4",
            newer.branch.clone(),
        ),
    };
    tx.execute(
        &format!(
            "UPDATE builds SET status = 'cancelled', finished_at = now(), reason = $3
             WHERE project = $1 AND number < $2 AND status = 'queued' AND {same}"
        ),
        &[&newer.project, &newer.number, &reason, &key],
    )
    .await?;
    tx.execute(
        &format!(
            "UPDATE builds SET cancel_requested_at = now(), cancel_reason = $3
             WHERE project = $1 AND number < $2 AND status = 'running'
               AND cancel_requested_at IS NULL AND {same}"
        ),
        &[&newer.project, &newer.number, &reason, &key],
    )
    .await?;
    Ok(())
}

impl Store {
    /// Queues the builds of one webhook delivery. Returns `None` when `delivery_id` was seen
    /// before (a redelivery queues nothing new).
    pub async fn enqueue_builds(
        &self,
        delivery_id: Option<&str>,
        builds: &[NewBuild],
    ) -> StoreResult<Option<Vec<Build>>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(id) = delivery_id {
            let project = builds.first().map(|b| b.project.as_str()).unwrap_or("");
            let inserted = tx
                .execute(
                    "INSERT INTO webhook_deliveries (delivery_id, project) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&id, &project],
                )
                .await?;
            if inserted == 0 {
                return Ok(None);
            }
        }
        let mut queued = Vec::with_capacity(builds.len());
        for new in builds {
            let number = next_number(&tx, &new.project, "build").await?;
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO builds (id, project, number, branch, commit, event, status, delivery_id, pull_request)
                         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8) RETURNING {BUILD_COLUMNS}"
                    ),
                    &[&Uuid::new_v4(), &new.project, &number, &new.branch, &new.commit, &new.event, &delivery_id, &new.pull_request.as_ref().map(Json)],
                )
                .await?;
            let build = build_from_row(&row);
            if new.supersedes {
                supersede(&tx, &build).await?;
            }
            queued.push(build);
        }
        tx.commit().await?;
        Ok(Some(queued))
    }

    /// Takes the oldest queued build and marks it running under this store's owner, or `None`
    /// when the queue is empty. Safe with several servers: a build is claimed exactly once.
    pub async fn claim_next_build(&self) -> StoreResult<Option<Build>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "UPDATE builds SET status = 'running', started_at = now(), owner = $1
                     WHERE id = (SELECT id FROM builds WHERE status = 'queued'
                                   AND (labels IS NULL OR labels = '{{}}'::jsonb)
                                 ORDER BY queued_at, number LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING {BUILD_COLUMNS}"
                ),
                &[&self.owner()],
            )
            .await?;
        Ok(row.as_ref().map(build_from_row))
    }

    /// Records who made the commit build `id` builds, and its message's first line.
    pub async fn record_commit_summary(
        &self,
        id: Uuid,
        author: &str,
        message: &str,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE builds SET author = $2, message = $3 WHERE id = $1",
                &[&id, &author, &message],
            )
            .await?;
        Ok(())
    }

    pub async fn finish_build(
        &self,
        id: Uuid,
        status: BuildStatus,
        reason: Option<&str>,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE builds SET status = $2, finished_at = now(),
                     reason = CASE WHEN $2 = 'cancelled' AND cancel_reason IS NOT NULL
                                   THEN cancel_reason ELSE $3 END
                 WHERE id = $1 AND status = 'running' AND owner = $4",
                &[&id, &status.as_str(), &reason, &self.owner()],
            )
            .await?;
        Ok(())
    }

    /// Builds left `running` by a server that stopped or died (it is not live) end as errored,
    /// with that reason. Returns their ids, for their containers to be reaped.
    pub async fn error_orphaned_builds(&self) -> StoreResult<Vec<Uuid>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "UPDATE builds SET status = 'errored', finished_at = now(),
                     reason = 'the server stopped while this build was running'
                     WHERE status = 'running' AND agent_id IS NULL AND NOT {}
                     RETURNING id",
                    owner_live("builds.owner")
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Of `builds` (ids in the simple form containers are labelled with), those queued or
    /// running. A build is recorded final only after its teardown ran, so what a final build
    /// still has in dockerd is what no teardown will remove.
    pub async fn builds_unfinished(
        &self,
        builds: &std::collections::BTreeSet<String>,
    ) -> StoreResult<std::collections::BTreeSet<String>> {
        let ids: Vec<Uuid> = builds
            .iter()
            .filter_map(|b| Uuid::parse_str(b).ok())
            .collect();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id FROM builds WHERE id = ANY($1) AND status IN ('queued', 'running')",
                &[&ids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.get::<_, Uuid>(0).simple().to_string())
            .collect())
    }

    /// Cancels a queued build at once, and records the request for a running one, which the
    /// server running it stops. Returns the build as it is now, or `None` when there is no
    /// such build.
    pub async fn request_cancel(&self, project: &str, number: i64) -> StoreResult<Option<Build>> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE builds SET status = 'cancelled', finished_at = now(), reason = 'cancelled before it started'
                 WHERE project = $1 AND number = $2 AND status = 'queued'",
                &[&project, &number],
            )
            .await?;
        // A running build may run on another server: it finds the request (see below).
        client
            .execute(
                "UPDATE builds SET cancel_requested_at = now()
                 WHERE project = $1 AND number = $2 AND status = 'running' AND cancel_requested_at IS NULL",
                &[&project, &number],
            )
            .await?;
        self.build(project, number).await
    }

    /// The builds this store's server runs whose cancel was asked for (of any server).
    pub async fn cancels_requested(&self) -> StoreResult<Vec<Uuid>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id FROM builds WHERE owner = $1 AND status = 'running'
                 AND cancel_requested_at IS NOT NULL",
                &[&self.owner()],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    pub async fn list_builds(&self, project: &str, limit: i64) -> StoreResult<Vec<Build>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE project = $1 ORDER BY number DESC LIMIT $2"),
                &[&project, &limit],
            )
            .await?;
        Ok(rows.iter().map(build_from_row).collect())
    }

    pub async fn build(&self, project: &str, number: i64) -> StoreResult<Option<Build>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE project = $1 AND number = $2"),
                &[&project, &number],
            )
            .await?;
        Ok(row.as_ref().map(build_from_row))
    }

    pub async fn build_by_id(&self, id: Uuid) -> StoreResult<Option<Build>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(build_from_row))
    }

    pub async fn record_step(
        &self,
        build: Uuid,
        attempt: i32,
        position: i32,
        name: &str,
        status: &str,
        exit_code: Option<i32>,
    ) -> StoreResult<()> {
        let started = status == "running";
        self.client()
            .await?
            .execute(
                "INSERT INTO build_steps (build_id, position, name, status, exit_code, started_at, finished_at, attempt)
                 VALUES ($1, $2, $3, $4, $5,
                         CASE WHEN $6 THEN now() END, CASE WHEN NOT $6 THEN now() END, $7)
                 ON CONFLICT (build_id, attempt, position) DO UPDATE
                 SET status = EXCLUDED.status, exit_code = EXCLUDED.exit_code,
                     started_at = COALESCE(build_steps.started_at, EXCLUDED.started_at),
                     finished_at = EXCLUDED.finished_at",
                &[&build, &position, &name, &status, &exit_code, &started, &attempt],
            )
            .await?;
        Ok(())
    }

    pub async fn steps(&self, build: Uuid) -> StoreResult<Vec<StepRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT position, name, status, exit_code, started_at, finished_at,
                        (extract(epoch FROM finished_at - started_at) * 1000)::bigint, attempt
                 FROM build_steps WHERE build_id = $1 ORDER BY attempt, position",
                &[&build],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StepRecord {
                attempt: r.get(7),
                position: r.get(0),
                name: r.get(1),
                status: r.get(2),
                exit_code: r.get(3),
                started_at: r.get(4),
                finished_at: r.get(5),
                duration_ms: r.get(6),
            })
            .collect())
    }

    /// The number the next line of `build`'s log gets: a later attempt's lines follow the
    /// earlier attempts'.
    pub async fn next_log_line(&self, build: Uuid) -> StoreResult<i64> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COALESCE(max(first_line + lines), 1)::bigint FROM build_log_chunks WHERE build_id = $1",
                &[&build],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Appends chunks of log lines of one attempt in one statement; the caller numbers the
    /// lines, in order. A chunk already stored under its first line is kept as it is, so a
    /// batch sent again (an agent's retry) adds nothing twice.
    pub async fn append_log_chunks(
        &self,
        build: Uuid,
        attempt: i32,
        chunks: &[LogChunkRecord],
    ) -> StoreResult<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let firsts: Vec<i64> = chunks.iter().map(|c| c.first_line).collect();
        let counts: Vec<i32> = chunks.iter().map(|c| c.lines).collect();
        let steps: Vec<&str> = chunks.iter().map(|c| c.step.as_str()).collect();
        let streams: Vec<&str> = chunks.iter().map(|c| c.stream.as_str()).collect();
        let ats: Vec<DateTime<Utc>> = chunks.iter().map(|c| c.at).collect();
        let data: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
        self.client()
            .await?
            .execute(
                "INSERT INTO build_log_chunks (build_id, attempt, first_line, lines, step, stream, at, data)
                 SELECT $1, $8, * FROM unnest($2::bigint[], $3::int[], $4::text[], $5::text[],
                                              $6::timestamptz[], $7::bytea[])
                 ON CONFLICT (build_id, first_line) DO NOTHING",
                &[&build, &firsts, &counts, &steps, &streams, &ats, &data, &attempt],
            )
            .await?;
        Ok(())
    }

    /// One page of a build's log: the lines numbered after `after`, at most `limit` of them
    /// and about [`LOG_PAGE_BYTES`] of text (always at least one line when there is one).
    pub async fn log_lines(
        &self,
        build: Uuid,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<LogLineRecord>> {
        let client = self.client().await?;
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut after = after;
        loop {
            let rows = client
                .query(
                    "SELECT first_line, lines, step, stream, at, data FROM build_log_chunks
                     WHERE build_id = $1 AND first_line + lines > $2
                     ORDER BY first_line LIMIT $3",
                    &[&build, &(after + 1), &CHUNKS_PER_QUERY],
                )
                .await?;
            for row in &rows {
                let chunk = LogChunkRecord {
                    first_line: row.get(0),
                    lines: row.get(1),
                    step: row.get(2),
                    stream: row.get(3),
                    at: row.get(4),
                    data: row.get(5),
                };
                for line in chunk.to_lines().filter(|line| line.seq > after) {
                    if page.len() >= limit || (bytes >= LOG_PAGE_BYTES && !page.is_empty()) {
                        return Ok(page);
                    }
                    bytes += line.line.len();
                    page.push(line);
                }
            }
            match page.last() {
                Some(last) if rows.len() as i64 == CHUNKS_PER_QUERY => after = last.seq,
                _ => return Ok(page),
            }
        }
    }
}
