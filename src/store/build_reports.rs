//! Build status reports (`build_reports`, V16): a trigger records one whenever a build's
//! status changes (it started, or ended); servers claim and deliver them to Bitbucket in
//! order per build, and what happened to each is kept for the build's page.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreResult};

/// How long a server may take over the reports it claimed before another may claim them.
const CLAIM_SECONDS: f64 = 60.0;

/// A report to deliver, with what Bitbucket is told about its build.
#[derive(Debug, Clone)]
pub struct PendingReport {
    pub id: i64,
    /// The build's status when the report was recorded.
    pub status: String,
    /// Failed deliveries so far.
    pub attempts: i32,
    pub project: String,
    pub number: i64,
    pub commit: String,
    pub branch: String,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
}

/// One report as the API shows it on its build.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRecord {
    pub status: String,
    /// `null` while it is being delivered; `delivered`, `abandoned` or `unreported`.
    pub outcome: Option<String>,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Claims up to `limit` reports due now whose earlier reports (of the same build) are all
    /// settled, oldest first, for this server to deliver.
    pub async fn claim_build_reports(&self, limit: i64) -> StoreResult<Vec<PendingReport>> {
        let rows = self
            .client()
            .await?
            .query(
                "UPDATE build_reports r
                 SET claimed_by = $1, claimed_until = now() + make_interval(secs => $3)
                 FROM (SELECT p.id FROM build_reports p
                       WHERE p.outcome IS NULL AND p.next_attempt_at <= now()
                         AND (p.claimed_until IS NULL OR p.claimed_until < now())
                         AND NOT EXISTS (SELECT 1 FROM build_reports e
                                         WHERE e.build_id = p.build_id AND e.id < p.id
                                           AND e.outcome IS NULL)
                       ORDER BY p.id LIMIT $2 FOR UPDATE SKIP LOCKED) due,
                      builds b
                 WHERE r.id = due.id AND b.id = r.build_id
                 RETURNING r.id, r.status, r.attempts, b.project, b.number, b.commit, b.branch,
                           b.reason,
                           (extract(epoch FROM b.finished_at - b.started_at) * 1000)::bigint",
                &[&self.owner(), &limit, &CLAIM_SECONDS],
            )
            .await?;
        let mut reports: Vec<PendingReport> = rows
            .iter()
            .map(|row| {
                let status: String = row.get(1);
                let running = status == "running";
                PendingReport {
                    id: row.get(0),
                    attempts: row.get(2),
                    project: row.get(3),
                    number: row.get(4),
                    commit: row.get(5),
                    branch: row.get(6),
                    reason: if running { None } else { row.get(7) },
                    duration_ms: if running { None } else { row.get(8) },
                    status,
                }
            })
            .collect();
        reports.sort_by_key(|report| report.id);
        Ok(reports)
    }

    /// The reports of build `build_id`, oldest first.
    pub async fn build_reports(&self, build_id: Uuid) -> StoreResult<Vec<ReportRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT status, outcome, attempts, last_error, created_at, finished_at
                 FROM build_reports WHERE build_id = $1 ORDER BY id",
                &[&build_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| ReportRecord {
                status: row.get(0),
                outcome: row.get(1),
                attempts: row.get(2),
                error: row.get(3),
                created_at: row.get(4),
                finished_at: row.get(5),
            })
            .collect())
    }
}
