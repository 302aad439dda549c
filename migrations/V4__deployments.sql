-- Blue/green deployments: each one's persisted record (the deployer's JSON, plus the columns
-- status pages and recovery filter on), the steps it ran with their timings, the fleet serving
-- each environment, and one lock per environment with its owner and heartbeat.

CREATE TABLE deployments (
    id          text PRIMARY KEY,
    project     text NOT NULL,
    environment text NOT NULL,
    release     text NOT NULL,
    kind        text NOT NULL,
    state       text NOT NULL,
    reason      text,
    record      jsonb NOT NULL,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    finished_at timestamptz
);
CREATE INDEX deployments_by_environment ON deployments (project, environment, started_at DESC);
CREATE INDEX deployments_by_release ON deployments (project, environment, release);
CREATE INDEX deployments_unfinished ON deployments (project, environment) WHERE finished_at IS NULL;

-- A step that ran again after a crash gets a second row: the history shows both attempts.
CREATE TABLE deployment_steps (
    id            bigserial PRIMARY KEY,
    deployment_id text NOT NULL REFERENCES deployments (id),
    step          text NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    elapsed_ms    bigint,
    error         text
);
CREATE INDEX deployment_steps_by_deployment ON deployment_steps (deployment_id, id);

CREATE TABLE environment_live (
    project     text NOT NULL,
    environment text NOT NULL,
    fleet       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, environment)
);

CREATE TABLE environment_locks (
    project      text NOT NULL,
    environment  text NOT NULL,
    owner        text NOT NULL,
    acquired_at  timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    ttl_ms       bigint NOT NULL,
    PRIMARY KEY (project, environment)
);
