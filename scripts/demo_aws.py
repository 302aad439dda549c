"""The AWS side of scripts/demo, against moto on loopback (run with the moto venv's python).

    demo_aws.py infra ENDPOINT NAME
        Makes what an operator's Terraform would give an aws environment: a VPC with two
        subnets, a load balancer, a listener, a blue and a green target group and a launch
        template. Prints the environment's settings as slipway.toml lines.
    demo_aws.py show ENDPOINT LISTENER_ARN LAUNCH_TEMPLATE_ID
        Prints where the listener forwards, each Auto Scaling group with its target groups
        and instances, the launch template's default AMI, and how many instances run.
"""

import sys

import boto3

REGION = "eu-west-1"


def client(service, endpoint):
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="demo",
        aws_secret_access_key="demo",
    )


def infra(endpoint, name):
    ec2, elb = client("ec2", endpoint), client("elbv2", endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for cidr, zone in [("10.0.1.0/24", "eu-west-1a"), ("10.0.2.0/24", "eu-west-1b")]
    ]
    base = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={"ImageId": base, "InstanceType": "t3.small"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    balancer = elb.create_load_balancer(Name=name, Subnets=subnets)["LoadBalancers"][0]
    groups = [
        elb.create_target_group(
            Name=f"{name}-{colour}",
            Protocol="HTTP",
            Port=80,
            VpcId=vpc,
            HealthCheckPath="/health",
        )["TargetGroups"][0]["TargetGroupArn"]
        for colour in ["blue", "green"]
    ]
    listener = elb.create_listener(
        LoadBalancerArn=balancer["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": groups[0]}],
    )["Listeners"][0]["ListenerArn"]
    print(f'region = "{REGION}"')
    print(f'endpoint_url = "{endpoint}"')
    print(f'listener_arn = "{listener}"')
    print(f'target_groups = ["{groups[0]}", "{groups[1]}"]')
    print(f'launch_template_id = "{template}"')
    print(f'subnets = ["{subnets[0]}", "{subnets[1]}"]')


def show(endpoint, listener, template):
    ec2, elb, asg = client("ec2", endpoint), client("elbv2", endpoint), client("autoscaling", endpoint)
    action = elb.describe_listeners(ListenerArns=[listener])["Listeners"][0]["DefaultActions"][0]
    forwarded = action["TargetGroupArn"]
    print(f"listener forwards to {forwarded.split(':')[-1]}")
    for group in asg.describe_auto_scaling_groups()["AutoScalingGroups"]:
        serving = "serving" if forwarded in group["TargetGroupARNs"] else "warm"
        print(f"  auto scaling group {group['AutoScalingGroupName']} ({serving}): {len(group['Instances'])} instances")
    version = ec2.describe_launch_template_versions(LaunchTemplateId=template, Versions=["$Default"])
    ami = version["LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"]
    print(f"launch template {template} default version: AMI {ami}")
    running = [
        instance["InstanceId"]
        for reservation in ec2.describe_instances()["Reservations"]
        for instance in reservation["Instances"]
        if instance["State"]["Name"] in ("pending", "running")
    ]
    print(f"instances running in moto: {len(running)}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"infra": infra, "show": show}[command](*args)
