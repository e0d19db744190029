//! Persistence: one narrow [`Store`] trait, two sqlx backends chosen by the URL scheme —
//! SQLite (embedded, zero-setup, single instance) and PostgreSQL (production, HA).
//! Both run the same SQL (`sql.rs`); only connection setup and migrations differ.

mod postgres;
mod sql;
mod sqlite;
mod types;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mxguard_core::Fqdn;

use crate::config::{StoreKind, StoreUrl};
pub use types::*;

/// `Clone`: a batched read's one error is every waiter's answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store migration failed: {0}")]
    Migration(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("stored data could not be read back: {0}")]
    Corrupt(String),
    /// A write carried a fencing epoch that is no longer the lease's: another instance leads.
    #[error("fenced: {0}")]
    Fenced(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => StoreError::NotFound("row".into()),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Corrupt(e.to_string())
            }
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// Everything mxguard keeps. Times are passed in by the caller (the injected clock), except
/// the leader lease's, which are the store's own ([`LeaseClock`]).
#[async_trait]
pub trait Store: Send + Sync {
    fn kind(&self) -> StoreKind;

    /// Applies pending migrations (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the connection pool; later calls fail with `Unavailable`.
    async fn close(&self);

    // --- per-domain runtime state (compare-and-swap on `version`) ---

    async fn load_state(&self, domain: &Fqdn) -> Result<Option<DomainStateRow>, StoreError>;

    /// The states of those of `domains` that have one, by name: one query per few thousand
    /// names, so a start with thousands of domains does not cost a query per domain.
    async fn load_states(
        &self,
        domains: &[Fqdn],
    ) -> Result<HashMap<Fqdn, DomainStateRow>, StoreError>;

    /// Writes `state` when the stored version equals `expected_version` (`None`: no row yet)
    /// and `epoch` is the lease's. Returns the new version, `Conflict` when another writer got
    /// there first, `Fenced` when the epoch has moved on.
    async fn save_state(
        &self,
        domain: &Fqdn,
        state: &serde_json::Value,
        expected_version: Option<i64>,
        epoch: i64,
        at: DateTime<Utc>,
    ) -> Result<i64, StoreError>;

    /// Each of `saves` written as [`Store::save_state`] would, under one fence check and in
    /// one write (a statement per few hundred), so thousands of actors saving at once cost a
    /// handful of writes. The answers are in `saves`' order: the new version, that domain's
    /// `Conflict`, or, when the write as a whole fails (`Fenced`, `Unavailable`), its error for
    /// every save. A domain appears at most once.
    async fn save_states(&self, saves: Vec<StateSave>, epoch: i64) -> Vec<Result<i64, StoreError>> {
        let mut out = Vec::with_capacity(saves.len());
        for s in saves {
            out.push(
                self.save_state(&s.domain, &s.state.value(), s.expected_version, epoch, s.at)
                    .await,
            );
        }
        out
    }

    // --- probe observations (bounded by retention) ---

    async fn record_observations(&self, obs: &[Observation]) -> Result<(), StoreError>;

    /// The newest observations of `domain`, newest first.
    async fn recent_observations(
        &self,
        domain: &Fqdn,
        limit: u32,
    ) -> Result<Vec<Observation>, StoreError>;

    /// Deletes observations older than `before`; returns how many.
    async fn prune_observations(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    // --- the audit timeline ---

    async fn append_event(&self, event: &NewEvent) -> Result<Event, StoreError>;

    /// `events` appended in one write (a statement per few hundred), answered in their order;
    /// when the write fails, its error is every event's answer.
    async fn append_events(&self, events: Vec<NewEvent>) -> Vec<Result<Event, StoreError>> {
        let mut out = Vec::with_capacity(events.len());
        for e in &events {
            out.push(self.append_event(e).await);
        }
        out
    }

    /// Events of `domain` with id greater than `after` (oldest first), at most `limit`.
    async fn events(
        &self,
        domain: &Fqdn,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError>;

    /// The newest event of `kind` in `domain`'s timeline (the last drill, for the schedule).
    /// This default pages through the timeline (test doubles); the SQL stores ask once.
    async fn last_event(
        &self,
        domain: &Fqdn,
        kind: crate::events::EventKind,
    ) -> Result<Option<Event>, StoreError> {
        const PAGE: u32 = 1000;
        let (mut after, mut last) = (None, None);
        loop {
            let page = self.events(domain, after, PAGE).await?;
            let full = page.len() as u32 == PAGE;
            for e in page {
                after = Some(e.id);
                if e.kind == kind {
                    last = Some(e);
                }
            }
            if !full {
                return Ok(last);
            }
        }
    }

    // --- snapshots ---

    async fn save_snapshot(&self, snapshot: &NewSnapshot) -> Result<Snapshot, StoreError>;

    async fn snapshot(&self, id: i64) -> Result<Option<Snapshot>, StoreError>;

    /// Snapshots, newest first, of one domain or all.
    async fn snapshots(
        &self,
        domain: Option<&Fqdn>,
        limit: u32,
    ) -> Result<Vec<Snapshot>, StoreError>;

    // --- write-ahead change intents ---

    /// Commits the snapshot of what is about to be replaced and a `pending` change row, in one
    /// transaction, before the provider is called. `Fenced` unless `change.epoch` is the lease's.
    async fn begin_change(
        &self,
        snapshot: &NewSnapshot,
        change: &NewChange,
    ) -> Result<(Snapshot, ChangeIntent), StoreError>;

    /// Moves a change along `pending → applied → verified` (or to `failed` from either), by a
    /// writer holding `epoch`. Any other move is a `Conflict`; an unknown id is `NotFound`; a
    /// stale epoch is `Fenced`.
    async fn set_change_status(
        &self,
        id: i64,
        status: ChangeStatus,
        error: Option<&str>,
        epoch: i64,
        at: DateTime<Utc>,
    ) -> Result<ChangeIntent, StoreError>;

    async fn change(&self, id: i64) -> Result<Option<ChangeIntent>, StoreError>;

    /// The newest changes of `domain`, newest first.
    async fn recent_changes(
        &self,
        domain: &Fqdn,
        limit: u32,
    ) -> Result<Vec<ChangeIntent>, StoreError>;

    /// Changes still `pending` or `applied`, oldest first: what a restart must finish.
    async fn unfinished_changes(&self) -> Result<Vec<ChangeIntent>, StoreError>;

    /// The unfinished changes of `domains` only, oldest first (a query per few thousand names).
    async fn unfinished_changes_for(
        &self,
        domains: &[Fqdn],
    ) -> Result<Vec<ChangeIntent>, StoreError>;

    // --- the leader lease (fencing epoch) ---

    /// Takes the lease for `claim.holder` when `claim.takeover` allows (a new epoch), and
    /// returns the lease as it now stands, whoever holds it. Whether the holder's lease has run
    /// out, and the new one's `acquired_at` and `expires_at` (`+ claim.ttl`), are on `clock`:
    /// the store's own.
    async fn acquire_lease(
        &self,
        claim: &LeaseClaim,
        clock: LeaseClock,
    ) -> Result<Lease, StoreError>;

    /// Extends the lease to `ttl` from now on `clock` (the store's) if `holder` still holds it
    /// at `epoch`; `false` if not.
    async fn renew_lease(
        &self,
        holder: &str,
        epoch: i64,
        ttl: std::time::Duration,
        clock: LeaseClock,
    ) -> Result<bool, StoreError>;

    /// Lets the lease run out now (graceful shutdown), if `holder` still holds it at `epoch`.
    async fn release_lease(&self, holder: &str, epoch: i64) -> Result<(), StoreError>;

    async fn lease(&self) -> Result<Lease, StoreError>;

    // --- each vantage's latest verdicts ---

    /// Replaces each row's report for its (domain, vantage, side), in one transaction.
    async fn put_vantage_reports(&self, rows: &[VantageRow]) -> Result<(), StoreError>;

    /// Every vantage's latest reports for `domain`.
    async fn vantage_reports(&self, domain: &Fqdn) -> Result<Vec<VantageRow>, StoreError>;

    /// The reports of every domain from vantages other than `except`, newer than `since`.
    async fn other_vantage_reports(
        &self,
        except: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<VantageRow>, StoreError>;

    // --- idempotency keys for API mutations ---

    async fn idempotency_get(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Claims (scope, key) before the work by writing an in-flight row (no answer yet), unless
    /// a row is there: then returns it, in flight or answered. An in-flight row of the same
    /// request claimed before `claim.stale_before` was abandoned by a crash and is taken over,
    /// so a key is never stuck. Of concurrent claims, on one instance or several, one wins.
    async fn idempotency_claim(&self, claim: &IdempotencyClaim)
        -> Result<ClaimOutcome, StoreError>;

    /// Stores the answer in `claim`'s in-flight row. `false` when the row is no longer that
    /// claim's (taken over after it went stale, or pruned): the answer is not stored.
    async fn idempotency_answer(
        &self,
        claim: &IdempotencyClaim,
        answer: &IdempotentAnswer,
    ) -> Result<bool, StoreError>;

    /// Deletes `claim`'s row while it is still in flight: a refusal changed nothing, and a
    /// retry is answered afresh.
    async fn idempotency_release(&self, claim: &IdempotencyClaim) -> Result<(), StoreError>;

    // --- retention ---

    /// Deletes what `retention` no longer keeps, judged at `now`: observations, events,
    /// finished changes and idempotency keys by age, and per domain the snapshots beyond the
    /// newest `snapshot_keep` that no remaining change and no domain's state refers to.
    /// Deletes in batches, each a write of its own, so other writes go on in between.
    async fn prune(&self, retention: &Retention, now: DateTime<Utc>) -> Result<Pruned, StoreError>;
}

/// Opens the backend the URL names. Does not migrate.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    match url.kind() {
        StoreKind::Sqlite => Ok(Arc::new(sqlite::SqliteStore::open(url).await?)),
        StoreKind::Postgres => Ok(Arc::new(postgres::PgStore::open(url).await?)),
    }
}
