//! The SQL both backends share. SQLite and PostgreSQL accept the same statements here
//! (`$n` placeholders, `RETURNING`, `ON CONFLICT`), so one macro implements [`Store`] for
//! each pool type. Each backend supplies `KIND`, `CLOCK_MS` (its own clock in ms since the
//! epoch, as an SQL expression: the leader lease's time), `STATE_SNAPSHOT` (the snapshot id a
//! `domain_state` row's JSON refers to, as an SQL expression), `NAMES` (the names of a JSON
//! array bound as `$1`, as a subquery), `run_migrations`, `close_pools`,
//! `reader()` (the pool reads run on) and `write(job)`, which runs a job of writes on one
//! connection, all or nothing, and returns once they are committed (PostgreSQL: a transaction
//! of its own; SQLite: a savepoint in a group commit, see `sqlite.rs`). A write job owns its
//! inputs (it may run on another task) and never touches the pools.

use chrono::{DateTime, Utc};

use super::StoreError;

pub(super) fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(super) fn time(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} ms is out of range")))
}

pub(super) fn fqdn(s: String) -> Result<mxguard_core::Fqdn, StoreError> {
    mxguard_core::Fqdn::parse(&s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    v: sqlx::types::Json<serde_json::Value>,
) -> Result<T, StoreError> {
    Ok(serde_json::from_value(v.0)?)
}

/// Names per query when loading in batches: one bind (a JSON array) whatever the count, so
/// SQLite's variable limit does not apply; the chunk bounds one answer's size and how long one
/// query holds a read connection.
pub(super) const LOAD_CHUNK: usize = 2_000;

/// Observations are inserted in chunks small enough for SQLite's parameter limit.
pub(super) const OBSERVATION_CHUNK: usize = 500;

/// Events per statement when appending in batches: 7 binds each, inside SQLite's limit.
pub(super) const EVENT_CHUNK: usize = 500;

/// State writes per statement when saving in batches: 4 binds each.
pub(super) const STATE_CHUNK: usize = 1_000;

/// Vantage reports per statement: 5 binds each, well inside SQLite's parameter limit.
pub(super) const VANTAGE_CHUNK: usize = 1_000;

/// `rows` with one row per (domain, vantage, side), the last given winning as a row per
/// statement would: PostgreSQL refuses one statement that updates a row twice.
pub(super) fn latest_per_key(rows: &[crate::store::VantageRow]) -> Vec<crate::store::VantageRow> {
    let mut at: std::collections::HashMap<(&str, &str, &str), usize> =
        std::collections::HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        at.insert((r.domain.as_str(), r.vantage.as_str(), r.side.as_str()), i);
    }
    rows.iter()
        .enumerate()
        .filter(|(i, r)| {
            at.get(&(r.domain.as_str(), r.vantage.as_str(), r.side.as_str())) == Some(i)
        })
        .map(|(_, r)| r.clone())
        .collect()
}

/// Rows deleted per write when pruning. SQLite has one writer: a first prune of a big table in
/// one `DELETE` (a million observations, a year of events) would hold it for seconds, with
/// every actor's state write and audit event queued behind it. A write per batch lets the
/// writer commit the others' jobs in between; on PostgreSQL it keeps each transaction, its
/// locks and its WAL small.
pub(super) const PRUNE_BATCH: i64 = 1000;

/// The time `keep` before `now`, in ms; records older are pruned. A `keep` too long to
/// subtract prunes nothing.
pub(super) fn cutoff(now: DateTime<Utc>, keep: std::time::Duration) -> i64 {
    chrono::Duration::from_std(keep)
        .ok()
        .and_then(|k| now.checked_sub_signed(k))
        .map_or(i64::MIN, ms)
}

/// Batched deletes by age: `$1` is the cutoff in ms, `$2` the batch size.
pub(super) const PRUNE_OBSERVATIONS: &str =
    "DELETE FROM observations WHERE id IN (SELECT id FROM observations WHERE observed_at_ms < $1 LIMIT $2)";
pub(super) const PRUNE_EVENTS: &str =
    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at_ms < $1 LIMIT $2)";
/// Only changes that ended: a pending or applied one is what a restart resumes.
pub(super) const PRUNE_CHANGES: &str = "DELETE FROM changes WHERE id IN (SELECT id FROM changes \
     WHERE status IN ('verified', 'failed') AND updated_at_ms < $1 LIMIT $2)";
pub(super) const PRUNE_IDEMPOTENCY: &str = "DELETE FROM idempotency_keys WHERE (scope, key) IN \
     (SELECT scope, key FROM idempotency_keys WHERE created_at_ms < $1 LIMIT $2)";

macro_rules! impl_sql_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn event_row(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::Event, $crate::store::StoreError> {
                use sqlx::Row;
                Ok($crate::store::Event {
                    id: row.try_get("id")?,
                    domain: $crate::store::sql::fqdn(row.try_get("domain")?)?,
                    at: $crate::store::sql::time(row.try_get("at_ms")?)?,
                    kind: {
                        let kind: String = row.try_get("kind")?;
                        kind.parse().map_err($crate::store::StoreError::Corrupt)?
                    },
                    actor: row.try_get("actor")?,
                    reason: row.try_get("reason")?,
                    message: row.try_get("message")?,
                    evidence: row.try_get::<sqlx::types::Json<serde_json::Value>, _>("evidence")?.0,
                })
            }

            fn snapshot_row(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::Snapshot, $crate::store::StoreError> {
                use sqlx::Row;
                Ok($crate::store::Snapshot {
                    id: row.try_get("id")?,
                    domain: $crate::store::sql::fqdn(row.try_get("domain")?)?,
                    provider: row.try_get("provider")?,
                    zone: $crate::store::sql::fqdn(row.try_get("zone")?)?,
                    label: row.try_get("label")?,
                    reason: row.try_get("reason")?,
                    taken_at: $crate::store::sql::time(row.try_get("taken_at_ms")?)?,
                    taken_by: row.try_get("taken_by")?,
                    records: $crate::store::sql::from_json(row.try_get("records")?)?,
                })
            }

            fn change_row(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::ChangeIntent, $crate::store::StoreError> {
                use sqlx::Row;
                let status: String = row.try_get("status")?;
                Ok($crate::store::ChangeIntent {
                    id: row.try_get("id")?,
                    domain: $crate::store::sql::fqdn(row.try_get("domain")?)?,
                    provider: row.try_get("provider")?,
                    zone: $crate::store::sql::fqdn(row.try_get("zone")?)?,
                    epoch: row.try_get("epoch")?,
                    snapshot_id: row.try_get("snapshot_id")?,
                    before: $crate::store::sql::from_json(row.try_get("before")?)?,
                    after: $crate::store::sql::from_json(row.try_get("after")?)?,
                    status: status.parse().map_err($crate::store::StoreError::Corrupt)?,
                    error: row.try_get("error")?,
                    created_at: $crate::store::sql::time(row.try_get("created_at_ms")?)?,
                    updated_at: $crate::store::sql::time(row.try_get("updated_at_ms")?)?,
                })
            }

            /// Refuses the transaction's writes unless `epoch` is the lease's. The no-op UPDATE
            /// also locks the lease row (PostgreSQL) until commit, so a takeover waits for a
            /// fenced write in progress and then sees it as unfinished work.
            async fn fence(conn: &mut <$db as sqlx::Database>::Connection, epoch: i64) -> Result<(), $crate::store::StoreError> {
                let r = sqlx::query("UPDATE leader_lease SET epoch = epoch WHERE name = 'controller' AND epoch = $1")
                    .bind(epoch)
                    .execute(&mut *conn)
                    .await?;
                if r.rows_affected() == 1 {
                    Ok(())
                } else {
                    Err($crate::store::StoreError::Fenced(format!(
                        "epoch {epoch} is no longer the leader's; another instance has taken the lease"
                    )))
                }
            }

            fn vantage_row(r: &<$db as sqlx::Database>::Row) -> Result<$crate::store::VantageRow, $crate::store::StoreError> {
                use sqlx::Row;
                Ok($crate::store::VantageRow {
                    domain: $crate::store::sql::fqdn(r.try_get("domain")?)?,
                    vantage: r.try_get("vantage")?,
                    side: r.try_get("side")?,
                    at: $crate::store::sql::time(r.try_get("at_ms")?)?,
                    report: r.try_get::<sqlx::types::Json<serde_json::Value>, _>("report")?.0,
                })
            }

            fn lease_row(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::Lease, $crate::store::StoreError> {
                use sqlx::Row;
                Ok($crate::store::Lease {
                    holder: row.try_get("holder")?,
                    vantage: row.try_get("vantage")?,
                    api_url: row.try_get("api_url")?,
                    epoch: row.try_get("epoch")?,
                    acquired_at: $crate::store::sql::time(row.try_get("acquired_at_ms")?)?,
                    expires_at: $crate::store::sql::time(row.try_get("expires_at_ms")?)?,
                    read_at: $crate::store::sql::time(row.try_get("read_at_ms")?)?,
                })
            }

            async fn insert_snapshot<'e, E>(exec: E, s: &$crate::store::NewSnapshot) -> Result<$crate::store::Snapshot, $crate::store::StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                let records = serde_json::to_value(&s.records)?;
                let row = sqlx::query(
                    "INSERT INTO snapshots (domain, provider, zone, label, reason, taken_at_ms, taken_by, records) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
                )
                .bind(s.domain.as_str())
                .bind(&s.provider)
                .bind(s.zone.as_str())
                .bind(&s.label)
                .bind(&s.reason)
                .bind($crate::store::sql::ms(s.taken_at))
                .bind(&s.taken_by)
                .bind(sqlx::types::Json(records))
                .fetch_one(exec)
                .await?;
                Self::snapshot_row(&row)
            }

            fn idempotency_row(r: &<$db as sqlx::Database>::Row) -> Result<$crate::store::IdempotencyRecord, $crate::store::StoreError> {
                use sqlx::Row;
                let status: Option<i64> = r.try_get("status")?;
                let body: Option<sqlx::types::Json<serde_json::Value>> = r.try_get("body")?;
                let answer = match (status, body) {
                    (Some(status), Some(body)) => Some($crate::store::IdempotentAnswer {
                        status: u16::try_from(status).map_err(|_| $crate::store::StoreError::Corrupt(format!("HTTP status {status}")))?,
                        body: body.0,
                    }),
                    (None, None) => None,
                    _ => return Err($crate::store::StoreError::Corrupt("an idempotency key with half an answer".into())),
                };
                Ok($crate::store::IdempotencyRecord {
                    scope: r.try_get("scope")?,
                    key: r.try_get("key")?,
                    request_hash: r.try_get("request_hash")?,
                    answer,
                    created_at: $crate::store::sql::time(r.try_get("created_at_ms")?)?,
                })
            }

            /// Runs `sql` (`$1`: the cutoff, `$2`: the batch size), one write per batch, until a
            /// batch deletes fewer than a full one; returns how many rows went.
            async fn delete_batched(&self, sql: &'static str, cutoff: i64) -> Result<u64, $crate::store::StoreError> {
                let mut total = 0;
                loop {
                    let n = self.write(move |c| Box::pin(async move {
                        let r = sqlx::query(sql)
                            .bind(cutoff)
                            .bind($crate::store::sql::PRUNE_BATCH)
                            .execute(&mut *c)
                            .await?;
                        Ok(r.rows_affected())
                    }))
                    .await?;
                    total += n;
                    if n < $crate::store::sql::PRUNE_BATCH as u64 {
                        return Ok(total);
                    }
                }
            }

            /// Per domain with more than `keep` snapshots, deletes the older ones that no change
            /// and no domain's state refers to, a batch per write.
            async fn prune_snapshots(&self, keep: u32) -> Result<u64, $crate::store::StoreError> {
                use sqlx::Row;
                let keep = i64::from(keep);
                let domains: Vec<String> = sqlx::query("SELECT domain FROM snapshots GROUP BY domain HAVING COUNT(*) > $1")
                    .bind(keep)
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(|r| r.try_get("domain"))
                    .collect::<Result<_, _>>()?;
                // The newest `keep` of the domain stay; of the older ones, a change's snapshot
                // (revert and restart read it) and a state's `failover_snapshot` (failback
                // restores it) and `early_ttl_snapshot` (a TTL restore reads it) stay too.
                let sql = format!(
                    "DELETE FROM snapshots WHERE id IN (SELECT s.id FROM snapshots s \
                     WHERE s.domain = $1 \
                     AND s.id < (SELECT MIN(n.id) FROM (SELECT id FROM snapshots WHERE domain = $1 ORDER BY id DESC LIMIT $2) AS n) \
                     AND NOT EXISTS (SELECT 1 FROM changes c WHERE c.snapshot_id = s.id) \
                     AND s.id NOT IN (SELECT {state} FROM domain_state WHERE {state} IS NOT NULL) \
                     AND s.id NOT IN (SELECT {early} FROM domain_state WHERE {early} IS NOT NULL) \
                     ORDER BY s.id LIMIT $3)",
                    state = Self::STATE_SNAPSHOT,
                    early = Self::STATE_EARLY_SNAPSHOT,
                );
                let mut total = 0;
                for domain in domains {
                    loop {
                        let (sql, domain) = (sql.clone(), domain.clone());
                        let n = self.write(move |c| Box::pin(async move {
                            let r = sqlx::query(&sql)
                                .bind(&domain)
                                .bind(keep)
                                .bind($crate::store::sql::PRUNE_BATCH)
                                .execute(&mut *c)
                                .await?;
                            Ok(r.rows_affected())
                        }))
                        .await?;
                        total += n;
                        if n < $crate::store::sql::PRUNE_BATCH as u64 {
                            break;
                        }
                    }
                }
                Ok(total)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn kind(&self) -> $crate::config::StoreKind {
                Self::KIND
            }

            async fn migrate(&self) -> Result<(), $crate::store::StoreError> {
                self.run_migrations().await
            }

            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            async fn close(&self) {
                self.close_pools().await;
            }

            async fn load_state(&self, domain: &mxguard_core::Fqdn) -> Result<Option<$crate::store::DomainStateRow>, $crate::store::StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT domain, state, version, updated_at_ms FROM domain_state WHERE domain = $1")
                    .bind(domain.as_str())
                    .fetch_optional(self.reader())
                    .await?;
                row.map(|r| {
                    Ok($crate::store::DomainStateRow {
                        domain: $crate::store::sql::fqdn(r.try_get("domain")?)?,
                        state: r.try_get::<sqlx::types::Json<serde_json::Value>, _>("state")?.0,
                        version: r.try_get("version")?,
                        updated_at: $crate::store::sql::time(r.try_get("updated_at_ms")?)?,
                    })
                })
                .transpose()
            }

            async fn load_states(&self, domains: &[mxguard_core::Fqdn]) -> Result<std::collections::HashMap<mxguard_core::Fqdn, $crate::store::DomainStateRow>, $crate::store::StoreError> {
                use sqlx::Row;
                let sql = format!(
                    "SELECT domain, state, version, updated_at_ms FROM domain_state WHERE domain IN {}",
                    Self::NAMES,
                );
                let mut out = std::collections::HashMap::with_capacity(domains.len());
                for chunk in domains.chunks($crate::store::sql::LOAD_CHUNK) {
                    let names: Vec<&str> = chunk.iter().map(|d| d.as_str()).collect();
                    let rows = sqlx::query(&sql)
                        .bind(sqlx::types::Json(names))
                        .fetch_all(self.reader())
                        .await?;
                    for r in rows {
                        let row = $crate::store::DomainStateRow {
                            domain: $crate::store::sql::fqdn(r.try_get("domain")?)?,
                            state: r.try_get::<sqlx::types::Json<serde_json::Value>, _>("state")?.0,
                            version: r.try_get("version")?,
                            updated_at: $crate::store::sql::time(r.try_get("updated_at_ms")?)?,
                        };
                        out.insert(row.domain.clone(), row);
                    }
                }
                Ok(out)
            }

            async fn save_state(
                &self,
                domain: &mxguard_core::Fqdn,
                state: &serde_json::Value,
                expected_version: Option<i64>,
                epoch: i64,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<i64, $crate::store::StoreError> {
                let at = $crate::store::sql::ms(at);
                let (domain, state) = (domain.clone(), state.clone());
                self.write(move |c| Box::pin(async move {
                    Self::fence(&mut *c, epoch).await?;
                    let (done, version) = match expected_version {
                        None => {
                            let r = sqlx::query(
                                "INSERT INTO domain_state (domain, state, version, updated_at_ms) VALUES ($1, $2, 1, $3) \
                                 ON CONFLICT (domain) DO NOTHING",
                            )
                            .bind(domain.as_str())
                            .bind(sqlx::types::Json(&state))
                            .bind(at)
                            .execute(&mut *c)
                            .await?;
                            (r.rows_affected() == 1, 1)
                        }
                        Some(v) => {
                            let r = sqlx::query(
                                "UPDATE domain_state SET state = $1, version = version + 1, updated_at_ms = $2 \
                                 WHERE domain = $3 AND version = $4",
                            )
                            .bind(sqlx::types::Json(&state))
                            .bind(at)
                            .bind(domain.as_str())
                            .bind(v)
                            .execute(&mut *c)
                            .await?;
                            (r.rows_affected() == 1, v + 1)
                        }
                    };
                    if done {
                        Ok(version)
                    } else {
                        Err($crate::store::StoreError::Conflict(format!(
                            "state of {domain} was changed by another writer (expected version {expected_version:?})"
                        )))
                    }
                }))
                .await
            }

            async fn save_states(
                &self,
                saves: Vec<$crate::store::StateSave>,
                epoch: i64,
            ) -> Vec<Result<i64, $crate::store::StoreError>> {
                use sqlx::Row;
                let n = saves.len();
                if n == 0 {
                    return Vec::new();
                }
                let written = self.write(move |c| Box::pin(async move {
                    Self::fence(&mut *c, epoch).await?;
                    // the new version of each domain written, by name
                    let mut done: std::collections::HashMap<String, i64> =
                        std::collections::HashMap::with_capacity(saves.len());
                    let (first, next): (Vec<&$crate::store::StateSave>, Vec<&$crate::store::StateSave>) =
                        saves.iter().partition(|s| s.expected_version.is_none());
                    for chunk in first.chunks($crate::store::sql::STATE_CHUNK) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO domain_state (domain, state, version, updated_at_ms) ",
                        );
                        q.push_values(chunk, |mut b, s| {
                            b.push_bind(s.domain.as_str())
                                .push_bind(sqlx::types::Json(s.state.raw()))
                                .push_bind(1_i64)
                                .push_bind($crate::store::sql::ms(s.at));
                        });
                        q.push(" ON CONFLICT (domain) DO NOTHING RETURNING domain, version");
                        for r in q.build().fetch_all(&mut *c).await? {
                            done.insert(r.try_get("domain")?, r.try_get("version")?);
                        }
                    }
                    // A row written only where its version is still the one its writer read:
                    // the compare-and-swap of `save_state`, for a chunk at a time. The
                    // VALUES list's columns are `column1…` in both databases.
                    for chunk in next.chunks($crate::store::sql::STATE_CHUNK) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "UPDATE domain_state SET state = v.column2, version = version + 1, \
                             updated_at_ms = v.column4 FROM (",
                        );
                        q.push_values(chunk, |mut b, s| {
                            b.push_bind(s.domain.as_str())
                                .push_bind(sqlx::types::Json(s.state.raw()))
                                .push_bind(s.expected_version.unwrap_or_default())
                                .push_bind($crate::store::sql::ms(s.at));
                        });
                        q.push(
                            ") AS v WHERE domain = v.column1 AND version = v.column3 \
                             RETURNING domain, version",
                        );
                        for r in q.build().fetch_all(&mut *c).await? {
                            done.insert(r.try_get("domain")?, r.try_get("version")?);
                        }
                    }
                    Ok(saves
                        .iter()
                        .map(|s| {
                            done.get(s.domain.as_str()).copied().ok_or_else(|| {
                                $crate::store::StoreError::Conflict(format!(
                                    "state of {} was changed by another writer (expected version {:?})",
                                    s.domain, s.expected_version
                                ))
                            })
                        })
                        .collect::<Vec<_>>())
                }))
                .await;
                match written {
                    Ok(each) => each,
                    Err(e) => vec![Err(e); n],
                }
            }

            async fn record_observations(&self, obs: &[$crate::store::Observation]) -> Result<(), $crate::store::StoreError> {
                let obs = obs.to_vec();
                self.write(move |c| Box::pin(async move {
                    for chunk in obs.chunks($crate::store::sql::OBSERVATION_CHUNK) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO observations (domain, vantage, side, target, resolver, address, outcome, phase, latency_ms, detail, observed_at_ms) ",
                        );
                        q.push_values(chunk, |mut b, o| {
                            b.push_bind(o.domain.as_str().to_string())
                                .push_bind(o.vantage.clone())
                                .push_bind(o.side.clone())
                                .push_bind(o.target.clone())
                                .push_bind(o.resolver.clone())
                                .push_bind(o.address.clone())
                                .push_bind(o.outcome.clone())
                                .push_bind(o.phase.clone())
                                .push_bind(o.latency_ms)
                                .push_bind(o.detail.clone())
                                .push_bind($crate::store::sql::ms(o.observed_at));
                        });
                        q.build().execute(&mut *c).await?;
                    }
                    Ok(())
                }))
                .await
            }

            async fn recent_observations(&self, domain: &mxguard_core::Fqdn, limit: u32) -> Result<Vec<$crate::store::Observation>, $crate::store::StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT * FROM observations WHERE domain = $1 ORDER BY observed_at_ms DESC, id DESC LIMIT $2",
                )
                .bind(domain.as_str())
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok($crate::store::Observation {
                            domain: $crate::store::sql::fqdn(r.try_get("domain")?)?,
                            vantage: r.try_get("vantage")?,
                            side: r.try_get("side")?,
                            target: r.try_get("target")?,
                            resolver: r.try_get("resolver")?,
                            address: r.try_get("address")?,
                            outcome: r.try_get("outcome")?,
                            phase: r.try_get("phase")?,
                            latency_ms: r.try_get("latency_ms")?,
                            detail: r.try_get("detail")?,
                            observed_at: $crate::store::sql::time(r.try_get("observed_at_ms")?)?,
                        })
                    })
                    .collect()
            }

            async fn prune_observations(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, $crate::store::StoreError> {
                self.delete_batched($crate::store::sql::PRUNE_OBSERVATIONS, $crate::store::sql::ms(before)).await
            }

            async fn append_event(&self, e: &$crate::store::NewEvent) -> Result<$crate::store::Event, $crate::store::StoreError> {
                let e = e.clone();
                self.write(move |c| Box::pin(async move {
                    let row = sqlx::query(
                        "INSERT INTO events (domain, at_ms, kind, actor, reason, message, evidence) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                    )
                    .bind(e.domain.as_str())
                    .bind($crate::store::sql::ms(e.at))
                    .bind(e.kind.as_str())
                    .bind(&e.actor)
                    .bind(&e.reason)
                    .bind(&e.message)
                    .bind(sqlx::types::Json(e.evidence.raw()))
                    .fetch_one(&mut *c)
                    .await?;
                    Self::event_row(&row)
                }))
                .await
            }

            async fn append_events(&self, events: Vec<$crate::store::NewEvent>) -> Vec<Result<$crate::store::Event, $crate::store::StoreError>> {
                use sqlx::Row;
                let n = events.len();
                if n == 0 {
                    return Vec::new();
                }
                let stored = self.write(move |c| Box::pin(async move {
                    // Neither database promises RETURNING's order, so each row's id goes back to
                    // its event by what identifies it; events alike in all of that are
                    // interchangeable and take their ids in order.
                    type Key = (String, i64, String, String);
                    let mut ids: std::collections::HashMap<Key, std::collections::VecDeque<i64>> =
                        std::collections::HashMap::with_capacity(events.len());
                    for chunk in events.chunks($crate::store::sql::EVENT_CHUNK) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO events (domain, at_ms, kind, actor, reason, message, evidence) ",
                        );
                        q.push_values(chunk, |mut b, e| {
                            b.push_bind(e.domain.as_str())
                                .push_bind($crate::store::sql::ms(e.at))
                                .push_bind(e.kind.as_str())
                                .push_bind(e.actor.as_str())
                                .push_bind(e.reason.as_deref())
                                .push_bind(e.message.as_str())
                                .push_bind(sqlx::types::Json(e.evidence.raw()));
                        });
                        q.push(" RETURNING id, domain, at_ms, kind, message");
                        let mut rows = Vec::with_capacity(chunk.len());
                        for r in q.build().fetch_all(&mut *c).await? {
                            let key: Key = (r.try_get("domain")?, r.try_get("at_ms")?, r.try_get("kind")?, r.try_get("message")?);
                            rows.push((r.try_get::<i64, _>("id")?, key));
                        }
                        rows.sort_unstable_by_key(|(id, _)| *id);
                        for (id, key) in rows {
                            ids.entry(key).or_default().push_back(id);
                        }
                    }
                    events
                        .into_iter()
                        .map(|e| {
                            let at = $crate::store::sql::ms(e.at);
                            let key: Key = (e.domain.as_str().to_string(), at, e.kind.as_str().to_string(), e.message);
                            let id = ids.get_mut(&key).and_then(|q| q.pop_front()).ok_or_else(|| {
                                $crate::store::StoreError::Corrupt(format!("event of {} not returned by its insert", e.domain))
                            })?;
                            Ok($crate::store::Event {
                                id,
                                domain: e.domain,
                                at: $crate::store::sql::time(at)?,
                                kind: e.kind,
                                actor: e.actor,
                                reason: e.reason,
                                message: key.3,
                                evidence: e.evidence.value(),
                            })
                        })
                        .collect::<Result<Vec<_>, $crate::store::StoreError>>()
                }))
                .await;
                match stored {
                    Ok(each) => each.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e); n],
                }
            }

            async fn events(&self, domain: &mxguard_core::Fqdn, after: Option<i64>, limit: u32) -> Result<Vec<$crate::store::Event>, $crate::store::StoreError> {
                let rows = sqlx::query("SELECT * FROM events WHERE domain = $1 AND id > $2 ORDER BY id LIMIT $3")
                    .bind(domain.as_str())
                    .bind(after.unwrap_or(0))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(Self::event_row).collect()
            }

            async fn last_event(&self, domain: &mxguard_core::Fqdn, kind: $crate::events::EventKind) -> Result<Option<$crate::store::Event>, $crate::store::StoreError> {
                // the (domain, id) index, read backwards from the newest
                let row = sqlx::query("SELECT * FROM events WHERE domain = $1 AND kind = $2 ORDER BY id DESC LIMIT 1")
                    .bind(domain.as_str())
                    .bind(kind.as_str())
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(Self::event_row).transpose()
            }

            async fn save_snapshot(&self, s: &$crate::store::NewSnapshot) -> Result<$crate::store::Snapshot, $crate::store::StoreError> {
                let s = s.clone();
                self.write(move |c| Box::pin(async move { Self::insert_snapshot(&mut *c, &s).await }))
                    .await
            }

            async fn snapshot(&self, id: i64) -> Result<Option<$crate::store::Snapshot>, $crate::store::StoreError> {
                let row = sqlx::query("SELECT * FROM snapshots WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(Self::snapshot_row).transpose()
            }

            async fn snapshots(&self, domain: Option<&mxguard_core::Fqdn>, limit: u32) -> Result<Vec<$crate::store::Snapshot>, $crate::store::StoreError> {
                let rows = match domain {
                    Some(d) => {
                        sqlx::query("SELECT * FROM snapshots WHERE domain = $1 ORDER BY id DESC LIMIT $2")
                            .bind(d.as_str())
                            .bind(i64::from(limit))
                            .fetch_all(self.reader())
                            .await?
                    }
                    None => {
                        sqlx::query("SELECT * FROM snapshots ORDER BY id DESC LIMIT $1")
                            .bind(i64::from(limit))
                            .fetch_all(self.reader())
                            .await?
                    }
                };
                rows.iter().map(Self::snapshot_row).collect()
            }

            async fn begin_change(
                &self,
                snapshot: &$crate::store::NewSnapshot,
                c: &$crate::store::NewChange,
            ) -> Result<($crate::store::Snapshot, $crate::store::ChangeIntent), $crate::store::StoreError> {
                let (snapshot, c) = (snapshot.clone(), c.clone());
                let done = self.write(move |conn| Box::pin(async move {
                    Self::fence(&mut *conn, c.epoch).await?;
                    let snap = Self::insert_snapshot(&mut *conn, &snapshot).await?;
                    let row = sqlx::query(
                        "INSERT INTO changes (domain, provider, zone, epoch, snapshot_id, before, after, status, error, created_at_ms, updated_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', NULL, $8, $8) RETURNING *",
                    )
                    .bind(c.domain.as_str())
                    .bind(&c.provider)
                    .bind(c.zone.as_str())
                    .bind(c.epoch)
                    .bind(snap.id)
                    .bind(sqlx::types::Json(serde_json::to_value(&c.before)?))
                    .bind(sqlx::types::Json(serde_json::to_value(&c.after)?))
                    .bind($crate::store::sql::ms(c.at))
                    .fetch_one(&mut *conn)
                    .await?;
                    let change = Self::change_row(&row)?;
                    Ok((snap, change))
                }))
                .await?;
                metrics::counter!("mxguard_change_intents_total", "status" => "pending").increment(1);
                Ok(done)
            }

            async fn set_change_status(
                &self,
                id: i64,
                status: $crate::store::ChangeStatus,
                error: Option<&str>,
                epoch: i64,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::ChangeIntent, $crate::store::StoreError> {
                let from = status.allowed_from();
                let error = error.map(str::to_string);
                let at = $crate::store::sql::ms(at);
                let moved = self.write(move |c| Box::pin(async move {
                    if !from.is_empty() {
                        Self::fence(&mut *c, epoch).await?;
                        // The IN list is built from fixed status names, never from input.
                        let list = from.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ");
                        let sql = format!(
                            "UPDATE changes SET status = $1, error = COALESCE($2, error), updated_at_ms = $3 \
                             WHERE id = $4 AND status IN ({list}) RETURNING *"
                        );
                        let row = sqlx::query(&sql)
                            .bind(status.as_str())
                            .bind(error)
                            .bind(at)
                            .bind(id)
                            .fetch_optional(&mut *c)
                            .await?;
                        if let Some(row) = row {
                            return Self::change_row(&row);
                        }
                    }
                    // Refused: say why, from what the same connection sees (the job rolls back).
                    let row = sqlx::query("SELECT * FROM changes WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *c)
                        .await?;
                    Err(match row.as_ref().map(Self::change_row).transpose()? {
                        None => $crate::store::StoreError::NotFound(format!("change {id}")),
                        Some(c) => $crate::store::StoreError::Conflict(format!(
                            "change {id} is {}; it cannot become {status}",
                            c.status
                        )),
                    })
                }))
                .await?;
                metrics::counter!("mxguard_change_intents_total", "status" => status.as_str()).increment(1);
                Ok(moved)
            }

            async fn change(&self, id: i64) -> Result<Option<$crate::store::ChangeIntent>, $crate::store::StoreError> {
                let row = sqlx::query("SELECT * FROM changes WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(Self::change_row).transpose()
            }

            async fn recent_changes(&self, domain: &mxguard_core::Fqdn, limit: u32) -> Result<Vec<$crate::store::ChangeIntent>, $crate::store::StoreError> {
                let rows = sqlx::query("SELECT * FROM changes WHERE domain = $1 ORDER BY id DESC LIMIT $2")
                    .bind(domain.as_str())
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(Self::change_row).collect()
            }

            async fn unfinished_changes(&self) -> Result<Vec<$crate::store::ChangeIntent>, $crate::store::StoreError> {
                let rows = sqlx::query("SELECT * FROM changes WHERE status IN ('pending', 'applied') ORDER BY id")
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(Self::change_row).collect()
            }

            async fn unfinished_changes_for(&self, domains: &[mxguard_core::Fqdn]) -> Result<Vec<$crate::store::ChangeIntent>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT * FROM changes WHERE status IN ('pending', 'applied') AND domain IN {} ORDER BY id",
                    Self::NAMES,
                );
                let mut out = Vec::new();
                for chunk in domains.chunks($crate::store::sql::LOAD_CHUNK) {
                    let names: Vec<&str> = chunk.iter().map(|d| d.as_str()).collect();
                    let rows = sqlx::query(&sql)
                        .bind(sqlx::types::Json(names))
                        .fetch_all(self.reader())
                        .await?;
                    for r in &rows {
                        out.push(Self::change_row(r)?);
                    }
                }
                // Oldest first across chunks too: a domain's last one is what a restart resumes.
                out.sort_by_key(|c| c.id);
                Ok(out)
            }

            async fn acquire_lease(&self, c: &$crate::store::LeaseClaim, clock: $crate::store::LeaseClock) -> Result<$crate::store::Lease, $crate::store::StoreError> {
                let ttl = i64::try_from(c.ttl.as_millis()).unwrap_or(i64::MAX / 2);
                let ahead = clock.ahead_ms();
                let c = c.clone();
                // The store's clock is read once per statement (`now_ms`), so the expiry test and
                // the new times agree with each other.
                let take = format!(
                    "UPDATE leader_lease SET holder = $1, vantage = $2, api_url = $3, epoch = epoch + 1, \
                     acquired_at_ms = clock.now_ms, expires_at_ms = clock.now_ms + $4 \
                     FROM (SELECT {now} + $5 AS now_ms) AS clock \
                     WHERE name = 'controller' AND holder <> $1 \
                     AND (expires_at_ms <= clock.now_ms OR $6 = 2 OR ($6 = 1 AND vantage = $2))",
                    now = Self::CLOCK_MS,
                );
                let read = format!(
                    "SELECT *, {now} + $1 AS read_at_ms FROM leader_lease WHERE name = 'controller'",
                    now = Self::CLOCK_MS,
                );
                self.write(move |conn| Box::pin(async move {
                    sqlx::query(&take)
                        .bind(&c.holder)
                        .bind(&c.vantage)
                        .bind(&c.api_url)
                        .bind(ttl)
                        .bind(ahead)
                        .bind(c.takeover.code())
                        .execute(&mut *conn)
                        .await?;
                    let row = sqlx::query(&read).bind(ahead).fetch_one(&mut *conn).await?;
                    Self::lease_row(&row)
                }))
                .await
            }

            async fn renew_lease(&self, holder: &str, epoch: i64, ttl: std::time::Duration, clock: $crate::store::LeaseClock) -> Result<bool, $crate::store::StoreError> {
                let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
                let ahead = clock.ahead_ms();
                let holder = holder.to_string();
                let renew = format!(
                    "UPDATE leader_lease SET expires_at_ms = clock.now_ms + $1 \
                     FROM (SELECT {now} + $2 AS now_ms) AS clock \
                     WHERE name = 'controller' AND holder = $3 AND epoch = $4",
                    now = Self::CLOCK_MS,
                );
                self.write(move |c| Box::pin(async move {
                    let r = sqlx::query(&renew)
                        .bind(ttl)
                        .bind(ahead)
                        .bind(&holder)
                        .bind(epoch)
                        .execute(&mut *c)
                        .await?;
                    Ok(r.rows_affected() == 1)
                }))
                .await
            }

            async fn release_lease(&self, holder: &str, epoch: i64) -> Result<(), $crate::store::StoreError> {
                let holder = holder.to_string();
                self.write(move |c| Box::pin(async move {
                    sqlx::query("UPDATE leader_lease SET expires_at_ms = 0 WHERE name = 'controller' AND holder = $1 AND epoch = $2")
                        .bind(&holder)
                        .bind(epoch)
                        .execute(&mut *c)
                        .await?;
                    Ok(())
                }))
                .await
            }

            async fn lease(&self) -> Result<$crate::store::Lease, $crate::store::StoreError> {
                let read = format!(
                    "SELECT *, {now} AS read_at_ms FROM leader_lease WHERE name = 'controller'",
                    now = Self::CLOCK_MS,
                );
                let row = sqlx::query(&read)
                    .fetch_one(self.reader())
                    .await?;
                Self::lease_row(&row)
            }

            async fn put_vantage_reports(&self, rows: &[$crate::store::VantageRow]) -> Result<(), $crate::store::StoreError> {
                let rows = $crate::store::sql::latest_per_key(rows);
                self.write(move |c| Box::pin(async move {
                    // A statement per chunk, not per row: a batch is every domain's report of a
                    // second, and a round trip each was most of its cost on PostgreSQL.
                    for chunk in rows.chunks($crate::store::sql::VANTAGE_CHUNK) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO vantage_reports (domain, vantage, side, at_ms, report) ",
                        );
                        q.push_values(chunk, |mut b, r| {
                            b.push_bind(r.domain.as_str().to_string())
                                .push_bind(r.vantage.clone())
                                .push_bind(r.side.clone())
                                .push_bind($crate::store::sql::ms(r.at))
                                .push_bind(sqlx::types::Json(r.report.clone()));
                        });
                        q.push(" ON CONFLICT (domain, vantage, side) DO UPDATE SET at_ms = excluded.at_ms, report = excluded.report");
                        q.build().execute(&mut *c).await?;
                    }
                    Ok(())
                }))
                .await
            }

            async fn other_vantage_reports(&self, except: &str, since: chrono::DateTime<chrono::Utc>) -> Result<Vec<$crate::store::VantageRow>, $crate::store::StoreError> {
                let rows = sqlx::query("SELECT * FROM vantage_reports WHERE vantage <> $1 AND at_ms > $2 ORDER BY domain, vantage, side")
                    .bind(except)
                    .bind($crate::store::sql::ms(since))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(Self::vantage_row).collect()
            }

            async fn vantage_reports(&self, domain: &mxguard_core::Fqdn) -> Result<Vec<$crate::store::VantageRow>, $crate::store::StoreError> {
                let rows = sqlx::query("SELECT * FROM vantage_reports WHERE domain = $1 ORDER BY vantage, side")
                    .bind(domain.as_str())
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(Self::vantage_row).collect()
            }

            async fn idempotency_get(&self, scope: &str, key: &str) -> Result<Option<$crate::store::IdempotencyRecord>, $crate::store::StoreError> {
                let row = sqlx::query("SELECT * FROM idempotency_keys WHERE scope = $1 AND key = $2")
                    .bind(scope)
                    .bind(key)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(Self::idempotency_row).transpose()
            }

            async fn idempotency_claim(&self, claim: &$crate::store::IdempotencyClaim) -> Result<$crate::store::ClaimOutcome, $crate::store::StoreError> {
                let c = claim.clone();
                self.write(move |conn| Box::pin(async move {
                    // One statement, so two claimants (two instances on one PostgreSQL) cannot
                    // both win: the insert, or the takeover of an abandoned claim of the same
                    // request, happens for one of them.
                    let r = sqlx::query(
                        "INSERT INTO idempotency_keys (scope, key, request_hash, status, body, created_at_ms) \
                         VALUES ($1, $2, $3, NULL, NULL, $4) \
                         ON CONFLICT (scope, key) DO UPDATE SET created_at_ms = excluded.created_at_ms \
                         WHERE idempotency_keys.status IS NULL \
                         AND idempotency_keys.request_hash = excluded.request_hash \
                         AND idempotency_keys.created_at_ms < $5",
                    )
                    .bind(&c.scope)
                    .bind(&c.key)
                    .bind(&c.request_hash)
                    .bind($crate::store::sql::ms(c.at))
                    .bind($crate::store::sql::ms(c.stale_before))
                    .execute(&mut *conn)
                    .await?;
                    if r.rows_affected() == 1 {
                        return Ok($crate::store::ClaimOutcome::Claimed);
                    }
                    let row = sqlx::query("SELECT * FROM idempotency_keys WHERE scope = $1 AND key = $2")
                        .bind(&c.scope)
                        .bind(&c.key)
                        .fetch_one(&mut *conn)
                        .await?;
                    Ok($crate::store::ClaimOutcome::Held(Self::idempotency_row(&row)?))
                }))
                .await
            }

            async fn idempotency_answer(&self, claim: &$crate::store::IdempotencyClaim, answer: &$crate::store::IdempotentAnswer) -> Result<bool, $crate::store::StoreError> {
                let (c, a) = (claim.clone(), answer.clone());
                self.write(move |conn| Box::pin(async move {
                    let r = sqlx::query(
                        "UPDATE idempotency_keys SET status = $1, body = $2 \
                         WHERE scope = $3 AND key = $4 AND created_at_ms = $5 AND status IS NULL",
                    )
                    .bind(i64::from(a.status))
                    .bind(sqlx::types::Json(&a.body))
                    .bind(&c.scope)
                    .bind(&c.key)
                    .bind($crate::store::sql::ms(c.at))
                    .execute(&mut *conn)
                    .await?;
                    Ok(r.rows_affected() == 1)
                }))
                .await
            }

            async fn idempotency_release(&self, claim: &$crate::store::IdempotencyClaim) -> Result<(), $crate::store::StoreError> {
                let c = claim.clone();
                self.write(move |conn| Box::pin(async move {
                    sqlx::query(
                        "DELETE FROM idempotency_keys \
                         WHERE scope = $1 AND key = $2 AND created_at_ms = $3 AND status IS NULL",
                    )
                    .bind(&c.scope)
                    .bind(&c.key)
                    .bind($crate::store::sql::ms(c.at))
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                }))
                .await
            }

            async fn prune(&self, r: &$crate::store::Retention, now: chrono::DateTime<chrono::Utc>) -> Result<$crate::store::Pruned, $crate::store::StoreError> {
                use $crate::store::sql::{cutoff, PRUNE_CHANGES, PRUNE_EVENTS, PRUNE_IDEMPOTENCY, PRUNE_OBSERVATIONS};
                let observations = self.delete_batched(PRUNE_OBSERVATIONS, cutoff(now, r.observations)).await?;
                let events = self.delete_batched(PRUNE_EVENTS, cutoff(now, r.events)).await?;
                // Changes first: a snapshot only an old change referred to may go with it.
                let changes = self.delete_batched(PRUNE_CHANGES, cutoff(now, r.changes)).await?;
                let snapshots = self.prune_snapshots(r.snapshot_keep).await?;
                let idempotency_keys = self.delete_batched(PRUNE_IDEMPOTENCY, cutoff(now, r.idempotency_keys)).await?;
                Ok($crate::store::Pruned {
                    observations,
                    events,
                    changes,
                    snapshots,
                    idempotency_keys,
                })
            }
        }
    };
}

pub(crate) use impl_sql_store;
