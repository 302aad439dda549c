//! A deployment's `migrating` step: applies the release's migrations (stored with it when
//! it was built) to the environment's database (`DATABASE_URL` of the environment's `env`)
//! with [`crate::app_schema`], and records the version the database reached.

use crate::app_schema;
use crate::config::Secret;
use crate::store::Store;

/// The migrator of one environment that has a `DATABASE_URL`.
pub struct EnvironmentMigrator {
    pub store: Store,
    pub project: String,
    pub environment: String,
    pub database_url: Secret,
}

#[async_trait::async_trait]
impl slipway_deployer::SchemaMigrator for EnvironmentMigrator {
    async fn migrate(&self, release: &str) -> Result<(), String> {
        let number: i64 = release
            .strip_prefix('v')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{release} is not a release version"))?;
        let (_, migrations) = self
            .store
            .release_schema(&self.project, number)
            .await
            .map_err(|e| e.to_string())?;
        if migrations.is_empty() {
            return Ok(());
        }
        let database = format!("the database of {}", self.environment);
        let mut client = app_schema::connect(self.database_url.expose())
            .await
            .map_err(|e| format!("{database}: {e}"))?;
        let outcome = app_schema::apply(&mut client, &migrations, &mut |applied| {
            tracing::info!(project = %self.project, environment = %self.environment, %release, migration = %applied.name, elapsed_ms = applied.elapsed.as_millis() as u64, "applied a migration");
        })
        .await
        .map_err(|e| format!("{database}: {e}"))?;
        if let Some(version) = outcome.version {
            self.store
                .record_environment_schema(&self.project, &self.environment, version, release)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
