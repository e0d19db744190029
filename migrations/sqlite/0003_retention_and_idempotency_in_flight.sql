-- Idempotency keys are claimed before the work: an in-flight row (status and body NULL) is
-- written first and answered after, so a retry while the work runs waits for that answer
-- instead of running the command again. SQLite cannot drop NOT NULL in place: the table is
-- rebuilt (it holds no foreign keys).
CREATE TABLE idempotency_keys_new (
    scope         TEXT NOT NULL,            -- token name
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER,                  -- NULL while in flight
    body          TEXT,                     -- JSON; NULL while in flight
    created_at_ms INTEGER NOT NULL,         -- when claimed; identifies the claim
    PRIMARY KEY (scope, key),
    CHECK ((status IS NULL) = (body IS NULL))
);
INSERT INTO idempotency_keys_new (scope, key, request_hash, status, body, created_at_ms)
SELECT scope, key, request_hash, status, body, created_at_ms FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_new RENAME TO idempotency_keys;

-- Retention: the pruning task deletes by age in batches; these keep each batch an index range.
CREATE INDEX idempotency_keys_time ON idempotency_keys (created_at_ms);
CREATE INDEX events_time ON events (at_ms);
CREATE INDEX changes_finished ON changes (updated_at_ms) WHERE status IN ('verified', 'failed');
-- A snapshot is kept while a change refers to it (and deleting one checks the foreign key).
CREATE INDEX changes_snapshot ON changes (snapshot_id);
