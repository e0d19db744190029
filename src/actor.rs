//! One task per domain owns its state. Operator commands arrive on a channel, probe rounds in an
//! inbox that keeps the latest per side;
//! each step of the machine is persisted (state, then events) **before** any provider call;
//! publishes run in a child task that reports back, so the actor keeps answering while a change
//! is applied and verified. On start it reloads its state and resumes an unfinished change.

pub mod change;
pub mod error;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::change::{desired_records, publish, ChangeDeps, ChangeError, ChangeReport, Origin};
use crate::config::{DomainConfig, Drift};
use crate::health::{Health, TargetVerdict};
use crate::lease::RoleReport;
use crate::machine::{self, Command, DomainState, Effect, Input, Phase, Policy};
use crate::model::{Fqdn, RecordSet, Side};
use crate::monitor::RoundReport;
use crate::plan::{Managed, Plan};
use crate::store::{NewEvent, Store, StoreError};
use crate::vantage::{self, Combined, VantageReport};

/// What is persisted per domain: the machine's state plus the snapshot to restore on failback.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub machine: DomainState,
    /// Snapshot taken before the last failover; failback restores its records and TTLs.
    pub failover_snapshot: Option<i64>,
}

/// A domain's status for the API and CLI.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub domain: Fqdn,
    pub state: DomainState,
    pub active: Option<Side>,
    pub guard: Option<Guard>,
    pub rounds: Vec<RoundSummary>,
    pub drift: bool,
    /// The leader's combined verdict per side, with each vantage's vote (empty on a follower).
    pub vantages: Vec<Combined>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Guard {
    pub hold_secs: u64,
    pub elapsed_secs: u64,
    pub approval_required: bool,
    pub approved: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundSummary {
    pub side: Side,
    pub at: DateTime<Utc>,
    pub pass: bool,
    pub health: Health,
    pub verdicts: Vec<TargetVerdict>,
}

/// The answer to an operator command.
#[derive(Debug, Clone, Serialize)]
pub struct CommandReply {
    pub message: String,
    pub status: Status,
}

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("{0}")]
    Rejected(String),
    #[error("the domain's controller has stopped")]
    Gone,
    #[error("store: {0}")]
    Store(String),
    #[error("{0}")]
    NotLeader(String),
    /// The change was attempted and failed (the controller retries it).
    #[error("{0}")]
    Failed(String),
}

/// Why a follower refuses a mutation, naming the leader where the lease says who it is.
pub fn not_leader(r: &RoleReport) -> String {
    match (&r.leader, &r.leader_url) {
        (Some(l), Some(url)) => format!(
            "this instance ({}) is a follower; the leader is {l} at {url} (epoch {}): send the request there",
            r.vantage,
            r.epoch.unwrap_or_default()
        ),
        (Some(l), None) => format!(
            "this instance ({}) is a follower; the leader is {l} (epoch {}), which advertises no API URL",
            r.vantage,
            r.epoch.unwrap_or_default()
        ),
        _ => format!(
            "this instance ({}) is a follower and no leader holds the lease right now; retry shortly",
            r.vantage
        ),
    }
}

enum Msg {
    Command {
        command: Command,
        by: String,
        reason: String,
        reply: oneshot::Sender<Result<CommandReply, ActorError>>,
    },
    Status(oneshot::Sender<Status>),
    Plan(Option<Side>, oneshot::Sender<Result<Plan, String>>),
    ChangeDone(Side, Box<Result<ChangeReport, ChangeError>>),
    /// An operator's revert to a snapshot holding `side`'s records (`desired`: its managed
    /// RRsets); answered once the change is verified or has failed.
    Revert {
        revert: Revert,
        reply: oneshot::Sender<Result<RevertDone, ActorError>>,
    },
    /// A reconcile read came back; `changes` is the count of changes started when it began.
    Observed {
        changes: u64,
        live: Box<Result<Vec<RecordSet>, mxguard_core::ProviderError>>,
    },
}

/// An operator's revert, as the API hands it to the domain's actor.
#[derive(Debug, Clone)]
pub struct Revert {
    pub snapshot: i64,
    pub side: Side,
    /// The snapshot's managed RRsets (records and TTLs) to publish.
    pub desired: Vec<RecordSet>,
    pub by: String,
    pub reason: String,
}

/// A revert carried out: the change that made live equal to the snapshot (none when it already
/// was), verified at the authoritative servers.
#[derive(Debug, Clone, Serialize)]
pub struct RevertDone {
    pub change_id: Option<i64>,
    pub message: String,
}

/// A revert whose change is in flight: its records are what the change (and its retries)
/// publish; the operator's request is answered when it first ends.
struct RevertInFlight {
    revert: Revert,
    reply: Option<oneshot::Sender<Result<RevertDone, ActorError>>>,
}

/// How the API and CLI talk to a domain's actor.
#[derive(Clone)]
pub struct ActorHandle {
    pub domain: Fqdn,
    tx: mpsc::Sender<Msg>,
    inbox: Arc<Inbox>,
}

/// The latest probe round per side, not yet taken by the actor. Rounds are not queued: an
/// actor that falls behind (a slow store, a busy machine) decides on the newest verdicts
/// rather than working through old ones — which would look stale when it got to them, and
/// fill memory with rounds meanwhile.
#[derive(Default)]
struct Inbox {
    latest: std::sync::Mutex<BTreeMap<&'static str, (RoundReport, VantageReport)>>,
    ready: tokio::sync::Notify,
}

impl Inbox {
    fn take(&self) -> Vec<(RoundReport, VantageReport)> {
        let mut latest = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *latest).into_values().collect()
    }
}

impl ActorHandle {
    pub async fn command(
        &self,
        command: Command,
        by: &str,
        reason: &str,
    ) -> Result<CommandReply, ActorError> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Command {
            command,
            by: by.into(),
            reason: reason.into(),
            reply,
        };
        self.tx.send(msg).await.map_err(|_| ActorError::Gone)?;
        rx.await.map_err(|_| ActorError::Gone)?
    }

    pub async fn status(&self) -> Result<Status, ActorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Status(reply))
            .await
            .map_err(|_| ActorError::Gone)?;
        rx.await.map_err(|_| ActorError::Gone)
    }

    /// What the controller would change now to publish the side it wants (dry run).
    pub async fn plan(&self) -> Result<Result<Plan, String>, ActorError> {
        self.plan_side(None).await
    }

    /// What publishing `side` would change now (dry run of a failover or failback).
    pub async fn plan_for(&self, side: Side) -> Result<Result<Plan, String>, ActorError> {
        self.plan_side(Some(side)).await
    }

    async fn plan_side(&self, side: Option<Side>) -> Result<Result<Plan, String>, ActorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Plan(side, reply))
            .await
            .map_err(|_| ActorError::Gone)?;
        rx.await.map_err(|_| ActorError::Gone)
    }

    /// Reverts to a snapshot through the machine and the one publish (snapshot, intent, fenced
    /// apply, verify); answers when the change is verified or has failed.
    pub async fn revert(&self, revert: Revert) -> Result<RevertDone, ActorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Revert { revert, reply })
            .await
            .map_err(|_| ActorError::Gone)?;
        rx.await.map_err(|_| ActorError::Gone)?
    }

    /// Feeds a probe round in (the monitor's output) with this vantage's report of it.
    /// Replaces a round of the same side the actor has not taken yet; `false` once the actor
    /// has stopped.
    pub async fn round(&self, report: RoundReport, own: VantageReport) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let replaced = self
            .inbox
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(report.side.as_str(), (report, own))
            .is_some();
        if replaced {
            metrics::counter!("mxguard_rounds_superseded_total").increment(1);
        }
        self.inbox.ready.notify_one();
        true
    }
}

pub struct Actor {
    cfg: DomainConfig,
    managed: Managed,
    policy: Policy,
    deps: ChangeDeps,
    state: Persisted,
    inbox: Arc<Inbox>,
    /// An operator's revert being published.
    revert: Option<RevertInFlight>,
    version: Option<i64>,
    rounds: BTreeMap<&'static str, RoundSummary>,
    drift: bool,
    change_running: bool,
    /// Changes started so far: a reconcile read that began before the latest one is stale.
    changes_started: u64,
    /// A reconcile read is out (one at a time; a slow provider does not pile them up).
    observing: bool,
    retry_at: Option<tokio::time::Instant>,
    attempts: u32,
    ticked: Option<DateTime<Utc>>,
    /// This vantage's latest report per side.
    own: BTreeMap<&'static str, VantageReport>,
    /// The combined verdict per side the machine was last told.
    combined: BTreeMap<&'static str, Combined>,
    /// Whether this instance leads and has loaded the domain's state for this term.
    leading: bool,
    /// Whether this vantage was cut off in its last round (reported once per episode).
    partitioned: bool,
    /// The machine left Unknown at the last round: the next round goes in even if unchanged.
    settled: bool,
    /// A read failure that retries do not fix was alerted (once per episode).
    read_alerted: bool,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
}

/// Domains loading their state at once (process-wide).
static RECOVERIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

impl Actor {
    pub fn new(cfg: DomainConfig, deps: ChangeDeps) -> (Actor, ActorHandle) {
        let (tx, rx) = mpsc::channel(64);
        let managed = Managed::new(&cfg);
        let policy = Policy {
            hold: cfg.failback.hold,
            approval: cfg.failback.approval,
            correct_drift: cfg.drift == Drift::Correct,
            ..Policy::default()
        };
        let inbox = Arc::new(Inbox::default());
        let handle = ActorHandle {
            domain: cfg.name.clone(),
            tx: tx.clone(),
            inbox: inbox.clone(),
        };
        let actor = Actor {
            cfg,
            managed,
            policy,
            deps,
            state: Persisted::default(),
            inbox,
            revert: None,
            version: None,
            rounds: BTreeMap::new(),
            drift: false,
            read_alerted: false,
            change_running: false,
            changes_started: 0,
            observing: false,
            retry_at: None,
            attempts: 0,
            ticked: None,
            own: BTreeMap::new(),
            combined: BTreeMap::new(),
            leading: false,
            partitioned: false,
            settled: false,
            tx,
            rx,
        };
        (actor, handle)
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.deps.store
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        // The first read is at recovery; the periodic ones start at a random point of the
        // period, so a thousand domains started together do not read together.
        let period = self.deps.reconcile;
        let fraction = mxguard_core::Jitter::fraction(&mxguard_core::SeededJitter::from_entropy());
        let offset = period.mul_f64(fraction).max(Duration::from_secs(1));
        let mut reconcile = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leadership = self.deps.fence.clone();
        let inbox = self.inbox.clone();
        let mut watching = true;
        loop {
            self.follow_leadership().await;
            // A deadline already ticked (e.g. a hold waiting for approval) is not armed again.
            let deadline = machine::next_deadline(&self.state.machine, &self.policy)
                .filter(|_| self.leading)
                .filter(|d| Some(*d) != self.ticked)
                .map(|d| {
                    let wait = (d - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::Instant::now() + wait
                });
            let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = leadership.changed(), if watching => watching = changed,
                _ = inbox.ready.notified() => {
                    for (report, own) in inbox.take() {
                        self.on_round(report, own).await;
                    }
                    if !self.leading {
                        self.follow_state().await;
                    }
                }
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    self.ticked = machine::next_deadline(&self.state.machine, &self.policy);
                    let _ = self.input(Input::Tick, "automation", None).await;
                }
                _ = tokio::time::sleep_until(self.retry_at.unwrap_or(far)), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    if let Some(side) = self.state.machine.in_flight {
                        self.start_change(side, None).await;
                    }
                }
                _ = reconcile.tick() => self.start_observe(),
            }
        }
        tracing::info!(domain = %self.cfg.name, "domain controller stopped");
    }

    /// Takes up automation when this instance has become the leader (loading the state and
    /// resuming what the previous leader or a crash left unfinished), and drops it when the
    /// lease is gone.
    async fn follow_leadership(&mut self) {
        let leader = self.deps.fence.is_leader();
        if leader && !self.leading {
            self.leading = true;
            // A few domains load their state at a time: at a start with thousands of domains
            // every actor reading at once timed out the store's read pool (2,111 failed loads
            // at 5,000 domains, each retried a round later). Waiting here loses nothing: the
            // inbox keeps the newest rounds meanwhile.
            let _turn = RECOVERIES.acquire().await;
            match self.recover().await {
                Ok(()) => {}
                Err(e) => {
                    self.leading = false;
                    tracing::error!(domain = %self.cfg.name, error = %e, "cannot load the domain's state; automation waits (retried at the next round)")
                }
            }
            if self.leading && !self.own.is_empty() {
                // A takeover decides on the votes known now rather than at the next health
                // change. Right after a start (no round of its own yet) it waits for its first
                // round: deciding on no votes would feed Unknown and restart a failback hold.
                self.decide().await;
            }
        } else if !leader && self.leading {
            self.leading = false;
            self.retry_at = None;
            self.combined.clear();
            tracing::warn!(domain = %self.cfg.name, "not the leader any more; automation stops here (followers probe and store their vantage's verdicts)");
        }
    }

    /// Loads the persisted state and resumes what a crash interrupted.
    async fn recover(&mut self) -> Result<(), StoreError> {
        let epoch = self.deps.fence.epoch().unwrap_or_default();
        if let Some(row) = self.store().load_state(&self.cfg.name).await? {
            self.state = serde_json::from_value(row.state)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.version = Some(row.version);
            tracing::info!(domain = %self.cfg.name, phase = ?self.state.machine.phase, "state restored");
        }
        let unfinished: Vec<_> = self
            .store()
            .unfinished_changes()
            .await?
            .into_iter()
            .filter(|c| c.domain == self.cfg.name)
            .collect();
        match self.state.machine.in_flight {
            Some(side) => {
                // What is live decides how the resumed change is planned: read it first.
                self.observe().await;
                let resume = unfinished.into_iter().last();
                if let Some(c) = &resume {
                    self.event(
                        "change",
                        format!(
                            "resuming change {} ({}, epoch {}) left unfinished by a restart or a leader takeover",
                            c.id, c.status, c.epoch
                        ),
                        json!({"change": c.id}),
                    )
                    .await;
                }
                self.start_change(side, resume).await;
            }
            None => {
                for c in unfinished {
                    let why = "abandoned: no change was in flight at restart";
                    let _ = self
                        .store()
                        .set_change_status(
                            c.id,
                            crate::store::ChangeStatus::Failed,
                            Some(why),
                            epoch,
                            Utc::now(),
                        )
                        .await;
                }
                // Read in the background: the actor takes rounds meanwhile.
                self.start_observe();
            }
        }
        Ok(())
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Command {
                command,
                by,
                reason,
                reply,
            } => {
                let result = self.on_command(command, &by, &reason).await;
                let _ = reply.send(result);
            }
            Msg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Msg::Plan(side, reply) => {
                let _ = reply.send(self.dry_run(side).await);
            }
            Msg::ChangeDone(side, result) => self.on_change_done(side, *result).await,
            Msg::Revert { revert, reply } => self.on_revert(revert, reply).await,
            Msg::Observed { changes, live } => {
                self.observing = false;
                match *live {
                    // A change started since the read began: what it saw may be gone.
                    Ok(_) if changes != self.changes_started || self.change_running => {}
                    Ok(live) => self.on_observed(live).await,
                    Err(e) => self.on_read_failed(&e).await,
                }
            }
        }
    }

    /// A read of the published records failed. One that retries will not fix (credentials, a
    /// zone the credentials cannot see, a zone id naming another zone) is alerted once per
    /// episode: until it is fixed nothing can be published, and an outage would find it.
    async fn on_read_failed(&mut self, e: &mxguard_core::ProviderError) {
        tracing::warn!(domain = %self.cfg.name, error = %e, "cannot read the published records");
        if e.is_retryable() || self.read_alerted {
            return;
        }
        self.read_alerted = true;
        let message = format!(
            "cannot read {}'s records at provider {}: {e}; nothing can be published until this is fixed",
            self.cfg.name, self.cfg.provider
        );
        self.event(
            "alert.provider_read_failed",
            message,
            json!({"provider": self.cfg.provider, "kind": e.kind()}),
        )
        .await;
    }

    async fn on_round(&mut self, r: RoundReport, own: VantageReport) {
        let key = r.side.as_str();
        self.rounds.insert(
            key,
            RoundSummary {
                side: r.side,
                at: r.at,
                pass: r.pass,
                health: r.health.health,
                verdicts: r.verdicts.clone(),
            },
        );
        if let Some(c) = &r.change {
            tracing::info!(domain = %self.cfg.name, vantage = %own.vantage, side = %r.side, from = ?c.from, to = ?c.to, "this vantage's verdict changed");
        }
        self.note_partition(&own).await;
        self.own.insert(key, own);
        if self.leading {
            self.decide().await;
        }
    }

    /// Followers serve reads: keep the leader's persisted state at hand (once per batch of
    /// rounds, not once per side).
    async fn follow_state(&mut self) {
        if let Ok(Some(row)) = self.store().load_state(&self.cfg.name).await {
            if let Ok(state) = serde_json::from_value(row.state) {
                self.state = state;
                self.version = Some(row.version);
            }
        }
    }

    /// Reports once per episode that this vantage is cut off (it stops voting) or back.
    async fn note_partition(&mut self, own: &VantageReport) {
        let now = own.partitioned.is_some();
        if now == self.partitioned {
            return;
        }
        self.partitioned = now;
        let (kind, message) = match &own.partitioned {
            Some(why) => (
                "alert.vantage_partitioned",
                format!("vantage {} is cut off and stops voting: {why}", own.vantage),
            ),
            None => (
                "vantage_reachable",
                format!(
                    "vantage {} reaches its resolvers again and votes",
                    own.vantage
                ),
            ),
        };
        tracing::warn!(domain = %self.cfg.name, vantage = %own.vantage, %message, "vantage");
        self.event(kind, message, json!({"vantage": own})).await;
    }

    /// The leader combines every vantage's fresh verdicts per side and tells the machine.
    async fn decide(&mut self) {
        let me = self.deps.fence.vantage().to_string();
        let mut reports: Vec<VantageReport> = self.own.values().cloned().collect();
        reports.extend(
            self.deps
                .board
                .others(&self.cfg.name)
                .into_iter()
                .filter(|r| r.vantage != me),
        );
        let fresh = crate::engine::freshness(&self.cfg.checks);
        let now = Utc::now();
        for side in [Side::Primary, Side::Backup] {
            let c = vantage::combine(side, &reports, now, fresh, self.deps.vantage_quorum);
            let before = self
                .combined
                .get(side.as_str())
                .map_or(Health::Unknown, |c| c.health);
            if c.health != before {
                let message = format!("{side} {before:?} → {:?}: {}", c.health, c.summary());
                tracing::info!(domain = %self.cfg.name, %side, to = ?c.health, evidence = %c.summary(), "health changed");
                self.event("health", message, json!({"side": side, "combined": c}))
                    .await;
            }
            self.combined.insert(side.as_str(), c);
        }
        let health = |side: Side| {
            self.combined
                .get(side.as_str())
                .map_or(Health::Unknown, |c| c.health)
        };
        let (primary, backup) = (health(Side::Primary), health(Side::Backup));
        // Unknown settles on the first verdicts and decides at the next round (machine.rs), so
        // while it is Unknown every round goes in, changed or not: a domain whose primary is
        // already down when mxguard starts must not wait for a health change to fail over.
        let unknown = self.state.machine.phase == Phase::Unknown;
        if unknown
            || self.settled
            || (primary, backup) != (self.state.machine.primary, self.state.machine.backup)
        {
            self.settled = false;
            let _ = self
                .input(Input::Health { primary, backup }, "automation", None)
                .await;
            // Settled on the first verdicts just now: the next round decides, even unchanged.
            self.settled = unknown && self.state.machine.phase != Phase::Unknown;
        }
    }

    async fn on_command(
        &mut self,
        command: Command,
        by: &str,
        reason: &str,
    ) -> Result<CommandReply, ActorError> {
        if !self.leading {
            return Err(ActorError::NotLeader(not_leader(&self.deps.fence.report())));
        }
        let label = format!("{command:?}");
        let fx = self
            .input(
                Input::Command {
                    command,
                    by: by.into(),
                    reason: reason.into(),
                },
                by,
                Some(reason),
            )
            .await?;
        if let Some(Effect::Rejected { reason }) =
            fx.iter().find(|e| matches!(e, Effect::Rejected { .. }))
        {
            return Err(ActorError::Rejected(reason.clone()));
        }
        let done: Vec<String> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Publish { side, .. } => Some(format!("publishing the {side} records")),
                Effect::Event { message, .. } | Effect::Alert { message, .. } => {
                    Some(message.clone())
                }
                _ => None,
            })
            .collect();
        let message = format!(
            "{}: {} by {by}: {reason}{}",
            self.cfg.name.without_dot(),
            label.to_lowercase(),
            if done.is_empty() {
                String::new()
            } else {
                format!(" ({})", done.join("; "))
            }
        );
        Ok(CommandReply {
            message,
            status: self.status(),
        })
    }

    /// An operator's revert: the machine decides (as for a failover or failback command), the
    /// change publishes the snapshot's records, and the operator hears back when it ends.
    async fn on_revert(
        &mut self,
        revert: Revert,
        reply: oneshot::Sender<Result<RevertDone, ActorError>>,
    ) {
        if !self.leading {
            let _ = reply.send(Err(ActorError::NotLeader(not_leader(
                &self.deps.fence.report(),
            ))));
            return;
        }
        if self.change_running {
            let _ = reply.send(Err(ActorError::Rejected(format!(
                "a change to {} is being applied; nothing was reverted. Retry once it is verified (see GET /v1/domains/{}/events)",
                self.cfg.name.without_dot(),
                self.cfg.name.without_dot()
            ))));
            return;
        }
        let input = Input::Revert {
            side: revert.side,
            snapshot: revert.snapshot,
            by: revert.by.clone(),
            reason: revert.reason.clone(),
        };
        let (by, reason) = (revert.by.clone(), revert.reason.clone());
        self.revert = Some(RevertInFlight {
            revert,
            reply: Some(reply),
        });
        let outcome = self.input(input, &by, Some(&reason)).await;
        let refused = match outcome {
            Err(e) => Some(e),
            Ok(fx) => fx.into_iter().find_map(|e| match e {
                Effect::Rejected { reason } => Some(ActorError::Rejected(reason)),
                _ => None,
            }),
        };
        if let Some(e) = refused {
            if let Some(reply) = self.revert.take().and_then(|r| r.reply) {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Answers the operator whose revert's change ended (the first time it ends) and records it.
    async fn revert_ended(&mut self, result: &Result<ChangeReport, ChangeError>) {
        let Some(r) = self.revert.as_mut() else {
            return;
        };
        let Some(reply) = r.reply.take() else {
            return;
        };
        let (id, by, reason) = (
            r.revert.snapshot,
            r.revert.by.clone(),
            r.revert.reason.clone(),
        );
        let answer = match result {
            Ok(report) => {
                let change = report
                    .change_id
                    .map_or("no change needed".to_string(), |c| format!("change {c}"));
                let ev = NewEvent {
                    domain: self.cfg.name.clone(),
                    at: Utc::now(),
                    kind: "revert".into(),
                    actor: by.clone(),
                    reason: Some(reason.clone()),
                    message: format!("reverted to snapshot {id} ({change})"),
                    evidence: json!({"snapshot": id, "change": report.change_id, "changes": report.plan.changes}),
                };
                self.record(ev).await;
                Ok(RevertDone {
                    change_id: report.change_id,
                    message: format!(
                        "{}: reverted to snapshot {id} by {by}: {reason} ({change})",
                        self.cfg.name.without_dot()
                    ),
                })
            }
            Err(e)
                if (matches!(e, ChangeError::Fenced(_)) && !self.deps.fence.is_leader())
                    || !self.leading =>
            {
                Err(ActorError::NotLeader(format!(
                "this instance lost the lease while reverting to snapshot {id}; nothing was written ({e}). The leader now decides: retry there"
            )))
            }
            Err(e) => Err(ActorError::Failed(format!(
                "revert to snapshot {id} failed: {e}; the controller retries it with backoff (see GET /v1/domains/{}/events)",
                self.cfg.name.without_dot()
            ))),
        };
        let _ = reply.send(answer);
    }

    /// Steps the machine, persists state and events, then carries out the effects.
    async fn input(
        &mut self,
        input: Input,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Vec<Effect>, ActorError> {
        let epoch = match self.deps.fence.epoch() {
            Some(e) if self.leading => e,
            _ => return Err(ActorError::NotLeader(not_leader(&self.deps.fence.report()))),
        };
        let mut next = self.state.clone();
        let fx = machine::step(&mut next.machine, input, Utc::now(), &self.policy);
        if fx.iter().any(|e| matches!(e, Effect::Rejected { .. })) {
            return Ok(fx);
        }
        if next != self.state {
            let value =
                serde_json::to_value(&next).map_err(|e| ActorError::Store(e.to_string()))?;
            match self
                .store()
                .save_state(&self.cfg.name, &value, self.version, epoch, Utc::now())
                .await
            {
                Ok(v) => {
                    self.version = Some(v);
                    self.state = next;
                }
                Err(e @ StoreError::Fenced(_)) => {
                    tracing::warn!(domain = %self.cfg.name, error = %e, "state not persisted: fenced; stepping down");
                    self.leading = false;
                    return Err(ActorError::NotLeader(e.to_string()));
                }
                Err(e) => {
                    tracing::error!(domain = %self.cfg.name, error = %e, "state not persisted; effects withheld");
                    return Err(ActorError::Store(e.to_string()));
                }
            }
        }
        let evidence = json!({"rounds": self.rounds.values().collect::<Vec<_>>()});
        for e in &fx {
            match e {
                Effect::Event { kind, message } | Effect::Alert { kind, message } => {
                    let alert = matches!(e, Effect::Alert { .. });
                    if *kind == "transition" {
                        metrics::counter!("mxguard_transitions_total", "domain" => self.cfg.name.without_dot().to_string()).increment(1);
                    }
                    if alert {
                        tracing::warn!(domain = %self.cfg.name, kind, message, "alert");
                    } else {
                        tracing::info!(domain = %self.cfg.name, kind, message, "event");
                    }
                    let ev = NewEvent {
                        domain: self.cfg.name.clone(),
                        at: Utc::now(),
                        kind: if alert {
                            format!("alert.{kind}")
                        } else {
                            (*kind).to_string()
                        },
                        actor: actor.to_string(),
                        reason: reason.map(str::to_string),
                        message: message.clone(),
                        evidence: evidence.clone(),
                    };
                    self.record(ev).await;
                }
                Effect::Publish { side, why, from } => {
                    tracing::info!(domain = %self.cfg.name, %side, why, snapshot = ?from, "publishing");
                    if from.is_none() {
                        self.revert = None;
                    }
                    self.attempts = 0;
                    self.start_change(*side, None).await;
                }
                Effect::Rejected { .. } => {}
            }
        }
        Ok(fx)
    }

    async fn desired(&self, side: Side) -> Result<Vec<RecordSet>, ChangeError> {
        let live_ttl = self.state.machine.published_ttl;
        desired_records(
            &**self.store(),
            &self.managed,
            self.cfg.failover_ttl,
            &self.state,
            side,
            live_ttl,
        )
        .await
    }

    async fn start_change(&mut self, side: Side, resume: Option<crate::store::ChangeIntent>) {
        if self.change_running || !self.leading {
            return;
        }
        // A revert publishes its snapshot's records (and so do its retries); any other publish
        // the side's own.
        let reverting = self
            .revert
            .as_ref()
            .filter(|r| r.revert.side == side)
            .map(|r| {
                let origin = Origin {
                    by: r.revert.by.clone(),
                    why: format!("before revert to snapshot {}", r.revert.snapshot),
                };
                (r.revert.desired.clone(), origin)
            });
        let origin = reverting
            .as_ref()
            .map_or_else(|| Origin::automation(side), |(_, o)| o.clone());
        let desired = match reverting {
            Some((records, _)) => records,
            None => match self.desired(side).await {
                Ok(d) => d,
                Err(e) => {
                    // Reported through the mailbox like any other outcome (no recursion into
                    // `input`).
                    let _ = self.tx.try_send(Msg::ChangeDone(side, Box::new(Err(e))));
                    return;
                }
            },
        };
        self.change_running = true;
        self.changes_started += 1;
        let (deps, managed, tx) = (self.deps.clone(), self.managed.clone(), self.tx.clone());
        tokio::spawn(async move {
            // A panic inside the publish (a provider client's bug) is reported like any failure:
            // unreported, the actor would wait for this change forever and never publish again.
            let work = tokio::spawn(async move {
                publish(&deps, &managed, side, desired, resume, &origin).await
            });
            let result = work.await.unwrap_or_else(|e| {
                Err(ChangeError::Transient(format!(
                    "the publish task failed: {e}"
                )))
            });
            let _ = tx.send(Msg::ChangeDone(side, Box::new(result))).await;
        });
    }

    async fn on_change_done(&mut self, side: Side, result: Result<ChangeReport, ChangeError>) {
        self.change_running = false;
        self.revert_ended(&result).await;
        if let Err(error @ ChangeError::Fenced(_)) = &result {
            if !self.leading || !self.deps.fence.is_leader() {
                // The timeline says why a change this instance began was never applied by it.
                let me = self.deps.fence.vantage().to_string();
                let ev = NewEvent {
                    domain: self.cfg.name.clone(),
                    at: Utc::now(),
                    kind: "fenced".into(),
                    actor: me.clone(),
                    reason: None,
                    message: format!(
                        "instance {me} did not apply its change publishing the {side} records: {error}"
                    ),
                    evidence: json!({"side": side, "error": error}),
                };
                self.record(ev).await;
            }
        }
        if result.is_ok() {
            self.revert = None;
        }
        if !self.leading {
            // The lease went while the change ran; its writes were fenced, the new leader finishes.
            tracing::warn!(domain = %self.cfg.name, %side, outcome = ?result.as_ref().map(|r| r.change_id), "publish ended after this instance stopped leading; the leader takes it from here");
            return;
        }
        match result {
            Ok(report) => {
                self.attempts = 0;
                if side == Side::Backup {
                    if let Some(id) = report.snapshot_id {
                        self.state.failover_snapshot = Some(id);
                    }
                }
                let message = match report.change_id {
                    Some(id) => format!(
                        "change {id} published the {side} records; verified at {}",
                        servers(&report)
                    ),
                    None => format!(
                        "the {side} records were already live; verified at {}",
                        servers(&report)
                    ),
                };
                self.event(
                    "change",
                    message,
                    serde_json::to_value(&report).unwrap_or_default(),
                )
                .await;
                let _ = self
                    .input(Input::ChangeVerified { side }, "automation", None)
                    .await;
                self.track_propagation(report);
            }
            Err(error) => self.on_change_failed(side, error).await,
        }
    }

    /// A failed publish, by kind (`ChangeError::retry_in`): a fenced one is left to the leader
    /// (no retry, no alert: the lease moved); the others are retried when their kind says, and
    /// the machine raises the alert, naming the kind and whether someone must act.
    async fn on_change_failed(&mut self, side: Side, error: ChangeError) {
        // Refused by the fence while the lease is still ours locally: the store could not
        // confirm it (unreachable), or it moved an instant ago; either way, ask again later.
        let error = match error {
            ChangeError::Fenced(why) if self.deps.fence.is_leader() => ChangeError::Transient(
                format!("the lease could not be confirmed before writing: {why}"),
            ),
            other => other,
        };
        let kind = error.kind();
        metrics::counter!("mxguard_change_failures_total", "kind" => kind).increment(1);
        self.attempts += 1;
        let Some(wait) = error.retry_in(self.attempts) else {
            tracing::warn!(domain = %self.cfg.name, %side, %error, kind, "publish fenced: this instance may not write; the leader finishes the change");
            self.retry_at = None;
            return;
        };
        self.retry_at = Some(tokio::time::Instant::now() + wait);
        tracing::warn!(domain = %self.cfg.name, %side, %error, kind, attempt = self.attempts, ?wait, "publish failed; will retry");
        let action = if error.needs_an_operator() {
            "someone must fix this; "
        } else {
            ""
        };
        let _ = self
            .input(
                Input::ChangeFailed {
                    side,
                    error: format!(
                        "{kind}: {error} ({action}attempt {}, next in {}s)",
                        self.attempts,
                        wait.as_secs()
                    ),
                },
                "automation",
                None,
            )
            .await;
    }

    /// Records, per resolver, when the change became visible there (after old TTLs ran out).
    fn track_propagation(&self, report: ChangeReport) {
        if report.change_id.is_none() || self.deps.verifier.resolvers.is_empty() {
            return;
        }
        let (verifier, store, domain, bus, state) = (
            self.deps.verifier.clone(),
            self.store().clone(),
            self.cfg.name.clone(),
            self.deps.events.clone(),
            self.state.machine.clone(),
        );
        tokio::spawn(async move {
            let seen = verifier
                .resolvers(
                    &report.plan.desired,
                    crate::verify::cache_bound(report.replaced_ttl),
                )
                .await;
            let summary: Vec<String> = seen
                .iter()
                .map(|v| match v.after_ms {
                    Some(ms) => format!("{} after {:.1}s", v.server, ms as f64 / 1000.0),
                    None => format!("{} not yet", v.server),
                })
                .collect();
            let ev = NewEvent {
                domain,
                at: Utc::now(),
                kind: "propagation".into(),
                actor: "automation".into(),
                reason: None,
                message: format!(
                    "{} records visible at resolvers: {}",
                    report.side,
                    summary.join(", ")
                ),
                evidence: json!({"change": report.change_id, "resolvers": seen}),
            };
            if let Ok(stored) = store.append_event(&ev).await {
                bus.publish(stored, state);
            }
        });
    }

    /// Reads what the provider serves, waiting for it (at recovery), and tells the machine.
    async fn observe(&mut self) {
        if !self.leading {
            return;
        }
        match self
            .deps
            .provider
            .read(&self.managed.zone, &self.managed.keys())
            .await
        {
            Ok(live) => self.on_observed(live).await,
            Err(e) => self.on_read_failed(&e).await,
        }
    }

    /// The periodic reconcile: reads in a child task at background priority (after any
    /// change's requests at the provider) and reports back, so the actor keeps handling
    /// rounds and commands while the read waits for the provider's budget.
    fn start_observe(&mut self) {
        if !self.leading || self.observing || self.change_running {
            return;
        }
        self.observing = true;
        // Not knowing what is published, automation cannot act: that read is as urgent as a
        // change's. Otherwise it is a check, and waits behind the changes of other domains.
        let provider = if self.state.machine.published.is_none() {
            self.deps.provider.clone()
        } else {
            self.deps.background.clone()
        };
        let (provider, zone, keys, tx, changes) = (
            provider,
            self.managed.zone.clone(),
            self.managed.keys(),
            self.tx.clone(),
            self.changes_started,
        );
        tokio::spawn(async move {
            // As for a publish: a panicking read is reported, or no read would start again.
            let read = tokio::spawn(async move { provider.read(&zone, &keys).await });
            let live = read.await.unwrap_or_else(|e| {
                Err(mxguard_core::ProviderError::Transient(format!(
                    "the reconcile read failed: {e}"
                )))
            });
            let _ = tx
                .send(Msg::Observed {
                    changes,
                    live: Box::new(live),
                })
                .await;
        });
    }

    /// What the provider serves: tells the machine; reports drift once per episode.
    async fn on_observed(&mut self, live: Vec<RecordSet>) {
        self.read_alerted = false;
        let published = self.managed.which_side(&live);
        let ttl = self.managed.ttl_of(&live);
        let drift = published.is_none() && !self.change_running;
        if drift && !self.drift {
            let shown: Vec<String> = live.iter().map(|s| s.to_string()).collect();
            self.event(
                "drift",
                format!(
                    "published records match neither side ({}); {}",
                    if shown.is_empty() {
                        "none".into()
                    } else {
                        shown.join(" | ")
                    },
                    if self.cfg.drift == Drift::Correct {
                        "the controller decides whether to restore the published side"
                    } else {
                        "left alone (drift = \"report\")"
                    }
                ),
                json!({"live": live}),
            )
            .await;
        }
        self.drift = drift;
        if published != self.state.machine.published || ttl != self.state.machine.published_ttl {
            let _ = self
                .input(Input::Observed { published, ttl }, "automation", None)
                .await;
        }
    }

    async fn dry_run(&self, side: Option<Side>) -> Result<Plan, String> {
        let m = &self.state.machine;
        let side = side
            .or(m.in_flight)
            .or(m.published)
            .unwrap_or(Side::Primary);
        let desired = self.desired(side).await.map_err(|e| e.to_string())?;
        let actual = self
            .deps
            .provider
            .read(&self.managed.zone, &self.managed.keys())
            .await
            .map_err(|e| e.to_string())?;
        self.managed
            .plan(desired, actual)
            .map_err(|e| e.to_string())
    }

    async fn event(&self, kind: &str, message: String, evidence: serde_json::Value) {
        let ev = NewEvent {
            domain: self.cfg.name.clone(),
            at: Utc::now(),
            kind: kind.into(),
            actor: "automation".into(),
            reason: None,
            message,
            evidence,
        };
        self.record(ev).await;
    }

    /// Appends to the timeline, then publishes on the event bus (with the machine's state).
    async fn record(&self, ev: NewEvent) {
        match self.store().append_event(&ev).await {
            Ok(stored) => self.deps.events.publish(stored, self.state.machine.clone()),
            Err(e) => {
                tracing::error!(domain = %self.cfg.name, kind = %ev.kind, error = %e, "event not recorded")
            }
        }
    }

    fn status(&self) -> Status {
        let m = &self.state.machine;
        let guard = (m.phase == Phase::FailbackPending).then(|| Guard {
            hold_secs: self.policy.hold_for(m).as_secs(),
            elapsed_secs: m
                .primary_up_since
                .map_or(0, |s| (Utc::now() - s).num_seconds().max(0) as u64),
            approval_required: self.policy.approval,
            approved: m.approved,
        });
        Status {
            domain: self.cfg.name.clone(),
            state: m.clone(),
            active: m.published,
            guard,
            rounds: self.rounds.values().cloned().collect(),
            drift: self.drift,
            vantages: self.combined.values().cloned().collect(),
        }
    }
}

fn servers(r: &ChangeReport) -> String {
    r.authoritative
        .iter()
        .map(|v| format!("{} ({} ms)", v.server, v.after_ms.unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(side: Side, health: Health, secs: i64) -> (RoundReport, VantageReport) {
        let at = DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid time");
        let report = RoundReport {
            domain: Fqdn::parse("example.test").expect("name"),
            side,
            at,
            pass: health == Health::Up,
            verdicts: vec![],
            health: crate::health::SideHealth {
                health,
                ..crate::health::SideHealth::new(side)
            },
            change: None,
            confirmation: false,
            evidence: vec![],
        };
        let own = VantageReport {
            vantage: "v".into(),
            side,
            at,
            health,
            pass: health == Health::Up,
            partitioned: None,
            verdicts: vec![],
        };
        (report, own)
    }

    #[tokio::test]
    async fn a_busy_actor_gets_the_latest_round_per_side_not_a_backlog() {
        let (tx, _rx) = mpsc::channel(1);
        let handle = ActorHandle {
            domain: Fqdn::parse("example.test").expect("name"),
            tx,
            inbox: Arc::default(),
        };
        // 100 rounds per side arrive while the actor is busy elsewhere
        for i in 0..100 {
            let health = if i < 99 { Health::Up } else { Health::Down };
            for side in [Side::Primary, Side::Backup] {
                let (r, own) = round(side, health, i);
                assert!(handle.round(r, own).await);
            }
        }
        // one wake-up is pending, and it finds one round per side: the newest
        tokio::time::timeout(Duration::from_secs(1), handle.inbox.ready.notified())
            .await
            .expect("the actor is woken");
        let got = handle.inbox.take();
        assert_eq!(got.len(), 2);
        for (r, own) in &got {
            assert_eq!(r.at.timestamp(), 1_800_000_099, "{:?}", r.side);
            assert_eq!(own.health, Health::Down);
        }
        assert!(handle.inbox.take().is_empty(), "taken once");
    }

    #[tokio::test]
    async fn rounds_are_refused_once_the_actor_has_stopped() {
        let (tx, rx) = mpsc::channel(1);
        let handle = ActorHandle {
            domain: Fqdn::parse("example.test").expect("name"),
            tx,
            inbox: Arc::default(),
        };
        drop(rx);
        let (r, own) = round(Side::Primary, Health::Up, 0);
        assert!(!handle.round(r, own).await);
    }
}
