-- Web UI sign-ins: a person signs in with an API token and gets a session cookie. Only the
-- SHA-256 of the cookie's secret is stored; the session acts with its token's scopes and ends
-- when the token is revoked, when it expires, or at sign-out. `csrf` is the token every
-- request that changes something must carry besides the cookie.
CREATE TABLE ui_sessions (
    secret_sha256 bytea PRIMARY KEY,
    token_id      bigint NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    csrf          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX ui_sessions_by_expiry ON ui_sessions (expires_at);
