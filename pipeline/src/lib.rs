//! Slipway pipelines: `.slipway.yml` is parsed into a [`spec::Spec`], compiled into a
//! [`plan::Plan`] by pure code, and run by [`runtime::run`] over an [`engine::Engine`]
//! ([`docker::DockerEngine`] in production). This crate knows nothing of HTTP, Postgres or
//! configuration files: callers pass plain structs in and progress flows out through
//! [`runtime::Observer`].

pub mod docker;
pub mod engine;
pub mod plan;
pub mod runtime;
pub mod spec;

pub use docker::DockerEngine;
pub use engine::{Engine, EngineError};
pub use plan::{compile, BuildInfo, CompileError, Plan};
pub use runtime::{
    reap, run, BuildCache, BuildOutcome, BuildStatus, CacheHandle, CacheReport, LogChunk, Migrator,
    MigratorHandle, Observer, Reaped, RunOptions, StepOutcome, StepResult, StepStatus,
    WorkspaceExport,
};
pub use spec::{parse, Event, PackageSpec, Spec, SpecError};
