//! The blue/green decisions, against the fake target that refuses out-of-order calls.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use slipway_deployer::fake::{FakeTarget, HealthScript};
use slipway_deployer::{DeployError, DeploymentKind, DeploymentState, DeploymentStore, Target};

use crate::support::{fast_policy, request, Recorder, Stores};

async fn live_id(fake: &FakeTarget) -> Option<String> {
    fake.current_live().await.unwrap().map(|fleet| fleet.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deploy_serves_and_succeeds_without_a_blue() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let deployer = stores.deployer("dev", "a", fake.clone(), fast_policy());
    let done = deployer.deploy(&request("v1", "app:v1", 2)).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded);
    assert_eq!(done.green_instances, ["fake-v1-0", "fake-v1-1"]);
    assert_eq!(live_id(&fake).await.as_deref(), Some("fake-v1"));
    assert_eq!(fake.template_image().as_deref(), Some("app:v1"));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    let live = stores.deployments.live("dev").await.unwrap().unwrap();
    assert_eq!(live.id, "fake-v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_deploy_keeps_blue_warm_until_retention_expires() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let deployer = stores.deployer("dev", "a", fake.clone(), fast_policy());
    deployer.deploy(&request("v1", "app:v1", 2)).await.unwrap();
    let v2 = deployer.deploy(&request("v2", "app:v2", 2)).await.unwrap();
    assert_eq!(v2.state, DeploymentState::RetainingBlue);
    assert_eq!(v2.blue.as_ref().unwrap().id, "fake-v1");
    assert_eq!(fake.fleet_ids(), ["fake-v1", "fake-v2"]);
    assert!(deployer
        .retire_expired(Utc::now())
        .await
        .unwrap()
        .is_empty());
    let later = v2.retain_until.unwrap() + chrono::Duration::seconds(1);
    let finished = deployer.retire_expired(later).await.unwrap();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].state, DeploymentState::Succeeded);
    assert_eq!(fake.fleet_ids(), ["fake-v2"]);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_that_never_passes_health_never_gets_traffic() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let deployer = stores.deployer("dev", "a", fake.clone(), fast_policy());
    deployer.deploy(&request("v1", "app:v1", 2)).await.unwrap();
    fake.script_health("v2", HealthScript::Never);
    let v2 = deployer.deploy(&request("v2", "app:v2", 2)).await.unwrap();
    assert_eq!(v2.state, DeploymentState::Failed);
    let reason = v2.reason.unwrap();
    assert!(reason.contains("not healthy after"), "{reason}");
    assert!(v2.switched_at.is_none());
    assert_eq!(live_id(&fake).await.as_deref(), Some("fake-v1"));
    assert_eq!(fake.fleet_ids(), ["fake-v1"]);
    assert!(!fake.calls().contains(&"switch_traffic fake-v2".to_owned()));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_launch_and_failed_switch_leave_blue_serving() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let deployer = stores.deployer("dev", "a", fake.clone(), fast_policy());
    deployer.deploy(&request("v1", "app:v1", 1)).await.unwrap();
    fake.fail_launch("v2");
    let v2 = deployer.deploy(&request("v2", "app:v2", 1)).await.unwrap();
    assert_eq!(v2.state, DeploymentState::Failed);
    assert!(v2.reason.unwrap().contains("injected launch failure"));
    fake.fail_switch("v3");
    let v3 = deployer.deploy(&request("v3", "app:v3", 1)).await.unwrap();
    assert_eq!(v3.state, DeploymentState::Failed);
    assert!(v3.reason.unwrap().contains("injected switch failure"));
    assert_eq!(live_id(&fake).await.as_deref(), Some("fake-v1"));
    assert_eq!(fake.fleet_ids(), ["fake-v1"]);
    assert_eq!(fake.template_image().as_deref(), Some("app:v1"));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_failing_the_watch_is_rolled_back_at_once() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let deployer = stores.deployer("dev", "a", fake.clone(), fast_policy());
    deployer.deploy(&request("v1", "app:v1", 2)).await.unwrap();
    // Passes the two rounds of the health gate, then breaks under traffic.
    fake.script_health("v2", HealthScript::FailsAfter(2));
    let v2 = deployer.deploy(&request("v2", "app:v2", 2)).await.unwrap();
    assert_eq!(v2.state, DeploymentState::RolledBack);
    assert!(v2.switched_at.is_some());
    assert!(v2
        .reason
        .unwrap()
        .contains("turned unhealthy while watched"));
    assert_eq!(live_id(&fake).await.as_deref(), Some("fake-v1"));
    assert_eq!(fake.template_image().as_deref(), Some("app:v1"));
    assert_eq!(fake.fleet_ids(), ["fake-v1"]);
    let live = stores.deployments.live("dev").await.unwrap().unwrap();
    assert_eq!(live.id, "fake-v1");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_launch_and_switch_is_resumed_by_a_fresh_deployer() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let mut policy = fast_policy();
    policy.lock_ttl = Duration::from_millis(300);
    let first = stores.deployer("dev", "server-1", fake.clone(), policy.clone());
    first.deploy(&request("v1", "app:v1", 2)).await.unwrap();
    fake.crash_after("launch_fleet");
    let running = tokio::spawn(async move { first.deploy(&request("v2", "app:v2", 2)).await });
    fake.crashed().await;
    running.abort();
    let _ = running.await;

    let second = stores.deployer("dev", "server-2", fake.clone(), policy);
    let refused = second.recover().await.unwrap_err();
    assert!(
        matches!(&refused, DeployError::Locked { owner, .. } if owner == "server-1"),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let recovered = second.recover().await.unwrap();
    assert_eq!(recovered.resumed.len(), 1);
    assert_eq!(recovered.resumed[0].state, DeploymentState::RetainingBlue);
    assert!(recovered.leaked.is_empty());
    assert_eq!(live_id(&fake).await.as_deref(), Some("fake-v2"));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_back_to_a_warm_fleet_launches_nothing() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let deployer = stores.deployer("dev", "a", fake.clone(), fast_policy());
    deployer.deploy(&request("v1", "app:v1", 2)).await.unwrap();
    let v2 = deployer.deploy(&request("v2", "app:v2", 2)).await.unwrap();
    let launches_before = fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("launch"))
        .count();
    let back = deployer
        .rollback(&request("v1", "app:v1", 2))
        .await
        .unwrap();
    assert_eq!(back.kind, DeploymentKind::SwitchBack);
    assert_eq!(back.state, DeploymentState::RetainingBlue);
    assert_eq!(back.blue.as_ref().unwrap().id, "fake-v2");
    let launches_after = fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("launch"))
        .count();
    assert_eq!(launches_before, launches_after);
    assert_eq!(live_id(&fake).await.as_deref(), Some("fake-v1"));
    assert_eq!(fake.template_image().as_deref(), Some("app:v1"));
    let old = stores.deployments.get(&v2.id).await.unwrap().unwrap();
    assert_eq!(old.state, DeploymentState::RolledBack);
    // v2 is now the warm one; a rollback to a retired release is a full deploy.
    let missing = deployer.switch_back("v0").await.unwrap_err();
    assert!(
        matches!(missing, DeployError::NoWarmFleet { .. }),
        "{missing}"
    );
    let v0 = deployer
        .rollback(&request("v0", "app:v0", 1))
        .await
        .unwrap();
    assert_eq!(v0.kind, DeploymentKind::Deploy);
    assert_eq!(fake.fleet_ids(), ["fake-v0", "fake-v1"]);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_deployment_is_refused_while_one_runs() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let mut slow = fast_policy();
    slow.watch = Duration::from_millis(500);
    let first = stores.deployer("dev", "server-1", fake.clone(), slow);
    let running = tokio::spawn(async move { first.deploy(&request("v1", "app:v1", 1)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = stores.deployer("dev", "server-2", fake.clone(), fast_policy());
    let refused = second
        .deploy(&request("v2", "app:v2", 1))
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(message.contains("locked by server-1 since"), "{message}");
    running.await.unwrap().unwrap();
    let again = second
        .deploy(&request("v1", "app:v1", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(again, DeployError::ReleaseAlreadyRunning { .. }),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_sees_every_step_in_order() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let recorder = Arc::new(Recorder::default());
    let deployer = stores
        .deployer("dev", "a", fake.clone(), fast_policy())
        .with_observer(recorder.clone());
    deployer.deploy(&request("v1", "app:v1", 1)).await.unwrap();
    let steps = [
        "pending",
        "launching",
        "waiting_healthy",
        "switching",
        "updating_launch_template",
        "watching",
    ];
    let expected: Vec<String> = steps
        .iter()
        .flat_map(|s| [format!("started {s}"), format!("finished {s}")])
        .collect();
    assert_eq!(recorder.lines(), expected);
    let events = recorder.events.lock().unwrap();
    let watching = events.last().unwrap().elapsed.unwrap();
    assert!(events.iter().all(|event| event.error.is_none()));
    assert!(watching >= Duration::from_millis(50), "{watching:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_retires_fleets_no_deployment_accounts_for() {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let deployer = stores.deployer("dev", "a", fake.clone(), fast_policy());
    deployer.deploy(&request("v1", "app:v1", 1)).await.unwrap();
    let stray = fake.fleet_for("v9", "app:v9");
    fake.launch_fleet(&stray, 1).await.unwrap();
    let recovered = deployer.recover().await.unwrap();
    assert_eq!(recovered.leaked, [stray]);
    assert_eq!(fake.fleet_ids(), ["fake-v1"]);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

/// Runs a deploy of v2 over a live v1 until the fake's injected crash after `call`, then
/// recovers with a fresh deployer of the same (restarted) server.
async fn crash_after_and_recover(call: &str, v2: HealthScript) -> (Arc<FakeTarget>, Stores) {
    let fake = FakeTarget::new();
    let stores = Stores::default();
    let first = stores.deployer("dev", "server", fake.clone(), fast_policy());
    first.deploy(&request("v1", "app:v1", 2)).await.unwrap();
    fake.script_health("v2", v2);
    fake.crash_after(call);
    let running = tokio::spawn(async move { first.deploy(&request("v2", "app:v2", 2)).await });
    fake.crashed().await;
    running.abort();
    let _ = running.await;
    let second = stores.deployer("dev", "server", fake.clone(), fast_policy());
    let recovered = second.recover().await.unwrap();
    assert_eq!(recovered.resumed.len(), 1);
    assert!(recovered.leaked.is_empty());
    (fake, stores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_right_after_the_switch_resumes_into_the_watch() {
    let (fake, stores) = crash_after_and_recover("switch_traffic", HealthScript::Healthy).await;
    let v2 = stores.deployments.all().pop().unwrap();
    assert_eq!(v2.state, DeploymentState::RetainingBlue);
    assert_eq!(live_id(&fake).await.as_deref(), Some("fake-v2"));
    assert_eq!(fake.template_image().as_deref(), Some("app:v2"));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_switch_then_failing_the_watch_rolls_back_on_resume() {
    let (fake, stores) =
        crash_after_and_recover("switch_traffic", HealthScript::FailsAfter(2)).await;
    let v2 = stores.deployments.all().pop().unwrap();
    assert_eq!(v2.state, DeploymentState::RolledBack);
    assert_eq!(live_id(&fake).await.as_deref(), Some("fake-v1"));
    assert_eq!(fake.template_image().as_deref(), Some("app:v1"));
    assert_eq!(fake.fleet_ids(), ["fake-v1"]);
    let live = stores.deployments.live("dev").await.unwrap().unwrap();
    assert_eq!(live.id, "fake-v1");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}
