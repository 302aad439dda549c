-- Every change of a build's status that Bitbucket shows on the commit (it started; it ended
-- passed, failed, errored or cancelled) is recorded here by a trigger, in the transaction that
-- changes the status, whatever code path changes it. Servers deliver the reports in order per
-- build (the build-status API of the project's Bitbucket), retrying with backoff; what
-- happened to each is kept and shown on the build.
CREATE TABLE build_reports (
    id              bigserial PRIMARY KEY,
    build_id        uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    status          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- NULL while it is to be delivered; then 'delivered', 'abandoned' (every attempt failed)
    -- or 'unreported' (the project reports to no Bitbucket).
    outcome         text CHECK (outcome IN ('delivered', 'abandoned', 'unreported')),
    finished_at     timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- The server delivering it, until when (a server that dies leaves it to another).
    claimed_by      uuid,
    claimed_until   timestamptz
);
CREATE INDEX build_reports_pending ON build_reports (id) WHERE outcome IS NULL;
CREATE INDEX build_reports_build ON build_reports (build_id, id);

CREATE FUNCTION record_build_report() RETURNS trigger AS $$
BEGIN
    IF NEW.status <> 'queued' AND (TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status) THEN
        INSERT INTO build_reports (build_id, status) VALUES (NEW.id, NEW.status);
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER builds_report AFTER INSERT OR UPDATE OF status ON builds
    FOR EACH ROW EXECUTE FUNCTION record_build_report();
