-- Releases: a passing build on the deploy branch, numbered per project (never reused), and
-- the .deb it was packaged as. The number is allocated in the transaction that inserts the row.

CREATE TABLE releases (
    id               uuid PRIMARY KEY,
    project          text NOT NULL,
    number           bigint NOT NULL,
    build_id         uuid NOT NULL REFERENCES builds (id),
    commit           text NOT NULL,
    status           text NOT NULL CHECK (status IN ('packaging', 'published', 'failed')),
    reason           text,
    package_name     text,
    package_version  text,
    package_filename text,
    package_size     bigint,
    package_sha256   text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    UNIQUE (project, number)
);
