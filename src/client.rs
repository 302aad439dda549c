//! The API client the CLI commands use: bearer token, JSON, and errors that say what the
//! server said.

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::ClientArgs;

pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(args: &ClientArgs) -> anyhow::Result<ApiClient> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => std::fs::read_to_string(".slipway/admin.token")
                .map(|t| t.trim().to_string())
                .map_err(|_| {
                    anyhow!("no API token: pass --token or set SLIPWAY_TOKEN (the server wrote its first one to <data_dir>/admin.token)")
                })?,
        };
        Ok(ApiClient {
            base: args.server.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        })
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
        let response = self
            .http
            .post(self.url(path))
            .json(body)
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

    /// The project a command is about: the one named, or the server's only project.
    pub async fn project(&self, named: Option<&str>) -> anyhow::Result<String> {
        let projects: Vec<Value> = self.get("/projects").await?;
        let names: Vec<&str> = projects.iter().filter_map(|p| p["name"].as_str()).collect();
        match named {
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
