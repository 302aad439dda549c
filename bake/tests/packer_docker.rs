//! Real bakes with Packer, Ansible and dockerd: a release becomes a runnable image, a failed or
//! cancelled bake leaves nothing behind, and an incremental bake builds on the previous image,
//! fetching the distribution's package lists only when the release needs a package it lacks.

mod packer_support;

use std::time::Duration;

use packer_support::{docker, free_port, local_docker, Fixture, BASE_IMAGE, PACKAGE};
use slipway_bake::{
    bake, finished_image, reap_bake, ArtifactKind, BakeError, BakeSource, Reap, CONTAINER_LABEL,
    IMAGE_LABEL, KEY_LABEL,
};
use tokio_util::sync::CancellationToken;

/// Bakes, collecting every observed line; returns the result and the log.
async fn bake_logged(
    request: &slipway_bake::BakeRequest,
    cancel: &CancellationToken,
    mut on_line: impl FnMut(&str) + Send,
) -> (Result<slipway_bake::BakeArtifact, BakeError>, String) {
    let mut log = String::new();
    let mut observer = |line: &str| {
        on_line(line);
        log.push_str(line);
        log.push('\n');
    };
    let result = bake(request, &local_docker().await, &mut observer, cancel).await;
    (result, log)
}

fn installed_version(image: &str) -> String {
    let query = format!("dpkg-query --show --showformat='${{Version}}' {PACKAGE}");
    let (ok, output) = docker(&["run", "--rm", "--entrypoint", "sh", image, "-c", &query]);
    assert!(ok, "dpkg-query in {image}: {output}");
    output
}

/// Nothing of the bake remains: no build container, no image, no target tag.
fn assert_nothing_left(fixture: &Fixture, bake_id: &str, tag: &str) {
    let label = format!("label={CONTAINER_LABEL}={bake_id}");
    let (ok, containers) = docker(&["ps", "-aq", "--filter", &label]);
    assert!(
        ok && containers.trim().is_empty(),
        "containers left: {containers}"
    );
    let (ok, images) = docker(&["images", "-q", &fixture.image_repository()]);
    assert!(ok && images.trim().is_empty(), "images left: {images}");
    let (exists, _) = docker(&[
        "image",
        "inspect",
        &format!("{}:{tag}", fixture.image_repository()),
    ]);
    assert!(!exists, "the tag {tag} exists after a failed bake");
}

#[tokio::test]
async fn a_release_bakes_into_an_image_that_runs_it_and_the_next_bakes_incrementally() {
    let fixture = Fixture::new("bake-ok");
    fixture.publish("1.0.0");
    fixture.publish("1.1.0");
    let port = free_port();
    let cancel = CancellationToken::new();

    let first = fixture.request(1, "1.0.0", BASE_IMAGE, port);
    let (result, log) = bake_logged(&first, &cancel, |_| {}).await;
    let v1 = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(v1.kind, ArtifactKind::DockerImage);
    assert_eq!(v1.name, format!("{}:v1", fixture.image_repository()));
    assert!(v1.id.starts_with("sha256:"), "{v1:?}");
    assert!(
        log.contains("TASK [slipway : Install exactly bakeapp=1.0.0]"),
        "{log}"
    );
    assert_eq!(fixture.run_and_ask(&v1.name, port), "bakeapp 1.0.0\n");
    assert_eq!(installed_version(&v1.name), "1.0.0");

    let mut second = fixture.request(2, "1.1.0", &v1.name, port);
    second.security_updates = true;
    let key = unique_key();
    if let BakeSource::Docker(source) = &mut second.source {
        source.bake_key.clone_from(&key);
    }
    let (result, log) = bake_logged(&second, &cancel, |_| {}).await;
    let v2 = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(v2.name, format!("{}:v2", fixture.image_repository()));
    assert_ne!(v2.id, v1.id);
    assert_eq!(fixture.run_and_ask(&v2.name, port), "bakeapp 1.1.0\n");
    assert_eq!(installed_version(&v2.name), "1.1.0");
    let (ok, labels) = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &v2.name,
    ]);
    assert!(
        ok && labels.contains(r#""slipway.release":"v2""#),
        "{labels}"
    );
    // The finished image carries its bake key, by which a re-run of the bake finds it.
    assert!(
        labels.contains(&format!(r#""{KEY_LABEL}":"{key}""#)),
        "{labels}"
    );
    let client = local_docker().await;
    assert_eq!(
        finished_image(&client, PACKAGE, &key).await.unwrap(),
        Some(v2.id.clone())
    );
    assert_eq!(
        finished_image(&client, "another", &key).await.unwrap(),
        None
    );
    // v1's image trusts the repository already and holds v2's dependencies: only Slipway's
    // lists are fetched, not the distribution's.
    assert_eq!(task_outcome(&log, ONLY_SLIPWAYS_LISTS), "changed", "{log}");
    assert_eq!(task_outcome(&log, ALL_LISTS), "skipping", "{log}");

    // v3 needs a Debian package the image lacks: every list is fetched, and it is installed.
    fixture.publish_depending("1.2.0", &["tree"]);
    let third = fixture.request(3, "1.2.0", &v2.name, port);
    let (result, log) = bake_logged(&third, &cancel, |_| {}).await;
    let v3 = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(task_outcome(&log, ALL_LISTS), "changed", "{log}");
    assert_eq!(fixture.run_and_ask(&v3.name, port), "bakeapp 1.2.0\n");
    assert_eq!(installed_version(&v3.name), "1.2.0");
    let (ok, output) = docker(&["run", "--rm", "--entrypoint", "tree", &v3.name, "--version"]);
    assert!(ok, "tree in {}: {output}", v3.name);
    // Both kinds of bake leave no package lists in the image.
    let (ok, lists) = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        &v3.name,
        "-c",
        "ls -A /var/lib/apt/lists | grep -v -x -e lock -e partial | sed 's/^/list: /'",
    ]);
    // Each file is prefixed: a warning of docker's on stderr is no leftover list.
    assert!(ok && !lists.contains("list: "), "lists left in v3: {lists}");
}

const ONLY_SLIPWAYS_LISTS: &str =
    "TASK [slipway : Update only Slipway's package lists, if the installed packages satisfy the release]";
const ALL_LISTS: &str = "TASK [slipway : Update the package lists]";

/// What Ansible said of `task` (`ok`, `changed`, `skipping`, `fatal`), from the line after it.
fn task_outcome<'a>(log: &'a str, task: &str) -> &'a str {
    let after = log
        .split_once(task)
        .unwrap_or_else(|| panic!("no `{task}` in the log"))
        .1;
    after
        .lines()
        .filter_map(|line| line.trim().strip_prefix("docker:"))
        .filter_map(|line| line.trim().split_once(": ["))
        .map(|(outcome, _)| outcome)
        .next()
        .unwrap_or_else(|| panic!("no outcome after `{task}`"))
}

#[tokio::test]
async fn a_failed_playbook_fails_the_bake_shows_ansibles_error_and_leaves_nothing() {
    let fixture = Fixture::new("bake-fail");
    fixture.publish("1.0.0");
    let request = fixture.request(1, "9.9.9", BASE_IMAGE, free_port());

    let (result, log) = bake_logged(&request, &CancellationToken::new(), |_| {}).await;
    match result {
        Err(BakeError::BuildFailed { reason, .. }) => {
            assert!(reason.contains("Error executing Ansible"), "{reason}")
        }
        other => panic!("expected a failed build, got {other:?}\n{log}"),
    }
    // Ansible's own words, as its apt module reported them.
    assert!(
        log.contains("fatal: [default]: FAILED!") && log.contains("bakeapp=9.9.9"),
        "{log}"
    );
    assert_nothing_left(&fixture, &request.bake_id, "v1");
}

#[tokio::test]
async fn a_cancelled_bake_stops_packer_and_leaves_nothing() {
    let fixture = Fixture::new("bake-cancel");
    fixture.publish("1.0.0");
    let request = fixture.request(1, "1.0.0", BASE_IMAGE, free_port());
    let cancel = CancellationToken::new();

    let trigger = cancel.clone();
    let (result, log) = bake_logged(&request, &cancel, move |line| {
        if line.contains("TASK [slipway : Update the package lists]") {
            trigger.cancel();
        }
    })
    .await;
    assert!(
        matches!(result, Err(BakeError::Cancelled { .. })),
        "{result:?}\n{log}"
    );
    assert_nothing_left(&fixture, &request.bake_id, "v1");
}

#[tokio::test]
async fn a_bake_past_its_timeout_stops_and_leaves_nothing() {
    let fixture = Fixture::new("bake-timeout");
    fixture.publish("1.0.0");
    let mut request = fixture.request(1, "1.0.0", BASE_IMAGE, free_port());
    request.timeout = Duration::from_secs(4);

    let started = std::time::Instant::now();
    let (result, log) = bake_logged(&request, &CancellationToken::new(), |_| {}).await;
    assert!(
        matches!(result, Err(BakeError::TimedOut { .. })),
        "{result:?}\n{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert_nothing_left(&fixture, &request.bake_id, "v1");
}

/// A bake key no other test's image carries.
fn unique_key() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}{:x}", std::process::id())
}

#[tokio::test]
async fn reaping_a_bake_removes_what_a_killed_packer_left() {
    let fixture = Fixture::new("bake-reap");
    let bake_id = format!("{}-v1", fixture.id);
    // What a SIGKILLed Packer leaves: its labelled build container and a committed image.
    let container_label = format!("{CONTAINER_LABEL}={bake_id}");
    let (ok, container) = docker(&[
        "run",
        "-d",
        "--label",
        &container_label,
        "--entrypoint",
        "sleep",
        BASE_IMAGE,
        "600",
    ]);
    assert!(ok, "{container}");
    let image_label = format!("LABEL {IMAGE_LABEL}={bake_id}");
    let image = format!("{}:v1", fixture.image_repository());
    let (ok, output) = docker(&["commit", "--change", &image_label, container.trim(), &image]);
    assert!(ok, "{output}");

    // An image the bake finished (committed with its key) before the kill, left untagged.
    let key = unique_key();
    let finished_labels =
        format!("LABEL {IMAGE_LABEL}={bake_id} {KEY_LABEL}={key} slipway.project={PACKAGE}");
    let (ok, finished) = docker(&["commit", "--change", &finished_labels, container.trim()]);
    assert!(ok, "{finished}");
    let finished = finished.trim().to_owned();

    // Reaped for a re-run: the container and the unfinished image go, the finished one stays.
    let client = local_docker().await;
    reap_bake(&client, &bake_id, Reap::KeepFinished)
        .await
        .unwrap();
    let (ok, containers) = docker(&["ps", "-aq", "--filter", &format!("label={container_label}")]);
    assert!(
        ok && containers.trim().is_empty(),
        "containers left: {containers}"
    );
    assert!(!docker(&["image", "inspect", &image]).0, "{image} is left");
    assert_eq!(
        finished_image(&client, PACKAGE, &key).await.unwrap(),
        Some(finished.clone())
    );
    // Reaped for good: nothing stays.
    reap_bake(&client, &bake_id, Reap::Everything)
        .await
        .unwrap();
    assert!(
        !docker(&["image", "inspect", &finished]).0,
        "{finished} is left"
    );
    assert_eq!(finished_image(&client, PACKAGE, &key).await.unwrap(), None);
    assert_nothing_left(&fixture, &bake_id, "v1");
    reap_bake(&client, &bake_id, Reap::Everything)
        .await
        .unwrap();
}
