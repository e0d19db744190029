-- Several instances: the leader lease (one row) with its fencing epoch, and each vantage's
-- latest verdict per domain and side. Times are Unix milliseconds.

CREATE TABLE leader_lease (
    name           TEXT PRIMARY KEY NOT NULL,   -- always 'controller'
    holder         TEXT NOT NULL,               -- instance id: vantage + '/' + a random suffix
    vantage        TEXT NOT NULL,
    api_url        TEXT,                        -- the holder's advertised API address
    epoch          BIGINT NOT NULL,             -- +1 at every change of holder; fences writes
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
INSERT INTO leader_lease (name, holder, vantage, api_url, epoch, acquired_at_ms, expires_at_ms)
VALUES ('controller', '', '', NULL, 0, 0, 0);

CREATE TABLE vantage_reports (
    domain  TEXT NOT NULL,
    vantage TEXT NOT NULL,
    side    TEXT NOT NULL,                      -- primary | backup
    at_ms   BIGINT NOT NULL,
    report  TEXT NOT NULL,                     -- JSON: health, pass, partitioned, verdicts
    PRIMARY KEY (domain, vantage, side)
);
