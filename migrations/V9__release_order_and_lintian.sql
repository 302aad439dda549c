-- Releases in commit order, and lintian's verdict on each release's package.
--
-- A passing build on the deploy branch whose commit is an ancestor of (or equal to) the
-- newest release's commit does not become a release: the build records why.
ALTER TABLE builds ADD COLUMN release_skipped text;

-- What lintian said of the release's .deb: NULL until it ran (or for releases made before);
-- 'clean', 'issues' (errors or warnings below), or 'not_checked' (lintian absent, timed out,
-- or failed; `lintian_note` says which).
ALTER TABLE releases ADD COLUMN lintian_status text
    CHECK (lintian_status IN ('clean', 'issues', 'not_checked'));
ALTER TABLE releases ADD COLUMN lintian_errors text[];
ALTER TABLE releases ADD COLUMN lintian_warnings text[];
ALTER TABLE releases ADD COLUMN lintian_note text;

-- A release the auto-deploy refused to put on an environment (its commit is an ancestor of
-- the live release's commit), so it is not tried again; the reason is shown with the
-- environment.
CREATE TABLE auto_deploy_skips (
    project     text NOT NULL,
    environment text NOT NULL,
    release     text NOT NULL,
    reason      text NOT NULL,
    skipped_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, environment, release)
);
