//! The words of an AMI bake's settings that `slipway.toml` is checked against: the source
//! AMI, the communicator and the tags Slipway reserves. Free of AWS and of the rest of the
//! crate (serde only), so that the config parser's fuzz target compiles it in by path.

use serde::{Deserialize, Serialize};

/// The tag carrying the bake's id on everything a bake creates.
pub const BAKE_TAG: &str = "slipway_bake";
/// The tag naming the project on AMIs and snapshots (what retention looks for).
pub const PROJECT_TAG: &str = "project";
/// The tag carrying the bake key on AMIs and snapshots (what a bake that may reuse one looks
/// for).
pub const BAKE_KEY_TAG: &str = "bake_key";
/// Tags Slipway sets itself on AMIs and snapshots; a project's extra tags may not use them.
pub const RESERVED_TAGS: [&str; 8] = [
    "Name",
    PROJECT_TAG,
    "release",
    "commit",
    "package",
    "package_version",
    BAKE_KEY_TAG,
    BAKE_TAG,
];
/// Most extra tags: AWS allows 50 per resource, Slipway sets up to 9.
pub const MAX_EXTRA_TAGS: usize = 40;

/// Which AMI the bake starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceAmi {
    Id(String),
    /// The most recent AMI of these owners whose name matches (`*` wildcards).
    Filter {
        owners: Vec<String>,
        name: String,
    },
}

/// How Packer reaches the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Communicator {
    /// Packer connects over SSH and runs the playbook: a real bake.
    Ssh,
    /// No connection and no provisioning: for tests against moto, which runs no machine.
    None,
}
