//! Helpers shared by the Cloudflare tests: a fake with a zone and a token, and providers built
//! against it; the `Guarded` stack, the recording clock and the log capture come from the
//! conformance kit's `support`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use mxguard_cloudflare::{ApiToken, CloudflareConfig, CloudflareProvider};
#[allow(unused_imports)] // each test binary uses some of them
pub use mxguard_core::conformance::support::{
    capture_logs, guarded, quick_policy, Captured, RecordingClock,
};
use mxguard_core::{Fqdn, RateLimit, TokioClock};

use mxguard_testpeers::cloudflare::{FakeCloudflare, FakeConfig, Perms};

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
