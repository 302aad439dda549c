//! The `.slipway.yml` file: typed structs, parsing, and validation with line/column errors.

mod bake;
mod bounds;
mod cache;
mod drone;
mod locate;
mod migrations;
mod validate;
mod values;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use bake::{
    check_extra_var_name, check_git_ref, check_image_reference, check_remote_url, check_url_text,
    BakeSpec, ExtraVars, GitRef, ImageReference, PlaybookRepoSpec, RepositoryUrl,
};
pub use bounds::{read_file, MAX_DEPTH, MAX_EXPANDED_TEXT_BYTES, MAX_SPEC_BYTES, MAX_VALUES};
pub use cache::{
    CachePath, CachePlan, CacheSpec, KeyError, KeyPart, KeyTemplate, CACHE_RESTORE_STEP,
    CACHE_SAVE_STEP,
};
pub use drone::{EnvValue, SettingName, SettingValue};
pub use migrations::{MigrationsPlan, MigrationsSpec, MIGRATIONS_STEP};
pub use values::{
    AccountName, FileMode, InstallDest, InstallPath, Name, PackageName, ScalarText, SpecDuration,
    VariableName, WorkspacePath,
};

/// A user error in `.slipway.yml`, located at the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} column {column}: {message}")]
pub struct SpecError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A parsed and validated `.slipway.yml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    pub steps: Vec<StepSpec>,
    pub package: Option<PackageSpec>,
    /// The application's SQL migrations, applied to a service's database before the steps.
    pub migrations: Option<MigrationsSpec>,
    pub timeout: Option<SpecDuration>,
    #[serde(default)]
    pub clone: CloneSpec,
    /// The team's own bake (playbook, extra variables, base image); see [`BakeSpec`].
    pub bake: Option<BakeSpec>,
    /// Workspace paths kept between builds of the project; see [`CacheSpec`].
    pub cache: Option<CacheSpec>,
    /// The labels an agent must have to run the build (`arch: arm64`); a build with labels
    /// runs on a matching agent only, never on a server.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How the build's workspace is made from the repository.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneSpec {
    /// Whether the workspace holds `.git` (the commit's history and tags, no remote).
    #[serde(default)]
    pub git: bool,
}

/// A sidecar container, reachable by its name from every step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: Name,
    pub image: String,
    #[serde(default)]
    pub environment: BTreeMap<VariableName, EnvValue>,
    pub ready: Option<ReadySpec>,
    #[serde(default)]
    pub pull: PullPolicy,
}

/// How to tell that a service accepts work: exactly one of `tcp` or `command`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadySpec {
    pub tcp: Option<u16>,
    pub command: Option<String>,
    pub timeout: Option<SpecDuration>,
}

/// One step: shell commands run in order in one container, or without `commands` the image's
/// own entrypoint (a Drone plugin).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: Name,
    pub image: String,
    pub commands: Option<Vec<String>>,
    #[serde(default)]
    pub environment: BTreeMap<VariableName, EnvValue>,
    #[serde(default)]
    pub secrets: Vec<VariableName>,
    pub timeout: Option<SpecDuration>,
    #[serde(default)]
    pub when: WhenSpec,
    #[serde(default)]
    pub pull: PullPolicy,
    /// The steps this one starts after; when no step of the pipeline has any, each step
    /// starts after the one before it.
    pub depends_on: Option<Vec<Name>>,
    /// Drone plugin settings, each passed as `PLUGIN_<NAME>`.
    #[serde(default)]
    pub settings: BTreeMap<SettingName, SettingValue>,
    /// Runs in the background for the rest of the build; its result never fails the build.
    #[serde(default)]
    pub detach: bool,
}

/// When an image is pulled from its registry before its container starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pulled only when the container engine does not have it.
    #[default]
    IfNotExists,
    /// Pulled before every run, so a moved tag is followed.
    Always,
    /// Never pulled: an absent image is an error.
    Never,
}

impl PullPolicy {
    /// The policy as written in `.slipway.yml`.
    pub fn name(self) -> &'static str {
        match self {
            PullPolicy::IfNotExists => "if-not-exists",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
    }

    /// Whether this is the default, which plans leave out.
    pub fn is_default(&self) -> bool {
        *self == PullPolicy::default()
    }
}

/// Conditions under which a step runs; an absent list places no condition.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    pub branch: Option<Vec<String>>,
    pub event: Option<Vec<Event>>,
    pub status: Option<Vec<StatusCondition>>,
}

/// What started a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Push,
    PullRequest,
    Tag,
    Manual,
}

/// The build's state a step may require: `success` (nothing failed so far) or `failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusCondition {
    Success,
    Failure,
}

/// What goes into the .deb, consumed by the packaging stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    pub name: PackageName,
    pub architecture: Architecture,
    pub maintainer: String,
    pub description: String,
    #[serde(default)]
    pub depends: Vec<String>,
    pub files: Vec<PackageFile>,
    #[serde(default)]
    pub conffiles: Vec<InstallPath>,
    pub systemd_unit: Option<WorkspacePath>,
    #[serde(default)]
    pub scripts: MaintainerScripts,
}

/// Debian architectures a package may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    All,
    Amd64,
    Arm64,
    Armhf,
    I386,
    Ppc64el,
    S390x,
    Riscv64,
}

/// Files copied from the build's workspace into the package: one file, a directory or a glob
/// (`dist/**`), placed at or under `dest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageFile {
    pub src: WorkspacePath,
    pub dest: InstallDest,
    #[serde(default)]
    pub mode: FileMode,
    #[serde(default = "AccountName::root")]
    pub owner: AccountName,
    #[serde(default = "AccountName::root")]
    pub group: AccountName,
}

/// Maintainer scripts, each a file in the workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintainerScripts {
    pub preinst: Option<WorkspacePath>,
    pub postinst: Option<WorkspacePath>,
    pub prerm: Option<WorkspacePath>,
    pub postrm: Option<WorkspacePath>,
}

/// Parses and validates the text of a `.slipway.yml`. A text over [`MAX_SPEC_BYTES`], or one
/// whose aliases expand past [`MAX_VALUES`] values or [`MAX_EXPANDED_TEXT_BYTES`] of text, or
/// nested deeper than [`MAX_DEPTH`], is refused before anything is built from it.
pub fn parse(text: &str) -> Result<Spec, SpecError> {
    let spec: Spec = parse_bounded(text)?;
    validate::check(&spec).map_err(|problem| located(text, &problem))?;
    Ok(spec)
}

/// A file holding a `package:` section and nothing else (a package built apart from any
/// pipeline, as Slipway's own), with the bounds and checks of [`parse`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageOnly {
    package: PackageSpec,
}

/// Parses and validates the text of a file holding only a `package:` section.
pub fn parse_package(text: &str) -> Result<PackageSpec, SpecError> {
    let only: PackageOnly = parse_bounded(text)?;
    validate::check_package(&only.package).map_err(|problem| located(text, &problem))?;
    Ok(only.package)
}

/// The error of `problem`, at its place in `text`.
fn located(text: &str, problem: &validate::Problem) -> SpecError {
    let (line, column) = locate::locate(text, &problem.path).unwrap_or((1, 1));
    SpecError {
        line,
        column,
        message: format!(
            "{}: {}",
            locate::display_path(&problem.path),
            problem.message
        ),
    }
}

/// Deserialises `text` once it is within the bounds [`parse`] documents.
fn parse_bounded<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        let (line, column) = bounds::position_of_limit(text);
        return Err(SpecError {
            line,
            column,
            message: bounds::too_large(text.len() as u64),
        });
    }
    if let Some((line, column)) = bounds::flow_too_deep(text) {
        return Err(SpecError {
            line,
            column,
            message: format!("lists and maps are nested deeper than {MAX_DEPTH} levels"),
        });
    }
    bounds::check(text).map_err(|error| from_yaml_error(&error))?;
    serde_yaml::from_str(text).map_err(|error| from_yaml_error(&error))
}

fn from_yaml_error(error: &serde_yaml::Error) -> SpecError {
    let (line, column) = error
        .location()
        .map(|location| (location.line(), location.column()))
        .unwrap_or((1, 1));
    let text = error.to_string();
    let message = match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    };
    SpecError {
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGE: &str = "package:\n  name: slipway\n  architecture: amd64\n  maintainer: \"Slipway <slipway@localhost>\"\n  description: \"the server\"\n  files:\n    - {src: bin/slipway, dest: /usr/bin/slipway, mode: \"0755\"}\n";

    #[test]
    fn a_package_section_alone_parses_with_the_checks_of_a_pipeline() {
        let package = parse_package(PACKAGE).unwrap();
        assert_eq!(package.name.as_str(), "slipway");
        assert_eq!(package.files.len(), 1);

        let bad = PACKAGE.replace("Slipway <slipway@localhost>", "nobody");
        let error = parse_package(&bad).unwrap_err();
        assert_eq!(error.line, 4, "{error}");
        assert!(error.message.starts_with("package.maintainer:"), "{error}");

        let with_steps = format!("steps:\n  - {{name: a, image: x, commands: [true]}}\n{PACKAGE}");
        let error = parse_package(&with_steps).unwrap_err();
        assert!(error.message.contains("unknown field `steps`"), "{error}");
        assert!(parse(&with_steps).unwrap().package.is_some());
    }

    #[test]
    fn labels_select_agents_and_a_bad_one_names_its_line() {
        let steps = "steps:\n  - {name: a, image: x, commands: [true]}\n";
        let spec = parse(&format!("{steps}labels:\n  arch: arm64\n")).unwrap();
        assert_eq!(spec.labels.get("arch").map(String::as_str), Some("arm64"));
        assert!(parse(steps).unwrap().labels.is_empty());
        let error = parse(&format!("{steps}labels:\n  arch: \"arm,64\"\n")).unwrap_err();
        assert_eq!(error.line, 4, "{error}");
        assert!(error.message.contains("`arch: arm,64`"), "{error}");
    }
}
