//! Releases and the packages they were published as.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{next_number, Store, StoreResult};

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    #[serde(skip)]
    pub id: Uuid,
    /// `v<number>`.
    pub version: String,
    pub number: i64,
    pub project: String,
    pub build: i64,
    pub commit: String,
    /// `packaging`, `published` or `failed`.
    pub status: String,
    pub reason: Option<String>,
    pub package: Option<PackageRecord>,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageRecord {
    pub name: String,
    pub version: String,
    pub filename: String,
    pub size: i64,
    pub sha256: String,
}

const COLUMNS: &str = "r.id, r.number, r.project, b.number, r.commit, r.status, r.reason, r.package_name, r.package_version,
    r.package_filename, r.package_size, r.package_sha256, r.created_at, r.published_at";

fn from_row(row: &tokio_postgres::Row) -> Release {
    let number: i64 = row.get(1);
    let package = row.get::<_, Option<String>>(7).map(|name| PackageRecord {
        name,
        version: row.get(8),
        filename: row.get(9),
        size: row.get(10),
        sha256: row.get(11),
    });
    Release {
        id: row.get(0),
        version: format!("v{number}"),
        number,
        project: row.get(2),
        build: row.get(3),
        commit: row.get(4),
        status: row.get(5),
        reason: row.get(6),
        package,
        created_at: row.get(12),
        published_at: row.get(13),
    }
}

impl Store {
    /// Records a new release of `build` and allocates its number, in one transaction.
    pub async fn create_release(
        &self,
        project: &str,
        build: Uuid,
        commit: &str,
    ) -> StoreResult<(Uuid, i64)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let number = next_number(&tx, project, "release").await?;
        let id = Uuid::new_v4();
        tx.execute(
            "INSERT INTO releases (id, project, number, build_id, commit, status) VALUES ($1, $2, $3, $4, $5, 'packaging')",
            &[&id, &project, &number, &build, &commit],
        )
        .await?;
        tx.commit().await?;
        Ok((id, number))
    }

    pub async fn mark_release_published(
        &self,
        id: Uuid,
        package: &PackageRecord,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE releases SET status = 'published', published_at = now(), package_name = $2, package_version = $3,
                 package_filename = $4, package_size = $5, package_sha256 = $6 WHERE id = $1",
                &[&id, &package.name, &package.version, &package.filename, &package.size, &package.sha256],
            )
            .await?;
        Ok(())
    }

    pub async fn mark_release_failed(&self, id: Uuid, reason: &str) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE releases SET status = 'failed', reason = $2 WHERE id = $1",
                &[&id, &reason],
            )
            .await?;
        Ok(())
    }

    /// A project's releases, newest first.
    pub async fn list_releases(&self, project: &str) -> StoreResult<Vec<Release>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {COLUMNS} FROM releases r JOIN builds b ON b.id = r.build_id WHERE r.project = $1 ORDER BY r.number DESC"),
                &[&project],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }
}
