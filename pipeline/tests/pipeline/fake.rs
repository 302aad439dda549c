//! A fake engine that enforces the `Engine` lifecycle contract and takes injected failures,
//! in the style of Woodpecker's dummy backend: out-of-order calls are recorded as violations
//! (and refused), so runtime tests prove the runtime keeps the contract.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use futures::stream::{self, StreamExt};
use slipway_pipeline::engine::{
    ContainerConfig, Engine, EngineError, Gate, Labels, Leftovers, OutputChunk, OutputLine,
    OutputStream, PathsExport, Staged,
};

/// What a container does once started, keyed by its alias (the step or service name).
#[derive(Clone)]
pub enum Behaviour {
    /// Prints the lines on stdout, then exits with the code.
    Exit { lines: Vec<String>, code: i64 },
    /// Prints the lines and runs until killed.
    Hang { lines: Vec<String> },
    /// A service whose readiness probes succeed from the given attempt on (1-based).
    ReadyAfter { attempts: usize },
    /// The engine panics when asked to start it.
    PanicOnStart,
}

/// A running or stopped container.
struct Container {
    alias: String,
    labels: Labels,
    network: Option<String>,
    volume: Option<String>,
    started: bool,
}

#[derive(Default)]
struct State {
    calls: Vec<String>,
    violations: Vec<String>,
    networks: HashMap<String, Labels>,
    volumes: HashMap<String, Labels>,
    containers: HashMap<String, Container>,
    copied: HashSet<String>,
    probes: HashMap<String, usize>,
}

#[derive(Default)]
pub struct FakeEngine {
    behaviours: HashMap<String, Behaviour>,
    failing: HashSet<String>,
    missing_images: HashSet<String>,
    state: Mutex<State>,
}

impl FakeEngine {
    pub fn new() -> FakeEngine {
        FakeEngine::default()
    }

    pub fn with(mut self, alias: &str, behaviour: Behaviour) -> FakeEngine {
        self.behaviours.insert(alias.to_owned(), behaviour);
        self
    }

    /// Makes an operation fail: `create_network`, `create_volume`, `copy_into_volume`,
    /// `remove_network`, or `start <alias>`.
    pub fn failing(mut self, operation: &str) -> FakeEngine {
        self.failing.insert(operation.to_owned());
        self
    }

    pub fn without_image(mut self, image: &str) -> FakeEngine {
        self.missing_images.insert(image.to_owned());
        self
    }

    /// Pre-creates labelled objects, as a crashed server would have left them.
    pub fn leave_behind(&self, name: &str, labels: &Labels) {
        let mut state = self.state.lock().unwrap();
        state.networks.insert(format!("{name}-net"), labels.clone());
        state.volumes.insert(format!("{name}-vol"), labels.clone());
        let container = Container {
            alias: name.to_owned(),
            labels: labels.clone(),
            network: Some(format!("{name}-net")),
            volume: Some(format!("{name}-vol")),
            started: true,
        };
        state.containers.insert(name.to_owned(), container);
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// Names of every object that still exists.
    pub fn remaining(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let mut names: Vec<String> = state.containers.keys().cloned().collect();
        names.extend(state.networks.keys().cloned());
        names.extend(state.volumes.keys().cloned());
        names
    }

    /// Records the call; refuses it (and records a violation) when `rule` is broken.
    fn call(&self, call: String, violation: Option<String>) -> Result<(), EngineError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(call.clone());
        if let Some(violation) = violation {
            state.violations.push(format!("{call}: {violation}"));
            return Err(EngineError::failed(call, violation));
        }
        let operation = call
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        let alias_operation = call.clone();
        if self.failing.contains(&operation) || self.failing.contains(&alias_operation) {
            return Err(EngineError::failed(call, "injected failure"));
        }
        Ok(())
    }

    fn behaviour_of(&self, container: &str) -> Option<Behaviour> {
        let state = self.state.lock().unwrap();
        let container = state.containers.get(container)?;
        self.behaviours.get(&container.alias).cloned()
    }

    /// Creates a container, recording the call as `<verb> <alias>`.
    fn create(&self, config: &ContainerConfig, verb: &str) -> Result<(), EngineError> {
        let alias = config
            .network
            .as_ref()
            .map(|n| n.alias.clone())
            .unwrap_or_default();
        let violation = {
            let state = self.state.lock().unwrap();
            let network = config.network.as_ref().map(|n| n.network.as_str());
            let lane = config.network.as_ref().and_then(|n| n.lane.as_ref());
            if state.containers.contains_key(&config.name) {
                Some("a container with this name exists".to_owned())
            } else if network.is_some_and(|n| !state.networks.contains_key(n)) {
                Some("its network does not exist".to_owned())
            } else if lane.is_some_and(|l| !state.containers.get(l).is_some_and(|c| c.started)) {
                Some("its lane is not running".to_owned())
            } else {
                None
            }
        };
        // A started container is recorded once, as `start <alias>`, by `start`.
        if verb != "start" {
            self.call(format!("{verb} {alias}"), violation)?;
        } else if let Some(violation) = violation {
            self.call(format!("start {alias}"), Some(violation))?;
        }
        if self.missing_images.contains(&config.image) {
            return Err(EngineError::ImageMissing {
                image: config.image.clone(),
            });
        }
        let container = Container {
            alias,
            labels: config.labels.clone(),
            network: config.network.as_ref().map(|n| n.network.clone()),
            volume: config.mount.as_ref().map(|m| m.volume.clone()),
            started: false,
        };
        self.state
            .lock()
            .unwrap()
            .containers
            .insert(config.name.clone(), container);
        Ok(())
    }

    /// Starts a created container, recording `start <alias>`; returns the alias.
    fn start(&self, name: &str) -> Result<String, EngineError> {
        let (alias, violation) = {
            let state = self.state.lock().unwrap();
            match state.containers.get(name) {
                None => (name.to_owned(), Some("no such container".to_owned())),
                Some(container) => {
                    let violation = if container.started {
                        Some("started twice".to_owned())
                    } else if container
                        .volume
                        .as_ref()
                        .is_some_and(|v| !state.copied.contains(v))
                    {
                        Some("a step started before the workspace was copied".to_owned())
                    } else {
                        None
                    };
                    (container.alias.clone(), violation)
                }
            }
        };
        self.call(format!("start {alias}"), violation)?;
        if let Some(container) = self.state.lock().unwrap().containers.get_mut(name) {
            container.started = true;
        }
        Ok(alias)
    }

    fn unknown(&self, container: &str) -> Option<String> {
        let state = self.state.lock().unwrap();
        (!state.containers.contains_key(container)).then(|| "no such container".to_owned())
    }
}

/// Starts its container when opened, as a container that was only created starts.
struct FakeGate<'e> {
    engine: &'e FakeEngine,
    container: String,
}

#[async_trait::async_trait]
impl Gate for FakeGate<'_> {
    async fn open(self: Box<Self>) -> Result<(), EngineError> {
        let alias = self.engine.start(&self.container)?;
        if matches!(
            self.engine.behaviours.get(&alias),
            Some(Behaviour::PanicOnStart)
        ) {
            panic!("fake engine: asked to panic when starting {alias}");
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Engine for FakeEngine {
    async fn create_network(&self, name: &str, labels: &Labels) -> Result<(), EngineError> {
        let exists = self.state.lock().unwrap().networks.contains_key(name);
        self.call(
            format!("create_network {name}"),
            exists.then(|| "exists".to_owned()),
        )?;
        self.state
            .lock()
            .unwrap()
            .networks
            .insert(name.to_owned(), labels.clone());
        Ok(())
    }

    async fn start_lane(
        &self,
        name: &str,
        network: &str,
        labels: &Labels,
    ) -> Result<(), EngineError> {
        let violation = {
            let state = self.state.lock().unwrap();
            if state.containers.contains_key(name) {
                Some("a container with this name exists".to_owned())
            } else if !state.networks.contains_key(network) {
                Some("its network does not exist".to_owned())
            } else {
                None
            }
        };
        // Recorded by the lane's number: `start_lane lane-0`.
        let lane = name.rsplit('.').next().unwrap_or(name);
        self.call(format!("start_lane {lane}"), violation)?;
        let container = Container {
            alias: lane.to_owned(),
            labels: labels.clone(),
            network: Some(network.to_owned()),
            volume: None,
            started: true,
        };
        self.state
            .lock()
            .unwrap()
            .containers
            .insert(name.to_owned(), container);
        Ok(())
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<(), EngineError> {
        self.call(format!("create_volume {name}"), None)?;
        self.state
            .lock()
            .unwrap()
            .volumes
            .insert(name.to_owned(), labels.clone());
        Ok(())
    }

    async fn copy_into_volume(
        &self,
        volume: &str,
        source: &Path,
        _: &Labels,
    ) -> Result<(), EngineError> {
        let missing = !self.state.lock().unwrap().volumes.contains_key(volume);
        let violation = if missing {
            Some("volume does not exist".to_owned())
        } else if !source.is_dir() {
            Some(format!("{} is not a directory", source.display()))
        } else {
            None
        };
        self.call(format!("copy_into_volume {volume}"), violation)?;
        self.state.lock().unwrap().copied.insert(volume.to_owned());
        Ok(())
    }

    async fn export_volume(
        &self,
        volume: &str,
        dest: &Path,
        _: u64,
        _: &Labels,
    ) -> Result<u64, EngineError> {
        let missing = !self.state.lock().unwrap().copied.contains(volume);
        let violation = missing.then(|| "volume was never filled".to_owned());
        self.call(
            format!("export_volume {volume} {}", dest.display()),
            violation,
        )?;
        Ok(0)
    }

    async fn export_paths(
        &self,
        volume: &str,
        paths: &[String],
        dest: &Path,
        _: u64,
        _: &Labels,
    ) -> Result<PathsExport, EngineError> {
        let missing = !self.state.lock().unwrap().copied.contains(volume);
        let violation = missing.then(|| "volume was never filled".to_owned());
        self.call(
            format!(
                "export_paths {volume} {} {}",
                paths.join(","),
                dest.display()
            ),
            violation,
        )?;
        Ok(PathsExport::default())
    }

    async fn start_container(&self, config: &ContainerConfig) -> Result<(), EngineError> {
        self.create(config, "start")?;
        let alias = self.start(&config.name)?;
        if matches!(self.behaviours.get(&alias), Some(Behaviour::PanicOnStart)) {
            panic!("fake engine: asked to panic when starting {alias}");
        }
        Ok(())
    }

    async fn stage(&self, config: &ContainerConfig) -> Result<Staged<'_>, EngineError> {
        self.create(config, "create")?;
        let (lines, hang) = match self.behaviour_of(&config.name) {
            Some(Behaviour::Exit { lines, .. }) => (lines, false),
            Some(Behaviour::Hang { lines }) => (lines, true),
            _ => (Vec::new(), false),
        };
        let lines = stream::iter(lines.into_iter().map(|text| {
            Ok(OutputChunk {
                stream: OutputStream::Stdout,
                bytes: format!("{text}\n").into(),
            })
        }));
        let output = if hang {
            lines.chain(stream::pending()).boxed()
        } else {
            lines.boxed()
        };
        Ok(Staged {
            output,
            gate: Box::new(FakeGate {
                engine: self,
                container: config.name.clone(),
            }),
        })
    }

    async fn recent_output(
        &self,
        container: &str,
        lines: usize,
    ) -> Result<Vec<OutputLine>, EngineError> {
        self.call(
            format!("recent_output {container}"),
            self.unknown(container),
        )?;
        Ok((1..=lines.min(3))
            .map(|n| OutputLine {
                stream: OutputStream::Stderr,
                text: format!("service line {n}"),
            })
            .collect())
    }

    async fn wait_exit(&self, container: &str) -> Result<i64, EngineError> {
        let never_started = {
            let state = self.state.lock().unwrap();
            state.containers.get(container).is_some_and(|c| !c.started)
        };
        let violation = self
            .unknown(container)
            .or_else(|| never_started.then(|| "it was never started".to_owned()));
        self.call(format!("wait_exit {container}"), violation)?;
        match self.behaviour_of(container) {
            Some(Behaviour::Exit { code, .. }) => Ok(code),
            Some(Behaviour::Hang { .. }) => std::future::pending().await,
            _ => Ok(0),
        }
    }

    async fn exec(&self, container: &str, _: &[String]) -> Result<i64, EngineError> {
        self.call(format!("exec {container}"), self.unknown(container))?;
        Ok(if self.probe(container) { 0 } else { 1 })
    }

    async fn tcp_ready(&self, container: &str, _: &str, _: u16) -> Result<bool, EngineError> {
        self.call(format!("tcp_ready {container}"), self.unknown(container))?;
        Ok(self.probe(container))
    }

    async fn remove_container(&self, container: &str) -> Result<(), EngineError> {
        self.call(format!("remove_container {container}"), None)?;
        self.state.lock().unwrap().containers.remove(container);
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        let in_use = self
            .state
            .lock()
            .unwrap()
            .containers
            .values()
            .any(|c| c.network.as_deref() == Some(name));
        let violation = in_use.then(|| "containers still use it".to_owned());
        self.call(format!("remove_network {name}"), violation)?;
        self.state.lock().unwrap().networks.remove(name);
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let in_use = self
            .state
            .lock()
            .unwrap()
            .containers
            .values()
            .any(|c| c.volume.as_deref() == Some(name));
        let violation = in_use.then(|| "containers still use it".to_owned());
        self.call(format!("remove_volume {name}"), violation)?;
        self.state.lock().unwrap().volumes.remove(name);
        Ok(())
    }

    async fn list_labelled(&self, label: &str) -> Result<Leftovers, EngineError> {
        self.call(format!("list_labelled {label}"), None)?;
        let (key, value) = label.split_once('=').unwrap();
        let has = |labels: &Labels| labels.get(key).is_some_and(|v| v == value);
        let state = self.state.lock().unwrap();
        let pick = |objects: &HashMap<String, Labels>| {
            objects
                .iter()
                .filter(|(_, l)| has(l))
                .map(|(n, _)| n.clone())
                .collect()
        };
        Ok(Leftovers {
            containers: state
                .containers
                .iter()
                .filter(|(_, c)| has(&c.labels))
                .map(|(n, _)| n.clone())
                .collect(),
            networks: pick(&state.networks),
            volumes: pick(&state.volumes),
        })
    }
}

impl FakeEngine {
    /// Counts a readiness probe and says whether this one succeeds.
    fn probe(&self, container: &str) -> bool {
        let attempts = match self.behaviour_of(container) {
            Some(Behaviour::ReadyAfter { attempts }) => attempts,
            _ => 1,
        };
        let mut state = self.state.lock().unwrap();
        let count = state.probes.entry(container.to_owned()).or_default();
        *count += 1;
        *count >= attempts
    }
}
