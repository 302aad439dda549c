//! The agent's side of `/agent/v1`: one HTTP client, authenticated with the credential the
//! agent got when it registered.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::protocol::{
    Attempt, CacheQuery, Finish, Heartbeat, HeartbeatReply, Lease, LogUpdate, Migrations,
    Registered, Registration, ReleaseSlot, StepUpdate,
};

/// How long a request may take, but for a lease (which waits for work), the source and
/// the package (which are as long as they are large).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest source archive the agent accepts.
const SOURCE_LIMIT_BYTES: u64 = crate::runner::WORKSPACE_EXPORT_LIMIT_BYTES;

/// Why a request about a build failed: the build is no longer this agent's (it stops the
/// build and reports nothing more), or something else (the server did not answer, say).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Lost(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(Clone)]
pub struct ServerClient {
    http: reqwest::Client,
    base: String,
    credential: String,
}

impl ServerClient {
    /// Registers with the server at `base` using an API token of scope `agent` (or `admin`).
    pub async fn register(
        base: &str,
        token: &str,
        registration: &Registration,
    ) -> anyhow::Result<(ServerClient, Registered)> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let base = base.trim_end_matches('/').to_owned();
        let response = http
            .post(format!("{base}/api/v1/agents"))
            .bearer_auth(token)
            .timeout(REQUEST_TIMEOUT)
            .json(registration)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {base}"))?;
        let registered: Registered = answer(response)
            .await
            .map_err(|e| anyhow!("the server refused the registration: {e}"))?;
        let client = ServerClient {
            http,
            base,
            credential: registered.credential.clone(),
        };
        Ok((client, registered))
    }

    fn url(&self, path: &str) -> String {
        format!("{}/agent/v1{path}", self.base)
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Option<T>, RequestError> {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.credential)
            .timeout(REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        optional_answer(response).await
    }

    /// Waits for a build to run; `None` when none came within the server's wait.
    pub async fn lease(&self) -> Result<Option<Lease>, RequestError> {
        let response = self
            .http
            .post(self.url("/lease"))
            .bearer_auth(&self.credential)
            .timeout(Duration::from_secs(90))
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        optional_answer(response).await
    }

    /// Unpacks the build's source into `dir`.
    pub async fn source(&self, id: Uuid, attempt: i32, dir: &Path) -> Result<(), RequestError> {
        let response = self
            .http
            .get(self.url(&format!("/builds/{id}/source?attempt={attempt}")))
            .bearer_auth(&self.credential)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let response = check(response).await?;
        let archive = dir.with_extension("tar");
        let mut file = tokio::fs::File::create(&archive)
            .await
            .with_context(|| format!("cannot write {}", archive.display()))?;
        let mut stream = response.bytes_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the source download broke off")?;
            size += chunk.len() as u64;
            if size > SOURCE_LIMIT_BYTES {
                return Err(anyhow!("the source is larger than {SOURCE_LIMIT_BYTES} bytes").into());
            }
            file.write_all(&chunk).await.context("writing the source")?;
        }
        file.flush().await.context("writing the source")?;
        drop(file);
        let (from, into) = (archive.clone(), dir.to_path_buf());
        let unpacked = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut tar = tar::Archive::new(std::fs::File::open(&from)?);
            tar.set_preserve_permissions(true);
            // `unpack` writes nothing outside `into`.
            tar.unpack(&into)
        })
        .await
        .context("unpacking the source")?;
        let _ = tokio::fs::remove_file(&archive).await;
        unpacked.context("cannot unpack the source")?;
        Ok(())
    }

    pub async fn confirm(&self, id: Uuid, attempt: i32) -> Result<(), RequestError> {
        self.post::<_, serde_json::Value>(&format!("/builds/{id}/confirm"), &Attempt { attempt })
            .await
            .map(drop)
    }

    pub async fn step(&self, id: Uuid, step: &StepUpdate) -> Result<(), RequestError> {
        self.post::<_, serde_json::Value>(&format!("/builds/{id}/steps"), step)
            .await
            .map(drop)
    }

    pub async fn logs(&self, id: Uuid, update: &LogUpdate) -> Result<(), RequestError> {
        self.post::<_, serde_json::Value>(&format!("/builds/{id}/logs"), update)
            .await
            .map(drop)
    }

    pub async fn migrations(&self, id: Uuid, applied: &Migrations) -> Result<(), RequestError> {
        self.post::<_, serde_json::Value>(&format!("/builds/{id}/migrations"), applied)
            .await
            .map(drop)
    }

    pub async fn release(&self, id: Uuid, attempt: i32) -> Result<ReleaseSlot, RequestError> {
        self.post(&format!("/builds/{id}/release"), &Attempt { attempt })
            .await?
            .ok_or_else(|| anyhow!("the server gave no release").into())
    }

    /// Uploads the release's package; `Err(Other)` with the server's reason when it refused it.
    pub async fn package(&self, id: Uuid, attempt: i32, deb: &Path) -> Result<(), RequestError> {
        let file = tokio::fs::File::open(deb)
            .await
            .with_context(|| format!("cannot read {}", deb.display()))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let response = self
            .http
            .put(self.url(&format!("/builds/{id}/package?attempt={attempt}")))
            .bearer_auth(&self.credential)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        check(response).await.map(drop)
    }

    /// Copies the project's archive of cache `key` into `dest`; `None` when there is none.
    pub async fn cache_fetch(
        &self,
        id: Uuid,
        attempt: i32,
        key: &str,
        dest: &Path,
        limit_bytes: u64,
    ) -> anyhow::Result<Option<u64>> {
        let response = self
            .http
            .get(self.url(&format!("/builds/{id}/cache")))
            .query(&CacheQuery {
                attempt,
                key: key.to_owned(),
            })
            .bearer_auth(&self.credential)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = check(response).await.map_err(|e| anyhow!("{e}"))?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .with_context(|| format!("cannot write {}", dest.display()))?;
        let mut stream = response.bytes_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the cache download broke off")?;
            size += chunk.len() as u64;
            if size > limit_bytes {
                bail!("the cache archive is over its limit of {limit_bytes} bytes");
            }
            file.write_all(&chunk)
                .await
                .context("writing the cache archive")?;
        }
        file.flush().await.context("writing the cache archive")?;
        Ok(Some(size))
    }

    /// Keeps `archive` as the project's archive of cache `key`.
    pub async fn cache_store(
        &self,
        id: Uuid,
        attempt: i32,
        key: &str,
        archive: &Path,
    ) -> anyhow::Result<()> {
        let file = tokio::fs::File::open(archive)
            .await
            .with_context(|| format!("cannot read {}", archive.display()))?;
        let response = self
            .http
            .put(self.url(&format!("/builds/{id}/cache")))
            .query(&CacheQuery {
                attempt,
                key: key.to_owned(),
            })
            .bearer_auth(&self.credential)
            .body(reqwest::Body::wrap_stream(
                tokio_util::io::ReaderStream::new(file),
            ))
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        check(response).await.map(drop).map_err(|e| anyhow!("{e}"))
    }

    pub async fn finish(&self, id: Uuid, finish: &Finish) -> Result<(), RequestError> {
        self.post::<_, serde_json::Value>(&format!("/builds/{id}/finish"), finish)
            .await
            .map(drop)
    }

    /// One heartbeat, given up after `timeout` (the next one is due then).
    pub async fn heartbeat(
        &self,
        heartbeat: &Heartbeat,
        timeout: Duration,
    ) -> Result<HeartbeatReply, RequestError> {
        let response = self
            .http
            .post(self.url("/heartbeat"))
            .bearer_auth(&self.credential)
            .timeout(timeout)
            .json(heartbeat)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        optional_answer(response)
            .await?
            .ok_or_else(|| anyhow!("the server gave no heartbeat answer").into())
    }

    pub async fn stop(&self) -> Result<(), RequestError> {
        self.post::<_, serde_json::Value>("/stop", &serde_json::json!({}))
            .await
            .map(drop)
    }
}

/// The response when it is a success; 409 is [`RequestError::Lost`]; any other status is an
/// error with the server's `error` message.
async fn check(response: reqwest::Response) -> Result<reqwest::Response, RequestError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(300).collect());
    if status == reqwest::StatusCode::CONFLICT {
        return Err(RequestError::Lost(message));
    }
    Err(anyhow!("the server answered {status}: {message}").into())
}

async fn optional_answer<T: DeserializeOwned>(
    response: reqwest::Response,
) -> Result<Option<T>, RequestError> {
    let response = check(response).await?;
    if response.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    Ok(Some(
        response
            .json()
            .await
            .context("reading the server's answer")?,
    ))
}

async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
    match optional_answer(response).await {
        Ok(Some(value)) => Ok(value),
        Ok(None) => bail!("the server gave no answer"),
        Err(e) => Err(anyhow!("{e}")),
    }
}
