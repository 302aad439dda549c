//! Slipway: from a Bitbucket push to a healthy blue/green fleet.
//!
//! This crate is the service and its command line. It owns the IO plumbing (config files,
//! HTTP, the Postgres store, Docker connections) and drives the member crates with plain
//! structs: `slipway-pipeline` runs builds, `slipway-bake` packages and publishes releases.
//! See ARCHITECTURE.md for the map.

pub mod agent;
pub mod app_schema;
pub mod apt_bucket;
pub mod autoscale;
pub mod backup;
pub mod bake;
pub mod bitbucket;
pub mod build_reports;
pub mod cache;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod deploy;
pub mod docker;
pub mod mirror;
pub mod notify;
pub mod outage;
pub mod queue;
pub mod registries;
pub mod releases;
pub mod retention;
pub mod runner;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod webhook;
