//! The queries of housekeeping ([`crate::retention`]): old builds deleted with their logs,
//! and the releases whose Docker image or package retention may remove. A release that is
//! live in an environment, or that an unfinished deployment takes or keeps warm, is never
//! among them.

use std::time::Duration;

use uuid::Uuid;

use super::{Store, StoreResult};

/// The versions (`v<N>`) of project `$1` that serve or may serve again: live in an
/// environment, or the release, green or warm blue fleet of an unfinished deployment.
const IN_USE: &str = "SELECT fleet->>'release' FROM environment_live WHERE project = $1
    UNION SELECT release FROM deployments WHERE project = $1 AND finished_at IS NULL
    UNION SELECT record->'green'->>'release' FROM deployments WHERE project = $1 AND finished_at IS NULL
    UNION SELECT record->'blue'->>'release' FROM deployments WHERE project = $1 AND finished_at IS NULL";

/// A release whose Docker image or package retention removes.
#[derive(Debug, Clone)]
pub struct Expired {
    pub release: Uuid,
    pub version: String,
    /// The image's name, or the package's file name.
    pub what: String,
}

impl Store {
    /// Deletes, with their steps and logs, the project's builds that ended more than `age`
    /// ago and are not among its newest `keep` (either may be absent), unless they made a
    /// release. At most 1000 at a time; returns how many.
    pub async fn delete_old_builds(
        &self,
        project: &str,
        age: Option<Duration>,
        keep: Option<u32>,
    ) -> StoreResult<u64> {
        let age = age.map(|age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        let keep = keep.map(i64::from);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT id FROM (SELECT b.id, b.status, b.finished_at,
                     row_number() OVER (ORDER BY b.number DESC) AS rank
                     FROM builds b WHERE b.project = $1) ranked
                 WHERE status NOT IN ('queued', 'running')
                     AND ($2::bigint IS NULL OR finished_at < now() - $2 * interval '1 second')
                     AND ($3::bigint IS NULL OR rank > $3)
                     AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.build_id = ranked.id)
                 LIMIT 1000",
                &[&project, &age, &keep],
            )
            .await?;
        let ids: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
        tx.execute(
            "DELETE FROM build_migrations WHERE build_id = ANY($1)",
            &[&ids],
        )
        .await?;
        let deleted = tx
            .execute("DELETE FROM builds WHERE id = ANY($1)", &[&ids])
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// The project's baked Docker images of releases older than its newest `keep`, unless in
    /// use.
    pub async fn expired_images(&self, project: &str, keep: u32) -> StoreResult<Vec<Expired>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT r.id, 'v' || r.number, i.image FROM releases r
                     JOIN release_images i ON i.release_id = r.id AND i.kind = 'docker'
                         AND i.status = 'baked' AND i.image IS NOT NULL
                     WHERE r.project = $1
                         AND r.number <= (SELECT max(number) FROM releases WHERE project = $1) - $2
                         AND 'v' || r.number NOT IN (SELECT v FROM ({IN_USE}) AS in_use(v) WHERE v IS NOT NULL)"
                ),
                &[&project, &i64::from(keep)],
            )
            .await?;
        Ok(rows.iter().map(expired_from_row).collect())
    }

    /// Records that retention removed the release's Docker image, saying why.
    pub async fn record_image_removed(&self, release: Uuid, reason: &str) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE release_images SET status = 'removed', reason = $2
             WHERE release_id = $1 AND kind = 'docker' AND status = 'baked'",
            &[&release, &reason],
        )
        .await?;
        tx.execute(
            "UPDATE releases SET bake_status = 'removed', bake_reason = $2
             WHERE id = $1 AND bake_status = 'baked'",
            &[&release, &reason],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The project's published packages older than the newest `keep` of each package name,
    /// unless their release is in use.
    pub async fn expired_packages(&self, project: &str, keep: u32) -> StoreResult<Vec<Expired>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT id, 'v' || number, package_filename FROM (
                         SELECT r.id, r.number, r.package_filename, r.package_removed_at,
                             row_number() OVER (PARTITION BY r.package_name ORDER BY r.number DESC) AS rank
                         FROM releases r
                         WHERE r.project = $1 AND r.status = 'published' AND r.package_filename IS NOT NULL
                     ) ranked
                     WHERE rank > $2 AND package_removed_at IS NULL
                         AND 'v' || number NOT IN (SELECT v FROM ({IN_USE}) AS in_use(v) WHERE v IS NOT NULL)"
                ),
                &[&project, &i64::from(keep)],
            )
            .await?;
        Ok(rows.iter().map(expired_from_row).collect())
    }

    /// Records that retention removed these releases' packages from the apt repository.
    pub async fn record_packages_removed(&self, releases: &[Uuid]) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE releases SET package_removed_at = now() WHERE id = ANY($1) AND package_removed_at IS NULL",
                &[&releases],
            )
            .await?;
        Ok(())
    }
}

fn expired_from_row(row: &tokio_postgres::Row) -> Expired {
    Expired {
        release: row.get(0),
        version: row.get(1),
        what: row.get(2),
    }
}
