//! Helpers shared by the Route 53 tests: moto behind the test proxy, hosted zones, providers
//! (raw or wrapped in `Guarded`), a fast clock that records its sleeps, and a log capture.
#![allow(dead_code)]

pub mod moto;
pub mod proxy;

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxguard_core::clock::Sleep;
use mxguard_core::{
    Clock, DnsProvider, Fqdn, Guarded, RateLimit, Retrier, RetryPolicy, SeededJitter, TokenBucket,
    TokioClock,
};
use mxguard_route53::{Credentials, Route53Config, Route53Provider, SyncPolicy};

pub use moto::Moto;
#[allow(unused_imports)]
pub use proxy::{Fault, Op, Proxy};

/// The access key the proxy lets through (moto accepts any; see README.md).
pub const KEY_ID: &str = "AKIAMXGUARDTEST00001";
pub const SECRET: &str = "mxguard/route53/test/secret/0123456789abcd";

pub fn fqdn(s: &str) -> Fqdn {
    Fqdn::parse(s).expect("valid test name")
}

/// moto, and the proxy in front of it letting only [`KEY_ID`] through.
pub struct Peer {
    moto: Mutex<Option<Moto>>,
    pub moto_url: String,
    pub proxy: Proxy,
}

impl Peer {
    pub async fn start() -> Peer {
        let moto = Moto::start().await;
        let proxy = Proxy::start(&moto.url).await;
        proxy.state().allowed_keys = Some(HashSet::from([KEY_ID.to_string()]));
        Peer {
            moto_url: moto.url.clone(),
            moto: Mutex::new(Some(moto)),
            proxy,
        }
    }

    /// Stops the proxy and kills moto: the endpoint refuses connections from then on.
    pub async fn stop(&self) {
        self.proxy.stop().await;
        let moto = self.moto.lock().unwrap_or_else(|p| p.into_inner()).take();
        let _ = tokio::task::spawn_blocking(move || drop(moto)).await;
    }

    /// Creates a public hosted zone in moto and returns its id.
    pub async fn create_zone(&self, name: &str) -> String {
        let client = sdk(&self.moto_url).await;
        let out = client
            .create_hosted_zone()
            .name(name)
            .caller_reference(format!("mxguard-test-{name}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating hosted zone {name} in moto: {e:?}"));
        let id = out
            .hosted_zone()
            .map(|z| z.id().to_string())
            .expect("a hosted zone id");
        id.rsplit('/').next().unwrap_or(&id).to_string()
    }

    pub fn config(&self, key_id: &str, secret: &str) -> Route53Config {
        Route53Config::new("aws-test")
            .with_credentials(Credentials::static_keys(key_id, secret))
            .with_endpoint_url(&self.proxy.url)
            .with_timeout(Duration::from_secs(5))
            .with_rate_limit(RateLimit::new(1_000.0, 1_000).expect("a valid rate"))
            .with_sync(SyncPolicy {
                poll_interval: Duration::from_millis(200),
                max_wait: Duration::from_secs(10),
            })
    }
}

/// An SDK client straight to moto, for setting up zones.
pub async fn sdk(url: &str) -> aws_sdk_route53::Client {
    let config = aws_sdk_route53::Config::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "AKIASETUP",
            "setup",
            None,
            None,
            "test",
        ))
        .endpoint_url(url)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_route53::Client::from_conf(config)
}

pub async fn provider(config: Route53Config) -> Route53Provider {
    Route53Provider::new(config, Arc::new(TokioClock))
        .await
        .expect("a valid provider config")
}

pub fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        deadline: Duration::from_secs(20),
    }
}

/// The stack the service runs: the provider inside `Guarded`, on `clock`.
pub fn guarded(
    p: Route53Provider,
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
