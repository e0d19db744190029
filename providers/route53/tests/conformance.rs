//! The Route 53 provider against the shared conformance kit, each case on its own moto (behind
//! the test proxy, which refuses unknown access keys as Route 53 does), through `Guarded` — the
//! stack the service runs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use common::{fqdn, guarded, provider, quick_policy, Peer, KEY_ID, SECRET};
use mxguard_core::conformance::{Fixture, Peer as KitPeer};
use mxguard_core::{DnsProvider, TokioClock};

struct MotoPeer {
    peer: Peer,
    next: AtomicUsize,
}

async fn start() -> MotoPeer {
    MotoPeer {
        peer: Peer::start().await,
        next: AtomicUsize::new(0),
    }
}

impl MotoPeer {
    async fn provider(&self, key_id: &str, secret: &str) -> Arc<dyn DnsProvider> {
        let p = provider(self.peer.config(key_id, secret)).await;
        guarded(p, Arc::new(TokioClock), quick_policy())
    }
}

#[async_trait]
impl KitPeer for MotoPeer {
    async fn fresh(&self) -> Result<Fixture, String> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let zone = format!("z{n}.r53-conformance.test");
        self.peer.create_zone(&zone).await;
        Ok(Fixture {
            provider: self.provider(KEY_ID, SECRET).await,
            zone: fqdn(&zone),
        })
    }

    async fn bad_credentials(&self, _: &Fixture) -> Result<Arc<dyn DnsProvider>, String> {
        Ok(self
            .provider("AKIANOBODYISSUEDTHIS", "not-the-secret")
            .await)
    }

    async fn stop(&self) -> Result<(), String> {
        self.peer.stop().await;
        Ok(())
    }
}

mxguard_core::conformance_tests!(start());
