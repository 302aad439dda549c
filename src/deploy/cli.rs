//! `slipway promote`, `slipway rollback` and `slipway status`: each step of a deployment
//! printed with its timing as the server streams it, and each environment's state.

use std::process::ExitCode;

use futures::StreamExt;
use serde_json::Value;
use slipway_deployer::DeploymentState;

use super::progress::Progress;
use crate::cli::ClientArgs;
use crate::client::ApiClient;

/// Runs `action` (`promote` or `rollback`) on `environment` and follows it: a promotion to
/// its end, failing unless the new release ends up serving; a rollback until traffic reaches
/// the release (its switch and launch template), since what is wanted of it is that traffic moves now: the watch
/// and the retention that follow show in `slipway status`.
pub async fn operate(
    args: &ClientArgs,
    environment: &str,
    action: &str,
    body: &Value,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(args)?;
    let project = client.project(args.project.as_deref()).await?;
    let path = format!("/projects/{project}/environments/{environment}/{action}");
    let response = client.post_stream(&path, body).await?;
    let mut bytes = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = bytes.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let Some(event) = parse_frame(&frame) else {
                continue;
            };
            if let Some(code) = show(&event) {
                return Ok(code);
            }
            if let (true, Some(release)) = (action == "rollback", switched(&event)) {
                println!(
                    "{release} serves {environment}; the deployment goes on (watch, then the previous fleet kept warm): see `slipway status`"
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    anyhow::bail!("the server closed the stream before the deployment ended; see `slipway status`")
}

/// The event in one server-sent event frame (its `data:` lines), if it carries one.
fn parse_frame(frame: &str) -> Option<Progress> {
    let data: Vec<&str> = frame
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    serde_json::from_str(&data.join("\n")).ok()
}

/// The release traffic moved to, when `event` ends the steps of a switch (traffic, then the
/// launch template new instances start from).
fn switched(event: &Progress) -> Option<&str> {
    match event {
        Progress::StepFinished {
            release,
            step,
            error: None,
            ..
        } if step == &DeploymentState::UpdatingLaunchTemplate.to_string() => Some(release),
        _ => None,
    }
}

/// Prints one event; the exit code once the operation is over.
fn show(event: &Progress) -> Option<ExitCode> {
    match event {
        Progress::StepStarted { release, step, .. } => {
            println!("{release} {step} ...");
            None
        }
        Progress::StepFinished {
            release,
            step,
            elapsed_ms,
            error,
            ..
        } => {
            let seconds = *elapsed_ms as f64 / 1000.0;
            match error {
                None => println!("{release} {step} done in {seconds:.1}s"),
                Some(error) => println!("{release} {step} failed after {seconds:.1}s: {error}"),
            }
            None
        }
        Progress::Health {
            healthy, instances, ..
        } => {
            println!("  health: {healthy}/{instances} instances healthy");
            None
        }
        Progress::Refused { error, .. } | Progress::Errored { error, .. } => {
            eprintln!("error: {error}");
            Some(ExitCode::FAILURE)
        }
        Progress::Finished { deployment } => {
            let serving = matches!(
                deployment.state,
                DeploymentState::RetainingBlue | DeploymentState::Succeeded
            );
            let reason = deployment.reason.as_deref().unwrap_or("");
            match serving {
                true => {
                    println!(
                        "{} is live in {} (deployment {}, {})",
                        deployment.release, deployment.environment, deployment.id, deployment.state
                    );
                    Some(ExitCode::SUCCESS)
                }
                false => {
                    eprintln!(
                        "error: deployment {} of {} to {} ended {}: {reason}",
                        deployment.id, deployment.release, deployment.environment, deployment.state
                    );
                    Some(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// Prints each environment (live release, fleet health, what runs now, last deployments),
/// then the installation's servers.
pub async fn status(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(args)?;
    let project = client.project(args.project.as_deref()).await?;
    let environments: Vec<Value> = client
        .get(&format!("/projects/{project}/environments"))
        .await?;
    if environments.is_empty() {
        println!("project {project} has no environments configured");
    }
    for environment in &environments {
        let text = |value: &Value| value.as_str().unwrap_or("-").to_owned();
        let live = match environment["live"]["release"].as_str() {
            Some(release) => format!("{release} ({})", text(&environment["live"]["image"])),
            None => "nothing".to_owned(),
        };
        let health = &environment["health"];
        let health = match (&health["healthy"], &health["error"]) {
            (Value::Number(healthy), _) => {
                format!("{healthy}/{} healthy", health["instances"])
            }
            (_, Value::String(error)) => format!("unknown: {error}"),
            _ => "-".to_owned(),
        };
        println!(
            "{} ({}): live {live}, fleet {health}",
            text(&environment["name"]),
            text(&environment["target"])
        );
        show_aws(&environment["aws"]);
        show_load_balancer(&environment["load_balancer"]);
        if let Some(operation) = environment["busy"]["operation"].as_str() {
            println!(
                "  now: {operation} since {}",
                text(&environment["busy"]["since"])
            );
        }
        let deployments = environment["deployments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for deployment in deployments {
            println!(
                "  {:<36} {:<6} {:<12} {:<16} {} {}",
                text(&deployment["id"]),
                text(&deployment["release"]),
                text(&deployment["kind"]),
                text(&deployment["state"]),
                text(&deployment["created_at"])
                    .chars()
                    .take(19)
                    .collect::<String>(),
                deployment["reason"].as_str().unwrap_or(""),
            );
        }
    }
    let servers: Value = client.get("/servers").await?;
    show_servers(&servers);
    Ok(ExitCode::SUCCESS)
}

/// The installation's servers: which is live, its last heartbeat, and what it runs.
fn show_servers(servers: &Value) {
    let text = |value: &Value| value.as_str().unwrap_or("-").to_owned();
    println!("servers:");
    for server in servers["servers"].as_array().into_iter().flatten() {
        let state = match (server["live"].as_bool(), server["stopped_at"].as_str()) {
            (Some(true), _) => "live".to_owned(),
            (_, Some(stopped)) => format!("stopped at {stopped}"),
            _ => "not answering".to_owned(),
        };
        let running: Vec<String> = server["running"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|work| match work["kind"].as_str() {
                Some("build") => format!("build {}#{}", text(&work["project"]), work["number"]),
                Some("bake") => format!(
                    "bake of {} {} {} ({})",
                    text(&work["project"]),
                    text(&work["release"]),
                    text(&work["image"]),
                    text(&work["region"])
                ),
                _ => format!(
                    "environment {}/{}",
                    text(&work["project"]),
                    text(&work["environment"])
                ),
            })
            .collect();
        let answered = if server["id"] == servers["answered_by"] {
            " (answered this)"
        } else {
            ""
        };
        println!(
            "  {} on {} pid {} (v{}, {}){answered}: {state}, last heartbeat {}",
            text(&server["id"]),
            text(&server["host"]),
            server["pid"],
            text(&server["version"]),
            text(&server["listen"]),
            text(&server["heartbeat_at"]),
        );
        if !running.is_empty() {
            println!("    running {}", running.join(", "));
        }
    }
}

/// A docker environment's load balancer: its state, the frontend's counters and each
/// instance's state as its health checks see it.
fn show_load_balancer(balancer: &Value) {
    if let Some(error) = balancer["error"].as_str() {
        println!("  load balancer: {error}");
        return;
    }
    let Some(container) = balancer["container"].as_str() else {
        return;
    };
    let tls = if balancer["tls"].as_bool() == Some(true) {
        ", TLS"
    } else {
        ""
    };
    println!(
        "  load balancer {container} on {}{tls}: {}",
        balancer["listen"].as_str().unwrap_or("-"),
        balancer["state"].as_str().unwrap_or("-"),
    );
    let stats = balancer["stats"].as_array().cloned().unwrap_or_default();
    let number = |row: &Value, key: &str| row[key].as_u64().unwrap_or(0);
    for row in &stats {
        let name = row["name"].as_str().unwrap_or("");
        let proxy = row["proxy"].as_str().unwrap_or("");
        if name == "FRONTEND" {
            println!(
                "    {} connections now, {} since start, {} requests, {} answered 5xx, {} bytes in, {} out",
                number(row, "current_sessions"),
                number(row, "total_sessions"),
                number(row, "requests"),
                number(row, "responses_5xx"),
                number(row, "bytes_in"),
                number(row, "bytes_out"),
            );
        } else if name != "BACKEND" && (proxy == "a" || proxy == "b") {
            println!(
                "    slot {proxy} {name}: {} {} {}, {} connections now, {} requests",
                row["status"].as_str().unwrap_or("-"),
                row["check_status"].as_str().unwrap_or(""),
                row["check_code"].as_str().unwrap_or(""),
                number(row, "current_sessions"),
                number(row, "requests"),
            );
        }
    }
}

/// An aws environment's launch template and each Auto Scaling group, with its launch
/// template version, AMI and each instance's target health.
fn show_aws(aws: &Value) {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    if let Some(error) = aws["error"].as_str() {
        println!("  aws: {error}");
        return;
    }
    let Some(fleets) = aws["fleets"].as_array() else {
        return;
    };
    println!(
        "  launch template {} (default version {})",
        text(&aws["launch_template_id"]),
        text(&aws["default_version"])
    );
    for fleet in fleets {
        let role = match fleet["serving"].as_bool() {
            Some(true) => "serving",
            _ => "not serving",
        };
        println!(
            "  auto scaling group {} ({}, {role}): launch template version {}, AMI {}",
            text(&fleet["auto_scaling_group"]),
            text(&fleet["release"]),
            text(&fleet["launch_template_version"]),
            text(&fleet["ami"])
        );
        for instance in fleet["instances"].as_array().into_iter().flatten() {
            println!(
                "    {} {}",
                text(&instance["instance"]),
                text(&instance["detail"])
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_carries_one_event_and_a_failed_deployment_fails_the_command() {
        let frame = "event: step_finished\ndata: {\"event\":\"step_finished\",\"deployment\":\"d\",\"release\":\"v2\",\"step\":\"launching\",\"at\":\"2026-01-01T00:00:00Z\",\"elapsed_ms\":1500,\"error\":null}\n\n";
        let event = parse_frame(frame).expect("an event");
        assert!(matches!(
            &event,
            Progress::StepFinished {
                elapsed_ms: 1500,
                ..
            }
        ));
        assert_eq!(show(&event), None);
        assert_eq!(parse_frame(": keep-alive\n\n").map(|e| e.name()), None);
        let refused = Progress::Errored {
            error: "release v2 already has fleet dev-v2".to_owned(),
            internal: false,
        };
        assert_eq!(show(&refused), Some(ExitCode::FAILURE));
    }
}
