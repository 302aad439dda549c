-- Each visit, and which greeting it got.
CREATE TABLE visits (
    id          bigserial PRIMARY KEY,
    greeting_id integer NOT NULL REFERENCES greetings (id),
    visited_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX visits_visited_at ON visits (visited_at);
