//! Slipway's integration tests: one binary that spawns the whole service (in-process on port
//! 0, or as the real `slipway` binary) against real PostgreSQL and dockerd.

mod helpers;

mod agents;
mod apt_s3;
mod autoscale;
mod aws_deploy;
mod backup;
mod bake;
mod bake_stage;
mod bitbucket;
mod builds;
mod cache;
mod cli;
mod data_plane;
mod dependencies;
mod deploy;
mod greet;
mod health;
mod hostile_input;
mod lintian;
mod logs;
mod metrics;
mod netns;
mod notify;
mod packaging;
mod pipeline_cli;
#[path = "../../deployer/tests/deployer/ports.rs"]
mod ports;
mod pull_requests;
mod registry;
mod release_guards;
mod release_order;
mod releases;
mod retention;
mod schema;
mod server_process;
mod servers;
mod sources;
mod ssh_clone;
#[path = "../../deployer/tests/deployer/tcp_dockerd.rs"]
mod tcp_dockerd;
mod team_bake;
mod tokens;
mod web_ui;
mod webhooks;
