//! The application's schema in the store: the migrations a build applied to its service
//! database, the migration files and schema version of each release, and the version each
//! environment's database has reached.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreResult};
use crate::app_schema::{Applied, Migration};

/// A migration a build applied.
#[derive(Debug, Clone, Serialize)]
pub struct BuildMigration {
    pub version: i64,
    pub name: String,
    pub elapsed_ms: i64,
}

/// The schema an environment's database has, as its last deployment left it.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentSchema {
    pub version: i64,
    /// The release whose deployment applied the last migrations.
    pub release: String,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    pub async fn record_build_migrations(
        &self,
        build: Uuid,
        applied: &[Applied],
    ) -> StoreResult<()> {
        let client = self.client().await?;
        for migration in applied {
            client
                .execute(
                    "INSERT INTO build_migrations (build_id, version, name, elapsed_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (build_id, version) DO NOTHING",
                    &[&build, &migration.version, &migration.name, &(migration.elapsed.as_millis() as i64)],
                )
                .await?;
        }
        Ok(())
    }

    /// The migrations a build applied, in version order.
    pub async fn build_migrations(&self, build: Uuid) -> StoreResult<Vec<BuildMigration>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT version, name, elapsed_ms FROM build_migrations WHERE build_id = $1 ORDER BY version",
                &[&build],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| BuildMigration {
                version: row.get(0),
                name: row.get(1),
                elapsed_ms: row.get(2),
            })
            .collect())
    }

    /// Stores the release's migration files and the schema version it expects (the
    /// highest of them), in one transaction.
    pub async fn record_release_schema(
        &self,
        release: Uuid,
        migrations: &[Migration],
    ) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for migration in migrations {
            tx.execute(
                "INSERT INTO release_migrations (release_id, version, name, sql) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (release_id, version) DO NOTHING",
                &[&release, &migration.version, &migration.name, &migration.sql],
            )
            .await?;
        }
        let version = crate::app_schema::schema_version(migrations);
        tx.execute(
            "UPDATE releases SET schema_version = $2 WHERE id = $1",
            &[&release, &version],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The schema version each release of the project expects, by release number.
    pub async fn release_schema_versions(&self, project: &str) -> StoreResult<HashMap<i64, i64>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT number, schema_version FROM releases WHERE project = $1 AND schema_version IS NOT NULL",
                &[&project],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// The schema version release `number` expects and its migration files.
    pub async fn release_schema(
        &self,
        project: &str,
        number: i64,
    ) -> StoreResult<(Option<i64>, Vec<Migration>)> {
        let client = self.client().await?;
        let version: Option<i64> = client
            .query_opt(
                "SELECT schema_version FROM releases WHERE project = $1 AND number = $2",
                &[&project, &number],
            )
            .await?
            .and_then(|row| row.get(0));
        let rows = client
            .query(
                "SELECT m.version, m.name, m.sql FROM release_migrations m JOIN releases r ON r.id = m.release_id
                 WHERE r.project = $1 AND r.number = $2 ORDER BY m.version",
                &[&project, &number],
            )
            .await?;
        let migrations = rows
            .iter()
            .map(|row| Migration {
                version: row.get(0),
                name: row.get(1),
                sql: row.get(2),
            })
            .collect();
        Ok((version, migrations))
    }

    pub async fn environment_schema(
        &self,
        project: &str,
        environment: &str,
    ) -> StoreResult<Option<EnvironmentSchema>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT version, release, updated_at FROM environment_schema WHERE project = $1 AND environment = $2",
                &[&project, &environment],
            )
            .await?;
        Ok(row.map(|row| EnvironmentSchema {
            version: row.get(0),
            release: row.get(1),
            updated_at: row.get(2),
        }))
    }

    pub async fn record_environment_schema(
        &self,
        project: &str,
        environment: &str,
        version: i64,
        release: &str,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO environment_schema (project, environment, version, release) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (project, environment) DO UPDATE SET version = $3, release = $4, updated_at = now()",
                &[&project, &environment, &version, &release],
            )
            .await?;
        Ok(())
    }
}
