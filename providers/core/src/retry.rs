//! Retries with exponential backoff and jitter, honouring a provider's `retry_after`, inside
//! one overall deadline. Only [`ProviderError::is_retryable`] errors are retried.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::jitter::Jitter;
use crate::ProviderError;

/// How hard to try. `deadline` bounds the whole operation, attempts and waits included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The backoff ceiling after the first failure; it doubles after each further failure.
    pub initial_backoff: Duration,
    /// No backoff is longer than this (a provider's `retry_after` may be).
    pub max_backoff: Duration,
    /// The whole operation gives up after this long.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed attempt ("equal jitter"): the ceiling is
    /// `initial_backoff · 2^(failures−1)`, capped at `max_backoff`, and the wait lies in
    /// `[ceiling/2, ceiling)` as `fraction` goes over `[0, 1)`.
    pub fn backoff(&self, failures: u32, fraction: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        let half = ceiling / 2;
        half + half.mul_f64(fraction.clamp(0.0, 1.0))
    }

    /// The wait before retrying after `error`: the backoff, or the provider's `retry_after`
    /// when that is longer (at most [`MAX_RETRY_AFTER`]: the value comes from a server).
    pub fn delay_after(&self, failures: u32, error: &ProviderError, fraction: f64) -> Duration {
        let backoff = self.backoff(failures, fraction);
        match error {
            ProviderError::RateLimited {
                retry_after: Some(after),
            } => backoff.max((*after).min(MAX_RETRY_AFTER)),
            _ => backoff,
        }
    }
}

/// The longest `retry_after` a server is taken at its word for: a day (a hostile or broken
/// `Retry-After: 18446744073709551615` would otherwise overflow the clock's arithmetic).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Runs operations under a [`RetryPolicy`] with an injected clock and jitter.
#[derive(Clone)]
pub struct Retrier {
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
}

impl std::fmt::Debug for Retrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrier")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Retrier {
    pub fn new(policy: RetryPolicy, clock: Arc<dyn Clock>, jitter: Arc<dyn Jitter>) -> Self {
        Retrier {
            policy,
            clock,
            jitter,
        }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Calls `op` until it succeeds, fails for good, runs out of attempts, or the deadline
    /// would pass. On giving up, the last error is returned as it was (so a caller still sees
    /// `RateLimited { retry_after }`). An attempt still running at the deadline is dropped and
    /// reported as `Transient`: its outcome is unknown, which the reconcile loop handles by
    /// reading again.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        self.run_handing_back(what, op, |_| false).await
    }

    /// As [`Retrier::run`], returning at once the errors `hand_back` picks, for the caller to
    /// deal with outside the deadline (a provider's lockout, waited out at admission).
    pub async fn run_handing_back<T, F, Fut>(
        &self,
        what: &str,
        mut op: F,
        hand_back: impl Fn(&ProviderError) -> bool,
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let deadline = self.clock.now() + self.policy.deadline;
        let mut failures = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(self.clock.now());
            let outcome = tokio::select! {
                biased;
                result = op() => result,
                () = self.clock.sleep(remaining) => Err(ProviderError::Transient(format!(
                    "{what}: gave up at the deadline of {:?} during attempt {}; the outcome is unknown",
                    self.policy.deadline,
                    failures + 1
                ))),
            };
            let error = match outcome {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            failures += 1;
            if !error.is_retryable() || hand_back(&error) {
                return Err(error);
            }
            if failures >= self.policy.max_attempts.max(1) {
                tracing::warn!(what, attempts = failures, %error, "giving up: attempts exhausted");
                return Err(error);
            }
            let delay = self
                .policy
                .delay_after(failures, &error, self.jitter.fraction());
            if delay >= deadline.saturating_duration_since(self.clock.now()) {
                tracing::warn!(what, attempts = failures, ?delay, %error, "giving up: the next attempt would start after the deadline");
                return Err(error);
            }
            tracing::info!(what, attempt = failures, ?delay, %error, "retrying after a retryable failure");
            self.clock.sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::clock::ManualClock;
    use crate::jitter::{FixedJitter, SeededJitter};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
        }
    }

    fn retrier(clock: &ManualClock, policy: RetryPolicy, fraction: f64) -> Retrier {
        Retrier::new(
            policy,
            Arc::new(clock.clone()),
            Arc::new(FixedJitter(fraction)),
        )
    }

    /// Runs `script` (one result per attempt) and returns the outcome and each attempt's
    /// start time relative to the start.
    async fn run_script(
        clock: &ManualClock,
        r: &Retrier,
        script: Vec<Result<u32, ProviderError>>,
    ) -> (Result<u32, ProviderError>, Vec<Duration>) {
        let start: Instant = clock.now();
        let starts = Mutex::new(Vec::new());
        let script = Mutex::new(script.into_iter());
        let out = clock
            .drive(r.run("test op", || {
                starts.lock().unwrap().push(clock.now() - start);
                let next = script.lock().unwrap().next();
                async move { next.unwrap_or(Err(ProviderError::Transient("script ended".into()))) }
            }))
            .await;
        let starts = starts.into_inner().unwrap();
        (out, starts)
    }

    fn transient() -> ProviderError {
        ProviderError::Transient("boom".into())
    }

    #[tokio::test]
    async fn backs_off_exponentially_then_succeeds() {
        let clock = ManualClock::new();
        let r = retrier(&clock, policy(), 0.0);
        let (out, starts) =
            run_script(&clock, &r, vec![Err(transient()), Err(transient()), Ok(7)]).await;
        assert_eq!(out, Ok(7));
        // fraction 0 → half the ceiling: 50ms, then 100ms
        assert_eq!(
            starts,
            vec![
                Duration::ZERO,
                Duration::from_millis(50),
                Duration::from_millis(150)
            ]
        );
    }

    #[tokio::test]
    async fn honours_retry_after_when_longer_than_the_backoff() {
        let clock = ManualClock::new();
        let r = retrier(&clock, policy(), 0.5);
        let limited = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        };
        let (out, starts) = run_script(&clock, &r, vec![Err(limited), Ok(1)]).await;
        assert_eq!(out, Ok(1));
        assert_eq!(starts, vec![Duration::ZERO, Duration::from_secs(7)]);
    }

    #[test]
    fn a_retry_after_from_the_edge_of_u64_is_capped_not_overflowed() {
        let policy = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
        };
        let hostile = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(u64::MAX)),
        };
        assert_eq!(policy.delay_after(1, &hostile, 0.5), MAX_RETRY_AFTER);
    }

    #[tokio::test]
    async fn a_hostile_retry_after_gives_up_without_panicking() {
        let clock = ManualClock::new();
        let r = retrier(&clock, policy(), 0.5);
        let hostile = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(u64::MAX)),
        };
        let (out, starts) = run_script(&clock, &r, vec![Err(hostile.clone()), Ok(1)]).await;
        assert_eq!(out, Err(hostile), "past the deadline: the caller learns it");
        assert_eq!(starts.len(), 1);
    }

    #[tokio::test]
    async fn does_not_sleep_past_the_deadline_for_a_long_retry_after() {
        let clock = ManualClock::new();
        let r = retrier(&clock, policy(), 0.5);
        let limited = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(120)),
        };
        let (out, starts) = run_script(&clock, &r, vec![Err(limited.clone()), Ok(1)]).await;
        assert_eq!(out, Err(limited), "the caller still learns retry_after");
        assert_eq!(starts.len(), 1);
        assert_eq!(clock.elapsed(), Duration::ZERO, "gave up without waiting");
    }

    #[tokio::test]
    async fn a_hung_attempt_is_cut_at_the_deadline() {
        let clock = ManualClock::new();
        let r = retrier(&clock, policy(), 0.5);
        let out: Result<(), _> = clock
            .drive(r.run("hung op", std::future::pending::<Result<(), ProviderError>>))
            .await;
        match out {
            Err(ProviderError::Transient(msg)) => assert!(msg.contains("deadline"), "{msg}"),
            other => panic!("expected a transient deadline error, got {other:?}"),
        }
        assert_eq!(clock.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let clock = ManualClock::new();
        let r = retrier(&clock, policy(), 0.5);
        let auth = ProviderError::Auth("bad key".into());
        let (out, starts) = run_script(&clock, &r, vec![Err(auth.clone()), Ok(1)]).await;
        assert_eq!(out, Err(auth));
        assert_eq!(starts.len(), 1);
    }

    #[tokio::test]
    async fn stops_after_max_attempts_with_the_last_error() {
        let clock = ManualClock::new();
        let r = retrier(&clock, policy(), 0.999);
        let script = (0..10)
            .map(|i| Err(ProviderError::Transient(format!("failure {i}"))))
            .collect();
        let (out, starts) = run_script(&clock, &r, script).await;
        assert_eq!(out, Err(ProviderError::Transient("failure 4".into())));
        assert_eq!(starts.len(), 5);
        // ceilings 100, 200, 400, 800 ms, fraction ≈ 1 → just under each ceiling
        let waited = clock.elapsed();
        assert!(waited <= Duration::from_millis(1500), "{waited:?}");
        assert!(waited > Duration::from_millis(1490), "{waited:?}");
    }

    #[test]
    fn jittered_backoff_stays_within_bounds_and_under_the_cap() {
        let p = policy();
        let jitter = SeededJitter::new(7);
        for failures in 1..=40 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow(failures.min(20) - 1))
                .min(Duration::from_secs(2));
            for _ in 0..50 {
                let d = p.backoff(failures, jitter.fraction());
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{failures}: {d:?} vs {ceiling:?}"
                );
            }
        }
    }
}
