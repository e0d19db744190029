//! Every query mxguard asks a resolver spends that resolver's budget: one token bucket per
//! resolver address (`[checks] max_qps`, burst 1, so no second holds more than `max_qps`),
//! shared by every prober and by verification, and built once for the process.
//!
//! * A probe round reserves a host's A and AAAA together (two tokens) and waits for them on
//!   the injected clock. The wait is outside each query's own timeout but inside the probe's
//!   deadline: when the tokens would come later than half of the round's deadline the
//!   resolver is not asked, and the round reuses the last good answer or, without one, gets no
//!   evidence from that resolver ([`reuse`](super::reuse)).
//! * Between asks, a host's good answer is reused under the [`reuse`](super::reuse) rules; the
//!   answers are kept here, per resolver and host, so probers that share a host share them.
//! * Verification reserves each query within one poll period, else tries at its next poll: a
//!   mass failover's thousands of propagation checks then queue no further ahead than a poll,
//!   and the probe rounds (which may wait half their deadline) still find tokens.
//!
//! * Background lookups (MTA-STS TXT records and policy hosts, TLSA records, drills: looked at
//!   once per domain at start and at each policy refresh) have a share of their own,
//!   [`BACKGROUND_SHARE`] of `max_qps` (a second bucket per resolver), and take a token of the
//!   resolver's budget only when one is free at that moment, never one promised ahead
//!   ([`SharedDns::background`]). 100,000 domains' first looks then spread over hours of
//!   spare budget rather than crowding out the rounds: with the looks allowed to take every
//!   spare token, the resolvers' buckets stayed empty and each confirmation round waited
//!   for its tokens, which put seconds on a shared host's outage at 100,000 domains.
//!
//! Queries sent and asks skipped for the budget are counted per resolver
//! ([`metrics`](super::metrics)).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mxguard_core::{Clock, Jitter, RateLimit, TokenBucket};

use super::dns::{self, DnsAnswer, DnsClient};
use super::metrics;
use super::reuse::{self, Decision, Last, Rules};
use crate::model::Fqdn;

/// The part of each resolver's `max_qps` that background lookups may take at most.
pub const BACKGROUND_SHARE: f64 = 0.25;
/// How long a background lookup waits before it looks for a free token again (plus up to as
/// much again of jitter, so that waiting lookups do not all come back in the same instant).
const BACKGROUND_RETRY: Duration = Duration::from_millis(100);

/// A host's A and AAAA from one resolver: its addresses and both answers.
pub type Resolution = (Vec<IpAddr>, Vec<DnsAnswer>);

/// The resolvers' budgets and the hosts' last answers, shared by every prober of a process.
#[derive(Clone)]
pub struct SharedDns {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: no budget (the one-shot `check` command, tests of single probes).
    limit: Option<RateLimit>,
    /// The background lookups' share of `limit`.
    share: Option<RateLimit>,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
    buckets: Mutex<HashMap<SocketAddr, Arc<TokenBucket>>>,
    /// The background lookups' share of each resolver's budget.
    background: Mutex<HashMap<SocketAddr, Arc<TokenBucket>>>,
    answers: Mutex<HashMap<(SocketAddr, Fqdn), Remembered>>,
}

/// A resolver's last answer for a host.
#[derive(Clone)]
struct Remembered {
    last: Last,
    resolution: Resolution,
}

/// No budget (as [`SharedDns::unlimited`]): what a one-shot command and a default `Engine`
/// hold.
impl Default for SharedDns {
    fn default() -> Self {
        SharedDns::unlimited()
    }
}

impl std::fmt::Debug for SharedDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDns")
            .field("limit", &self.inner.limit)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only plain inserts and lookups happen under these locks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedDns {
    /// At most `max_qps` queries per second to each resolver, on `clock`; `jitter` spreads the
    /// hosts' first answers' lifetimes.
    pub fn new(max_qps: u32, clock: Arc<dyn Clock>, jitter: Arc<dyn Jitter>) -> SharedDns {
        // max_qps ≥ 1 is validated with the configuration; a zero here means no budget.
        let limit = RateLimit::new(f64::from(max_qps), 1).ok();
        let share = RateLimit::new(f64::from(max_qps) * BACKGROUND_SHARE, 1).ok();
        SharedDns::build(limit, share, clock, jitter)
    }

    /// No budget and nothing reused: every ask is sent at once.
    pub fn unlimited() -> SharedDns {
        SharedDns::build(
            None,
            None,
            Arc::new(mxguard_core::TokioClock),
            Arc::new(mxguard_core::FixedJitter(0.0)),
        )
    }

    fn build(
        limit: Option<RateLimit>,
        share: Option<RateLimit>,
        clock: Arc<dyn Clock>,
        jitter: Arc<dyn Jitter>,
    ) -> Self {
        SharedDns {
            inner: Arc::new(Inner {
                limit,
                share,
                clock,
                jitter,
                buckets: Mutex::default(),
                background: Mutex::default(),
                answers: Mutex::default(),
            }),
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Starts `resolvers`' counters at zero, so that the first query or skip is an increase.
    pub fn register(&self, resolvers: &[SocketAddr]) {
        for r in resolvers {
            metrics::dns_budget_start(*r);
        }
    }

    /// `server`'s bucket in `buckets` at `limit`, made at its first use; `None` without one.
    fn bucket_in(
        &self,
        buckets: &Mutex<HashMap<SocketAddr, Arc<TokenBucket>>>,
        limit: Option<RateLimit>,
        server: SocketAddr,
    ) -> Option<Arc<TokenBucket>> {
        let limit = limit?;
        let mut buckets = lock(buckets);
        let bucket = buckets
            .entry(server)
            .or_insert_with(|| Arc::new(TokenBucket::new(limit, self.inner.clock.clone())));
        Some(bucket.clone())
    }

    fn bucket(&self, server: SocketAddr) -> Option<Arc<TokenBucket>> {
        self.bucket_in(&self.inner.buckets, self.inner.limit, server)
    }

    /// Reserves `n` queries to `server` if they can be sent within `latest`, waits for them and
    /// returns `true`; `false` (and nothing spent) if they would come later.
    pub async fn reserve(&self, server: SocketAddr, n: u32, latest: Duration) -> bool {
        let wait = match self.bucket(server).map(|b| b.reserve(n, latest)) {
            None => Duration::ZERO,
            Some(Ok(wait)) => wait,
            Some(Err(wait)) => {
                tracing::debug!(resolver = %server, ?wait, ?latest, "query budget: not asked this round");
                metrics::dns_skipped(server, n);
                return false;
            }
        };
        if !wait.is_zero() {
            self.inner.clock.sleep(wait).await;
        }
        metrics::dns_sent(server, n);
        true
    }

    /// Waits for `n` queries to `server` within the background share and, for each, a token
    /// of the resolver's budget that is free now, however long that takes (a background lookup
    /// has no deadline; its caller's shutdown or timeout cancels the wait). A round asking
    /// meanwhile waits at most one token's time (`1 / max_qps`) more for it.
    pub async fn background(&self, server: SocketAddr, n: u32) {
        let Some(bucket) = self.bucket(server) else {
            metrics::dns_sent(server, n);
            return;
        };
        if let Some(share) = self.background_bucket(server) {
            loop {
                match share.reserve(n, Duration::from_secs(3600)) {
                    Ok(wait) => {
                        if !wait.is_zero() {
                            self.inner.clock.sleep(wait).await;
                        }
                        break;
                    }
                    Err(wait) => {
                        self.inner
                            .clock
                            .sleep(wait.min(Duration::from_secs(3600)))
                            .await
                    }
                }
            }
        }
        for _ in 0..n {
            while bucket.reserve(1, Duration::ZERO).is_err() {
                let again = BACKGROUND_RETRY.mul_f64(1.0 + self.inner.jitter.fraction());
                self.inner.clock.sleep(again).await;
            }
        }
        metrics::dns_sent(server, n);
    }

    fn background_bucket(&self, server: SocketAddr) -> Option<Arc<TokenBucket>> {
        self.bucket_in(&self.inner.background, self.inner.share, server)
    }

    /// `host`'s A and AAAA from `client`'s resolver for a round: reused or asked under `rules`
    /// (a `confirmation` round always asks), the ask waiting at most `latest` for the budget.
    /// Reused answers are marked [`DnsAnswer::reused`]. `None`: the budget refused the ask and
    /// no good answer stands in — no evidence either way.
    pub async fn resolve(
        &self,
        client: &DnsClient,
        host: &Fqdn,
        rules: &Rules,
        confirmation: bool,
        latest: Duration,
    ) -> Option<Resolution> {
        let key = (client.server, host.clone());
        let remembered = lock(&self.inner.answers).get(&key).cloned();
        let last = remembered.as_ref().map(|r| r.last);
        let now = self.inner.clock.now();
        if reuse::decide(last.as_ref(), now, rules, confirmation) == Decision::Reuse {
            return remembered.map(reused);
        }
        if !self.reserve(client.server, 2, latest).await {
            return remembered
                .filter(|r| reuse::fallback(Some(&r.last)))
                .map(reused);
        }
        let asked_at = self.inner.clock.now();
        let resolution = dns::resolve_addresses(client, host).await;
        let good = reuse::good(&resolution.1);
        // A host's first good answer lives a random part of its lifetime (see `reuse`).
        let first = !last.is_some_and(|l| l.good);
        let spread = if good && first {
            // in (0, 1]: a lifetime of zero would ask again at once
            1.0 - self.inner.jitter.fraction()
        } else {
            1.0
        };
        let entry = Remembered {
            last: Last {
                asked_at,
                good,
                ttl: reuse::ttl(&resolution.1),
                spread,
            },
            resolution: resolution.clone(),
        };
        lock(&self.inner.answers).insert(key, entry);
        Some(resolution)
    }
}

fn reused(r: Remembered) -> Resolution {
    let (addrs, mut answers) = r.resolution;
    for a in &mut answers {
        a.reused = true;
    }
    (addrs, answers)
}

#[cfg(test)]
mod tests;
