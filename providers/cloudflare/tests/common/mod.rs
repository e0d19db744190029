//! Helpers shared by the Cloudflare tests: a fake with a zone and a token, providers built
//! against it (raw or wrapped in `Guarded`), a clock whose sleeps are recorded instead of
//! waited, and a log capture.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxguard_cloudflare::{ApiToken, CloudflareConfig, CloudflareProvider};
use mxguard_core::clock::Sleep;
use mxguard_core::{
    Clock, DnsProvider, Fqdn, Guarded, RateLimit, Retrier, RetryPolicy, SeededJitter, TokenBucket,
    TokioClock,
};

use crate::fake::{FakeCloudflare, FakeConfig, Perms};

pub const TOKEN: &str = "cf-test-token-5f1c0ffee5e15ec7e7";

pub fn fqdn(s: &str) -> Fqdn {
    Fqdn::parse(s).expect("valid test name")
}

/// A fake holding `zone`, accepting [`TOKEN`] with Zone:Read + DNS:Edit.
pub async fn fake_with_zone(zone: &str) -> FakeCloudflare {
    let fake = FakeCloudflare::start(FakeConfig::default()).await;
    fake.add_token(TOKEN, Perms::FULL);
    fake.add_zone(zone);
    fake
}

pub fn config(fake: &FakeCloudflare, token: &str) -> CloudflareConfig {
    CloudflareConfig::new("cf-test", ApiToken::new(token).expect("a valid token"))
        .with_base_url(&fake.base_url)
        .expect("the fake's URL")
        .with_per_page(100)
        .with_timeout(Duration::from_secs(5))
        .with_rate_limit(RateLimit::new(1_000.0, 1_000).expect("a valid rate"))
}

pub fn provider(config: CloudflareConfig) -> CloudflareProvider {
    CloudflareProvider::new(config, Arc::new(TokioClock)).expect("a valid provider config")
}

pub fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        deadline: Duration::from_secs(15),
    }
}

/// The stack the service runs: the provider inside `Guarded`, on `clock`.
pub fn guarded(
    p: CloudflareProvider,
    clock: Arc<dyn Clock>,
    policy: RetryPolicy,
) -> Arc<dyn DnsProvider> {
    let bucket = Arc::new(TokenBucket::new(
        RateLimit::new(1_000.0, 1_000).expect("a valid rate"),
        Arc::clone(&clock),
    ));
    let retrier = Retrier::new(policy, clock, Arc::new(SeededJitter::new(7)));
    Arc::new(Guarded::new(p, bucket, retrier))
}

/// A test clock that records every sleep that ran to its end, so a test sees how long the
/// code chose to wait without waiting that long. `fast()` runs `FACTOR` times faster than real
/// time (for code that races real I/O against its sleeps); `stepping()` stands still except
/// for its own sleeps, each of which moves it forward by what was asked.
#[derive(Clone)]
pub struct RecordingClock {
    origin: Instant,
    stepping: bool,
    done: Arc<Mutex<Vec<Duration>>>,
}

impl RecordingClock {
    pub const FACTOR: u32 = 100;

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
        self.done.lock().expect("clock lock").clone()
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
            done.lock().expect("clock lock").push(duration);
        })
    }
}

/// Everything logged at any level by this test binary from the first call on: a global
/// subscriber (a thread-local one can miss events when tests run in parallel, since tracing
/// caches each call site's interest across threads).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() -> Captured {
    static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("the only global subscriber of this test binary");
            captured
        })
        .clone()
}
