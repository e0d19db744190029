//! [`Guarded`]: wraps any [`DnsProvider`] in the shared machinery — admission to the account
//! ([`Gate`]: a few operations at a time, changes before background reads), the account's
//! token bucket, retries with backoff inside a deadline, and one change in flight per zone.
//! The service hands `Arc::new(Guarded::new(provider, …))` to the actors, and
//! [`Guarded::background`] to the periodic reconcile; provider crates stay free of retry loops.

use std::sync::Arc;

use async_trait::async_trait;

use crate::gate::{Gate, Priority};
use crate::ratelimit::TokenBucket;
use crate::retry::Retrier;
use crate::zonelock::ZoneLocks;
use crate::{
    Capabilities, ChangeSet, DnsProvider, Fence, Fqdn, ProviderError, RecordSet, RrsetKey,
};

pub struct Guarded<P> {
    shared: Arc<Shared<P>>,
    priority: Priority,
}

struct Shared<P> {
    inner: P,
    bucket: Arc<TokenBucket>,
    retrier: Retrier,
    zones: ZoneLocks,
    gate: Arc<Gate>,
}

impl<P: DnsProvider> Guarded<P> {
    /// `bucket` is the account's: share it between every `Guarded` on the same account. No
    /// admission limit: see [`Guarded::with_gate`].
    pub fn new(inner: P, bucket: Arc<TokenBucket>, retrier: Retrier) -> Self {
        // The gate times a provider's lockout on the retrier's clock, as the retries are.
        let gate = Gate::with_clock(usize::MAX, retrier.clock().clone());
        Guarded::with_gate(inner, bucket, retrier, gate)
    }

    /// As [`Guarded::new`], admitting operations through `gate`. The wait at the gate is
    /// outside the retry deadline: nothing has been sent yet, so giving up there would be
    /// needless, and the outcome of an operation that never started is never "unknown".
    pub fn with_gate(
        inner: P,
        bucket: Arc<TokenBucket>,
        retrier: Retrier,
        gate: Arc<Gate>,
    ) -> Self {
        Guarded {
            shared: Arc::new(Shared {
                inner,
                bucket,
                retrier,
                zones: ZoneLocks::new(),
                gate,
            }),
            priority: Priority::Change,
        }
    }

    /// The same provider (same gate, bucket and zone locks) for periodic reads: admitted only
    /// when no change's operation is waiting.
    pub fn background(&self) -> Guarded<P> {
        Guarded {
            shared: self.shared.clone(),
            priority: Priority::Background,
        }
    }

    pub fn inner(&self) -> &P {
        &self.shared.inner
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.shared.gate
    }
}

/// The same client at the same priority, sharing everything (gate, bucket, zone locks).
impl<P> Clone for Guarded<P> {
    fn clone(&self) -> Self {
        Guarded {
            shared: self.shared.clone(),
            priority: self.priority,
        }
    }
}

impl<P> std::fmt::Debug for Guarded<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("bucket", &self.shared.bucket)
            .field("retrier", &self.shared.retrier)
            .field("gate", &self.shared.gate.limit())
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<P: DnsProvider> DnsProvider for Guarded<P> {
    fn name(&self) -> &str {
        self.shared.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.inner.capabilities()
    }

    fn request_rate(&self) -> Option<f64> {
        let own = self.shared.bucket.limit().per_second();
        Some(self.shared.inner.request_rate().map_or(own, |r| r.min(own)))
    }

    fn read_cost(&self, keys: &[RrsetKey]) -> u32 {
        self.shared.inner.read_cost(keys)
    }

    fn list_cost(&self, rrsets: usize) -> u32 {
        self.shared.inner.list_cost(rrsets)
    }

    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        let s = &self.shared;
        self.admitted("read", None, || s.inner.read(zone, keys))
            .await
    }

    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        let s = &self.shared;
        self.admitted("list_zone", None, || s.inner.list_zone(zone))
            .await
    }

    /// Waits for any other change to `zone` to finish (the wait is bounded by that change's
    /// own deadline), then for admission, then applies with retries. Prerequisites
    /// (`expected`) make a retried apply safe: if the first attempt did land, the retry is
    /// `Rejected` and the next reconcile reads the converged state. The zone lock comes
    /// before the gate, so nothing holding a place at the gate ever waits for a zone.
    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        self.guarded_apply(zone, changes, None).await
    }

    /// As [`Guarded::apply`], with `fence` checked after the zone lock, the gate and the
    /// bucket — immediately before each attempt — so time spent waiting can never carry a
    /// write past the moment its writer lost the right to make it. A refusal is not retried.
    async fn apply_fenced(
        &self,
        zone: &Fqdn,
        changes: &ChangeSet,
        fence: &dyn Fence,
    ) -> Result<(), ProviderError> {
        self.guarded_apply(zone, changes, Some(fence)).await
    }
}

/// Lockouts one operation waits out before it gives up (each one the provider's own word).
const MAX_LOCKOUTS: u32 = 3;

/// A refusal that says how long to wait: waited out at admission, never inside a deadline.
fn is_lockout(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::RateLimited {
            retry_after: Some(_)
        }
    )
}

impl<P: DnsProvider> Guarded<P> {
    async fn guarded_apply(
        &self,
        zone: &Fqdn,
        changes: &ChangeSet,
        fence: Option<&dyn Fence>,
    ) -> Result<(), ProviderError> {
        let s = &self.shared;
        let _in_flight = s.zones.lock(zone).await;
        tracing::debug!(provider = s.inner.name(), %zone, changes = changes.changes.len(), "applying");
        self.admitted("apply", fence, || async move {
            if let Some(f) = fence {
                f.check().await.map_err(ProviderError::Fenced)?;
            }
            s.inner.apply(zone, changes).await
        })
        .await
    }

    /// Runs `op` once admitted, with retries inside the deadline. A lockout the provider
    /// announced (a rate limit with `retry_after`) closes the account's gate: nothing of the
    /// account is sent before it ends, and an operation it caught goes back to the gate to wait
    /// it out there, outside its deadline (nothing was sent), instead of failing at the
    /// deadline and being retried from scratch.
    async fn admitted<T, F, Fut>(
        &self,
        what: &str,
        fence: Option<&dyn Fence>,
        mut op: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let s = &self.shared;
        let mut lockouts = 0;
        loop {
            if let (Some(f), Some(left)) = (fence, s.gate.closed_for()) {
                f.waiting(std::time::SystemTime::now() + left).await;
            }
            let pass = s.gate.enter(self.priority).await;
            let result = s
                .retrier
                .run_handing_back(
                    what,
                    || {
                        let attempt = op();
                        async move {
                            if let Some(left) = s.gate.closed_for() {
                                return Err(ProviderError::RateLimited {
                                    retry_after: Some(left),
                                });
                            }
                            s.bucket.acquire().await;
                            let result = attempt.await;
                            if let Err(ProviderError::RateLimited {
                                retry_after: Some(after),
                            }) = &result
                            {
                                s.gate
                                    .close_for((*after).min(crate::retry::MAX_RETRY_AFTER));
                            }
                            result
                        }
                    },
                    is_lockout,
                )
                .await;
            drop(pass);
            match result {
                Err(ProviderError::RateLimited { .. })
                    if lockouts < MAX_LOCKOUTS && s.gate.closed_for().is_some() =>
                {
                    lockouts += 1;
                    tracing::info!(provider = s.inner.name(), what, wait = ?s.gate.closed_for(), "the provider's lockout: waiting for it at admission");
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock, TokioClock};
    use crate::gate::{Gate, Priority};
    use crate::jitter::FixedJitter;
    use crate::ratelimit::RateLimit;
    use crate::retry::RetryPolicy;

    /// Counts overlapping applies per call and fails the first `fail_first` calls.
    struct Probe {
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        calls: AtomicUsize,
        fail_first: usize,
        log: Mutex<Vec<&'static str>>,
        /// The first apply is refused with this lockout.
        locked_out_once: Mutex<Option<Duration>>,
    }

    impl Probe {
        fn new(fail_first: usize) -> Self {
            Probe {
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
                fail_first,
                log: Mutex::new(Vec::new()),
                locked_out_once: Mutex::new(None),
            }
        }
    }

    #[async_trait]
    impl DnsProvider for Probe {
        fn name(&self) -> &str {
            "probe"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                min_ttl: 0,
                max_ttl: crate::Ttl::MAX,
                max_changes_per_request: 10,
                atomic: true,
                zone_listing: false,
            }
        }
        async fn read(&self, _: &Fqdn, _: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
            self.log.lock().unwrap().push("read");
            Ok(Vec::new())
        }
        async fn list_zone(&self, _: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
            Err(ProviderError::NotFound("no listing".into()))
        }
        async fn apply(&self, _: &Fqdn, _: &ChangeSet) -> Result<(), ProviderError> {
            self.log.lock().unwrap().push("apply");
            if let Some(after) = self.locked_out_once.lock().unwrap().take() {
                return Err(ProviderError::RateLimited {
                    retry_after: Some(after),
                });
            }
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            // stay in flight across a few scheduler turns so overlap would show
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                return Err(ProviderError::Transient(format!("flaky call {n}")));
            }
            Ok(())
        }
    }

    fn guarded(probe: Probe, clock: Arc<dyn Clock>, limit: RateLimit) -> Arc<Guarded<Probe>> {
        build(probe, clock, limit, Gate::new(usize::MAX))
    }

    fn build(
        probe: Probe,
        clock: Arc<dyn Clock>,
        limit: RateLimit,
        gate: Arc<Gate>,
    ) -> Arc<Guarded<Probe>> {
        let bucket = Arc::new(TokenBucket::new(limit, Arc::clone(&clock)));
        let retrier = Retrier::new(
            RetryPolicy {
                max_attempts: 4,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                deadline: Duration::from_secs(10),
            },
            clock,
            Arc::new(FixedJitter(0.0)),
        );
        Arc::new(Guarded::with_gate(probe, bucket, retrier, gate))
    }

    fn zone(s: &str) -> Fqdn {
        Fqdn::parse(s).unwrap()
    }

    /// Allows the first `allow` checks, refuses the rest.
    struct CountingFence {
        checks: AtomicUsize,
        allow: usize,
    }

    #[async_trait]
    impl Fence for CountingFence {
        async fn check(&self) -> Result<(), String> {
            let n = self.checks.fetch_add(1, Ordering::SeqCst);
            if n < self.allow {
                Ok(())
            } else {
                Err("lease lost".into())
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fence_is_checked_after_waiting_for_the_zone_and_before_every_attempt() {
        let limit = RateLimit::new(1e6, 1000).unwrap();
        // the first attempt fails (transient); the fence allowed it, then refuses the retry
        let g = guarded(Probe::new(1), Arc::new(TokioClock), limit);
        let fence = CountingFence {
            checks: AtomicUsize::new(0),
            allow: 1,
        };
        let got = g
            .apply_fenced(&zone("a.example"), &ChangeSet::default(), &fence)
            .await;
        assert_eq!(got, Err(ProviderError::Fenced("lease lost".into())));
        assert_eq!(g.inner().calls.load(Ordering::SeqCst), 1, "no retry sent");
        assert_eq!(fence.checks.load(Ordering::SeqCst), 2);

        // a writer that lost its lease while it waited for the zone sends nothing
        let g = guarded(Probe::new(0), Arc::new(TokioClock), limit);
        let held = g.shared.zones.lock(&zone("a.example")).await;
        let refused = CountingFence {
            checks: AtomicUsize::new(0),
            allow: 0,
        };
        let waiting = {
            let g = Arc::clone(&g);
            tokio::spawn(async move {
                g.apply_fenced(&zone("a.example"), &ChangeSet::default(), &refused)
                    .await
            })
        };
        // still waiting for the zone: nothing checked yet, nothing sent
        tokio::task::yield_now().await;
        assert_eq!(g.inner().calls.load(Ordering::SeqCst), 0);
        drop(held);
        let got = waiting.await.unwrap();
        assert!(matches!(got, Err(ProviderError::Fenced(_))), "{got:?}");
        assert_eq!(g.inner().calls.load(Ordering::SeqCst), 0, "nothing sent");
        assert!(!got.unwrap_err().is_retryable());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applies_to_one_zone_never_overlap_but_other_zones_do() {
        let limit = RateLimit::new(1e6, 1000).unwrap();
        let g = guarded(Probe::new(0), Arc::new(TokioClock), limit);
        let mut tasks = Vec::new();
        for i in 0..8 {
            let g = Arc::clone(&g);
            tasks.push(tokio::spawn(async move {
                let z = if i % 2 == 0 { "a.example" } else { "A.example" };
                g.apply(&zone(z), &ChangeSet::default()).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(()));
        }
        assert_eq!(g.inner().calls.load(Ordering::SeqCst), 8);
        assert_eq!(g.inner().max_in_flight.load(Ordering::SeqCst), 1);

        let g2 = guarded(Probe::new(0), Arc::new(TokioClock), limit);
        let (za, zb, empty) = (zone("a.example"), zone("b.example"), ChangeSet::default());
        let (a, b) = tokio::join!(g2.apply(&za, &empty), g2.apply(&zb, &empty));
        assert_eq!((a, b), (Ok(()), Ok(())));
        assert_eq!(g2.inner().max_in_flight.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn retries_transient_failures_of_the_inner_provider() {
        let clock = ManualClock::new();
        let limit = RateLimit::new(1000.0, 10).unwrap();
        let g = guarded(Probe::new(2), Arc::new(clock.clone()), limit);
        let out = clock
            .drive(g.apply(&zone("example.com"), &ChangeSet::default()))
            .await;
        assert_eq!(out, Ok(()));
        assert_eq!(g.inner().calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn every_call_spends_a_token_from_the_account_bucket() {
        let clock = ManualClock::new();
        let limit = RateLimit::new(1.0, 2).unwrap();
        let g = guarded(Probe::new(0), Arc::new(clock.clone()), limit);
        let z = zone("example.com");
        clock
            .drive(async {
                for _ in 0..4 {
                    g.read(&z, &[]).await.unwrap();
                }
            })
            .await;
        assert_eq!(g.inner().log.lock().unwrap().len(), 4);
        assert_eq!(
            clock.elapsed(),
            Duration::from_secs(2),
            "2 from the burst, 2 paced at 1/s"
        );
    }

    fn gated(probe: Probe, clock: Arc<dyn Clock>, places: usize) -> Arc<Guarded<Probe>> {
        build(
            probe,
            clock,
            RateLimit::new(1e6, 1000).unwrap(),
            Gate::new(places),
        )
    }

    #[tokio::test]
    async fn the_wait_for_admission_is_not_part_of_the_deadline() {
        let clock = ManualClock::new();
        let g = gated(Probe::new(0), Arc::new(clock.clone()), 1);
        let held = g.gate().enter(Priority::Change).await;
        let waiting = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.apply(&zone("example.com"), &ChangeSet::default()).await })
        };
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            g.gate().occupancy(),
            (1, 1, 0),
            "the apply waits at the gate"
        );
        // three deadlines pass while it waits; nothing was sent, so nothing is given up
        clock.advance(Duration::from_secs(30));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        drop(held);
        // (awaited without driving the clock: the probe's apply yields, which `drive` would
        // take for idleness and jump to the deadline)
        let out = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the apply ran once admitted")
            .expect("task");
        assert_eq!(out, Ok(()));
        assert_eq!(g.inner().calls.load(Ordering::SeqCst), 1);
    }

    /// Notes when the writer is told it waits for a lockout.
    #[derive(Default)]
    struct NotingFence {
        waits: Mutex<Vec<std::time::SystemTime>>,
    }

    #[async_trait]
    impl Fence for NotingFence {
        async fn check(&self) -> Result<(), String> {
            Ok(())
        }
        async fn waiting(&self, until: std::time::SystemTime) {
            self.waits.lock().unwrap().push(until);
        }
    }

    #[tokio::test]
    async fn a_lockout_is_waited_out_at_the_gate_not_against_the_deadline() {
        let clock = ManualClock::new();
        let probe = Probe::new(0);
        *probe.locked_out_once.lock().unwrap() = Some(Duration::from_secs(300));
        let gate = Gate::with_clock(4, Arc::new(clock.clone()));
        let limit = RateLimit::new(1e6, 1000).unwrap();
        // a deadline of 10 s: the 300 s lockout is thirty of them
        let g = build(probe, Arc::new(clock.clone()), limit, gate);
        let fence = Arc::new(NotingFence::default());
        let change = {
            let (g, fence) = (Arc::clone(&g), Arc::clone(&fence));
            tokio::spawn(async move {
                g.apply_fenced(&zone("example.com"), &ChangeSet::default(), &*fence)
                    .await
            })
        };
        let settle = || async {
            for _ in 0..200 {
                tokio::task::yield_now().await;
            }
        };
        settle().await;
        assert_eq!(g.inner().log.lock().unwrap().as_slice(), ["apply"]);
        assert_eq!(g.gate().closed_for(), Some(Duration::from_secs(300)));
        assert_eq!(fence.waits.lock().unwrap().len(), 1, "the writer is told");
        // every call of the account waits, and sends nothing meanwhile
        let read = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.read(&zone("example.com"), &[]).await })
        };
        clock.advance(Duration::from_secs(299));
        settle().await;
        assert!(!change.is_finished() && !read.is_finished());
        assert_eq!(g.inner().log.lock().unwrap().as_slice(), ["apply"]);
        clock.advance(Duration::from_secs(1));
        let out = tokio::time::timeout(Duration::from_secs(10), change)
            .await
            .expect("the change goes once the lockout ends")
            .expect("task");
        assert_eq!(out, Ok(()), "not given up at the deadline");
        let read = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the read goes too")
            .expect("task");
        assert!(read.is_ok());
        // the change went first: it queued at the gate before the read
        assert_eq!(
            g.inner().log.lock().unwrap().as_slice(),
            ["apply", "apply", "read"]
        );
    }

    #[tokio::test]
    async fn background_reads_wait_behind_a_change_and_share_its_gate() {
        let g = gated(Probe::new(0), Arc::new(TokioClock), 1);
        let bg = g.background();
        let held = g.gate().enter(Priority::Background).await;
        let read = tokio::spawn(async move { bg.read(&zone("example.com"), &[]).await });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let apply = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.apply(&zone("example.com"), &ChangeSet::default()).await })
        };
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(g.gate().occupancy(), (1, 1, 1));
        drop(held);
        assert_eq!(apply.await.expect("task"), Ok(()));
        assert_eq!(read.await.expect("task"), Ok(Vec::new()));
        assert_eq!(
            *g.inner().log.lock().unwrap(),
            vec!["apply", "read"],
            "the change went first although the read queued earlier"
        );
    }
}
