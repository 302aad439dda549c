//! An agent's build works through the server as it runs: it reports steps and log chunks
//! (the observer's [`BuildRecorder`], over HTTP) and the application migrations it applied,
//! and restores and saves its cache through the server ([`ServerArchives`]).

use std::path::Path;

use anyhow::anyhow;
use base64::Engine as _;
use bollard::Docker;
use slipway_pipeline::spec::MigrationsPlan;
use uuid::Uuid;

use super::client::ServerClient;
use super::protocol::{AppliedMigration, Chunk, LogUpdate, Migrations, StepUpdate};
use crate::runner::observer::BuildRecorder;
use crate::store::builds::LogChunkRecord;

/// Records one attempt's steps and log chunks on the server that leased it.
pub struct ServerRecorder {
    client: ServerClient,
    build: Uuid,
    attempt: i32,
}

impl ServerRecorder {
    pub fn new(client: ServerClient, build: Uuid, attempt: i32) -> ServerRecorder {
        ServerRecorder {
            client,
            build,
            attempt,
        }
    }
}

#[async_trait::async_trait]
impl BuildRecorder for ServerRecorder {
    async fn record_step(
        &self,
        position: i32,
        name: &str,
        status: &str,
        exit_code: Option<i32>,
    ) -> anyhow::Result<()> {
        let step = StepUpdate {
            attempt: self.attempt,
            position,
            name: name.to_owned(),
            status: status.to_owned(),
            exit_code,
        };
        self.client
            .step(self.build, &step)
            .await
            .map_err(|e| anyhow!("{e}"))
    }

    async fn append_log_chunks(&self, chunks: &[LogChunkRecord]) -> anyhow::Result<()> {
        let update = LogUpdate {
            attempt: self.attempt,
            chunks: chunks
                .iter()
                .map(|chunk| Chunk {
                    first_line: chunk.first_line,
                    lines: chunk.lines,
                    step: chunk.step.clone(),
                    stream: chunk.stream.clone(),
                    at: chunk.at,
                    data: base64::engine::general_purpose::STANDARD.encode(&chunk.data),
                })
                .collect(),
        };
        self.client
            .logs(self.build, &update)
            .await
            .map_err(|e| anyhow!("{e}"))
    }
}

/// Applies a build's migrations to the service sidecar on this agent's dockerd, and tells
/// the server which ran.
pub struct ServerMigrator {
    pub docker: Docker,
    pub client: ServerClient,
    pub build: Uuid,
    pub attempt: i32,
}

#[async_trait::async_trait]
impl slipway_pipeline::Migrator for ServerMigrator {
    async fn migrate(
        &self,
        plan: &MigrationsPlan,
        network: &str,
        workspace: &Path,
    ) -> Result<Vec<String>, (Vec<String>, String)> {
        let (mut lines, mut applied) = (Vec::new(), Vec::new());
        let result = crate::runner::migrations::migrate(
            &self.docker,
            plan,
            network,
            workspace,
            &mut lines,
            &mut applied,
        )
        .await;
        // What ran before a failure stays applied (each in its own transaction): reported too.
        let report = Migrations {
            attempt: self.attempt,
            applied: applied
                .iter()
                .map(|m| AppliedMigration {
                    version: m.version,
                    name: m.name.clone(),
                    elapsed_ms: m.elapsed.as_millis() as u64,
                })
                .collect(),
        };
        let reported = self.client.migrations(self.build, &report).await;
        match (result, reported) {
            (Err(why), _) => Err((lines, why)),
            (Ok(_), Err(error)) => Err((
                lines,
                format!("cannot report the applied migrations: {error}"),
            )),
            (Ok(_), Ok(())) => Ok(lines),
        }
    }
}

/// The project's cache archives, kept by the server (in `[cache]`'s directory or bucket):
/// agents need no access of their own to either.
pub struct ServerArchives {
    pub client: ServerClient,
    pub build: Uuid,
    pub attempt: i32,
}

impl ServerArchives {
    fn key(name: &str) -> anyhow::Result<&str> {
        crate::cache::split_archive_name(name)
            .map(|(_, key)| key)
            .ok_or_else(|| anyhow!("{name:?} is not a cache archive's name"))
    }
}

#[async_trait::async_trait]
impl crate::cache::RemoteArchives for ServerArchives {
    fn describe(&self) -> String {
        "the server's build caches".to_owned()
    }

    async fn fetch(
        &self,
        name: &str,
        dest: &Path,
        limit_bytes: u64,
    ) -> anyhow::Result<Option<u64>> {
        self.client
            .cache_fetch(
                self.build,
                self.attempt,
                Self::key(name)?,
                dest,
                limit_bytes,
            )
            .await
    }

    async fn store(&self, name: &str, archive: &Path) -> anyhow::Result<()> {
        self.client
            .cache_store(self.build, self.attempt, Self::key(name)?, archive)
            .await
    }
}
