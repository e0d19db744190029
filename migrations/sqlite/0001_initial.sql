-- mxguard schema, SQLite. Never edit an applied migration: add a new one.
-- Times are Unix milliseconds (UTC) in both backends, so the same queries serve both.

CREATE TABLE domain_state (
    domain        TEXT PRIMARY KEY NOT NULL,
    state         TEXT NOT NULL,            -- JSON: the state machine's state
    version       INTEGER NOT NULL,         -- compare-and-swap counter
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE observations (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    domain         TEXT NOT NULL,
    vantage        TEXT NOT NULL,
    side           TEXT NOT NULL,           -- primary | backup
    target         TEXT NOT NULL,           -- MX host name
    resolver       TEXT NOT NULL,
    address        TEXT,
    outcome        TEXT NOT NULL,           -- pass | fail | ...
    phase          TEXT,                    -- dns | connect | banner | ehlo | starttls | tls | rcpt
    latency_ms     INTEGER,
    detail         TEXT NOT NULL,
    observed_at_ms INTEGER NOT NULL
);
CREATE INDEX observations_domain_time ON observations (domain, observed_at_ms);
CREATE INDEX observations_time ON observations (observed_at_ms);

CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    domain   TEXT NOT NULL,
    at_ms    INTEGER NOT NULL,
    kind     TEXT NOT NULL,                 -- transition | change | alert | operator | drift ...
    actor    TEXT NOT NULL,                 -- "automation" or the API token's name
    reason   TEXT,
    message  TEXT NOT NULL,
    evidence TEXT NOT NULL                  -- JSON
);
CREATE INDEX events_domain ON events (domain, id);

CREATE TABLE snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    domain      TEXT NOT NULL,
    provider    TEXT NOT NULL,
    zone        TEXT NOT NULL,
    label       TEXT,
    reason      TEXT NOT NULL,
    taken_at_ms INTEGER NOT NULL,
    taken_by    TEXT NOT NULL,
    records     TEXT NOT NULL               -- JSON: [RecordSet]
);
CREATE INDEX snapshots_domain ON snapshots (domain, id);

CREATE TABLE changes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    domain        TEXT NOT NULL,
    provider      TEXT NOT NULL,
    zone          TEXT NOT NULL,
    epoch         INTEGER NOT NULL,         -- fencing epoch of the writer
    snapshot_id   INTEGER REFERENCES snapshots (id),
    before        TEXT NOT NULL,            -- JSON: [RecordSet] as read before the change
    after         TEXT NOT NULL,            -- JSON: the ChangeSet
    status        TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'verified', 'failed')),
    error         TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX changes_unfinished ON changes (status) WHERE status IN ('pending', 'applied');

CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,            -- token name
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER NOT NULL,
    body          TEXT NOT NULL,            -- JSON
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
