//! Rows as the rest of mxguard sees them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use mxguard_core::{ChangeSet, Fqdn, RecordSet};
use serde::{Deserialize, Serialize};

use crate::events::EventKind;

#[derive(Debug, Clone, PartialEq)]
pub struct DomainStateRow {
    pub domain: Fqdn,
    pub state: serde_json::Value,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// One probe result: one (target, resolver, address) in one round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    pub domain: Fqdn,
    pub vantage: String,
    pub side: String,
    pub target: String,
    pub resolver: String,
    pub address: Option<String>,
    pub outcome: String,
    pub phase: Option<String>,
    pub latency_ms: Option<i64>,
    pub detail: String,
    pub observed_at: DateTime<Utc>,
}

/// One domain's state to write, as [`Store::save_state`](super::Store::save_state) takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSave {
    pub domain: Fqdn,
    pub state: JsonText,
    /// The version the writer last read (`None`: no row yet).
    pub expected_version: Option<i64>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub domain: Fqdn,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    /// `automation` or the API token's name.
    pub actor: String,
    pub reason: Option<String>,
    pub message: String,
    pub evidence: JsonText,
}

/// JSON as text: what an actor hands the writer (its state, an event's evidence). Every actor
/// waits for the writer at once at a start of 100,000 domains, and what it waits with was a
/// `serde_json::Value`, a tree of maps (~2 KB for a state or a health event's votes); as text
/// it is a few hundred bytes.
#[derive(Debug, Clone)]
pub struct JsonText(Box<serde_json::value::RawValue>);

impl JsonText {
    /// `value` serialised.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<JsonText, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(JsonText)
    }

    /// The JSON text, as written to the store.
    pub fn raw(&self) -> &serde_json::value::RawValue {
        &self.0
    }

    /// The JSON as a value again.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(v: serde_json::Value) -> JsonText {
        // A `Value` always serialises (its keys are strings): the `null` is never taken.
        JsonText::of(&v).unwrap_or_else(|_| JsonText(serde_json::value::RawValue::NULL.to_owned()))
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &JsonText) -> bool {
        self.0.get() == other.0.get()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: i64,
    pub domain: Fqdn,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub actor: String,
    pub reason: Option<String>,
    pub message: String,
    pub evidence: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewSnapshot {
    pub domain: Fqdn,
    pub provider: String,
    pub zone: Fqdn,
    pub label: Option<String>,
    pub reason: String,
    pub taken_at: DateTime<Utc>,
    pub taken_by: String,
    pub records: Vec<RecordSet>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub id: i64,
    pub domain: Fqdn,
    pub provider: String,
    pub zone: Fqdn,
    pub label: Option<String>,
    pub reason: String,
    pub taken_at: DateTime<Utc>,
    pub taken_by: String,
    pub records: Vec<RecordSet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeStatus {
    Pending,
    Applied,
    Verified,
    Failed,
}

impl ChangeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeStatus::Pending => "pending",
            ChangeStatus::Applied => "applied",
            ChangeStatus::Verified => "verified",
            ChangeStatus::Failed => "failed",
        }
    }

    /// The statuses a change may move to `self` from.
    pub fn allowed_from(self) -> &'static [ChangeStatus] {
        match self {
            ChangeStatus::Pending => &[],
            ChangeStatus::Applied => &[ChangeStatus::Pending],
            ChangeStatus::Verified => &[ChangeStatus::Applied],
            ChangeStatus::Failed => &[ChangeStatus::Pending, ChangeStatus::Applied],
        }
    }
}

impl fmt::Display for ChangeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChangeStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(ChangeStatus::Pending),
            "applied" => Ok(ChangeStatus::Applied),
            "verified" => Ok(ChangeStatus::Verified),
            "failed" => Ok(ChangeStatus::Failed),
            other => Err(format!("unknown change status {other:?}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewChange {
    pub domain: Fqdn,
    pub provider: String,
    pub zone: Fqdn,
    /// Fencing epoch of the instance that writes.
    pub epoch: i64,
    pub before: Vec<RecordSet>,
    pub after: ChangeSet,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeIntent {
    pub id: i64,
    pub domain: Fqdn,
    pub provider: String,
    pub zone: Fqdn,
    pub epoch: i64,
    pub snapshot_id: Option<i64>,
    pub before: Vec<RecordSet>,
    pub after: ChangeSet,
    pub status: ChangeStatus,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An `Idempotency-Key` as stored: claimed before the work (in flight, no answer yet), then
/// answered. Keys are per scope (the API token's name).
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub key: String,
    /// Hash of the request, so a reused key with a different body can be refused.
    pub request_hash: String,
    /// `None` while the first request is still being answered.
    pub answer: Option<IdempotentAnswer>,
    /// When the first request claimed the key: it identifies the claim, and an unanswered
    /// claim this old may be taken over.
    pub created_at: DateTime<Utc>,
}

/// The first successful answer to a keyed request, replayed to its retries.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotentAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

/// A request's claim on its `Idempotency-Key`, written before the work.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyClaim {
    pub scope: String,
    pub key: String,
    pub request_hash: String,
    /// The claim's time; also what identifies it when it is answered or released.
    pub at: DateTime<Utc>,
    /// An unanswered claim of the same request made before this has been abandoned (its
    /// instance crashed): this claim takes it over.
    pub stale_before: DateTime<Utc>,
}

/// What [`Store::idempotency_claim`](super::Store::idempotency_claim) found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The key is this caller's now: do the work, then answer or release the claim.
    Claimed,
    /// Someone claimed the key first: in flight or answered, maybe for another request.
    Held(IdempotencyRecord),
}

/// How long each kind of record is kept (`[store]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Probe observations older than this are deleted.
    pub observations: std::time::Duration,
    /// Timeline events older than this are deleted.
    pub events: std::time::Duration,
    /// Changes that ended (verified or failed) longer ago than this are deleted; a pending or
    /// applied change never is (a restart resumes it).
    pub changes: std::time::Duration,
    /// Idempotency keys claimed longer ago than this are deleted (a retry after that runs
    /// afresh).
    pub idempotency_keys: std::time::Duration,
    /// Snapshots kept per domain, newest first, besides those a change or a domain's state
    /// refers to (failback restores the failover's snapshot), which are always kept.
    pub snapshot_keep: u32,
}

/// How many rows one [`Store::prune`](super::Store::prune) deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub observations: u64,
    pub events: u64,
    pub changes: u64,
    pub snapshots: u64,
    pub idempotency_keys: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.observations + self.events + self.changes + self.snapshots + self.idempotency_keys
    }
}

/// When an instance may take the leader lease from its current holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Only once the holder's lease has run out (the normal case for a follower).
    IfExpired,
    /// Also when the holder has this instance's vantage name: the same instance restarted (its
    /// old process is gone, or is a misconfigured twin that fencing keeps from writing).
    IfExpiredOrSameVantage,
    /// Always (SQLite: a file lock already proves no other instance is alive).
    Always,
}

impl Takeover {
    pub(crate) fn code(self) -> i64 {
        match self {
            Takeover::IfExpired => 0,
            Takeover::IfExpiredOrSameVantage => 1,
            Takeover::Always => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseClaim {
    /// Unique per process: the vantage name plus a random suffix.
    pub holder: String,
    pub vantage: String,
    pub api_url: Option<String>,
    pub ttl: std::time::Duration,
    pub takeover: Takeover,
}

/// The clock a lease's expiry is written and judged on: always the store's own (PostgreSQL's
/// `clock_timestamp()`, SQLite's `unixepoch`), because instances whose wall clocks disagree
/// must still agree on when a lease runs out — one running ahead would take a live lease, a
/// leader running behind would write an expiry already past for the others. It holds no time
/// an instance could supply: production passes [`LeaseClock::STORE`]; tests may only move the
/// store's clock forward by a fixed amount, to let a lease age without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseClock {
    ahead_ms: i64,
}

impl LeaseClock {
    /// The store's clock as it is.
    pub const STORE: LeaseClock = LeaseClock { ahead_ms: 0 };

    /// The store's clock put forward by `by` (tests: a lease ages without waiting). Later
    /// calls of a story must not go back in time, as the real clock never does.
    pub fn store_ahead_by(by: std::time::Duration) -> LeaseClock {
        LeaseClock {
            ahead_ms: i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4),
        }
    }

    pub(crate) fn ahead_ms(self) -> i64 {
        self.ahead_ms
    }
}

/// The leader lease as stored. `epoch` grows by one at every change of holder; every write a
/// leader makes carries its epoch and the store refuses it once the epoch has moved on. All
/// three times are the store's clock ([`LeaseClock`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lease {
    pub holder: String,
    pub vantage: String,
    pub api_url: Option<String>,
    pub epoch: i64,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The store's clock when the row was read: `expires_at` is judged against it, never
    /// against the reader's own clock.
    pub read_at: DateTime<Utc>,
}

impl Lease {
    /// Held by someone and not run out on the store's clock.
    pub fn is_live(&self) -> bool {
        !self.holder.is_empty() && self.expires_at > self.read_at
    }

    /// Who decides for every domain, as a timeline shows it: a quiet timeline still says which
    /// instance holds the lease (or that none does).
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "held": self.is_live(),
            "holder": (!self.holder.is_empty()).then_some(&self.holder),
            "vantage": (!self.vantage.is_empty()).then_some(&self.vantage),
            "api_url": self.api_url,
            "epoch": self.epoch,
            "since": self.acquired_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "expires_at": self.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }

    /// The same, as one line.
    pub fn line(&self) -> String {
        if self.holder.is_empty() {
            return "no instance has held the lease yet: nothing is automated".into();
        }
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if self.is_live() {
            format!(
                "led by {} (vantage {}, epoch {}) since {}",
                self.holder,
                self.vantage,
                self.epoch,
                at(self.acquired_at)
            )
        } else {
            format!(
                "no leader: the lease of {} (vantage {}, epoch {}) expired at {}; nothing is automated until an instance takes it",
                self.holder,
                self.vantage,
                self.epoch,
                at(self.expires_at)
            )
        }
    }
}

/// One vantage's latest verdict on one side of one domain (the JSON is `vantage::VantageReport`).
#[derive(Debug, Clone, PartialEq)]
pub struct VantageRow {
    pub domain: Fqdn,
    pub vantage: String,
    pub side: String,
    pub at: DateTime<Utc>,
    pub report: serde_json::Value,
}
