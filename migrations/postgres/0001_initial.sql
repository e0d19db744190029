-- mxguard schema, PostgreSQL. Never edit an applied migration: add a new one.
-- Times are Unix milliseconds (UTC) in both backends, so the same queries serve both.

CREATE TABLE domain_state (
    domain        TEXT PRIMARY KEY NOT NULL,
    state         JSONB NOT NULL,           -- the state machine's state
    version       BIGINT NOT NULL,         -- compare-and-swap counter
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE observations (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain         TEXT NOT NULL,
    vantage        TEXT NOT NULL,
    side           TEXT NOT NULL,           -- primary | backup
    target         TEXT NOT NULL,           -- MX host name
    resolver       TEXT NOT NULL,
    address        TEXT,
    outcome        TEXT NOT NULL,           -- pass | fail | ...
    phase          TEXT,                    -- dns | connect | banner | ehlo | starttls | tls | rcpt
    latency_ms     BIGINT,
    detail         TEXT NOT NULL,
    observed_at_ms BIGINT NOT NULL
);
CREATE INDEX observations_domain_time ON observations (domain, observed_at_ms);
CREATE INDEX observations_time ON observations (observed_at_ms);

CREATE TABLE events (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain   TEXT NOT NULL,
    at_ms    BIGINT NOT NULL,
    kind     TEXT NOT NULL,                 -- transition | change | alert | operator | drift ...
    actor    TEXT NOT NULL,                 -- "automation" or the API token's name
    reason   TEXT,
    message  TEXT NOT NULL,
    evidence JSONB NOT NULL                  -- JSON
);
CREATE INDEX events_domain ON events (domain, id);

CREATE TABLE snapshots (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain      TEXT NOT NULL,
    provider    TEXT NOT NULL,
    zone        TEXT NOT NULL,
    label       TEXT,
    reason      TEXT NOT NULL,
    taken_at_ms BIGINT NOT NULL,
    taken_by    TEXT NOT NULL,
    records JSONB NOT NULL               -- JSON: [RecordSet]
);
CREATE INDEX snapshots_domain ON snapshots (domain, id);

CREATE TABLE changes (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain        TEXT NOT NULL,
    provider      TEXT NOT NULL,
    zone          TEXT NOT NULL,
    epoch         BIGINT NOT NULL,         -- fencing epoch of the writer
    snapshot_id   BIGINT REFERENCES snapshots (id),
    before        JSONB NOT NULL,           -- JSON: [RecordSet] as read before the change
    after         JSONB NOT NULL,           -- JSON: the ChangeSet
    status        TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'verified', 'failed')),
    error         TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX changes_unfinished ON changes (status) WHERE status IN ('pending', 'applied');

CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,            -- token name
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        BIGINT NOT NULL,
    body          JSONB NOT NULL,           -- JSON
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
