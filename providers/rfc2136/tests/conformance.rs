//! The RFC 2136 provider against the shared conformance kit, each case on its own `named`,
//! through [`Guarded`] — the stack the service runs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{Named, ZoneSpec};
use mxguard_core::conformance::{support, Fixture, Peer};
use mxguard_core::{DnsProvider, RetryPolicy, TokioClock};
use mxguard_rfc2136::{Rfc2136Provider, TsigAlgorithm};

struct NamedPeer {
    named: Mutex<Option<Named>>,
    config: mxguard_rfc2136::Rfc2136Config,
    wrong: mxguard_rfc2136::Rfc2136Config,
    zones: Vec<mxguard_core::Fqdn>,
    next: AtomicUsize,
}

/// `Guarded` with the kit's quick policy, backing off a little longer for `named`.
fn guarded(provider: Rfc2136Provider) -> Arc<dyn DnsProvider> {
    let policy = RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..support::quick_policy()
    };
    support::guarded(provider, Arc::new(TokioClock), policy)
}

async fn start() -> NamedPeer {
    let named = tokio::task::spawn_blocking(|| {
        let zones: Vec<ZoneSpec> = (0..3)
            .map(|i| ZoneSpec::new(&format!("z{i}.example.test")))
            .collect();
        Named::start(TsigAlgorithm::HmacSha256, &zones)
    })
    .await
    .expect("starting named");
    let wrong_secret = common::random_secret(32);
    NamedPeer {
        config: named.config(&named.secret_b64),
        wrong: named.config(&wrong_secret),
        zones: named.zones.clone(),
        named: Mutex::new(Some(named)),
        next: AtomicUsize::new(0),
    }
}

#[async_trait]
impl Peer for NamedPeer {
    async fn fresh(&self) -> Result<Fixture, String> {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        let zone = self
            .zones
            .get(i)
            .ok_or_else(|| format!("only {} test zones", self.zones.len()))?
            .clone();
        let provider = Rfc2136Provider::new(self.config.clone()).map_err(|e| e.to_string())?;
        Ok(Fixture {
            provider: guarded(provider),
            zone,
        })
    }

    async fn bad_credentials(&self, _: &Fixture) -> Result<Arc<dyn DnsProvider>, String> {
        let provider = Rfc2136Provider::new(self.wrong.clone()).map_err(|e| e.to_string())?;
        Ok(guarded(provider))
    }

    async fn stop(&self) -> Result<(), String> {
        let named = self.named.lock().map_err(|e| e.to_string())?.take();
        tokio::task::spawn_blocking(move || drop(named))
            .await
            .map_err(|e| e.to_string())
    }
}

mxguard_core::conformance_tests!(start());
