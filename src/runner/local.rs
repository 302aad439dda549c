//! `slipway pipeline compile` and `slipway pipeline exec`: a repository's pipeline, locally,
//! without a server (as `drone exec` does).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use slipway_pipeline::{
    self as pipeline, BuildOutcome, DockerEngine, LogChunk, Observer, RunOptions, StepResult,
};
use tokio_util::sync::CancellationToken;

use super::source::SPEC_FILE;
use crate::cli::PipelineCommand;

pub async fn run(command: PipelineCommand) -> anyhow::Result<ExitCode> {
    match command {
        PipelineCommand::Compile {
            file,
            branch,
            event,
        } => {
            let file = file.unwrap_or_else(|| PathBuf::from(SPEC_FILE));
            let spec = read_spec(&file)?;
            let event =
                serde_json::from_value(serde_json::Value::String(event.clone())).map_err(|_| {
                    anyhow!("unknown event {event:?}: expected push, pull_request, tag or manual")
                })?;
            let plan = pipeline::compile(&spec, &local_build(&branch, "local", event))?;
            // The graph for the reader on stderr; stdout stays the JSON plan for scripts.
            eprint!("{}", plan.graph_text());
            println!("{}", serde_json::to_string_pretty(&plan)?);
            Ok(ExitCode::SUCCESS)
        }
        PipelineCommand::Exec {
            repo,
            commit,
            branch,
            secrets,
            cache_dir,
        } => {
            let run = ExecRun {
                commit: commit.as_deref(),
                branch: &branch,
                secrets: &secrets,
                cache_dir,
            };
            exec(&repo, run).await
        }
        PipelineCommand::Package {
            file,
            dir,
            version,
            out,
        } => {
            let file = file.unwrap_or_else(|| dir.join(SPEC_FILE));
            let package = read_package(&file)?;
            let package = &package;
            let epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let epoch = std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(epoch);
            let description = format!("Version {version}, packaged by Slipway.");
            let definition =
                crate::releases::definition(package, i64::from(version), &description, epoch);
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let built = slipway_bake::deb::build(&definition, &dir, &out)
                .with_context(|| format!("packaging {}", definition.name))?;
            println!("{}", built.path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `slipway pipeline exec` was asked, besides the repository.
struct ExecRun<'a> {
    commit: Option<&'a str>,
    branch: &'a str,
    secrets: &'a [String],
    cache_dir: Option<PathBuf>,
}

async fn exec(repo: &Path, run: ExecRun<'_>) -> anyhow::Result<ExitCode> {
    let ExecRun {
        commit,
        branch,
        secrets,
        cache_dir,
    } = run;
    let secrets = parse_secrets(secrets)?;
    let workspace = tempfile::Builder::new().prefix("slipway-exec-").tempdir()?;
    let cache_scratch = tempfile::Builder::new()
        .prefix("slipway-exec-cache-")
        .tempdir()?;
    let revision = prepare_workspace(repo, commit, workspace.path())?;
    let spec = read_spec(&workspace.path().join(SPEC_FILE))?;
    let plan = pipeline::compile(
        &spec,
        &local_build(branch, &revision, pipeline::spec::Event::Push),
    )?;
    let engine = DockerEngine::connect(None)
        .await
        .context("cannot reach Docker")?;

    let cancel = CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the build and cleaning up");
            on_interrupt.cancel();
        }
    });
    let outcome = pipeline::run(
        &plan,
        &engine,
        workspace.path(),
        &secrets,
        &Printer,
        cancel,
        &RunOptions {
            migrator: Some(pipeline::MigratorHandle(std::sync::Arc::new(
                super::migrations::LocalMigrator {
                    docker: bollard::Docker::connect_with_local_defaults()
                        .context("cannot reach Docker")?,
                },
            ))),
            cache: cache_dir.map(|dir| {
                let caches = std::sync::Arc::new(crate::cache::Caches::in_dir(
                    dir,
                    crate::config::DEFAULT_CACHE_LIMIT_BYTES,
                ));
                let cache = caches.for_build(&plan.build.project, cache_scratch.path().into());
                pipeline::CacheHandle(std::sync::Arc::new(cache))
            }),
            ..RunOptions::default()
        },
    )
    .await;
    Ok(if outcome.status == pipeline::BuildStatus::Passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn local_build(branch: &str, commit: &str, event: pipeline::spec::Event) -> pipeline::BuildInfo {
    pipeline::BuildInfo {
        project: "local".to_string(),
        number: 1,
        build_id: format!("local-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        commit: commit.to_string(),
        branch: branch.to_string(),
        event,
        extra_labels: Default::default(),
        extra_env: Default::default(),
    }
}

/// The `package:` section of a `.slipway.yml`, or of a file holding that section alone.
fn read_package(file: &Path) -> anyhow::Result<pipeline::PackageSpec> {
    let text = pipeline::spec::read_file(file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if !text.lines().any(|line| line.starts_with("steps:")) {
        return pipeline::spec::parse_package(&text)
            .map_err(|e| anyhow!("{}: {e}", file.display()));
    }
    let spec = pipeline::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    spec.package
        .ok_or_else(|| anyhow!("{} has no `package:` section to build", file.display()))
}

fn read_spec(file: &Path) -> anyhow::Result<pipeline::Spec> {
    let text = pipeline::spec::read_file(file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    pipeline::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))
}

/// Copies the repository's files into `dest`: the working tree as it is, or with `--commit`
/// the files at that commit. Returns the revision the build reports as its commit.
fn prepare_workspace(repo: &Path, commit: Option<&str>, dest: &Path) -> anyhow::Result<String> {
    if !repo.is_dir() {
        bail!("--repo {}: not a directory", repo.display());
    }
    match commit {
        None => {
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(repo.join("."))
                .arg(dest)
                .status()
                .context("cannot run cp")?;
            if !status.success() {
                bail!("cannot copy {} into the workspace", repo.display());
            }
            Ok(git_output(repo, &["rev-parse", "HEAD"]).unwrap_or_else(|_| "local".to_string()))
        }
        Some(commit) => {
            let full = git_output(
                repo,
                &[
                    "rev-parse",
                    "--verify",
                    "--end-of-options",
                    &format!("{commit}^{{commit}}"),
                ],
            )
            .map_err(|e| anyhow!("--commit {commit}: {e}"))?;
            let archive = std::process::Command::new("git")
                .current_dir(repo)
                .args([
                    "archive",
                    "--format=tar",
                    "--end-of-options",
                    &format!("{full}:./"),
                ])
                .output()
                .context("cannot run git archive")?;
            if !archive.status.success() {
                bail!(
                    "git archive failed: {}",
                    String::from_utf8_lossy(&archive.stderr).trim()
                );
            }
            tar::Archive::new(archive.stdout.as_slice())
                .unpack(dest)
                .context("cannot unpack the commit's files")?;
            Ok(full)
        }
    }
}

fn git_output(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new("git")
        .current_dir(repo)
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn parse_secrets(pairs: &[String]) -> anyhow::Result<HashMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .ok_or_else(|| anyhow!("--secret expects NAME=VALUE, got a value without '=' (the value is not shown)"))
        })
        .collect()
}

/// Prints a build's progress to the terminal.
struct Printer;

#[async_trait::async_trait]
impl Observer for Printer {
    async fn step_started(&self, step: &str) {
        println!("==> {step}");
    }
    async fn log_chunk(&self, step: &str, chunk: LogChunk) {
        let mut out = std::io::stdout().lock();
        for line in chunk.lines() {
            let _ = writeln!(out, "[{step}] {}", String::from_utf8_lossy(line));
        }
    }
    async fn step_finished(&self, step: &str, result: &StepResult) {
        let status = serde_json::to_value(result.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let detail = match (&result.exit_code, &result.reason) {
            (Some(code), _) if *code != 0 => format!(" (exit code {code})"),
            (_, Some(reason)) => format!(" ({reason})"),
            _ => String::new(),
        };
        println!(
            "<== {step}: {status} in {:.1} s{detail}",
            result.duration.as_secs_f64()
        );
    }
    async fn build_finished(&self, outcome: &BuildOutcome) {
        let status = serde_json::to_value(outcome.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match &outcome.message {
            Some(message) => println!(
                "pipeline {status} in {:.1} s: {message}",
                outcome.duration.as_secs_f64()
            ),
            None => println!(
                "pipeline {status} in {:.1} s",
                outcome.duration.as_secs_f64()
            ),
        }
        for error in &outcome.teardown_errors {
            eprintln!("warning: cleanup left {error}");
        }
    }
}
