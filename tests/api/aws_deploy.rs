//! aws environments through the real `slipway` binary and its CLI, against moto on
//! loopback: a release reaches the first aws environment by itself once its AMI is baked,
//! `slipway promote` and `slipway rollback` move the listener (a rollback to the warm Auto
//! Scaling group launches no instance), warm groups are retired after the retention window,
//! `slipway status` shows the groups; and kill -9 between launch and switch leaves no orphan.
//!
//! Releases are seeded into the test's database, their AMIs (made in moto) recorded with
//! `Store::record_release_image` as the AMI bake records them. The environments carry no
//! `env`: moto cannot start a group from a launch template version with user data.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use serde_json::{json, Value};
use slipway::store::release_images::{ImageRecord, AMI};
use slipway::store::Store;
use tokio_postgres::NoTls;

use crate::bake::Cleanup;
use crate::builds::{commit_all, git, hello_repository, push_body};
use crate::deploy::{Api, Project};
use crate::helpers::free_port;
use crate::helpers::{read_token, sign, test_database, HeldBakeRecords, BAKE_LIMIT};
use crate::server_process::{self, Server};

#[path = "../../deployer/tests/deployer/moto.rs"]
pub(crate) mod moto;

use moto::{registered, Infra, Moto, REGION};

/// The project's webhook secret.
const WEBHOOK_SECRET: &str = "aws-hello-secret";
/// The AMI the project's bakes start from: one moto lists in every region.
const SOURCE_AMI: &str = "ami-785db401";

/// The server's environment: dummy credentials for moto, and no instance metadata lookups.
pub(crate) const AWS_VARIABLES: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "slipway-test"),
    ("AWS_SECRET_ACCESS_KEY", "slipway-test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// One test's moto, project and server directory (its slipway.toml, on the test's database).
struct Setup {
    moto: Moto,
    config: SdkConfig,
    project: String,
    dir: tempfile::TempDir,
    database_url: String,
    /// Instances moto runs before Slipway does anything (those the AMIs were made from).
    before: BTreeSet<String>,
    /// Where the project is cloned from: nowhere, unless a test pushes a repository.
    clone_url: String,
    /// More `[projects.ami]` settings.
    ami_extra: String,
    /// A docker environment `dev` listening on this port, first in promotion order.
    docker_dev: Option<u16>,
    /// Environments in another region than [`REGION`] (the bake's), by name.
    regions: BTreeMap<String, String>,
    /// What AMIs are baked from: [`SOURCE_AMI`] unless a test says otherwise.
    source_ami: String,
}

impl Setup {
    async fn new() -> Setup {
        let moto = Moto::start().await;
        let config = moto.config().await;
        let dir = tempfile::tempdir().unwrap();
        // The embedded cluster's user must reach the data dir, though this one is unused.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Setup {
            moto,
            config,
            project: format!("a{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            dir,
            database_url: test_database(),
            before: BTreeSet::new(),
            clone_url: "file:///nonexistent".to_owned(),
            regions: BTreeMap::new(),
            source_ami: SOURCE_AMI.to_owned(),
            ami_extra: String::new(),
            docker_dev: None,
        }
    }

    /// Makes each environment's infrastructure in moto and writes the config: the docker
    /// `dev` if asked for, then every environment in `names` aws, in this order, with `extra`
    /// settings.
    async fn environments(&mut self, names: &[&str], extra: &str) -> Vec<Infra> {
        let mut text = format!(
            "database_url = \"{}\"\n[[projects]]\nname = \"{1}\"\nrepository = \"acme/{1}\"\nclone_url = \"{2}\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n",
            self.database_url, self.project, self.clone_url
        );
        if let Some(port) = self.docker_dev {
            text.push_str(&format!(
                "[[projects.environments]]\nname = \"dev\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:{port}\"\ninstances = 1\nwatch = \"1s\"\n"
            ));
        }
        let mut infras = Vec::new();
        for name in names {
            let region = self.region_of(name);
            let infra =
                Infra::named(&self.config_in(name), &format!("{}-{name}", self.project)).await;
            text.push_str(&format!(
                "[[projects.environments]]\nname = \"{name}\"\ntarget = \"aws\"\nregion = \"{region}\"\nendpoint_url = \"{}\"\nlistener_arn = \"{}\"\ntarget_groups = [\"{}\", \"{}\"]\nlaunch_template_id = \"{}\"\nsubnets = [\"{}\", \"{}\"]\ninstances = 2\nwatch = \"1s\"\n{extra}\n",
                self.moto.endpoint,
                infra.listener_arn,
                infra.target_groups[0],
                infra.target_groups[1],
                infra.launch_template_id,
                infra.subnets[0],
                infra.subnets[1],
            ));
            infras.push(infra);
        }
        // An aws environment needs the project's AMI settings: the server bakes in moto with
        // them (tests that seed releases record their AMIs themselves).
        text.push_str(&format!(
            "[projects.ami]\nregion = \"{REGION}\"\nsource_ami = \"{}\"\nendpoint_url = \"{}\"\ncommunicator = \"none\"\n{}",
            self.source_ami, self.moto.endpoint, self.ami_extra
        ));
        std::fs::write(self.dir.path().join("slipway.toml"), text).unwrap();
        self.before = running_instances(&self.config).await;
        infras
    }

    fn region_of(&self, environment: &str) -> String {
        self.regions
            .get(environment)
            .cloned()
            .unwrap_or(REGION.to_owned())
    }

    /// moto's SDK config in the region of `environment`.
    fn config_in(&self, environment: &str) -> SdkConfig {
        let region = aws_config::Region::new(self.region_of(environment));
        self.config.to_builder().region(region).build()
    }

    fn start(&self) -> (Server, Api) {
        let server = server_process::start_with_env(self.dir.path(), &AWS_VARIABLES);
        let token = read_token(&self.dir.path().join(".slipway"));
        let api = Api::at(&server.address, &token);
        (server, api)
    }

    /// Seeds release `number`, published and baked into a Docker image; its id.
    async fn release(&self, number: i64) -> uuid::Uuid {
        let (client, connection) = tokio_postgres::connect(&self.database_url, NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let (build, release) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        client
            .execute(
                "INSERT INTO builds (id, project, number, branch, commit, event, status)
                 VALUES ($1, $2, $3, 'main', 'abc123', 'push', 'passed')",
                &[&build, &self.project, &number],
            )
            .await
            .unwrap();
        let image = format!("slipway-aws-test/{}:v{number}", self.project);
        client
            .execute(
                "WITH r AS (INSERT INTO releases (id, project, number, build_id, commit, status, bake_status, image)
                 VALUES ($1, $2, $3, $4, 'abc123', 'published', 'baked', $5) RETURNING id, image)
                 INSERT INTO release_images (release_id, kind, status, image) SELECT id, 'docker', 'baked', image FROM r",
                &[&release, &self.project, &number, &build, &image],
            )
            .await
            .unwrap();
        release
    }

    /// Records `ami` as the release's AMI in the region, baked.
    async fn record_ami(&self, release: uuid::Uuid, ami: &str) {
        let store = Store::connect(&self.database_url).await.unwrap();
        let record = ImageRecord {
            kind: AMI,
            region: REGION,
            status: "baked",
            reason: None,
            bake_key: None,
            image: Some(ami),
            image_id: Some(ami),
        };
        store.record_release_image(release, &record).await.unwrap();
        store.close();
    }

    /// Pushes `commit` of the project's repository on main to `api`'s server.
    async fn push(&self, api: &Api, commit: &str) {
        let body = push_body(&format!("acme/{}", self.project), "main", commit);
        let response = reqwest::Client::new()
            .post(format!("{}/hooks/bitbucket", api.address()))
            .header("X-Event-Key", "repo:push")
            .header("Content-Type", "application/json")
            .header("X-Hub-Signature", sign(WEBHOOK_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }

    /// Release `version` as the API lists it, once it exists.
    async fn release_of(&self, api: &Api, version: &str) -> Option<Value> {
        let releases = api
            .get(&format!("/projects/{}/releases", self.project))
            .await;
        releases
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == version)
            .cloned()
    }

    /// Release `version` once the bakes of all its images ended (its build runs first).
    async fn wait_for_ami(&self, api: &Api, version: &str) -> Value {
        let deadline = Instant::now() + BAKE_LIMIT;
        loop {
            if let Some(release) = self.release_of(api, version).await {
                let images = release["images"].as_array().unwrap();
                let ended = |image: &Value| {
                    !["queued", "baking"].contains(&image["status"].as_str().unwrap_or(""))
                };
                if !images.is_empty() && images.iter().all(ended) {
                    return release;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{version}'s AMI was not baked within {BAKE_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The bake log of release `version`'s AMI.
    async fn ami_log(&self, api: &Api, version: &str) -> String {
        self.ami_log_in(api, version, REGION).await
    }

    /// The log of release `version`'s AMI in `region` (baked or copied there).
    async fn ami_log_in(&self, api: &Api, version: &str, region: &str) -> String {
        let lines = api
            .get(&format!(
                "/projects/{}/releases/{version}/bake-log?kind=ami&region={region}",
                self.project
            ))
            .await;
        lines
            .as_array()
            .unwrap()
            .iter()
            .map(|l| format!("{}\n", l["line"].as_str().unwrap()))
            .collect()
    }

    fn group(&self, environment: &str, release: &str) -> String {
        format!("{}-{environment}-{release}", self.project)
    }

    /// Runs a client command of the CLI against `api`'s server; (succeeded, stdout, stderr).
    async fn cli(&self, api: &Api, args: &[&str]) -> (bool, String, String) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .args(["--project", &self.project])
            .env("SLIPWAY_SERVER", api.address())
            .env("SLIPWAY_TOKEN", api.token())
            .output()
            .await
            .expect("slipway runs");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (
            output.status.success(),
            text(&output.stdout),
            text(&output.stderr),
        )
    }
}

/// What moto holds of an Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    target_groups: Vec<String>,
    instances: BTreeSet<String>,
}

/// The groups whose name starts with `prefix`, by name.
async fn groups(config: &SdkConfig, prefix: &str) -> Vec<Group> {
    let autoscaling = aws_sdk_autoscaling::Client::new(config);
    let described = autoscaling
        .describe_auto_scaling_groups()
        .send()
        .await
        .unwrap();
    let mut groups: Vec<Group> = described
        .auto_scaling_groups()
        .iter()
        .filter(|g| {
            g.auto_scaling_group_name()
                .unwrap_or("")
                .starts_with(prefix)
        })
        .map(|g| Group {
            name: g.auto_scaling_group_name().unwrap().to_owned(),
            target_groups: g.target_group_arns().to_vec(),
            instances: g
                .instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_owned))
                .collect(),
        })
        .collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    groups
}

async fn group_names(config: &SdkConfig, prefix: &str) -> Vec<String> {
    let groups = groups(config, prefix).await;
    groups.into_iter().map(|g| g.name).collect()
}

/// The group named `name`.
async fn group(config: &SdkConfig, name: &str) -> Group {
    let groups = groups(config, name).await;
    groups
        .into_iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("moto has no group {name}"))
}

/// Instances moto runs (pending or running).
async fn running_instances(config: &SdkConfig) -> BTreeSet<String> {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let described = ec2.describe_instances().send().await.unwrap();
    described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.state().and_then(|s| s.name()).is_some_and(|name| {
                matches!(
                    name,
                    aws_sdk_ec2::types::InstanceStateName::Pending
                        | aws_sdk_ec2::types::InstanceStateName::Running
                )
            })
        })
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

/// The target group the listener forwards to.
async fn forwarded(config: &SdkConfig, infra: &Infra) -> String {
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(config);
    let listeners = elb
        .describe_listeners()
        .listener_arns(&infra.listener_arn)
        .send()
        .await
        .unwrap();
    let action = &listeners.listeners()[0].default_actions()[0];
    action.target_group_arn().unwrap().to_owned()
}

/// The AMI of the launch template's default version.
async fn default_ami(config: &SdkConfig, infra: &Infra) -> String {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let default = ec2
        .describe_launch_template_versions()
        .launch_template_id(&infra.launch_template_id)
        .versions("$Default")
        .send()
        .await
        .unwrap();
    let data = default.launch_template_versions()[0].launch_template_data();
    data.unwrap().image_id().unwrap().to_owned()
}

/// The AMI of each launch template version Slipway made, in version order.
async fn slipway_versions(config: &SdkConfig, infra: &Infra) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_id(&infra.launch_template_id)
        .send()
        .await
        .unwrap();
    let mut made: Vec<(i64, String)> = versions
        .launch_template_versions()
        .iter()
        .filter(|v| {
            v.version_description()
                .unwrap_or("")
                .starts_with("slipway ")
        })
        .map(|v| {
            let data = v.launch_template_data().unwrap();
            (
                v.version_number().unwrap(),
                data.image_id().unwrap().to_owned(),
            )
        })
        .collect();
    made.sort();
    made.into_iter().map(|(_, ami)| ami).collect()
}

/// Waits until `check` holds, for at most `limit`, looking every half second.
async fn eventually<F, Fut>(limit: Duration, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_environments_auto_deploy_promote_roll_back_to_the_warm_group_and_retire() {
    let mut setup = Setup::new().await;
    let infras = setup
        .environments(&["staging", "prod"], "retention = \"20s\"")
        .await;
    let (staging, prod) = (&infras[0], &infras[1]);
    let amis = prod.amis.clone();
    let config = setup.config.clone();
    let name = setup.project.clone();
    let (_server, api) = setup.start();

    // v1 has only a Docker image: nothing an aws environment can run.
    let v1 = setup.release(1).await;
    let promote_v1 = format!("/projects/{name}/environments/prod/promote");
    let (status, body) = api.post(&promote_v1, json!({ "release": "v1" })).await;
    assert_eq!(status, 404, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("release v1 of")
            && error.contains("has no AMI in eu-west-1 baked, which prod deploys")
            && error.contains("its images: docker baked"),
        "{error}"
    );
    assert_eq!(body["images"][0]["kind"], "docker", "{body}");
    // Three rounds of the auto-deploy later, staging still has nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first = api.environment(&name, "staging").await;
    assert_eq!(first["deployments"], json!([]), "{first:#}");
    assert_eq!(group_names(&config, &name).await, Vec::<String>::new());

    // Its AMI baked: the auto-deploy takes v1 to staging, on the idle target group.
    setup.record_ami(v1, &amis[0]).await;
    api.wait_live(&name, "staging", "v1").await;
    let staging_v1 = group(&config, &setup.group("staging", "v1")).await;
    assert_eq!(staging_v1.instances.len(), 2);
    assert_eq!(
        staging_v1.target_groups,
        [forwarded(&config, staging).await]
    );
    assert_eq!(default_ami(&config, staging).await, amis[0]);

    // `slipway promote --env prod` takes what staging runs.
    let (ok, out, err) = setup.cli(&api, &["promote", "--env", "prod"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("v1 is live in prod"), "{out}");
    let prod_v1 = group(&config, &setup.group("prod", "v1")).await;
    assert_eq!(prod_v1.target_groups, [forwarded(&config, prod).await]);
    assert_eq!(default_ami(&config, prod).await, amis[0]);

    // v2: to staging by itself, then promoted; v1's group stays warm in prod.
    let v2 = setup.release(2).await;
    setup.record_ami(v2, &amis[1]).await;
    api.wait_live(&name, "staging", "v2").await;
    let (ok, out, err) = setup.cli(&api, &["promote", "--env", "prod"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("v2 is live in prod"), "{out}");
    let prod_v2 = group(&config, &setup.group("prod", "v2")).await;
    assert_eq!(prod_v2.target_groups, [forwarded(&config, prod).await]);
    assert_ne!(prod_v2.target_groups, prod_v1.target_groups);
    assert_eq!(default_ami(&config, prod).await, amis[1]);
    assert_eq!(
        group_names(&config, &format!("{name}-prod")).await,
        [setup.group("prod", "v1"), setup.group("prod", "v2")]
    );

    // Rollback: the listener back to v1's warm group, and not one instance launched.
    let instances = running_instances(&config).await;
    let started = Instant::now();
    let (ok, out, err) = setup
        .cli(&api, &["rollback", "--env", "prod", "--to", "v1"])
        .await;
    assert!(ok, "{out}\n{err}");
    let rollback_seconds = started.elapsed().as_secs_f64();
    assert!(out.contains("v1 serves prod"), "{out}");
    assert_eq!(forwarded(&config, prod).await, prod_v1.target_groups[0]);
    assert_eq!(running_instances(&config).await, instances);
    assert_eq!(
        group(&config, &setup.group("prod", "v1")).await.instances,
        prod_v1.instances
    );
    assert_eq!(default_ami(&config, prod).await, amis[0]);
    let environment = api.environment(&name, "prod").await;
    assert_eq!(
        environment["deployments"][0]["kind"], "switch_back",
        "{environment:#}"
    );
    eprintln!("rollback to the warm group through the CLI took {rollback_seconds:.1} s");

    // The status and the API show the groups, their instances' target health, the launch
    // template version and the AMI.
    let aws = &environment["aws"];
    assert_eq!(aws["launch_template_id"], prod.launch_template_id.as_str());
    let serving = &aws["fleets"][0];
    assert_eq!(serving["auto_scaling_group"], setup.group("prod", "v1"));
    assert_eq!(serving["serving"], true, "{aws:#}");
    assert_eq!(serving["ami"], amis[0].as_str());
    assert!(serving["launch_template_version"].is_string(), "{aws:#}");
    let checks = serving["instances"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{aws:#}");
    assert!(checks.iter().all(|c| c["state"] == "healthy"), "{aws:#}");
    assert_eq!(aws["fleets"][1]["release"], "v2", "{aws:#}");
    assert_eq!(aws["fleets"][1]["serving"], false, "{aws:#}");
    let (ok, out, err) = setup.cli(&api, &["status"]).await;
    assert!(ok, "{out}\n{err}");
    let v1_group = setup.group("prod", "v1");
    assert!(
        out.contains(&format!(
            "auto scaling group {v1_group} (v1, serving): launch template version {}, AMI {}",
            serving["launch_template_version"].as_str().unwrap(),
            amis[0]
        )),
        "{out}"
    );
    for instance in &prod_v1.instances {
        assert!(out.contains(&format!("    {instance} healthy")), "{out}");
    }
    assert!(
        out.contains(&format!("launch template {}", prod.launch_template_id)),
        "{out}"
    );

    // After the retention window the warm groups are retired: only the live ones remain,
    // and nothing runs or is registered that they do not account for.
    let live = [setup.group("prod", "v1"), setup.group("staging", "v2")];
    eventually(
        Duration::from_secs(60),
        "the warm groups retire",
        || async { group_names(&config, &name).await == live },
    )
    .await;
    let mut accounted = setup.before.clone();
    for infra in [staging, prod] {
        let mut serving = BTreeSet::new();
        for group in groups(&config, &name).await {
            if group
                .target_groups
                .contains(&forwarded(&config, infra).await)
            {
                serving = group.instances.clone();
            }
        }
        accounted.extend(serving.iter().cloned());
        let live_group = forwarded(&config, infra).await;
        assert_eq!(registered(&config, &live_group).await, serving);
        let idle = infra.target_groups.iter().find(|t| **t != live_group);
        assert_eq!(registered(&config, idle.unwrap()).await, BTreeSet::new());
    }
    assert_eq!(running_instances(&config).await, accounted);
    // One launch template version per AMI: the rollback reused v1's.
    assert_eq!(slipway_versions(&config, prod).await, amis);
    assert_eq!(slipway_versions(&config, staging).await, amis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_launch_and_switch_on_aws_then_restart_leaves_no_orphan_in_moto() {
    let mut setup = Setup::new().await;
    let infras = setup.environments(&["prod"], "retention = \"0s\"").await;
    let prod = &infras[0];
    let amis = prod.amis.clone();
    let config = setup.config.clone();
    let name = setup.project.clone();

    let (first, api) = setup.start();
    let v1 = setup.release(1).await;
    setup.record_ami(v1, &amis[0]).await;
    api.wait_live(&name, "prod", "v1").await;
    let v2 = setup.release(2).await;
    setup.record_ami(v2, &amis[1]).await;
    api.wait_for(&name, "prod", Duration::from_secs(30), |e| {
        e["deployments"][0]["release"] == "v2"
            && ["launching", "waiting_healthy"]
                .contains(&e["deployments"][0]["state"].as_str().unwrap_or(""))
    })
    .await;
    first.kill_9(); // kill -9 with v2's group launched (or launching), traffic still on v1

    let restarted = Instant::now();
    let (_second, api) = setup.start();
    let environment = api
        .wait_for(&name, "prod", Duration::from_secs(90), |e| {
            let state = e["deployments"][0]["state"].as_str().unwrap_or("");
            ["succeeded", "rolled_back", "failed"].contains(&state) && e["busy"].is_null()
        })
        .await;
    eprintln!(
        "after kill -9 the next start finished the deployment in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(
        environment["deployments"][0]["state"], "succeeded",
        "{environment:#}"
    );
    assert_eq!(environment["live"]["release"], "v2", "{environment:#}");
    assert_eq!(environment["live"]["image"], amis[1].as_str());

    // Only v2's group, serving; its instances the only ones Slipway runs and registers.
    let v2_group = setup.group("prod", "v2");
    eventually(Duration::from_secs(30), "v1's group retires", || async {
        group_names(&config, &name).await == [v2_group.clone()]
    })
    .await;
    let live = group(&config, &v2_group).await;
    assert_eq!(live.instances.len(), 2);
    assert_eq!(live.target_groups, [forwarded(&config, prod).await]);
    assert_eq!(
        registered(&config, &live.target_groups[0]).await,
        live.instances
    );
    let idle = prod
        .target_groups
        .iter()
        .find(|t| **t != live.target_groups[0]);
    assert_eq!(registered(&config, idle.unwrap()).await, BTreeSet::new());
    let mut accounted = setup.before.clone();
    accounted.extend(live.instances.iter().cloned());
    assert_eq!(running_instances(&config).await, accounted);
    assert_eq!(default_ami(&config, prod).await, amis[1]);
    assert_eq!(slipway_versions(&config, prod).await, amis);
}

/// An AMI's tags, and its snapshots; `None` once it is deregistered.
async fn ami(config: &SdkConfig, id: &str) -> Option<(BTreeMap<String, String>, Vec<String>)> {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let described = ec2.describe_images().image_ids(id).send().await;
    let described = match described {
        Ok(described) => described,
        Err(e) if format!("{e:?}").contains("InvalidAMIID.NotFound") => return None,
        Err(e) => panic!("DescribeImages: {e:?}"),
    };
    let image = described.images().first()?;
    let tags = image
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect();
    let snapshots = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|ebs| ebs.snapshot_id()))
        .map(str::to_owned)
        .collect();
    Some((tags, snapshots))
}

async fn snapshot_exists(config: &SdkConfig, id: &str) -> bool {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let described = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    described
        .snapshots()
        .iter()
        .any(|s| s.snapshot_id() == Some(id))
}

/// What carries the bake's id in moto: AMIs, instances not terminated, the key pair and the
/// security group named after it.
async fn bake_resources(config: &SdkConfig, bake_id: &str) -> (Vec<String>, Vec<String>, usize) {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let by_tag = || {
        aws_sdk_ec2::types::Filter::builder()
            .name("tag:slipway_bake")
            .values(bake_id)
            .build()
    };
    let images = ec2
        .describe_images()
        .owners("self")
        .filters(by_tag())
        .send()
        .await
        .unwrap();
    let images = images
        .images()
        .iter()
        .filter_map(|i| i.image_id().map(str::to_owned))
        .collect();
    let instances = ec2
        .describe_instances()
        .filters(by_tag())
        .send()
        .await
        .unwrap();
    let instances = instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.state().and_then(|s| s.name())
                != Some(&aws_sdk_ec2::types::InstanceStateName::Terminated)
        })
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    let name = format!("slipway-bake-{bake_id}");
    let keys = ec2.describe_key_pairs().send().await.unwrap();
    let groups = ec2.describe_security_groups().send().await.unwrap();
    let named = keys
        .key_pairs()
        .iter()
        .filter(|k| k.key_name() == Some(&name))
        .count()
        + groups
            .security_groups()
            .iter()
            .filter(|g| g.group_name() == Some(&name))
            .count();
    (images, instances, named)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_baked_into_an_ami_deployed_to_aws_and_its_ami_retired_by_retention() {
    let repo = hello_repository();
    let mut setup = Setup::new().await;
    setup.clone_url = format!("file://{}", repo.path().display());
    setup.ami_extra = "keep_releases = 1\n".to_owned();
    let infras = setup.environments(&["prod"], "retention = \"0s\"").await;
    let prod = &infras[0];
    let config = setup.config.clone();
    let name = setup.project.clone();
    let (server, api) = setup.start();

    // A push: the build publishes the package, the server bakes the release's AMI in moto.
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    let started = Instant::now();
    setup.push(&api, &first).await;
    let v1 = setup.wait_for_ami(&api, "v1").await;
    eprintln!(
        "push to baked AMI took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let image = &v1["images"][0];
    assert_eq!(image["kind"], "ami", "{v1:#}");
    assert_eq!(image["region"], REGION, "{v1:#}");
    assert_eq!(image["status"], "baked", "{v1:#}");
    let ami1 = image["id"].as_str().unwrap().to_owned();
    let key = image["bake_key"].as_str().unwrap().to_owned();
    assert_eq!(
        v1["images"].as_array().unwrap().len(),
        1,
        "no Docker image: {v1:#}"
    );
    // With no Docker image, the release's image is its AMI.
    assert_eq!(v1["image"], ami1.as_str(), "{v1:#}");
    assert_eq!(v1["bake_status"], "baked", "{v1:#}");
    assert_eq!(key.len(), 64, "{v1:#}");
    let (tags, snapshots) = ami(&config, &ami1).await.expect("the AMI exists");
    assert_eq!(tags["project"], name);
    assert_eq!(tags["release"], "v1");
    assert_eq!(tags["commit"], first);
    assert_eq!(tags["bake_key"], key);
    assert_eq!(tags["slipway_bake"], v1["bake_id"].as_str().unwrap());
    assert_eq!(tags["Name"], format!("{name}-v1"));
    assert!(!snapshots.is_empty());
    let log = setup.ami_log(&api, "v1").await;
    assert!(
        log.contains(&format!(
            "==> slipway: AMI bake in {REGION} from {SOURCE_AMI}"
        )),
        "{log}"
    );
    assert!(log.contains("amazon-ebs"), "{log}");
    let (_, instances, named) = bake_resources(&config, v1["bake_id"].as_str().unwrap()).await;
    assert_eq!(
        (instances, named),
        (vec![], 0),
        "the bake left nothing running"
    );

    // The server deploys it to the aws environment by itself.
    let environment = api.wait_live(&name, "prod", "v1").await;
    assert_eq!(environment["live"]["image"], ami1.as_str());
    assert_eq!(default_ami(&config, prod).await, ami1);

    // A second push: v2's AMI, deployed; v1's AMI, still live while v2 baked, stays.
    std::fs::write(repo.path().join("CHANGES"), "v2\n").unwrap();
    let second = commit_all(repo.path(), "v2");
    setup.push(&api, &second).await;
    let v2 = setup.wait_for_ami(&api, "v2").await;
    assert_eq!(v2["images"][0]["status"], "baked", "{v2:#}");
    let ami2 = v2["images"][0]["id"].as_str().unwrap().to_owned();
    assert_ne!(ami2, ami1);
    assert_ne!(v2["images"][0]["bake_key"], key.as_str());
    api.wait_live(&name, "prod", "v2").await;
    let v2_group = setup.group("prod", "v2");
    eventually(Duration::from_secs(60), "v1's group retires", || async {
        group_names(&config, &name).await == [v2_group.clone()]
    })
    .await;
    assert!(
        ami(&config, &ami1).await.is_some(),
        "v1's AMI was live at v2's bake"
    );

    // The next start's retention: no instance runs v1's AMI and keep_releases = 1, so it is
    // deregistered with its snapshots, and its release says so.
    drop(server);
    let (_server, api) = setup.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    let v1 = loop {
        let v1 = setup.release_of(&api, "v1").await.unwrap();
        if v1["images"][0]["status"] == "deregistered" {
            break v1;
        }
        assert!(Instant::now() < deadline, "v1's AMI not retired: {v1:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let reason = v1["images"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("keep_releases"), "{reason}");
    assert!(ami(&config, &ami1).await.is_none());
    for snapshot in &snapshots {
        assert!(!snapshot_exists(&config, snapshot).await, "{snapshot}");
    }
    assert!(ami(&config, &ami2).await.is_some(), "the live AMI stays");

    // Rolling back to it is refused, saying why.
    let (ok, out, err) = setup
        .cli(&api, &["rollback", "--env", "prod", "--to", "v1"])
        .await;
    assert!(!ok, "{out}");
    assert!(
        err.contains("deregistered by retention") && err.contains("deployable releases: v2"),
        "{err}"
    );
}

/// The process groups of the Packer runs with this bake id that still run.
fn packer_groups(bake_id: &str) -> BTreeSet<i32> {
    let wanted = format!("bake_id={bake_id}");
    processes()
        .into_iter()
        .filter(|(pid, _)| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"packer"))
                && args.contains(&wanted.as_bytes())
        })
        .map(|(_, group)| group)
        .collect()
}

/// Whether a process of the group still runs (not a zombie: a killed process whose parent
/// died stays one until init reaps it).
fn group_alive(group: i32) -> bool {
    processes().iter().any(|&(_, g)| g == group)
}

/// The processes that run, not zombies, with their process group.
fn processes() -> Vec<(i32, i32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        if let Some(group) = fields.get(2).and_then(|g| g.parse().ok()) {
            found.push((pid, group));
        }
    }
    found
}

/// Stops (`STOP`) or resumes (`CONT`) the moto server listening at `endpoint`.
fn signal_moto(endpoint: &str, signal: &str) {
    let port = endpoint.rsplit(':').next().unwrap();
    let status = std::process::Command::new("pkill")
        .args([
            &format!("-{signal}"),
            "-f",
            &format!("moto_server -H 127.0.0.1 -p {port}$"),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "pkill -{signal} moto on port {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_ami_bake_then_restart_bakes_it_again_and_leaves_nothing_behind() {
    let repo = hello_repository();
    let mut setup = Setup::new().await;
    setup.clone_url = format!("file://{}", repo.path().display());
    setup.environments(&["prod"], "").await;
    // AWS stops answering as the first Packer run starts (its `packer` stops moto, then runs
    // Packer): the bake hangs mid-way, as a long one would, however fast moto is.
    let port = setup.moto.endpoint.rsplit(':').next().unwrap().to_owned();
    let wrapper = setup.dir.path().join("stop-moto/packer");
    std::fs::create_dir_all(wrapper.parent().unwrap()).unwrap();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = build ] && mkdir \"$0.once\" 2>/dev/null; then pkill -STOP -f 'moto_server -H 127.0.0.1 -p {port}$'; fi\nexec packer \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = setup.dir.path().join("slipway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("packer = \"{}\"\n{text}", wrapper.display())).unwrap();
    let config = setup.config.clone();
    let name = setup.project.clone();
    let (first, api) = setup.start();
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    setup.push(&api, &commit).await;

    let deadline = Instant::now() + BAKE_LIMIT;
    let bake_id = loop {
        let release = setup.release_of(&api, "v1").await;
        if let Some(id) = release.as_ref().and_then(|r| r["bake_id"].as_str()) {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "v1's AMI was never queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let packer = loop {
        let groups = packer_groups(&bake_id);
        if !groups.is_empty() {
            break groups;
        }
        assert!(Instant::now() < deadline, "Packer never ran the AMI bake");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Packer's last line before its first AWS call, which hangs: from then on it writes
    // nothing (a write to the killed server's pipe would end it) and waits on AWS.
    while !setup
        .ami_log(&api, "v1")
        .await
        .contains("Prevalidating AMI Name")
    {
        assert!(Instant::now() < deadline, "Packer never called AWS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v1 = setup.release_of(&api, "v1").await.unwrap();
    assert_eq!(v1["images"][0]["status"], "baking", "{v1:#}");
    first.kill_9(); // kill -9
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        packer.iter().any(|&group| group_alive(group)),
        "Packer outlives the killed server"
    );
    signal_moto(&setup.moto.endpoint, "CONT");

    // The next start stops that Packer run, reaps what it made and bakes the AMI again.
    let (_second, api) = setup.start();
    let v1 = setup.wait_for_ami(&api, "v1").await;
    assert_eq!(v1["images"][0]["status"], "baked", "{v1:#}");
    let stale: Vec<i32> = packer.iter().copied().filter(|&g| group_alive(g)).collect();
    assert_eq!(stale, Vec::<i32>::new(), "the first Packer run is gone");
    let log = setup.ami_log(&api, "v1").await;
    assert!(log.contains("baking again"), "{log}");
    let ami_id = v1["images"][0]["id"].as_str().unwrap().to_owned();
    let (images, instances, named) = bake_resources(&config, &bake_id).await;
    assert_eq!(images, vec![ami_id.clone()], "one AMI, the recorded one");
    assert_eq!(instances, Vec::<String>::new());
    assert_eq!(named, 0, "no key pair or security group left");
    let environment = api.wait_live(&name, "prod", "v1").await;
    assert_eq!(environment["live"]["image"], ami_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_in_another_region_runs_a_copy_of_the_baked_ami() {
    let repo = hello_repository();
    let mut setup = Setup::new().await;
    setup.clone_url = format!("file://{}", repo.path().display());
    setup
        .regions
        .insert("prod-us".to_owned(), "us-east-1".to_owned());
    let infras = setup.environments(&["prod", "prod-us"], "").await;
    let us = setup.config_in("prod-us");
    let name = setup.project.clone();
    let (_server, api) = setup.start();

    // A push: v1 is baked into an AMI in eu-west-1, then copied to us-east-1.
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    setup.push(&api, &commit).await;
    let v1 = setup.wait_for_ami(&api, "v1").await;
    let images: Vec<(&str, &str, &str)> = v1["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["region"].as_str().unwrap(),
                i["status"].as_str().unwrap(),
                i["copy_of"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        images,
        [
            ("eu-west-1", "baked", "-"),
            ("us-east-1", "baked", "eu-west-1")
        ],
        "{v1:#}"
    );
    let (baked, copy) = (
        v1["images"][0]["id"].as_str().unwrap(),
        v1["images"][1]["id"].as_str().unwrap(),
    );
    assert_eq!(
        v1["image"], baked,
        "the release names the baked AMI: {v1:#}"
    );
    assert_eq!(v1["images"][1]["bake_key"], v1["images"][0]["bake_key"]);
    let (tags, snapshots) = ami(&us, copy).await.expect("the copy is in us-east-1");
    for (key, value) in [
        ("project", name.as_str()),
        ("release", "v1"),
        ("commit", commit.as_str()),
        ("bake_key", v1["images"][0]["bake_key"].as_str().unwrap()),
        ("slipway_bake", v1["bake_id"].as_str().unwrap()),
    ] {
        assert_eq!(
            tags.get(key).map(String::as_str),
            Some(value),
            "{key}: {tags:?}"
        );
    }
    eprintln!("the copy {copy} has snapshots {snapshots:?}");
    assert!(
        ami(&setup.config, copy).await.is_none(),
        "the copy is not in eu-west-1"
    );
    let log = setup.ami_log_in(&api, "v1", "us-east-1").await;
    assert!(
        log.contains(&format!("copying {baked} from eu-west-1 to us-east-1")),
        "{log}"
    );

    // prod (eu-west-1) got v1 by itself; promoted, prod-us (us-east-1) runs the copy.
    api.wait_live(&name, "prod", "v1").await;
    assert_eq!(default_ami(&setup.config, &infras[0]).await, baked);
    let (ok, out, err) = setup.cli(&api, &["promote", "--env", "prod-us"]).await;
    assert!(ok, "{out}\n{err}");
    let environment = api.wait_live(&name, "prod-us", "v1").await;
    assert_eq!(environment["live"]["image"], copy, "{environment:#}");
    assert_eq!(default_ami(&us, &infras[1]).await, copy);
    let us_v1 = group(&us, &setup.group("prod-us", "v1")).await;
    assert_eq!(us_v1.target_groups, [forwarded(&us, &infras[1]).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ami_bake_fails_its_copies_saying_why() {
    let repo = hello_repository();
    let mut setup = Setup::new().await;
    setup.clone_url = format!("file://{}", repo.path().display());
    setup.source_ami = "ami-00000000".to_owned();
    setup
        .regions
        .insert("prod-us".to_owned(), "us-east-1".to_owned());
    setup.environments(&["prod", "prod-us"], "").await;
    let us = setup.config_in("prod-us");
    let (_server, api) = setup.start();
    setup
        .push(&api, &git(repo.path(), &["rev-parse", "HEAD"]))
        .await;
    let v1 = setup.wait_for_ami(&api, "v1").await;
    let outcome: Vec<(&str, &str)> = v1["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["status"].as_str().unwrap(), i["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(outcome.len(), 2, "{v1:#}");
    assert_eq!(outcome[0].0, "failed");
    assert!(outcome[0].1.contains("ami-00000000"), "{v1:#}");
    assert_eq!(
        outcome[1],
        (
            "failed",
            "the AMI in eu-west-1 is failed: nothing to copy to us-east-1"
        )
    );
    let ec2 = aws_sdk_ec2::Client::new(&us);
    let project = aws_sdk_ec2::types::Filter::builder()
        .name("tag:project")
        .values(&setup.project)
        .build();
    let copied = ec2.describe_images().filters(project).send().await.unwrap();
    assert!(copied.images().is_empty(), "nothing was copied: {copied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_ami_is_made_but_before_it_is_recorded_then_restart_reuses_it() {
    let repo = hello_repository();
    let mut setup = Setup::new().await;
    setup.clone_url = format!("file://{}", repo.path().display());
    // The repository's URL is in the bake key; without one it is the server's own address,
    // whose port changes at the restart.
    setup.ami_extra = "apt_url = \"http://slipway.example.com/apt/\"\n".to_owned();
    setup.environments(&["prod"], "").await;
    let config = setup.config.clone();
    let name = setup.project.clone();
    let (first, api) = setup.start();
    // The server's database holds the update that records the AMI as baked, so the server is
    // killed after Packer made the AMI and before Slipway recorded it.
    let hold = HeldBakeRecords::install(&setup.database_url, "ami").await;
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    setup.push(&api, &commit).await;
    hold.wait(BAKE_LIMIT).await;
    let v1 = setup.release_of(&api, "v1").await.unwrap();
    assert_eq!(v1["images"][0]["status"], "baking", "{v1:#}");
    let bake_id = v1["bake_id"].as_str().unwrap().to_owned();
    let (made, instances, named) = bake_resources(&config, &bake_id).await;
    assert_eq!(made.len(), 1, "Packer made the AMI: {made:?}");
    assert_eq!((instances.len(), named), (0, 0), "Packer cleaned up");
    assert!(packer_groups(&bake_id).is_empty(), "Packer has ended");
    let key = v1["images"][0]["bake_key"].as_str().unwrap().to_owned();
    first.kill_9();
    hold.release().await;

    // The next start keeps the finished AMI and the re-run records it instead of baking.
    let (_second, api) = setup.start();
    let v1 = setup.wait_for_ami(&api, "v1").await;
    assert_eq!(v1["images"][0]["status"], "baked", "{v1:#}");
    assert_eq!(v1["images"][0]["id"], made[0].as_str(), "{v1:#}");
    assert_eq!(v1["images"][0]["bake_key"], key.as_str(), "{v1:#}");
    let log = setup.ami_log(&api, "v1").await;
    assert!(log.contains("baking again"), "{log}");
    assert!(log.contains(&format!("reusing {}", made[0])), "{log}");
    assert!(!log.contains("amazon-ebs"), "Packer ran again: {log}");
    assert_eq!(
        bake_resources(&config, &bake_id).await,
        (made.clone(), Vec::new(), 0),
        "nothing but the AMI"
    );
    let environment = api.wait_live(&name, "prod", "v1").await;
    assert_eq!(environment["live"]["image"], made[0].as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_pushes_reach_dev_on_docker_and_are_promoted_and_rolled_back_on_aws() {
    let repo = hello_repository();
    let mut setup = Setup::new().await;
    setup.clone_url = format!("file://{}", repo.path().display());
    let port = free_port();
    setup.docker_dev = Some(port);
    let infras = setup.environments(&["prod"], "retention = \"20s\"").await;
    let prod = &infras[0];
    let config = setup.config.clone();
    let name = setup.project.clone();
    // Removes dev's containers and network, and the Docker images baked, when the test ends.
    let _dev = Project {
        name: name.clone(),
        ports: vec![port],
    };
    let mut cleanup = Cleanup::new();
    let (_server, api) = setup.start();

    // A push: v1 is baked into a Docker image and an AMI, and dev (docker) serves it.
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    setup.push(&api, &first).await;
    let v1 = setup.wait_for_ami(&api, "v1").await;
    cleanup
        .bake_ids
        .push(v1["bake_id"].as_str().unwrap().to_owned());
    let kinds: Vec<(&str, &str)> = v1["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["kind"].as_str().unwrap(), i["status"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("docker", "baked"), ("ami", "baked")], "{v1:#}");
    let ami1 = v1["images"][1]["id"].as_str().unwrap().to_owned();
    // The release's image keeps naming the Docker image.
    assert_eq!(v1["image"], v1["images"][0]["name"], "{v1:#}");
    let (tags, _) = ami(&config, &ami1).await.expect("v1's AMI is in moto");
    assert_eq!(
        (tags["release"].as_str(), tags["commit"].as_str()),
        ("v1", first.as_str())
    );
    api.wait_live(&name, "dev", "v1").await;
    let answer = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // Promoted to prod (aws): v1's group behind the listener, its AMI in the template.
    let (ok, out, err) = setup.cli(&api, &["promote", "--env", "prod"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("v1 is live in prod"), "{out}");
    let prod_v1 = group(&config, &setup.group("prod", "v1")).await;
    assert_eq!(prod_v1.target_groups, [forwarded(&config, prod).await]);
    assert_eq!(default_ami(&config, prod).await, ami1);

    // A second push reaches dev by itself, and is promoted.
    std::fs::write(repo.path().join("CHANGES"), "v2\n").unwrap();
    let second = commit_all(repo.path(), "v2");
    setup.push(&api, &second).await;
    let v2 = setup.wait_for_ami(&api, "v2").await;
    cleanup
        .bake_ids
        .push(v2["bake_id"].as_str().unwrap().to_owned());
    assert_eq!(v2["images"][1]["status"], "baked", "{v2:#}");
    let ami2 = v2["images"][1]["id"].as_str().unwrap().to_owned();
    api.wait_live(&name, "dev", "v2").await;
    let (ok, out, err) = setup.cli(&api, &["promote", "--env", "prod"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("v2 is live in prod"), "{out}");
    assert_eq!(default_ami(&config, prod).await, ami2);

    // Rollback on aws: the listener back to v1's warm group, no instance launched.
    let instances = running_instances(&config).await;
    let (ok, out, err) = setup
        .cli(&api, &["rollback", "--env", "prod", "--to", "v1"])
        .await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("v1 serves prod"), "{out}");
    assert_eq!(forwarded(&config, prod).await, prod_v1.target_groups[0]);
    assert_eq!(running_instances(&config).await, instances);
    assert_eq!(default_ami(&config, prod).await, ami1);

    // After the retention window v2's group in prod is gone; the status shows both targets.
    let v1_group = setup.group("prod", "v1");
    eventually(
        Duration::from_secs(60),
        "v2's prod group retires",
        || async { group_names(&config, &format!("{name}-prod")).await == [v1_group.clone()] },
    )
    .await;
    let (ok, out, err) = setup.cli(&api, &["status"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(&format!("auto scaling group {v1_group} (v1, serving)"))
            && out.contains(&format!("AMI {ami1}")),
        "{out}"
    );
    assert!(out.contains("dev") && out.contains("v2"), "{out}");
}
