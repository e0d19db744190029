-- Idempotency keys are claimed before the work: an in-flight row (status and body NULL) is
-- written first and answered after, so a retry while the work runs waits for that answer
-- instead of running the command again.
ALTER TABLE idempotency_keys
    ALTER COLUMN status DROP NOT NULL,
    ALTER COLUMN body DROP NOT NULL,
    ADD CONSTRAINT idempotency_keys_whole_answer CHECK ((status IS NULL) = (body IS NULL));

-- Retention: the pruning task deletes by age in batches; these keep each batch an index range.
CREATE INDEX idempotency_keys_time ON idempotency_keys (created_at_ms);
CREATE INDEX events_time ON events (at_ms);
CREATE INDEX changes_finished ON changes (updated_at_ms) WHERE status IN ('verified', 'failed');
-- A snapshot is kept while a change refers to it (and deleting one checks the foreign key).
CREATE INDEX changes_snapshot ON changes (snapshot_id);
