-- Build logs are stored as they arrive, in chunks of whole lines of one step and stream
-- (not one row per line), as bytes: a step's output may hold NUL or invalid UTF-8.
-- Lines are numbered from 1 per build; a chunk holds lines first_line .. first_line + lines - 1.
CREATE TABLE build_log_chunks (
    build_id   uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    first_line bigint NOT NULL,
    lines      int NOT NULL CHECK (lines > 0),
    step       text NOT NULL,
    stream     text NOT NULL,
    at         timestamptz NOT NULL,
    -- The lines, each ending in a newline.
    data       bytea NOT NULL,
    PRIMARY KEY (build_id, first_line)
);

-- Older builds keep their logs: each stored line becomes a chunk of one line.
INSERT INTO build_log_chunks (build_id, first_line, lines, step, stream, at, data)
SELECT build_id, seq, 1, step, stream, at, convert_to(line || E'\n', 'UTF8')
FROM build_log_lines;

DROP TABLE build_log_lines;
