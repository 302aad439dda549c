//! `slipway login`: checks a token against a server, then stores both (and the project, when
//! one is named) for later client commands. The token is never printed.

use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cli::ClientArgs;
use crate::client::settings::{self, ClientSettings};
use crate::client::{read_token, ApiClient, DEFAULT_SERVER};

pub async fn login(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let Some(given) = &args.token else {
        bail!("slipway login needs a token: --token - reads it from stdin (or pass --token T, or set SLIPWAY_TOKEN)");
    };
    let server = match &args.server {
        Some(server) => server.clone(),
        None => settings::load()?
            .map(|stored| stored.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
    };
    check_url(&server)?;
    let token = read_token(given)?;
    let client = ApiClient::with_token(&server, token.clone());
    let refused = || format!("the token was not stored: checking it against {server} failed");
    client
        .get::<Vec<Value>>("/projects")
        .await
        .with_context(refused)?;
    let project = match &args.project {
        Some(named) => Some(client.project(Some(named)).await.with_context(refused)?),
        None => None,
    };
    let stored = ClientSettings {
        server: client.server().to_string(),
        token,
        project,
    };
    let path = settings::save(&stored)?;
    let project = match &stored.project {
        Some(project) => format!(" and project {project}"),
        None => String::new(),
    };
    println!(
        "logged in to {}: later commands use this server, its token{project} from {}",
        stored.server,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Refuses a server address that is not an http:// or https:// URL before it is stored.
fn check_url(server: &str) -> anyhow::Result<()> {
    match reqwest::Url::parse(server) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(()),
        _ => bail!("--server {server:?} is not an http:// or https:// URL of a Slipway server"),
    }
}
