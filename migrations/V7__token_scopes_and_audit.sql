-- Scoped, revocable API tokens and the audit trail of what each token asked for.

-- Every token made before scopes existed could do everything: it stays an admin token.
-- New tokens always state their scopes, so the default goes once the old rows have it.
ALTER TABLE api_tokens
    ADD COLUMN scopes text[] NOT NULL DEFAULT ARRAY['admin'],
    ADD COLUMN revoked_at timestamptz;
ALTER TABLE api_tokens ALTER COLUMN scopes DROP DEFAULT;
-- Names are bounded from now on; NOT VALID leaves any longer name made earlier in place.
ALTER TABLE api_tokens
    ADD CONSTRAINT api_tokens_name_length CHECK (char_length(name) BETWEEN 1 AND 100) NOT VALID;

-- One row per action a token asked for and the server carried out: deployments (promote,
-- rollback), cancel, rebuild, rebake, and token creation and revocation. The token's name is
-- copied so the trail reads the same after the token is revoked.
CREATE TABLE audit_events (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    token_id      bigint NOT NULL REFERENCES api_tokens (id),
    token_name    text NOT NULL,
    action        text NOT NULL,
    project       text,
    environment   text,
    subject       text NOT NULL,
    deployment_id text,
    detail        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_by_project ON audit_events (project, id DESC);
CREATE INDEX audit_events_by_deployment ON audit_events (deployment_id) WHERE deployment_id IS NOT NULL;
