//! The seam through which a deployment migrates the environment's database before its new
//! fleet is launched; the root crate implements it (this crate knows nothing of Postgres).

use async_trait::async_trait;

/// Applies a release's pending migrations to one environment's database.
///
/// Called from the deployment's `migrating` step, under the environment's lock, before the
/// green fleet is launched; after a crash the step runs again, so applying must skip what
/// is already applied.
#[async_trait]
pub trait SchemaMigrator: Send + Sync {
    /// Migrates for `release` (e.g. `v42`); the error says which migration failed and why,
    /// without secrets, and fails the deployment while the old fleet keeps serving.
    async fn migrate(&self, release: &str) -> Result<(), String>;
}
