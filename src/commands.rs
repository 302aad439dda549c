//! What each CLI command does.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use crate::cli::{ClientArgs, Command, ServerArgs, TokenCommand};
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
        Command::Promote {
            client,
            env,
            release,
        } => {
            let body = match release {
                Some(release) => json!({ "release": release }),
                None => json!({}),
            };
            crate::deploy::cli::operate(&client, &env, "promote", &body).await
        }
        Command::Rollback { client, env, to } => {
            crate::deploy::cli::operate(&client, &env, "rollback", &json!({ "to": to })).await
        }
        Command::Status { client } => crate::deploy::cli::status(&client).await,
        Command::Releases { client } => releases(client).await,
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

async fn releases(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args)?;
    let project = client.project(args.project.as_deref()).await?;
    let releases: Vec<Value> = client.get(&format!("/projects/{project}/releases")).await?;
    if releases.is_empty() {
        println!(
            "project {project} has no releases yet: a passing build on its deploy branch makes one"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8} {:<12} {:>6}  {:<10} {:<32} {:<14} {:<32} CREATED",
        "RELEASE", "COMMIT", "BUILD", "STATUS", "PACKAGE", "SHA256", "IMAGE"
    );
    for release in &releases {
        let text = |key: &str| release[key].as_str().unwrap_or("-").to_string();
        let package = &release["package"];
        let (file, sha) = match package["filename"].as_str() {
            Some(file) => (
                file.to_string(),
                package["sha256"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect(),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        // The image once baked; while baking or after a failed bake, the bake's status.
        let image = match (release["image"].as_str(), release["bake_status"].as_str()) {
            (Some(image), _) => image.to_string(),
            (None, Some(status)) => format!("({status})"),
            (None, None) => "-".to_string(),
        };
        println!(
            "{:<8} {:<12} {:>6}  {:<10} {:<32} {:<14} {:<32} {}",
            text("version"),
            text("commit").chars().take(12).collect::<String>(),
            release["build"].as_i64().unwrap_or_default(),
            text("status"),
            file,
            sha,
            image,
            text("created_at")
                .chars()
                .take(19)
                .collect::<String>()
                .replace('T', " "),
        );
        if let Some(reason) = release["reason"].as_str() {
            println!("         {reason}");
        }
        if let Some(reason) = release["bake_reason"].as_str() {
            println!("         bake: {reason}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
