//! Checks that span several values of a parsed spec (uniqueness, one-of choices, cross references).

use std::collections::HashSet;

use super::locate::Segment;
use super::{PackageSpec, ReadySpec, Spec, StepSpec};

/// A semantic error and the path of the value it is about.
pub struct Problem {
    pub path: Vec<Segment>,
    pub message: String,
}

fn problem(path: Vec<Segment>, message: impl Into<String>) -> Problem {
    Problem {
        path,
        message: message.into(),
    }
}

fn key(name: &'static str) -> Segment {
    Segment::Key(name)
}

fn at(index: usize) -> Segment {
    Segment::Index(index)
}

pub fn check(spec: &Spec) -> Result<(), Problem> {
    if spec.steps.is_empty() {
        return Err(problem(vec![key("steps")], "expected at least one step"));
    }
    check_unique_names(spec)?;
    for (index, service) in spec.services.iter().enumerate() {
        let path = vec![key("services"), at(index)];
        check_image(&service.image, &path)?;
        if let Some(ready) = &service.ready {
            check_ready(ready, [path.clone(), vec![key("ready")]].concat())?;
        }
    }
    for (index, step) in spec.steps.iter().enumerate() {
        check_step(step, vec![key("steps"), at(index)])?;
    }
    if let Some(package) = &spec.package {
        check_package(package)?;
    }
    super::migrations::check(spec)?;
    Ok(())
}

fn check_unique_names(spec: &Spec) -> Result<(), Problem> {
    let mut seen = HashSet::new();
    let services = spec.services.iter().map(|s| ("services", &s.name));
    let steps = spec.steps.iter().map(|s| ("steps", &s.name));
    let mut counters = (0usize, 0usize);
    for (section, name) in services.chain(steps) {
        let index = if section == "services" {
            counters.0 += 1;
            counters.0 - 1
        } else {
            counters.1 += 1;
            counters.1 - 1
        };
        if !seen.insert(name.as_str()) {
            return Err(problem(
                vec![key(section), at(index), key("name")],
                format!("duplicate name `{name}`: services and steps need unique names"),
            ));
        }
    }
    Ok(())
}

fn check_image(image: &str, path: &[Segment]) -> Result<(), Problem> {
    if image.is_empty() || image.contains(char::is_whitespace) {
        let path = [path, &[key("image")]].concat();
        return Err(problem(
            path,
            format!("`{image}` is not an image reference: expected something like debian:bookworm"),
        ));
    }
    Ok(())
}

fn check_ready(ready: &ReadySpec, path: Vec<Segment>) -> Result<(), Problem> {
    match (&ready.tcp, &ready.command) {
        (Some(0), None) => Err(problem(
            [path, vec![key("tcp")]].concat(),
            "expected a port between 1 and 65535",
        )),
        (Some(_), None) => Ok(()),
        (None, Some(command)) if command.trim().is_empty() => Err(problem(
            [path, vec![key("command")]].concat(),
            "expected a non-empty command",
        )),
        (None, Some(_)) => Ok(()),
        _ => Err(problem(
            path,
            "expected exactly one of `tcp: <port>` or `command: <shell command>`",
        )),
    }
}

fn check_step(step: &StepSpec, path: Vec<Segment>) -> Result<(), Problem> {
    check_image(&step.image, &path)?;
    let commands = [path.clone(), vec![key("commands")]].concat();
    if step.commands.is_empty() {
        return Err(problem(commands, "expected at least one command"));
    }
    if let Some(blank) = step.commands.iter().position(|c| c.trim().is_empty()) {
        return Err(problem(
            [commands, vec![at(blank)]].concat(),
            "expected a command, found an empty string",
        ));
    }
    let when = [path, vec![key("when")]].concat();
    if let Some(branches) = &step.when.branch {
        if let Some(blank) = branches.iter().position(|b| b.is_empty()) {
            let path = [when.clone(), vec![key("branch"), at(blank)]].concat();
            return Err(problem(path, "expected a branch name or pattern"));
        }
    }
    let empty_list = [
        ("branch", step.when.branch.as_ref().map(Vec::len)),
        ("event", step.when.event.as_ref().map(Vec::len)),
        ("status", step.when.status.as_ref().map(Vec::len)),
    ]
    .into_iter()
    .find(|(_, len)| *len == Some(0));
    if let Some((name, _)) = empty_list {
        return Err(problem(
            [when, vec![key(name)]].concat(),
            "expected at least one value (leave the key out to place no condition)",
        ));
    }
    Ok(())
}

fn check_package(package: &PackageSpec) -> Result<(), Problem> {
    let path = |rest: &[Segment]| [&[key("package")], rest].concat();
    let maintainer = package.maintainer.trim();
    if !(maintainer.contains('<') && maintainer.ends_with('>')) {
        return Err(problem(
            path(&[key("maintainer")]),
            "expected a name and an email address, like \"Acme Ops <ops@acme.test>\"",
        ));
    }
    if package.description.trim().is_empty() {
        return Err(problem(
            path(&[key("description")]),
            "expected a description",
        ));
    }
    if let Some(bad) = package
        .depends
        .iter()
        .position(|d| d.trim().is_empty() || d.contains([',', '\n']))
    {
        return Err(problem(
            path(&[key("depends"), at(bad)]),
            "expected one package relation per entry, like \"python3 (>= 3.9)\"",
        ));
    }
    if package.files.is_empty() {
        return Err(problem(path(&[key("files")]), "expected at least one file"));
    }
    let mut destinations = HashSet::new();
    for (index, file) in package.files.iter().enumerate() {
        if !destinations.insert(file.dest.as_str()) {
            return Err(problem(
                path(&[key("files"), at(index), key("dest")]),
                format!("`{}` is installed twice", file.dest.as_str()),
            ));
        }
    }
    for (index, conffile) in package.conffiles.iter().enumerate() {
        if !destinations.contains(conffile.as_str()) {
            return Err(problem(
                path(&[key("conffiles"), at(index)]),
                format!(
                    "`{}` is not installed by any entry of `files`: a conffile must be one of the package's files",
                    conffile.as_str()
                ),
            ));
        }
    }
    Ok(())
}
