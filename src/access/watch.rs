//! `serve`'s start check: each provider's read check ([`ProviderAccess::verify_access`]) for
//! each zone its domains use, in the background right after start (start never waits for it),
//! then again every [`RECHECK_EVERY`] for the checks that fail, until none does. A failing
//! check makes `/readyz` answer 503 naming the provider, the zone and what is missing
//! ([`AccessStatus`]), and records one `alert.provider_access` in each affected domain's
//! timeline per failure; a `provider_access_restored` follows when it passes again. A token
//! without Zone:Read is thus found at start, not during the first outage.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mxguard_core::{AccessReport, Outcome};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ProviderAccess;
use crate::config::Config;
use crate::events::{EventBus, EventKind};
use crate::machine::DomainState;
use crate::model::Fqdn;
use crate::providers::ProviderRegistry;
use crate::store::{NewEvent, Store};

/// How often failing checks run again.
pub const RECHECK_EVERY: Duration = Duration::from_secs(600);

/// The failing checks, by (provider, zone), as the latest run found them. Cheap to clone;
/// every clone sees the same.
#[derive(Clone, Default)]
pub struct AccessStatus {
    failing: Arc<RwLock<BTreeMap<(String, Fqdn), AccessReport>>>,
}

impl AccessStatus {
    /// The reports of the checks failing now (empty: none, or none run yet).
    pub fn failing(&self) -> Vec<AccessReport> {
        self.failing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Records `report`; true when this changes whether its (provider, zone) fails.
    fn update(&self, report: &AccessReport) -> bool {
        let key = (report.provider.clone(), report.zone.clone());
        let mut failing = self
            .failing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if report.is_ok() {
            failing.remove(&key).is_some()
        } else {
            failing.insert(key, report.clone()).is_none()
        }
    }
}

/// One line per failed check: `zone (Zone:Read on example.com.): permission — …`. Never a
/// secret: the provider crates keep credentials out of their errors.
pub fn failures_text(report: &AccessReport) -> String {
    report
        .failures()
        .map(|c| match &c.outcome {
            Outcome::Failed { missing, detail } => {
                format!("{} ({}): {missing:?} — {detail}", c.check, c.needs)
            }
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One provider and zone to check, and the domains it serves.
pub struct Target {
    pub provider: String,
    pub zone: Fqdn,
    pub domains: Vec<Fqdn>,
    pub access: Arc<dyn ProviderAccess>,
}

/// A domain's machine state as its actor last published it (`None`: no such actor).
pub type StateOf = Box<dyn Fn(&Fqdn) -> Option<DomainState> + Send + Sync>;

/// Where events go: the store's timelines, then the bus (with the domain's machine state, so
/// notifications classify them like any other).
pub struct Sink {
    pub store: Arc<dyn Store>,
    pub events: EventBus,
    pub state: StateOf,
    /// This instance's vantage, in the evidence (each instance checks its own credentials).
    pub vantage: String,
}

/// The checks of every (provider, zone) the configured domains use.
pub fn targets(config: &Config, registry: &ProviderRegistry) -> Vec<Target> {
    let mut by_zone: BTreeMap<(String, Fqdn), Vec<Fqdn>> = BTreeMap::new();
    for d in &config.domains {
        for p in d.providers() {
            by_zone
                .entry((p.clone(), d.zone.clone()))
                .or_default()
                .push(d.name.clone());
        }
    }
    by_zone
        .into_iter()
        .filter_map(|((provider, zone), domains)| {
            let access = registry.get(&provider)?.access.clone();
            Some(Target {
                provider,
                zone,
                domains,
                access,
            })
        })
        .collect()
}

/// Runs every target's check now, then the failing ones every [`RECHECK_EVERY`] until none
/// fails or `shutdown`.
pub async fn run(
    targets: Vec<Target>,
    status: AccessStatus,
    sink: Sink,
    shutdown: CancellationToken,
) {
    let mut pending = targets;
    loop {
        let failing = tokio::select! {
            _ = shutdown.cancelled() => return,
            failing = check(pending, &status, &sink) => failing,
        };
        if failing.is_empty() {
            tracing::info!("provider access checks passed");
            return;
        }
        pending = failing;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECHECK_EVERY) => {}
        }
    }
}

/// Checks `targets` (one at a time per provider, so the checks never take more than one place
/// of a provider's admission), updating `status` and recording what changed as each check
/// ends; returns the targets that fail.
pub async fn check(targets: Vec<Target>, status: &AccessStatus, sink: &Sink) -> Vec<Target> {
    let mut by_provider: BTreeMap<String, Vec<Target>> = BTreeMap::new();
    for t in targets {
        by_provider.entry(t.provider.clone()).or_default().push(t);
    }
    let runs = by_provider.into_values().map(|targets| async move {
        let mut failing = Vec::new();
        for t in targets {
            let report = t.access.verify_access(&t.zone).await;
            if status.update(&report) {
                note(sink, &t, &report).await;
            }
            if !report.is_ok() {
                failing.push(t);
            }
        }
        failing
    });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Records the start or the end of a failure in each of the target's domains.
async fn note(sink: &Sink, target: &Target, report: &AccessReport) {
    let (kind, message) = if report.is_ok() {
        (
            EventKind::ProviderAccessRestored,
            format!(
                "provider {} passes its access check for zone {} again",
                target.provider, target.zone
            ),
        )
    } else {
        let text = failures_text(report);
        tracing::error!(provider = %target.provider, zone = %target.zone, failures = %text, "provider access check failed: changes to this zone would fail");
        (
            EventKind::ProviderAccess,
            format!(
                "provider {} cannot do what mxguard needs for zone {}: {text}",
                target.provider, target.zone
            ),
        )
    };
    let evidence = json!({
        "provider": target.provider,
        "zone": target.zone,
        "vantage": sink.vantage,
        "checks": report.checks,
    });
    for domain in &target.domains {
        let ev = NewEvent {
            domain: domain.clone(),
            at: chrono::Utc::now(),
            kind,
            actor: "automation".into(),
            reason: None,
            message: message.clone(),
            evidence: evidence.clone().into(),
        };
        match sink.store.append_event(&ev).await {
            Ok(stored) => {
                let state = (sink.state)(domain).unwrap_or_default();
                sink.events.publish(stored, state);
            }
            Err(e) => {
                tracing::error!(domain = %domain, kind = %kind, error = %e, "event not recorded")
            }
        }
    }
}

#[cfg(test)]
mod tests;
