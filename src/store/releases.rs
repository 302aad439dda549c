//! Releases, the packages they were published as, and the images they were baked into.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::release_images::{images_from_json, ImageSlot, ReleaseImage, AMI};
use super::{next_number, Store, StoreResult};

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    #[serde(skip)]
    pub id: Uuid,
    /// `v<number>`.
    pub version: String,
    pub number: i64,
    pub project: String,
    pub build: i64,
    pub commit: String,
    /// `packaging`, `published` or `failed`.
    pub status: String,
    pub reason: Option<String>,
    pub package: Option<PackageRecord>,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    /// The Docker image's bake: `queued`, `baking`, `baked`, `failed`, or `removed` (by
    /// retention); `None` when the release has no Docker image to bake (yet).
    pub bake_status: Option<String>,
    /// The bake's id once one started: what it left carries the Docker label
    /// `slipway.bake=<id>` (containers) or `slipway.baked-by=<id>` (images).
    pub bake_id: Option<String>,
    pub bake_reason: Option<String>,
    pub bake_key: Option<String>,
    /// The baked image, e.g. `slipway/hello-1a2b3c4d:v3` (docker) or an AMI id.
    pub image: Option<String>,
    /// The Docker image id (`sha256:...`).
    pub image_id: Option<String>,
    pub baked_at: Option<DateTime<Utc>>,
    /// What the first bake recorded for rebakes: the image's `CMD` and declared ports.
    /// `None` until a bake starts; a release without it cannot be rebaked.
    pub image_command: Option<Vec<String>>,
    pub exposed_ports: Option<Vec<i32>>,
    /// What lintian said of the package; `None` until it ran.
    pub lintian: Option<LintianReport>,
    /// Every image of the release, by kind (the Docker image; an AMI per region).
    pub images: Vec<ReleaseImage>,
    /// When retention (`apt_keep`) removed its package from the apt repository.
    pub package_removed_at: Option<DateTime<Utc>>,
}

/// Lintian's errors and warnings on a release's package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LintianReport {
    /// `clean`, `issues` (errors or warnings listed), or `not_checked` (see `note`).
    pub status: String,
    /// Lintian's `E:` lines, e.g. `E: hello: description-starts-with-package-name`.
    pub errors: Vec<String>,
    /// Lintian's `W:` lines.
    pub warnings: Vec<String>,
    /// Why the package was not checked, or that the list was cut.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageRecord {
    pub name: String,
    pub version: String,
    pub filename: String,
    pub size: i64,
    pub sha256: String,
}

/// The project a package name belongs to, and whether the config declares it so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageOwner {
    pub project: String,
    pub declared: bool,
}

/// An image a bake produced: its name and the Docker image id (or AMI id) behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakedImage {
    pub image: String,
    pub image_id: String,
}

/// What a Docker bake needs beyond the apt repository (and the release's package name and
/// version), read from the checkout and recorded on the release when it is published, so that
/// no bake needs the build's workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakeRecipe {
    pub command: Vec<String>,
    pub exposed_ports: Vec<i32>,
}

/// The release a new one must follow in commit order: the project's newest that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestRelease {
    pub number: i64,
    pub commit: String,
}

/// What a passing deploy-branch build got: a release number, or the reason it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseSlot {
    /// Release `number`, recorded `packaging`.
    Numbered { id: Uuid, number: i64 },
    /// No release; the reason is recorded on the build.
    Skipped { reason: String },
}

/// The advisory lock class under which a project's releases are decided and numbered (the
/// project's name hashed is the lock's other half).
pub(crate) const RELEASE_ORDER_LOCK: i32 = 4242009;

/// Copies a release's Docker bake state (`$1`: the release id) into its `release_images` row.
const SYNC_DOCKER_IMAGE: &str = "INSERT INTO release_images
        (release_id, kind, region, status, reason, bake_key, image, image_id, started_at, baked_at)
    SELECT id, 'docker', '', bake_status, bake_reason, bake_key, image, image_id,
           CASE WHEN bake_status = 'baking' THEN now() END, baked_at
    FROM releases WHERE id = $1 AND bake_status IS NOT NULL
    ON CONFLICT (release_id, kind, region) DO UPDATE SET
        status = EXCLUDED.status, reason = EXCLUDED.reason, bake_key = EXCLUDED.bake_key,
        image = EXCLUDED.image, image_id = EXCLUDED.image_id,
        started_at = coalesce(release_images.started_at, EXCLUDED.started_at),
        baked_at = EXCLUDED.baked_at";

/// One line of a release's bake log.
#[derive(Debug, Clone, Serialize)]
pub struct BakeLogLine {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub line: String,
}

const COLUMNS: &str = "r.id, r.number, r.project, b.number, r.commit, r.status, r.reason, r.package_name, r.package_version,
    r.package_filename, r.package_size, r.package_sha256, r.created_at, r.published_at,
    r.bake_status, r.bake_reason, r.bake_key, r.image, r.image_id, r.baked_at, r.image_command, r.exposed_ports,
    r.lintian_status, r.lintian_errors, r.lintian_warnings, r.lintian_note,
    (SELECT coalesce(json_agg(json_build_object(
        'kind', i.kind, 'region', NULLIF(i.region, ''),
        'id', CASE WHEN i.kind = 'docker' THEN i.image_id ELSE i.image END,
        'name', CASE WHEN i.kind = 'docker' THEN i.image END,
        'status', i.status, 'reason', i.reason, 'bake_key', i.bake_key, 'baked_at', i.baked_at,
        'copy_of', i.copy_of)
        ORDER BY i.kind DESC, i.region), '[]'::json)
     FROM release_images i WHERE i.release_id = r.id), r.package_removed_at";

fn from_row(row: &tokio_postgres::Row) -> Release {
    let number: i64 = row.get(1);
    let package = row.get::<_, Option<String>>(7).map(|name| PackageRecord {
        name,
        version: row.get(8),
        filename: row.get(9),
        size: row.get(10),
        sha256: row.get(11),
    });
    let images = images_from_json(row.get(26));
    let mut release = Release {
        id: row.get(0),
        version: format!("v{number}"),
        number,
        project: row.get(2),
        build: row.get(3),
        commit: row.get(4),
        status: row.get(5),
        reason: row.get(6),
        package,
        created_at: row.get(12),
        published_at: row.get(13),
        bake_id: row
            .get::<_, Option<String>>(14)
            .map(|_| bake_id(row.get(0))),
        bake_status: row.get(14),
        bake_reason: row.get(15),
        bake_key: row.get(16),
        image: row.get(17),
        image_id: row.get(18),
        baked_at: row.get(19),
        image_command: row.get(20),
        exposed_ports: row.get(21),
        lintian: row
            .get::<_, Option<String>>(22)
            .map(|status| LintianReport {
                status,
                errors: row.get::<_, Option<Vec<String>>>(23).unwrap_or_default(),
                warnings: row.get::<_, Option<Vec<String>>>(24).unwrap_or_default(),
                note: row.get(25),
            }),
        images,
        package_removed_at: row.get(27),
    };
    release.follow_the_ami_without_a_docker_image();
    release
}

impl Release {
    /// A release baked into AMIs only (its project has aws environments only) shows the bake
    /// of its AMI in the bake's region (not a copy's) in its bake columns: the image is the
    /// AMI id.
    fn follow_the_ami_without_a_docker_image(&mut self) {
        if self.bake_status.is_some() {
            return;
        }
        let baked = |image: &&ReleaseImage| image.kind == AMI && image.copy_of.is_none();
        let Some(ami) = self.images.iter().find(baked) else {
            return;
        };
        self.bake_status = Some(ami.status.clone());
        self.bake_id = Some(bake_id(self.id));
        self.bake_reason = ami.reason.clone();
        self.bake_key = ami.bake_key.clone();
        self.image = ami.id.clone();
        self.baked_at = ami.baked_at;
    }
}

/// The id a release's bakes run under: the release id, as 32 hex digits.
pub fn bake_id(release: Uuid) -> String {
    release.simple().to_string()
}

impl Store {
    /// Numbers a new release of `build` (commit `commit`) unless its commit does not follow
    /// the project's newest release: `follows` is asked, with that release, for the reason
    /// the commit does not (`None`: it does). A skipped build records the reason. Decision and
    /// number are taken under a per-project lock in one transaction, so two builds finishing
    /// at once are decided one after the other, each seeing the other's release.
    ///
    /// Failed releases are not followed: they have no package (and a build whose packaging a
    /// stop interrupted must be able to release its commit again).
    pub async fn create_release_in_commit_order<F, Fut>(
        &self,
        project: &str,
        build: Uuid,
        commit: &str,
        follows: F,
    ) -> StoreResult<Result<ReleaseSlot, String>>
    where
        F: FnOnce(NewestRelease) -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>, String>>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&RELEASE_ORDER_LOCK, &project],
        )
        .await?;
        let newest = tx
            .query_opt(
                "SELECT number, commit FROM releases WHERE project = $1 AND status <> 'failed'
                 ORDER BY number DESC LIMIT 1",
                &[&project],
            )
            .await?;
        if let Some(row) = newest {
            let newest = NewestRelease {
                number: row.get(0),
                commit: row.get(1),
            };
            let skip = match follows(newest).await {
                Ok(skip) => skip,
                Err(error) => return Ok(Err(error)),
            };
            if let Some(reason) = skip {
                tx.execute(
                    "UPDATE builds SET release_skipped = $2 WHERE id = $1",
                    &[&build, &reason],
                )
                .await?;
                tx.commit().await?;
                return Ok(Ok(ReleaseSlot::Skipped { reason }));
            }
        }
        let number = next_number(&tx, project, "release").await?;
        let id = Uuid::new_v4();
        tx.execute(
            "INSERT INTO releases (id, project, number, build_id, commit, status) VALUES ($1, $2, $3, $4, $5, 'packaging')",
            &[&id, &project, &number, &build, &commit],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(ReleaseSlot::Numbered { id, number }))
    }

    /// Claims package name `package` for `project` unless a project holds it already, and
    /// returns its owner. A name once claimed stays claimed (by its first claimant, or by the
    /// project whose config declares it).
    pub async fn claim_package(&self, package: &str, project: &str) -> StoreResult<PackageOwner> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO package_owners (package, project) VALUES ($1, $2) ON CONFLICT (package) DO NOTHING",
                &[&package, &project],
            )
            .await?;
        // A separate statement: it sees a claim a concurrent insert committed first.
        let row = client
            .query_one(
                "SELECT project, declared FROM package_owners WHERE package = $1",
                &[&package],
            )
            .await?;
        Ok(PackageOwner {
            project: row.get(0),
            declared: row.get(1),
        })
    }

    /// Records the package names each project declares in the config as theirs, taking over
    /// names another project claimed by packaging them first.
    pub async fn claim_declared_packages(&self, declared: &[(String, String)]) -> StoreResult<()> {
        if declared.is_empty() {
            return Ok(());
        }
        let (packages, projects): (Vec<&str>, Vec<&str>) = declared
            .iter()
            .map(|(package, project)| (package.as_str(), project.as_str()))
            .unzip();
        self.client()
            .await?
            .execute(
                "INSERT INTO package_owners (package, project, declared)
                 SELECT package, project, true FROM unnest($1::text[], $2::text[]) AS d (package, project)
                 ON CONFLICT (package) DO UPDATE SET project = excluded.project, declared = true,
                 claimed_at = CASE WHEN package_owners.project = excluded.project AND package_owners.declared
                                   THEN package_owners.claimed_at ELSE now() END",
                &[&packages, &projects],
            )
            .await?;
        Ok(())
    }

    /// Fails every release still `packaging` whose build's server is not live: the ones a
    /// stopped or dead server left. Returns them (as they were).
    pub async fn fail_interrupted_packaging(&self, reason: &str) -> StoreResult<Vec<Release>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "WITH failed AS (UPDATE releases SET status = 'failed', reason = $1
                     FROM builds WHERE builds.id = releases.build_id
                         AND releases.status = 'packaging'
                         AND NOT CASE WHEN builds.agent_id IS NULL THEN {}
                                      ELSE builds.status = 'running' AND builds.lease_expires > now() END
                     RETURNING releases.id)
                     SELECT {COLUMNS} FROM releases r JOIN builds b ON b.id = r.build_id
                     WHERE r.id IN (SELECT id FROM failed)",
                    super::servers::owner_live("builds.owner")
                ),
                &[&reason],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    pub async fn mark_release_published(
        &self,
        id: Uuid,
        package: &PackageRecord,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE releases SET status = 'published', published_at = now(), package_name = $2, package_version = $3,
                 package_filename = $4, package_size = $5, package_sha256 = $6 WHERE id = $1",
                &[&id, &package.name, &package.version, &package.filename, &package.size, &package.sha256],
            )
            .await?;
        Ok(())
    }

    pub async fn record_lintian(&self, id: Uuid, report: &LintianReport) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE releases SET lintian_status = $2, lintian_errors = $3, lintian_warnings = $4,
                 lintian_note = $5 WHERE id = $1",
                &[&id, &report.status, &report.errors, &report.warnings, &report.note],
            )
            .await?;
        Ok(())
    }

    pub async fn mark_release_failed(&self, id: Uuid, reason: &str) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE releases SET status = 'failed', reason = $2 WHERE id = $1",
                &[&id, &reason],
            )
            .await?;
        Ok(())
    }

    /// A project's releases, newest first.
    pub async fn list_releases(&self, project: &str) -> StoreResult<Vec<Release>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {COLUMNS} FROM releases r JOIN builds b ON b.id = r.build_id WHERE r.project = $1 ORDER BY r.number DESC"),
                &[&project],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Release `number` of `project`.
    pub async fn release(&self, project: &str, number: i64) -> StoreResult<Option<Release>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM releases r JOIN builds b ON b.id = r.build_id WHERE r.project = $1 AND r.number = $2"),
                &[&project, &number],
            )
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// The release with id `id`.
    pub async fn release_by_id(&self, id: Uuid) -> StoreResult<Option<Release>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM releases r JOIN builds b ON b.id = r.build_id WHERE r.id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// The image of the newest baked release of `project` numbered below `number`.
    pub async fn previous_baked_image(
        &self,
        project: &str,
        number: i64,
    ) -> StoreResult<Option<BakedImage>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT image, image_id FROM releases WHERE project = $1 AND number < $2
                 AND bake_status = 'baked' AND image IS NOT NULL AND image_id IS NOT NULL
                 ORDER BY number DESC LIMIT 1",
                &[&project, &number],
            )
            .await?;
        Ok(row.map(|row| BakedImage {
            image: row.get(0),
            image_id: row.get(1),
        }))
    }

    /// Queues a rebake of the release's Docker image (it bakes even if an image with an equal
    /// bake key exists), unless it is queued or baking already or has no recorded recipe.
    /// Returns the release as queued, or `None` when the claim was refused. One statement
    /// decides, so two claims cannot both win.
    pub async fn claim_rebake(&self, id: Uuid) -> StoreResult<Option<Release>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let claimed = tx
            .execute(
                "UPDATE releases SET bake_status = 'queued', bake_reason = NULL, image = NULL,
                 image_id = NULL, baked_at = NULL
                 WHERE id = $1 AND status = 'published' AND image_command IS NOT NULL
                 AND coalesce(bake_status, '') NOT IN ('queued', 'baking')",
                &[&id],
            )
            .await?;
        if claimed == 0 {
            return Ok(None);
        }
        tx.execute(SYNC_DOCKER_IMAGE, &[&id]).await?;
        tx.execute(
            "UPDATE release_images SET rebake = true, attempts = 0, queued_at = now(),
             started_at = NULL WHERE release_id = $1 AND kind = 'docker'",
            &[&id],
        )
        .await?;
        let row = tx
            .query_one(
                &format!("SELECT {COLUMNS} FROM releases r JOIN builds b ON b.id = r.build_id WHERE r.id = $1"),
                &[&id],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(from_row(&row)))
    }

    /// Records the bake key of a claimed bake.
    pub async fn set_bake_key(&self, id: Uuid, key: &str) -> StoreResult<()> {
        self.update_docker_bake(
            id,
            "UPDATE releases SET bake_key = $2 WHERE id = $1",
            &[&id, &key],
        )
        .await
    }

    /// A project's releases that can be rebaked (published, with a recorded recipe), newest first.
    pub async fn rebakeable_releases(&self, project: &str) -> StoreResult<Vec<Release>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {COLUMNS} FROM releases r JOIN builds b ON b.id = r.build_id
                          WHERE r.project = $1 AND r.status = 'published' AND r.image_command IS NOT NULL
                          ORDER BY r.number DESC"),
                &[&project],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    pub async fn mark_baked(&self, id: Uuid, image: &BakedImage) -> StoreResult<()> {
        self.update_docker_bake(
            id,
            "UPDATE releases SET bake_status = 'baked', bake_reason = NULL, image = $2, image_id = $3,
             baked_at = now() WHERE id = $1",
            &[&id, &image.image, &image.image_id],
        )
        .await
    }

    pub async fn mark_bake_failed(&self, id: Uuid, reason: &str) -> StoreResult<()> {
        self.update_docker_bake(
            id,
            "UPDATE releases SET bake_status = 'failed', bake_reason = $2, image = NULL, image_id = NULL
             WHERE id = $1",
            &[&id, &reason],
        )
        .await
    }

    /// Runs `update` with `params` on release `id`'s Docker bake columns and copies them into
    /// its `release_images` row in one transaction, so that no reader sees the two disagree.
    async fn update_docker_bake(
        &self,
        id: Uuid,
        update: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(update, params).await?;
        tx.execute(SYNC_DOCKER_IMAGE, &[&id]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends lines to the bake log of the release's image `slot`; `seq` numbers are assigned
    /// by the caller, in order.
    pub async fn append_bake_log_lines(
        &self,
        release: Uuid,
        slot: &ImageSlot,
        lines: &[BakeLogLine],
    ) -> StoreResult<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = lines.iter().map(|l| l.seq).collect();
        let ats: Vec<DateTime<Utc>> = lines.iter().map(|l| l.at).collect();
        let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
        self.client()
            .await?
            .execute(
                "INSERT INTO bake_log_lines (release_id, kind, region, seq, at, line)
                 SELECT $1, $2, $3, * FROM unnest($4::bigint[], $5::timestamptz[], $6::text[])",
                &[&release, &slot.kind, &slot.region, &seqs, &ats, &texts],
            )
            .await?;
        Ok(())
    }

    /// The bake log of the release's image `slot`, in order.
    pub async fn bake_log_lines(
        &self,
        release: Uuid,
        slot: &ImageSlot,
    ) -> StoreResult<Vec<BakeLogLine>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, at, line FROM bake_log_lines
                 WHERE release_id = $1 AND kind = $2 AND region = $3 ORDER BY seq",
                &[&release, &slot.kind, &slot.region],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| BakeLogLine {
                seq: row.get(0),
                at: row.get(1),
                line: row.get(2),
            })
            .collect())
    }
}
