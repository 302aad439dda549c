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
fn deployment_commands_against_an_unreachable_server_fail_and_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    for args in [
        &["promote", "--env", "prod"][..],
        &["rollback", "--env", "prod", "--to", "v1"],
        &["status"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--server", &server, "--token", "t"]);
        let output = slipway(&args, dir.path());
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("cannot reach the Slipway server at {server}")),
            "{args:?}: {stderr}"
        );
    }
}
