//! What provider tests share besides the cases: the stack the service runs ([`guarded`]) with
//! a short retry policy ([`quick_policy`]), a clock that records its sleeps
//! ([`RecordingClock`]), and a capture of everything logged ([`capture_logs`]) for the tests
//! that check secrets never reach the logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::clock::Sleep;
use crate::{
    Clock, DnsProvider, Guarded, RateLimit, Retrier, RetryPolicy, SeededJitter, TokenBucket,
};

/// Three attempts, 20–100 ms apart, within 15 s: retries a test can afford.
pub fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        deadline: Duration::from_secs(15),
    }
}

/// The stack the service runs: `provider` inside [`Guarded`] on `clock`, with a token bucket
/// too generous to throttle a test (1,000 a second) and a fixed jitter seed.
pub fn guarded<P: DnsProvider + 'static>(
    provider: P,
    clock: Arc<dyn Clock>,
    policy: RetryPolicy,
) -> Arc<dyn DnsProvider> {
    let rate = RateLimit::new(1_000.0, 1_000).unwrap_or_else(|_| unreachable!("a valid rate"));
    let bucket = Arc::new(TokenBucket::new(rate, Arc::clone(&clock)));
    let retrier = Retrier::new(policy, clock, Arc::new(SeededJitter::new(7)));
    Arc::new(Guarded::new(provider, bucket, retrier))
}

/// A test clock that records every sleep that ran to its end, so a test sees how long the
/// code chose to wait without waiting that long. `fast()` runs `FACTOR` times faster than real
/// time (for code that races real I/O against its sleeps); `stepping()` stands still except
/// for its own sleeps, each of which moves it forward by what was asked.
#[derive(Clone, Debug)]
pub struct RecordingClock {
    origin: Instant,
    stepping: bool,
    done: Arc<Mutex<Vec<Duration>>>,
}

impl Default for RecordingClock {
    fn default() -> Self {
        RecordingClock::fast()
    }
}

impl RecordingClock {
    pub const FACTOR: u32 = 100;

    /// A [`fast`](Self::fast) clock.
    pub fn new() -> Self {
        RecordingClock::fast()
    }

    pub fn fast() -> Self {
        RecordingClock {
            origin: Instant::now(),
            stepping: false,
            done: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn stepping() -> Self {
        RecordingClock {
            stepping: true,
            ..RecordingClock::fast()
        }
    }

    /// The sleeps that ran to their end, in the clock's time.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Clock for RecordingClock {
    fn now(&self) -> Instant {
        if self.stepping {
            self.origin + self.sleeps().iter().sum::<Duration>()
        } else {
            self.origin + self.origin.elapsed() * Self::FACTOR
        }
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let done = Arc::clone(&self.done);
        Box::pin(async move {
            tokio::time::sleep(duration / Self::FACTOR).await;
            done.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(duration);
        })
    }
}

/// Everything logged at any level by this test binary from the first [`capture_logs`] on.
#[derive(Clone, Debug, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per test binary) a global subscriber writing every event, at every level,
/// to the returned capture — global because a thread-local one can miss events when tests run
/// in parallel (tracing caches each call site's interest across threads). Panics when the
/// binary already has another global subscriber.
pub fn capture_logs() -> Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            if tracing::subscriber::set_global_default(subscriber).is_err() {
                panic!("capture_logs must install the only global subscriber of a test binary");
            }
            captured
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stepping_clock_moves_only_by_its_sleeps() {
        let clock = RecordingClock::stepping();
        let start = clock.now();
        clock.sleep(Duration::from_millis(300)).await;
        clock.sleep(Duration::from_millis(200)).await;
        assert_eq!(clock.now() - start, Duration::from_millis(500));
        assert_eq!(
            clock.sleeps(),
            [Duration::from_millis(300), Duration::from_millis(200)]
        );
    }

    #[test]
    fn captured_logs_hold_every_level() {
        let logs = capture_logs();
        tracing::trace!(marker = "support-self-test", "a trace event");
        assert!(logs.text().contains("support-self-test"), "{}", logs.text());
        assert!(capture_logs().text().contains("support-self-test"));
    }
}
