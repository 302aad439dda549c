-- A pull request build's pull request: its number, title, source and target branches, the
-- repository its commits come from and whether that is a fork. NULL for other builds.
ALTER TABLE builds ADD COLUMN pull_request jsonb;

-- Why a running build was asked to stop, when not by a person (a newer push superseded it):
-- the build ends cancelled with this reason.
ALTER TABLE builds ADD COLUMN cancel_reason text;

-- Who made the commit a build built, and the first line of its message (read from the
-- repository when the build checks it out).
ALTER TABLE builds ADD COLUMN author text;
ALTER TABLE builds ADD COLUMN message text;
