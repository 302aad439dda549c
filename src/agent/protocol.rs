//! What crosses the wire between a build agent and the server (`/agent/v1`, and registration
//! at `POST /api/v1/agents`): JSON bodies, except a build's source (a tar of the commit's
//! files) and its package (the .deb's bytes).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /api/v1/agents`, with a token of scope `agent` (or `admin`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    pub capacity: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub host: String,
    /// The machine the agent runs on (`--instance-id`): the autoscaler finds an instance's
    /// agent by it.
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// The answer to a registration: the agent's own credential for `/agent/v1`, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub id: Uuid,
    pub credential: String,
    /// How often to heartbeat: a third of the lease.
    pub heartbeat_seconds: u64,
}

/// A build handed to an agent (`POST /agent/v1/lease`), to confirm within seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub id: Uuid,
    pub attempt: i32,
    pub project: String,
    pub number: i64,
    pub branch: String,
    pub commit: String,
    pub event: String,
    /// The number of the attempt's first log line (an attempt's lines follow the earlier's).
    pub first_line: i64,
    /// Variables the build's event adds for its steps (a pull request's, a tag's).
    pub env: BTreeMap<String, String>,
    /// The project's secrets, unless withheld (a fork's pull request).
    pub secrets: BTreeMap<String, String>,
    /// Why the secrets were withheld, to say when a step asks for one.
    pub withheld: Option<String>,
    /// Whether a passing build becomes a release: the agent then asks for its number, builds
    /// the package and uploads it.
    pub releasable: bool,
    pub step_log_limit_bytes: u64,
    /// The largest cache archive the server keeps (`[cache] limit_bytes`).
    pub cache_limit_bytes: u64,
}

/// `GET` and `PUT /agent/v1/builds/{id}/cache?attempt=N&key=K`: the project's archive of a
/// cache key, through the server (it keeps them in `[cache]`'s directory or bucket).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheQuery {
    pub attempt: i32,
    pub key: String,
}

/// Which attempt of the build a request is about: a request for an attempt the agent no
/// longer holds is refused (409).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: i32,
}

/// `POST /agent/v1/builds/{id}/steps`: one step's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepUpdate {
    pub attempt: i32,
    pub position: i32,
    pub name: String,
    pub status: String,
    pub exit_code: Option<i32>,
}

/// `POST /agent/v1/builds/{id}/logs`: chunks of log lines, numbered by the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogUpdate {
    pub attempt: i32,
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    pub first_line: i64,
    pub lines: i32,
    pub step: String,
    pub stream: String,
    pub at: DateTime<Utc>,
    /// The lines' bytes, base64: a step's output need not be UTF-8.
    pub data: String,
}

/// `POST /agent/v1/builds/{id}/migrations`: the application migrations the build applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Migrations {
    pub attempt: i32,
    pub applied: Vec<AppliedMigration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedMigration {
    pub version: i64,
    pub name: String,
    pub elapsed_ms: u64,
}

/// `POST /agent/v1/builds/{id}/release`: the release a passing build makes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "slot", rename_all = "snake_case")]
pub enum ReleaseSlot {
    /// Build the package of release `number` and upload it.
    Numbered {
        number: i64,
        long_description: String,
        commit_time: u64,
    },
    /// The build makes no release (its commit does not follow the newest release's).
    Skipped { reason: String },
}

/// `POST /agent/v1/builds/{id}/finish`: how the attempt ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finish {
    pub attempt: i32,
    pub status: String,
    pub reason: Option<String>,
}

/// `POST /agent/v1/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub running: Vec<Running>,
    pub draining: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Running {
    pub id: Uuid,
    pub attempt: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Builds to stop: cancelled, or no longer this agent's.
    pub stop: Vec<Uuid>,
    /// Take no new work and exit once the running builds end.
    pub drain: bool,
}
