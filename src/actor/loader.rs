//! Loading in batches: the actors of one store ask a shared [`Loader`] for their domain's state
//! (and, when taking up automation, its unfinished changes); the asks that arrive within a few
//! milliseconds, up to a batch, are answered by one query each for states and changes rather
//! than one per domain. At a start or a takeover with thousands of domains that is a handful of
//! queries instead of thousands, and reading every domain's unfinished changes once per batch
//! instead of once per domain.
//!
//! The queue of asks is unbounded, and bounded by the actors: each has one ask out at a time
//! and waits for its answer (a bounded send kept the wait for room in every waiting actor's
//! future, and at a start every actor waits here at once).

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use mxguard_core::Fqdn;
use tokio::sync::{mpsc, oneshot};

use crate::store::{ChangeIntent, DomainStateRow, Store, StoreError};

/// How long the first ask of a batch waits for others: long enough for actors woken together
/// to join, short next to a store round trip under load.
const WINDOW: Duration = Duration::from_millis(5);
/// Most asks served by one batch (the store splits it further if it must).
const BATCH: usize = 2_000;

/// What a domain's actor gets back: its stored state, and its unfinished changes if it asked.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: Option<DomainStateRow>,
    /// Oldest first; empty unless asked for.
    pub unfinished: Vec<ChangeIntent>,
}

struct Ask {
    domain: Fqdn,
    changes: bool,
    reply: oneshot::Sender<Result<Loaded, StoreError>>,
}

/// One per store, shared by its actors (`actor::Batching`). Its task starts at the first
/// ask and ends when the last holder drops the loader.
pub struct Loader {
    store: Arc<dyn Store>,
    asks: OnceLock<mpsc::UnboundedSender<Ask>>,
}

impl Loader {
    pub fn new(store: Arc<dyn Store>) -> Arc<Loader> {
        Arc::new(Loader {
            store,
            asks: OnceLock::new(),
        })
    }

    /// `domain`'s state, read with the other asks of its batch. A failed batch fails every
    /// ask in it, each with the batch's error.
    pub async fn state(&self, domain: &Fqdn) -> Result<Option<DomainStateRow>, StoreError> {
        Ok(self.ask(domain, false).await?.state)
    }

    /// `domain`'s state and unfinished changes (what taking up automation needs).
    pub async fn recovery(&self, domain: &Fqdn) -> Result<Loaded, StoreError> {
        self.ask(domain, true).await
    }

    async fn ask(&self, domain: &Fqdn, changes: bool) -> Result<Loaded, StoreError> {
        let asks = self.asks.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(collect(self.store.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            domain: domain.clone(),
            changes,
            reply,
        };
        let lost = || StoreError::Unavailable("the state loader stopped".into());
        asks.send(ask).map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }
}

/// Gathers asks into batches and serves one batch at a time: asks arriving while a batch is
/// read wait in the channel and make the next batch, so a busy store sees fewer, larger reads.
async fn collect(store: Arc<dyn Store>, mut asks: mpsc::UnboundedReceiver<Ask>) {
    while let Some(first) = asks.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + WINDOW;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, asks.recv()).await {
                Ok(Some(ask)) => batch.push(ask),
                Ok(None) | Err(_) => break,
            }
        }
        // A batch whose read panics answers no one (each ask sees the loader's error); the
        // next batch is served as usual.
        let _ = AssertUnwindSafe(serve(&*store, batch)).catch_unwind().await;
    }
}

async fn serve(store: &dyn Store, batch: Vec<Ask>) {
    match read(store, &batch).await {
        Ok((states, changes)) => {
            for ask in batch {
                let unfinished = if ask.changes {
                    changes.get(&ask.domain).cloned().unwrap_or_default()
                } else {
                    Vec::new()
                };
                let state = states.get(&ask.domain).cloned();
                // An actor that stopped waiting (shut down) needs no answer.
                let _ = ask.reply.send(Ok(Loaded { state, unfinished }));
            }
        }
        Err(e) => {
            tracing::warn!(asks = batch.len(), error = %e, "cannot load a batch of domain states");
            for ask in batch {
                let _ = ask.reply.send(Err(e.clone()));
            }
        }
    }
}

type Read = (
    HashMap<Fqdn, DomainStateRow>,
    HashMap<Fqdn, Vec<ChangeIntent>>,
);

async fn read(store: &dyn Store, batch: &[Ask]) -> Result<Read, StoreError> {
    let mut seen = HashSet::new();
    let names: Vec<Fqdn> = batch
        .iter()
        .filter(|a| seen.insert(&a.domain))
        .map(|a| a.domain.clone())
        .collect();
    let states = store.load_states(&names).await?;
    let mut seen = HashSet::new();
    let recovering: Vec<Fqdn> = batch
        .iter()
        .filter(|a| a.changes && seen.insert(&a.domain))
        .map(|a| a.domain.clone())
        .collect();
    let mut changes: HashMap<Fqdn, Vec<ChangeIntent>> = HashMap::new();
    if !recovering.is_empty() {
        for c in store.unfinished_changes_for(&recovering).await? {
            changes.entry(c.domain.clone()).or_default().push(c);
        }
    }
    Ok((states, changes))
}
