//! One task per domain owns its state. Operator commands arrive on a channel, probe rounds in an
//! inbox that keeps the latest per side;
//! each step of the machine is persisted (state, then events) **before** any provider call;
//! publishes run in a child task that reports back, so the actor keeps answering while a change
//! is applied and verified. On start it reloads its state (read in batches with the other
//! domains', `loader`) and resumes an unfinished change. It waits and stamps on the injected
//! clock (`ChangeDeps::clock`).
//!
//! This file holds the actor, its loop and its dispatch; each concern has a room of its own:
//! `handle` (what the API, CLI and monitor hold), `leading` (taking up and dropping
//! automation), `loader` (state reads batched across domains), `rounds` (verdicts in,
//! combined, decided), `commands` (operator commands and reverts), `step` (one machine step,
//! persisted and recorded), `publishing` (the change task and its failures), `reconcile`
//! (reads of what is live, drift, dry runs), `status`.

pub mod change;
mod commands;
pub mod error;
mod handle;
mod leading;
mod loader;
pub mod mirrors;
mod mtasts;
mod publishing;
mod reconcile;
mod rounds;
mod status;
mod step;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use self::change::ChangeDeps;
use crate::config::{DomainConfig, Drift};
use crate::machine::{self, DomainState, Input, Policy};
use crate::model::BySide;
use crate::plan::Managed;
use crate::store::Store;
use crate::vantage::{Combined, VantageReport};

use self::commands::RevertInFlight;
pub use self::handle::{not_leader, ActorError, ActorHandle, CommandReply, Revert, RevertDone};
use self::handle::{Mailbox, Msg, Receiver};
pub use self::loader::{Loaded, Loader};
pub use self::reconcile::DRY_RUN_TIMEOUT;
pub use self::status::{Guard, RoundSummary, Status};
pub use self::writer::Writer;

/// What is persisted per domain: the machine's state plus the snapshot to restore on failback.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub machine: DomainState,
    /// Snapshot taken before the last failover; failback restores its records and TTLs.
    pub failover_snapshot: Option<i64>,
    /// Snapshot taken before the primary's TTL was lowered early: the restore publishes its
    /// records and TTLs, and a failover while lowered takes it as its failover snapshot.
    #[serde(default)]
    pub early_ttl_snapshot: Option<i64>,
}

pub struct Actor {
    /// Shared with the parsed configuration, the domain's watches and the API.
    cfg: Arc<DomainConfig>,
    managed: Managed,
    policy: Policy,
    /// Shared with the domains that have the same provider, servers and checks.
    deps: Arc<ChangeDeps>,
    /// Reads the persisted state in batches with the other actors on the same store.
    loader: Arc<Loader>,
    /// Writes its state and timeline in batches with the other actors on the same store.
    writer: Arc<Writer>,
    state: Persisted,
    /// An operator's revert being published.
    revert: Option<Box<RevertInFlight>>,
    version: Option<i64>,
    rounds: BySide<Option<Arc<RoundSummary>>>,
    drift: bool,
    change_running: bool,
    /// The change running is a TTL write (early TTL lowering or its restore): a move decided
    /// meanwhile supersedes it.
    running_ttl_write: bool,
    /// The change running publishes again at the providers behind (`mirrors`): a move decided
    /// meanwhile supersedes it, and its outcome never reaches the machine.
    running_catch_up: bool,
    /// The providers of a zone served by several that have not taken the published side.
    behind: Option<Box<mirrors::Behind>>,
    /// Each provider's answer to the latest reconcile read (several providers only).
    views: Vec<mirrors::ProviderView>,
    /// The providers serving neither side, reported once per episode.
    mirror_drift: std::collections::BTreeSet<String>,
    /// The provider lockout (its end, in Unix seconds) the timeline already said the change
    /// in flight waits for.
    waiting_noted: Option<i64>,
    /// The change in flight's task, stopped when the lease is lost.
    publishing: Option<tokio::task::AbortHandle>,
    /// Changes started so far: a reconcile read that began before the latest one is stale.
    changes_started: u64,
    /// A reconcile read is out (one at a time; a slow provider does not pile them up).
    observing: bool,
    retry_at: Option<std::time::Instant>,
    attempts: u32,
    ticked: Option<DateTime<Utc>>,
    /// This vantage's latest report per side.
    own: BySide<Option<VantageReport>>,
    /// The combined verdict per side the machine was last told.
    combined: BySide<Option<Arc<Combined>>>,
    /// This domain's `mxguard_last_successful_round_timestamp_seconds`, once first set.
    last_round_gauge: Option<metrics::Gauge>,
    /// Whether this instance leads and has loaded the domain's state for this term.
    leading: bool,
    /// The latest look at the domain's MTA-STS policy (`serve`'s `mtasts::watch`).
    mta_sts: Option<Arc<crate::mtasts::watch::MtaStsView>>,
    /// Whether this vantage was cut off in its last round (reported once per episode).
    partitioned: bool,
    /// The machine left Unknown at the last round: the next round goes in even if unchanged.
    settled: bool,
    /// A read failure that retries do not fix was alerted (once per episode).
    read_alerted: bool,
    tx: Mailbox,
    rx: Receiver,
    shown: tokio::sync::watch::Sender<Arc<Status>>,
}

/// What the actors on one store share so that their store traffic goes in batches: the reads
/// of their state ([`Loader`]) and the writes of their state and timeline ([`Writer`]).
#[derive(Clone)]
pub struct Batching {
    pub loader: Arc<Loader>,
    pub writer: Arc<Writer>,
}

impl Batching {
    pub fn new(store: Arc<dyn Store>) -> Batching {
        Batching {
            loader: Loader::new(store.clone()),
            writer: Writer::new(store),
        }
    }
}

impl Actor {
    /// An actor with batching of its own: its reads and writes are not batched with other
    /// domains'.
    pub fn new(
        cfg: impl Into<Arc<DomainConfig>>,
        deps: impl Into<Arc<ChangeDeps>>,
    ) -> (Actor, ActorHandle) {
        let deps: Arc<ChangeDeps> = deps.into();
        let batching = Batching::new(deps.store.clone());
        Actor::batched(cfg, deps, &batching)
    }

    /// An actor that reads and writes its state through `batching`, shared with the other
    /// domains' actors on the same store.
    pub fn batched(
        cfg: impl Into<Arc<DomainConfig>>,
        deps: impl Into<Arc<ChangeDeps>>,
        batching: &Batching,
    ) -> (Actor, ActorHandle) {
        let cfg: Arc<DomainConfig> = cfg.into();
        let deps: Arc<ChangeDeps> = deps.into();
        let (tx, rx) = Mailbox::new(64);
        let managed = Managed::new(&cfg);
        let policy = Policy {
            hold: cfg.failback.hold,
            approval: cfg.failback.approval,
            correct_drift: cfg.drift == Drift::Correct,
            mta_sts: cfg.mta_sts,
            early_ttl: cfg.early_ttl,
            failover_ttl: cfg.failover_ttl.secs(),
            ..Policy::default()
        };
        let (shown, shown_rx) =
            tokio::sync::watch::channel(Arc::new(Status::new(cfg.name.clone())));
        let handle = ActorHandle {
            domain: cfg.name.clone(),
            tx: tx.clone(),
            shown: shown_rx,
        };
        let actor = Actor {
            cfg,
            managed,
            policy,
            deps,
            loader: batching.loader.clone(),
            writer: batching.writer.clone(),
            state: Persisted::default(),
            revert: None,
            version: None,
            rounds: BySide::default(),
            drift: false,
            read_alerted: false,
            change_running: false,
            running_ttl_write: false,
            running_catch_up: false,
            behind: None,
            views: Vec::new(),
            mirror_drift: Default::default(),
            waiting_noted: None,
            publishing: None,
            changes_started: 0,
            observing: false,
            retry_at: None,
            attempts: 0,
            ticked: None,
            own: BySide::default(),
            combined: BySide::default(),
            last_round_gauge: None,
            leading: false,
            mta_sts: None,
            partitioned: false,
            settled: false,
            tx,
            rx,
            shown,
        };
        (actor, handle)
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.deps.store
    }

    /// Runs the actor until `shutdown`. The body is an `async move` block rather than an
    /// `async fn`: an `async fn` keeps its arguments twice (as arguments and as locals), and
    /// the actor is held for the domain's life.
    #[allow(clippy::manual_async_fn)] // the argument kept once, see above
    pub fn run(
        mut self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // The first read is at recovery; the periodic ones start at a random point of the
            // period, so a thousand domains started together do not read together.
            let period = self.deps.reconcile;
            let fraction =
                mxguard_core::Jitter::fraction(&mxguard_core::SeededJitter::from_entropy());
            let offset = period.mul_f64(fraction).max(Duration::from_secs(1));
            let clock = self.deps.clock.clone();
            let mut next_read = clock.now() + offset;
            let mut leadership = self.deps.fence.clone();
            let mut watching = true;
            // The heavy steps below are boxed: this future lives as long as the domain is watched,
            // and inline it would be sized by its largest step (6.5 KB a domain, held while idle).
            loop {
                if self.deps.fence.is_leader() != self.leading {
                    Box::pin(self.follow_leadership()).await;
                }
                // A deadline already ticked (e.g. a hold waiting for approval) is not armed again.
                let deadline = machine::next_deadline(&self.state.machine, &self.policy)
                    .filter(|_| self.leading)
                    .filter(|d| Some(*d) != self.ticked);
                // Every wait is on the injected clock: a test's ManualClock drives holds, retries
                // and reads without sleeping.
                let never = || -> mxguard_core::clock::Sleep { Box::pin(std::future::pending()) };
                let tick = deadline.map_or_else(never, |d| clock.sleep_until_utc(d));
                let retry = self.retry_at.map_or_else(never, |at| clock.sleep_until(at));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = leadership.changed(), if watching => watching = changed,
                    _ = self.rx.ready() => {
                        if let Some(msg) = self.rx.next_message() {
                            Box::pin(self.handle(msg)).await;
                        }
                        let rounds = self.rx.take_rounds();
                        if !rounds.is_empty() {
                            Box::pin(self.on_rounds(rounds)).await;
                            if !self.leading {
                                Box::pin(self.follow_state()).await;
                            }
                        }
                        if self.rx.more_mail() {
                            self.rx.wake();
                        }
                    }
                    _ = tick => {
                        self.ticked = machine::next_deadline(&self.state.machine, &self.policy);
                        let _ = Box::pin(self.input(Input::Tick, "automation", None)).await;
                    }
                    _ = retry => {
                        self.retry_at = None;
                        if let Some(side) = self.state.machine.in_flight {
                            Box::pin(self.start_change(side, Vec::new())).await;
                        } else {
                            Box::pin(self.start_catch_up()).await;
                        }
                    }
                    _ = clock.sleep_until(next_read) => {
                        // Missed reads are not caught up: the next is a period after this one.
                        next_read = clock.now() + period;
                        self.start_observe();
                    }
                }
                self.show();
            }
            tracing::info!(domain = %self.cfg.name, "domain controller stopped");
        }
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
                // Published first: whoever hears the answer then reads lists at least as new.
                self.show();
                let _ = reply.send(result);
            }
            Msg::Status(reply) => {
                // One build serves the answer and the published copy.
                let status = self.status();
                self.shown.send_replace(Arc::new(status.clone()));
                let _ = reply.send(status);
            }
            Msg::Plan(side, reply) => self.start_dry_run(side, reply),
            Msg::ChangeDone(side, generation, result) => {
                self.on_change_done(side, generation, *result).await
            }
            Msg::ChangeWaiting(side, until) => self.on_change_waiting(side, until).await,
            Msg::Revert { revert, reply } => self.on_revert(revert, reply).await,
            Msg::MtaSts(view) => self.on_mta_sts(*view).await,
            Msg::Observed { changes, reads } => {
                self.observing = false;
                // A change started since the read began: what it saw may be gone.
                let stale = changes != self.changes_started || self.change_running;
                if !stale || reads.iter().all(|(_, r)| r.is_err()) {
                    self.on_read_all(reads).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod footprint {
    //! What an idle domain costs: at 100,000 domains every byte of these is 100 KB, held for
    //! the process's life (docs/BENCHMARKS.md, issue 17's memory budget).

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, F: FnOnce(A, B) -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// [`future_size`] of a method without arguments.
    fn step_size<A, F: FnOnce(A) -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn an_idle_domains_tasks_hold_little_more_than_the_actor() {
        let actor = std::mem::size_of::<super::Actor>();
        // its deps are shared with the domains like it, its rare parts boxed (1.5 KB before)
        assert!(actor <= 1100, "the actor is {actor} B");
        let run = future_size(super::Actor::run);
        // the actor once, plus the loop's waits; its steps are boxed while they run (an
        // inline step or the argument kept twice doubled this: 6.5 KB)
        assert!(
            run <= actor + 1024,
            "the actor's future is {run} B for a {actor} B actor"
        );
        // at a start every actor waits for its state at once: the wait is small, the steps
        // after it boxed (1.8 KB before)
        let recovering = step_size::<&mut super::Actor, _, _>(super::Actor::follow_leadership);
        assert!(
            recovering <= 256,
            "an actor waiting for its state holds {recovering} B"
        );
        // and then for its first events to be written: the event is handed over, not held
        // in a wait for room (760 B before)
        let recording = future_size(super::Actor::record);
        assert!(
            recording <= 400,
            "an actor waiting for its event to be written holds {recording} B"
        );
        // and its first read reports back from a task of its own: the message waits for room
        // boxed (304 B before)
        let sending = future_size(super::handle::Mailbox::send);
        assert!(
            sending <= 160,
            "a message waiting for room in a mailbox holds {sending} B"
        );
        // one task watches every domain's MTA-STS policy; a domain is an entry in its list
        let mta_sts = std::mem::size_of::<crate::mtasts::watch::Watched>();
        assert!(
            mta_sts <= 160,
            "a domain's MTA-STS entry is {mta_sts} B while it waits"
        );
    }
}
