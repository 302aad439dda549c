//! What each CLI command does.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use crate::cli::{AgentArgs, AgentCommand, ClientArgs, Command, ServerArgs, TokenCommand};
use crate::client::ApiClient;
use crate::config::{Config, Overrides};
use crate::server::{shutdown_signal, Application};

mod builds;
mod login;

pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Server(args) => server(args).await,
        Command::Pipeline(command) => crate::runner::local::run(command).await,
        Command::Token(command) => token(command).await,
        Command::Agent(args) => agent(args).await,
        Command::Agents { client } => agents(client).await,
        Command::Audit { client, limit } => audit(client, limit).await,
        Command::Promote {
            client,
            env,
            release,
            allow_older_schema,
        } => {
            let mut body = match release {
                Some(release) => json!({ "release": release }),
                None => json!({}),
            };
            if allow_older_schema {
                body["allow_older_schema"] = json!(true);
            }
            crate::deploy::cli::operate(&client, &env, "promote", &body).await
        }
        Command::Rollback {
            client,
            env,
            to,
            allow_older_schema,
        } => {
            let body = json!({ "to": to, "allow_older_schema": allow_older_schema });
            crate::deploy::cli::operate(&client, &env, "rollback", &body).await
        }
        Command::Status { client } => crate::deploy::cli::status(&client).await,
        Command::Releases { client } => releases(client).await,
        Command::Builds { client, limit } => builds::list(client, limit).await,
        Command::Build(args) => builds::run(args).await,
        Command::Login { client } => login::login(client).await,
        Command::Backup { server, out } => {
            let config = load_config(server)?;
            tokio::task::spawn_blocking(move || crate::backup::backup(&config, &out)).await??;
            println!("wrote the backup");
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { server, from } => {
            let config = load_config(server)?;
            let restored =
                tokio::task::spawn_blocking(move || crate::backup::restore(&config, &from))
                    .await??;
            println!("{restored}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The server's configuration, as `slipway server` with these arguments would read it.
fn load_config(args: ServerArgs) -> anyhow::Result<Config> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
    };
    Ok(Config::load(args.config.as_deref(), &overrides)?)
}

async fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args)?;
    let app = Application::build(config)
        .await
        .context("cannot start the server")?;
    app.run_until(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            client,
            name,
            scopes,
        } => {
            let client = ApiClient::new(&client)?;
            let body = json!({ "name": name, "scopes": scopes });
            let created: Value = client.post("/tokens", &body).await?;
            // The token alone on stdout, for scripts; what it is on stderr.
            eprintln!(
                "token {} ({}) with scopes {}; it is shown this once",
                created["id"],
                text(&created["name"]),
                list(&created["scopes"])
            );
            println!("{}", text(&created["token"]));
        }
        TokenCommand::List { client } => {
            let client = ApiClient::new(&client)?;
            let tokens: Vec<Value> = client.get("/tokens").await?;
            println!(
                "{:>4}  {:<24} {:<32} {:<19} {:<19} REVOKED",
                "ID", "NAME", "SCOPES", "CREATED", "LAST USED"
            );
            for token in &tokens {
                println!(
                    "{:>4}  {:<24} {:<32} {:<19} {:<19} {}",
                    token["id"],
                    text(&token["name"]),
                    list(&token["scopes"]),
                    time(&token["created_at"]),
                    time(&token["last_used_at"]),
                    time(&token["revoked_at"]),
                );
            }
        }
        TokenCommand::Revoke { client, id } => {
            let client = ApiClient::new(&client)?;
            let revoked: Value = client.delete(&format!("/tokens/{id}")).await?;
            println!(
                "token {id} ({}) revoked at {}",
                text(&revoked["name"]),
                time(&revoked["revoked_at"])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit(args: ClientArgs, limit: u32) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args)?;
    let mut path = format!("/audit?limit={limit}");
    if let Some(project) = &args.project {
        path.push_str(&format!("&project={project}"));
    }
    let events: Vec<Value> = client.get(&path).await?;
    println!(
        "{:<19} {:<24} {:<13} {:<12} {:<8} {:<16} DEPLOYMENT",
        "AT", "TOKEN", "ACTION", "PROJECT", "ENV", "SUBJECT"
    );
    for event in &events {
        let token = format!(
            "{} ({})",
            text(&event["token"]["name"]),
            event["token"]["id"]
        );
        println!(
            "{:<19} {:<24} {:<13} {:<12} {:<8} {:<16} {}",
            time(&event["at"]),
            token,
            text(&event["action"]),
            text(&event["project"]),
            text(&event["environment"]),
            text(&event["subject"]),
            text(&event["deployment"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON string as text, `-` when absent.
fn text(value: &Value) -> String {
    value.as_str().unwrap_or("-").to_string()
}

/// A list of JSON strings, comma-separated.
fn list(value: &Value) -> String {
    let items: Vec<&str> = value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    items.join(",")
}

/// An RFC 3339 time as `2026-11-30 11:07:44`, `-` when absent.
fn time(value: &Value) -> String {
    match value.as_str() {
        Some(at) => at.chars().take(19).collect::<String>().replace('T', " "),
        None => "-".to_string(),
    }
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
        "{:<8} {:<12} {:>6}  {:<10} {:<32} {:<14} {:<12} {:<32} {:>6}  CREATED",
        "RELEASE", "COMMIT", "BUILD", "STATUS", "PACKAGE", "SHA256", "LINTIAN", "IMAGE", "SCHEMA"
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
        // The image once baked; while queued, baking or after a failed bake, the bake's status.
        let image = match (release["image"].as_str(), release["bake_status"].as_str()) {
            (Some(image), _) => image.to_string(),
            (None, Some(status)) => format!("({status})"),
            (None, None) => "-".to_string(),
        };
        let lintian = &release["lintian"];
        let tags = |kind: &str| lintian[kind].as_array().cloned().unwrap_or_default();
        let (errors, warnings) = (tags("errors"), tags("warnings"));
        let verdict = match lintian["status"].as_str() {
            Some("clean") => "clean".to_string(),
            Some("issues") => format!("{}E {}W", errors.len(), warnings.len()),
            Some("not_checked") => "not checked".to_string(),
            _ => "-".to_string(),
        };
        let schema = release["schema_version"]
            .as_i64()
            .map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:<8} {:<12} {:>6}  {:<10} {:<32} {:<14} {:<12} {:<32} {:>6}  {}",
            text("version"),
            text("commit").chars().take(12).collect::<String>(),
            release["build"].as_i64().unwrap_or_default(),
            text("status"),
            file,
            sha,
            verdict,
            image,
            schema,
            text("created_at")
                .chars()
                .take(19)
                .collect::<String>()
                .replace('T', " "),
        );
        if let Some(reason) = release["reason"].as_str() {
            println!("         {reason}");
        }
        if let Some(images) = images_line(&release["images"]) {
            println!("         images: {images}");
        }
        if let Some(reason) = release["bake_reason"].as_str() {
            println!("         bake: {reason}");
        }
        for tag in errors.iter().chain(&warnings).filter_map(Value::as_str) {
            println!("         lintian: {tag}");
        }
        if let Some(note) = lintian["note"].as_str() {
            println!("         lintian: {note}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A release's images for `slipway releases`, e.g. `docker baked, ami eu-west-1 queued`;
/// `None` when it has none.
fn images_line(images: &Value) -> Option<String> {
    let images = images.as_array().filter(|images| !images.is_empty())?;
    let described: Vec<String> = images
        .iter()
        .map(|image| {
            let mut words = vec![image["kind"].as_str().unwrap_or("?")];
            words.extend(image["region"].as_str());
            words.push(image["status"].as_str().unwrap_or("?"));
            if image["kind"] != "docker" {
                words.extend(image["id"].as_str());
            }
            words.join(" ")
        })
        .collect();
    Some(described.join(", "))
}

/// `slipway agent`: runs until drained; `slipway agent drain NAME` asks one to drain.
async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if let Some(AgentCommand::Drain { client, name }) = args.command {
        let api = ApiClient::new(&client)?;
        let agent: Value = api
            .post(&format!("/agents/{name}/drain"), &json!({}))
            .await?;
        println!(
            "agent {} is draining: it takes no new build and exits once its {} running builds end",
            text(&agent["name"]),
            agent["running"].as_array().map_or(0, Vec::len)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(server), Some(token)) = (args.server, args.token) else {
        anyhow::bail!("slipway agent needs --server and --token");
    };
    let labels =
        crate::agent::parse_labels(&args.labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    let options = crate::agent::Options {
        server,
        token: crate::client::read_token(&token)?,
        name: args.name.unwrap_or_else(crate::server::host_name),
        capacity: args.capacity,
        labels,
        docker_host: args.docker_host,
        work_dir: args.work_dir,
        instance_id: args.instance_id,
    };
    crate::agent::run(options).await?;
    Ok(ExitCode::SUCCESS)
}

/// `slipway agents`: one line per agent.
async fn agents(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args)?;
    let listed: Value = client.get("/agents").await?;
    println!(
        "{:<20} {:<9} {:>8} {:<19} {:<10} {:<24} RUNNING",
        "NAME", "STATE", "CAPACITY", "LAST HEARTBEAT", "VERSION", "LABELS"
    );
    for agent in listed["agents"].as_array().into_iter().flatten() {
        let labels: Vec<String> = agent["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
            .collect();
        let running: Vec<String> = agent["running"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        println!(
            "{:<20} {:<9} {:>8} {:<19} {:<10} {:<24} {}",
            text(&agent["name"]),
            text(&agent["state"]),
            agent["capacity"],
            time(&agent["last_heartbeat"]),
            text(&agent["version"]),
            labels.join(","),
            running.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
