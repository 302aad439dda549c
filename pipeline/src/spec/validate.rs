//! Checks that span several values of a parsed spec (uniqueness, one-of choices, cross references).

use std::collections::{HashMap, HashSet};

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
    check_dependencies(spec)?;
    if let Some(package) = &spec.package {
        check_package(package)?;
    }
    if let Some(bake) = spec.bake.as_ref().filter(|b| b.playbook.is_some()) {
        if bake.playbook_repo.is_some() {
            return Err(problem(
                vec![key("bake"), key("playbook_repo")],
                "set either `playbook` (in this repository) or `playbook_repo`, not both",
            ));
        }
    }
    super::migrations::check(spec)?;
    super::cache::check(spec)?;
    check_labels(spec)
}

/// The most labels a build may ask for, and the longest key or value.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_CHARS: usize = 100;

fn check_labels(spec: &Spec) -> Result<(), Problem> {
    if spec.labels.len() > MAX_LABELS {
        return Err(problem(
            vec![key("labels")],
            format!("expected at most {MAX_LABELS} labels"),
        ));
    }
    for (name, value) in &spec.labels {
        for text in [name, value] {
            let fits = !text.is_empty()
                && text.chars().count() <= MAX_LABEL_CHARS
                && !text.chars().any(|c| c.is_control() || c == ',' || c == '=');
            if !fits {
                return Err(problem(
                    vec![key("labels")],
                    format!("`{name}: {value}`: a label's key and value are 1 to {MAX_LABEL_CHARS} characters, without `,`, `=` or control characters"),
                ));
            }
        }
    }
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
    let written = step.commands.as_deref().unwrap_or_default();
    if step.commands.is_some() && written.is_empty() {
        return Err(problem(
            commands,
            "expected at least one command (leave `commands` out to run the image's own entrypoint)",
        ));
    }
    if let Some(blank) = written.iter().position(|c| c.trim().is_empty()) {
        return Err(problem(
            [commands, vec![at(blank)]].concat(),
            "expected a command, found an empty string",
        ));
    }
    check_settings(step, &path)?;
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

/// A setting may not give a variable `environment` gives too: one of them would be lost.
fn check_settings(step: &StepSpec, path: &[Segment]) -> Result<(), Problem> {
    let mut given: HashMap<String, String> = step
        .environment
        .keys()
        .map(|name| (name.as_str().to_owned(), "environment".to_owned()))
        .collect();
    for name in step.settings.keys() {
        let variable = name.variable();
        let here = format!("setting `{}`", name.as_str());
        if let Some(other) = given.insert(variable.clone(), here.clone()) {
            return Err(problem(
                [path, &[key("settings")]].concat(),
                format!("{here} is passed as `{variable}`, which {other} already sets"),
            ));
        }
    }
    Ok(())
}

/// `depends_on` names steps of this pipeline, never a service, and never forms a cycle.
fn check_dependencies(spec: &Spec) -> Result<(), Problem> {
    let index: HashMap<&str, usize> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| (step.name.as_str(), i))
        .collect();
    let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); spec.steps.len()];
    for (i, step) in spec.steps.iter().enumerate() {
        let Some(names) = &step.depends_on else {
            continue;
        };
        let path = vec![key("steps"), at(i), key("depends_on")];
        if names.is_empty() {
            return Err(problem(
                path,
                "expected at least one step name (leave the key out to depend on nothing)",
            ));
        }
        for (j, name) in names.iter().enumerate() {
            let Some(&target) = index.get(name.as_str()) else {
                let why = if spec.services.iter().any(|s| &s.name == name) {
                    "is a service; services are ready before any step starts"
                } else {
                    "is no step of this pipeline"
                };
                return Err(problem(
                    [path, vec![at(j)]].concat(),
                    format!("step `{}` depends on `{name}`, which {why}", step.name),
                ));
            };
            edges[i].push((j, target));
        }
    }
    match find_cycle(&edges) {
        None => Ok(()),
        Some(cycle) => {
            let (step, entry) = cycle[0];
            let names: Vec<String> = cycle
                .iter()
                .map(|&(i, _)| format!("`{}`", spec.steps[i].name))
                .collect();
            let message = if cycle.len() == 1 {
                format!("step {} depends on itself", names[0])
            } else {
                format!(
                    "step {} closes a cycle: {} -> {}, each depending on the next",
                    names[0],
                    names.join(" -> "),
                    names[0]
                )
            };
            Err(problem(
                vec![key("steps"), at(step), key("depends_on"), at(entry)],
                message,
            ))
        }
    }
}

/// A cycle of `edges` (for each step, its `depends_on` entries as (entry, step)), as the
/// steps along it with the entry leading to the next, starting at its first step in file
/// order. Kahn's algorithm removes every step not on or behind a cycle, iteratively, so
/// a long chain cannot exhaust the stack.
fn find_cycle(edges: &[Vec<(usize, usize)>]) -> Option<Vec<(usize, usize)>> {
    let count = edges.len();
    let mut waiting: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (step, targets) in edges.iter().enumerate() {
        for &(_, target) in targets {
            dependents[target].push(step);
        }
    }
    let mut ready: Vec<usize> = (0..count).filter(|&i| waiting[i] == 0).collect();
    let mut done = vec![false; count];
    while let Some(step) = ready.pop() {
        done[step] = true;
        for &dependent in &dependents[step] {
            waiting[dependent] -= 1;
            if waiting[dependent] == 0 {
                ready.push(dependent);
            }
        }
    }
    // Every step left waits for another left: walking to such a step reaches a cycle.
    let mut step = (0..count).find(|&i| !done[i])?;
    let mut visited: Vec<(usize, usize)> = Vec::new();
    let mut seen_at: HashMap<usize, usize> = HashMap::new();
    loop {
        if let Some(&start) = seen_at.get(&step) {
            let mut cycle = visited.split_off(start);
            let first = (0..cycle.len()).min_by_key(|&k| cycle[k].0).unwrap_or(0);
            cycle.rotate_left(first);
            return Some(cycle);
        }
        let &(entry, next) = edges[step].iter().find(|&&(_, target)| !done[target])?;
        seen_at.insert(step, visited.len());
        visited.push((step, entry));
        step = next;
    }
}

pub fn check_package(package: &PackageSpec) -> Result<(), Problem> {
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
    // A directory's or a glob's files are known only once the build ran: a conffile under a
    // directory destination is checked when the package is built.
    let under_a_directory = |conffile: &str| {
        package.files.iter().any(|file| {
            conffile
                .strip_prefix(file.dest.directory())
                .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    for (index, conffile) in package.conffiles.iter().enumerate() {
        if !destinations.contains(conffile.as_str()) && !under_a_directory(conffile.as_str()) {
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
