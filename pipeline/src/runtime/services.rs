//! Starts a build's services and waits, with a deadline, until each is ready.

use tokio::time::{Duration, Instant};

use super::output::SecretMask;
use super::{Build, Halt};
use crate::engine::{ContainerConfig, EngineError, NetworkAttachment};
use crate::plan::{Plan, ReadyCheck, ServicePlan};

/// How many of a service's last output lines explain why it never got ready.
const LINES_SHOWN: usize = 20;

/// Starts every service, then waits for each one's readiness check to pass.
pub(super) async fn start_and_wait(build: &Build<'_>) -> Result<(), Halt> {
    for service in &build.plan.services {
        super::pull::service_image(build, service).await?;
        build
            .engine
            .start_container(&service_container(build.plan, service, build.secrets))
            .await?;
    }
    for service in &build.plan.services {
        wait_ready(build, service).await?;
    }
    Ok(())
}

/// The container of a service: the image's own entrypoint, reachable as the service's name,
/// its variables from secrets filled in from `secrets`.
pub fn service_container(
    plan: &Plan,
    service: &ServicePlan,
    secrets: &std::collections::HashMap<String, String>,
) -> ContainerConfig {
    let mut env = service.env.clone();
    for (variable, name) in &service.env_from_secrets {
        if let Some(value) = secrets.get(name) {
            env.insert(variable.clone(), value.clone());
        }
    }
    ContainerConfig {
        name: service.container.clone(),
        image: service.image.clone(),
        env,
        entrypoint: None,
        cmd: None,
        workdir: None,
        network: Some(NetworkAttachment {
            network: plan.network.clone(),
            alias: service.name.clone(),
            lane: None,
        }),
        mount: None,
        labels: plan.labels.clone(),
    }
}

#[tracing::instrument(skip_all, fields(build = %build.plan.build.build_id, service = %service.name))]
async fn wait_ready(build: &Build<'_>, service: &ServicePlan) -> Result<(), Halt> {
    let Some(ready) = &service.ready else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(ready.timeout_seconds);
    loop {
        match probe(build, service, &ready.check).await {
            Ok(true) => {
                tracing::info!("Service is ready.");
                return Ok(());
            }
            Ok(false) if Instant::now() < deadline => {}
            Ok(false) => {
                let why = format!("not ready after {}s", ready.timeout_seconds);
                return Err(not_ready(build, service, &why).await);
            }
            Err(error) => return Err(not_ready(build, service, &error.to_string()).await),
        }
        tokio::time::sleep(build.options.ready_poll_interval).await;
    }
}

async fn probe(
    build: &Build<'_>,
    service: &ServicePlan,
    check: &ReadyCheck,
) -> Result<bool, EngineError> {
    match check {
        ReadyCheck::Tcp { port } => {
            build
                .engine
                .tcp_ready(&service.container, &build.plan.network, *port)
                .await
        }
        ReadyCheck::Command { command } => {
            let command = ["sh".to_owned(), "-c".to_owned(), command.clone()];
            Ok(build.engine.exec(&service.container, &command).await? == 0)
        }
    }
}

/// A failed build's message for a service that never got ready, with its last output lines.
async fn not_ready(build: &Build<'_>, service: &ServicePlan, why: &str) -> Halt {
    let tail = match build
        .engine
        .recent_output(&service.container, LINES_SHOWN)
        .await
    {
        Ok(lines) if lines.is_empty() => "(no output)".to_owned(),
        Ok(lines) => {
            let text = lines
                .iter()
                .map(|line| format!("  {}", line.text))
                .collect::<Vec<_>>()
                .join("\n");
            SecretMask::new(build.secrets).mask_text(&text)
        }
        Err(error) => format!("(output unavailable: {error})"),
    };
    Halt::Failed(format!(
        "service `{}` ({}) {why}; its last output lines:\n{tail}",
        service.name, service.image
    ))
}
