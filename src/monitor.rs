//! The probe loops, **one per distinct MX host, however many domains use it**. Thousands of
//! customer domains often point at the same few hosts; a session per domain per interval
//! would be a flood that those hosts rate-limit (`421 too many connections`) until the backup
//! looks down exactly when it is needed. So a host is probed once per round, in one SMTP
//! session that also carries a slice of its domains' postmaster RCPTs (`rcpt.rs`: at most 100
//! a round, each domain's latest answer standing until its next turn), and the round fans out
//! to each of those domains, which folds in its own RCPT answer and keeps its own side health.
//!
//! * A host runs rounds every `interval` (with jitter, so hosts do not probe in lockstep) and
//!   **fast confirmation**: while any of its domains has a side that failed a round but is not
//!   Down yet, the host is re-probed every `confirm_interval`. Detection then costs about half
//!   an interval plus (fail_after − 1) × confirm_interval, while a single lost probe still
//!   cannot take a side Down.
//! * A domain's side completes a round when every target of that side has reported since its
//!   last round (one target: every host round), so the hysteresis counts rounds as it did
//!   when each domain probed for itself.
//! * Hosts are shared when everything that shapes the probe is the same: the prober (the
//!   resolvers and SMTP policy, shared by domains with the same checks), the name, the
//!   configured addresses (mode `a`), the relay check (a backup's) and the timings.
//!
//! Time comes from an injected [`Clock`]; [`Monitors::round`] is public so tests drive a host
//! one round at a time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mxguard_core::{Clock, Jitter};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::WallClock;
use crate::health::{
    side_outcome, target_verdict, undecided, HealthChange, SideHealth, TargetVerdict, Thresholds,
};
use crate::model::{Fqdn, Side};
use crate::probe::smtp::RcptCheck;
use crate::probe::target::{DomainEvidence, Prober, TargetEvidence, TargetSpec};

/// Probes one target; [`Prober`] in production, a script in tests. A `confirmation` round
/// asks the resolvers again instead of reusing their answers.
#[async_trait]
pub trait TargetProber: Send + Sync {
    async fn probe(
        &self,
        spec: &TargetSpec,
        now: DateTime<Utc>,
        confirmation: bool,
    ) -> TargetEvidence;
}

#[async_trait]
impl TargetProber for Prober {
    async fn probe(
        &self,
        spec: &TargetSpec,
        now: DateTime<Utc>,
        confirmation: bool,
    ) -> TargetEvidence {
        self.probe_round(spec, now, confirmation).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
    pub evidence: Vec<DomainEvidence>,
}

/// One domain as its hosts' rounds reach it.
struct DomainView {
    domain: Fqdn,
    targets: Vec<TargetSpec>,
    settings: MonitorSettings,
    primary: SideHealth,
    backup: SideHealth,
    /// Per target: its latest round as this domain sees it, until its side's round uses it.
    latest: Vec<Option<(DomainEvidence, TargetVerdict)>>,
    /// Per side: whether a round waiting to complete included a confirmation.
    confirmation: [bool; 2],
    out: Out,
}

/// Takes a domain's round the moment it completes; `false` once nobody listens any more.
/// It must not wait (it runs inside the host's round, for every domain of the host).
pub type RoundSink = Box<dyn Fn(RoundReport) -> bool + Send + Sync>;

/// Where a domain's rounds go: a queue (tests read it) or a sink (the engine's actors; no
/// queue and no task per domain, which were most of a domain's memory).
enum Out {
    Queue(mpsc::Sender<RoundReport>),
    Sink(RoundSink),
}

impl Out {
    /// Whether rounds are still wanted (a sink says so when it is handed one).
    fn listening(&self) -> bool {
        match self {
            Out::Queue(tx) => !tx.is_closed(),
            Out::Sink(_) => true,
        }
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Primary => 0,
        Side::Backup => 1,
    }
}

impl DomainView {
    fn health(&self, side: Side) -> &SideHealth {
        match side {
            Side::Primary => &self.primary,
            Side::Backup => &self.backup,
        }
    }

    /// Takes target `i`'s round; returns the side's round once every target of that side has
    /// reported since the last one.
    fn offer(
        &mut self,
        i: usize,
        evidence: DomainEvidence,
        verdict: TargetVerdict,
        at: DateTime<Utc>,
        confirmation: bool,
    ) -> Option<RoundReport> {
        let side = self.targets[i].side;
        self.latest[i] = Some((evidence, verdict));
        self.confirmation[side_index(side)] |= confirmation;
        let members = self.targets.iter().filter(|t| t.side == side).count();
        let waiting = self
            .targets
            .iter()
            .zip(&self.latest)
            .any(|(t, latest)| t.side == side && latest.is_none());
        if waiting {
            return None;
        }
        // Sized exactly: until its actor takes it, the report waits in the domain's inbox (at
        // a start, 100,000 domains' first rounds wait at once), and a Vec grown by pushes holds
        // room for four.
        let (mut evidence, mut verdicts) =
            (Vec::with_capacity(members), Vec::with_capacity(members));
        for (t, latest) in self.targets.iter().zip(self.latest.iter_mut()) {
            if t.side == side {
                if let Some((e, v)) = latest.take() {
                    evidence.push(e);
                    verdicts.push(v);
                }
            }
        }
        let confirmation = std::mem::take(&mut self.confirmation[side_index(side)]);
        let outcome = side_outcome(&verdicts);
        let pass = outcome.passed();
        let thresholds = self.settings.thresholds;
        let health = match side {
            Side::Primary => &mut self.primary,
            Side::Backup => &mut self.backup,
        };
        let change = health.observe(outcome, at, thresholds);
        if let Some(c) = &change {
            let reasons: Vec<String> = verdicts
                .iter()
                .map(|v| format!("{}: {}", v.target, v.reason))
                .collect();
            tracing::info!(domain = %self.domain, side = %side, from = ?c.from, to = ?c.to,
                failures = c.failures, hard_failures = c.hard_failures, passes = c.passes, evidence = %reasons.join("; "), "side health changed");
        }
        Some(RoundReport {
            domain: self.domain.clone(),
            side,
            at,
            pass,
            verdicts,
            health: health.clone(),
            change,
            confirmation,
            evidence,
        })
    }
}

/// What makes two domains' targets one host to probe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HostKey {
    /// The prober's identity: domains with the same checks share one.
    prober: usize,
    host: Fqdn,
    addresses: Vec<IpAddr>,
    refuse_relay: bool,
    settings: MonitorSettings,
}

/// One probed host and the domains it reports to.
struct Host {
    /// Its name and addresses, with the RCPT checks of every domain that wants them.
    spec: TargetSpec,
    settings: MonitorSettings,
    prober: Arc<dyn TargetProber>,
    /// Each domain using it, with the index of this host among that domain's targets.
    domains: Vec<(Arc<Mutex<DomainView>>, usize)>,
    /// A backup's check that it refuses a stranger's recipient, once per session.
    refuse_relay: bool,
    /// The domains whose postmaster is checked here, a slice per round.
    rcpt: Mutex<RcptRotation>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Views and rotations are only changed by plain computation; a panic there leaves them
    // consistent enough to keep monitoring.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Told of every host round once, before it fans out to the host's domains (the evidence as
/// the host gave it, the time it is as of): what is recorded per host, not per domain.
pub type HostRoundHook = Arc<dyn Fn(&TargetEvidence, DateTime<Utc>) + Send + Sync>;

/// Every domain's monitoring, as one probe loop per distinct host.
pub struct Monitors {
    hosts: Vec<Host>,
    on_host_round: Option<HostRoundHook>,
    index: BTreeMap<HostKey, usize>,
    domains: usize,
    clock: WallClock,
    jitter: Arc<dyn Jitter>,
}

/// Reports a domain can hold unread; a full queue drops the newest (the actor decides on the
/// latest round of each side anyway, and a host never waits on one slow domain).
const REPORT_QUEUE: usize = 16;

impl Monitors {
    pub fn new(clock: Arc<dyn Clock>, jitter: Arc<dyn Jitter>, utc_now: DateTime<Utc>) -> Self {
        Monitors {
            hosts: Vec::new(),
            on_host_round: None,
            index: BTreeMap::new(),
            domains: 0,
            clock: WallClock::new(clock, utc_now),
            jitter,
        }
    }

    /// Adds a domain with its targets (each with that domain's own RCPT check, if any),
    /// probed by `prober`: pass the same `Arc` for domains with the same checks, so that
    /// their shared hosts are probed once. Returns the domain's round reports.
    pub fn add(
        &mut self,
        domain: Fqdn,
        targets: Vec<TargetSpec>,
        settings: MonitorSettings,
        prober: Arc<dyn TargetProber>,
    ) -> mpsc::Receiver<RoundReport> {
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        self.add_to(domain, targets, settings, prober, Out::Queue(tx));
        rx
    }

    /// [`Monitors::add`], the domain's rounds handed to `sink` as they complete.
    pub fn add_sink(
        &mut self,
        domain: Fqdn,
        targets: Vec<TargetSpec>,
        settings: MonitorSettings,
        prober: Arc<dyn TargetProber>,
        sink: RoundSink,
    ) {
        self.add_to(domain, targets, settings, prober, Out::Sink(sink));
    }

    fn add_to(
        &mut self,
        domain: Fqdn,
        targets: Vec<TargetSpec>,
        settings: MonitorSettings,
        prober: Arc<dyn TargetProber>,
        out: Out,
    ) {
        self.domains += 1;
        let view = Arc::new(Mutex::new(DomainView {
            domain: domain.clone(),
            latest: vec![None; targets.len()],
            targets: targets.clone(),
            settings,
            primary: SideHealth::new(Side::Primary),
            backup: SideHealth::new(Side::Backup),
            confirmation: [false; 2],
            out,
        }));
        for (i, t) in targets.into_iter().enumerate() {
            let key = HostKey {
                prober: Arc::as_ptr(&prober) as *const () as usize,
                host: t.host.clone(),
                addresses: t.addresses.clone(),
                refuse_relay: t.rcpt.as_ref().is_some_and(|r| r.refuse_relay),
                settings,
            };
            let h = *self.index.entry(key).or_insert_with(|| {
                self.hosts.push(Host {
                    spec: TargetSpec {
                        rcpt: None,
                        ..t.clone()
                    },
                    settings,
                    prober: prober.clone(),
                    domains: Vec::new(),
                    refuse_relay: t.rcpt.as_ref().is_some_and(|r| r.refuse_relay),
                    rcpt: Mutex::new(RcptRotation::default()),
                });
                self.hosts.len() - 1
            });
            let host = &mut self.hosts[h];
            if let Some(rcpt) = &t.rcpt {
                let rotation = host.rcpt.get_mut().unwrap_or_else(|p| p.into_inner());
                for d in &rcpt.domains {
                    rotation.add(d.clone());
                }
            }
            host.domains.push((view.clone(), i));
        }
    }

    /// Calls `hook` once per host round (the engine records the host's observations there).
    pub fn on_host_round(&mut self, hook: HostRoundHook) {
        self.on_host_round = Some(hook);
    }

    /// Distinct hosts probed (each once per round, however many domains use it).
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    pub fn domains(&self) -> usize {
        self.domains
    }

    /// Wall-clock time derived from the injected clock.
    fn utc(&self) -> DateTime<Utc> {
        self.clock.utc()
    }

    /// Probes host `h` once and hands the round to each of its domains. Returns whether the
    /// host is to be confirmed (some domain's side failed a round and is not Down yet), and
    /// whether any domain still listens.
    pub async fn round(&self, h: usize, confirmation: bool) -> (bool, bool) {
        let host = &self.hosts[h];
        let checked = lock(&host.rcpt).pick(confirmation);
        let spec = TargetSpec {
            rcpt: (!checked.is_empty() || host.refuse_relay).then(|| RcptCheck {
                domains: checked.clone(),
                refuse_relay: host.refuse_relay,
            }),
            ..host.spec.clone()
        };
        let mut evidence = host.prober.probe(&spec, self.utc(), confirmation).await;
        // Once per host round, before it fans out (a host shared by a thousand domains is one
        // probe, its latency and failures counted once) and before the RCPT answers of earlier
        // rounds are added (they were counted then).
        crate::probe::metrics::record(&evidence, self.utc());
        if let Some(hook) = &self.on_host_round {
            hook(&evidence, self.utc());
        }
        if undecided(&evidence.round, host.settings.resolver_quorum) {
            // Resolvers over their query budget left the round without a verdict: it reaches
            // no domain (neither a pass nor a failure), and the host tries again next round.
            tracing::debug!(host = %host.spec.host, unasked = ?evidence.round.unasked, "round undecided: resolvers over their query budget");
            lock(&host.rcpt).record(&checked, &mut evidence.smtp, self.clock.now());
            let mut confirming = false;
            let mut listening = false;
            for (view, _) in &host.domains {
                let v = lock(view);
                confirming |= v.health(host.spec.side).confirming();
                listening |= v.out.listening();
            }
            return (confirming, listening);
        }
        lock(&host.rcpt).record(&checked, &mut evidence.smtp, self.clock.now());
        // The round is as of when its evidence is complete: a session carrying thousands of
        // RCPTs takes a while, and its age decides whether the verdict is fresh enough to vote.
        let at = self.utc();
        let side = host.spec.side;
        let quorum = host.settings.resolver_quorum;
        // The host's evidence and verdict, once; a domain gets a round of its own only where
        // its postmaster was refused.
        let evidence = Arc::new(evidence);
        let verdict = target_verdict(&evidence.round, quorum);
        let mut confirming = false;
        let mut listening = false;
        for (view, i) in &host.domains {
            let mut v = lock(view);
            let mine = DomainEvidence::of(&evidence, &v.domain);
            let theirs = if mine.has_own_round() {
                target_verdict(mine.round(), quorum)
            } else {
                verdict.clone()
            };
            if let Some(report) = v.offer(*i, mine, theirs, at, confirmation) {
                match &v.out {
                    Out::Sink(sink) => listening |= sink(report),
                    Out::Queue(tx) => match tx.try_send(report) {
                        Ok(()) => listening = true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            listening = true;
                            tracing::warn!(domain = %v.domain, side = %side, "round report dropped: the domain has {REPORT_QUEUE} unread");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    },
                }
            } else {
                listening |= v.out.listening();
            }
            confirming |= v.health(side).confirming();
        }
        (confirming, listening)
    }

    fn next_delay(&self, h: usize, confirming: bool) -> Duration {
        let s = self.hosts[h].settings;
        if confirming {
            s.confirm_interval
        } else {
            // Symmetric jitter: rounds drift apart, the mean interval stays `interval`.
            s.interval.saturating_sub(s.jitter / 2) + s.jitter.mul_f64(self.jitter.fraction())
        }
    }

    /// Runs host `h`'s rounds until `shutdown` or until none of its domains listens.
    async fn run_host(&self, h: usize, shutdown: CancellationToken) {
        // First rounds are spread over one interval so that hosts do not start together.
        let first = self.hosts[h]
            .settings
            .interval
            .mul_f64(self.jitter.fraction());
        let mut due = self.clock.now() + first;
        let mut confirmation = false;
        loop {
            let wait = due.saturating_duration_since(self.clock.now());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.clock.sleep(wait) => {}
            }
            let (confirming, listening) = self.round(h, confirmation).await;
            if !listening {
                return;
            }
            confirmation = confirming;
            due = self.clock.now() + self.next_delay(h, confirming);
        }
    }

    /// Runs every host's rounds until `shutdown`. (A side with no target is never probed: an
    /// empty round would count as a failure.)
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        futures::future::join_all(
            (0..this.hosts.len()).map(|h| this.run_host(h, shutdown.clone())),
        )
        .await;
    }

    /// Spawns one task per host on `tasks`.
    pub fn spawn(self, shutdown: CancellationToken, tasks: &tokio_util::task::TaskTracker) {
        tracing::info!(
            hosts = self.hosts.len(),
            domains = self.domains,
            "probing each distinct MX host once per round for every domain that uses it"
        );
        let this = Arc::new(self);
        for h in 0..this.hosts.len() {
            let (this, shutdown) = (this.clone(), shutdown.clone());
            tasks.spawn(async move { this.run_host(h, shutdown).await });
        }
    }
}

mod rcpt;
use rcpt::RcptRotation;
pub use rcpt::RCPT_PER_ROUND;

#[cfg(test)]
mod tests;
