//! The command line as a user meets it: the real `slipway` binary, against a test server for
//! the client commands (each user with a home of its own, for `slipway login`'s file).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::builds::{commit_all, git};
use crate::helpers::TestApp;
use crate::release_order::wait_for_build;
use crate::servers::{config, quick_repository};

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
        "server", "promote", "rollback", "releases", "status", "pipeline", "builds", "build",
        "login",
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
    let port = crate::helpers::free_port();
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

/// The quick repository of `servers`, with a branch `feature` (outside the project's
/// `branches`, `^main$`) whose one step also prints a green word; `(repository, feature head)`.
fn repository_with_a_feature_branch() -> (tempfile::TempDir, String) {
    let repo = quick_repository();
    git(repo.path(), &["checkout", "-q", "-b", "feature"]);
    let spec = "steps:\n  - name: work\n    image: slipway/debian:bookworm\n    commands:\n      - printf '\\033[32mgreen\\033[0m\\n'\n      - echo \"ran once as $(cat /proc/sys/kernel/random/uuid)\"\n";
    std::fs::write(repo.path().join(".slipway.yml"), spec).unwrap();
    let head = commit_all(repo.path(), "feature work");
    git(repo.path(), &["checkout", "-q", "main"]);
    (repo, head)
}

/// The client's view of one user: a home of its own (so no stored login leaks in or out),
/// a working directory without `.slipway/`, and the environment given.
struct User {
    home: tempfile::TempDir,
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

/// What a `slipway` run printed and how it ended.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl User {
    fn new(env: &[(&'static str, &str)]) -> User {
        User {
            home: tempfile::tempdir().unwrap(),
            dir: tempfile::tempdir().unwrap(),
            env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    /// Talks to `app` with its admin token, given through the environment.
    fn of(app: &TestApp) -> User {
        User::new(&[
            ("SLIPWAY_SERVER", &app.address),
            ("SLIPWAY_TOKEN", &app.token),
        ])
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command
            .current_dir(self.dir.path())
            .env_remove("SLIPWAY_SERVER")
            .env_remove("SLIPWAY_TOKEN")
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", self.home.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped());
        command
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, "").await
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut command = self.command(env!("CARGO_BIN_EXE_slipway"));
        command.args(args);
        finish(command, stdin).await
    }

    /// Runs `slipway` with a terminal as its stdout (through `script`).
    async fn run_on_a_terminal(&self, args: &[&str]) -> Run {
        let line = std::iter::once(env!("CARGO_BIN_EXE_slipway"))
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = self.command("script");
        command.args(["-qec", &line, "/dev/null"]);
        finish(command, "").await
    }
}

async fn finish(mut command: tokio::process::Command, stdin: &str) -> Run {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("the command starts");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the command ends within 300 s")
        .unwrap();
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: {}\nstdout:\n{}\nstderr:\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

async fn post_build(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/api/v1/projects/shared/builds", app.address))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_build_of_a_branch_outside_the_filter_is_queued_checked_and_audited() {
    let (repo, feature) = repository_with_a_feature_branch();
    let main = git(repo.path(), &["rev-parse", "main"]);
    // A commit on no branch the build names: refused even though it exists.
    git(repo.path(), &["checkout", "-q", "-b", "elsewhere"]);
    std::fs::write(repo.path().join("app.txt"), "elsewhere\n").unwrap();
    let elsewhere = commit_all(repo.path(), "elsewhere");
    git(repo.path(), &["checkout", "-q", "main"]);
    let apt = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&config(repo.path(), apt.path())).await;
    let token = app.token.clone();

    let (status, build) = post_build(&app, &token, json!({ "branch": "feature" })).await;
    assert_eq!(status, 201, "{build}");
    assert_eq!(build["event"], "manual", "{build}");
    assert_eq!(build["branch"], "feature");
    assert_eq!(build["commit"], feature.as_str(), "the branch's head");
    let number = build["number"].as_i64().unwrap();

    // main's commit is on feature too; upper-case hex is taken.
    let body = json!({ "branch": "feature", "commit": main.to_uppercase() });
    let (status, pinned) = post_build(&app, &token, body).await;
    assert_eq!(status, 201, "{pinned}");
    assert_eq!(pinned["commit"], main.as_str());

    for (body, status, words) in [
        (
            json!({ "branch": "a..b" }),
            400,
            "branch: \"a..b\" is not a valid branch name",
        ),
        (
            json!({ "branch": "x\u{7}" }),
            400,
            "branch: contains the control character U+0007",
        ),
        (
            json!({ "branch": "b".repeat(256) }),
            400,
            "branch: the branch name is 256 bytes long",
        ),
        (
            json!({ "branch": "feature", "commit": "abc123" }),
            400,
            "commit: \"abc123\" is not a full commit id",
        ),
        (json!({ "commit": main }), 400, "missing field `branch`"),
        (
            json!({ "branch": "feature", "ref": "x" }),
            400,
            "unknown field `ref`",
        ),
        (
            json!({ "branch": "nope" }),
            422,
            "branch: cannot find branch `nope` of project `shared`",
        ),
        (
            json!({ "branch": "feature", "commit": elsewhere }),
            422,
            &format!("commit: {elsewhere} is not on branch `feature` (its head is {feature})"),
        ),
    ] {
        let (got, answer) = post_build(&app, &token, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(words), "{body}: {error}");
    }

    let body = json!({ "name": "reader", "scopes": ["read"] });
    let reader: Value = app
        .http
        .post(format!("{}/api/v1/tokens", app.address))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reader = reader["token"].as_str().unwrap();
    let (status, refused) = post_build(&app, reader, json!({ "branch": "feature" })).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["missing_scope"], "build");

    let built = wait_for_build(&app, "shared", number, Duration::from_secs(300)).await;
    assert_eq!(built["status"], "passed", "{built}");
    let builds = app.get_json("/api/v1/projects/shared/builds").await;
    assert_eq!(
        builds.as_array().unwrap().len(),
        2,
        "refusals queue nothing: {builds}"
    );
    let audit = app.get_json("/api/v1/audit?project=shared").await;
    let queued: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["action"] == "build")
        .collect();
    assert_eq!(queued.len(), 2, "{audit}");
    assert_eq!(queued[1]["subject"], format!("build {number}"));
    assert_eq!(queued[1]["detail"]["branch"], "feature");
    assert_eq!(queued[1]["detail"]["commit"], feature.as_str());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_commands_list_queue_show_follow_cancel_and_rebuild() {
    let (repo, feature) = repository_with_a_feature_branch();
    let apt = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&config(repo.path(), apt.path())).await;
    let user = User::of(&app);

    let none = user.run(&["builds"]).await;
    assert!(none.ok, "{none:?}");
    assert!(
        none.stdout.contains("project shared has no builds yet"),
        "{none:?}"
    );

    let queued = user.run(&["build", "--branch", "feature"]).await;
    assert!(queued.ok, "{queued:?}");
    assert_eq!(
        queued.stdout.trim(),
        "1",
        "the number alone on stdout: {queued:?}"
    );
    assert!(
        queued
            .stderr
            .contains(&format!("branch feature at commit {}", &feature[..12])),
        "{queued:?}"
    );

    // Followed live to the end; not a terminal, so without colours.
    let followed = user.run(&["build", "logs", "1", "--follow"]).await;
    assert!(followed.ok, "{followed:?}");
    assert!(followed.stdout.contains("[work] green\n"), "{followed:?}");
    assert!(
        followed.stdout.contains("[work] ran once as "),
        "{followed:?}"
    );
    assert!(!followed.stdout.contains('\u{1b}'), "{followed:?}");
    assert!(followed.stderr.contains("build 1 passed"), "{followed:?}");

    let step = user.run(&["build", "logs", "1", "--step", "work"]).await;
    assert!(step.ok, "{step:?}");
    assert!(
        step.stdout.lines().any(|line| line == "green"),
        "bare lines: {step:?}"
    );
    assert!(!step.stdout.contains("[work]"), "{step:?}");
    let on_a_terminal = user
        .run_on_a_terminal(&["build", "logs", "1", "--step", "work"])
        .await;
    assert!(
        on_a_terminal.stdout.contains("\u{1b}[32mgreen\u{1b}[0m"),
        "{on_a_terminal:?}"
    );
    let unknown_step = user.run(&["build", "logs", "1", "--step", "lint"]).await;
    assert!(!unknown_step.ok);
    assert!(
        unknown_step
            .stderr
            .contains("build 1 has no step `lint`; its steps: work"),
        "{unknown_step:?}"
    );

    let shown = user.run(&["build", "show", "1"]).await;
    assert!(shown.ok, "{shown:?}");
    for words in [
        "build 1 of shared: passed",
        "branch    feature",
        &format!("commit    {feature}"),
        "event     manual",
    ] {
        assert!(shown.stdout.contains(words), "{words}: {shown:?}");
    }
    let step_line = shown
        .stdout
        .lines()
        .find(|line| line.starts_with("work "))
        .unwrap_or_default();
    assert!(
        step_line.contains("passed") && step_line.contains(" 0  "),
        "{shown:?}"
    );

    let rebuilt = user.run(&["build", "rebuild", "1"]).await;
    assert!(rebuilt.ok, "{rebuilt:?}");
    assert_eq!(rebuilt.stdout.trim(), "2", "{rebuilt:?}");
    let cancelled = user.run(&["build", "cancel", "2"]).await;
    assert!(cancelled.ok, "{cancelled:?}");
    assert!(
        cancelled.stdout.contains("build 2 cancelled")
            || cancelled.stdout.contains("build 2 is running"),
        "{cancelled:?}"
    );
    let ended = wait_for_build(&app, "shared", 2, Duration::from_secs(300)).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");

    let listed = user.run(&["builds"]).await;
    assert!(listed.ok, "{listed:?}");
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert!(lines[0].starts_with(" BUILD  STATUS"), "{listed:?}");
    let words = |line: &str| {
        line.split_whitespace()
            .take(6)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(lines[1])[..5],
        ["2", "cancelled", "rebuild", "feature", &feature[..12]],
        "newest first: {listed:?}"
    );
    assert_eq!(
        words(lines[2]),
        ["1", "passed", "manual", "feature", &feature[..12], "Test"],
        "the commit's author: {listed:?}"
    );
    let one = user.run(&["builds", "--limit", "1"]).await;
    assert_eq!(one.stdout.lines().count(), 2, "{one:?}");

    let missing = user.run(&["build", "show", "9"]).await;
    assert!(!missing.ok);
    assert!(
        missing
            .stderr
            .contains("project `shared` has no build 9; its builds: 1-2"),
        "{missing:?}"
    );
    let bad = user.run(&["build", "--branch", "a..b"]).await;
    assert!(!bad.ok);
    assert!(
        bad.stderr
            .contains("400 Bad Request: branch: \"a..b\" is not a valid branch name"),
        "{bad:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_checks_the_token_and_stores_it_privately_for_later_commands() {
    let repo = quick_repository();
    let apt = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&config(repo.path(), apt.path())).await;
    let user = User::new(&[]);
    let stored = user.home.path().join(".config/slipway/client.toml");

    let refused = user
        .run_with_stdin(
            &["login", "--server", &app.address, "--token", "-"],
            "not-a-token\n",
        )
        .await;
    assert!(!refused.ok, "{refused:?}");
    assert!(
        refused.stderr.contains("the token was not stored"),
        "{refused:?}"
    );
    assert!(
        refused.stderr.contains("401 Unauthorized: unknown token"),
        "{refused:?}"
    );
    assert!(!stored.exists(), "a refused token is not stored");

    let without_login = user.run(&["builds"]).await;
    assert!(!without_login.ok);
    assert!(
        without_login.stderr.contains("run `slipway login`"),
        "{without_login:?}"
    );

    let token_line = format!("{}\n", app.token);
    let login = user
        .run_with_stdin(
            &["login", "--server", &app.address, "--token", "-"],
            &token_line,
        )
        .await;
    assert!(login.ok, "{login:?}");
    assert!(
        login
            .stdout
            .contains(&format!("logged in to {}", app.address)),
        "{login:?}"
    );
    assert!(
        !login.stdout.contains(&app.token) && !login.stderr.contains(&app.token),
        "{login:?}"
    );
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&stored), 0o600);
    assert_eq!(mode(stored.parent().unwrap()), 0o700);

    // No flags and no environment: the stored server and token.
    let later = user.run(&["builds"]).await;
    assert!(later.ok, "{later:?}");
    assert!(
        later.stdout.contains("project shared has no builds yet"),
        "{later:?}"
    );
    // An explicit token wins over the stored one.
    let explicit = user.run(&["builds", "--token", "wrong"]).await;
    assert!(!explicit.ok);
    assert!(explicit.stderr.contains("unknown token"), "{explicit:?}");

    // XDG_CONFIG_HOME, when set, is where the settings go.
    let xdg = tempfile::tempdir().unwrap();
    let xdg_home = xdg.path().to_str().unwrap();
    let xdg_user = User::new(&[("XDG_CONFIG_HOME", xdg_home), ("SLIPWAY_TOKEN", &app.token)]);
    let login = xdg_user.run(&["login", "--server", &app.address]).await;
    assert!(login.ok, "{login:?}");
    assert_eq!(mode(&xdg.path().join("slipway/client.toml")), 0o600);
    app.stop().await;
}
