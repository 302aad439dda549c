//! Every `tests/data/*.yml` either compiles to its `*.plan.json` or fails with its
//! `*.error.txt`. `UPDATE_SNAPSHOTS=1` rewrites the expected files from the current output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use slipway_pipeline::spec::Event;
use slipway_pipeline::{compile, parse, BuildInfo};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub fn build_info() -> BuildInfo {
    BuildInfo {
        project: "acme/hello".to_owned(),
        number: 42,
        build_id: "b-0001".to_owned(),
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        branch: "main".to_owned(),
        event: Event::Push,
        extra_labels: BTreeMap::from([("slipway.test".to_owned(), "snapshot".to_owned())]),
        extra_env: Default::default(),
    }
}

/// What a pipeline file turns into: a pretty plan or an error line, and which file holds it.
fn actual(input: &Path) -> (PathBuf, String) {
    let text = std::fs::read_to_string(input).unwrap();
    match parse(&text) {
        Ok(spec) => {
            let plan = compile(&spec, &build_info()).expect("snapshot build info compiles");
            let json = serde_json::to_string_pretty(&plan).unwrap() + "\n";
            (input.with_extension("plan.json"), json)
        }
        Err(error) => (input.with_extension("error.txt"), format!("{error}\n")),
    }
}

#[test]
fn pipeline_files_match_their_snapshots() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yml"))
        .collect();
    inputs.sort();
    let mut mismatches = Vec::new();
    let mut errors = 0;
    for input in &inputs {
        let (expected_path, actual) = actual(input);
        errors += usize::from(expected_path.to_string_lossy().ends_with(".error.txt"));
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => mismatches.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                expected_path.display()
            )),
            Err(_) => mismatches.push(format!(
                "{} is missing (run with UPDATE_SNAPSHOTS=1); actual:\n{actual}",
                expected_path.display()
            )),
        }
    }
    assert!(
        errors >= 8,
        "expected at least 8 error cases, found {errors}"
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_hello_example_parses_and_compiles_with_its_package() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/.slipway.yml");
    let spec = parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let plan = compile(&spec, &build_info()).unwrap();
    let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["migrate", "test", "notify-failure"]);
    let package = plan.package.unwrap();
    assert_eq!(package.name.as_str(), "hello");
    assert_eq!(package.conffiles[0].as_str(), "/etc/hello/hello.conf");
}

#[test]
fn a_plan_survives_a_json_round_trip() {
    let text = std::fs::read_to_string(data_dir().join("full.yml")).unwrap();
    let plan = compile(&parse(&text).unwrap(), &build_info()).unwrap();
    let json = serde_json::to_string(&plan).unwrap();
    assert_eq!(
        serde_json::from_str::<slipway_pipeline::Plan>(&json).unwrap(),
        plan
    );
}

#[test]
fn the_graph_text_shows_what_each_step_waits_for() {
    let text = std::fs::read_to_string(data_dir().join("graph.yml")).unwrap();
    let plan = compile(&parse(&text).unwrap(), &build_info()).unwrap();
    assert_eq!(
        plan.graph_text(),
        "steps (each starts once those after <- are done):\n\
         \x20 backend\n\
         \x20 frontend\n\
         \x20 fixtures (detached)\n\
         \x20 package <- backend, frontend, fixtures\n\
         \x20 notify <- package (runs on failure)\n"
    );
}
