-- The bake as its own stage: a release's images wait in release_images (status 'queued') for
-- the bake dispatcher, which claims them; each image has its own log.
-- attempts: how many times a bake of the image was claimed since it was queued (a bake a
-- server stop interrupted runs again once). rebake: bake even if an image with an equal
-- bake key exists.
ALTER TABLE release_images
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN rebake   boolean NOT NULL DEFAULT false;
CREATE INDEX release_images_queued ON release_images (queued_at) WHERE status = 'queued';

-- The releases table's bake columns keep the Docker image's state, which may now be queued.
ALTER TABLE releases DROP CONSTRAINT releases_bake_status_check;
ALTER TABLE releases ADD CONSTRAINT releases_bake_status_check
    CHECK (bake_status IN ('queued', 'baking', 'baked', 'failed'));

-- One log per image: the Docker image's (kind 'docker', region '') or an AMI's.
ALTER TABLE bake_log_lines
    ADD COLUMN kind   text NOT NULL DEFAULT 'docker',
    ADD COLUMN region text NOT NULL DEFAULT '';
ALTER TABLE bake_log_lines DROP CONSTRAINT bake_log_lines_pkey;
ALTER TABLE bake_log_lines ADD PRIMARY KEY (release_id, kind, region, seq);
