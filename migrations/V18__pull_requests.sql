-- A pull request build's pull request: its number, title, source and target branches, the
-- repository its commits come from and whether that is a fork. NULL for other builds.
ALTER TABLE builds ADD COLUMN pull_request jsonb;
