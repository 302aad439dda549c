-- Greetings the app can say, one per language.
CREATE TABLE greetings (
    id         serial PRIMARY KEY,
    language   text NOT NULL UNIQUE,
    greeting   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO greetings (language, greeting) VALUES ('en', 'hello'), ('fr', 'bonjour');
