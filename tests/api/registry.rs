//! Images from registries: a real `docker-registry` on loopback, filled by the test, with and
//! without authentication; builds pull what is absent as each step's `pull` says, through the
//! server's mirror for Docker Hub names, and a failed pull names the image and the registry.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    CommitContainerOptions, CreateContainerOptions, PushImageOptions, RemoveContainerOptions,
    RemoveImageOptions,
};
use bollard::Docker;
use futures::StreamExt;
use serde_json::Value;

use crate::builds::{commit_all, git, push, wait_for_build};
use crate::helpers::{project_config, test_database, TestApp};

const BASE_IMAGE: &str = "slipway/debian:bookworm";
/// The webhook secret `builds::push` signs with.
const SECRET: &str = "hello-secret";

/// `docker-registry serve` on a free loopback port, with its storage in a temp dir; killed
/// when dropped.
struct LocalRegistry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// Starts a registry; with `login`, it asks for that user and password (htpasswd, bcrypt).
    fn start(login: Option<(&str, &str)>) -> LocalRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::helpers::free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = login {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt(password))).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: slipway-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts (scripts/bootstrap installs it)");
        let registry = LocalRegistry {
            child,
            host,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.host).is_err() {
            assert!(Instant::now() < deadline, "the registry never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bcrypt hash, as the registry's htpasswd wants it (libxcrypt through Python's `crypt`).
fn bcrypt(password: &str) -> String {
    let output = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            password,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

async fn docker() -> Docker {
    Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

/// Makes `reference` (`repo:tag`) locally: the base image with `IMAGE_VERSION=version`.
async fn make_image(docker: &Docker, reference: &str, version: &str) {
    let container = format!("slipway-test-commit-{}", uuid::Uuid::new_v4().simple());
    let body = bollard::models::ContainerCreateBody {
        image: Some(BASE_IMAGE.to_string()),
        cmd: Some(vec!["true".to_string()]),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(container.clone()),
        ..Default::default()
    };
    docker.create_container(Some(options), body).await.unwrap();
    let (repo, tag) = reference.rsplit_once(':').unwrap();
    let commit = CommitContainerOptions {
        container: Some(container.clone()),
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        changes: Some(format!("ENV IMAGE_VERSION={version}")),
        ..Default::default()
    };
    let committed = docker
        .commit_container(commit, bollard::models::ContainerConfig::default())
        .await;
    let remove = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    docker
        .remove_container(&container, Some(remove))
        .await
        .unwrap();
    committed.unwrap();
}

/// Pushes the local `reference` to its registry, then removes it here: it is then only there.
async fn push_image(docker: &Docker, reference: &str, login: Option<(&str, &str)>) {
    let (repo, tag) = reference.rsplit_once(':').unwrap();
    let credentials = login.map(|(user, password)| DockerCredentials {
        username: Some(user.to_string()),
        password: Some(password.to_string()),
        serveraddress: Some(repo.split('/').next().unwrap().to_string()),
        ..Default::default()
    });
    let options = PushImageOptions {
        tag: Some(tag.to_string()),
        ..Default::default()
    };
    let mut pushed = docker.push_image(repo, Some(options), credentials);
    while let Some(event) = pushed.next().await {
        let event = event.unwrap_or_else(|e| panic!("push {reference}: {e}"));
        assert!(event.error.is_none(), "push {reference}: {event:?}");
    }
    remove_image(docker, reference).await;
}

async fn remove_image(docker: &Docker, reference: &str) {
    let options = RemoveImageOptions {
        force: true,
        noprune: false,
    };
    let _ = docker.remove_image(reference, Some(options), None).await;
}

/// Removes the images a test pulled or made, by name or id, even when an assertion failed.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["image", "rm", "-f"])
            .args(&self.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn image_present(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The project's repository holding `pipeline` as `.slipway.yml`, committed on `main`.
fn repository(pipeline: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    let commit = write_pipeline(dir.path(), pipeline);
    (dir, commit)
}

fn write_pipeline(repo: &Path, pipeline: &str) -> String {
    std::fs::write(repo.join(".slipway.yml"), pipeline).unwrap();
    commit_all(repo, "pipeline")
}

/// The log lines of one step of a build.
async fn step_log(app: &TestApp, number: i64, step: &str) -> Vec<String> {
    let lines = app
        .get_json(&format!(
            "/api/v1/projects/hello/builds/{number}/logs?limit=10000"
        ))
        .await;
    lines
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["step"] == step)
        .map(|line| line["line"].as_str().unwrap().to_string())
        .collect()
}

fn step_status<'a>(build: &'a Value, step: &str) -> &'a Value {
    &build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == step)
        .unwrap_or_else(|| panic!("step {step} in {build}"))["status"]
}

fn pulls(log: &[String]) -> usize {
    log.iter()
        .filter(|line| line.starts_with("[slipway] pulling image "))
        .count()
}

#[tokio::test]
async fn images_are_pulled_from_a_registry_and_the_mirror_as_each_pull_policy_says() {
    let docker = docker().await;
    let registry = LocalRegistry::start(None);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tools = format!("{}/slipway-test-{id}/tools:v", registry.host);
    // A Docker Hub name: the server's mirror serves it.
    let hub = format!("slipway-test-{id}/hub:v");
    let on_mirror = format!("{}/{hub}", registry.host);
    let absent = format!("{}/slipway-test-{id}/absent:v", registry.host);
    let service = format!("{}/slipway-test-{id}/service:v", registry.host);
    let mut cleanup = Cleanup(vec![
        tools.clone(),
        hub.clone(),
        on_mirror.clone(),
        service.clone(),
    ]);
    make_image(&docker, &service, "service").await;
    push_image(&docker, &service, None).await;
    make_image(&docker, &tools, "1").await;
    push_image(&docker, &tools, None).await;
    make_image(&docker, &on_mirror, "hub").await;
    push_image(&docker, &on_mirror, None).await;
    assert!(!image_present(&tools) && !image_present(&hub) && !image_present(&service));

    let (repo, commit) = repository(&format!(
        "services:\n  - name: cache\n    image: {service}\nsteps:\n  - name: private\n    image: {tools}\n    commands: [\"echo version $IMAGE_VERSION\"]\n  - name: hub\n    image: {hub}\n    commands: [\"echo hub $IMAGE_VERSION\"]\n"
    ));
    let config = format!(
        "registry_mirror = \"http://{}\"\n{}",
        registry.host,
        project_config(
            "acme/hello",
            SECRET,
            &format!("file://{}", repo.path().display()),
            "^main$"
        )
    );
    let app = TestApp::spawn(&config).await;

    // Only in the registry: pulled (the service's image too), with a short progress log, and run.
    let started = Instant::now();
    let number = push(&app, "main", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(300)).await;
    let first_build = started.elapsed();
    assert_eq!(build["status"], "passed", "{build}");
    let private = step_log(&app, number, "private").await;
    assert!(
        private.contains(&format!(
            "[slipway] pulling image {tools} from {}",
            registry.host
        )),
        "{private:?}"
    );
    assert!(
        private
            .iter()
            .any(|l| l.starts_with(&format!("[slipway] pulled image {tools} from"))),
        "{private:?}"
    );
    assert!(private.contains(&"version 1".to_string()), "{private:?}");
    assert!(
        private.len() < 40,
        "the pull's progress is one line per layer state: {private:?}"
    );
    let hub_log = step_log(&app, number, "hub").await;
    assert!(
        hub_log.contains(&format!(
            "[slipway] pulling image {hub} from {}",
            registry.host
        )),
        "{hub_log:?}"
    );
    assert!(hub_log.contains(&"hub hub".to_string()), "{hub_log:?}");
    assert!(image_present(&service), "the service's image was pulled");
    assert!(image_present(&hub), "the mirror's image keeps its Hub name");
    assert!(!image_present(&on_mirror), "and loses the mirror's");

    // The tag moves on: `if-not-exists` keeps the image it has, `always` follows the tag, and
    // `never` refuses an absent image by name.
    let pulled = docker.inspect_image(&tools).await.unwrap().id.unwrap();
    cleanup.0.push(pulled.clone());
    make_image(&docker, &tools, "2").await;
    push_image(&docker, &tools, None).await;
    // Pushing moved the local name away; the image the first build pulled keeps it.
    let (name, tag) = tools.rsplit_once(':').unwrap();
    let options = bollard::query_parameters::TagImageOptions {
        repo: Some(name.to_string()),
        tag: Some(tag.to_string()),
    };
    docker.tag_image(&pulled, Some(options)).await.unwrap();
    let commit = write_pipeline(
        repo.path(),
        &format!(
            "steps:\n  - name: cached\n    image: {tools}\n    commands: [\"echo version $IMAGE_VERSION\"]\n  - name: fresh\n    image: {tools}\n    pull: always\n    commands: [\"echo version $IMAGE_VERSION\"]\n  - name: offline\n    image: {absent}\n    pull: never\n    commands: [\"true\"]\n"
        ),
    );
    let number = push(&app, "main", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(300)).await;
    let cached = step_log(&app, number, "cached").await;
    assert_eq!(pulls(&cached), 0, "{cached:?}");
    assert!(cached.contains(&"version 1".to_string()), "{cached:?}");
    let fresh = step_log(&app, number, "fresh").await;
    assert_eq!(pulls(&fresh), 1, "{fresh:?}");
    assert!(fresh.contains(&"version 2".to_string()), "{fresh:?}");
    assert_eq!(step_status(&build, "fresh"), "passed", "{build}");
    assert_eq!(build["status"], "errored", "{build}");
    let reason = build["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("image `{absent}` is not present"))
            && reason.contains("pull: never"),
        "{build}"
    );
    assert_eq!(
        pulls(&step_log(&app, number, "offline").await),
        0,
        "never pulls"
    );

    app.stop().await;
    eprintln!("first build with three pulls took {first_build:?}");
}

#[tokio::test]
async fn a_registry_with_a_password_serves_the_right_login_and_names_itself_when_refused() {
    let docker = docker().await;
    let (user, password) = ("ci", "s3cret-registry-password");
    let registry = LocalRegistry::start(Some((user, password)));
    let id = uuid::Uuid::new_v4().simple().to_string();
    let image = format!("{}/slipway-test-{id}/private:v", registry.host);
    let missing = format!("{}/slipway-test-{id}/missing:v", registry.host);
    let _cleanup = Cleanup(vec![image.clone()]);
    make_image(&docker, &image, "private").await;
    push_image(&docker, &image, Some((user, password))).await;

    let (repo, commit) = repository(&format!(
        "steps:\n  - name: build\n    image: {image}\n    commands: [\"echo from $IMAGE_VERSION\"]\n"
    ));
    let clone_url = format!("file://{}", repo.path().display());
    // Two projects on one repository: one with the right password, one with a wrong one.
    let project = |name: &str, repository: &str, variable: &str| {
        format!(
            "[[projects]]\nname = \"{name}\"\nrepository = \"{repository}\"\nclone_url = \"{clone_url}\"\nwebhook_secret = \"{}\"\nbranches = \"^main$\"\n[[projects.registries]]\nhost = \"{}\"\nusername = \"{user}\"\npassword_env = \"{variable}\"\n",
            SECRET,
            registry.host
        )
    };
    let config = format!(
        "{}{}",
        project("hello", "acme/hello", "SLIPWAY_TEST_REGISTRY_PASSWORD"),
        project("wrong", "acme/wrong", "SLIPWAY_TEST_WRONG_PASSWORD")
    );
    let app = TestApp::spawn_with_env(
        &config,
        test_database(),
        &[
            ("SLIPWAY_TEST_REGISTRY_PASSWORD", password),
            ("SLIPWAY_TEST_WRONG_PASSWORD", "not-the-password"),
        ],
    )
    .await;

    // The wrong password first, while the image is absent here.
    let body = crate::builds::push_body("acme/wrong", "main", &commit);
    let response = app
        .post_hook(
            "repo:push",
            &body,
            Some(&crate::helpers::sign(SECRET, &body)),
            None,
        )
        .await;
    assert_eq!(response.status(), 202);
    let wrong = loop {
        let build = app.get_json("/api/v1/projects/wrong/builds/1").await;
        if !matches!(build["status"].as_str(), Some("queued" | "running")) {
            break build;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(wrong["status"], "errored", "{wrong}");
    let reason = wrong["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "cannot pull image `{image}` from registry `{}`: unauthorized",
            registry.host
        )),
        "{wrong}"
    );
    assert!(!image_present(&image), "nothing was pulled");

    // The right password pulls and runs it.
    let number = push(&app, "main", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "passed", "{build}");
    let log = step_log(&app, number, "build").await;
    assert_eq!(pulls(&log), 1, "{log:?}");
    assert!(log.contains(&"from private".to_string()), "{log:?}");

    // A tag the registry does not have is named as not found.
    let commit = write_pipeline(
        repo.path(),
        &format!("steps:\n  - name: build\n    image: {missing}\n    commands: [\"true\"]\n"),
    );
    let number = push(&app, "main", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(300)).await;
    assert_eq!(build["status"], "errored", "{build}");
    let reason = build["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "cannot pull image `{missing}` from registry `{}`: not found",
            registry.host
        )),
        "{build}"
    );

    // The password is in no answer or log line.
    for path in [
        "/api/v1/projects/wrong/builds/1",
        "/api/v1/projects/wrong/builds/1/logs",
        "/api/v1/projects/hello/builds",
    ] {
        let text = app.get_json(path).await.to_string();
        assert!(!text.contains(password) && !text.contains("not-the-password"));
    }

    app.stop().await;
}

/// moto on a free loopback port, serving ECR's GetAuthorizationToken; killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        let port = crate::helpers::free_port();
        let program = std::env::var("SLIPWAY_MOTO_SERVER")
            .unwrap_or("/var/tmp/slipway/venv/bin/moto_server".to_string());
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts (scripts/bootstrap installs it)");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_ecr_registry_is_pulled_from_with_the_login_ecr_gives() {
    use std::os::unix::fs::PermissionsExt;

    let docker = docker().await;
    let moto = Moto::start();
    // moto's GetAuthorizationToken gives `AWS` and this password for its default account.
    let (user, password) = ("AWS", "123456789012-auth-token");
    let registry = LocalRegistry::start(Some((user, password)));
    let id = uuid::Uuid::new_v4().simple().to_string();
    let image = format!("{}/slipway-test-{id}/ecr:v", registry.host);
    let _cleanup = Cleanup(vec![image.clone()]);
    make_image(&docker, &image, "ecr").await;
    push_image(&docker, &image, Some((user, password))).await;
    let (repo, commit) = repository(&format!(
        "steps:\n  - name: build\n    image: {image}\n    commands: [\"echo from $IMAGE_VERSION\"]\n"
    ));

    let dir = tempfile::tempdir().unwrap();
    // The embedded cluster runs as user postgres, which must be able to reach the data dir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "{}[[projects.registries]]\nhost = \"{}\"\necr = {{ region = \"eu-west-1\", endpoint_url = \"{}\" }}\n",
        project_config(
            "acme/hello",
            SECRET,
            &format!("file://{}", repo.path().display()),
            "^main$"
        ),
        registry.host,
        moto.endpoint
    );
    std::fs::write(dir.path().join("slipway.toml"), config).unwrap();
    // The real binary, so that the AWS SDK reads its dummy keys from the process environment.
    let server = crate::server_process::start_with_env(
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let token = crate::helpers::read_token(&dir.path().join(".slipway"));
    let http = reqwest::Client::new();
    let body = crate::builds::push_body("acme/hello", "main", &commit);
    let queued: Value = http
        .post(format!("{}/hooks/bitbucket", server.address))
        .header("X-Event-Key", "repo:push")
        .header("X-Hub-Signature", crate::helpers::sign(SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let number = queued["queued"][0]["number"].as_i64().unwrap();
    let get = |path: String| {
        let request = http
            .get(format!("{}{path}", server.address))
            .bearer_auth(&token);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let build = loop {
        let build = get(format!("/api/v1/projects/hello/builds/{number}")).await;
        if !matches!(build["status"].as_str(), Some("queued" | "running")) {
            break build;
        }
        assert!(Instant::now() < deadline, "{build}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(build["status"], "passed", "{build}");
    let lines = get(format!("/api/v1/projects/hello/builds/{number}/logs")).await;
    let log: Vec<&str> = lines
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["line"].as_str().unwrap())
        .collect();
    assert!(
        log.contains(&format!("[slipway] pulling image {image} from {}", registry.host).as_str()),
        "{log:?}"
    );
    assert!(log.contains(&"from ecr"), "{log:?}");
    drop(server);
}
