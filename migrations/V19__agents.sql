-- Build agents: `slipway agent` processes on other machines that lease queued builds and run
-- them on their own dockerd. An agent registers under its name (a name registered again is
-- the same agent, restarted: its credential is replaced) and heartbeats on the database's
-- clock; the credential it was given is stored hashed, like API tokens.
CREATE TABLE agents (
    id                uuid PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    capacity          integer NOT NULL CHECK (capacity > 0),
    labels            jsonb NOT NULL DEFAULT '{}',
    version           text NOT NULL,
    host              text NOT NULL,
    credential_sha256 bytea NOT NULL UNIQUE,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at      timestamptz NOT NULL DEFAULT now(),
    -- Asked to take no new work (by itself on SIGTERM, or through the API), then to exit.
    draining          boolean NOT NULL DEFAULT false,
    stopped_at        timestamptz,
    -- The machine it runs on, as it says (`--instance-id`): the autoscaler matches agents
    -- with the instances of its group by it.
    instance_id       text
);

-- A build an agent runs is held by a lease, not by a server: `lease_expires` moves forward
-- with the agent's heartbeats. A lease handed out must be confirmed within seconds (the agent
-- received it) or the build goes back to the queue as it was; a confirmed lease that expires
-- re-queues the build once as a new attempt (its number stays), unless it reached packaging.
ALTER TABLE builds ADD COLUMN agent_id uuid REFERENCES agents (id) ON DELETE SET NULL;
ALTER TABLE builds ADD COLUMN agent_name text;
ALTER TABLE builds ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE builds ADD COLUMN lease_expires timestamptz;
ALTER TABLE builds ADD COLUMN lease_confirmed boolean NOT NULL DEFAULT false;
-- The labels its `.slipway.yml` asks agents to have, once a checkout read them (NULL before):
-- only an agent with all of them leases the build, and no server runs one that has any.
ALTER TABLE builds ADD COLUMN labels jsonb;

-- Every attempt keeps its steps and its log lines (numbered on from the last attempt's).
ALTER TABLE build_steps ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE build_steps DROP CONSTRAINT build_steps_pkey;
ALTER TABLE build_steps ADD PRIMARY KEY (build_id, attempt, position);
ALTER TABLE build_log_chunks ADD COLUMN attempt integer NOT NULL DEFAULT 1;

-- Instances the autoscaler detached from its group to terminate: recorded before the
-- detach, removed once terminated, so an instance a crash left detached is still terminated.
CREATE TABLE autoscale_detached (
    instance_id text PRIMARY KEY,
    detached_at timestamptz NOT NULL DEFAULT now()
);

-- An agent's builds: what it runs now, and when its last one ended (how long it has idled).
CREATE INDEX builds_by_agent ON builds (agent_id, finished_at) WHERE agent_id IS NOT NULL;
