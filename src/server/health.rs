//! Health: `GET /healthz` for load balancers (a status word and nothing else, so no internal
//! text reaches anonymous callers) and the token-protected `GET /api/v1/health`, which says
//! per dependency what answers and, when something does not, a short reason.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;
use crate::config::AwsEnvironment;

/// How long one dependency may take to answer a health check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest reason shown for one dependency.
const REASON_LIMIT: usize = 300;

/// Routes under `/api/v1`; any valid token may read them.
pub fn routes() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// `GET /healthz`: `200 {"status":"ok"}` when the store and dockerd answer, otherwise
/// `503 {"status":"unavailable"}`. The reasons are in `/api/v1/health` and the server log.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let (database, docker) = tokio::join!(check_database(&state), state.docker.check());
    if database.is_ok() && docker.is_ok() {
        (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
    } else {
        let body = Json(json!({ "status": "unavailable" }));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// `GET /api/v1/health`: each dependency with `"status": "ok"` or `"unavailable"` and a
/// `reason`; the top-level `status` is `ok` only when all are.
async fn health(State(state): State<AppState>) -> Json<Value> {
    let aws_environments: Vec<(&str, &str, &AwsEnvironment)> = state
        .config
        .projects
        .iter()
        .flat_map(|p| {
            p.environments
                .iter()
                .filter_map(move |e| Some((p.name.as_str(), e.name.as_str(), e.aws.as_ref()?)))
        })
        .collect();
    let (database, docker, packer, apt, aws) = tokio::join!(
        check_database(&state),
        state.docker.check(),
        check_packer(&state),
        check_apt(&state),
        futures::future::join_all(aws_environments.iter().map(|(_, _, aws)| check_aws(aws))),
    );
    let mut healthy = database.is_ok() && docker.is_ok() && packer.is_ok() && apt.1.is_ok();
    let database = match database {
        Ok(()) => json!({ "status": "ok" }),
        Err(reason) => unavailable(json!({}), &reason),
    };
    let docker = match docker {
        Ok(api_version) => json!({
            "status": "ok",
            "address": state.docker.address(),
            "api_version": api_version,
        }),
        Err(e) => unavailable(json!({ "address": e.address }), &e.reason),
    };
    let binary = state.config.packer.display().to_string();
    let packer = match packer {
        Ok(version) => json!({ "status": "ok", "binary": binary, "version": version }),
        Err(reason) => unavailable(json!({ "binary": binary }), &reason),
    };
    let apt = match apt {
        (fields, Ok(())) => with_status(fields, "ok"),
        (fields, Err(reason)) => unavailable(fields, &reason),
    };
    let aws: Vec<Value> = aws
        .into_iter()
        .zip(&aws_environments)
        .map(|((endpoint, result), (project, environment, _))| {
            let fields = json!({
                "project": project,
                "environment": environment,
                "endpoint": endpoint,
            });
            match result {
                Ok(()) => with_status(fields, "ok"),
                Err(reason) => {
                    healthy = false;
                    unavailable(fields, &reason)
                }
            }
        })
        .collect();
    Json(json!({
        "status": if healthy { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "database": database,
        "docker": docker,
        "packer": packer,
        "apt": apt,
        "aws": aws,
    }))
}

async fn check_database(state: &AppState) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

/// Where the apt repository is (`dir` or `bucket`), and whether its signed index can be read
/// there: the directory's `InRelease`, or the bucket answering.
async fn check_apt(state: &AppState) -> (Value, Result<(), String>) {
    match state.repository.bucket() {
        Some(bucket) => {
            let fields = json!({ "bucket": bucket.describe() });
            match tokio::time::timeout(CHECK_TIMEOUT, bucket.check()).await {
                Ok(Ok(())) => (fields, Ok(())),
                Ok(Err(e)) => (fields, Err(format!("{e:#}"))),
                Err(_) => (fields, Err(format!("no answer within {CHECK_TIMEOUT:?}"))),
            }
        }
        None => {
            let root = state.repository.root();
            let index = root.join("dists/stable/InRelease");
            let result = match tokio::fs::metadata(&index).await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("cannot read {}: {e}", index.display())),
            };
            (json!({ "dir": root }), result)
        }
    }
}

/// `packer version`'s answer, e.g. `Packer v1.6.6`.
async fn check_packer(state: &AppState) -> Result<String, String> {
    let packer = &state.config.packer;
    let output = tokio::process::Command::new(packer)
        .arg("version")
        .env("CHECKPOINT_DISABLE", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CHECK_TIMEOUT, output).await {
        Err(_) => Err(format!(
            "`packer version` gave no answer within {CHECK_TIMEOUT:?}"
        )),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("not found: {} is not installed", packer.display()))
        }
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", packer.display())),
        Ok(Ok(output)) if !output.status.success() => {
            Err(format!("`packer version` exited with {}", output.status))
        }
        Ok(Ok(output)) => Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()),
    }
}

/// Whether the environment's EC2 endpoint (its `endpoint_url`, or AWS's regional one) accepts
/// a TCP connection; returns the endpoint checked. No request is signed or sent.
async fn check_aws(aws: &AwsEnvironment) -> (String, Result<(), String>) {
    let endpoint = aws
        .endpoint_url
        .clone()
        .unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com", aws.region));
    let address = match reqwest::Url::parse(&endpoint) {
        Ok(url) => match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            _ => {
                return (
                    endpoint,
                    Err("the endpoint URL names no host and port".into()),
                )
            }
        },
        Err(e) => return (endpoint, Err(format!("not a URL: {e}"))),
    };
    let result =
        match tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect(&address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot connect to {address}: {e}")),
            Err(_) => Err(format!(
                "no connection to {address} within {CHECK_TIMEOUT:?}"
            )),
        };
    (endpoint, result)
}

fn with_status(mut fields: Value, status: &str) -> Value {
    fields["status"] = json!(status);
    fields
}

fn unavailable(fields: Value, reason: &str) -> Value {
    let mut fields = with_status(fields, "unavailable");
    let mut short: String = reason.chars().take(REASON_LIMIT).collect();
    if short.len() < reason.len() {
        short.push('…');
    }
    fields["reason"] = json!(short);
    fields
}
