//! Health on the aws target against moto: a new Auto Scaling group gets traffic only when every
//! one of its instances is `healthy` in its target group (DescribeTargetHealth) within the
//! deadline. moto reports a stopped instance as `unused` (`Target.InvalidState`), so the test
//! stops one of the new group's instances just before the deployer's first health check of it
//! reaches moto.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use slipway_deployer::aws::AwsTarget;
use slipway_deployer::{DeploymentState, Target};

use crate::aws::{default_image, forwarded, policy, settings};
use crate::aws_kill::{action, wrapped};
use crate::moto::{registered, Infra, Moto};
use crate::support::{request, Stores};

/// Once the group `group` was created, stops its first instance before the next
/// DescribeTargetHealth call goes on to moto; records the instance it stopped.
struct StopsAnInstance {
    inner: SharedHttpConnector,
    ec2: aws_sdk_ec2::Client,
    autoscaling: aws_sdk_autoscaling::Client,
    group: String,
    state: Arc<Mutex<Stopping>>,
}

#[derive(Debug, Default)]
struct Stopping {
    created: bool,
    stopped: Option<String>,
}

impl fmt::Debug for StopsAnInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopsAnInstance")
            .field("group", &self.group)
            .finish()
    }
}

impl HttpConnector for StopsAnInstance {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let mut state = self.state.lock().unwrap();
        match action(&request).as_deref() {
            Some("CreateAutoScalingGroup") => state.created = true,
            Some("DescribeTargetHealth") if state.created && state.stopped.is_none() => {
                state.stopped = Some(String::new());
                let (inner, ec2, autoscaling) = (
                    self.inner.clone(),
                    self.ec2.clone(),
                    self.autoscaling.clone(),
                );
                let (group, state) = (self.group.clone(), self.state.clone());
                return HttpConnectorFuture::new(async move {
                    let groups = autoscaling
                        .describe_auto_scaling_groups()
                        .auto_scaling_group_names(&group)
                        .send()
                        .await
                        .unwrap();
                    let instance = groups.auto_scaling_groups()[0].instances()[0]
                        .instance_id()
                        .unwrap()
                        .to_owned();
                    ec2.stop_instances()
                        .instance_ids(&instance)
                        .send()
                        .await
                        .unwrap();
                    state.lock().unwrap().stopped = Some(instance);
                    inner.call(request).await
                });
            }
            _ => {}
        }
        self.inner.call(request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_an_instance_not_healthy_in_its_target_group_never_gets_traffic() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    let infra = Infra::named(&config, "hello-prod").await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&config);
    let autoscaling = aws_sdk_autoscaling::Client::new(&config);
    let stores = Stores::default();
    let mut policy = policy();
    policy.health.timeout = Duration::from_secs(2);
    let target = Arc::new(AwsTarget::new(&config, settings(&infra)));
    let deployer = stores.deployer("prod", "a", target.clone(), policy.clone());
    let v1 = deployer
        .deploy(&request("v1", &infra.amis[0], 2))
        .await
        .unwrap();
    assert_eq!(v1.state, DeploymentState::Succeeded, "{:?}", v1.reason);
    let serving = forwarded(&elb, &infra).await;

    let state = Arc::new(Mutex::new(Stopping::default()));
    let stopping = state.clone();
    let (plain_ec2, plain_autoscaling) = (ec2.clone(), autoscaling.clone());
    let watched = wrapped(&config, move |inner| StopsAnInstance {
        inner,
        ec2: plain_ec2.clone(),
        autoscaling: plain_autoscaling.clone(),
        group: "hello-prod-v2".to_owned(),
        state: stopping.clone(),
    });
    let target = Arc::new(AwsTarget::new(&watched, settings(&infra)));
    let deployer = stores.deployer("prod", "a", target.clone(), policy);
    let v2 = deployer
        .deploy(&request("v2", &infra.amis[1], 2))
        .await
        .unwrap();
    let stopped = state
        .lock()
        .unwrap()
        .stopped
        .clone()
        .expect("an instance was stopped");
    assert!(stopped.starts_with("i-"), "{stopped:?}");

    // Failed at the deadline, naming the instance and what its target group said of it.
    assert_eq!(v2.state, DeploymentState::Failed, "{:?}", v2.reason);
    let reason = v2.reason.clone().unwrap();
    assert!(reason.contains("not healthy after"), "{reason}");
    assert!(
        reason.contains(&format!(
            "{stopped}: Unknown (unused: Target.InvalidState: Target is in the stopped state)"
        )),
        "{reason}"
    );
    assert!(v2.switched_at.is_none());
    // v1 serves as before: the listener, the launch template and the groups are v1's.
    assert_eq!(forwarded(&elb, &infra).await, serving);
    assert_eq!(
        target.current_live().await.unwrap().unwrap().id,
        "hello-prod-v1"
    );
    let groups = autoscaling
        .describe_auto_scaling_groups()
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = groups
        .auto_scaling_groups()
        .iter()
        .filter_map(|g| g.auto_scaling_group_name())
        .collect();
    assert_eq!(names, ["hello-prod-v1"]);
    let idle = infra
        .target_groups
        .iter()
        .find(|arn| **arn != serving)
        .unwrap();
    assert!(
        registered(&config, idle).await.is_empty(),
        "v2's instances stayed registered"
    );
    assert_eq!(default_image(&ec2, &infra).await, infra.amis[0]);
}
