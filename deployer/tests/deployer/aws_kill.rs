//! kill -9 at every AWS call of a deployment on the aws target, against moto.
//!
//! The deploy of v2 over a live v1, and the retirement of v1 after it, are stopped at each
//! call that changes AWS: once before the call reaches AWS, once after AWS did it but before
//! its answer came back. Stopped means what a killed server does: that call never completes
//! and nothing more of the deployment runs (its task is dropped); only what the store had
//! recorded survives. A new deployer over the same stores then recovers, as a restarted
//! server does. Every time, the environment must end with one release live and nothing else
//! left in AWS: one Auto Scaling group, the listener on its target group, the launch
//! template's default version on its AMI, no other instance, target registration or
//! duplicate launch template version.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use chrono::Utc;
use slipway_deployer::aws::AwsTarget;
use slipway_deployer::{DeploymentState, DeploymentStore, Target};
use tokio::sync::Notify;

use crate::aws::{forwarded, policy, settings};
use crate::moto::{registered, Infra, Moto};
use crate::support::{request, Stores};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    /// The call never reaches AWS.
    Before,
    /// AWS carries the call out; its answer never reaches the deployer.
    AnswerLost,
}

#[derive(Debug, Default)]
struct Plan {
    /// Die at this call that changes AWS (counted from 1), at this moment of it.
    at: Option<(usize, Moment)>,
    /// The actions of the calls that change AWS, in the order they were sent.
    changes: Vec<String>,
    dead: bool,
}

/// Shared by the connectors of one dying deployer's SDK clients.
#[derive(Clone, Debug, Default)]
struct Kill {
    plan: Arc<Mutex<Plan>>,
    died: Arc<Notify>,
}

/// Passes calls on to the SDK's own connector until the planned death; from then on no call
/// completes.
#[derive(Debug)]
struct DyingConnector {
    inner: SharedHttpConnector,
    kill: Kill,
}

fn never() -> HttpConnectorFuture {
    HttpConnectorFuture::new(std::future::pending::<Result<HttpResponse, ConnectorError>>())
}

impl HttpConnector for DyingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let mut plan = self.kill.plan.lock().unwrap();
        if plan.dead {
            return never();
        }
        let Some(action) = action(&request).filter(|a| changes_aws(a)) else {
            return self.inner.call(request);
        };
        plan.changes.push(action);
        let Some((at, moment)) = plan.at.filter(|(at, _)| *at == plan.changes.len()) else {
            return self.inner.call(request);
        };
        plan.dead = true;
        let died = self.kill.died.clone();
        match moment {
            Moment::Before => {
                died.notify_one();
                never()
            }
            Moment::AnswerLost => {
                let answer = self.inner.call(request);
                HttpConnectorFuture::new(async move {
                    let answer = answer.await;
                    assert!(answer.is_ok(), "call {at} failed: {answer:?}");
                    died.notify_one();
                    std::future::pending::<Result<HttpResponse, ConnectorError>>().await
                })
            }
        }
    }
}

/// The `Action` of a query-protocol call (EC2, ELBv2 and Auto Scaling all use one).
pub(crate) fn action(request: &HttpRequest) -> Option<String> {
    let body = std::str::from_utf8(request.body().bytes()?).ok()?;
    let action = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="));
    action.map(str::to_owned)
}

fn changes_aws(action: &str) -> bool {
    !["Describe", "Get", "List"]
        .iter()
        .any(|read| action.starts_with(read))
}

/// `config` with the SDK's default HTTP connectors wrapped to die as `kill` plans.
fn dying(config: &SdkConfig, kill: &Kill) -> SdkConfig {
    let kill = kill.clone();
    wrapped(config, move |inner| DyingConnector {
        inner,
        kill: kill.clone(),
    })
}

/// `config` whose SDK clients send every call through the connector `wrap` makes around the
/// SDK's default one.
pub(crate) fn wrapped<C: HttpConnector + 'static>(
    config: &SdkConfig,
    wrap: impl Fn(SharedHttpConnector) -> C + Send + Sync + 'static,
) -> SdkConfig {
    let client = http_client_fn(move |settings, components| {
        let inner = aws_smithy_http_client::default_connector(settings, components.sleep_impl())
            .expect("the SDK's default connector (feature rustls-aws-lc)");
        SharedHttpConnector::new(wrap(inner))
    });
    config.to_builder().http_client(client).build()
}

/// What one run ended as.
struct Outcome {
    changes: Vec<String>,
    live: String,
    state: DeploymentState,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} live, v2 {}", self.live, self.state.name())
    }
}

/// In a fresh environment `name`: v1 deployed; then v2 deployed and v1 retired by a deployer
/// that dies `at` a call, and a new deployer that recovers; then the checks.
async fn killed_and_recovered(
    config: &SdkConfig,
    name: &str,
    at: Option<(usize, Moment)>,
) -> Outcome {
    let infra = Infra::named(config, name).await;
    let mut settings = settings(&infra);
    settings.project = name.to_owned();
    let ec2 = aws_sdk_ec2::Client::new(config);
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(config);
    let autoscaling = aws_sdk_autoscaling::Client::new(config);
    let before = running_instances(&ec2, &infra.subnets).await;
    let stores = Stores::default();
    let first = Arc::new(AwsTarget::new(config, settings.clone()));
    let first = stores.deployer("prod", "server", first, policy());
    let v1 = first.deploy(&request("v1", &infra.amis[0], 2)).await;
    assert_eq!(v1.unwrap().state, DeploymentState::Succeeded, "{name}");

    let kill = Kill::default();
    kill.plan.lock().unwrap().at = at;
    let target = Arc::new(AwsTarget::new(&dying(config, &kill), settings.clone()));
    let deployer = stores.deployer("prod", "server", target, policy());
    let v2 = request("v2", &infra.amis[1], 2);
    let mut work = tokio::spawn(async move {
        deployer.deploy(&v2).await.unwrap();
        let later = Utc::now() + chrono::Duration::hours(2);
        deployer.retire_expired(later).await.unwrap();
    });
    tokio::select! {
        done = &mut work => {
            done.unwrap();
            let changes = &kill.plan.lock().unwrap().changes;
            assert!(at.is_none(), "{name}: the run ended before dying at {at:?}: {changes:?}");
        }
        _ = kill.died.notified() => {
            work.abort();
            assert!(work.await.unwrap_err().is_cancelled());
        }
    }
    let changes = kill.plan.lock().unwrap().changes.clone();

    // The restart: a new target and deployer over the same stores and owner.
    let target = Arc::new(AwsTarget::new(config, settings.clone()));
    let restarted = stores.deployer("prod", "server", target.clone(), policy());
    restarted.recover().await.unwrap();
    let later = Utc::now() + chrono::Duration::hours(2);
    restarted.retire_expired(later).await.unwrap();

    let deployments = stores.deployments.all();
    for deployment in &deployments {
        assert!(
            deployment.state.is_terminal(),
            "{name}: {} is {:?} ({:?})",
            deployment.release,
            deployment.state,
            deployment.reason
        );
    }
    let state = deployments
        .iter()
        .rfind(|d| d.release == "v2")
        .map(|d| d.state)
        .unwrap();
    let live = target
        .current_live()
        .await
        .unwrap()
        .expect("a fleet serves");
    let recorded = stores.deployments.live("prod").await.unwrap();
    assert_eq!(recorded.as_ref().map(|f| &f.id), Some(&live.id), "{name}");
    let ami = if live.release == "v2" {
        &infra.amis[1]
    } else {
        &infra.amis[0]
    };

    // One group: the live one.
    let groups = autoscaling
        .describe_auto_scaling_groups()
        .send()
        .await
        .unwrap();
    let ours: Vec<_> = groups
        .auto_scaling_groups()
        .iter()
        .filter(|g| {
            g.auto_scaling_group_name()
                .unwrap()
                .starts_with(&format!("{name}-"))
        })
        .collect();
    let names: Vec<&str> = ours
        .iter()
        .map(|g| g.auto_scaling_group_name().unwrap())
        .collect();
    assert_eq!(names, [live.id.as_str()], "{name}: after {changes:?}");
    let group = ours[0];
    let instances: BTreeSet<String> = group
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    assert_eq!(instances.len(), 2, "{name}");

    // The listener forwards to the group's target group, which holds exactly its instances;
    // the other target group holds nothing.
    let serving = forwarded(&elb, &infra).await;
    assert_eq!(
        group.target_group_arns(),
        std::slice::from_ref(&serving),
        "{name}"
    );
    for target_group in &infra.target_groups {
        let registered = registered(config, target_group).await;
        let expected = if *target_group == serving {
            instances.clone()
        } else {
            BTreeSet::new()
        };
        assert_eq!(registered, expected, "{name}: targets of {target_group}");
    }

    // No instance besides the live group's (and the one the infrastructure made AMIs from).
    let running = running_instances(&ec2, &infra.subnets).await;
    let launched: BTreeSet<String> = running.difference(&before).cloned().collect();
    assert_eq!(launched, instances, "{name}: running instances");

    // The default launch template version starts the live AMI; no AMI has two versions.
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_id(&infra.launch_template_id)
        .send()
        .await
        .unwrap();
    let versions = versions.launch_template_versions();
    let default = versions.iter().find(|v| v.default_version() == Some(true));
    let default_image = default.and_then(|v| v.launch_template_data()?.image_id());
    assert_eq!(default_image, Some(ami.as_str()), "{name}");
    let images: Vec<&str> = versions
        .iter()
        .filter_map(|v| v.launch_template_data()?.image_id())
        .collect();
    let distinct: BTreeSet<&str> = images.iter().copied().collect();
    assert_eq!(images.len(), distinct.len(), "{name}: versions {images:?}");

    Outcome {
        changes,
        live: live.release,
        state,
    }
}

async fn running_instances(ec2: &aws_sdk_ec2::Client, subnets: &[String]) -> BTreeSet<String> {
    let filters = [
        aws_sdk_ec2::types::Filter::builder()
            .name("subnet-id")
            .set_values(Some(subnets.to_vec()))
            .build(),
        aws_sdk_ec2::types::Filter::builder()
            .name("instance-state-name")
            .values("pending")
            .values("running")
            .build(),
    ];
    let found = ec2
        .describe_instances()
        .set_filters(Some(filters.to_vec()))
        .send()
        .await
        .unwrap();
    found
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_aws_call_of_a_deployment_the_next_start_finishes_it_and_leaves_nothing() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    // An undisturbed run lists the calls that change AWS.
    let reference = killed_and_recovered(&config, "whole", None).await;
    assert_eq!(reference.live, "v2");
    assert_eq!(reference.state, DeploymentState::Succeeded);
    let changes = reference.changes;
    eprintln!("the calls that change AWS: {changes:?}");
    for expected in [
        "CreateLaunchTemplateVersion",
        "CreateAutoScalingGroup",
        "ModifyListener",
        "ModifyLaunchTemplate",
        "DeregisterTargets",
        "DeleteAutoScalingGroup",
    ] {
        assert!(
            changes.iter().any(|c| c == expected),
            "{expected}: {changes:?}"
        );
    }
    for (index, action) in changes.iter().enumerate() {
        for moment in [Moment::Before, Moment::AnswerLost] {
            let at = index + 1;
            let name = format!("k{at}{}", if moment == Moment::Before { "b" } else { "a" });
            let outcome = killed_and_recovered(&config, &name, Some((at, moment))).await;
            assert_eq!(outcome.changes.len(), at, "{name}: {:?}", outcome.changes);
            assert_eq!(&outcome.changes[at - 1], action, "{name}");
            eprintln!("killed {moment:?} call {at} ({action}): {outcome}");
        }
    }
}
