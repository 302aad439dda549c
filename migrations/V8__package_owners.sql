-- Package names in the shared apt repository: each belongs to one project, the one that first
-- packaged it, or the one that declares it in the server's config (`packages` on a project;
-- the server records those claims at start). Another project's release of that name fails.

CREATE TABLE package_owners (
    package    text PRIMARY KEY,
    project    text NOT NULL,
    declared   boolean NOT NULL DEFAULT false,   -- claimed by the config, not by a first release
    claimed_at timestamptz NOT NULL DEFAULT now()
);

-- Names already published belong to the project that published them first.
INSERT INTO package_owners (package, project, claimed_at)
SELECT DISTINCT ON (package_name) package_name, project, COALESCE(published_at, created_at)
FROM releases
WHERE package_name IS NOT NULL
ORDER BY package_name, COALESCE(published_at, created_at), number;
