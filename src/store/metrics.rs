//! What `/metrics` reports, aggregated in SQL at each scrape from the rows every server of the
//! installation shares, so any server answers the same: one query per metric family, each
//! returning one row per label set.

use super::{Store, StoreResult};

/// The upper bounds, in seconds, of every duration histogram's buckets (`+Inf` is the count).
pub const BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Step names are labels: a project's are those its steps used in its newest this many builds...
pub const STEP_NAMES_FROM_BUILDS: i64 = 100;
/// ...at most this many of them (the most used first).
pub const STEP_NAMES_PER_PROJECT: i64 = 50;

/// Every status a build can have (`builds.status`), reported even when no build has it.
pub const BUILD_STATUSES: [&str; 6] = [
    "queued",
    "running",
    "passed",
    "failed",
    "errored",
    "cancelled",
];

/// One label set's value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label values, in the order of the family's label names.
    pub labels: Vec<String>,
    pub value: f64,
}

/// One label set's histogram: `buckets[i]` counts the observations of at most `BUCKETS[i]`
/// seconds (cumulative, as the exposition format wants).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub labels: Vec<String>,
    pub buckets: Vec<i64>,
    pub sum: f64,
    pub count: i64,
}

/// A project's queued builds.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSample {
    pub project: String,
    pub length: i64,
    /// How long its oldest queued build has waited, in seconds.
    pub oldest_seconds: f64,
}

/// One of Slipway's database advisory locks, and the sessions waiting for it now.
#[derive(Debug, Clone, PartialEq)]
pub struct LockWaiters {
    pub lock: String,
    pub waiting: i64,
    /// How long the longest waiting session has waited, in seconds (0 with none).
    pub longest_seconds: f64,
}

/// The advisory locks in Slipway's database that a server waits for, by name, as `pg_locks` shows them: `(classid,
/// objid, objsubid)` of a one-bigint key (its high half, low half, 1), or a class of two-int
/// keys (the class, any, 2). The schema migrations' lock is `Store::migrate`'s number.
fn advisory_locks() -> String {
    let one = |name: &str, key: i64| format!("('{name}', {}, {}, 1)", key >> 32, key & 0xffff_ffff);
    format!(
        "(VALUES {}, {}, {}, ('release_numbering', {}, NULL, 2))
         AS known (name, classid, objid, objsubid)",
        one("schema_migrations", 4242001),
        one("signing_key", super::signing_key::SIGNING_KEY_LOCK),
        one("apt_bucket", super::apt::APT_BUCKET_LOCK),
        super::releases::RELEASE_ORDER_LOCK,
    )
}

/// A duration in seconds between two `timestamptz` expressions, never negative.
fn seconds(from: &str, to: &str) -> String {
    format!("greatest(extract(epoch FROM {to} - {from}), 0)::float8")
}

impl Store {
    /// Builds by project and status (only the pairs that have builds).
    pub async fn metric_builds_by_status(&self) -> StoreResult<Vec<Sample>> {
        self.samples(
            "SELECT project, status, count(*)::float8 FROM builds GROUP BY project, status
             ORDER BY project, status",
            2,
        )
        .await
    }

    /// Queued builds by project (only projects with some).
    pub async fn metric_build_queue(&self) -> StoreResult<Vec<QueueSample>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT project, count(*), max({}) FROM builds WHERE status = 'queued'
                     GROUP BY project ORDER BY project",
                    seconds("queued_at", "now()")
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| QueueSample {
                project: row.get(0),
                length: row.get(1),
                oldest_seconds: row.get(2),
            })
            .collect())
    }

    /// From queued to started, over the builds that started; by project.
    pub async fn metric_build_queue_waits(&self) -> StoreResult<Vec<Histogram>> {
        let source = format!(
            "SELECT project, {} AS seconds FROM builds WHERE started_at IS NOT NULL",
            seconds("queued_at", "started_at")
        );
        self.histograms(&source, &["project"]).await
    }

    /// From started to finished, over the builds that ended after they started; by project
    /// and status.
    pub async fn metric_build_durations(&self) -> StoreResult<Vec<Histogram>> {
        let source = format!(
            "SELECT project, status, {} AS seconds FROM builds
             WHERE started_at IS NOT NULL AND finished_at IS NOT NULL
                 AND status NOT IN ('queued', 'running')",
            seconds("started_at", "finished_at")
        );
        self.histograms(&source, &["project", "status"]).await
    }

    /// From started to finished, over steps that ran and ended; by project and step name,
    /// for the names [`STEP_NAMES_FROM_BUILDS`] and [`STEP_NAMES_PER_PROJECT`] select.
    pub async fn metric_step_durations(&self) -> StoreResult<Vec<Histogram>> {
        let source = format!(
            "WITH recent AS (
                 SELECT id, project FROM (
                     SELECT id, project,
                            row_number() OVER (PARTITION BY project ORDER BY number DESC) AS n
                     FROM builds) newest
                 WHERE n <= {STEP_NAMES_FROM_BUILDS}),
             named AS (
                 SELECT project, name FROM (
                     SELECT r.project, s.name, row_number() OVER (
                         PARTITION BY r.project ORDER BY count(*) DESC, s.name) AS rank
                     FROM build_steps s JOIN recent r ON r.id = s.build_id
                     GROUP BY r.project, s.name) used
                 WHERE rank <= {STEP_NAMES_PER_PROJECT})
             SELECT b.project, s.name AS step, {} AS seconds
             FROM build_steps s
             JOIN builds b ON b.id = s.build_id
             JOIN named n ON n.project = b.project AND n.name = s.name
             WHERE s.started_at IS NOT NULL AND s.finished_at IS NOT NULL",
            seconds("s.started_at", "s.finished_at")
        );
        self.histograms(&source, &["project", "step"]).await
    }

    /// From a bake's start to its end, over release images baked (`baked_at`, whatever
    /// retention did to the image since) or failed; a failed bake records no end, so its last
    /// bake log line is taken as the end (one without a log is left out). By project, image
    /// kind and outcome.
    pub async fn metric_bake_durations(&self) -> StoreResult<Vec<Histogram>> {
        let source = format!(
            "SELECT r.project, i.kind,
                    CASE WHEN i.baked_at IS NOT NULL THEN 'baked' ELSE 'failed' END AS status,
                    {} AS seconds
             FROM release_images i
             JOIN releases r ON r.id = i.release_id
             LEFT JOIN LATERAL (
                 SELECT l.at FROM bake_log_lines l
                 WHERE i.baked_at IS NULL AND l.release_id = i.release_id
                     AND l.kind = i.kind AND l.region = i.region
                 ORDER BY l.seq DESC LIMIT 1) last ON true
             WHERE i.started_at IS NOT NULL
                 AND (i.baked_at IS NOT NULL OR (i.status = 'failed' AND last.at IS NOT NULL))",
            seconds("i.started_at", "coalesce(i.baked_at, last.at)")
        );
        self.histograms(&source, &["project", "kind", "status"])
            .await
    }

    /// Deployments that ended, by project, environment, kind (`deploy`, `switch_back`) and
    /// final state (`succeeded`, `failed`, `rolled_back`).
    pub async fn metric_deployments_finished(&self) -> StoreResult<Vec<Sample>> {
        self.samples(
            "SELECT project, environment, kind, state, count(*)::float8 FROM deployments
             WHERE finished_at IS NOT NULL
             GROUP BY project, environment, kind, state ORDER BY project, environment, kind, state",
            4,
        )
        .await
    }

    /// Deployments not ended, by project, environment and the state they are in
    /// (`retaining_blue`: serving, the old fleet kept warm).
    pub async fn metric_deployments_unfinished(&self) -> StoreResult<Vec<Sample>> {
        self.samples(
            "SELECT project, environment, state, count(*)::float8 FROM deployments
             WHERE finished_at IS NULL
             GROUP BY project, environment, state ORDER BY project, environment, state",
            3,
        )
        .await
    }

    /// How long a new fleet took to pass its health checks: the `waiting_healthy` steps that
    /// ended without error, of deployments that launched a fleet; by project and environment.
    pub async fn metric_times_to_healthy(&self) -> StoreResult<Vec<Histogram>> {
        let source = "SELECT d.project, d.environment, (s.elapsed_ms / 1000.0)::float8 AS seconds
             FROM deployment_steps s JOIN deployments d ON d.id = s.deployment_id
             WHERE s.step = 'waiting_healthy' AND s.elapsed_ms IS NOT NULL
                 AND s.finished_at IS NOT NULL AND s.error IS NULL AND d.kind = 'deploy'";
        self.histograms(source, &["project", "environment"]).await
    }

    /// For each environment lock a live owner holds (its heartbeat within its time to live,
    /// its server live): how long it has held it, which is what another operation on the
    /// environment waits behind. By project, environment and owner.
    pub async fn metric_environment_locks_held(&self) -> StoreResult<Vec<Sample>> {
        let sql = format!(
            "SELECT project, environment, owner, {} FROM environment_locks l
             WHERE l.heartbeat_at + l.ttl_ms * interval '1 millisecond' >= now() AND {}
             ORDER BY project, environment",
            seconds("l.acquired_at", "now()"),
            super::deployments::lock_owner_live("l.owner")
        );
        self.samples(&sql, 3).await
    }

    /// Sessions of this database waiting now for each of Slipway's advisory locks (every
    /// lock named, waited for or not).
    pub async fn metric_advisory_lock_waiters(&self) -> StoreResult<Vec<LockWaiters>> {
        let sql = format!(
            "SELECT known.name, count(w.pid), coalesce(max({}), 0)::float8
             FROM {}
             LEFT JOIN (
                 SELECT l.pid, l.classid, l.objid, l.objsubid, a.query_start FROM pg_locks l
                 JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND NOT l.granted
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             ) w ON w.classid::bigint = known.classid AND w.objsubid = known.objsubid
                 AND (known.objid IS NULL OR w.objid::bigint = known.objid)
             GROUP BY known.name ORDER BY known.name",
            seconds("w.query_start", "now()"),
            advisory_locks()
        );
        let rows = self.client().await?.query(&sql, &[]).await?;
        Ok(rows
            .iter()
            .map(|row| LockWaiters {
                lock: row.get(0),
                waiting: row.get(1),
                longest_seconds: row.get(2),
            })
            .collect())
    }

    /// Rows of `labels` text columns and a `float8` value.
    async fn samples(&self, sql: &str, labels: usize) -> StoreResult<Vec<Sample>> {
        let rows = self.client().await?.query(sql, &[]).await?;
        Ok(rows
            .iter()
            .map(|row| Sample {
                labels: (0..labels).map(|i| row.get(i)).collect(),
                value: row.get(labels),
            })
            .collect())
    }

    /// The histograms of `source` (a query with the `labels` columns and `seconds`), one per
    /// label set, counted in SQL.
    async fn histograms(&self, source: &str, labels: &[&str]) -> StoreResult<Vec<Histogram>> {
        let rows = self
            .client()
            .await?
            .query(&histogram_sql(source, labels), &[])
            .await?;
        let n = labels.len();
        Ok(rows
            .iter()
            .map(|row| Histogram {
                labels: (0..n).map(|i| row.get(i)).collect(),
                buckets: row.get(n),
                sum: row.get(n + 1),
                count: row.get(n + 2),
            })
            .collect())
    }
}

/// Label columns, the cumulative bucket counts (an array in [`BUCKETS`]' order), the sum and
/// the count of `source`'s `seconds`, per label set.
fn histogram_sql(source: &str, labels: &[&str]) -> String {
    let buckets: Vec<String> = BUCKETS
        .iter()
        .map(|le| format!("count(*) FILTER (WHERE seconds <= {le:?})"))
        .collect();
    let labels = labels.join(", ");
    format!(
        "SELECT {labels}, ARRAY[{}]::bigint[], coalesce(sum(seconds), 0)::float8, count(*)
         FROM ({source}) observed GROUP BY {labels} ORDER BY {labels}",
        buckets.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_bound_is_a_filter_in_order() {
        let sql = histogram_sql("SELECT 'p' AS project, 1.0 AS seconds", &["project"]);
        let first = sql.find("seconds <= 1.0)").unwrap();
        let last = sql.find("seconds <= 3600.0)").unwrap();
        assert!(first < last, "{sql}");
        assert_eq!(sql.matches("FILTER").count(), BUCKETS.len());
        assert!(sql.contains("GROUP BY project ORDER BY project"), "{sql}");
    }
}
