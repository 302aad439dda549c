//! The docker target and its load balancer against the real dockerd, through the whole
//! algorithm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use slipway_deployer::DeploymentState;

use crate::docker_env::{client, get, image, policy, DockerEnv, Load};
use crate::support::{request, Recorder, Stores};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_to_v2_under_load_fails_no_request() {
    let mut env = DockerEnv::new().await;
    let target = env.start_target().await;
    let stores = Stores::default();
    let deployer = stores.deployer(&env.environment, "a", target, policy(Duration::ZERO));
    let v1 = deployer
        .deploy(&request("v1", &image("v1"), 2))
        .await
        .unwrap();
    assert_eq!(v1.state, DeploymentState::Succeeded, "{:?}", v1.reason);

    let load = Load::start(env.proxy_addr(), 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let v2 = deployer
        .deploy(&request("v2", &image("v2"), 2))
        .await
        .unwrap();
    eprintln!("v1 -> v2 under load took {:?}", started.elapsed());
    assert_eq!(v2.state, DeploymentState::Succeeded, "{:?}", v2.reason);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = load.stop().await;

    let total: usize = results.iter().map(Vec::len).sum();
    let failures: Vec<_> = results
        .iter()
        .flatten()
        .filter(|r| !matches!(r, Ok((200, _))))
        .collect();
    eprintln!(
        "{total} requests through the load balancer, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(total > 100, "{total}");
    for worker in &results {
        let bodies: Vec<&str> = worker
            .iter()
            .map(|r| r.as_ref().unwrap().1.as_str())
            .collect();
        assert_eq!(bodies.first(), Some(&"v1"));
        assert_eq!(bodies.last(), Some(&"v2"));
        // Per worker, v1 answers stop once v2 answers start (slow v1 requests finish first).
        let first_v2 = bodies.iter().position(|b| *b == "v2").unwrap();
        assert!(bodies[first_v2..].iter().all(|b| *b == "v2"), "{bodies:?}");
    }
    let fleet = format!("{}-v2", env.environment);
    assert_eq!(env.fleets_running().await, [fleet]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_failing_health_never_gets_traffic_and_is_removed() {
    let mut env = DockerEnv::new().await;
    let target = env.start_target().await;
    let stores = Stores::default();
    let mut policy = policy(Duration::ZERO);
    policy.health.timeout = Duration::from_secs(3);
    let deployer = stores.deployer(&env.environment, "a", target, policy);
    deployer
        .deploy(&request("v1", &image("v1"), 1))
        .await
        .unwrap();
    let load = Load::start(env.proxy_addr(), 2);
    let bad = deployer
        .deploy(&request("v3", &image("bad"), 2))
        .await
        .unwrap();
    let results = load.stop().await;
    assert_eq!(bad.state, DeploymentState::Failed);
    let reason = bad.reason.unwrap();
    assert!(
        reason.contains("not healthy after") && reason.contains("500"),
        "{reason}"
    );
    assert!(results
        .iter()
        .flatten()
        .all(|r| r == &Ok((200, "v1".to_owned()))));
    let fleet = format!("{}-v1", env.environment);
    assert_eq!(env.fleets_running().await, [fleet]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_launch_and_resumed_leaves_only_the_live_fleet() {
    let mut env = DockerEnv::new().await;
    let target = env.start_target().await;
    let stores = Stores::default();
    let recorder = Arc::new(Recorder::default());
    let first = stores
        .deployer(&env.environment, "server", target, policy(Duration::ZERO))
        .with_observer(recorder.clone());
    first.deploy(&request("v1", &image("v1"), 2)).await.unwrap();
    *recorder.notify_after.lock().unwrap() = Some(DeploymentState::Launching);
    let running = tokio::spawn(async move { first.deploy(&request("v2", &image("v2"), 2)).await });
    recorder.finished.notified().await;
    running.abort();
    let _ = running.await;
    let persisted = stores.deployments.all().pop().unwrap();
    assert_eq!(persisted.release, "v2");
    assert!(!persisted.state.is_terminal(), "{:?}", persisted.state);
    let both = [
        format!("{}-v1", env.environment),
        format!("{}-v2", env.environment),
    ];
    assert_eq!(env.fleets_running().await, both);

    // The server restarts: a new target (adopting the load balancer), same stores and owner.
    let target = env.start_target().await;
    let second = stores.deployer(&env.environment, "server", target, policy(Duration::ZERO));
    let recovered = second.recover().await.unwrap();
    assert_eq!(recovered.resumed.len(), 1);
    assert_eq!(recovered.resumed[0].state, DeploymentState::Succeeded);
    let fleet = format!("{}-v2", env.environment);
    assert_eq!(env.fleets_running().await, [fleet]);
    let answer = get(&client(), &format!("http://{}/", env.proxy_addr())).await;
    assert_eq!(answer, Ok((200, "v2".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_back_to_the_warm_fleet_is_a_switch() {
    let mut env = DockerEnv::new().await;
    let target = env.start_target().await;
    let stores = Stores::default();
    let mut fast = policy(Duration::from_secs(3600));
    fast.watch = Duration::ZERO;
    let deployer = stores.deployer(&env.environment, "a", target, fast);
    deployer
        .deploy(&request("v1", &image("v1"), 2))
        .await
        .unwrap();
    let started = Instant::now();
    deployer
        .deploy(&request("v2", &image("v2"), 2))
        .await
        .unwrap();
    let full_deploy = started.elapsed();
    let url = format!("http://{}/", env.proxy_addr());
    assert_eq!(get(&client(), &url).await, Ok((200, "v2".to_owned())));

    let started = Instant::now();
    let back = deployer.switch_back("v1").await.unwrap();
    let switch = started.elapsed();
    eprintln!("full deploy of v2 took {full_deploy:?}; switch back to warm v1 took {switch:?}");
    assert_eq!(back.state, DeploymentState::RetainingBlue);
    assert_eq!(get(&client(), &url).await, Ok((200, "v1".to_owned())));
    assert!(switch < full_deploy, "{switch:?} vs {full_deploy:?}");

    let later = Utc::now() + chrono::Duration::hours(2);
    let retired = deployer.retire_expired(later).await.unwrap();
    assert_eq!(retired.len(), 1);
    let fleet = format!("{}-v1", env.environment);
    assert_eq!(env.fleets_running().await, [fleet]);
}
