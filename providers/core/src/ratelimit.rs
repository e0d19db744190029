//! A client-side token bucket per provider account, so mxguard stays under a provider's
//! published request rate instead of learning it from 429s (a Cloudflare 429 on the batch
//! endpoint locks the token out for minutes).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::gate::Gate;

/// `per_second` requests on average, with bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    per_second: f64,
    burst: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate must be a positive, finite number of requests per second, got {0}")]
    Rate(f64),
    #[error("burst must be at least 1 request")]
    Burst,
}

impl RateLimit {
    pub fn new(per_second: f64, burst: u32) -> Result<Self, RateLimitError> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(RateLimitError::Rate(per_second));
        }
        if burst == 0 {
            return Err(RateLimitError::Burst);
        }
        Ok(RateLimit { per_second, burst })
    }

    /// `requests` per `period`, bursting to `burst` (e.g. Cloudflare: 1200 per 5 minutes).
    pub fn per_period(requests: u32, period: Duration, burst: u32) -> Result<Self, RateLimitError> {
        RateLimit::new(f64::from(requests) / period.as_secs_f64(), burst)
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// A token bucket on an injected clock. Starts full. Share one (`Arc`) between every provider
/// instance that spends the same account's quota.
pub struct TokenBucket {
    limit: RateLimit,
    clock: Arc<dyn Clock>,
    state: Mutex<BucketState>,
}

struct BucketState {
    tokens: f64,
    refilled_at: Instant,
}

impl std::fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl TokenBucket {
    pub fn new(limit: RateLimit, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        TokenBucket {
            limit,
            clock,
            state: Mutex::new(BucketState {
                tokens: f64::from(limit.burst),
                refilled_at: now,
            }),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token now, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let earned =
            now.saturating_duration_since(s.refilled_at).as_secs_f64() * self.limit.per_second;
        s.tokens = (s.tokens + earned).min(f64::from(self.limit.burst));
        s.refilled_at = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - s.tokens;
        // round up to whole microseconds so the wait is never a hair too short
        let micros = (missing / self.limit.per_second * 1e6).ceil();
        Err(Duration::from_micros(micros as u64))
    }

    /// Reserves `n` tokens if they are all available within `latest`: `Ok(wait)` says how long
    /// to wait before spending them (they are taken now, so later callers queue behind), and
    /// `Err(wait)` when they would come later than `latest` (nothing is taken). Unlike
    /// [`acquire`](TokenBucket::acquire), a caller with a deadline learns at once whether it
    /// can make it, and callers are served in the order they reserved.
    pub fn reserve(&self, n: u32, latest: Duration) -> Result<Duration, Duration> {
        let now = self.clock.now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let earned =
            now.saturating_duration_since(s.refilled_at).as_secs_f64() * self.limit.per_second;
        s.tokens = (s.tokens + earned).min(f64::from(self.limit.burst));
        s.refilled_at = now;
        let missing = f64::from(n) - s.tokens;
        let wait = if missing <= 0.0 {
            Duration::ZERO
        } else {
            // round up to whole microseconds so the wait is never a hair too short
            Duration::from_micros((missing / self.limit.per_second * 1e6).ceil() as u64)
        };
        if wait > latest {
            return Err(wait);
        }
        // Tokens go below zero: what later callers see as already promised.
        s.tokens -= f64::from(n);
        Ok(wait)
    }

    /// Never more than `remaining` tokens: what the provider says is left of the account's
    /// quota (other clients of the same account spend it too).
    pub fn cap(&self, remaining: u32) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.tokens = s.tokens.min(f64::from(remaining));
    }

    /// Waits (on the injected clock) until a token is available and takes it.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire() {
                Ok(()) => return,
                Err(wait) => {
                    tracing::debug!(?wait, "rate limit: waiting for a token");
                    self.clock.sleep(wait).await;
                }
            }
        }
    }
}

/// One account's request budget, shared by every provider entry that spends it (Cloudflare
/// counts per user or per account, not per token): the client's pacing and the admission gate,
/// which closes while the provider locks the account out.
#[derive(Clone, Debug)]
pub struct Budget {
    name: String,
    bucket: Arc<TokenBucket>,
    gate: Arc<Gate>,
}

impl Budget {
    /// `limit` pacing, `places` operations admitted at once, on `clock`.
    pub fn new(name: &str, limit: RateLimit, places: usize, clock: Arc<dyn Clock>) -> Budget {
        Budget {
            name: name.to_string(),
            bucket: Arc::new(TokenBucket::new(limit, clock.clone())),
            gate: Gate::with_clock(places, clock),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn bucket(&self) -> &Arc<TokenBucket> {
        &self.bucket
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// What the provider says is left (`remaining` requests until `reset`). Spending never
    /// outruns it; with no more left than could be in flight at once, nothing more is sent
    /// until `reset` (a request over the quota would lock the whole account out).
    pub fn observe(&self, remaining: u32, reset: Duration) {
        self.bucket.cap(remaining);
        let in_flight = u32::try_from(self.gate.limit()).unwrap_or(u32::MAX);
        if remaining <= in_flight && !reset.is_zero() {
            tracing::info!(budget = %self.name, remaining, ?reset, "the provider's quota is almost spent: waiting for it to reset");
            self.gate.close_for(reset);
        }
    }

    /// The provider refused a call for `retry_after`: nothing of this budget is sent before.
    pub fn lock_out(&self, retry_after: Duration) {
        tracing::warn!(budget = %self.name, ?retry_after, "rate limited by the provider: every call of this budget waits");
        self.gate
            .close_for(retry_after.min(crate::retry::MAX_RETRY_AFTER));
    }

    /// How long nothing may be sent, if the budget is locked out.
    pub fn locked_for(&self) -> Option<Duration> {
        self.gate.closed_for()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn bucket(clock: &ManualClock, per_second: f64, burst: u32) -> TokenBucket {
        let limit = RateLimit::new(per_second, burst).unwrap();
        TokenBucket::new(limit, Arc::new(clock.clone()))
    }

    #[test]
    fn rejects_nonsense_limits() {
        assert!(RateLimit::new(0.0, 1).is_err());
        assert!(RateLimit::new(-1.0, 1).is_err());
        assert!(RateLimit::new(f64::NAN, 1).is_err());
        assert!(RateLimit::new(f64::INFINITY, 1).is_err());
        assert_eq!(RateLimit::new(1.0, 0), Err(RateLimitError::Burst));
        let cf = RateLimit::per_period(1200, Duration::from_secs(300), 10).unwrap();
        assert!((cf.per_second() - 4.0).abs() < 1e-9);
    }

    #[test]
    fn burst_then_one_token_per_interval() {
        let clock = ManualClock::new();
        let b = bucket(&clock, 2.0, 3);
        for _ in 0..3 {
            assert_eq!(b.try_acquire(), Ok(()));
        }
        assert_eq!(b.try_acquire(), Err(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(499));
        assert!(b.try_acquire().is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.try_acquire(), Ok(()));
    }

    #[test]
    fn an_idle_bucket_refills_only_up_to_the_burst() {
        let clock = ManualClock::new();
        let b = bucket(&clock, 10.0, 2);
        assert_eq!(b.try_acquire(), Ok(()));
        assert_eq!(b.try_acquire(), Ok(()));
        clock.advance(Duration::from_secs(3600));
        assert_eq!(b.try_acquire(), Ok(()));
        assert_eq!(b.try_acquire(), Ok(()));
        assert!(b.try_acquire().is_err());
    }

    #[test]
    fn a_budget_never_spends_more_than_the_provider_says_is_left() {
        let clock = ManualClock::new();
        let limit = RateLimit::new(4.0, 60).unwrap();
        let budget = Budget::new("cf", limit, 4, Arc::new(clock.clone()));
        budget.observe(10, Duration::from_secs(200));
        for _ in 0..10 {
            assert_eq!(budget.bucket().try_acquire(), Ok(()));
        }
        assert!(budget.bucket().try_acquire().is_err(), "11th token");
        assert_eq!(budget.locked_for(), None);
        // no more left than could be in flight: closed until the quota resets
        budget.observe(4, Duration::from_secs(120));
        assert_eq!(budget.locked_for(), Some(Duration::from_secs(120)));
        clock.advance(Duration::from_secs(120));
        assert_eq!(budget.locked_for(), None);
        budget.lock_out(Duration::from_secs(300));
        assert_eq!(budget.locked_for(), Some(Duration::from_secs(300)));
    }

    #[test]
    fn reservations_queue_in_order_and_refuse_past_their_deadline() {
        let clock = ManualClock::new();
        let b = bucket(&clock, 10.0, 1);
        let latest = Duration::from_millis(500);
        // pairs of tokens, 0.2 s apart: the first pair waits for its second token
        assert_eq!(b.reserve(2, latest), Ok(Duration::from_millis(100)));
        assert_eq!(b.reserve(2, latest), Ok(Duration::from_millis(300)));
        assert_eq!(b.reserve(2, latest), Ok(Duration::from_millis(500)));
        // the next would come at 0.7 s: refused, and nothing taken
        assert_eq!(b.reserve(2, latest), Err(Duration::from_millis(700)));
        assert_eq!(b.reserve(2, latest), Err(Duration::from_millis(700)));
        clock.advance(Duration::from_millis(200));
        assert_eq!(b.reserve(2, latest), Ok(Duration::from_millis(500)));
        // a waiting `acquire` finds nothing until every reservation is served
        assert_eq!(b.try_acquire(), Err(Duration::from_millis(600)));
        clock.advance(Duration::from_secs(10));
        assert_eq!(b.reserve(1, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(
            b.reserve(1, Duration::ZERO),
            Err(Duration::from_millis(100))
        );
    }

    #[tokio::test]
    async fn acquire_paces_requests_at_the_rate() {
        let clock = ManualClock::new();
        let b = bucket(&clock, 4.0, 2);
        let done = clock
            .drive(async {
                let mut at = Vec::new();
                for _ in 0..6 {
                    b.acquire().await;
                    at.push(clock.elapsed());
                }
                at
            })
            .await;
        let ms: Vec<u128> = done.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 0, 250, 500, 750, 1000]);
    }
}
