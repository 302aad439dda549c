//! The build's migrator: applies the application's migrations (`migrations:` in
//! `.slipway.yml`) to the service sidecar's database with [`crate::app_schema`], and
//! records which ran.
//!
//! The applier runs in the server, not in a step container: a container would need
//! Slipway's binary in an image the build does not control. The server reaches the sidecar
//! at its address on the build network, which the host can route to when dockerd is local
//! (the services' TCP readiness check relies on the same).

use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use bollard::Docker;
use slipway_pipeline::spec::MigrationsPlan;
use uuid::Uuid;

use crate::app_schema;
use crate::store::Store;

/// Applies a server build's migrations and records them on the build.
pub struct BuildMigrator {
    pub docker: Docker,
    pub store: Store,
    pub build: Uuid,
}

#[async_trait::async_trait]
impl slipway_pipeline::Migrator for BuildMigrator {
    async fn migrate(
        &self,
        plan: &MigrationsPlan,
        network: &str,
        workspace: &Path,
    ) -> Result<Vec<String>, (Vec<String>, String)> {
        let (mut lines, mut applied) = (Vec::new(), Vec::new());
        let result = migrate(
            &self.docker,
            plan,
            network,
            workspace,
            &mut lines,
            &mut applied,
        )
        .await;
        // What ran before a failure stays applied (each in its own transaction): recorded too.
        let recorded = self
            .store
            .record_build_migrations(self.build, &applied)
            .await;
        match (result, recorded) {
            (Err(why), _) => Err((lines, why)),
            (Ok(_), Err(error)) => Err((
                lines,
                format!("cannot record the applied migrations: {error}"),
            )),
            (Ok(_), Ok(())) => Ok(lines),
        }
    }
}

/// Applies the migrations of `slipway pipeline exec`, which has no store to record them in.
pub struct LocalMigrator {
    pub docker: Docker,
}

#[async_trait::async_trait]
impl slipway_pipeline::Migrator for LocalMigrator {
    async fn migrate(
        &self,
        plan: &MigrationsPlan,
        network: &str,
        workspace: &Path,
    ) -> Result<Vec<String>, (Vec<String>, String)> {
        let mut lines = Vec::new();
        match migrate(
            &self.docker,
            plan,
            network,
            workspace,
            &mut lines,
            &mut Vec::new(),
        )
        .await
        {
            Ok(_) => Ok(lines),
            Err(why) => Err((lines, why)),
        }
    }
}

/// Reads the migrations from `workspace`, finds the service's address on `network` and
/// applies them; `lines` collects what the step's log shows, `applied` what ran (also when
/// a later one fails).
/// How long a service that answered its readiness check may still be restarting: the
/// official postgres image's first start runs a temporary server for its init scripts, then
/// stops it and starts the real one.
const RESTART_PATIENCE: Duration = Duration::from_secs(30);

/// Connects to the service's database, waiting while PostgreSQL says it is starting up or
/// shutting down, or refuses connections, for at most [`RESTART_PATIENCE`].
async fn connect_once_up(
    config: &tokio_postgres::Config,
    lines: &mut Vec<String>,
) -> Result<tokio_postgres::Client, app_schema::ApplyError> {
    let deadline = tokio::time::Instant::now() + RESTART_PATIENCE;
    let mut said = false;
    loop {
        match app_schema::connect_with(config).await {
            Err(app_schema::ApplyError::Connect(message))
                if restarting(&message) && tokio::time::Instant::now() < deadline =>
            {
                if !said {
                    lines.push(format!(
                        "waiting for the database to finish starting: {message}"
                    ));
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            result => return result,
        }
    }
}

/// What PostgreSQL answers while its server restarts.
fn restarting(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("the database system is starting up")
        || message.contains("the database system is shutting down")
        || message.contains("connection refused")
}

pub async fn migrate(
    docker: &Docker,
    plan: &MigrationsPlan,
    network: &str,
    workspace: &Path,
    lines: &mut Vec<String>,
    applied: &mut Vec<app_schema::Applied>,
) -> Result<app_schema::Outcome, String> {
    let migrations = app_schema::read_dir(&workspace.join(&plan.dir), &plan.dir)?;
    lines.push(format!(
        "{} migration files in {}; applying the pending ones to database {} of service {}",
        migrations.len(),
        plan.dir,
        plan.database,
        plan.service
    ));
    let ip = service_address(docker, &plan.container, network).await?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(ip.to_string())
        .port(plan.port)
        .user(&plan.user)
        .password(plan.password.as_str())
        .dbname(&plan.database)
        .connect_timeout(Duration::from_secs(10));
    let mut client = connect_once_up(&config, lines)
        .await
        .map_err(|e| format!("service {}: {e}", plan.service))?;
    let outcome = app_schema::apply(&mut client, &migrations, &mut |done| {
        lines.push(format!(
            "applied {} ({} ms)",
            done.name,
            done.elapsed.as_millis()
        ));
        applied.push(done.clone());
    })
    .await;
    let outcome = outcome.map_err(|e| e.to_string())?;
    lines.push(match outcome.version {
        Some(version) => format!(
            "schema version {version}: {} applied, {} already there",
            outcome.applied.len(),
            migrations.len() - outcome.applied.len()
        ),
        None => "no migrations".to_owned(),
    });
    Ok(outcome)
}

async fn service_address(
    docker: &Docker,
    container: &str,
    network: &str,
) -> Result<std::net::IpAddr, String> {
    let inspected = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .map_err(|e| format!("cannot inspect the service container {container}: {e}"))?;
    inspected
        .network_settings
        .and_then(|settings| settings.networks)
        .and_then(|mut networks| networks.remove(network))
        .and_then(|endpoint| endpoint.ip_address)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| format!("the service container {container} has no address on {network}"))
}

/// Records on `release` the migration files of its commit and the schema version it
/// expects; a pipeline without `migrations:` records nothing.
pub async fn record_release(
    store: &Store,
    plan: &slipway_pipeline::Plan,
    release: &crate::store::releases::Release,
    workspace: &Path,
) -> anyhow::Result<()> {
    let Some(migrations) = &plan.migrations else {
        return Ok(());
    };
    let files = app_schema::read_dir(&workspace.join(&migrations.dir), &migrations.dir)
        .map_err(anyhow::Error::msg)?;
    store.record_release_schema(release.id, &files).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::restarting;

    #[test]
    fn a_restarting_server_is_waited_for_and_a_refusal_for_another_reason_is_not() {
        assert!(restarting("FATAL: the database system is starting up"));
        assert!(restarting(
            "error connecting to server: Connection refused (os error 111)"
        ));
        assert!(!restarting(
            "FATAL: password authentication failed for user \"app\""
        ));
    }
}
