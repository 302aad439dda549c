//! The pipeline crate's integration tests: snapshots of compiled plans, runtime decisions over
//! a contract-enforcing fake engine, and real runs against dockerd.

mod cache_runs;
mod docker_runs;
mod fake;
mod fake_runs;
mod graph_runs;
mod recorder;
mod snapshots;
