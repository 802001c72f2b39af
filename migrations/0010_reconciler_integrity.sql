-- Integrity of the reconciler (issue 10): what it refused to merge, and what Postgres
-- refused to store. Both are kept, never dropped, and reported by `flashsale audit` and
-- `flashsale sale status`.

-- An event naming a reservation id that Postgres already knows with another owner,
-- quantity or idempotency key: a reused id (Redis lost writes). Never merged into the row.
CREATE TABLE sale_event_conflicts (
    conflict_id           BIGSERIAL PRIMARY KEY,
    sale_id               BIGINT NOT NULL,
    stream_id             TEXT NOT NULL,
    reservation_id        TEXT NOT NULL,
    event_type            TEXT NOT NULL,
    user_id               BIGINT NOT NULL,
    quantity              INTEGER NOT NULL,
    idempotency_key       TEXT,
    known_user_id         BIGINT NOT NULL,
    known_quantity        INTEGER NOT NULL,
    known_idempotency_key TEXT,
    detected_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (sale_id, stream_id)
);

-- A stream entry Postgres rejects for good (SQLSTATE class 22 or 23 on that one event) or
-- that cannot be read at all: parked here with the raw entry so the rest of the stream
-- goes on. raw is the entry's fields as ASCII JSON (bytes that are not UTF-8 as \xNN, NUL
-- as \u0000), so it is always storable.
CREATE TABLE sale_dead_letters (
    dead_letter_id BIGSERIAL PRIMARY KEY,
    sale_id        BIGINT NOT NULL,
    stream_id      TEXT NOT NULL,
    raw            TEXT NOT NULL,
    sqlstate       TEXT,
    error          TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (sale_id, stream_id)
);
