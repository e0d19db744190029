//! The port every DNS provider implements. Providers speak RRsets and change sets; their own
//! wire types (Cloudflare JSON, aws-sdk types, DNS messages) never leave their crate.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Fqdn, RecordSet, RecordType};

/// The key of an RRset: owner name and type.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct RrsetKey {
    pub name: Fqdn,
    #[serde(rename = "type")]
    pub rtype: RecordType,
}

impl RrsetKey {
    pub fn new(name: Fqdn, rtype: RecordType) -> Self {
        RrsetKey { name, rtype }
    }
    pub fn of(set: &RecordSet) -> Self {
        RrsetKey::new(set.name().clone(), set.rtype())
    }

    /// `Rejected` unless the name lies in `zone`: a provider reads and writes one zone at a
    /// time.
    pub fn check_within(&self, zone: &Fqdn) -> Result<(), ProviderError> {
        if self.name.is_within(zone) {
            return Ok(());
        }
        Err(ProviderError::Rejected {
            reason: format!("{} is not in zone {zone}", self.name),
        })
    }
}

/// One change to one RRset. `expected` is what the planner read before planning — `None`
/// means the RRset was absent. It is a precondition: a provider refuses the change with
/// [`ProviderError::Rejected`] when the live RRset's records differ from `expected` (or the
/// RRset exists when `None` was expected), so a change made by someone else in between is
/// detected, not overwritten. Providers compare records, not TTLs (RFC 2136 §2.4.2
/// prerequisites cannot see TTLs). [`crate::diff`] fills `expected` from what it was given.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// Replace the RRset at `set`'s name and type with exactly `set`.
    Upsert {
        set: RecordSet,
        expected: Option<RecordSet>,
    },
    /// Remove the RRset.
    Delete {
        key: RrsetKey,
        expected: Option<RecordSet>,
    },
}

impl Change {
    pub fn key(&self) -> RrsetKey {
        match self {
            Change::Upsert { set, .. } => RrsetKey::of(set),
            Change::Delete { key, .. } => key.clone(),
        }
    }

    /// The RRset the planner saw; `None` when it saw none.
    pub fn expected(&self) -> Option<&RecordSet> {
        match self {
            Change::Upsert { expected, .. } | Change::Delete { expected, .. } => expected.as_ref(),
        }
    }

    /// The precondition, for providers that check it themselves: `live` is the RRset as read
    /// just now (`None`: absent). `Rejected` when its records differ from `expected` (TTLs
    /// are not compared), saying what was expected and what was found.
    pub fn check_expected(&self, live: Option<&RecordSet>) -> Result<(), ProviderError> {
        let same = match (live, self.expected()) {
            (None, None) => true,
            (Some(l), Some(e)) => l.records() == e.records(),
            _ => false,
        };
        if same {
            return Ok(());
        }
        let key = self.key();
        Err(ProviderError::Rejected {
            reason: format!(
                "{} {} changed since it was read: expected {}, found {}",
                key.name,
                key.rtype,
                show(self.expected()),
                show(live)
            ),
        })
    }
}

/// An RRset's records, comma-separated, or "no records".
fn show(set: Option<&RecordSet>) -> String {
    match set {
        None => "no records".into(),
        Some(s) => s
            .records()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Changes to one zone, applied as one request where the provider allows it.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ChangeSet {
    pub changes: Vec<Change>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The checks every provider makes before sending anything: each name lies in `zone`,
    /// each `expected` is for the same RRset as its change, and no RRset is changed twice.
    pub fn validate_for(&self, zone: &Fqdn) -> Result<(), ProviderError> {
        let mut seen = std::collections::BTreeSet::new();
        for change in &self.changes {
            let key = change.key();
            key.check_within(zone)?;
            if let Some(expected) = change.expected() {
                if RrsetKey::of(expected) != key {
                    return Err(ProviderError::Rejected {
                        reason: format!(
                            "the expected RRset {} {} does not match the change to {} {}",
                            expected.name(),
                            expected.rtype(),
                            key.name,
                            key.rtype
                        ),
                    });
                }
            }
            if !seen.insert(key.clone()) {
                return Err(ProviderError::Rejected {
                    reason: format!(
                        "two changes to {} {} in one change set",
                        key.name, key.rtype
                    ),
                });
            }
        }
        Ok(())
    }
}

/// What a provider can and cannot do; the planner and the retry machinery read it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Capabilities {
    /// The lowest TTL the provider accepts; lower TTLs are raised to it on write.
    pub min_ttl: u32,
    /// The highest TTL the provider accepts (Cloudflare: 86400; DNS itself: 2^31 − 1).
    pub max_ttl: u32,
    /// Most RRset changes in one request.
    pub max_changes_per_request: usize,
    /// Whether one `apply` is all-or-nothing.
    pub atomic: bool,
    /// Whether `list_zone` is supported (whole-zone snapshots).
    pub zone_listing: bool,
}

/// Why a provider call failed. `is_retryable` drives the retry machinery.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProviderError {
    #[error("rate limited by the provider; retry after {retry_after:?}")]
    RateLimited { retry_after: Option<Duration> },
    #[error("transient provider failure: {0}")]
    Transient(String),
    #[error("authentication or authorisation failed: {0}")]
    Auth(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the provider rejected the change: {reason}")]
    Rejected { reason: String },
    /// This writer lost its right to write (a fencing check refused it): nothing was sent.
    #[error("fenced: {0}")]
    Fenced(String),
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. } | ProviderError::Transient(_)
        )
    }

    /// A stable label for metrics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Transient(_) => "transient",
            ProviderError::Auth(_) => "auth",
            ProviderError::NotFound(_) => "not_found",
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::Fenced(_) => "fenced",
        }
    }
}

/// A DNS provider mxguard can read from and write to.
#[async_trait]
pub trait DnsProvider: Send + Sync {
    /// A short name for logs and events (the config key, e.g. `cf`).
    fn name(&self) -> &str;

    fn capabilities(&self) -> Capabilities;

    /// The sustained requests per second this client allows itself at the provider (its own
    /// pacing, e.g. Cloudflare's 1,200 per 5 minutes), when it paces; `None` when it does not.
    /// The service spreads its periodic reads so they take a fraction of this.
    fn request_rate(&self) -> Option<f64> {
        None
    }

    /// How many requests one `read` of `keys` costs at the provider (for that spreading).
    fn read_cost(&self, _keys: &[RrsetKey]) -> u32 {
        1
    }

    /// What listing a zone of `rrsets` RRsets costs, in reads (for reads answered from one
    /// listing): one by default; a page per so many RRsets at a REST API; for a zone transfer,
    /// what parsing the whole zone costs.
    fn list_cost(&self, _rrsets: usize) -> u32 {
        1
    }

    /// The live RRsets at `keys` in `zone`; an absent RRset is simply missing from the result.
    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError>;

    /// Every RRset of a managed type in `zone`, for whole-zone snapshots.
    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError>;

    /// Applies `changes` to `zone`, checking each change's `expected` first. An empty change
    /// set succeeds without a request. Changes to names outside `zone`, or two changes to one
    /// RRset, are `Rejected` before anything is sent.
    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError>;

    /// [`DnsProvider::apply`] only while `fence` allows it, checked as late as the client can:
    /// here just before the apply; [`crate::Guarded`] after every wait (zone lock, admission,
    /// rate limit) and again before each retry. Refused: `Fenced`, nothing sent.
    async fn apply_fenced(
        &self,
        zone: &Fqdn,
        changes: &ChangeSet,
        fence: &dyn Fence,
    ) -> Result<(), ProviderError> {
        fence.check().await.map_err(ProviderError::Fenced)?;
        self.apply(zone, changes).await
    }
}

/// Whether the writer may still write: checked immediately before a request that changes
/// records, so a writer that lost its lease while it waited (for a lock, admission, the rate
/// limit, or a pause of the whole process) writes nothing.
#[async_trait]
pub trait Fence: Send + Sync {
    /// `Err(why)` when the writer must not write.
    async fn check(&self) -> Result<(), String>;

    /// Told when the write waits, before anything is sent, for a lockout the provider announced
    /// (its rate limit) until `until`: the writer can say so instead of looking stuck.
    async fn waiting(&self, _until: std::time::SystemTime) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rate_limits_and_transients_are_retried() {
        assert!(ProviderError::RateLimited { retry_after: None }.is_retryable());
        assert!(ProviderError::Transient("x".into()).is_retryable());
        assert!(!ProviderError::Auth("x".into()).is_retryable());
        assert!(!ProviderError::NotFound("x".into()).is_retryable());
        assert!(!ProviderError::Rejected { reason: "x".into() }.is_retryable());
    }

    fn a_set(name: &str) -> RecordSet {
        RecordSet::parse(
            Fqdn::parse(name).unwrap(),
            RecordType::A,
            crate::Ttl::new(60).unwrap(),
            &["192.0.2.1"],
        )
        .unwrap()
    }

    #[test]
    fn validate_for_refuses_foreign_names_duplicates_and_mismatched_expectations() {
        let zone = Fqdn::parse("example.com").unwrap();
        let upsert = |name: &str, expected: Option<RecordSet>| Change::Upsert {
            set: a_set(name),
            expected,
        };
        let ok = ChangeSet {
            changes: vec![upsert("a.example.com", None), upsert("b.example.com", None)],
        };
        assert_eq!(ok.validate_for(&zone), Ok(()));
        let foreign = ChangeSet {
            changes: vec![upsert("a.example.net", None)],
        };
        let twice = ChangeSet {
            changes: vec![upsert("a.example.com", None), upsert("A.example.com", None)],
        };
        let mismatched = ChangeSet {
            changes: vec![upsert("a.example.com", Some(a_set("b.example.com")))],
        };
        for bad in [foreign, twice, mismatched] {
            assert!(matches!(
                bad.validate_for(&zone),
                Err(ProviderError::Rejected { .. })
            ));
        }
    }

    #[test]
    fn check_expected_compares_records_not_ttls() {
        let set = a_set("a.example.com");
        let longer = set.with_ttl(crate::Ttl::new(3600).unwrap());
        let upsert = |expected: Option<RecordSet>| Change::Upsert {
            set: set.clone(),
            expected,
        };
        assert_eq!(upsert(None).check_expected(None), Ok(()));
        assert_eq!(
            upsert(Some(set.clone())).check_expected(Some(&longer)),
            Ok(())
        );
        assert_eq!(
            upsert(None).check_expected(Some(&set)),
            Err(ProviderError::Rejected {
                reason: "a.example.com. A changed since it was read: expected no records, \
                         found 192.0.2.1"
                    .into()
            })
        );
        let other = RecordSet::parse(
            set.name().clone(),
            RecordType::A,
            set.ttl(),
            &["192.0.2.2", "192.0.2.3"],
        )
        .unwrap();
        assert!(upsert(Some(set.clone()))
            .check_expected(Some(&other))
            .is_err());
        assert!(upsert(Some(set.clone())).check_expected(None).is_err());
    }
}
