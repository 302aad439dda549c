//! The API client the CLI commands use: bearer token, JSON, and errors that say what the
//! server said.

use std::io::BufRead;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::ClientArgs;

pub mod settings;

/// The server a client command talks to when neither the command line, the environment nor
/// `slipway login` names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

pub struct ApiClient {
    base: String,
    token: String,
    /// The project `slipway login` stored for this server, if any.
    stored_project: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client as the command line and the environment ask, else as `slipway login` stored:
    /// the server named, else the stored one, else [`DEFAULT_SERVER`]; the token given (`-`
    /// reads it from stdin), else the stored one when it is for that server, else the admin
    /// token in `./.slipway/admin.token`.
    pub fn new(args: &ClientArgs) -> anyhow::Result<ApiClient> {
        let stored = settings::load()?;
        let base = match (&args.server, &stored) {
            (Some(server), _) => base_url(server),
            (None, Some(stored)) => base_url(&stored.server),
            (None, None) => DEFAULT_SERVER.to_string(),
        };
        let stored = stored.filter(|stored| base_url(&stored.server) == base);
        let token = match (&args.token, &stored) {
            (Some(given), _) => read_token(given)?,
            (None, Some(stored)) => stored.token.clone(),
            (None, None) => std::fs::read_to_string(".slipway/admin.token")
                .map(|t| t.trim().to_string())
                .map_err(|_| {
                    anyhow!("no API token: run `slipway login`, pass --token (`--token -` reads it from stdin) or set SLIPWAY_TOKEN (the server wrote its first one to <data_dir>/admin.token)")
                })?,
        };
        Ok(ApiClient {
            base,
            token,
            stored_project: stored.and_then(|stored| stored.project),
            http: reqwest::Client::new(),
        })
    }

    /// A client of `server` with `token`, whatever `slipway login` stored.
    pub fn with_token(server: &str, token: String) -> ApiClient {
        ApiClient {
            base: base_url(server),
            token,
            stored_project: None,
            http: reqwest::Client::new(),
        }
    }

    /// The server's URL, as requests use it.
    pub fn server(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let request = self.http.get(self.url(path));
        self.send(request).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        let request = self.http.post(self.url(path)).json(body);
        self.send(request).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let request = self.http.delete(self.url(path));
        self.send(request).await
    }

    /// Posts `body` and returns the response when the server accepted it (to read a stream
    /// of events from), or the server's error message.
    pub async fn post_stream(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        self.stream(self.http.post(self.url(path)).json(body)).await
    }

    /// Gets `path` and returns the response when the server answered it (to read a stream of
    /// events from), or the server's error message.
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.stream(self.http.get(self.url(path))).await
    }

    /// The project a command is about: the one named, else the one `slipway login` stored
    /// for this server, else the server's only project.
    pub async fn project(&self, named: Option<&str>) -> anyhow::Result<String> {
        let projects: Vec<Value> = self.get("/projects").await?;
        let names: Vec<&str> = projects.iter().filter_map(|p| p["name"].as_str()).collect();
        match named.or(self.stored_project.as_deref()) {
            Some(name) if names.contains(&name) => Ok(name.to_string()),
            Some(name) => Err(anyhow!(
                "no project named `{name}` on the server; projects: {}",
                names.join(", ")
            )),
            None if names.len() == 1 => Ok(names[0].to_string()),
            None if names.is_empty() => Err(anyhow!("the server has no project configured")),
            None => Err(anyhow!(
                "the server has several projects ({}): pass --project",
                names.join(", ")
            )),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    async fn stream(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the Slipway server at {}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().await.unwrap_or_default();
        let message = body["error"].as_str().unwrap_or("no error message");
        Err(anyhow!("server answered {status}: {message}"))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the Slipway server at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.with_context(|| {
            format!(
                "the server at {} answered {status} with a body that is not JSON",
                self.base
            )
        })?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("no error message");
            return Err(anyhow!("server answered {status}: {message}"));
        }
        serde_json::from_value(body).context("unexpected answer from the server")
    }
}

/// A server URL as requests are built on it: without a trailing `/`.
fn base_url(server: &str) -> String {
    server.trim_end_matches('/').to_string()
}

/// The token a user gave: `-` reads it from the first line of stdin.
pub fn read_token(given: &str) -> anyhow::Result<String> {
    if given != "-" {
        return Ok(given.to_string());
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the token from stdin")?;
    let token = line.trim();
    if token.is_empty() {
        bail!("--token -: stdin held no token");
    }
    Ok(token.to_string())
}
