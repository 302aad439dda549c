//! Compiles a validated spec and the facts of one build into a serialisable plan (pure code).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{
    CachePlan, EnvValue, Event, MigrationsPlan, PackageSpec, PullPolicy, ReadySpec, SettingValue,
    Spec, StatusCondition, StepSpec,
};

/// The label every container, network and volume of a build carries with the build id.
pub const BUILD_LABEL: &str = "slipway.build";
/// The label carrying the project name.
pub const PROJECT_LABEL: &str = "slipway.project";
/// The label marking objects Slipway created, with value [`OWNER_VALUE`].
pub const OWNER_LABEL: &str = "slipway.owner";
pub const OWNER_VALUE: &str = "slipway";
/// Where the workspace is mounted in every step.
pub const WORKDIR: &str = "/workspace";
/// The whole-build timeout when the spec sets none.
pub const DEFAULT_BUILD_TIMEOUT_SECONDS: u64 = 3600;
/// How long a service may take to become ready when its `ready` sets no timeout.
pub const DEFAULT_READY_TIMEOUT_SECONDS: u64 = 60;

/// The facts of one build the caller knows; `build_id` is unique across all builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub project: String,
    pub number: u64,
    pub build_id: String,
    pub commit: String,
    pub branch: String,
    pub event: Event,
    /// More labels for everything the build creates (a test id, a server id).
    pub extra_labels: BTreeMap<String, String>,
    /// More variables for every step: what the event adds (a pull request's number,
    /// branches and title; a tag's name). Slipway's own variables win over them.
    pub extra_env: BTreeMap<String, String>,
}

/// Why a plan could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("build info: `{field}` must not be empty")]
    EmptyField { field: &'static str },
    #[error("build info: extra label `{label}` would replace one of Slipway's own labels")]
    ReservedLabel { label: String },
}

/// Everything the runtime needs to run one build, decided before anything runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub build: BuildInfo,
    pub labels: BTreeMap<String, String>,
    pub network: String,
    pub volume: String,
    pub workdir: String,
    pub timeout_seconds: u64,
    pub services: Vec<ServicePlan>,
    pub steps: Vec<StepPlan>,
    pub package: Option<PackageSpec>,
    /// Applied to a service's database after the services are ready, before the steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<MigrationsPlan>,
    /// Workspace paths restored before the steps and saved after a passing build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePlan>,
}

/// A sidecar to start before the steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub name: String,
    pub container: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Variables whose values are the named secrets, filled in when the service starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_from_secrets: BTreeMap<String, String>,
    pub ready: Option<ReadinessPlan>,
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub pull: PullPolicy,
}

/// A readiness check with its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessPlan {
    pub check: ReadyCheck,
    pub timeout_seconds: u64,
}

/// What "ready" means for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReadyCheck {
    /// The port accepts TCP connections on the service's address on the build network.
    Tcp { port: u16 },
    /// `sh -c <command>` run inside the service exits 0.
    Command { command: String },
}

/// A step, with its `when` branch/event conditions already decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPlan {
    pub name: String,
    pub container: String,
    pub image: String,
    /// The shell commands; none: the image's own entrypoint and command run (a plugin).
    pub commands: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    /// Variables whose value is a secret (`{from_secret: NAME}` in `environment` or
    /// `settings`): variable -> secret name; the values are filled in when the step starts.
    pub env_from_secrets: BTreeMap<String, String>,
    /// The steps that must finish before this one starts (a detached step counts as finished
    /// once it has started). Without `depends_on` in the file, each step depends on the one
    /// before it.
    pub depends_on: Vec<String>,
    /// Runs in the background until the build ends; its result never fails the build.
    pub detach: bool,
    pub timeout_seconds: Option<u64>,
    /// The build states in which the step runs, decided at run time.
    pub run_on: Vec<StatusCondition>,
    /// Set when `when.branch` or `when.event` excludes this build: the step never runs.
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub pull: PullPolicy,
}

impl Plan {
    /// The steps as a graph a person reads: each step with what it waits for (`<-`),
    /// whether it is detached, when it runs besides success, and why it is skipped; then
    /// the cache's paths and keys.
    pub fn graph_text(&self) -> String {
        let mut text = String::from("steps (each starts once those after <- are done):\n");
        for step in &self.steps {
            text.push_str("  ");
            text.push_str(&step.name);
            if !step.depends_on.is_empty() {
                text.push_str(&format!(" <- {}", step.depends_on.join(", ")));
            }
            if step.detach {
                text.push_str(" (detached)");
            }
            if step.run_on != [StatusCondition::Success] {
                let on: Vec<&str> = step
                    .run_on
                    .iter()
                    .map(|status| match status {
                        StatusCondition::Success => "success",
                        StatusCondition::Failure => "failure",
                    })
                    .collect();
                text.push_str(&format!(" (runs on {})", on.join(", ")));
            }
            if let Some(reason) = &step.skipped {
                text.push_str(&format!(" (skipped: {reason})"));
            }
            text.push('\n');
        }
        if let Some(cache) = &self.cache {
            text.push_str(&format!(
                "cache: {} under key \"{}\"",
                cache.paths.join(", "),
                cache.key
            ));
            if let Some(fallback) = &cache.fallback_key {
                text.push_str(&format!(", else \"{fallback}\""));
            }
            text.push('\n');
        }
        text
    }
}

/// Compiles `spec` for one build.
pub fn compile(spec: &Spec, build: &BuildInfo) -> Result<Plan, CompileError> {
    check_build_info(build)?;
    let prefix = format!(
        "slipway-{}-{}-{}",
        slug(&build.project),
        build.number,
        slug(&build.build_id)
    );
    let mut labels = build.extra_labels.clone();
    labels.insert(BUILD_LABEL.to_owned(), build.build_id.clone());
    labels.insert(PROJECT_LABEL.to_owned(), build.project.clone());
    labels.insert(OWNER_LABEL.to_owned(), OWNER_VALUE.to_owned());
    let services = spec
        .services
        .iter()
        .map(|service| {
            let (env, env_from_secrets) = environment(&service.environment);
            ServicePlan {
                name: service.name.to_string(),
                container: format!("{prefix}-{}", service.name),
                image: service.image.clone(),
                env,
                env_from_secrets,
                ready: service.ready.as_ref().map(readiness),
                pull: service.pull,
            }
        })
        .collect();
    // As in Drone: once any step names its dependencies, the file is a graph and a step
    // without `depends_on` has none; otherwise each step follows the one before it.
    let graph = spec.steps.iter().any(|step| step.depends_on.is_some());
    let steps = spec
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let depends_on = if graph {
                step.depends_on
                    .iter()
                    .flatten()
                    .map(|name| name.to_string())
                    .collect()
            } else {
                index
                    .checked_sub(1)
                    .map(|previous| vec![spec.steps[previous].name.to_string()])
                    .unwrap_or_default()
            };
            compile_step(step, build, &prefix, depends_on)
        })
        .collect();
    Ok(Plan {
        build: build.clone(),
        labels,
        network: prefix.clone(),
        volume: format!("{prefix}-workspace"),
        workdir: WORKDIR.to_owned(),
        timeout_seconds: spec
            .timeout
            .map_or(DEFAULT_BUILD_TIMEOUT_SECONDS, |t| t.0.as_secs()),
        services,
        steps,
        package: spec.package.clone(),
        migrations: spec
            .migrations
            .as_ref()
            .map(|m| m.plan(spec, format!("{prefix}-{}", m.service))),
        cache: spec.cache.as_ref().map(|cache| cache.plan()),
    })
}

fn check_build_info(build: &BuildInfo) -> Result<(), CompileError> {
    for (field, value) in [
        ("project", &build.project),
        ("build_id", &build.build_id),
        ("commit", &build.commit),
    ] {
        if value.is_empty() {
            return Err(CompileError::EmptyField { field });
        }
    }
    let reserved = [BUILD_LABEL, PROJECT_LABEL, OWNER_LABEL];
    if let Some(label) = build
        .extra_labels
        .keys()
        .find(|label| reserved.contains(&label.as_str()))
    {
        return Err(CompileError::ReservedLabel {
            label: label.clone(),
        });
    }
    Ok(())
}

fn compile_step(
    step: &StepSpec,
    build: &BuildInfo,
    prefix: &str,
    depends_on: Vec<String>,
) -> StepPlan {
    let (mut env, mut env_from_secrets) = environment(&step.environment);
    for (name, value) in &step.settings {
        match value {
            SettingValue::Text(text) => env.insert(name.variable(), text.clone()),
            SettingValue::FromSecret(secret) => {
                env_from_secrets.insert(name.variable(), secret.as_str().to_owned())
            }
        };
    }
    env.extend(build.extra_env.clone());
    env.extend(
        [
            ("CI", "true".to_owned()),
            ("SLIPWAY_PROJECT", build.project.clone()),
            ("SLIPWAY_BUILD_NUMBER", build.number.to_string()),
            ("SLIPWAY_COMMIT", build.commit.clone()),
            ("SLIPWAY_BRANCH", build.branch.clone()),
            ("SLIPWAY_EVENT", event_name(build.event).to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    StepPlan {
        name: step.name.to_string(),
        container: format!("{prefix}-{}", step.name),
        image: step.image.clone(),
        commands: step.commands.clone().unwrap_or_default(),
        env,
        secrets: step.secrets.iter().map(|s| s.as_str().to_owned()).collect(),
        env_from_secrets,
        depends_on,
        detach: step.detach,
        timeout_seconds: step.timeout.map(|t| t.0.as_secs()),
        run_on: step
            .when
            .status
            .clone()
            .unwrap_or_else(|| vec![StatusCondition::Success]),
        skipped: skip_reason(step, build),
        pull: step.pull,
    }
}

fn skip_reason(step: &StepSpec, build: &BuildInfo) -> Option<String> {
    if let Some(patterns) = &step.when.branch {
        if !patterns.iter().any(|p| glob_match(p, &build.branch)) {
            return Some(format!(
                "branch `{}` matches none of {}",
                build.branch,
                patterns.join(", ")
            ));
        }
    }
    if let Some(events) = &step.when.event {
        if !events.contains(&build.event) {
            let names: Vec<&str> = events.iter().map(|e| event_name(*e)).collect();
            return Some(format!(
                "event `{}` is none of {}",
                event_name(build.event),
                names.join(", ")
            ));
        }
    }
    None
}

/// The name of an event as written in `.slipway.yml` and `SLIPWAY_EVENT`.
pub fn event_name(event: Event) -> &'static str {
    match event {
        Event::Push => "push",
        Event::PullRequest => "pull_request",
        Event::Tag => "tag",
        Event::Manual => "manual",
    }
}

fn readiness(ready: &ReadySpec) -> ReadinessPlan {
    let check = match (&ready.tcp, &ready.command) {
        (Some(port), _) => ReadyCheck::Tcp { port: *port },
        (None, command) => ReadyCheck::Command {
            command: command.clone().unwrap_or_default(),
        },
    };
    ReadinessPlan {
        check,
        timeout_seconds: ready
            .timeout
            .map_or(DEFAULT_READY_TIMEOUT_SECONDS, |t| t.0.as_secs()),
    }
}

/// An `environment` as plain values, and the variables whose values are named secrets.
fn environment(
    spec: &BTreeMap<crate::spec::VariableName, EnvValue>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut env = BTreeMap::new();
    let mut from_secrets = BTreeMap::new();
    for (name, value) in spec {
        let name = name.as_str().to_owned();
        match value {
            EnvValue::Text(text) => env.insert(name, text.0.clone()),
            EnvValue::FromSecret(secret) => from_secrets.insert(name, secret.as_str().to_owned()),
        };
    }
    (env, from_secrets)
}

/// Docker object names allow `[a-zA-Z0-9_.-]`; everything else in a project or id becomes `-`.
fn slug(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Shell-style matching where `*` matches any run of characters (`/` included) and `?` one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn branch_patterns_match_like_shell_globs() {
        assert!(glob_match("main", "main"));
        assert!(!glob_match("main", "mainline"));
        assert!(glob_match("release/*", "release/1.2"));
        assert!(glob_match("release/*", "release/a/b"));
        assert!(!glob_match("release/*", "feature/x"));
        assert!(glob_match("*-hotfix", "v1-hotfix"));
        assert!(glob_match("v?.*", "v1.0"));
        assert!(glob_match("*", ""));
    }
}
