//! Slipway's blue/green deployer: one algorithm ([`Deployer`]) over a [`Target`] trait, with
//! the docker target (containers behind a load balancer of their own, HAProxy in a container
//! that outlives the process, [`docker`]) and the
//! aws target (EC2 + ELBv2 + Auto Scaling, [`aws`]).
//!
//! This crate knows nothing of HTTP APIs, Postgres or configuration files: the root crate
//! passes plain structs in ([`DeployRequest`], [`DeployPolicy`]), implements persistence
//! ([`DeploymentStore`], [`LockStore`]) over its database, and watches progress through an
//! [`Observer`]. In-memory stores and a contract-enforcing [`fake::FakeTarget`] serve tests.
//!
//! How the root crate drives one environment:
//! 1. Build its target: for docker, [`DockerTarget::new`] with [`DockerSettings`] (its
//!    load balancer's image, container name, directory and listen address among them); for
//!    aws, [`aws::sdk_config`] and [`AwsTarget::new`].
//! 2. Build a [`Deployer`] over the target and the stores, and call [`Deployer::recover`]
//!    once: it starts (or adopts, as it runs) the docker load balancer, routing to the
//!    recorded live fleet when it had to start it, resumes (or rolls
//!    back) deployments a crash interrupted, and retires fleets nothing accounts for.
//! 3. [`Deployer::deploy`] for a new release; [`Deployer::rollback`] for `--to vN` (a switch
//!    to the warm fleet when there is one, else a full deploy of that image).
//! 4. [`Deployer::retire_expired`] every minute or so: blue fleets kept warm past their
//!    retention window are drained and removed.

pub mod aws;
pub mod deployer;
pub mod deployment;
pub mod docker;
pub mod error;
pub mod fake;
pub mod health;
pub mod lock;
pub mod observer;
pub mod schema;
pub mod store;
pub mod target;

pub use aws::{AwsSettings, AwsTarget};
pub use deployer::{DeployPolicy, DeployRequest, Deployer, Recovered};
pub use deployment::{Deployment, DeploymentKind, DeploymentState};
pub use docker::{
    DockerSettings, DockerTarget, LoadBalancer, LoadBalancerSettings, LoadBalancerStatus,
};
pub use error::{DeployError, StoreError, TargetError};
pub use health::{wait_healthy, HealthPolicy};
pub use lock::{Lease, LockHolder, LockStore, MemoryLockStore};
pub use observer::{NoopObserver, Observer};
pub use schema::SchemaMigrator;
pub use store::{DeploymentStore, MemoryDeploymentStore};
pub use target::{Fleet, FleetRef, HealthState, InstanceHealth, Target};
