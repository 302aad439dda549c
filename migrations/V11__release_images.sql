-- The images a release is baked into, one row per kind: its Docker image, and an AMI per region
-- of the project's aws environments. Each image has its own bake status, reason and bake key.
-- The releases table's bake columns keep naming the Docker image (the AMI when there is none).
CREATE TABLE release_images (
    release_id uuid NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('docker', 'ami')),
    region     text NOT NULL DEFAULT '',   -- the AMI's region; '' for the Docker image
    status     text NOT NULL CHECK (status IN ('queued', 'baking', 'baked', 'failed')),
    reason     text,
    bake_key   text,
    image      text,   -- docker: the image's name (slipway/hello-1a2b3c4d:v3); ami: the AMI id
    image_id   text,   -- docker: the image id (sha256:...); ami: the AMI id
    queued_at  timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    baked_at   timestamptz,
    PRIMARY KEY (release_id, kind, region),
    CHECK ((kind = 'docker') = (region = ''))
);

INSERT INTO release_images (release_id, kind, region, status, reason, bake_key, image, image_id, baked_at)
SELECT id, 'docker', '', bake_status, bake_reason, bake_key, image, image_id, baked_at
FROM releases WHERE bake_status IS NOT NULL;
