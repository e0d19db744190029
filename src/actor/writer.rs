//! Writing in batches: the actors of one store hand their state saves and timeline events to a
//! shared [`Writer`], which writes whatever has gathered as one store write (one fence check,
//! a statement per few hundred rows) and answers each actor once that write is durable. At a
//! start with 100,000 domains every actor saves its first state and records its first health
//! events within seconds; one write per save or event made the store's writer, not the probes,
//! what the start waited on.
//!
//! No window is waited for: a save arriving while the store is idle is written at once, alone,
//! as before; those arriving while a write is in progress make the next batch. So batches grow
//! only when the store is busy, and an actor never waits longer than it would have queued.
//!
//! The queues are unbounded, and bounded by the actors: each has at most one save and one
//! event out, and waits for its answer. Handing over without waiting keeps a waiting actor's
//! future small (a bounded send held the save or event and the wait for room in every
//! waiting actor: 760 B each, 100,000 of them while a start's first writes go out).

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Event, NewEvent, StateSave, Store, StoreError};

/// Most saves or events written by one batch.
const BATCH: usize = 2_000;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

struct Save {
    save: StateSave,
    epoch: i64,
    reply: Reply<i64>,
}

struct Append {
    event: NewEvent,
    reply: Reply<Event>,
}

/// One per store, shared by its actors (`actor::Batching`). Its tasks start at the first write
/// and end when the last holder drops the writer.
pub struct Writer {
    store: Arc<dyn Store>,
    saves: OnceLock<mpsc::UnboundedSender<Save>>,
    appends: OnceLock<mpsc::UnboundedSender<Append>>,
}

impl Writer {
    pub fn new(store: Arc<dyn Store>) -> Arc<Writer> {
        Arc::new(Writer {
            store,
            saves: OnceLock::new(),
            appends: OnceLock::new(),
        })
    }

    /// Writes `save` as `Store::save_state` would (compare-and-swap on its version, fenced by
    /// `epoch`), with the other saves of its batch.
    pub async fn save_state(&self, save: StateSave, epoch: i64) -> Result<i64, StoreError> {
        let saves = self.saves.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_saves(self.store.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        saves
            .send(Save { save, epoch, reply })
            .map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }

    /// Appends `event` to the timeline with the other events of its batch.
    pub async fn append_event(&self, event: NewEvent) -> Result<Event, StoreError> {
        let appends = self.appends.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_appends(self.store.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        appends.send(Append { event, reply }).map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }
}

fn lost() -> StoreError {
    StoreError::Unavailable("the batched writer stopped".into())
}

/// Writes the saves gathered, one batch at a time. A batch whose write panics answers no one
/// (each save sees the writer's error); the next batch is written as usual.
async fn write_saves(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Save>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let _ = AssertUnwindSafe(save_batch(&*store, std::mem::take(&mut batch)))
            .catch_unwind()
            .await;
    }
}

/// One write per epoch and per round of distinct domains: a store write takes a domain at
/// most once (an actor has one save out at a time, so a repeat is rare).
async fn save_batch(store: &dyn Store, mut batch: Vec<Save>) {
    while !batch.is_empty() {
        let epoch = batch[0].epoch;
        let mut seen = HashSet::with_capacity(batch.len());
        let (now, later): (Vec<Save>, Vec<Save>) = batch
            .into_iter()
            .partition(|s| s.epoch == epoch && seen.insert(s.save.domain.clone()));
        batch = later;
        let (saves, replies): (Vec<StateSave>, Vec<Reply<i64>>) =
            now.into_iter().map(|s| (s.save, s.reply)).unzip();
        let answers = store.save_states(saves, epoch).await;
        answer(replies, answers, "saves");
    }
}

/// Sends each waiter its answer, in order. A store that answers a batch short (not what it
/// promises) has every waiter told rather than left waiting; a waiter that stopped waiting
/// (its actor shut down) needs no answer.
fn answer<T>(replies: Vec<Reply<T>>, answers: Vec<Result<T, StoreError>>, what: &str) {
    if answers.len() != replies.len() {
        let e = StoreError::Unavailable(format!("the store answered a batch of {what} short"));
        for reply in replies {
            let _ = reply.send(Err(e.clone()));
        }
        return;
    }
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

async fn write_appends(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Append>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let _ = AssertUnwindSafe(append_batch(&*store, std::mem::take(&mut batch)))
            .catch_unwind()
            .await;
    }
}

async fn append_batch(store: &dyn Store, batch: Vec<Append>) {
    let (events, replies): (Vec<NewEvent>, Vec<Reply<Event>>) =
        batch.into_iter().map(|a| (a.event, a.reply)).unzip();
    let answers = store.append_events(events).await;
    answer(replies, answers, "events");
}
