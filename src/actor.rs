//! One task per domain owns its state. Probe rounds and operator commands arrive on a channel;
//! each step of the machine is persisted (state, then events) **before** any provider call;
//! publishes run in a child task that reports back, so the actor keeps answering while a change
//! is applied and verified. On start it reloads its state and resumes an unfinished change.

pub mod change;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::change::{desired_records, publish, ChangeDeps, ChangeReport};
use crate::config::{DomainConfig, Drift};
use crate::health::{Health, TargetVerdict};
use crate::machine::{self, Command, DomainState, Effect, Input, Phase, Policy};
use crate::model::{Fqdn, RecordSet, Side};
use crate::monitor::RoundReport;
use crate::plan::{Managed, Plan};
use crate::store::{NewEvent, Store, StoreError};

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
}

enum Msg {
    Round(Box<RoundReport>),
    Command {
        command: Command,
        by: String,
        reason: String,
        reply: oneshot::Sender<Result<CommandReply, ActorError>>,
    },
    Status(oneshot::Sender<Status>),
    Plan(Option<Side>, oneshot::Sender<Result<Plan, String>>),
    ChangeDone(Side, Box<Result<ChangeReport, String>>),
}

/// How the API and CLI talk to a domain's actor.
#[derive(Clone)]
pub struct ActorHandle {
    pub domain: Fqdn,
    tx: mpsc::Sender<Msg>,
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

    /// Feeds a probe round in (the monitor's output).
    pub async fn round(&self, report: RoundReport) -> bool {
        self.tx.send(Msg::Round(Box::new(report))).await.is_ok()
    }
}

pub struct Actor {
    cfg: DomainConfig,
    managed: Managed,
    policy: Policy,
    deps: ChangeDeps,
    state: Persisted,
    version: Option<i64>,
    rounds: BTreeMap<&'static str, RoundSummary>,
    drift: bool,
    change_running: bool,
    retry_at: Option<tokio::time::Instant>,
    attempts: u32,
    ticked: Option<DateTime<Utc>>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
}

const RECONCILE: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Actor {
    pub fn new(cfg: DomainConfig, deps: ChangeDeps) -> (Actor, ActorHandle) {
        let (tx, rx) = mpsc::channel(64);
        let managed = Managed::new(&cfg);
        let policy = Policy {
            hold: cfg.failback.hold,
            approval: cfg.failback.approval,
            ..Policy::default()
        };
        let handle = ActorHandle {
            domain: cfg.name.clone(),
            tx: tx.clone(),
        };
        let actor = Actor {
            cfg,
            managed,
            policy,
            deps,
            state: Persisted::default(),
            version: None,
            rounds: BTreeMap::new(),
            drift: false,
            change_running: false,
            retry_at: None,
            attempts: 0,
            ticked: None,
            tx,
            rx,
        };
        (actor, handle)
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.deps.store
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        if let Err(e) = self.recover().await {
            tracing::error!(domain = %self.cfg.name, error = %e, "cannot load the domain's state; automation stays off for it");
            return;
        }
        let mut reconcile = tokio::time::interval(RECONCILE);
        loop {
            // A deadline already ticked (e.g. a hold waiting for approval) is not armed again.
            let deadline = machine::next_deadline(&self.state.machine, &self.policy)
                .filter(|d| Some(*d) != self.ticked)
                .map(|d| {
                    let wait = (d - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::Instant::now() + wait
                });
            let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                _ = shutdown.cancelled() => break,
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
                _ = reconcile.tick() => self.observe().await,
            }
        }
        tracing::info!(domain = %self.cfg.name, "domain controller stopped");
    }

    /// Loads the persisted state and resumes what a crash interrupted.
    async fn recover(&mut self) -> Result<(), StoreError> {
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
        self.observe().await;
        match self.state.machine.in_flight {
            Some(side) => {
                let resume = unfinished.into_iter().last();
                if let Some(c) = &resume {
                    self.event(
                        "change",
                        format!("resuming change {} ({}) after restart", c.id, c.status),
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
                            Utc::now(),
                        )
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Round(report) => self.on_round(*report).await,
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
        }
    }

    async fn on_round(&mut self, r: RoundReport) {
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
            let reasons: Vec<String> = r
                .verdicts
                .iter()
                .map(|v| format!("{}: {}", v.target, v.reason))
                .collect();
            self.event(
                "health",
                format!(
                    "{} {:?} → {:?} after {} failing / {} passing round(s)",
                    r.side, c.from, c.to, c.failures, c.passes
                ),
                json!({"side": r.side, "verdicts": r.verdicts}),
            )
            .await;
            tracing::info!(domain = %self.cfg.name, side = %r.side, to = ?c.to, evidence = %reasons.join("; "), "health changed");
        }
        let primary = self
            .rounds
            .get("primary")
            .map_or(Health::Unknown, |s| s.health);
        let backup = self
            .rounds
            .get("backup")
            .map_or(Health::Unknown, |s| s.health);
        if (primary, backup) != (self.state.machine.primary, self.state.machine.backup) {
            let _ = self
                .input(Input::Health { primary, backup }, "automation", None)
                .await;
        }
    }

    async fn on_command(
        &mut self,
        command: Command,
        by: &str,
        reason: &str,
    ) -> Result<CommandReply, ActorError> {
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

    /// Steps the machine, persists state and events, then carries out the effects.
    async fn input(
        &mut self,
        input: Input,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Vec<Effect>, ActorError> {
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
                .save_state(&self.cfg.name, &value, self.version, Utc::now())
                .await
            {
                Ok(v) => {
                    self.version = Some(v);
                    self.state = next;
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
                    if let Err(err) = self.store().append_event(&ev).await {
                        tracing::error!(domain = %self.cfg.name, error = %err, "event not recorded");
                    }
                }
                Effect::Publish { side, why } => {
                    tracing::info!(domain = %self.cfg.name, %side, why, "publishing");
                    self.attempts = 0;
                    self.start_change(*side, None).await;
                }
                Effect::Rejected { .. } => {}
            }
        }
        Ok(fx)
    }

    async fn desired(&self, side: Side) -> Result<Vec<RecordSet>, String> {
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
        if self.change_running {
            return;
        }
        let desired = match self.desired(side).await {
            Ok(d) => d,
            Err(e) => {
                // Reported through the mailbox like any other outcome (no recursion into `input`).
                let _ = self.tx.try_send(Msg::ChangeDone(side, Box::new(Err(e))));
                return;
            }
        };
        self.change_running = true;
        let (deps, managed, tx) = (self.deps.clone(), self.managed.clone(), self.tx.clone());
        tokio::spawn(async move {
            let result = publish(&deps, &managed, side, desired, resume).await;
            let _ = tx.send(Msg::ChangeDone(side, Box::new(result))).await;
        });
    }

    async fn on_change_done(&mut self, side: Side, result: Result<ChangeReport, String>) {
        self.change_running = false;
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
            Err(error) => {
                self.attempts += 1;
                let backoff = Duration::from_secs(5)
                    .saturating_mul(1 << self.attempts.min(6))
                    .min(MAX_BACKOFF);
                self.retry_at = Some(tokio::time::Instant::now() + backoff);
                tracing::warn!(domain = %self.cfg.name, %side, %error, attempt = self.attempts, ?backoff, "publish failed; will retry");
                let _ = self
                    .input(
                        Input::ChangeFailed {
                            side,
                            error: format!(
                                "{error} (attempt {}, next in {}s)",
                                self.attempts,
                                backoff.as_secs()
                            ),
                        },
                        "automation",
                        None,
                    )
                    .await;
            }
        }
    }

    /// Records, per resolver, when the change became visible there (after old TTLs ran out).
    fn track_propagation(&self, report: ChangeReport) {
        if report.change_id.is_none() || self.deps.verifier.resolvers.is_empty() {
            return;
        }
        let (verifier, store, domain) = (
            self.deps.verifier.clone(),
            self.store().clone(),
            self.cfg.name.clone(),
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
            let _ = store.append_event(&ev).await;
        });
    }

    /// Reads what the provider serves and tells the machine; reports drift once per episode.
    async fn observe(&mut self) {
        let live = match self
            .deps
            .provider
            .read(&self.managed.zone, &self.managed.keys())
            .await
        {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(domain = %self.cfg.name, error = %e, "cannot read the published records");
                return;
            }
        };
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
                        "correcting"
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
        if drift && self.cfg.drift == Drift::Correct && !self.state.machine.change_in_flight() {
            let side = match self.state.machine.phase {
                Phase::OnBackup | Phase::FailbackPending | Phase::FailingOver => Side::Backup,
                _ => Side::Primary,
            };
            self.start_change(side, None).await;
        }
    }

    async fn dry_run(&self, side: Option<Side>) -> Result<Plan, String> {
        let m = &self.state.machine;
        let side = side
            .or(m.in_flight)
            .or(m.published)
            .unwrap_or(Side::Primary);
        let desired = self.desired(side).await?;
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
        if let Err(e) = self.store().append_event(&ev).await {
            tracing::error!(domain = %self.cfg.name, error = %e, "event not recorded");
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
