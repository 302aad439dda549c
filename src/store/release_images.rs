//! The images each release is baked into, one per kind (`release_images`): its Docker image,
//! and an AMI per region of the project's aws environments, each with its own bake status.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
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
    /// `queued`, `baking`, `baked`, `failed`, or after retention `deregistered` (an AMI) or
    /// `removed` (a Docker image).
    pub status: String,
    pub reason: Option<String>,
    pub bake_key: Option<String>,
    pub baked_at: Option<DateTime<Utc>>,
    /// For an AMI copied from the one baked in another region: that region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
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

/// One image of a release to bake: its kind and region (`""` for the Docker image).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageSlot {
    pub kind: String,
    pub region: String,
}

impl ImageSlot {
    /// The release's Docker image.
    pub fn docker() -> ImageSlot {
        ImageSlot {
            kind: DOCKER.to_string(),
            region: String::new(),
        }
    }

    /// The release's AMI in `region`.
    pub fn ami(region: &str) -> ImageSlot {
        ImageSlot {
            kind: AMI.to_string(),
            region: region.to_string(),
        }
    }

    pub fn is_docker(&self) -> bool {
        self.kind == DOCKER
    }
}

impl std::fmt::Display for ImageSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.region.as_str() {
            "" => f.write_str(&self.kind),
            region => write!(f, "{} in {region}", self.kind),
        }
    }
}

/// One image of a release to queue: its slot, and for an AMI copied from the one baked in
/// another region, that region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedImage {
    pub slot: ImageSlot,
    pub copy_of: Option<String>,
}

impl QueuedImage {
    /// An image baked with Packer.
    pub fn baked(slot: ImageSlot) -> QueuedImage {
        QueuedImage {
            slot,
            copy_of: None,
        }
    }
}

/// An image's bake the dispatcher claimed (now `baking`), or one a stopped server left `baking`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedBake {
    pub release: Uuid,
    pub slot: ImageSlot,
    /// For an AMI copied rather than baked: the region of the AMI it is copied from.
    pub copy_of: Option<String>,
    /// Bake even if an image with an equal bake key exists.
    pub rebake: bool,
    /// The claims since the image was queued, this one included.
    pub attempts: i32,
}

fn claimed_from_row(row: &tokio_postgres::Row) -> ClaimedBake {
    ClaimedBake {
        release: row.get(0),
        slot: ImageSlot {
            kind: row.get(1),
            region: row.get(2),
        },
        rebake: row.get(3),
        attempts: row.get(4),
        copy_of: row.get(5),
    }
}

/// The releases table's bake columns follow the Docker image (`$1` the release, `$2` the status,
/// `$3` the reason), forgetting the image an earlier bake made.
const RESET_DOCKER_COLUMNS: &str = "UPDATE releases SET bake_status = $2, bake_reason = $3,
     bake_key = NULL, image = NULL, image_id = NULL, baked_at = NULL WHERE id = $1";

impl Store {
    /// Queues the bakes of a just published release: one row per image in `slots`, and the
    /// recipe the Docker image's bake needs, read from the checkout at publish time. Without a
    /// recipe (`Err`: why) the Docker image fails at once with that reason.
    pub async fn enqueue_release_images(
        &self,
        release: Uuid,
        images: &[QueuedImage],
        recipe: &Result<super::releases::BakeRecipe, String>,
    ) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Ok(recipe) = recipe {
            tx.execute(
                "UPDATE releases SET image_command = $2, exposed_ports = $3 WHERE id = $1",
                &[&release, &recipe.command, &recipe.exposed_ports],
            )
            .await?;
        }
        for QueuedImage { slot, copy_of } in images {
            let (status, reason) = match (slot.is_docker(), recipe) {
                (true, Err(reason)) => ("failed", Some(reason.as_str())),
                _ => ("queued", None),
            };
            tx.execute(
                "INSERT INTO release_images (release_id, kind, region, status, reason, copy_of)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (release_id, kind, region) DO UPDATE SET
                     status = EXCLUDED.status, reason = EXCLUDED.reason, bake_key = NULL,
                     image = NULL, image_id = NULL, queued_at = now(), started_at = NULL,
                     baked_at = NULL, attempts = 0, rebake = false, copy_of = EXCLUDED.copy_of",
                &[
                    &release,
                    &slot.kind,
                    &slot.region,
                    &status,
                    &reason,
                    copy_of,
                ],
            )
            .await?;
            if slot.is_docker() {
                tx.execute(RESET_DOCKER_COLUMNS, &[&release, &status, &reason])
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims the image queued longest (skipping those another server claims at this moment),
    /// of any kind but Docker images when `docker` is false (dockerd is unreachable), and an
    /// AMI copy only once its source's bake ended: marks it `baking`, counts the attempt and
    /// forgets its earlier log.
    pub async fn claim_next_bake(&self, docker: bool) -> StoreResult<Option<ClaimedBake>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "UPDATE release_images SET status = 'baking', reason = NULL, started_at = now(),
                     attempts = attempts + 1, owner = $2
                 WHERE (release_id, kind, region) = (
                     SELECT release_id, kind, region FROM release_images AS image
                     WHERE status = 'queued' AND ($1 OR kind <> 'docker')
                         AND NOT EXISTS (SELECT 1 FROM release_images AS source
                             WHERE source.release_id = image.release_id
                                 AND source.kind = image.kind AND source.region = image.copy_of
                                 AND source.status IN ('queued', 'baking'))
                     ORDER BY queued_at LIMIT 1 FOR UPDATE OF image SKIP LOCKED)
                 RETURNING release_id, kind, region, rebake, attempts, copy_of",
                &[&docker, &self.owner()],
            )
            .await?
        else {
            return Ok(None);
        };
        let claimed = claimed_from_row(&row);
        tx.execute(
            "DELETE FROM bake_log_lines WHERE release_id = $1 AND kind = $2 AND region = $3",
            &[&claimed.release, &claimed.slot.kind, &claimed.slot.region],
        )
        .await?;
        if claimed.slot.is_docker() {
            tx.execute(
                "UPDATE releases SET bake_status = 'baking', bake_reason = NULL WHERE id = $1",
                &[&claimed.release],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(claimed))
    }

    /// Fails the bake of the release's image `slot` with `reason`.
    pub async fn mark_image_failed(
        &self,
        release: Uuid,
        slot: &ImageSlot,
        reason: &str,
    ) -> StoreResult<()> {
        if slot.is_docker() {
            return self.mark_bake_failed(release, reason).await;
        }
        let record = ImageRecord {
            kind: &slot.kind,
            region: &slot.region,
            status: "failed",
            reason: Some(reason),
            bake_key: None,
            image: None,
            image_id: None,
        };
        self.record_release_image(release, &record).await
    }

    /// Takes over the images still `baking` under a server that is not live (the bakes a
    /// stopped or killed server left): they become this store's, so one server recovers each.
    pub async fn adopt_orphaned_bakes(&self) -> StoreResult<Vec<ClaimedBake>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "UPDATE release_images SET owner = $1
                     WHERE status = 'baking' AND NOT {}
                     RETURNING release_id, kind, region, rebake, attempts, copy_of",
                    super::servers::owner_live("release_images.owner")
                ),
                &[&self.owner()],
            )
            .await?;
        Ok(rows.iter().map(claimed_from_row).collect())
    }

    /// The images queued or baking: retention keeps what their bakes made, which a re-run
    /// may reuse.
    pub async fn images_unfinished(&self) -> StoreResult<Vec<ClaimedBake>> {
        self.images_in(&["queued", "baking"]).await
    }

    async fn images_in(&self, statuses: &[&str]) -> StoreResult<Vec<ClaimedBake>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT release_id, kind, region, rebake, attempts, copy_of FROM release_images
                 WHERE status = ANY($1)",
                &[&statuses],
            )
            .await?;
        Ok(rows.iter().map(claimed_from_row).collect())
    }

    /// Puts an interrupted bake back in the queue, first in line. `refund`: the interruption
    /// (a graceful stop) does not count as an attempt.
    pub async fn requeue_bake(&self, bake: &ClaimedBake, refund: bool) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let refund = i32::from(refund);
        tx.execute(
            "UPDATE release_images SET status = 'queued', reason = NULL, started_at = NULL,
                 image = NULL, image_id = NULL, baked_at = NULL, attempts = attempts - $4,
                 queued_at = (SELECT coalesce(min(queued_at), now()) FROM release_images
                              WHERE status = 'queued')
             WHERE release_id = $1 AND kind = $2 AND region = $3",
            &[&bake.release, &bake.slot.kind, &bake.slot.region, &refund],
        )
        .await?;
        if bake.slot.is_docker() {
            tx.execute(
                RESET_DOCKER_COLUMNS,
                &[&bake.release, &"queued", &None::<&str>],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// The AMIs in `region` the release records, whatever their status.
    pub async fn release_amis(&self, release: Uuid, region: &str) -> StoreResult<BTreeSet<String>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT image_id FROM release_images WHERE release_id = $1 AND kind = 'ami'
                 AND region = $2 AND image_id IS NOT NULL",
                &[&release, &region],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// The AMIs of `project` in `region` that retention must keep besides those instances run:
    /// the baked AMIs of its `keep_releases` newest releases that have one, and those of
    /// releases an unfinished deployment of the project is taking somewhere.
    pub async fn amis_to_keep(
        &self,
        project: &str,
        region: &str,
        keep_releases: u32,
    ) -> StoreResult<BTreeSet<String>> {
        let rows = self
            .client()
            .await?
            .query(
                "(SELECT i.image_id FROM release_images i JOIN releases r ON r.id = i.release_id
                  WHERE r.project = $1 AND i.kind = 'ami' AND i.region = $2
                  AND i.status = 'baked' AND i.image_id IS NOT NULL
                  ORDER BY r.number DESC LIMIT $3)
                 UNION
                 SELECT i.image_id FROM release_images i JOIN releases r ON r.id = i.release_id
                 JOIN deployments d ON d.project = r.project AND d.release = 'v' || r.number
                 WHERE r.project = $1 AND i.kind = 'ami' AND i.region = $2
                 AND i.image_id IS NOT NULL AND d.finished_at IS NULL",
                &[&project, &region, &i64::from(keep_releases)],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Records that retention deregistered these AMIs of `project` in `region`, saying why.
    pub async fn record_deregistered_amis(
        &self,
        project: &str,
        region: &str,
        amis: &[String],
        reason: &str,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE release_images i SET status = 'deregistered', reason = $4
                 FROM releases r WHERE r.id = i.release_id AND r.project = $1
                 AND i.kind = 'ami' AND i.region = $2 AND i.image_id = ANY($3)",
                &[&project, &region, &amis, &reason],
            )
            .await?;
        Ok(())
    }
}
