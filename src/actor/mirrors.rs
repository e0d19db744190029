//! Zones served by several DNS providers at once (`providers = ["cf", "r53"]`, all of them in
//! the zone's NS set, as the runbooks advise after a provider's own outage): every change is
//! written to each, verified at each, and the providers are compared.
//!
//! Rules:
//! - **A publish** runs the one write path ([`publish`]) once per provider, at the same time:
//!   each reads what it serves, plans, records its own snapshot and intent, applies, and is
//!   verified at its own servers (`authoritative_at`, else its primary or a read-back).
//! - **It is done when at least one provider verified it**: the resolvers that ask that
//!   provider's servers get the new records at once (with two providers, about half of them),
//!   the others when their provider catches up. Waiting for every provider would leave all the
//!   resolvers on the dead side while one provider's API is down.
//! - **The providers that failed are behind**: alerted once (`alert.provider_behind`), retried
//!   on the change backoff by their error's kind, and reported caught up
//!   (`provider_caught_up`) once they serve the published side. A new publish covers them too.
//! - **It fails as a whole** when every provider failed (the first provider's error decides the
//!   retry) or when any was fenced (the lease moved: the new leader finishes, resuming each
//!   provider's own intent).
//! - **The reconcile read asks every provider.** The machine is told the side the machine
//!   already has published when any provider serves it, else the first answering provider's:
//!   one provider lagging never moves the machine. A provider serving the other side is behind
//!   (caught up as above); one serving neither side is drift, reported once per episode.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use mxguard_core::{DnsProvider, ProviderError};
use serde::Serialize;
use serde_json::json;

use super::change::{publish, ChangeDeps, ChangeError, ChangeReport, Origin};
use super::Actor;
use crate::events::EventKind;
use crate::model::{RecordSet, Side};
use crate::plan::Managed;
use crate::store::ChangeIntent;
use crate::verify::Visible;

/// The longest wait between two catch-ups of a provider behind for a transient reason.
pub const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// One more provider serving a domain's zone, its clients as the registry built them.
#[derive(Clone)]
pub struct Mirror {
    pub name: String,
    pub client: Arc<dyn DnsProvider>,
    pub observer: Arc<dyn DnsProvider>,
    pub background: Arc<dyn DnsProvider>,
    /// Where a change to it is verified; empty: a read-back through its API.
    pub authoritative: Vec<SocketAddr>,
}

/// What one publish did at one provider.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderOutcome {
    pub provider: String,
    /// Applied (or already live) and verified at its servers.
    pub verified: bool,
    pub change_id: Option<i64>,
    pub authoritative: Vec<Visible>,
    pub error: Option<ChangeError>,
}

impl ChangeDeps {
    /// One deps per provider serving the zone (the first provider's, then each mirror's), each
    /// without mirrors: what [`publish`] runs on.
    pub fn members(&self) -> Vec<ChangeDeps> {
        let mut first = self.clone();
        first.mirrors = Vec::new();
        let mut out = vec![first];
        for m in &self.mirrors {
            let mut d = self.clone();
            d.mirrors = Vec::new();
            d.provider = m.client.clone();
            d.observer = m.observer.clone();
            d.background = m.background.clone();
            d.provider_name = m.name.clone();
            d.verifier.authoritative = m.authoritative.clone();
            out.push(d);
        }
        out
    }

    /// The same deps restricted to the providers named in `names` (a catch-up), the first of
    /// them first; `None` when none of them serves the zone.
    pub fn only(&self, names: &[String]) -> Option<ChangeDeps> {
        let mut chosen = self
            .members()
            .into_iter()
            .filter(|m| names.contains(&m.provider_name));
        let mut first = chosen.next()?;
        first.mirrors = chosen
            .map(|m| Mirror {
                name: m.provider_name,
                client: m.provider,
                observer: m.observer,
                background: m.background,
                authoritative: m.verifier.authoritative,
            })
            .collect();
        Some(first)
    }

    /// Every provider's name, the first provider's first.
    pub fn provider_names(&self) -> Vec<String> {
        std::iter::once(self.provider_name.clone())
            .chain(self.mirrors.iter().map(|m| m.name.clone()))
            .collect()
    }
}

/// Publishes `side` at every provider serving the zone (see the module's rules); with one
/// provider, exactly [`publish`]. `resume`: the unfinished intents, each resumed at its own
/// provider.
pub async fn publish_everywhere(
    deps: &ChangeDeps,
    managed: &Managed,
    side: Side,
    desired: Vec<RecordSet>,
    resume: Vec<ChangeIntent>,
    origin: &Origin,
) -> Result<ChangeReport, ChangeError> {
    if deps.mirrors.is_empty() {
        return publish(
            deps,
            managed,
            side,
            desired,
            resume.into_iter().last(),
            origin,
        )
        .await;
    }
    let members = deps.members();
    let runs = members.iter().map(|m| {
        let mine = resume
            .iter()
            .rfind(|c| c.provider == m.provider_name)
            .cloned();
        publish(m, managed, side, desired.clone(), mine, origin)
    });
    let results = futures::future::join_all(runs).await;
    let names = members.into_iter().map(|m| m.provider_name).collect();
    combine(names, results)
}

/// One report from every provider's outcome: the first verified provider's report, with the
/// others' servers and each provider's outcome; an error when every provider failed (the
/// first one's) or any was fenced.
fn combine(
    names: Vec<String>,
    results: Vec<Result<ChangeReport, ChangeError>>,
) -> Result<ChangeReport, ChangeError> {
    if let Some(Err(fenced)) = results
        .iter()
        .find(|r| matches!(r, Err(ChangeError::Fenced(_))))
    {
        return Err(fenced.clone());
    }
    let outcomes: Vec<ProviderOutcome> = names
        .into_iter()
        .zip(&results)
        .map(|(provider, r)| match r {
            Ok(report) => ProviderOutcome {
                provider,
                verified: true,
                change_id: report.change_id,
                authoritative: report.authoritative.clone(),
                error: None,
            },
            Err(e) => ProviderOutcome {
                provider,
                verified: false,
                change_id: None,
                authoritative: Vec::new(),
                error: Some(e.clone()),
            },
        })
        .collect();
    let mut first_error = None;
    let mut base: Option<ChangeReport> = None;
    for r in results {
        match r {
            Ok(report) if base.is_none() => base = Some(report),
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(mut report) = base else {
        return Err(first_error
            .unwrap_or_else(|| ChangeError::Transient("no provider serves the zone".into())));
    };
    report.authoritative = outcomes
        .iter()
        .flat_map(|o| o.authoritative.iter().cloned())
        .collect();
    report.providers = outcomes;
    Ok(report)
}

/// The providers of a zone that did not take the published side yet.
#[derive(Debug, Clone)]
pub struct Behind {
    pub side: Side,
    /// Each provider behind, and why (its last error, or what it serves instead).
    pub providers: BTreeMap<String, String>,
    pub attempts: u32,
    pub since: DateTime<Utc>,
}

/// One provider's answer to a reconcile read, as the status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderView {
    pub provider: String,
    /// The side its records are (`None`: neither side, or its read failed).
    pub serves: Option<Side>,
    /// Its read failed: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
    /// It has not taken the published side yet: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
}

/// Every provider's read, the first provider's first.
pub type Reads = Vec<(String, Result<Vec<RecordSet>, ProviderError>)>;

/// Which read tells the machine what is published: one serving the side the machine knows
/// when any does (a provider lagging never moves the machine), else the first that answered.
/// `None` when every read failed.
pub fn telling(reads: &Reads, managed: &Managed, known: Option<Side>) -> Option<usize> {
    let answered = || {
        reads
            .iter()
            .enumerate()
            .filter_map(|(i, (_, r))| r.as_ref().ok().map(|live| (i, live)))
    };
    answered()
        .find(|(_, live)| known.is_some() && managed.which_side(live) == known)
        .or_else(|| answered().next())
        .map(|(i, _)| i)
}

impl Actor {
    /// Reads every provider serving the zone (`background`: at background priority, else as
    /// urgently as a change), at the same time.
    pub(super) fn read_all(
        &self,
        background: bool,
    ) -> impl std::future::Future<Output = Reads> + Send + 'static {
        // Each provider's name and client, not a copy of the deps per provider: at a start
        // every domain's first read is out at once.
        let client = |observer: &Arc<dyn DnsProvider>, background_client: &Arc<dyn DnsProvider>| {
            if background {
                background_client.clone()
            } else {
                observer.clone()
            }
        };
        let readers: Vec<(String, Arc<dyn DnsProvider>)> = std::iter::once((
            self.deps.provider_name.clone(),
            client(&self.deps.observer, &self.deps.background),
        ))
        .chain(
            self.deps
                .mirrors
                .iter()
                .map(|m| (m.name.clone(), client(&m.observer, &m.background))),
        )
        .collect();
        let (zone, keys) = (self.managed.zone.clone(), self.managed.keys());
        async move {
            let reads = readers.into_iter().map(|(name, client)| {
                let (zone, keys) = (&zone, &keys);
                async move {
                    // As for a publish: a panicking read is reported, or no read would start
                    // again.
                    let live = AssertUnwindSafe(client.read(zone, keys))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            Err(ProviderError::Transient(
                                "the read failed: the provider client panicked".into(),
                            ))
                        });
                    (name, live)
                }
            });
            futures::future::join_all(reads).await
        }
    }

    /// After a publish at several providers: the ones that failed are behind (alerted when
    /// they start being, retried), the ones that took it are no longer.
    pub(super) async fn note_providers(&mut self, side: Side, report: &ChangeReport) {
        if report.providers.is_empty() {
            return;
        }
        let failed: BTreeMap<String, String> = report
            .providers
            .iter()
            .filter(|o| !o.verified)
            .map(|o| {
                let why = o.error.as_ref().map_or_else(String::new, |e| e.to_string());
                (o.provider.clone(), why)
            })
            .collect();
        let caught_up: Vec<String> = self.behind.as_ref().map_or_else(Vec::new, |b| {
            b.providers
                .keys()
                .filter(|p| !failed.contains_key(*p) || b.side != side)
                .cloned()
                .collect()
        });
        if !caught_up.is_empty() {
            self.caught_up(side, &caught_up, report).await;
        }
        if failed.is_empty() {
            self.behind = None;
            return;
        }
        let error = report
            .providers
            .iter()
            .find_map(|o| o.error.clone())
            .unwrap_or_else(|| ChangeError::Transient(String::new()));
        self.fell_behind(side, failed, &error).await;
    }

    /// `failed` did not take `side`: recorded, alerted for the providers newly behind, and a
    /// catch-up scheduled by `error`'s kind.
    async fn fell_behind(
        &mut self,
        side: Side,
        failed: BTreeMap<String, String>,
        error: &ChangeError,
    ) {
        let now = self.deps.clock.utc();
        let behind = self.behind.get_or_insert_with(|| {
            Box::new(Behind {
                side,
                providers: BTreeMap::new(),
                attempts: 0,
                since: now,
            })
        });
        if behind.side != side {
            **behind = Behind {
                side,
                providers: BTreeMap::new(),
                attempts: 0,
                since: now,
            };
        }
        let new: Vec<String> = failed
            .keys()
            .filter(|p| !behind.providers.contains_key(*p))
            .cloned()
            .collect();
        behind.providers = failed.clone();
        behind.attempts += 1;
        // A provider's API outage lasts hours: the catch-up asks at least once a minute, so it
        // follows the recovery within a minute rather than the change backoff's five.
        let wait = error.retry_in(behind.attempts).map(|w| match error {
            ChangeError::Transient(_) | ChangeError::NotVisible(_) => w.min(CATCH_UP_EVERY),
            _ => w,
        });
        let serving: Vec<String> = self
            .deps
            .provider_names()
            .into_iter()
            .filter(|p| !failed.contains_key(p))
            .collect();
        if let Some(wait) = wait {
            let at = self.deps.clock.now() + wait;
            self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
        }
        tracing::warn!(domain = %self.cfg.name, %side, behind = ?failed, attempt = behind.attempts, ?wait, "providers behind the published side; will retry them");
        if new.is_empty() {
            return;
        }
        let message = format!(
            "{} still {} the {side} records ({}); {} {}; retrying {}",
            new.join(", "),
            if new.len() == 1 {
                "does not serve"
            } else {
                "do not serve"
            },
            new.iter()
                .map(|p| format!("{p}: {}", failed[p]))
                .collect::<Vec<_>>()
                .join("; "),
            if serving.is_empty() {
                "no provider".to_string()
            } else {
                serving.join(", ")
            },
            if serving.len() == 1 {
                "serves them"
            } else {
                "serve them"
            },
            wait.map_or_else(
                || "once the lease is back".to_string(),
                |w| format!("in {}s", w.as_secs())
            ),
        );
        self.event(
            EventKind::ProviderBehind,
            message,
            json!({"side": side, "behind": failed, "serving": serving, "kind": error.kind()}),
        )
        .await;
    }

    async fn caught_up(&mut self, side: Side, providers: &[String], report: &ChangeReport) {
        let at: Vec<String> = report
            .providers
            .iter()
            .filter(|o| providers.contains(&o.provider))
            .flat_map(|o| o.authoritative.iter().map(|v| v.server.clone()))
            .collect();
        let message = format!(
            "{} {} the {side} records again{}",
            providers.join(", "),
            if providers.len() == 1 {
                "serves"
            } else {
                "serve"
            },
            if at.is_empty() {
                String::new()
            } else {
                format!("; verified at {}", at.join(", "))
            }
        );
        if let Some(b) = &mut self.behind {
            b.providers.retain(|p, _| !providers.contains(p));
        }
        self.event(
            EventKind::ProviderCaughtUp,
            message,
            json!({"side": side, "providers": providers, "report": report}),
        )
        .await;
    }

    /// The retry timer went off with no move in flight: publish the published side again at
    /// the providers behind (only there).
    pub(super) async fn start_catch_up(&mut self) {
        let Some(behind) = &self.behind else {
            return;
        };
        if !self.leading || self.change_running {
            return;
        }
        let side = behind.side;
        if self.state.machine.published != Some(side) {
            // The machine moved on; its own publish covers every provider.
            self.behind = None;
            return;
        }
        let names: Vec<String> = behind.providers.keys().cloned().collect();
        let Some(deps) = self.deps.only(&names) else {
            self.behind = None;
            return;
        };
        let desired = match self.desired(side).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(domain = %self.cfg.name, error = %e, "cannot plan the catch-up of the providers behind");
                return;
            }
        };
        tracing::info!(domain = %self.cfg.name, %side, providers = ?names, "publishing again at the providers behind");
        self.running_catch_up = true;
        let origin = Origin::automation(side);
        self.spawn_publish(side, Arc::new(deps), desired, Vec::new(), origin);
    }

    /// A catch-up ended: the providers that took it are caught up, the rest retried.
    pub(super) async fn catch_up_done(
        &mut self,
        side: Side,
        result: Result<ChangeReport, ChangeError>,
    ) {
        let Some(behind) = &self.behind else {
            return;
        };
        let names: Vec<String> = behind.providers.keys().cloned().collect();
        match result {
            Ok(mut report) => {
                if report.providers.is_empty() {
                    // One provider was behind: the plain publish's report is its outcome.
                    report.providers = vec![ProviderOutcome {
                        provider: names.first().cloned().unwrap_or_default(),
                        verified: true,
                        change_id: report.change_id,
                        authoritative: report.authoritative.clone(),
                        error: None,
                    }];
                }
                self.note_providers(side, &report).await;
            }
            Err(ChangeError::Fenced(_)) if !self.deps.fence.is_leader() => {}
            Err(error) => {
                let failed = names.into_iter().map(|p| (p, error.to_string())).collect();
                self.fell_behind(side, failed, &error).await;
            }
        }
    }

    /// A reconcile read of every provider came back: the machine hears the telling one
    /// ([`telling`]); the others are compared with the published side.
    pub(super) async fn on_read_all(&mut self, reads: Reads) {
        let known = self.state.machine.published;
        let Some(i) = telling(&reads, &self.managed, known) else {
            if let Some((_, Err(e))) = reads.first() {
                let e = e.clone();
                self.on_read_failed(&e).await;
            }
            return;
        };
        let now = self.deps.clock.utc();
        let views = reads
            .iter()
            .map(|(provider, r)| ProviderView {
                provider: provider.clone(),
                serves: r.as_ref().ok().and_then(|l| self.managed.which_side(l)),
                read_error: r.as_ref().err().map(ToString::to_string),
                behind: self
                    .behind
                    .as_ref()
                    .and_then(|b| b.providers.get(provider).cloned()),
                checked_at: Some(now),
            })
            .collect();
        self.views = views;
        for (provider, read) in &reads {
            if let (Err(e), true) = (read, reads.len() > 1) {
                tracing::warn!(domain = %self.cfg.name, %provider, error = %e, "cannot read the published records at this provider");
            }
        }
        let live = match &reads[i].1 {
            Ok(live) => live.clone(),
            Err(_) => return,
        };
        self.on_observed(live).await;
        if reads.len() < 2 || self.change_running {
            return;
        }
        let Some(published) = self.state.machine.published else {
            return;
        };
        let mut lagging = BTreeMap::new();
        for (provider, read) in &reads {
            let Ok(live) = read else { continue };
            match self.managed.which_side(live) {
                Some(s) if s == published => {}
                Some(other) => {
                    lagging.insert(provider.clone(), format!("serves the {other} records"));
                }
                None if !self.mirror_drift.contains(provider) => {
                    self.mirror_drift.insert(provider.clone());
                    let shown: Vec<String> = live.iter().map(|s| s.to_string()).collect();
                    self.event(
                        EventKind::Drift,
                        format!(
                            "provider {provider} serves records that match neither side ({}); the other providers serve the {published} records; left alone",
                            if shown.is_empty() { "none".into() } else { shown.join(" | ") }
                        ),
                        json!({"provider": provider, "live": live}),
                    )
                    .await;
                }
                None => {}
            }
        }
        self.mirror_drift.retain(|p| {
            reads.iter().any(|(name, r)| {
                name == p
                    && r.as_ref()
                        .is_ok_and(|l| self.managed.which_side(l).is_none())
            })
        });
        let already = self.behind.as_ref().is_some_and(|b| {
            b.side == published && lagging.keys().all(|p| b.providers.contains_key(p))
        });
        // Known and its retry armed: nothing to add (a retry lost to a failed TTL write or a
        // move is armed again here).
        if lagging.is_empty() || (already && self.retry_at.is_some()) {
            return;
        }
        // Those behind already whose read failed this time stay behind.
        if let Some(b) = self.behind.as_ref().filter(|b| b.side == published) {
            for (p, why) in &b.providers {
                lagging.entry(p.clone()).or_insert_with(|| why.clone());
            }
        }
        let error = ChangeError::Transient("found behind by the reconcile read".into());
        self.fell_behind(published, lagging, &error).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(change_id: i64, server: &str) -> ChangeReport {
        ChangeReport {
            side: Side::Backup,
            change_id: Some(change_id),
            snapshot_id: Some(change_id),
            plan: crate::plan::Plan {
                desired: Vec::new(),
                actual: Vec::new(),
                changes: Default::default(),
            },
            authoritative: vec![Visible {
                server: server.into(),
                after_ms: Some(5),
            }],
            replaced_ttl: Some(300),
            providers: Vec::new(),
        }
    }

    fn names() -> Vec<String> {
        vec!["cf".into(), "r53".into()]
    }

    #[test]
    fn one_provider_verified_is_a_publish_with_the_other_behind() {
        let down = ChangeError::Transient("503".into());
        let got = combine(names(), vec![Err(down.clone()), Ok(report(7, "r53 ns"))])
            .expect("r53 took it");
        assert_eq!(got.change_id, Some(7));
        assert_eq!(got.providers.len(), 2);
        assert!(!got.providers[0].verified);
        assert_eq!(got.providers[0].error, Some(down));
        assert!(got.providers[1].verified);
        assert_eq!(got.authoritative.len(), 1);
    }

    #[test]
    fn both_verified_gathers_every_server() {
        let got = combine(names(), vec![Ok(report(1, "a")), Ok(report(2, "b"))]).expect("both");
        assert_eq!(got.change_id, Some(1), "the first provider's report");
        let servers: Vec<&str> = got
            .authoritative
            .iter()
            .map(|v| v.server.as_str())
            .collect();
        assert_eq!(servers, ["a", "b"]);
        assert!(got.providers.iter().all(|o| o.verified));
    }

    #[test]
    fn every_provider_failing_is_the_first_ones_error_and_a_fence_wins() {
        let auth = ChangeError::Auth("token".into());
        let down = ChangeError::Transient("503".into());
        assert_eq!(
            combine(names(), vec![Err(auth.clone()), Err(down.clone())]).map(|r| r.change_id),
            Err(auth)
        );
        let fenced = ChangeError::Fenced("epoch 3 is stale".into());
        assert_eq!(
            combine(names(), vec![Ok(report(1, "a")), Err(fenced.clone())]).map(|r| r.change_id),
            Err(fenced)
        );
    }
}
