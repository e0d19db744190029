//! Following a change until Route 53 reports it `INSYNC` (on all its name servers), with a
//! bounded wait on the injected clock, telling an observer about every status seen.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_route53::types::ChangeStatus;
use mxguard_core::{Clock, Fqdn, ProviderError};

use crate::client::Api;
use crate::config::SyncPolicy;

/// Where a change stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncStatus {
    /// Accepted, not yet on every Route 53 name server.
    Pending,
    /// On every Route 53 name server.
    InSync,
    /// Still pending when `SyncPolicy::max_wait` ran out (it will still complete).
    TimedOut,
    /// Not followed: `max_wait` is zero, or `GetChange` failed (the reason).
    Unconfirmed(String),
}

/// One status report for one change, for the engine to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    pub provider: String,
    pub zone: Fqdn,
    /// Route 53's change id (`C0123…`).
    pub change_id: String,
    pub status: SyncStatus,
    /// Time since the change was accepted, by the provider's clock.
    pub waited: Duration,
}

/// Told about each status a change goes through: `Pending` (once per poll while pending),
/// then one of `InSync`, `TimedOut` or `Unconfirmed`.
pub trait ChangeObserver: Send + Sync {
    fn on_change(&self, event: &ChangeEvent);
}

impl<F: Fn(&ChangeEvent) + Send + Sync> ChangeObserver for F {
    fn on_change(&self, event: &ChangeEvent) {
        self(event)
    }
}

/// What `Route53Provider::apply_and_follow` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// `None` when nothing needed changing (no request was sent).
    pub change_id: Option<String>,
    pub status: SyncStatus,
}

pub(crate) struct Follower<'a> {
    pub api: &'a Api,
    pub clock: &'a Arc<dyn Clock>,
    pub policy: SyncPolicy,
    pub observer: Option<&'a Arc<dyn ChangeObserver>>,
    pub provider: &'a str,
    pub zone: &'a Fqdn,
}

impl Follower<'_> {
    fn tell(&self, change_id: &str, status: SyncStatus, waited: Duration) {
        match &status {
            SyncStatus::Pending => {
                tracing::debug!(provider = self.provider, zone = %self.zone, change_id, ?waited, "change pending")
            }
            SyncStatus::InSync => {
                tracing::info!(provider = self.provider, zone = %self.zone, change_id, ?waited, "change in sync")
            }
            other => {
                tracing::warn!(provider = self.provider, zone = %self.zone, change_id, ?waited, status = ?other, "change not confirmed in sync")
            }
        }
        if let Some(o) = self.observer {
            o.on_change(&ChangeEvent {
                provider: self.provider.to_string(),
                zone: self.zone.clone(),
                change_id: change_id.to_string(),
                status,
                waited,
            });
        }
    }

    /// Polls `GetChange` every `poll_interval` until `INSYNC` or `max_wait`. A failed poll
    /// that is worth retrying (throttling, a timeout) is retried at the next interval; any
    /// other failure ends the wait as `Unconfirmed` — the change itself was accepted.
    pub async fn follow(&self, change_id: &str, first: ChangeStatus) -> SyncStatus {
        let started = self.clock.now();
        let mut status = first;
        loop {
            let waited = self.clock.now().saturating_duration_since(started);
            if status == ChangeStatus::Insync {
                self.tell(change_id, SyncStatus::InSync, waited);
                return SyncStatus::InSync;
            }
            if self.policy.max_wait.is_zero() {
                let s = SyncStatus::Unconfirmed("not followed (sync.max_wait is zero)".into());
                self.tell(change_id, s.clone(), waited);
                return s;
            }
            self.tell(change_id, SyncStatus::Pending, waited);
            if waited + self.policy.poll_interval > self.policy.max_wait {
                self.tell(change_id, SyncStatus::TimedOut, waited);
                return SyncStatus::TimedOut;
            }
            self.clock.sleep(self.policy.poll_interval).await;
            match self.api.get_change(change_id).await {
                Ok(s) => status = s,
                Err(e @ (ProviderError::RateLimited { .. } | ProviderError::Transient(_))) => {
                    tracing::info!(provider = self.provider, change_id, error = %e, "GetChange failed; polling again");
                }
                Err(e) => {
                    let s = SyncStatus::Unconfirmed(e.to_string());
                    self.tell(
                        change_id,
                        s.clone(),
                        self.clock.now().saturating_duration_since(started),
                    );
                    return s;
                }
            }
        }
    }
}
