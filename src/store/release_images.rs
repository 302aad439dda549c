//! The images each release is baked into, one per kind (`release_images`): its Docker image,
//! and an AMI per region of the project's aws environments, each with its own bake status.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Store, StoreResult};

/// The kind of a Docker image in `release_images`.
pub const DOCKER: &str = "docker";
/// The kind of an AMI in `release_images`.
pub const AMI: &str = "ami";

/// One image of a release, as the API shows it in the release's `images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseImage {
    /// `docker` or `ami`.
    pub kind: String,
    /// The AMI's region; absent for the Docker image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The Docker image id (`sha256:...`) or the AMI id, once baked.
    pub id: Option<String>,
    /// The Docker image's name (`slipway/hello-1a2b3c4d:v3`); absent for an AMI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `queued`, `baking`, `baked` or `failed`.
    pub status: String,
    pub reason: Option<String>,
    pub bake_key: Option<String>,
}

/// The images of a release as `releases.rs` selects them (a JSON array).
pub(super) fn images_from_json(value: serde_json::Value) -> Vec<ReleaseImage> {
    // The store wrote every field, so a value that does not parse is a programming error
    // shown as no images rather than a failed listing.
    serde_json::from_value(value).unwrap_or_default()
}

/// An image's state to record: `kind` and `region` ('' for docker) name the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord<'a> {
    pub kind: &'a str,
    pub region: &'a str,
    pub status: &'a str,
    pub reason: Option<&'a str>,
    pub bake_key: Option<&'a str>,
    /// docker: the image's name; ami: the AMI id.
    pub image: Option<&'a str>,
    /// docker: the image id; ami: the AMI id.
    pub image_id: Option<&'a str>,
}

impl Store {
    /// Records (inserts or replaces) the state of one image of release `release`.
    pub async fn record_release_image(
        &self,
        release: Uuid,
        image: &ImageRecord<'_>,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO release_images
                     (release_id, kind, region, status, reason, bake_key, image, image_id,
                      started_at, baked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                         CASE WHEN $4 = 'baking' THEN now() END,
                         CASE WHEN $4 = 'baked' THEN now() END)
                 ON CONFLICT (release_id, kind, region) DO UPDATE SET
                     status = EXCLUDED.status, reason = EXCLUDED.reason,
                     bake_key = coalesce(EXCLUDED.bake_key, release_images.bake_key),
                     image = EXCLUDED.image, image_id = EXCLUDED.image_id,
                     started_at = coalesce(EXCLUDED.started_at, release_images.started_at),
                     baked_at = EXCLUDED.baked_at",
                &[
                    &release,
                    &image.kind,
                    &image.region,
                    &image.status,
                    &image.reason,
                    &image.bake_key,
                    &image.image,
                    &image.image_id,
                ],
            )
            .await?;
        Ok(())
    }
}
