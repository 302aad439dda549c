//! Slipway bake: native .deb building, the server's OpenPGP signer and the signed apt repository.
//!
//! Plain structs in, files and records out: nothing here knows about HTTP, Postgres or
//! configuration files. The root crate serves the repository directory under `/apt/`.

pub mod apt;
pub mod deb;
mod error;
pub mod signing;

pub use apt::{AptRepository, PublishRecord};
pub use deb::{
    DebPackage, ExtraFile, MaintainerScripts, PackageDefinition, PackageFile, PackageInfo,
};
pub use error::{Error, Result};
pub use signing::Signer;
