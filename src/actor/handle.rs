//! How the API, the CLI and the monitor talk to a domain's actor: commands and reverts in a
//! bounded mailbox, answered by oneshot replies; probe rounds in the same mailbox, which keeps
//! only the newest per side.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use tokio::sync::{oneshot, watch, Notify, Semaphore};

use super::change::{ChangeError, ChangeReport};
use crate::lease::RoleReport;
use crate::machine::Command;
use crate::model::{BySide, Fqdn, RecordSet, Side};
use crate::monitor::RoundReport;
use crate::plan::Plan;
use crate::vantage::VantageReport;

use super::Status;

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

pub(super) enum Msg {
    Command {
        command: Command,
        by: String,
        reason: String,
        reply: oneshot::Sender<Result<CommandReply, ActorError>>,
    },
    Status(oneshot::Sender<Status>),
    Plan(Option<Side>, oneshot::Sender<Result<Plan, String>>),
    /// A change ended: its side, the actor's count of changes started when it began (a TTL
    /// write superseded by a move reports late and is ignored), its outcome.
    ChangeDone(Side, u64, Box<Result<ChangeReport, ChangeError>>),
    /// The change in flight waits for its provider's lockout until then.
    ChangeWaiting(Side, std::time::SystemTime),
    /// An operator's revert to a snapshot holding `side`'s records (`desired`: its managed
    /// RRsets); answered once the change is verified or has failed.
    Revert {
        revert: Revert,
        reply: oneshot::Sender<Result<RevertDone, ActorError>>,
    },
    /// A new look at the domain's MTA-STS policy.
    MtaSts(Box<crate::mtasts::watch::MtaStsView>),
    /// A reconcile read came back; `changes` is the count of changes started when it began.
    Observed {
        changes: u64,
        /// Each provider's read, the first provider's first.
        reads: super::mirrors::Reads,
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

/// An actor's mailbox: its messages (at most `capacity` waiting; a sender waits for room) and
/// the newest probe round per side, behind one lock and one wake-up. It is one small
/// allocation per domain, held for the domain's life: a tokio channel was 800 B (its
/// cache-padded ends and its first block of slots) for mailboxes that rarely hold a message.
///
/// Rounds are not queued: an actor that falls behind (a slow store, a busy machine) decides
/// on the newest verdicts rather than working through old ones — which would look stale when
/// it got to them, and fill memory with rounds meanwhile.
pub(super) struct Inbox {
    held: Mutex<Held>,
    /// Wakes the actor for a message or a round (a wake-up given while it is busy is kept).
    ready: Notify,
    /// Room for messages: a sender takes a permit, the actor gives it back when it takes the
    /// message. Closed when the actor stops, so that waiting senders hear it.
    room: Semaphore,
}

#[derive(Default)]
struct Held {
    /// A round waiting is boxed: the mailbox is mostly empty.
    rounds: BySide<Option<Box<(RoundReport, VantageReport)>>>,
    mail: VecDeque<Box<Msg>>,
    /// The actor has stopped.
    closed: bool,
}

impl Inbox {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side of an actor's mailbox (the API's, the monitor's and its own child tasks').
#[derive(Clone)]
pub(super) struct Mailbox(Arc<Inbox>);

/// The actor's side of its mailbox. Dropping it (the actor stopped) closes the mailbox: the
/// messages waiting are dropped (their callers hear [`ActorError::Gone`]), and so is whatever
/// is sent later.
pub(super) struct Receiver(Arc<Inbox>);

impl Mailbox {
    /// A mailbox for `capacity` messages and its receiving side.
    pub(super) fn new(capacity: usize) -> (Mailbox, Receiver) {
        let inbox = Arc::new(Inbox {
            held: Mutex::default(),
            ready: Notify::new(),
            room: Semaphore::new(capacity),
        });
        (Mailbox(inbox.clone()), Receiver(inbox))
    }

    /// Waits for room; [`ActorError::Gone`] once the actor has stopped. The message is boxed
    /// before the wait, so a sender waiting (every domain's first read reporting back at a
    /// start) holds a pointer, not the message.
    pub(super) fn send(
        &self,
        msg: Msg,
    ) -> impl std::future::Future<Output = Result<(), ActorError>> + Send + '_ {
        let msg = Box::new(msg);
        async move {
            let permit = self.0.room.acquire().await.map_err(|_| ActorError::Gone)?;
            permit.forget();
            self.post(msg)
        }
    }

    /// Sends if there is room now; `false` when full or the actor has stopped.
    pub(super) fn try_send(&self, msg: Msg) -> bool {
        match self.0.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.post(Box::new(msg)).is_ok()
            }
            Err(_) => false,
        }
    }

    /// Queues a message its sender has made room for.
    fn post(&self, msg: Box<Msg>) -> Result<(), ActorError> {
        let mut held = self.0.held();
        if held.closed {
            return Err(ActorError::Gone);
        }
        held.mail.push_back(msg);
        drop(held);
        self.0.ready.notify_one();
        Ok(())
    }

    /// Replaces the side's round the actor has not taken yet; `None` once the actor has
    /// stopped, else whether a round was replaced.
    fn offer_round(&self, report: RoundReport, own: VantageReport) -> Option<bool> {
        let side = report.side;
        let mut held = self.0.held();
        if held.closed {
            return None;
        }
        let replaced = held.rounds[side].replace(Box::new((report, own))).is_some();
        drop(held);
        self.0.ready.notify_one();
        Some(replaced)
    }
}

impl Receiver {
    /// Until a message or a round is waiting (at once if one came while the actor was busy).
    pub(super) async fn ready(&self) {
        self.0.ready.notified().await
    }

    /// The oldest message waiting.
    pub(super) fn next_message(&self) -> Option<Msg> {
        let msg = self.0.held().mail.pop_front()?;
        self.0.room.add_permits(1);
        Some(*msg)
    }

    /// The rounds waiting, the newest per side.
    pub(super) fn take_rounds(&self) -> Vec<(RoundReport, VantageReport)> {
        self.0.held().rounds.take().map(|round| *round).collect()
    }

    /// Whether a message is still waiting (the actor takes one per wake-up, so that its
    /// deadlines and reads are not held up behind a queue of messages).
    pub(super) fn more_mail(&self) -> bool {
        !self.0.held().mail.is_empty()
    }

    /// Wakes the actor again.
    pub(super) fn wake(&self) {
        self.0.ready.notify_one();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let waiting = {
            let mut held = self.0.held();
            held.closed = true;
            held.rounds = BySide::default();
            std::mem::take(&mut held.mail)
        };
        self.0.room.close();
        // Dropped outside the lock: each carries a reply its caller is waiting on.
        drop(waiting);
    }
}

/// How the API and CLI talk to a domain's actor.
#[derive(Clone)]
pub struct ActorHandle {
    pub domain: Fqdn,
    pub(super) tx: Mailbox,
    /// The status the actor last published (after each message, round or deadline).
    pub(super) shown: watch::Receiver<Arc<Status>>,
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
        self.tx.send(msg).await?;
        rx.await.map_err(|_| ActorError::Gone)?
    }

    /// The status as of the actor's last step, without waiting for it: lists and `/metrics`
    /// answer from these, so a busy or slow actor never holds them up.
    pub fn latest(&self) -> Arc<Status> {
        self.shown.borrow().clone()
    }

    /// The status now, asked of the actor (it answers between steps).
    pub async fn status(&self) -> Result<Status, ActorError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Status(reply)).await?;
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
        self.tx.send(Msg::Plan(side, reply)).await?;
        rx.await.map_err(|_| ActorError::Gone)
    }

    /// Reverts to a snapshot through the machine and the one publish (snapshot, intent, fenced
    /// apply, verify); answers when the change is verified or has failed.
    pub async fn revert(&self, revert: Revert) -> Result<RevertDone, ActorError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Revert { revert, reply }).await?;
        rx.await.map_err(|_| ActorError::Gone)?
    }

    /// Hands the actor a new look at the domain's MTA-STS policy; `false` once it has stopped.
    pub async fn mta_sts(&self, view: crate::mtasts::watch::MtaStsView) -> bool {
        self.tx.send(Msg::MtaSts(Box::new(view))).await.is_ok()
    }

    /// Feeds a probe round in (the monitor's output) with this vantage's report of it.
    /// Replaces a round of the same side the actor has not taken yet; `false` once the actor
    /// has stopped.
    pub async fn round(&self, report: RoundReport, own: VantageReport) -> bool {
        self.offer_round(report, own)
    }

    /// [`ActorHandle::round`] without waiting (it never needs to): what the monitor's sink
    /// calls inside a host's round.
    pub fn offer_round(&self, report: RoundReport, own: VantageReport) -> bool {
        match self.tx.offer_round(report, own) {
            None => false,
            Some(replaced) => {
                if replaced {
                    metrics::counter!("mxguard_rounds_superseded_total").increment(1);
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::DateTime;

    use super::*;
    use crate::health::Health;

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
            verdicts: Vec::new().into(),
        };
        (report, own)
    }

    /// A handle whose actor never runs.
    fn handle(tx: Mailbox) -> ActorHandle {
        let domain = Fqdn::parse("example.test").expect("name");
        ActorHandle {
            shown: watch::channel(Arc::new(Status::new(domain.clone()))).1,
            domain,
            tx,
        }
    }

    #[tokio::test]
    async fn a_busy_actor_gets_the_latest_round_per_side_not_a_backlog() {
        let (tx, rx) = Mailbox::new(1);
        let handle = handle(tx);
        // 100 rounds per side arrive while the actor is busy elsewhere
        for i in 0..100 {
            let health = if i < 99 { Health::Up } else { Health::Down };
            for side in [Side::Primary, Side::Backup] {
                let (r, own) = round(side, health, i);
                assert!(handle.round(r, own).await);
            }
        }
        // one wake-up is pending, and it finds one round per side: the newest
        tokio::time::timeout(Duration::from_secs(1), rx.ready())
            .await
            .expect("the actor is woken");
        let got = rx.take_rounds();
        assert_eq!(got.len(), 2);
        for (r, own) in &got {
            assert_eq!(r.at.timestamp(), 1_800_000_099, "{:?}", r.side);
            assert_eq!(own.health, Health::Down);
        }
        assert!(rx.take_rounds().is_empty(), "taken once");
    }

    #[tokio::test]
    async fn rounds_are_refused_once_the_actor_has_stopped() {
        let (tx, rx) = Mailbox::new(1);
        let handle = handle(tx);
        drop(rx);
        let (r, own) = round(Side::Primary, Health::Up, 0);
        assert!(!handle.round(r, own).await);
    }
}
