//! Why a publish failed, and what the actor does about it. One kind per reaction (after
//! kube-rs's `error_policy`): a fenced write is not retried here (the leader finishes it), a
//! refused credential is alerted and retried slowly, a rate limit waits the provider's own time,
//! anything transient backs off. The kind is a stable label for metrics and events.

use std::time::Duration;

use mxguard_core::ProviderError;
use serde::Serialize;

use crate::plan::PlanError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum ChangeError {
    /// This instance lost its right to write: nothing was sent.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The provider refused the credentials or their permission.
    #[error("credentials refused by the provider: {0}")]
    Auth(String),
    /// The zone (or its id) is not there for these credentials.
    #[error("not found at the provider: {0}")]
    NotFound(String),
    /// Over the provider's rate limit; `retry_after` as the provider said, if it did.
    #[error("rate-limited by the provider{}", .retry_after.map(|d| format!(" for {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        #[serde(skip)]
        retry_after: Option<Duration>,
    },
    /// A network failure or a 5xx: worth trying again soon.
    #[error("{0}")]
    Transient(String),
    /// The provider refused the change: most often its precondition (the records changed since
    /// they were read), so the next attempt reads and plans again.
    #[error("the provider rejected the change: {0}")]
    Rejected(String),
    /// The planner refused (it would empty the MX set, touch an unmanaged RRset…).
    #[error("{0}")]
    Plan(String),
    /// Applied, but not served by the authoritative servers in time.
    #[error("{0}")]
    NotVisible(String),
    #[error("store: {0}")]
    Store(String),
}

/// The backoff for transient kinds: 10 s, doubling, at most 5 minutes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The longest wait a provider's `Retry-After` may impose on one change.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Slow retries (a credential or a zone an operator must fix) start here.
const SLOW_START: Duration = Duration::from_secs(60);

impl ChangeError {
    /// Every [`kind`](Self::kind): `/metrics` exports each at 0 from the start, so a rate over
    /// `mxguard_change_failures_total` (and the alert on it) sees the first failure.
    pub const KINDS: [&'static str; 9] = [
        "fenced",
        "auth",
        "not_found",
        "rate_limited",
        "transient",
        "rejected",
        "plan",
        "not_visible",
        "store",
    ];

    /// A stable label for metrics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            ChangeError::Fenced(_) => "fenced",
            ChangeError::Auth(_) => "auth",
            ChangeError::NotFound(_) => "not_found",
            ChangeError::RateLimited { .. } => "rate_limited",
            ChangeError::Transient(_) => "transient",
            ChangeError::Rejected(_) => "rejected",
            ChangeError::Plan(_) => "plan",
            ChangeError::NotVisible(_) => "not_visible",
            ChangeError::Store(_) => "store",
        }
    }

    /// When the actor tries the change again after its `attempt`th failure (1 for the first),
    /// or `None` when it does not (a fenced write belongs to the leader now).
    pub fn retry_in(&self, attempt: u32) -> Option<Duration> {
        let doubling = |start: Duration| {
            start
                .saturating_mul(1 << attempt.saturating_sub(1).min(6))
                .min(MAX_BACKOFF)
        };
        match self {
            ChangeError::Fenced(_) => None,
            ChangeError::Auth(_) | ChangeError::NotFound(_) | ChangeError::Plan(_) => {
                Some(doubling(SLOW_START))
            }
            ChangeError::RateLimited {
                retry_after: Some(d),
            } => Some((*d).clamp(Duration::from_secs(1), MAX_RETRY_AFTER)),
            ChangeError::RateLimited { retry_after: None }
            | ChangeError::Transient(_)
            | ChangeError::Rejected(_)
            | ChangeError::NotVisible(_)
            | ChangeError::Store(_) => Some(doubling(Duration::from_secs(10))),
        }
    }

    /// Someone must act (a credential, a zone, a plan the safety rules refuse): alert at once.
    pub fn needs_an_operator(&self) -> bool {
        matches!(
            self,
            ChangeError::Auth(_) | ChangeError::NotFound(_) | ChangeError::Plan(_)
        )
    }
}

impl From<ProviderError> for ChangeError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Fenced(why) => ChangeError::Fenced(why),
            ProviderError::Auth(why) => ChangeError::Auth(why),
            ProviderError::NotFound(why) => ChangeError::NotFound(why),
            ProviderError::RateLimited { retry_after } => ChangeError::RateLimited { retry_after },
            ProviderError::Transient(why) => ChangeError::Transient(why),
            ProviderError::Rejected { reason } => ChangeError::Rejected(reason),
        }
    }
}

impl From<StoreError> for ChangeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced(why) => ChangeError::Fenced(why),
            other => ChangeError::Store(other.to_string()),
        }
    }
}

impl From<PlanError> for ChangeError {
    fn from(e: PlanError) -> Self {
        ChangeError::Plan(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gets_its_own_reaction() {
        let s = Duration::from_secs;
        // fenced: never here
        assert_eq!(ChangeError::Fenced("x".into()).retry_in(1), None);
        // transient: 10 s doubling to 5 minutes
        let t = ChangeError::Transient("503".into());
        let waits: Vec<_> = (1..=7).map(|a| t.retry_in(a).unwrap()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300].map(s));
        // a credential or zone to fix: from a minute, to 5 minutes
        assert_eq!(ChangeError::Auth("401".into()).retry_in(1), Some(s(60)));
        assert_eq!(
            ChangeError::NotFound("zone".into()).retry_in(3),
            Some(s(240))
        );
        assert!(ChangeError::Auth("401".into()).needs_an_operator());
        assert!(!t.needs_an_operator());
        // the provider's own time, kept within [1 s, 10 min] whatever it said
        let limited = |d| ChangeError::RateLimited { retry_after: d };
        assert_eq!(limited(Some(s(300))).retry_in(1), Some(s(300)));
        assert_eq!(
            limited(Some(s(u64::MAX))).retry_in(9),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(limited(Some(Duration::ZERO)).retry_in(1), Some(s(1)));
        assert_eq!(limited(None).retry_in(2), Some(s(20)));
        // huge attempt counts do not overflow
        assert_eq!(t.retry_in(u32::MAX), Some(MAX_BACKOFF));
    }

    #[test]
    fn kinds_lists_every_kind() {
        let every = [
            ChangeError::Fenced(String::new()),
            ChangeError::Auth(String::new()),
            ChangeError::NotFound(String::new()),
            ChangeError::RateLimited { retry_after: None },
            ChangeError::Transient(String::new()),
            ChangeError::Rejected(String::new()),
            ChangeError::Plan(String::new()),
            ChangeError::NotVisible(String::new()),
            ChangeError::Store(String::new()),
        ];
        let kinds: Vec<&str> = every.iter().map(ChangeError::kind).collect();
        assert_eq!(kinds, ChangeError::KINDS);
    }

    #[test]
    fn provider_and_store_errors_keep_their_kind() {
        let e: ChangeError = ProviderError::Fenced("epoch 3 is stale".into()).into();
        assert_eq!(e.kind(), "fenced");
        let e: ChangeError = StoreError::Fenced("epoch".into()).into();
        assert_eq!(e.kind(), "fenced");
        let e: ChangeError = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(300)),
        }
        .into();
        assert_eq!(e.kind(), "rate_limited");
        assert_eq!(e.to_string(), "rate-limited by the provider for 300s");
        let e: ChangeError = ProviderError::Auth("token".into()).into();
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"kind": "auth", "detail": "token"})
        );
    }
}
