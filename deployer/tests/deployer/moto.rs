//! A moto server on a free loopback port for one test, killed when dropped, and the AWS
//! infrastructure an environment needs beforehand (VPC, subnets, AMIs, launch template,
//! target group pair, load balancer, listener). The server's integration tests include this
//! file too (tests/api/aws_deploy.rs).

use std::collections::BTreeSet;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::types::RequestLaunchTemplateData;
use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum, ProtocolEnum};

/// Where scripts/bootstrap installs moto; `SLIPWAY_MOTO_SERVER` names another.
const MOTO_SERVER: &str = "/var/tmp/slipway/venv/bin/moto_server";
pub const REGION: &str = "eu-west-1";

pub struct Moto {
    server: std::process::Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let port = crate::ports::free_port();
        let program = std::env::var("SLIPWAY_MOTO_SERVER").unwrap_or(MOTO_SERVER.to_owned());
        let server = std::process::Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts (scripts/bootstrap installs it)");
        // Built first so that a panic below still kills the server.
        let moto = Moto {
            server,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto_server did not listen on port {port} within 20 s");
    }

    /// SDK configuration pointed at this server, with dummy credentials.
    pub async fn config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .load()
            .await
    }
}

impl Drop for Moto {
    /// Kills and reaps the server, so no process (nor zombie) outlives the test.
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// What the operator's infrastructure gives an environment.
pub struct Infra {
    pub subnets: Vec<String>,
    pub amis: [String; 2],
    pub launch_template_id: String,
    pub target_groups: [String; 2],
    pub listener_arn: String,
}

impl Infra {
    /// The infrastructure of one environment, its resources named after `name` (unique
    /// within the moto server), in a VPC of its own.
    pub async fn named(config: &SdkConfig, name: &str) -> Infra {
        let ec2 = aws_sdk_ec2::Client::new(config);
        let elb = aws_sdk_elasticloadbalancingv2::Client::new(config);
        let vpc = ec2
            .create_vpc()
            .cidr_block("10.0.0.0/16")
            .send()
            .await
            .unwrap();
        let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
        let mut subnets = Vec::new();
        for (cidr, zone) in [("10.0.1.0/24", "eu-west-1a"), ("10.0.2.0/24", "eu-west-1b")] {
            let subnet = ec2
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(cidr)
                .availability_zone(zone)
                .send()
                .await
                .unwrap();
            subnets.push(subnet.subnet().unwrap().subnet_id().unwrap().to_owned());
        }
        let base = ec2.describe_images().owners("amazon").send().await.unwrap();
        let base = base.images()[0].image_id().unwrap().to_owned();
        let instance = ec2
            .run_instances()
            .image_id(&base)
            .min_count(1)
            .max_count(1)
            .subnet_id(&subnets[0])
            .send()
            .await
            .unwrap();
        let instance = instance.instances()[0].instance_id().unwrap().to_owned();
        let mut amis = Vec::new();
        for release in ["v1", "v2"] {
            let image = ec2
                .create_image()
                .instance_id(&instance)
                .name(format!("{name}-{release}"))
                .send()
                .await;
            amis.push(image.unwrap().image_id().unwrap().to_owned());
        }
        let data = RequestLaunchTemplateData::builder()
            .image_id(&base)
            .instance_type("t3.small".into())
            .build();
        let template = ec2
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(data)
            .send()
            .await
            .unwrap();
        let launch_template_id = template
            .launch_template()
            .unwrap()
            .launch_template_id()
            .unwrap()
            .to_owned();
        let balancer = elb
            .create_load_balancer()
            .name(name)
            .set_subnets(Some(subnets.clone()))
            .send()
            .await
            .unwrap();
        let balancer = balancer.load_balancers()[0]
            .load_balancer_arn()
            .unwrap()
            .to_owned();
        let mut target_groups = Vec::new();
        for colour in ["blue", "green"] {
            let group = elb
                .create_target_group()
                .name(format!("{name}-{colour}"))
                .protocol(ProtocolEnum::Http)
                .port(80)
                .vpc_id(&vpc)
                .health_check_path("/health")
                .send()
                .await
                .unwrap();
            let arn = group.target_groups()[0].target_group_arn().unwrap();
            target_groups.push(arn.to_owned());
        }
        let listener = elb
            .create_listener()
            .load_balancer_arn(&balancer)
            .protocol(ProtocolEnum::Http)
            .port(80)
            .default_actions(forward(&target_groups[0]))
            .send()
            .await
            .unwrap();
        let listener_arn = listener.listeners()[0].listener_arn().unwrap().to_owned();
        Infra {
            subnets,
            amis: [amis[0].clone(), amis[1].clone()],
            launch_template_id,
            target_groups: [target_groups[0].clone(), target_groups[1].clone()],
            listener_arn,
        }
    }
}

fn forward(target_group: &str) -> Action {
    Action::builder()
        .r#type(ActionTypeEnum::Forward)
        .target_group_arn(target_group)
        .build()
}

/// The targets registered with a target group.
pub async fn registered(config: &SdkConfig, target_group: &str) -> BTreeSet<String> {
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(config);
    let health = elb
        .describe_target_health()
        .target_group_arn(target_group)
        .send()
        .await
        .unwrap();
    health
        .target_health_descriptions()
        .iter()
        .filter_map(|d| d.target().and_then(|t| t.id()).map(str::to_owned))
        .collect()
}
