-- Slipway's own state: who this server is, API tokens, per-project counters, webhook
-- deliveries seen, and builds with their steps and log lines.

CREATE TABLE server_identity (
    id         uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    token_sha256 bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

-- Monotonic per-project numbers (builds, releases): never reused.
CREATE TABLE counters (
    project text NOT NULL,
    kind    text NOT NULL,
    last    bigint NOT NULL,
    PRIMARY KEY (project, kind)
);

CREATE TABLE webhook_deliveries (
    delivery_id text PRIMARY KEY,
    project     text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE builds (
    id               uuid PRIMARY KEY,
    project          text NOT NULL,
    number           bigint NOT NULL,
    branch           text NOT NULL,
    commit           text NOT NULL,
    event            text NOT NULL,
    status           text NOT NULL CHECK (status IN ('queued', 'running', 'passed', 'failed', 'errored', 'cancelled')),
    reason           text,
    delivery_id      text,
    queued_at        timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (project, number)
);
CREATE INDEX builds_queued ON builds (queued_at) WHERE status = 'queued';

CREATE TABLE build_steps (
    build_id    uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    position    int NOT NULL,
    name        text NOT NULL,
    status      text NOT NULL,
    exit_code   int,
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (build_id, position)
);

CREATE TABLE build_log_lines (
    build_id uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    seq      bigint NOT NULL,
    step     text NOT NULL,
    at       timestamptz NOT NULL,
    stream   text NOT NULL,
    line     text NOT NULL,
    PRIMARY KEY (build_id, seq)
);
