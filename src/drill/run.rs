//! Runs a drill: the probes and reads behind each step, judged by the rules in
//! [`crate::drill`], then recorded in the domain's timeline. It uses what already exists: the
//! SMTP prober of `serve` and `mxguard check` (with the backup's RCPT and relay checks), the
//! SPF / DMARC / DKIM lookups of `check`, the MTA-STS fetcher and evaluation, the provider's
//! write check of `providers check --write`, and the domain's controller for the plan (its
//! dry run) and, live, for the moves (operator commands through the state machine).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use serde_json::json;

use super::{DrillReport, Found, Header, Outcome, Step, StepKind, Trigger};
use crate::access::ProviderAccess;
use crate::actor::ActorHandle;
use crate::check::auth;
use crate::config::DomainConfig;
use crate::events::{EventBus, EventKind};
use crate::machine::{self, Command, Effect, Input, Policy};
use crate::model::{Fqdn, Side};
use crate::mtasts::fetch::Fetcher;
use crate::mtasts::watch::MtaStsView;
use crate::plan::{Managed, Plan};
use crate::probe::budget::SharedDns;
use crate::probe::dns::DnsClient;
use crate::probe::smtp::RcptCheck;
use crate::probe::target::{Prober, TargetEvidence, TargetSpec};
use crate::store::{Event, NewEvent, Store, StoreError};

/// How long each live move may take to be verified before the step fails.
pub const LIVE_MOVE_DEADLINE: Duration = Duration::from_secs(300);
/// How often a live move's progress is looked at.
const LIVE_POLL: Duration = Duration::from_millis(200);

/// What was asked.
#[derive(Debug, Clone)]
pub struct Ask {
    pub trigger: Trigger,
    /// The API token's name, or `automation`.
    pub by: String,
    pub reason: String,
    pub live: bool,
}

/// What a drill works with besides the domain's configuration.
#[derive(Clone)]
pub struct Deps {
    /// The domain's controller: its status, its dry-run plan, and (live) its commands.
    pub handle: ActorHandle,
    /// The provider's access checks; `Err`: its client could not be built.
    pub access: Result<Arc<dyn ProviderAccess>, String>,
    pub store: Arc<dyn Store>,
    pub events: EventBus,
    /// The resolvers' query budgets: the drill's lookups take their spare part.
    pub dns: SharedDns,
}

/// The domains with a drill running, so that two never run at once on one domain (an
/// operator's and the schedule's). Cheap to clone; every clone sees the same.
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<HashSet<Fqdn>>>);

/// Held while a drill runs; dropping it frees the domain.
pub struct Turn {
    running: Running,
    domain: Fqdn,
}

impl Running {
    /// The domain's turn, or `None` while another drill of it runs.
    pub fn try_start(&self, domain: &Fqdn) -> Option<Turn> {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(domain.clone()).then(|| Turn {
            running: self.clone(),
            domain: domain.clone(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut set = self
            .running
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.remove(&self.domain);
    }
}

/// Runs every step and judges them. Never fails: what goes wrong is a step's finding.
pub async fn run(cfg: &DomainConfig, deps: &Deps, ask: &Ask) -> DrillReport {
    let started_at = Utc::now();
    let t0 = Instant::now();
    let mut steps: Vec<Step> = Vec::new();

    // The backup's SMTP: one session per address carries the postmaster RCPT and the relay check.
    let t = Instant::now();
    let probed = probe_backups(cfg).await;
    let took = t.elapsed();
    match &probed {
        Ok(ev) => {
            let quorum = cfg.checks.resolver_quorum;
            steps.push(super::backup_rcpt(&cfg.name, ev, quorum).step(StepKind::BackupRcpt, took));
            steps.push(super::backup_relay(ev).step(StepKind::BackupRelay, super::relay_time(ev)));
        }
        Err(e) => {
            let why = format!("the backup was not probed: {e}");
            steps.push(Found::not_checked(why.clone()).step(StepKind::BackupRcpt, took));
            steps.push(Found::not_checked(why).step(StepKind::BackupRelay, Duration::ZERO));
        }
    }
    let evidence: &[TargetEvidence] = probed.as_deref().unwrap_or(&[]);

    let t = Instant::now();
    let found = mail_auth(cfg, evidence).await;
    steps.push(found.step(StepKind::MailAuth, t.elapsed()));

    let t = Instant::now();
    let found = match Fetcher::for_checks(&cfg.checks, deps.dns.clone()) {
        Ok(fetcher) => super::mta_sts(&MtaStsView::look(&fetcher, cfg).await),
        Err(e) => Found::not_checked(format!("the MTA-STS policy was not fetched: {e}")),
    };
    steps.push(found.step(StepKind::MtaSts, t.elapsed()));

    let t = Instant::now();
    let found = match &probed {
        Ok(ev) => super::dane(&dane(cfg, ev, &deps.dns).await),
        Err(e) => Found::not_checked(format!("the backup was not probed: {e}")),
    };
    steps.push(found.step(StepKind::Dane, t.elapsed()));

    let t = Instant::now();
    let found = match &deps.access {
        Ok(access) => {
            let keys = Managed::new(cfg).keys();
            super::provider_write(&access.verify_write_access(&cfg.zone, &keys).await)
        }
        Err(e) => super::provider_unavailable(e),
    };
    steps.push(found.step(StepKind::ProviderWrite, t.elapsed()));

    let t = Instant::now();
    let (found, plan) = plan(&deps.handle, ask).await;
    steps.push(found.step(StepKind::Plan, t.elapsed()));

    if ask.live {
        let (failover, failback) = live(cfg, deps, ask, &steps).await;
        steps.push(failover);
        steps.push(failback);
    }

    let header = Header {
        domain: cfg.name.without_dot().to_string(),
        trigger: ask.trigger,
        by: ask.by.clone(),
        reason: ask.reason.clone(),
        live: ask.live,
        started_at,
        duration: t0.elapsed(),
    };
    DrillReport::new(header, steps, plan)
}

/// Probes every backup host as `serve` would, with the domain's postmaster RCPT and the relay
/// check whatever `rcpt_checks` says (a failover needs both), every resolver asked afresh.
async fn probe_backups(cfg: &DomainConfig) -> Result<Vec<TargetEvidence>, String> {
    let c = &cfg.checks;
    let prober = Prober::one_look(
        c,
        crate::probe::tls::client_config(c.ca_file.as_deref())?,
        16,
        None,
    );
    let managed = Managed::new(cfg);
    // mode a: the host at the backup's own addresses, never at what it resolves to now
    let addresses = managed.addresses(Side::Backup);
    let specs: Vec<TargetSpec> = managed
        .hosts(Side::Backup)
        .into_iter()
        .map(|host| TargetSpec {
            side: Side::Backup,
            host,
            rcpt: Some(RcptCheck::one(cfg.name.clone(), true)),
            addresses: addresses.clone(),
        })
        .collect();
    let now = Utc::now();
    Ok(join_all(specs.iter().map(|s| prober.probe_target(s, now))).await)
}

/// The TLSA of every primary host (whether the domain uses DANE) and of every backup host,
/// the backup's judged against what each probed address presented.
async fn dane(
    cfg: &DomainConfig,
    evidence: &[TargetEvidence],
    dns: &SharedDns,
) -> crate::dane::Evaluation {
    use crate::dane::{lookup, HostDane};
    let c = &cfg.checks;
    let clients: Vec<DnsClient> = c
        .resolvers
        .iter()
        .map(|r| DnsClient::resolver(*r, c.timeout))
        .collect();
    let managed = Managed::new(cfg);
    let primaries = join_all(managed.hosts(Side::Primary).into_iter().map(|host| {
        let clients = &clients;
        async move {
            let tlsa = lookup::tlsa(dns, clients, &host).await;
            // not probed here: only whether they publish TLSA matters to the backup's verdict
            HostDane::judge(host, Side::Primary, tlsa, Vec::new())
        }
    }))
    .await;
    let backups = join_all(evidence.iter().map(|ev| {
        let clients = &clients;
        async move {
            let host = ev.round.target.clone();
            let tlsa = lookup::tlsa(dns, clients, &host).await;
            let presented = ev
                .smtp
                .iter()
                .map(|r| (r.address.to_string(), lookup::presented(r)))
                .collect();
            HostDane::judge(host, Side::Backup, tlsa, presented)
        }
    }))
    .await;
    crate::dane::Evaluation::new(primaries.into_iter().chain(backups).collect())
}

/// SPF, DMARC and DKIM through the first resolver, and the backup's addresses against the SPF.
async fn mail_auth(cfg: &DomainConfig, evidence: &[TargetEvidence]) -> Found {
    let Some(first) = cfg.checks.resolvers.first() else {
        return Found::not_checked("no resolver configured");
    };
    let client = DnsClient::resolver(*first, cfg.checks.timeout);
    let spf = auth::spf_record(&client, &cfg.name).await;
    let dmarc = auth::dmarc_record(&client, &cfg.name).await;
    let mut dkim = Vec::new();
    for s in &cfg.drill.dkim_selectors {
        dkim.push(auth::dkim_record(&client, &cfg.name, s).await);
    }
    let managed = Managed::new(cfg);
    let mut pairs: Vec<(Fqdn, IpAddr)> = Vec::new();
    let configured = managed.addresses(Side::Backup);
    for host in managed.hosts(Side::Backup) {
        let found: Vec<IpAddr> = if configured.is_empty() {
            evidence
                .iter()
                .filter(|e| e.round.target == host)
                .flat_map(|e| e.round.resolvers.iter().flat_map(|r| r.addresses.iter()))
                .copied()
                .collect()
        } else {
            configured.clone()
        };
        for a in found {
            if !pairs.iter().any(|(h, ip)| h == &host && *ip == a) {
                pairs.push((host.clone(), a));
            }
        }
    }
    let spf_ok = spf.present && spf.error.is_none();
    let backup_spf = if spf_ok && !pairs.is_empty() {
        auth::backups_in_spf(client.server, &cfg.name, &pairs, &cfg.checks.ehlo_name).await
    } else {
        Vec::new()
    };
    super::mail_auth(&cfg.name, &spf, &dmarc, &dkim, &backup_spf)
}

/// The machine's answer to a failover now (on a copy of its state, as the API's dry run) and
/// what publishing the backup would write.
async fn plan(handle: &ActorHandle, ask: &Ask) -> (Found, Option<Plan>) {
    let status = match handle.status().await {
        Ok(s) => s,
        Err(e) => {
            return (
                Found::new(
                    Outcome::Fail,
                    format!("the domain's controller did not answer: {e}"),
                    Vec::new(),
                ),
                None,
            )
        }
    };
    let refusal = failover_refusal(&status.state, ask);
    let plan = match handle.plan_for(Side::Backup).await {
        Ok(p) => p,
        Err(e) => Err(e.to_string()),
    };
    let found = super::plan(status.state.published, refusal.as_deref(), &plan);
    (found, plan.ok())
}

/// Why the machine would refuse an operator's failover now, stepped on a copy of its state.
fn failover_refusal(state: &machine::DomainState, ask: &Ask) -> Option<String> {
    let mut copy = state.clone();
    let input = Input::Command {
        command: Command::Failover,
        by: ask.by.clone(),
        reason: ask.reason.clone(),
    };
    machine::step(&mut copy, input, Utc::now(), &Policy::default())
        .into_iter()
        .find_map(|e| match e {
            Effect::Rejected { reason } => Some(reason),
            _ => None,
        })
}

/// The live moves: a failover, verified, then a failback, verified, each an operator command to
/// the domain's controller (the state machine decides; the one publish writes).
async fn live(cfg: &DomainConfig, deps: &Deps, ask: &Ask, steps: &[Step]) -> (Step, Step) {
    let skipped = |why: &str| {
        (
            Found::not_checked(format!("not attempted: {why}; nothing was moved"))
                .step(StepKind::LiveFailover, Duration::ZERO),
            Found::not_checked("not attempted: no failover was made")
                .step(StepKind::LiveFailback, Duration::ZERO),
        )
    };
    let state = match deps.handle.status().await {
        Ok(s) => s.state,
        Err(e) => return skipped(&format!("the domain's controller did not answer: {e}")),
    };
    if let Err(why) = super::live_may_move(steps, &state) {
        return skipped(&why);
    }
    let t = Instant::now();
    let over = live_move(cfg, deps, ask, Side::Backup).await;
    let over_ok = over.outcome == Outcome::Pass;
    let over = over.step(StepKind::LiveFailover, t.elapsed());
    if !over_ok {
        let back = Found::not_checked(
            "not attempted: the failover did not complete; the controller goes on from where it is (see the events)",
        )
        .step(StepKind::LiveFailback, Duration::ZERO);
        return (over, back);
    }
    let t = Instant::now();
    let back = live_move(cfg, deps, ask, Side::Primary)
        .await
        .step(StepKind::LiveFailback, t.elapsed());
    (over, back)
}

/// One live move to `side`: the operator command, then until the controller has the side
/// published and verified (nothing in flight), with the `change` event that verified it.
async fn live_move(cfg: &DomainConfig, deps: &Deps, ask: &Ask, side: Side) -> Found {
    let command = match side {
        Side::Backup => Command::Failover,
        Side::Primary => Command::Failback,
    };
    let verb = match side {
        Side::Backup => "failover",
        Side::Primary => "failback",
    };
    let asked = Utc::now();
    let reason = format!("drill: {}", ask.reason);
    if let Err(e) = deps.handle.command(command, &ask.by, &reason).await {
        let stays = match side {
            Side::Backup => "nothing was changed",
            Side::Primary => {
                "the domain stays on the backup: fail back with `mxguard failback` once the primary can be published"
            }
        };
        return Found::new(
            Outcome::Fail,
            format!("the {verb} was refused: {e}; {stays}"),
            Vec::new(),
        );
    }
    let deadline = Instant::now() + LIVE_MOVE_DEADLINE;
    loop {
        match deps.handle.status().await {
            Ok(s) if s.state.published == Some(side) && s.state.writing().is_none() => break,
            Ok(_) => {}
            Err(e) => {
                return Found::new(
                    Outcome::Fail,
                    format!("the domain's controller stopped answering during the {verb}: {e}"),
                    Vec::new(),
                )
            }
        }
        if Instant::now() >= deadline {
            return Found::new(
                Outcome::Fail,
                format!(
                    "the {verb} was not verified within {}; the controller goes on with it (see the events)",
                    humantime::format_duration(LIVE_MOVE_DEADLINE)
                ),
                Vec::new(),
            );
        }
        tokio::time::sleep(LIVE_POLL).await;
    }
    let mut findings = Vec::new();
    match deps.store.last_event(&cfg.name, EventKind::Change).await {
        Ok(Some(e)) if e.at >= asked - chrono::Duration::seconds(1) => {
            findings.push(format!("event {}: {}", e.id, e.message));
        }
        Ok(_) => findings.push(format!("the {side} records were already live")),
        Err(e) => findings.push(format!("the change event could not be read: {e}")),
    }
    Found::new(
        Outcome::Pass,
        format!("the {side} records are published and verified"),
        findings,
    )
}

/// Records the report in the domain's timeline as a `drill` event (and, for a scheduled drill
/// that failed, an `alert.drill_failed`), and publishes them to the notifications. Returns
/// the `drill` event.
pub async fn record(deps: &Deps, report: &DrillReport) -> Result<Event, StoreError> {
    let domain = deps.handle.domain.clone();
    let evidence = serde_json::to_value(report).unwrap_or_else(|e| json!({"error": e.to_string()}));
    let actor = match report.trigger {
        Trigger::Operator => report.by.clone(),
        Trigger::Schedule => "automation".to_string(),
    };
    let reason = match report.trigger {
        Trigger::Operator => Some(report.reason.clone()),
        Trigger::Schedule => None,
    };
    let ev = NewEvent {
        domain: domain.clone(),
        at: Utc::now(),
        kind: EventKind::Drill,
        actor,
        reason,
        message: report.message(),
        evidence: evidence.into(),
    };
    let stored = deps.store.append_event(&ev).await?;
    let state = deps.handle.latest().state.clone();
    deps.events.publish(stored.clone(), state.clone());
    if report.trigger == Trigger::Schedule && !report.passed() {
        let alert = NewEvent {
            kind: EventKind::DrillFailed,
            message: format!("scheduled {}", report.message()),
            at: Utc::now(),
            ..ev
        };
        match deps.store.append_event(&alert).await {
            Ok(a) => deps.events.publish(a, state),
            Err(e) => {
                tracing::error!(domain = %domain, error = %e, "the failed drill's alert was not recorded")
            }
        }
    }
    Ok(stored)
}
