-- Several servers may share one database. Each process registers itself in `servers` with an
-- id of its own and heartbeats on the database's clock; work it claims (a build, and through
-- the build its release's packaging, a bake, an environment's lock) names it as the owner, so
-- that another server touches only what a dead owner left.
CREATE TABLE servers (
    id           uuid PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    -- The kernel boot and pid namespace `pid` is in: servers sharing it can tell whether
    -- another's process is gone (containers on one host share a host name, not pids).
    process_space text NOT NULL,
    version      text NOT NULL,
    listen       text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- Set by a graceful stop, or by a server in the same process space that found it gone.
    stopped_at   timestamptz
);

ALTER TABLE builds ADD COLUMN owner uuid;
-- A cancel asked of any server: the server running the build sees it and stops the build.
ALTER TABLE builds ADD COLUMN cancel_requested_at timestamptz;
ALTER TABLE release_images ADD COLUMN owner uuid;

-- The apt repository's signing key: one for the installation, made once, read by every server.
CREATE TABLE signing_key (
    only_one    boolean PRIMARY KEY DEFAULT true CHECK (only_one),
    fingerprint text NOT NULL,
    secret_key  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Housekeeping ([retention]): when a release's package left the apt repository.
ALTER TABLE releases ADD COLUMN package_removed_at timestamptz;
-- ... and a Docker image retention removed from dockerd (status 'removed', with the reason).
ALTER TABLE release_images DROP CONSTRAINT release_images_status_check;
ALTER TABLE release_images ADD CONSTRAINT release_images_status_check
    CHECK (status IN ('queued', 'baking', 'baked', 'failed', 'deregistered', 'removed'));
ALTER TABLE releases DROP CONSTRAINT releases_bake_status_check;
ALTER TABLE releases ADD CONSTRAINT releases_bake_status_check
    CHECK (bake_status IN ('queued', 'baking', 'baked', 'failed', 'removed'));
