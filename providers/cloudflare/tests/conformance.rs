//! The Cloudflare provider against the whole shared conformance kit, each case on its own fake
//! Cloudflare API, through `Guarded` — the stack the service runs. (`ttl_kept_exactly` caps its
//! TTLs at `Capabilities::max_ttl`, 86,400 s here: Cloudflare's ceiling, reference §6.)

mod common;
use mxguard_testpeers::cloudflare as fake;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use common::{config, fqdn, guarded, provider, quick_policy, TOKEN};
use fake::{FakeCloudflare, FakeConfig, Perms};
use mxguard_core::conformance::{Fixture, Peer};
use mxguard_core::{DnsProvider, TokioClock};

struct CfPeer {
    fake: FakeCloudflare,
    next: AtomicUsize,
}

async fn start() -> CfPeer {
    let fake = FakeCloudflare::start(FakeConfig::default()).await;
    fake.add_token(TOKEN, Perms::FULL);
    CfPeer {
        fake,
        next: AtomicUsize::new(0),
    }
}

impl CfPeer {
    fn provider(&self, token: &str) -> Arc<dyn DnsProvider> {
        guarded(
            provider(config(&self.fake, token)),
            Arc::new(TokioClock),
            quick_policy(),
        )
    }
}

#[async_trait]
impl Peer for CfPeer {
    async fn fresh(&self) -> Result<Fixture, String> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let zone = format!("z{n}.cf-conformance.test");
        self.fake.add_zone(&zone);
        Ok(Fixture {
            provider: self.provider(TOKEN),
            zone: fqdn(&zone),
        })
    }

    async fn bad_credentials(&self, _: &Fixture) -> Result<Arc<dyn DnsProvider>, String> {
        Ok(self.provider("cf-token-nobody-issued"))
    }

    async fn stop(&self) -> Result<(), String> {
        self.fake.stop().await;
        Ok(())
    }
}

mxguard_core::conformance_tests!(start());
