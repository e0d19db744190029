//! [`Guarded`]: wraps any [`DnsProvider`] in the shared machinery — the account's token
//! bucket, retries with backoff inside a deadline, and one change in flight per zone. The
//! service hands `Arc::new(Guarded::new(provider, …))` to the actors; provider crates stay
//! free of retry loops.

use std::sync::Arc;

use async_trait::async_trait;

use crate::ratelimit::TokenBucket;
use crate::retry::Retrier;
use crate::zonelock::ZoneLocks;
use crate::{Capabilities, ChangeSet, DnsProvider, Fqdn, ProviderError, RecordSet, RrsetKey};

pub struct Guarded<P> {
    inner: P,
    bucket: Arc<TokenBucket>,
    retrier: Retrier,
    zones: ZoneLocks,
}

impl<P: DnsProvider> Guarded<P> {
    /// `bucket` is the account's: share it between every `Guarded` on the same account.
    pub fn new(inner: P, bucket: Arc<TokenBucket>, retrier: Retrier) -> Self {
        Guarded {
            inner,
            bucket,
            retrier,
            zones: ZoneLocks::new(),
        }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P> std::fmt::Debug for Guarded<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("bucket", &self.bucket)
            .field("retrier", &self.retrier)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<P: DnsProvider> DnsProvider for Guarded<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        self.retrier
            .run("read", || async {
                self.bucket.acquire().await;
                self.inner.read(zone, keys).await
            })
            .await
    }

    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        self.retrier
            .run("list_zone", || async {
                self.bucket.acquire().await;
                self.inner.list_zone(zone).await
            })
            .await
    }

    /// Waits for any other change to `zone` to finish (the wait is bounded by that change's
    /// own deadline), then applies with retries. Prerequisites (`expected`) make a retried
    /// apply safe: if the first attempt did land, the retry is `Rejected` and the next
    /// reconcile reads the converged state.
    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        let _in_flight = self.zones.lock(zone).await;
        tracing::debug!(provider = self.inner.name(), %zone, changes = changes.changes.len(), "applying");
        self.retrier
            .run("apply", || async {
                self.bucket.acquire().await;
                self.inner.apply(zone, changes).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock, TokioClock};
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
    }

    impl Probe {
        fn new(fail_first: usize) -> Self {
            Probe {
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
                fail_first,
                log: Mutex::new(Vec::new()),
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
        Arc::new(Guarded::new(probe, bucket, retrier))
    }

    fn zone(s: &str) -> Fqdn {
        Fqdn::parse(s).unwrap()
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
}
