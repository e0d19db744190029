//! `serve`'s MTA-STS check: for each domain with `mta_sts` not `off`, the policy is fetched at
//! start and again at each refresh (`PolicyReport::refresh_in`: `min(max_age, 1 h)`, five
//! minutes after an error), evaluated against the domain's sides, and handed to the domain's
//! actor, which shows it in the status and feeds the finding to the machine (alert when the
//! backup starts being refused, `mta_sts_restored` when it passes again; the failover decision
//! in `machine.rs`).
//!
//! Each look also evaluates DANE for the backup (`dane::watch`): its TLSA against the chain it
//! presents. "Compliant senders would refuse the backup" is one finding for both — a policy
//! that does not list it, or TLSA that no backup address matches — so the machine's one gate
//! (`mta_sts = "block" | "warn"`) decides either.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::fetch::{Fetcher, PolicyReport};
use super::{evaluate, Evaluation, Hosts};
use crate::actor::ActorHandle;
use crate::config::DomainConfig;
use crate::machine::MtaStsAction;

/// One look at a domain's policy and what it means for its sides (the status shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MtaStsView {
    pub setting: MtaStsAction,
    pub checked_at: DateTime<Utc>,
    #[serde(flatten)]
    pub report: PolicyReport,
    /// `None` without a policy in force.
    pub evaluation: Option<Evaluation>,
    /// The backup's DANE picture, looked at with the policy (`None`: not looked at — a
    /// drill's `mta_sts` step, which has a `dane` step of its own).
    pub dane: Option<crate::dane::Evaluation>,
}

impl MtaStsView {
    /// Looks at `cfg`'s domain now.
    pub async fn look(fetcher: &Fetcher, cfg: &DomainConfig) -> MtaStsView {
        let report = fetcher.look(&cfg.name).await;
        let evaluation = report.policy.as_ref().map(|p| evaluate(p, &Hosts::of(cfg)));
        MtaStsView {
            setting: cfg.mta_sts,
            checked_at: Utc::now(),
            report,
            evaluation,
            dane: None,
        }
    }

    /// Why compliant senders would refuse the backup (what the machine is told): the MTA-STS
    /// policy's reason, DANE's, or both.
    pub fn refused(&self) -> Option<String> {
        let sts = self
            .evaluation
            .as_ref()
            .and_then(|e| e.backup_refused.clone());
        let dane = self
            .dane
            .as_ref()
            .and_then(crate::dane::Evaluation::backup_refused);
        match (sts, dane) {
            (Some(s), Some(d)) => Some(format!("{s}; {d}")),
            (s, d) => s.or(d),
        }
    }

    /// When to look again: the policy's refresh, and five minutes when a DANE backup could
    /// not be judged (a backup MTA down at start is judged once it is back).
    pub fn refresh_in(&self) -> Duration {
        let wait = self.report.refresh_in();
        match &self.dane {
            Some(d) if crate::dane::watch::backup_unchecked(d) => {
                wait.min(Duration::from_secs(300))
            }
            _ => wait,
        }
    }
}

/// Looks at policies in flight at once, across every domain.
pub const LOOKS_AT_ONCE: usize = 16;

/// Runs one domain's check until `shutdown` (or its actor stops), with `fetcher` (shared by the
/// domains with the same checks), one look at a time among the holders of `looks`.
/// An `async move` block rather than an `async fn`, which would keep its arguments twice:
/// 100,000 of these wait at once.
#[allow(clippy::manual_async_fn)] // the argument kept once, see above
pub fn run(
    cfg: Arc<DomainConfig>,
    fetcher: Fetcher,
    looks: Arc<Semaphore>,
    handle: ActorHandle,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        loop {
            // The turn is taken before the look is built: 16 looks run at once while every other
            // domain's task waits, and each waiting look would hold its kilobytes.
            let turn = tokio::select! {
                _ = shutdown.cancelled() => return,
                turn = looks.acquire() => turn,
            };
            // Boxed: the look (DNS, HTTPS, SMTP futures) is kilobytes, and inline it would size
            // every domain's idle task by it.
            let look = Box::pin(async {
                let mut view = MtaStsView::look(&fetcher, &cfg).await;
                view.dane = Some(crate::dane::watch::look(&cfg, &fetcher).await);
                view
            });
            let view = tokio::select! {
                _ = shutdown.cancelled() => return,
                view = look => view,
            };
            drop(turn);
            if let Some(e) = &view.report.error {
                tracing::warn!(domain = %cfg.name, error = %e, cached = view.report.cached, "MTA-STS policy not fetched");
            }
            if let Some(why) = view
                .dane
                .as_ref()
                .and_then(crate::dane::Evaluation::backup_refused)
            {
                tracing::warn!(domain = %cfg.name, %why, "DANE senders would refuse the backup");
            }
            let wait = view.refresh_in();
            if !Box::pin(handle.mta_sts(view)).await {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait.max(Duration::from_secs(1))) => {}
            }
        }
    }
}
