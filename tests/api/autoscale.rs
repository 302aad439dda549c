//! The autoscaler of build agents: its AWS provider against an Auto Scaling group in moto
//! (the real binary as the server, for the SDK to read moto's dummy keys from its
//! environment, with agents simulated through the agent API), and the local provider
//! starting real `slipway agent` processes that run builds on the host's dockerd.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_ec2::types::RequestLaunchTemplateData;
use serde_json::{json, Value};
use slipway::autoscale::aws::AwsProvider;
use slipway::autoscale::Provider;

use crate::agents::{agent_token, agents};
use crate::aws_deploy::moto::{Moto, REGION};
use crate::aws_deploy::AWS_VARIABLES;
use crate::builds::{git, hello_config, hello_repository, push, push_queued, wait_for_build};
use crate::helpers::{read_token, test_database, TestApp};

const WEBHOOK_SECRET: &str = "hello-secret";

/// An Auto Scaling group named `name` in moto, empty, of at most `max` instances, launched
/// from a template of an AMI moto lists.
async fn agent_group(config: &SdkConfig, name: &str, max: i32) {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let images = ec2.describe_images().owners("amazon").send().await.unwrap();
    let image = images.images()[0].image_id().unwrap().to_owned();
    let template = ec2
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(image)
                .instance_type("t3.small".into())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let template_id = template.launch_template().unwrap().launch_template_id();
    aws_sdk_autoscaling::Client::new(config)
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_id(template_id.unwrap())
                .build(),
        )
        .min_size(0)
        .max_size(max)
        .desired_capacity(0)
        .availability_zones(format!("{REGION}a"))
        .send()
        .await
        .unwrap();
}

/// The group's desired capacity and its instances (id, protected), as moto has them.
async fn group(config: &SdkConfig, name: &str) -> (i32, Vec<(String, bool)>) {
    let described = aws_sdk_autoscaling::Client::new(config)
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .unwrap();
    let group = &described.auto_scaling_groups()[0];
    let instances = group
        .instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap().to_owned(),
                i.protected_from_scale_in().unwrap_or(false),
            )
        })
        .collect();
    (group.desired_capacity().unwrap(), instances)
}

/// The EC2 state of each of `ids` (`running`, `terminated`, ...).
async fn states(config: &SdkConfig, ids: &[String]) -> Vec<String> {
    let described = aws_sdk_ec2::Client::new(config)
        .describe_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
        .unwrap();
    let mut found: Vec<(String, String)> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap().to_owned(),
                i.state().unwrap().name().unwrap().as_str().to_owned(),
            )
        })
        .collect();
    found.sort_by_key(|(id, _)| ids.iter().position(|i| i == id));
    found.into_iter().map(|(_, state)| state).collect()
}

/// Polls `check` every 250 ms until it returns `Some`, panicking with `what` after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An agent simulated through the agent API: registered with an instance id, heartbeating
/// every second in the background with the build it holds.
struct SimulatedAgent {
    name: String,
    instance: String,
    credential: String,
    build: std::sync::Arc<std::sync::Mutex<Option<(String, i64)>>>,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl SimulatedAgent {
    async fn register(address: &str, token: &str, name: &str, instance: &str) -> SimulatedAgent {
        let http = reqwest::Client::new();
        let registered: Value = http
            .post(format!("{address}/api/v1/agents"))
            .bearer_auth(token)
            .json(
                &json!({"name": name, "capacity": 2, "version": "test", "host": "moto",
                          "instance_id": instance}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let credential = registered["credential"].as_str().unwrap().to_owned();
        let build = std::sync::Arc::new(std::sync::Mutex::new(None::<(String, i64)>));
        let (url, held, key) = (
            format!("{address}/agent/v1/heartbeat"),
            build.clone(),
            credential.clone(),
        );
        let heartbeats = tokio::spawn(async move {
            loop {
                let running: Vec<Value> = held
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(id, attempt)| json!({"id": id, "attempt": attempt}))
                    .collect();
                let _ = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"running": running, "draining": false}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        SimulatedAgent {
            name: name.to_owned(),
            instance: instance.to_owned(),
            credential,
            build,
            heartbeats,
        }
    }

    async fn post(&self, address: &str, path: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{address}/agent/v1{path}"))
            .bearer_auth(&self.credential)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Leases the oldest queued build and confirms it; it is then heartbeaten as running.
    async fn take_build(&self, address: &str) -> i64 {
        let lease: Value = self
            .post(address, "/lease", json!({}))
            .await
            .json()
            .await
            .unwrap();
        let (id, attempt) = (
            lease["id"].as_str().unwrap(),
            lease["attempt"].as_i64().unwrap(),
        );
        let confirmed = self
            .post(
                address,
                &format!("/builds/{id}/confirm"),
                json!({"attempt": attempt}),
            )
            .await;
        assert_eq!(confirmed.status(), 204);
        *self.build.lock().unwrap() = Some((id.to_owned(), attempt));
        lease["number"].as_i64().unwrap()
    }

    async fn finish_build(&self, address: &str) {
        let (id, attempt) = self.build.lock().unwrap().take().unwrap();
        let finished = self
            .post(
                address,
                &format!("/builds/{id}/finish"),
                json!({"attempt": attempt, "status": "failed", "reason": "simulated"}),
            )
            .await;
        assert_eq!(finished.status(), 204);
    }

    /// What an agent does once drained: says it stopped, and heartbeats no more.
    async fn stop(&self, address: &str) {
        self.heartbeats.abort();
        assert_eq!(self.post(address, "/stop", json!({})).await.status(), 204);
    }
}

impl Drop for SimulatedAgent {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

/// The state the agents API gives each agent, by name.
async fn agent_states(address: &str, token: &str) -> Vec<(String, String)> {
    let listed: Value = reqwest::Client::new()
        .get(format!("{address}/api/v1/agents"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

// Multi-threaded: simulated agents heartbeat while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_queued_builds_grow_the_group_to_five_and_idle_agents_go_but_never_a_busy_one() {
    let started = Instant::now();
    let moto = Moto::start().await;
    let config = moto.config().await;
    agent_group(&config, "agents", 8).await;
    let repo = hello_repository();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slipway.toml"),
        format!(
            "database_url = \"{}\"\nmax_concurrent_builds = 0\n[autoscale]\nprovider = \"aws\"\ngroup = \"agents\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\ncapacity_per_agent = 2\nmax_agents = 8\nidle_seconds = 2\ninterval_seconds = 1\nregister_seconds = 120\n{}",
            test_database(),
            moto.endpoint,
            hello_config(repo.path())
        ),
    )
    .unwrap();
    let server = crate::server_process::start_with_env(dir.path(), &AWS_VARIABLES);
    let address = server.address.clone();
    let token = read_token(&dir.path().join(".slipway"));

    let head = git(repo.path(), &["rev-parse", "HEAD"]);
    let mut numbers = Vec::new();
    for _ in 0..10 {
        numbers.push(push_queued(&address, ("acme/hello", WEBHOOK_SECRET), "main", &head).await);
    }
    // 10 builds, 2 per agent: 5 instances, each protected from the group's scale-in.
    let instances = eventually(
        Duration::from_secs(30),
        "five protected instances",
        || async {
            let (desired, instances) = group(&config, "agents").await;
            (desired == 5 && instances.len() == 5 && instances.iter().all(|(_, p)| *p))
                .then(|| instances.into_iter().map(|(id, _)| id).collect::<Vec<_>>())
        },
    )
    .await;
    println!("grown to 5 after {:?}", started.elapsed());

    // An agent on each; the first takes a build and keeps it, the others idle.
    let mut simulated = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        simulated.push(
            SimulatedAgent::register(&address, &token, &format!("agent-{i}"), instance).await,
        );
    }
    let busy = &simulated[0];
    let held = busy.take_build(&address).await;
    for number in numbers.iter().filter(|n| **n != held) {
        let cancelled = reqwest::Client::new()
            .post(format!(
                "{address}/api/v1/projects/hello/builds/{number}/cancel"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 200);
    }

    // One build runs: one agent is enough. The four idle ones drain; the busy one does not.
    let idle: Vec<&SimulatedAgent> = simulated[1..].iter().collect();
    eventually(
        Duration::from_secs(20),
        "the idle agents draining",
        || async {
            let states = agent_states(&address, &token).await;
            let state_of = |name: &str| states.iter().find(|(n, _)| n == name).unwrap().1.clone();
            assert_eq!(state_of(&busy.name), "busy", "{states:?}\n{}", server.log());
            idle.iter()
                .all(|agent| state_of(&agent.name) == "draining")
                .then_some(())
        },
    )
    .await;
    let (desired, _) = group(&config, "agents").await;
    assert_eq!(desired, 5, "nothing is detached before its agent stopped");

    // They stop, as drained agents with nothing to run do: their instances are detached
    // (the desired capacity decremented with each) and terminated, and they are forgotten.
    for agent in &idle {
        agent.stop(&address).await;
    }
    let idle_instances: Vec<String> = idle.iter().map(|a| a.instance.clone()).collect();
    eventually(
        Duration::from_secs(20),
        "the idle instances terminated",
        || async {
            let (desired, members) = group(&config, "agents").await;
            let members: Vec<String> = members.into_iter().map(|(id, _)| id).collect();
            assert!(
                members.contains(&busy.instance),
                "the busy agent's instance left the group"
            );
            let terminated = states(&config, &idle_instances)
                .await
                .iter()
                .all(|state| state == "terminated");
            (desired == 1 && members == [busy.instance.clone()] && terminated).then_some(())
        },
    )
    .await;
    assert_eq!(
        states(&config, std::slice::from_ref(&busy.instance)).await,
        ["running"]
    );
    let remaining: Vec<String> = agent_states(&address, &token)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        remaining,
        vec![busy.name.clone()],
        "the stopped agents were forgotten"
    );
    println!("scaled in to the busy agent after {:?}", started.elapsed());

    // Its build ends: it idles, drains, stops, and the group is empty.
    busy.finish_build(&address).await;
    eventually(
        Duration::from_secs(20),
        "the last agent draining",
        || async {
            let states = agent_states(&address, &token).await;
            (states == [(busy.name.clone(), "draining".to_owned())]).then_some(())
        },
    )
    .await;
    busy.stop(&address).await;
    eventually(Duration::from_secs(20), "an empty group", || async {
        let (desired, members) = group(&config, "agents").await;
        (desired == 0 && members.is_empty()).then_some(())
    })
    .await;
    assert_eq!(states(&config, &instances).await, vec!["terminated"; 5]);
    let log = server.log();
    assert!(
        log.contains("autoscale: raising the agents' group"),
        "{log}"
    );
    assert!(log.contains("autoscale: draining an idle agent"), "{log}");
    println!("done after {:?}", started.elapsed());
}

/// Each call of the AWS provider against moto: the group's instances and launch times,
/// desired capacity, protection, detach with decrement, termination (again: no error), and
/// which instances are gone.
#[tokio::test]
async fn the_aws_provider_drives_an_auto_scaling_group() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    agent_group(&config, "provider", 4).await;
    let provider = AwsProvider::with_config(&config, "provider");
    let empty = provider.instances().await.unwrap();
    assert_eq!((empty.desired, empty.instances.len()), (0, 0));

    provider.set_desired(2).await.unwrap();
    let grown = provider.instances().await.unwrap();
    assert_eq!(grown.desired, 2);
    let ids: Vec<String> = grown.instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids.len(), 2);
    for instance in &grown.instances {
        assert_eq!(instance.lifecycle, slipway::autoscale::Lifecycle::InService);
        let age = chrono::Utc::now() - instance.launched_at;
        assert!(age < chrono::Duration::minutes(5), "{instance:?}");
    }
    provider.protect(&ids).await.unwrap();
    let protected = provider.instances().await.unwrap();
    assert!(protected.instances.iter().all(|i| i.protected));

    provider.detach(&ids[0]).await.unwrap();
    let (desired, members) = group(&config, "provider").await;
    assert_eq!(desired, 1, "the detach decremented the desired capacity");
    assert_eq!(
        members,
        [(ids[1].clone(), true)],
        "and launched no replacement"
    );
    assert!(provider.gone(&[ids[0].clone()]).await.unwrap().is_empty());
    provider.terminate(&ids[0]).await.unwrap();
    provider.terminate(&ids[0]).await.unwrap();
    assert_eq!(states(&config, &[ids[0].clone()]).await, ["terminated"]);
    let unknown = "i-0123456789abcdef0".to_owned();
    let gone: BTreeSet<String> = provider
        .gone(&[ids[0].clone(), ids[1].clone(), unknown.clone()])
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(gone, BTreeSet::from([ids[0].clone(), unknown.clone()]));
    provider.terminate(&unknown).await.unwrap();
    let (desired, members) = group(&config, "provider").await;
    assert_eq!((desired, members.len()), (1, 1));
}

/// The ids of the processes whose command line holds `needle`.
fn processes_with(needle: &str) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.insert(pid);
        }
    }
    found
}

// Multi-threaded: the agents the server starts must be answered while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_provider_starts_agents_for_the_queue_and_stops_them_once_idle() {
    let started = Instant::now();
    let repo = hello_repository();
    let files = tempfile::tempdir().unwrap();
    let token_file = files.path().join("agent.token");
    // Builds of main make no release here: nothing to bake.
    let config = format!(
        "max_concurrent_builds = 0\n[agents]\nlease_seconds = 6\n[autoscale]\nprovider = \"local\"\nmin_agents = 1\nmax_agents = 2\ncapacity_per_agent = 1\nidle_seconds = 2\ninterval_seconds = 1\ncommand = [\"{}\", \"agent\", \"--docker-host\", \"unix:///var/run/docker.sock\"]\ntoken_file = \"{}\"\n{}deploy_branch = \"release\"\n",
        env!("CARGO_BIN_EXE_slipway"),
        token_file.display(),
        hello_config(repo.path())
    );
    let app = TestApp::spawn(&config).await;
    let token = agent_token(&app).await;
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let head = git(repo.path(), &["rev-parse", "HEAD"]);
    let first = push(&app, "main", &head).await;
    let second = push(&app, "main", &head).await;
    let pids = eventually(Duration::from_secs(30), "two local agents", || async {
        let pids = processes_with("--instance-id local-");
        (pids.len() == 2).then_some(pids)
    })
    .await;
    let mut ran_on = BTreeSet::new();
    for number in [first, second] {
        let build = wait_for_build(&app, number, Duration::from_secs(120)).await;
        assert_eq!(build["status"], "passed", "{build}");
        let agent = build["agent"].as_str().unwrap().to_owned();
        assert!(agent.starts_with("local-"), "{build}");
        ran_on.insert(agent);
    }
    assert_eq!(ran_on.len(), 2, "one build on each agent: {ran_on:?}");
    println!("both builds passed after {:?}", started.elapsed());

    // Idle with nothing queued: one drains, exits, is reaped and forgotten; min_agents
    // keeps the other.
    let alive = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let kept = eventually(Duration::from_secs(30), "one agent gone", || async {
        let listed = agents(&app).await;
        let running: Vec<&u32> = pids.iter().filter(|pid| alive(pid)).collect();
        (running.len() == 1 && listed.len() == 1 && listed[0]["state"] == "idle")
            .then(|| (*running[0], listed[0]["name"].as_str().unwrap().to_owned()))
    })
    .await;
    for agent in &ran_on {
        let path = app
            .data_dir()
            .join("autoscale")
            .join(agent)
            .join("agent.log");
        let log = std::fs::read_to_string(path).unwrap();
        if *agent != kept.1 {
            assert!(
                log.contains("drained: every build ended"),
                "{agent}:\n{log}"
            );
        }
        assert!(!log.contains(&token), "{agent} logged its token");
    }
    println!("one agent drained and exited after {:?}", started.elapsed());

    // The server stops: so does the agent it kept, reaped.
    app.stop().await;
    assert!(!alive(&kept.0), "the kept agent outlived the server");
    println!("stopped after {:?}", started.elapsed());
}
