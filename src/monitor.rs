//! The probe loop of one domain: rounds every `interval` (with jitter so domains do not probe in
//! lockstep), and **fast confirmation** — a side that failed a round but is not Down yet is
//! re-probed every `confirm_interval` until it passes or reaches `fail_after`. Detection then
//! costs about half an interval plus (fail_after − 1) × confirm_interval, while a single lost
//! probe still cannot take a side Down.
//!
//! Time comes from an injected [`Clock`]; [`Monitor::round`] is public so tests drive the loop
//! one step at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mxguard_core::{Clock, Jitter};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::health::{
    side_passes, target_verdict, HealthChange, SideHealth, TargetVerdict, Thresholds,
};
use crate::model::{Fqdn, Side};
use crate::probe::target::{Prober, TargetEvidence, TargetSpec};

/// Probes one target; [`Prober`] in production, a script in tests.
#[async_trait]
pub trait TargetProber: Send + Sync {
    async fn probe(&self, spec: &TargetSpec, now: DateTime<Utc>) -> TargetEvidence;
}

#[async_trait]
impl TargetProber for Prober {
    async fn probe(&self, spec: &TargetSpec, now: DateTime<Utc>) -> TargetEvidence {
        self.probe_target(spec, now).await
    }
}

#[derive(Debug, Clone, Copy)]
pub struct MonitorSettings {
    pub interval: Duration,
    pub confirm_interval: Duration,
    /// Each interval varies by up to ± half of this (the mean stays `interval`).
    pub jitter: Duration,
    pub thresholds: Thresholds,
    pub resolver_quorum: u32,
}

/// What one round of one side found.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub domain: Fqdn,
    pub side: Side,
    pub at: DateTime<Utc>,
    pub pass: bool,
    pub verdicts: Vec<TargetVerdict>,
    pub health: SideHealth,
    pub change: Option<HealthChange>,
    /// Whether this was a confirmation re-probe rather than a scheduled round.
    pub confirmation: bool,
    #[serde(skip)]
    pub evidence: Vec<TargetEvidence>,
}

pub struct Monitor {
    domain: Fqdn,
    targets: Vec<TargetSpec>,
    settings: MonitorSettings,
    prober: Arc<dyn TargetProber>,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
    epoch: (Instant, DateTime<Utc>),
    primary: SideHealth,
    backup: SideHealth,
}

impl Monitor {
    pub fn new(
        domain: Fqdn,
        targets: Vec<TargetSpec>,
        settings: MonitorSettings,
        prober: Arc<dyn TargetProber>,
        clock: Arc<dyn Clock>,
        jitter: Arc<dyn Jitter>,
        utc_now: DateTime<Utc>,
    ) -> Self {
        let epoch = (clock.now(), utc_now);
        Monitor {
            domain,
            targets,
            settings,
            prober,
            clock,
            jitter,
            epoch,
            primary: SideHealth::new(Side::Primary),
            backup: SideHealth::new(Side::Backup),
        }
    }

    /// Wall-clock time derived from the injected clock.
    fn utc(&self) -> DateTime<Utc> {
        let since = self.clock.now().saturating_duration_since(self.epoch.0);
        self.epoch.1 + chrono::Duration::from_std(since).unwrap_or_default()
    }

    pub fn health(&self, side: Side) -> &SideHealth {
        match side {
            Side::Primary => &self.primary,
            Side::Backup => &self.backup,
        }
    }

    /// Probes every target of `side` once and folds the result into its health.
    pub async fn round(&mut self, side: Side, confirmation: bool) -> RoundReport {
        let at = self.utc();
        let specs: Vec<&TargetSpec> = self.targets.iter().filter(|t| t.side == side).collect();
        let evidence =
            futures::future::join_all(specs.iter().map(|s| self.prober.probe(s, at))).await;
        let verdicts: Vec<TargetVerdict> = evidence
            .iter()
            .map(|e| target_verdict(&e.round, self.settings.resolver_quorum))
            .collect();
        let pass = side_passes(&verdicts);
        let thresholds = self.settings.thresholds;
        let health = match side {
            Side::Primary => &mut self.primary,
            Side::Backup => &mut self.backup,
        };
        let change = health.observe(pass, at, thresholds);
        if let Some(c) = &change {
            let reasons: Vec<String> = verdicts
                .iter()
                .map(|v| format!("{}: {}", v.target, v.reason))
                .collect();
            tracing::info!(domain = %self.domain, side = %side, from = ?c.from, to = ?c.to,
                failures = c.failures, passes = c.passes, evidence = %reasons.join("; "), "side health changed");
        }
        RoundReport {
            domain: self.domain.clone(),
            side,
            at,
            pass,
            verdicts,
            health: health.clone(),
            change,
            confirmation,
            evidence,
        }
    }

    fn next_delay(&self, side: Side) -> (Duration, bool) {
        if self.health(side).confirming() {
            (self.settings.confirm_interval, true)
        } else {
            // Symmetric jitter: rounds drift apart, the mean interval stays `interval`.
            let j = self.settings.jitter;
            let delay =
                self.settings.interval.saturating_sub(j / 2) + j.mul_f64(self.jitter.fraction());
            (delay, false)
        }
    }

    /// Runs rounds until `shutdown`, sending every report; stops early if the receiver is gone.
    pub async fn run(mut self, tx: mpsc::Sender<RoundReport>, shutdown: CancellationToken) {
        let start = self.clock.now();
        // Spread first rounds over one interval so many domains do not start together. A side
        // with no target is never probed: an empty round would count as a failure.
        let mut due: Vec<(Side, Instant, bool)> = [Side::Primary, Side::Backup]
            .into_iter()
            .filter(|side| self.targets.iter().any(|t| t.side == *side))
            .map(|side| {
                let offset = self.settings.interval.mul_f64(self.jitter.fraction());
                (side, start + offset, false)
            })
            .collect();
        loop {
            let Some(i) = (0..due.len()).min_by_key(|&i| due[i].1) else {
                return;
            };
            let (side, when, confirmation) = due[i];
            let wait = when.saturating_duration_since(self.clock.now());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.clock.sleep(wait) => {}
            }
            let report = self.round(side, confirmation).await;
            let (delay, confirming) = self.next_delay(side);
            due[i] = (side, self.clock.now() + delay, confirming);
            if tx.send(report).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
