-- Bakes: the image each release was baked into (Packer + Ansible), and the bake's log.
-- A release's bake_status is NULL until its bake starts; bake_key identifies an identical bake.

ALTER TABLE releases
    ADD COLUMN bake_status text CHECK (bake_status IN ('baking', 'baked', 'failed')),
    ADD COLUMN bake_reason text,
    ADD COLUMN bake_key    text,
    ADD COLUMN image       text,   -- e.g. slipway/hello:v3 (docker) or the AMI id
    ADD COLUMN image_id    text,   -- docker image id (sha256:...)
    ADD COLUMN baked_at    timestamptz;
CREATE TABLE bake_log_lines (
    release_id uuid NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    at         timestamptz NOT NULL,
    line       text NOT NULL,
    PRIMARY KEY (release_id, seq)
);
