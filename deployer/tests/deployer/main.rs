//! The deployer's one integration-test binary: the algorithm against the contract-enforcing
//! fake target, the docker target against the real dockerd, the aws target against moto.

mod algorithm;
mod aws;
mod aws_health;
mod aws_kill;
mod balancer;
mod docker;
mod docker_env;
mod moto;
mod ports;
mod support;
mod tcp_dockerd;
