-- Notifications ([[projects.notify]]): triggers record what a team is told about, in the
-- transaction that makes it true, whatever code path does; servers turn each event into one
-- delivery per target whose `on` lists it, and deliver them with retries. The targets' URLs and
-- secrets stay in the config: a delivery names its target by its place in the project's list.
CREATE TABLE notification_events (
    id          bigserial PRIMARY KEY,
    project     text NOT NULL,
    -- build_failed, build_fixed, baked, bake_failed, deployed, deploy_failed, rolled_back
    event       text NOT NULL,
    -- What the message says: build number, branch, commit, reason; release, image, environment,
    -- deployment id.
    facts       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set once its deliveries are made (none when no target wants it).
    fanned_out_at timestamptz
);
CREATE INDEX notification_events_pending ON notification_events (id) WHERE fanned_out_at IS NULL;

CREATE TABLE notifications (
    id              bigserial PRIMARY KEY,
    event_id        bigint NOT NULL REFERENCES notification_events (id) ON DELETE CASCADE,
    -- The target's place in the project's [[projects.notify]] list, and its kind then.
    target          integer NOT NULL,
    kind            text NOT NULL,
    -- The message as sent (no secret: links and facts only).
    body            jsonb NOT NULL,
    outcome         text CHECK (outcome IN ('delivered', 'abandoned')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_by      uuid,
    claimed_until   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX notifications_pending ON notifications (id) WHERE outcome IS NULL;

-- A build that ends failed or errored; one that passes after the last ended build of its
-- branch failed or errored is fixed.
CREATE FUNCTION notify_build() RETURNS trigger AS $$
DECLARE
    previous text;
    event text;
BEGIN
    IF NEW.status NOT IN ('passed', 'failed', 'errored') OR NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    IF NEW.status = 'passed' THEN
        SELECT status INTO previous FROM builds
        WHERE project = NEW.project AND branch = NEW.branch AND id <> NEW.id
          AND status IN ('passed', 'failed', 'errored') AND finished_at IS NOT NULL
        ORDER BY finished_at DESC LIMIT 1;
        IF previous IS NULL OR previous = 'passed' THEN
            RETURN NEW;
        END IF;
        event := 'build_fixed';
    ELSE
        event := 'build_failed';
    END IF;
    INSERT INTO notification_events (project, event, facts) VALUES (
        NEW.project, event,
        jsonb_build_object('build', NEW.number, 'branch', NEW.branch, 'commit', NEW.commit,
                           'status', NEW.status, 'reason', NEW.reason, 'build_event', NEW.event));
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER builds_notify AFTER UPDATE OF status ON builds
    FOR EACH ROW EXECUTE FUNCTION notify_build();

-- A release image baked, or its bake failed.
CREATE FUNCTION notify_bake() RETURNS trigger AS $$
DECLARE
    release record;
BEGIN
    IF NEW.status NOT IN ('baked', 'failed') OR NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    SELECT project, number INTO release FROM releases WHERE id = NEW.release_id;
    INSERT INTO notification_events (project, event, facts) VALUES (
        release.project, CASE NEW.status WHEN 'baked' THEN 'baked' ELSE 'bake_failed' END,
        jsonb_build_object('release', 'v' || release.number, 'image_kind', NEW.kind,
                           'region', NEW.region, 'image', NEW.image, 'reason', NEW.reason));
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER release_images_notify AFTER UPDATE OF status ON release_images
    FOR EACH ROW EXECUTE FUNCTION notify_bake();

-- A deployment that switched traffic (deployed), failed, or rolled back. Who asked for it is
-- read from the audit trail when the event is fanned out.
CREATE FUNCTION notify_deployment() RETURNS trigger AS $$
DECLARE
    event text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.state IS NOT DISTINCT FROM OLD.state THEN
        RETURN NEW;
    END IF;
    IF NEW.state IN ('retaining_blue', 'succeeded') THEN
        -- Once per deployment: retaining_blue, then succeeded when the old fleet retires.
        IF TG_OP = 'UPDATE' AND OLD.state IN ('retaining_blue', 'retiring_blue') THEN
            RETURN NEW;
        END IF;
        event := 'deployed';
    ELSIF NEW.state = 'failed' THEN
        event := 'deploy_failed';
    ELSIF NEW.state = 'rolled_back' THEN
        event := 'rolled_back';
    ELSE
        RETURN NEW;
    END IF;
    INSERT INTO notification_events (project, event, facts) VALUES (
        NEW.project, event,
        jsonb_build_object('deployment', NEW.id, 'environment', NEW.environment,
                           'release', NEW.release, 'kind', NEW.kind, 'reason', NEW.reason));
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER deployments_notify AFTER INSERT OR UPDATE OF state ON deployments
    FOR EACH ROW EXECUTE FUNCTION notify_deployment();
