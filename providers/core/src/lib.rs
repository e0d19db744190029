//! mxguard's core vocabulary: domain names, TTLs, MX/A/AAAA/TXT record sets, and the
//! [`DnsProvider`] port that every provider crate implements; the machinery every provider
//! shares ([`Guarded`]: admission ([`Gate`]), token bucket, retries, deadline, one change in flight per zone, on an
//! injected [`Clock`]); [`diff`]; TXT presentation format ([`txt`]); what `verify_access`
//! reports ([`AccessReport`]); and, behind the `conformance` feature, the provider
//! conformance kit (see `CONFORMANCE.md`).
#![forbid(unsafe_code)]

mod access;
pub mod clock;
mod coalesce;
#[cfg(feature = "conformance")]
pub mod conformance;
mod diff;
pub mod gate;
mod guarded;
pub mod jitter;
mod name;
mod provider;
pub mod ratelimit;
mod record;
pub mod retry;
pub mod txt;
mod zonelock;

pub use access::{AccessCheck, AccessReport, Missing, Outcome};
pub use clock::{Clock, ManualClock, TokioClock};
pub use coalesce::{Coalescing, FIRST_LISTING_ASKS, LIST_BACKOFF};
pub use diff::{diff, write_rank};
pub use gate::{Gate, Priority};
pub use guarded::Guarded;
pub use jitter::{FixedJitter, Jitter, SeededJitter};
pub use name::{DomainName, Fqdn};
pub use provider::{Capabilities, Change, ChangeSet, DnsProvider, Fence, ProviderError, RrsetKey};
pub use ratelimit::{Budget, RateLimit, RateLimitError, TokenBucket};
pub use record::{MxRecord, Preference, RData, RecordSet, RecordType, Ttl};
pub use retry::{Retrier, RetryPolicy};
pub use zonelock::{ZoneGuard, ZoneLocks};

/// A value that failed to parse into the model. Messages say what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid domain name {input:?}: {reason}")]
    InvalidName { input: String, reason: String },
    #[error("invalid TTL {0}: expected seconds 0..=2147483647")]
    InvalidTtl(String),
    #[error("invalid {rtype} record {input:?}: {reason}")]
    InvalidRecord {
        rtype: RecordType,
        input: String,
        reason: String,
    },
    #[error("unsupported record type {0:?}: expected MX, A, AAAA or TXT")]
    UnsupportedType(String),
    #[error("empty {rtype} record set at {name}: a record set holds at least one record")]
    EmptyRecordSet { name: String, rtype: RecordType },
    #[error("{found} record in the {expected} set at {name}")]
    MixedTypes {
        name: String,
        expected: RecordType,
        found: RecordType,
    },
    #[error("duplicate record {record:?} at {name}")]
    DuplicateRecord { name: String, record: String },
    #[error("a Null MX (\"0 .\", RFC 7505) at {name} must be the only MX record")]
    NullMxNotAlone { name: String },
}
