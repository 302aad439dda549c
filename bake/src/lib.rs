//! Slipway bake: native .deb building, the server's OpenPGP signer, the signed apt repository,
//! and Packer runs that bake a release into a Docker image or an AMI.
//!
//! Plain structs in, files and records out: nothing here knows about HTTP, Postgres or
//! configuration files. The root crate serves the repository directory under `/apt/`.
//!
//! A published release is then baked with [`bake`] (Packer with `packer/slipway.json` and
//! `ansible/bake.yml`) into a Docker image or an AMI; see [`packer`]. The caller records the
//! artifact with [`BakeRequest::bake_key`], and may reuse an image whose key is equal.
//!
//! ```no_run
//! use std::path::Path;
//! use slipway_bake::{deb, AptRepository, PackageDefinition, PublishRecord, Result, Signer};
//!
//! fn release(definition: &PackageDefinition, checkout: &Path, data_dir: &Path) -> Result<PublishRecord> {
//!     let package = deb::build(definition, checkout, &data_dir.join("artifacts"))?;
//!     let signer = Signer::open_or_create(&data_dir.join("gpg"), "Slipway <slipway@example.com>")?;
//!     let repository = AptRepository::open(&data_dir.join("apt"), signer)?;
//!     repository.publish(&package.path, &package.info)
//! }
//! ```

pub mod ami;
pub mod apt;
pub mod deb;
mod error;
pub mod packer;
pub mod signing;

pub use ami::{AmiAccount, Communicator, SourceAmi};
pub use apt::{AptRepository, PublishRecord, RemovedPackage};
pub use deb::{
    DebPackage, ExtraFile, MaintainerScripts, PackageDefinition, PackageFile, PackageInfo,
};
pub use error::{Error, Result};
pub use packer::stop_orphaned_packer;
pub use packer::{
    bake, bake_key, finished_image, reap_bake, tag_image, AmazonEbsSource, ArtifactKind,
    BakeArtifact, BakeError, BakeObserver, BakeRequest, BakeSource, DockerSource, Reap,
    TeamPlaybook, CONTAINER_LABEL, DEFAULT_PROVISIONING, IMAGE_LABEL, KEY_LABEL,
};
pub use signing::Signer;
