//! Helpers shared by the Route 53 tests: moto behind the test proxy, hosted zones, providers;
//! the `Guarded` stack, the recording clock and the log capture come from the conformance
//! kit's `support`.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mxguard_core::conformance::support;
#[allow(unused_imports)] // each test binary uses some of them
pub use mxguard_core::conformance::support::{capture_logs, guarded, Captured, RecordingClock};
use mxguard_core::{Fqdn, RateLimit, RetryPolicy, TokioClock};
use mxguard_route53::{Credentials, Route53Config, Route53Provider, SyncPolicy};

pub use mxguard_testpeers::route53::Moto;
#[allow(unused_imports)]
pub use mxguard_testpeers::route53::{Fault, Op, Proxy};

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

/// The kit's quick policy with more time: moto answers more slowly than a fake.
pub fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_secs(20),
        ..support::quick_policy()
    }
}
