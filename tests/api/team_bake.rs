//! The team's own bake (real Packer, Ansible and dockerd): a playbook with a role in the
//! application repository, named in `.slipway.yml` with variables the server's
//! `[projects.bake]` partly overrides, provisions the image after Slipway's package is
//! installed; a broken playbook fails the bake with Ansible's error line and leaves nothing; a
//! changed role bakes anew, not on top of the previous image; a playbook repository is used at
//! the commit its pinned ref names, and includes Slipway's role.

use std::path::Path;
use std::time::Instant;

use crate::bake::{docker, Cleanup, BUILD_AND_BAKE};
use crate::builds::{commit_all, git, hello_config, hello_repository, push, wait_for_build};
use crate::helpers::TestApp;

const TEAM_PLAYBOOK: &str = "\
# The hello team's own provisioning, run by Slipway after its own playbook.
- name: Provision hello the team's way
  hosts: all
  become: true
  gather_facts: false
  roles:
    - hello_team
";

const TEAM_TASKS: &str = "\
- name: Read the installed hello
  ansible.builtin.command: dpkg-query --show --showformat=${Version} hello
  register: hello_installed
  changed_when: false

- name: Write the team's settings
  ansible.builtin.template:
    src: team.conf.j2
    dest: /etc/hello/team.conf
    mode: \"0644\"
";

/// Adds the team's playbook, role and template to `repo`, and names it in `.slipway.yml`.
fn add_team_playbook(repo: &Path, template: &str) {
    let role = repo.join("deploy/roles/hello_team");
    std::fs::create_dir_all(role.join("tasks")).unwrap();
    std::fs::create_dir_all(role.join("templates")).unwrap();
    std::fs::write(repo.join("deploy/bake.yml"), TEAM_PLAYBOOK).unwrap();
    std::fs::write(role.join("tasks/main.yml"), TEAM_TASKS).unwrap();
    std::fs::write(role.join("templates/team.conf.j2"), template).unwrap();
    let spec = std::fs::read_to_string(repo.join(".slipway.yml")).unwrap();
    if !spec.contains("\nbake:") {
        let bake = "\nbake:\n  playbook: deploy/bake.yml\n  extra_vars:\n    app_env: dev\n    region: eu-west-1\n";
        std::fs::write(repo.join(".slipway.yml"), spec + bake).unwrap();
    }
}

/// `cat`s `path` in a throwaway container of `image`.
fn read_in_image(image: &str, path: &str) -> String {
    let (ok, text) = docker(&["run", "--rm", "--network", "none", image, "cat", path]);
    assert!(ok, "cat {path} in {image}: {text}");
    text
}

/// `dpkg -s hello` in a throwaway container of `image`.
fn hello_status(image: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "dpkg",
        "-s",
        "hello",
    ])
    .1
}

/// No container of the bake, no scratch file, and after a failed bake no image either.
fn assert_nothing_left(app: &TestApp, bake_id: &str, failed: bool) {
    let label = format!("label=slipway.bake={bake_id}");
    let (ok, left) = docker(&["ps", "-aq", "--filter", &label]);
    assert!(ok && left.trim().is_empty(), "containers left: {left}");
    if failed {
        let label = format!("label=slipway.baked-by={bake_id}");
        let (ok, left) = docker(&["images", "-q", "--filter", &label]);
        assert!(ok && left.trim().is_empty(), "images left: {left}");
    }
    let scratch = app.data_dir().join("bakes/scratch");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch files left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_playbook_provisions_the_image_after_slipways_package_and_a_broken_one_leaves_nothing(
) {
    let mut cleanup = Cleanup::new();
    let repo = hello_repository();
    add_team_playbook(
        repo.path(),
        "app_env={{ app_env }}\nregion={{ region }}\nhello={{ hello_installed.stdout }}\n",
    );
    let first = commit_all(repo.path(), "the team's own playbook");
    let config = format!(
        "{}[projects.bake]\nextra_vars = {{ app_env = \"prod\" }}\n",
        hello_config(repo.path())
    );
    let app = TestApp::spawn(&config).await;

    let started = Instant::now();
    let build = wait_for_build(&app, push(&app, "main", &first).await, BUILD_AND_BAKE).await;
    eprintln!(
        "build, publish and bake of v1 with the team's playbook: {:?}",
        started.elapsed()
    );
    assert_eq!(build["status"], "passed", "{build}");
    let v1 = app.wait_for_bake("hello", "v1").await;
    cleanup
        .bake_ids
        .push(v1["bake_id"].as_str().unwrap().to_string());
    let log = app.bake_log("hello", "v1").await;
    assert_eq!(v1["bake_status"], "baked", "{v1}\n{log}");
    let image = v1["image"].as_str().unwrap();
    // The team's role ran after Slipway's package was installed, with the server's app_env
    // over .slipway.yml's and .slipway.yml's region.
    let settings = read_in_image(image, "/etc/hello/team.conf");
    let lines: Vec<&str> = settings.lines().collect();
    assert_eq!(
        lines,
        ["app_env=prod", "region=eu-west-1", "hello=1"],
        "{settings}"
    );
    let status = hello_status(image);
    assert!(
        status.contains("Status: install ok installed") && status.contains("Version: 1\n"),
        "{status}"
    );
    assert!(
        log.contains("TASK [slipway : Install exactly hello=1]"),
        "{log}"
    );
    assert!(
        log.contains("TASK [hello_team : Write the team's settings]"),
        "{log}"
    );
    assert!(
        log.contains("bake.extra_vars.app_env of .slipway.yml is ignored"),
        "{log}"
    );
    // The variables reach Ansible as a file, never as arguments.
    assert!(log.contains("extra_vars.json"), "{log}");
    assert!(
        !log.contains("app_env=prod") && !log.contains("region=eu"),
        "{log}"
    );
    assert_nothing_left(&app, v1["bake_id"].as_str().unwrap(), false);

    // A broken playbook: the bake fails with Ansible's error and where it is, and leaves
    // nothing; the build stays passed.
    std::fs::write(
        repo.path().join("deploy/bake.yml"),
        TEAM_PLAYBOOK.replace("    - hello_team\n", "    - [hello_team\n"),
    )
    .unwrap();
    let second = commit_all(repo.path(), "break the playbook");
    let build = wait_for_build(&app, push(&app, "main", &second).await, BUILD_AND_BAKE).await;
    assert_eq!(build["status"], "passed", "{build}");
    let v2 = app.wait_for_bake("hello", "v2").await;
    let bake_id = v2["bake_id"].as_str().unwrap().to_string();
    cleanup.bake_ids.push(bake_id.clone());
    let log = app.bake_log("hello", "v2").await;
    assert_eq!(v2["bake_status"], "failed", "{v2}\n{log}");
    assert_eq!(v2["image"], serde_json::Value::Null, "{v2}");
    let reason = v2["bake_reason"].as_str().unwrap();
    eprintln!("bake reason of the broken playbook: {reason}");
    assert!(reason.contains("ERROR!"), "{reason}");
    assert!(reason.contains("deploy/bake.yml': line "), "{reason}");
    assert!(log.contains("ERROR!"), "{log}");
    assert_nothing_left(&app, &bake_id, true);

    // A changed role template is a new bake key, and the image is baked from the base again:
    // building on v1's image would keep what the old playbook made.
    add_team_playbook(
        repo.path(),
        "app_env={{ app_env }}\nhello={{ hello_installed.stdout }}\n",
    );
    let third = commit_all(repo.path(), "fix the playbook, drop region");
    let started = Instant::now();
    let build = wait_for_build(&app, push(&app, "main", &third).await, BUILD_AND_BAKE).await;
    eprintln!(
        "build, publish and bake of v3 with a changed role: {:?}",
        started.elapsed()
    );
    assert_eq!(build["status"], "passed", "{build}");
    let v3 = app.wait_for_bake("hello", "v3").await;
    cleanup
        .bake_ids
        .push(v3["bake_id"].as_str().unwrap().to_string());
    let log = app.bake_log("hello", "v3").await;
    assert_eq!(v3["bake_status"], "baked", "{v3}\n{log}");
    assert_ne!(v3["bake_key"], v1["bake_key"]);
    assert!(
        log.contains("full bake from slipway/debian:bookworm")
            && log.contains("provisioned differently"),
        "{log}"
    );
    let image = v3["image"].as_str().unwrap();
    let settings = read_in_image(image, "/etc/hello/team.conf");
    assert_eq!(
        settings.lines().collect::<Vec<_>>(),
        ["app_env=prod", "hello=3"]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playbook_repository_is_used_at_its_pinned_ref_and_includes_slipways_role() {
    let mut cleanup = Cleanup::new();
    let ops = tempfile::tempdir().unwrap();
    let role = ops.path().join("playbooks/roles/ops_marker");
    std::fs::create_dir_all(role.join("tasks")).unwrap();
    std::fs::write(
        ops.path().join("playbooks/app.yml"),
        "- name: The DevOps team's playbook\n  hosts: all\n  become: true\n  gather_facts: false\n  roles:\n    - slipway\n    - ops_marker\n",
    )
    .unwrap();
    let tasks = |from: &str| {
        format!("- name: Mark the image\n  ansible.builtin.copy:\n    dest: /etc/hello/ops-marker\n    content: \"{{{{ marker }}}} from {from}\\n\"\n    mode: \"0644\"\n")
    };
    std::fs::write(role.join("tasks/main.yml"), tasks("v3")).unwrap();
    git(ops.path(), &["init", "-q", "-b", "main"]);
    let pinned = commit_all(ops.path(), "ops playbook v3");
    git(ops.path(), &["tag", "v3"]);
    // Work on the branch after the tag must not reach the bake.
    std::fs::write(role.join("tasks/main.yml"), tasks("main")).unwrap();
    commit_all(ops.path(), "ops playbook, unreleased");

    let repo = hello_repository();
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    let config = format!(
        "{}[projects.bake]\nplaybook_repo = {{ url = \"file://{}\", ref = \"v3\", path = \"playbooks/app.yml\" }}\nextra_vars = {{ marker = \"ops\" }}\n",
        hello_config(repo.path()),
        ops.path().display()
    );
    let app = TestApp::spawn(&config).await;
    let started = Instant::now();
    let build = wait_for_build(&app, push(&app, "main", &commit).await, BUILD_AND_BAKE).await;
    eprintln!(
        "build, publish and bake of v1 with a playbook repository: {:?}",
        started.elapsed()
    );
    assert_eq!(build["status"], "passed", "{build}");
    let v1 = app.wait_for_bake("hello", "v1").await;
    cleanup
        .bake_ids
        .push(v1["bake_id"].as_str().unwrap().to_string());
    let log = app.bake_log("hello", "v1").await;
    assert_eq!(v1["bake_status"], "baked", "{v1}\n{log}");
    assert!(
        log.contains(&format!(
            "playbooks/app.yml of file://{} at v3 (commit {pinned})",
            ops.path().display()
        )),
        "{log}"
    );
    let image = v1["image"].as_str().unwrap();
    assert_eq!(
        read_in_image(image, "/etc/hello/ops-marker"),
        "ops from v3\n"
    );
    let status = hello_status(image);
    assert!(status.contains("Status: install ok installed"), "{status}");
    // The image names what provisioned it, so the next bake can tell whether to build on it.
    let (_, label) = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"slipway.provisioning\"}}",
        image,
    ]);
    assert_eq!(label.trim().len(), 64, "{label}");
    assert_nothing_left(&app, v1["bake_id"].as_str().unwrap(), false);
    app.stop().await;
}
