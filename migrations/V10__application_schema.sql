-- The application's own database schema (not Slipway's): the migration files a release
-- carries and the schema version it expects, the migrations a build applied to its service
-- database, and the version each environment's database has reached.

ALTER TABLE releases ADD COLUMN schema_version bigint;

-- The release's migrations as they were at its commit: a deployment applies them to the
-- environment's database without going back to the repository.
CREATE TABLE release_migrations (
    release_id uuid NOT NULL REFERENCES releases (id),
    version    bigint NOT NULL,
    name       text NOT NULL,
    sql        text NOT NULL,
    PRIMARY KEY (release_id, version)
);

CREATE TABLE build_migrations (
    build_id   uuid NOT NULL REFERENCES builds (id),
    version    bigint NOT NULL,
    name       text NOT NULL,
    elapsed_ms bigint NOT NULL,
    PRIMARY KEY (build_id, version)
);

CREATE TABLE environment_schema (
    project     text NOT NULL,
    environment text NOT NULL,
    version     bigint NOT NULL,
    release     text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, environment)
);
