//! What each CLI command does.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use crate::cli::{Command, ServerArgs, TokenCommand};
use crate::client::ApiClient;
use crate::config::{Config, Overrides};
use crate::server::{shutdown_signal, Application};

pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Server(args) => server(args).await,
        Command::Pipeline(command) => crate::runner::local::run(command).await,
        Command::Token(TokenCommand::Create { client, name }) => {
            let client = ApiClient::new(&client)?;
            let created: Value = client.post("/tokens", &json!({ "name": name })).await?;
            println!("{}", created["token"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Promote { .. } => not_built("promote", "blue/green deployment"),
        Command::Rollback { .. } => not_built("rollback", "blue/green deployment"),
        Command::Status { .. } => not_built("status", "environments and deployments"),
        Command::Releases { .. } => not_built("releases", "releases"),
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    let app = Application::build(config)
        .await
        .context("cannot start the server")?;
    app.run_until(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Commands whose capability is not in this version say so and fail, rather than pretend.
fn not_built(command: &str, capability: &str) -> anyhow::Result<ExitCode> {
    eprintln!("slipway {command}: {capability} is not available in this version of Slipway yet");
    Ok(ExitCode::from(2))
}
