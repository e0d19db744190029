//! Reads of one zone asked together, answered by one listing of the zone.
//!
//! At a start (or a takeover) every domain asks what its provider publishes before it can act,
//! and with thousands of domains in one zone those are thousands of reads through one
//! account's budget: minutes, while one listing of the zone (an AXFR, a few pages of a REST
//! listing) answers all of them. [`Coalescing`] wraps a provider; its `read` gathers the asks of
//! one zone for a short window and then
//!
//! * when the asks cost more than a listing would ([`DnsProvider::list_cost`] of the zone's
//!   size, learnt from its last listing; before any, at least [`FIRST_LISTING_ASKS`] asks),
//!   lists the zone once and answers each ask with its own keys out of it;
//! * otherwise sends each ask as its own read, side by side, at most [`READS_IN_FLIGHT`] of a
//!   zone at once; asks beyond that wait with the next window's, so a backlog that the
//!   provider's rate limit would queue (100,000 domains starting while each read waits its
//!   turn) grows into a batch worth a listing instead of minutes of reads.
//!
//! Rules:
//! * An answer is never older than its ask: a listing starts after every ask it answers.
//! * At most one listing of a zone is in flight; asks arriving meanwhile wait for it to end
//!   and are answered by the next batch (one listing however long the first took).
//! * Listing is an optimisation, never a new way to fail: when a listing fails, its asks are
//!   sent as reads (which fail, and are retried, as reads always did). One that fails for a
//!   passing reason (a timeout — a zone too large to list within the deadline —, a 5xx, a rate
//!   limit) is not tried again for [`LIST_BACKOFF`]; one the provider refuses (`Auth`,
//!   `NotFound`, `Rejected`: an AXFR the key may not make) never again for that zone.
//! * A caller that stops waiting does not stop the batch.
//!
//! Everything else (`apply`, `list_zone`, …) goes straight to the inner provider.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::{
    Capabilities, ChangeSet, Clock, DnsProvider, Fence, Fqdn, ProviderError, RecordSet, RrsetKey,
};

/// Asks of one zone, in one window, that make the first listing worth it.
pub const FIRST_LISTING_ASKS: usize = 16;

/// Reads of one zone sent on their own at once; later asks wait in the batch (see the module).
pub const READS_IN_FLIGHT: usize = 8;

/// How long a zone whose listing failed for a passing reason is read one RRset set at a time.
pub const LIST_BACKOFF: Duration = Duration::from_secs(300);

type Reply = oneshot::Sender<Result<Vec<RecordSet>, ProviderError>>;

struct Ask {
    keys: Vec<RrsetKey>,
    reply: Reply,
}

#[derive(Default)]
struct ZoneReads {
    waiting: Vec<Ask>,
    /// A batch is being gathered or a listing served: its task answers `waiting` next.
    busy: bool,
    /// RRsets in the zone's last listing.
    size: Option<usize>,
    /// The provider refused to list the zone (an AXFR not allowed for the key, say): reads
    /// only, from then on.
    refused: bool,
    /// A listing failed for a passing reason: reads only until then.
    backoff_until: Option<std::time::Instant>,
    /// Reads of this zone sent on their own and not answered yet.
    reading: usize,
}

/// A provider whose reads of one zone, asked together, are answered by one listing.
pub struct Coalescing {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<dyn DnsProvider>,
    clock: Arc<dyn Clock>,
    window: Duration,
    zones: Mutex<HashMap<Fqdn, ZoneReads>>,
}

impl Shared {
    fn zones(&self) -> std::sync::MutexGuard<'_, HashMap<Fqdn, ZoneReads>> {
        // Only plain bookkeeping happens under the lock; a panic there leaves it usable.
        self.zones.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gathers and answers batches of `zone` until one window passes with no ask.
    async fn serve(self: Arc<Self>, zone: Fqdn) {
        loop {
            self.clock.sleep(self.window).await;
            let listing = {
                let mut zones = self.zones();
                let z = zones.entry(zone.clone()).or_default();
                if z.waiting.is_empty() {
                    z.busy = false;
                    return;
                }
                // `None`: not to be listed (refused, or backing off); `Some(None)`: never
                // listed yet.
                let size = (!z.refused && z.backoff_until.is_none_or(|t| self.clock.now() >= t))
                    .then_some(z.size);
                if size.is_some_and(|size| self.worth_listing(&z.waiting, size)) {
                    Some(std::mem::take(&mut z.waiting))
                } else {
                    None
                }
            };
            match listing {
                Some(batch) => {
                    // In a task of its own, so that a provider client that panics fails this
                    // batch (its asks see their answer dropped) and not every later read.
                    let (this, zone) = (self.clone(), zone.clone());
                    let _ =
                        tokio::spawn(async move { this.answer_from_listing(&zone, batch).await })
                            .await;
                }
                None => self.read_some(&zone),
            }
        }
    }

    /// Sends waiting asks as reads of their own, side by side and without waiting for them,
    /// while fewer than [`READS_IN_FLIGHT`] of the zone are; the rest keep waiting.
    fn read_some(self: &Arc<Self>, zone: &Fqdn) {
        let asks: Vec<Ask> = {
            let mut zones = self.zones();
            let z = zones.entry(zone.clone()).or_default();
            let room = READS_IN_FLIGHT
                .saturating_sub(z.reading)
                .min(z.waiting.len());
            z.reading += room;
            z.waiting.drain(..room).collect()
        };
        for ask in asks {
            let (this, zone) = (self.clone(), zone.clone());
            tokio::spawn(async move {
                // Counted down however the read ends (a panicking client included).
                let _done = ReadDone(&this, &zone);
                let _ = ask.reply.send(this.inner.read(&zone, &ask.keys).await);
            });
        }
    }

    fn worth_listing(&self, batch: &[Ask], size: Option<usize>) -> bool {
        match size {
            None => batch.len() >= FIRST_LISTING_ASKS,
            Some(size) => {
                let reads: u64 = batch
                    .iter()
                    .map(|a| u64::from(self.inner.read_cost(&a.keys)))
                    .sum();
                batch.len() > 1 && reads > u64::from(self.inner.list_cost(size))
            }
        }
    }

    /// Puts a failed listing's asks back at the head of the queue, to be read one by one.
    fn requeue(&self, zone: &Fqdn, batch: Vec<Ask>) {
        let mut zones = self.zones();
        let z = zones.entry(zone.clone()).or_default();
        let later = std::mem::replace(&mut z.waiting, batch);
        z.waiting.extend(later);
    }

    async fn answer_from_listing(&self, zone: &Fqdn, batch: Vec<Ask>) {
        match self.inner.list_zone(zone).await {
            Ok(sets) => {
                if let Some(z) = self.zones().get_mut(zone) {
                    z.size = Some(sets.len());
                }
                let by_key: BTreeMap<RrsetKey, RecordSet> =
                    sets.into_iter().map(|s| (RrsetKey::of(&s), s)).collect();
                for ask in batch {
                    let mine = ask
                        .keys
                        .iter()
                        .filter_map(|k| by_key.get(k).cloned())
                        .collect();
                    let _ = ask.reply.send(Ok(mine));
                }
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(provider = %self.inner.name(), %zone, error = %e, "listing the zone failed; its domains are read one by one for {}s", LIST_BACKOFF.as_secs());
                let until = self.clock.now() + LIST_BACKOFF;
                self.zones().entry(zone.clone()).or_default().backoff_until = Some(until);
                self.requeue(zone, batch);
            }
            Err(e) => {
                tracing::warn!(provider = %self.inner.name(), %zone, error = %e, "the provider refuses to list the zone; reading each domain's records on its own");
                self.zones().entry(zone.clone()).or_default().refused = true;
                self.requeue(zone, batch);
            }
        }
    }
}

/// Counts a zone's read as answered when dropped.
struct ReadDone<'a>(&'a Shared, &'a Fqdn);

impl Drop for ReadDone<'_> {
    fn drop(&mut self) {
        if let Some(z) = self.0.zones().get_mut(self.1) {
            z.reading = z.reading.saturating_sub(1);
        }
    }
}

impl Coalescing {
    /// Wraps `inner`; asks of one zone within `window` of the first are answered together.
    pub fn new(inner: Arc<dyn DnsProvider>, clock: Arc<dyn Clock>, window: Duration) -> Self {
        Coalescing {
            shared: Arc::new(Shared {
                inner,
                clock,
                window,
                zones: Mutex::new(HashMap::new()),
            }),
        }
    }
}

#[async_trait]
impl DnsProvider for Coalescing {
    fn name(&self) -> &str {
        self.shared.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.inner.capabilities()
    }

    fn request_rate(&self) -> Option<f64> {
        self.shared.inner.request_rate()
    }

    fn read_cost(&self, keys: &[RrsetKey]) -> u32 {
        self.shared.inner.read_cost(keys)
    }

    fn list_cost(&self, rrsets: usize) -> u32 {
        self.shared.inner.list_cost(rrsets)
    }

    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut zones = self.shared.zones();
            let z = zones.entry(zone.clone()).or_default();
            z.waiting.push(Ask {
                keys: keys.to_vec(),
                reply,
            });
            !std::mem::replace(&mut z.busy, true)
        };
        if lead {
            // A task of its own: the batch is answered even if this caller stops waiting.
            tokio::spawn(self.shared.clone().serve(zone.clone()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(ProviderError::Transient(
                "the shared read of the zone ended without an answer".into(),
            ))
        })
    }

    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        self.shared.inner.list_zone(zone).await
    }

    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        self.shared.inner.apply(zone, changes).await
    }

    async fn apply_fenced(
        &self,
        zone: &Fqdn,
        changes: &ChangeSet,
        fence: &dyn Fence,
    ) -> Result<(), ProviderError> {
        self.shared.inner.apply_fenced(zone, changes, fence).await
    }
}

#[cfg(test)]
mod tests;
