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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
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

/// One domain watched: its configuration, the fetcher of its checks, its actor.
pub struct Watched {
    pub cfg: Arc<DomainConfig>,
    /// Shared by the domains with the same checks (TLS client, policy cache, DANE looks).
    pub fetcher: Arc<Fetcher>,
    pub handle: ActorHandle,
}

/// Runs every domain's check until `shutdown`: each domain looked at once at start (in the
/// order given) and again at its refresh, `looks_at_once` looks at a time, each handed to the
/// domain's actor; a domain whose actor has stopped is not looked at again.
///
/// One task for all domains, with a queue of when each is due, rather than a task per domain:
/// at 100,000 domains the tasks, each waiting for its turn or its refresh, were 90 MB
/// (docs/BENCHMARKS.md); an entry here is a few dozen bytes.
pub async fn run(domains: Vec<Watched>, looks_at_once: usize, shutdown: CancellationToken) {
    let start = Instant::now();
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> =
        (0..domains.len()).map(|i| Reverse((start, i))).collect();
    let mut looking: JoinSet<(usize, Option<Duration>)> = JoinSet::new();
    let looks_at_once = looks_at_once.max(1);
    loop {
        let now = Instant::now();
        while looking.len() < looks_at_once {
            let Some(&Reverse((at, i))) = due.peek() else {
                break;
            };
            if at > now {
                break;
            }
            due.pop();
            let w = &domains[i];
            looking.spawn(look_and_tell(
                w.cfg.clone(),
                w.fetcher.clone(),
                w.handle.clone(),
                i,
            ));
        }
        if looking.is_empty() && due.is_empty() {
            return;
        }
        // the next domain due, once a look's place is free
        let next = (looking.len() < looks_at_once)
            .then(|| due.peek().map(|Reverse((at, _))| *at))
            .flatten();
        tokio::select! {
            _ = shutdown.cancelled() => {
                looking.abort_all();
                return;
            }
            Some(done) = looking.join_next(), if !looking.is_empty() => match done {
                Ok((i, Some(wait))) => {
                    due.push(Reverse((Instant::now() + wait.max(Duration::from_secs(1)), i)));
                }
                // the domain's actor has stopped
                Ok((_, None)) => {}
                Err(e) if e.is_panic() => {
                    tracing::error!(error = %e, "an MTA-STS look panicked; the domain is not looked at again");
                }
                Err(_) => {}
            },
            _ = sleep_until(next.unwrap_or(now)), if next.is_some() => {}
        }
    }
}

/// One look at domain `i`, handed to its actor: when to look again, `None` when the actor has
/// stopped.
async fn look_and_tell(
    cfg: Arc<DomainConfig>,
    fetcher: Arc<Fetcher>,
    handle: ActorHandle,
    i: usize,
) -> (usize, Option<Duration>) {
    let mut view = MtaStsView::look(&fetcher, &cfg).await;
    view.dane = Some(crate::dane::watch::look(&cfg, &fetcher).await);
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
    let alive = handle.mta_sts(view).await;
    (i, alive.then_some(wait))
}
