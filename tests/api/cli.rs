//! The command line as a user meets it.

use std::process::Command;

fn slipway(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("slipway runs")
}

#[test]
fn help_lists_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let help = String::from_utf8(slipway(&["--help"], dir.path()).stdout).unwrap();
    for command in [
        "server", "promote", "rollback", "releases", "status", "pipeline",
    ] {
        assert!(help.contains(command), "--help lists {command}:\n{help}");
    }
}

#[test]
fn a_typo_in_the_config_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slipway.toml"),
        "listen = \"127.0.0.1:0\"\ndata_dri = \"/tmp/x\"\n",
    )
    .unwrap();
    let output = slipway(&["server"], dir.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("slipway.toml"), "{stderr}");
    assert!(stderr.contains("data_dri"), "{stderr}");
    assert!(
        !dir.path().join(".slipway").exists(),
        "a bad config creates nothing"
    );
}

#[test]
fn commands_not_built_yet_say_so_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["promote", "--env", "prod"][..],
        &["rollback", "--env", "prod", "--to", "v1"],
        &["status"],
    ] {
        let output = slipway(args, dir.path());
        assert!(
            !output.status.success(),
            "{args:?} must not pretend to succeed"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("not available"), "{args:?}: {stderr}");
    }
}
