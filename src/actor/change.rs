//! Carrying out one publish: read what is live, plan, commit the snapshot and the `pending`
//! change intent, apply, mark `applied`, verify at the authoritative servers, mark `verified`.
//! After a crash the same function resumes an unfinished intent: when the live records already
//! equal the intent's outcome nothing is applied again.

use std::sync::Arc;

use mxguard_core::{DnsProvider, ProviderError};
use serde::Serialize;

pub use super::error::ChangeError;
use crate::machine::TtlWrite;
use crate::model::{RecordSet, Side, Ttl};
use crate::plan::{Managed, Plan};
use crate::store::{ChangeIntent, ChangeStatus, NewChange, NewSnapshot, Store};
use crate::verify::{Verifier, Visible};

#[derive(Clone)]
pub struct ChangeDeps {
    pub store: Arc<dyn Store>,
    /// The provider for changes: their plan reads, applies and read-backs.
    pub provider: Arc<dyn DnsProvider>,
    /// The provider for reads of what is published while nothing is known (recovery): the
    /// reads of many domains of one zone together are answered by one listing.
    pub observer: Arc<dyn DnsProvider>,
    /// The same provider for the periodic reconcile read, admitted after changes waiting.
    pub background: Arc<dyn DnsProvider>,
    /// How often the published records are read back (spread over the provider's budget).
    pub reconcile: std::time::Duration,
    pub verifier: Verifier,
    /// Whether this instance leads, and the fencing epoch its writes carry.
    pub fence: crate::lease::Leadership,
    /// `[cluster] vantage_quorum` (`None`: a majority of the voting vantages).
    pub vantage_quorum: Option<u32>,
    /// The other vantages' latest reports (empty on a single instance).
    pub board: crate::recorder::Board,
    pub provider_name: String,
    /// The other providers serving the zone (`providers = [...]`): every change goes to each
    /// too (`super::mirrors`). Empty for a domain with one provider.
    pub mirrors: Vec<super::mirrors::Mirror>,
    /// Where recorded events are published for notifications.
    pub events: crate::events::EventBus,
    /// The time every decision and record is stamped with, and what the actor sleeps on.
    pub clock: crate::clock::WallClock,
}

/// Who publishes and why, for the snapshot taken before the change.
#[derive(Debug, Clone)]
pub struct Origin {
    pub by: String,
    /// The snapshot's reason, e.g. "before publishing the backup records".
    pub why: String,
    /// Told when the apply waits for a lockout its provider announced, and until when.
    pub waiting: Option<Waiting>,
    /// A TTL-only write (early TTL lowering or its restore): refused when the records live or
    /// desired are not `side`'s, so it can never change what the records say.
    pub ttl_only: bool,
}

impl Origin {
    /// The controller publishing `side` (a failover, failback or drift correction).
    pub fn automation(side: Side) -> Origin {
        Origin {
            by: "automation".into(),
            why: format!("before publishing the {side} records"),
            waiting: None,
            ttl_only: false,
        }
    }
}

/// Whom to tell that a change waits for its provider's lockout (the actor records it in the
/// timeline; the CLI prints it).
#[derive(Clone)]
pub struct Waiting(pub Arc<dyn Fn(std::time::SystemTime) + Send + Sync>);

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiting")
    }
}

/// What a finished publish did.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    pub side: Side,
    pub change_id: Option<i64>,
    pub snapshot_id: Option<i64>,
    pub plan: Plan,
    pub authoritative: Vec<Visible>,
    /// The TTL the replaced records had (how long caches may keep them).
    pub replaced_ttl: Option<u32>,
    /// For a zone served by several providers: what the change did at each (empty with one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<super::mirrors::ProviderOutcome>,
}

/// Test hooks at exact points of a publish. `MXGUARD_FAILPOINT=name` pauses forever there, so
/// a test can SIGKILL the process at that point; `MXGUARD_FAILPOINT=name:stop` stops the whole
/// process (SIGSTOP to itself) and carries on after SIGCONT, as a paused VM or a long GC pause
/// would. Logged so the test knows it has been reached.
pub async fn failpoint(name: &str) {
    let Ok(v) = std::env::var("MXGUARD_FAILPOINT") else {
        return;
    };
    if v == name {
        tracing::warn!(failpoint = name, "failpoint reached; pausing until killed");
        eprintln!("FAILPOINT {name} reached");
        std::future::pending::<()>().await;
    } else if v.strip_suffix(":stop") == Some(name) {
        tracing::warn!(failpoint = name, "failpoint reached; stopping the process");
        eprintln!("FAILPOINT {name} reached; stopping");
        let pid = std::process::id().to_string();
        let stopped = tokio::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .await;
        // `kill` returns before the stop reaches this process's threads: without a pause here
        // the publish would run on for a few milliseconds past the failpoint.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        tracing::warn!(failpoint = name, ?stopped, "resumed after SIGSTOP");
        eprintln!("FAILPOINT {name} resumed");
    }
}

/// The epoch to write with, or why this instance must not write.
fn epoch(deps: &ChangeDeps) -> Result<i64, ChangeError> {
    deps.fence.epoch().ok_or_else(|| {
        ChangeError::Fenced("not the leader (no valid lease); not writing".to_string())
    })
}

/// Publishes `side` (records `desired`), resuming `resume` when a crash left it unfinished.
/// The one write path: the controller's changes, drift corrections and operators' reverts all
/// come here (from the actor, after the machine decided), and so does the CLI's offline revert.
pub async fn publish(
    deps: &ChangeDeps,
    managed: &Managed,
    side: Side,
    desired: Vec<RecordSet>,
    resume: Option<ChangeIntent>,
    origin: &Origin,
) -> Result<ChangeReport, ChangeError> {
    let zone = &managed.zone;
    let actual = deps.provider.read(zone, &managed.keys()).await?;
    let replaced_ttl = managed.ttl_of(&actual);
    if origin.ttl_only
        && (managed.which_side(&actual) != Some(side) || managed.which_side(&desired) != Some(side))
    {
        return Err(crate::plan::PlanError::ContentWouldChange {
            side: side.to_string(),
        }
        .into());
    }
    let plan = managed.plan(desired, actual.clone())?;
    let store = &deps.store;
    let now = || deps.clock.utc();
    let epoch = epoch(deps)?;

    let (intent, snapshot_id) = match resume {
        // Applied before the crash: the live records already are the outcome.
        Some(old) if plan.is_empty() => {
            if old.status == ChangeStatus::Pending {
                store
                    .set_change_status(old.id, ChangeStatus::Applied, None, epoch, now())
                    .await?;
            }
            tracing::info!(
                change = old.id,
                "resuming change after restart: already applied, verifying"
            );
            (Some(old.id), old.snapshot_id)
        }
        // Not applied yet, and the plan is still the one written down: apply it under that intent.
        Some(old) if old.status == ChangeStatus::Pending && old.after == plan.changes => {
            tracing::info!(
                change = old.id,
                "resuming change after restart: applying the recorded plan"
            );
            apply(deps, managed, &plan, old.id, epoch, origin).await?;
            (Some(old.id), old.snapshot_id)
        }
        other => {
            if let Some(old) = other {
                let why = "superseded after restart: the live records changed";
                let _ = store
                    .set_change_status(old.id, ChangeStatus::Failed, Some(why), epoch, now())
                    .await;
            }
            if plan.is_empty() {
                (None, None)
            } else {
                let snapshot = NewSnapshot {
                    domain: managed.domain.clone(),
                    provider: deps.provider_name.clone(),
                    zone: zone.clone(),
                    label: None,
                    reason: origin.why.clone(),
                    taken_at: now(),
                    taken_by: origin.by.clone(),
                    records: actual,
                };
                let change = NewChange {
                    domain: managed.domain.clone(),
                    provider: deps.provider_name.clone(),
                    zone: zone.clone(),
                    epoch,
                    before: plan.actual.clone(),
                    after: plan.changes.clone(),
                    at: now(),
                };
                let (snap, intent) = store.begin_change(&snapshot, &change).await?;
                tracing::info!(change = intent.id, snapshot = snap.id, %side, "change intent written");
                failpoint("after_intent").await;
                apply(deps, managed, &plan, intent.id, epoch, origin).await?;
                (Some(intent.id), Some(snap.id))
            }
        }
    };
    failpoint("after_apply").await;

    let authoritative = verify(deps, managed, &plan.desired).await;
    if let Some(missing) = authoritative.iter().find(|v| v.after_ms.is_none()) {
        let why = format!(
            "not served by {} within {:?}",
            missing.server, deps.verifier.bound
        );
        if let Some(id) = intent {
            let _ = store
                .set_change_status(id, ChangeStatus::Failed, Some(&why), epoch, now())
                .await;
        }
        return Err(ChangeError::NotVisible(why));
    }
    if let Some(id) = intent {
        store
            .set_change_status(id, ChangeStatus::Verified, None, epoch, now())
            .await?;
    }
    Ok(ChangeReport {
        side,
        change_id: intent,
        snapshot_id,
        plan,
        authoritative,
        replaced_ttl,
        providers: Vec::new(),
    })
}

/// The lease, as a fence the provider client checks at the last moment before each write
/// request (after every wait for the zone lock, admission and the rate limit): it must still be
/// trusted locally (a process paused past its lease finds it has run out) and still be this
/// epoch's in the store.
struct LeaseFence<'a> {
    deps: &'a ChangeDeps,
    id: i64,
    epoch: i64,
    waiting: Option<&'a Waiting>,
}

#[async_trait::async_trait]
impl mxguard_core::Fence for LeaseFence<'_> {
    async fn check(&self) -> Result<(), String> {
        let (deps, id, epoch) = (self.deps, self.id, self.epoch);
        let refuse = |why: String| {
            tracing::warn!(change = id, epoch, %why, "fenced: not applying the change");
            metrics::counter!("mxguard_fenced_writes_total").increment(1);
            Err(format!("{why}; change {id} not applied"))
        };
        if deps.fence.epoch() != Some(epoch) {
            return refuse(format!("the lease of epoch {epoch} is no longer trusted"));
        }
        match deps.store.lease().await {
            Ok(lease) if lease.epoch == epoch => Ok(()),
            Ok(lease) => refuse(format!(
                "epoch {epoch} is stale; {} leads at epoch {}",
                lease.vantage, lease.epoch
            )),
            Err(e) => Err(format!("cannot confirm the lease before applying: {e}")),
        }
    }

    async fn waiting(&self, until: std::time::SystemTime) {
        metrics::counter!("mxguard_provider_lockout_waits_total", "provider" => self.deps.provider_name.clone()).increment(1);
        tracing::info!(change = self.id, until = %chrono::DateTime::<chrono::Utc>::from(until).format("%H:%M:%S"), "the change waits for the provider's rate limit");
        if let Some(w) = self.waiting {
            (w.0)(until);
        }
    }
}

async fn apply(
    deps: &ChangeDeps,
    managed: &Managed,
    plan: &Plan,
    id: i64,
    epoch: i64,
    origin: &Origin,
) -> Result<(), ChangeError> {
    // Stands for any wait before the provider call (a queue at admission, a paused process).
    failpoint("before_apply").await;
    let fence = LeaseFence {
        deps,
        id,
        epoch,
        waiting: origin.waiting.as_ref(),
    };
    match deps
        .provider
        .apply_fenced(&managed.zone, &plan.changes, &fence)
        .await
    {
        Ok(()) => {}
        // Nothing was sent; the intent belongs to whoever leads now.
        Err(e @ ProviderError::Fenced(_)) => return Err(e.into()),
        Err(e) => {
            let why = format!("provider {}: {e}", deps.provider_name);
            let _ = deps
                .store
                .set_change_status(
                    id,
                    ChangeStatus::Failed,
                    Some(&why),
                    epoch,
                    deps.clock.utc(),
                )
                .await;
            return Err(e.into());
        }
    }
    deps.store
        .set_change_status(id, ChangeStatus::Applied, None, epoch, deps.clock.utc())
        .await?;
    tracing::info!(change = id, "change applied at the provider");
    Ok(())
}

/// At the authoritative servers when configured and answering (by DNS: no request to the
/// provider's API); a server that never answers is left out, and when none answers, a read-back
/// through the provider verifies instead.
async fn verify(deps: &ChangeDeps, managed: &Managed, desired: &[RecordSet]) -> Vec<Visible> {
    if !deps.verifier.authoritative.is_empty() {
        let checked = deps.verifier.authoritative_answering(desired).await;
        let (answering, silent): (Vec<_>, Vec<_>) = checked.into_iter().partition(|(_, a)| *a);
        for (v, _) in &silent {
            tracing::warn!(domain = %managed.domain, server = %v.server, "the authoritative server does not answer: left out of the verification");
        }
        if !answering.is_empty() {
            return answering.into_iter().map(|(v, _)| v).collect();
        }
        tracing::warn!(domain = %managed.domain, "no authoritative server answers: verifying by reading the records back from the provider");
    }
    let start = std::time::Instant::now();
    let ok = match deps.provider.read(&managed.zone, &managed.keys()).await {
        Ok(live) => managed.which_side(&live).is_some() && desired.iter().all(|d| live.contains(d)),
        Err(_) => false,
    };
    vec![Visible {
        server: format!("provider {}", deps.provider_name),
        after_ms: ok.then(|| start.elapsed().as_millis() as u64),
    }]
}

/// The records publishing `side` means. A TTL write in flight (early TTL lowering) publishes
/// the primary's records with the TTL it writes: lowered, or restored from the snapshot taken
/// before the lowering when it holds the primary's records (each RRset's own TTL), else at the
/// original TTL. Failback restores the records and TTLs of the snapshot taken before failover
/// (when they are the primary's), none of them below the TTL live before failover (a snapshot
/// taken while the TTL was lowered early holds the lowered one); otherwise the side's
/// configured records, with the TTL from [`ttl_for`] (`live_ttl`: the TTL the managed records
/// have now).
pub async fn desired_records(
    store: &dyn Store,
    managed: &Managed,
    failover_ttl: Ttl,
    state: &super::Persisted,
    side: Side,
    live_ttl: Option<u32>,
) -> Result<Vec<RecordSet>, ChangeError> {
    let primary_snapshot = |id: Option<i64>| async move {
        let snap = store.snapshot(id?).await.ok()??;
        (managed.which_side(&snap.records) == Some(Side::Primary)).then(|| {
            let keys = managed.keys();
            snap.records
                .into_iter()
                .filter(|s| keys.contains(&mxguard_core::RrsetKey::of(s)))
                .collect::<Vec<_>>()
        })
    };
    let machine = &state.machine;
    if side == Side::Primary && machine.in_flight.is_none() {
        match machine.ttl_write() {
            Some(TtlWrite::Lower(ttl)) => {
                return Ok(managed.desired(side, ttl_or(ttl, failover_ttl))?)
            }
            Some(TtlWrite::Restore(ttl)) => {
                if let Some(records) = primary_snapshot(state.early_ttl_snapshot).await {
                    return Ok(records);
                }
                return Ok(managed.desired(side, ttl_or(ttl, failover_ttl))?);
            }
            None => {}
        }
    }
    if side == Side::Primary {
        if let Some(records) = primary_snapshot(state.failover_snapshot).await {
            let floor = machine.ttl_before_failover.and_then(|t| Ttl::new(t).ok());
            return Ok(records
                .into_iter()
                .map(|s| match floor {
                    Some(f) if s.ttl() < f => s.with_ttl(f),
                    _ => s,
                })
                .collect());
        }
    }
    let ttl = ttl_for(side, failover_ttl, machine.ttl_before_failover, live_ttl);
    Ok(managed.desired(side, ttl)?)
}

fn ttl_or(ttl: u32, fallback: Ttl) -> Ttl {
    Ttl::new(ttl).unwrap_or(fallback)
}

/// The TTL to publish `side` with: the failover TTL for the backup; for the primary the TTL
/// live before failover, else the TTL live now (publishing the primary over itself changes
/// nothing), else the failover TTL.
pub fn ttl_for(
    side: Side,
    failover_ttl: Ttl,
    before_failover: Option<u32>,
    live: Option<u32>,
) -> Ttl {
    match side {
        Side::Backup => failover_ttl,
        Side::Primary => before_failover
            .or(live)
            .and_then(|t| Ttl::new(t).ok())
            .unwrap_or(failover_ttl),
    }
}
