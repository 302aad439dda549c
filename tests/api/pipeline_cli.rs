//! `slipway pipeline compile` and `slipway pipeline exec`, as a user runs them.

use std::path::Path;
use std::process::Command;

fn slipway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .output()
        .expect("slipway runs")
}

fn hello() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/hello")
        .display()
        .to_string()
}

/// Everything `pipeline exec` creates is labelled with the project `local`.
fn leftovers() -> String {
    let mut found = String::new();
    for kind in [
        &["ps", "-aq"][..],
        &["network", "ls", "-q"],
        &["volume", "ls", "-q"],
    ] {
        let out = Command::new("docker")
            .args(kind)
            .args(["--filter", "label=slipway.project=local"])
            .output()
            .unwrap();
        found.push_str(String::from_utf8_lossy(&out.stdout).trim());
    }
    found
}

#[test]
fn compile_prints_the_plan_and_names_the_line_of_a_mistake() {
    let output = slipway(&["pipeline", "compile", &format!("{}/.slipway.yml", hello())]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the plan is JSON");
    let steps: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["migrate", "test", "notify-failure"]);
    assert_eq!(plan["services"][0]["name"], "postgres");
    assert_eq!(
        plan["steps"][1]["depends_on"],
        serde_json::json!(["migrate"])
    );
    let graph = String::from_utf8_lossy(&output.stderr);
    assert!(graph.contains("\n  test <- migrate\n"), "{graph}");
    assert!(
        graph.contains("\n  notify-failure <- test (runs on failure)\n"),
        "{graph}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join(".slipway.yml");
    std::fs::write(
        &bad,
        "steps:\n  - name: build\n    image: slipway/debian:bookworm\n    comands: [make]\n",
    )
    .unwrap();
    let output = slipway(&["pipeline", "compile", bad.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(".slipway.yml: line 4"), "{stderr}");
    assert!(stderr.contains("comands"), "{stderr}");
}

#[test]
fn exec_runs_hello_with_its_sidecar_and_a_failing_step_exits_non_zero() {
    let output = slipway(&["pipeline", "exec", "--repo", &hello()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("[migrate] applying migrations/001_create_greetings.sql"),
        "{stdout}"
    );
    assert!(stdout.contains("pipeline passed"), "{stdout}");
    assert_eq!(leftovers(), "", "nothing left after a pass");

    let dir = tempfile::tempdir().unwrap();
    Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", hello()))
        .arg(dir.path())
        .status()
        .unwrap();
    std::fs::write(dir.path().join("tests/test_broken.py"), "import unittest\n\nclass Broken(unittest.TestCase):\n    def test_fails(self):\n        self.fail('deliberately')\n").unwrap();
    let output = slipway(&["pipeline", "exec", "--repo", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "a failing step must fail the command: {stdout}"
    );
    assert!(stdout.contains("pipeline failed"), "{stdout}");
    assert!(
        stdout.contains("<== notify-failure: passed"),
        "the failure step ran: {stdout}"
    );
    assert_eq!(leftovers(), "", "nothing left after a failure");
}
