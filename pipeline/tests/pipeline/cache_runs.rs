//! The cache steps over the contract-enforcing fake engine and a recording cache: restore
//! before the workspace goes into the volume, save only after every step passed, and no
//! problem of the cache ever changing the build's result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use slipway_pipeline::spec::CachePlan;
use slipway_pipeline::{
    compile, parse, run, BuildCache, BuildStatus, CacheHandle, CacheReport, RunOptions,
};
use tokio_util::sync::CancellationToken;

use super::fake::{Behaviour, FakeEngine};
use super::recorder::Recorder;
use super::snapshots::build_info;

const CACHED: &str = r#"
steps:
  - {name: install, image: slipway/debian:bookworm, commands: ["./install"]}
cache:
  paths: [deps, .cache/pip]
  key: "deps-{{ branch }}"
"#;

/// Records what the runtime asked, and which engine calls came before each restore.
struct RecordingCache {
    engine: Arc<FakeEngine>,
    calls: Mutex<Vec<String>>,
    export_dir: tempfile::TempDir,
    restore_problem: Option<String>,
}

impl RecordingCache {
    fn new(engine: &Arc<FakeEngine>) -> RecordingCache {
        RecordingCache {
            engine: engine.clone(),
            calls: Mutex::new(Vec::new()),
            export_dir: tempfile::tempdir().unwrap(),
            restore_problem: None,
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl BuildCache for RecordingCache {
    async fn restore(&self, cache: &CachePlan, branch: &str, _: &Path) -> CacheReport {
        let copied = self
            .engine
            .calls()
            .iter()
            .any(|call| call.starts_with("copy_into_volume"));
        self.calls
            .lock()
            .unwrap()
            .push(format!("restore {} {branch} copied={copied}", cache.key));
        match &self.restore_problem {
            Some(problem) => CacheReport::problem(Vec::new(), problem.clone()),
            None => CacheReport {
                lines: vec!["restored deps".into()],
                problem: None,
            },
        }
    }

    fn limit_bytes(&self) -> u64 {
        1000
    }

    fn export_dir(&self) -> Result<PathBuf, String> {
        Ok(self.export_dir.path().to_path_buf())
    }

    async fn save(&self, cache: &CachePlan, _: &Path, missing: &[String]) -> CacheReport {
        self.calls.lock().unwrap().push(format!(
            "save {} missing={}",
            cache.paths.join(","),
            missing.join(",")
        ));
        CacheReport {
            lines: vec!["saved deps".into()],
            problem: None,
        }
    }
}

async fn run_cached(
    engine: &FakeEngine,
    cache: Option<Arc<RecordingCache>>,
) -> (BuildStatus, Recorder) {
    let plan = compile(&parse(CACHED).unwrap(), &build_info()).unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let options = RunOptions {
        cache: cache.map(|cache| CacheHandle(cache as Arc<dyn BuildCache>)),
        ..RunOptions::default()
    };
    let outcome = run(
        &plan,
        engine,
        workspace.path(),
        &HashMap::new(),
        &recorder,
        CancellationToken::new(),
        &options,
    )
    .await;
    assert_eq!(engine.violations(), Vec::<String>::new());
    assert_eq!(engine.remaining(), Vec::<String>::new());
    (outcome.status, recorder)
}

fn exit(code: i64) -> Behaviour {
    Behaviour::Exit {
        lines: Vec::new(),
        code,
    }
}

#[tokio::test]
async fn a_passing_build_restores_before_the_workspace_is_copied_and_saves_after_its_steps() {
    let engine = Arc::new(FakeEngine::new().with("install", exit(0)));
    let cache = Arc::new(RecordingCache::new(&engine));
    let (status, recorder) = run_cached(&engine, Some(cache.clone())).await;
    assert_eq!(status, BuildStatus::Passed);
    assert_eq!(
        cache.calls(),
        [
            "restore deps-{{ branch }} main copied=false",
            "save deps,.cache/pip missing="
        ]
    );
    let events = recorder.events();
    assert_eq!(events.first().unwrap(), "started cache-restore");
    let save = events
        .iter()
        .position(|e| e == "started cache-save")
        .unwrap();
    let install = events
        .iter()
        .position(|e| e == "finished install Passed")
        .unwrap();
    assert!(install < save, "{events:?}");
    assert_eq!(recorder.lines("cache-restore"), ["restored deps"]);
    assert_eq!(recorder.lines("cache-save"), ["saved deps"]);
    let exported = engine
        .calls()
        .into_iter()
        .find(|call| call.starts_with("export_paths"))
        .unwrap();
    assert!(exported.contains(" deps,.cache/pip "), "{exported}");
}

#[tokio::test]
async fn a_failed_build_saves_nothing_and_cache_problems_never_fail_a_build() {
    let engine = Arc::new(FakeEngine::new().with("install", exit(3)));
    let cache = Arc::new(RecordingCache::new(&engine));
    let (status, recorder) = run_cached(&engine, Some(cache.clone())).await;
    assert_eq!(status, BuildStatus::Failed);
    assert_eq!(cache.calls().len(), 1, "{:?}", cache.calls());
    assert!(recorder
        .events()
        .contains(&"finished cache-save Skipped".to_owned()));
    assert!(!engine.calls().iter().any(|c| c.starts_with("export_paths")));

    // A restore that went wrong and an export the engine refused: logged, and the build passes.
    let engine = Arc::new(
        FakeEngine::new()
            .with("install", exit(0))
            .failing("export_paths"),
    );
    let mut cache = RecordingCache::new(&engine);
    cache.restore_problem = Some("not restored: the bucket does not answer".into());
    let cache = Arc::new(cache);
    let (status, recorder) = run_cached(&engine, Some(cache.clone())).await;
    assert_eq!(status, BuildStatus::Passed);
    assert_eq!(
        recorder.lines("cache-restore"),
        ["cache not restored: the bucket does not answer"]
    );
    let saved = recorder.lines("cache-save");
    assert!(
        saved[0].starts_with("cache not saved: container engine: export_paths"),
        "{saved:?}"
    );
    assert!(recorder
        .events()
        .contains(&"finished cache-save Passed".to_owned()));
}

#[tokio::test]
async fn a_runner_without_a_cache_skips_the_cache_steps() {
    let engine = FakeEngine::new().with("install", exit(0));
    let (status, recorder) = run_cached(&engine, None).await;
    assert_eq!(status, BuildStatus::Passed);
    let events = recorder.events();
    assert!(events.contains(&"finished cache-restore Skipped".to_owned()));
    assert!(events.contains(&"finished cache-save Skipped".to_owned()));
}

#[tokio::test]
async fn a_build_that_stops_before_its_cache_steps_still_finishes_them() {
    let engine = Arc::new(
        FakeEngine::new()
            .with("install", exit(0))
            .failing("create_network"),
    );
    let cache = Arc::new(RecordingCache::new(&engine));
    let (status, recorder) = run_cached(&engine, Some(cache.clone())).await;
    assert_eq!(status, BuildStatus::Errored);
    assert!(cache.calls().is_empty(), "{:?}", cache.calls());
    assert_eq!(
        recorder.events()[..2],
        [
            "finished cache-restore Cancelled",
            "finished cache-save Skipped"
        ]
    );
}
