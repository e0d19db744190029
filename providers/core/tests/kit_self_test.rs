//! The conformance kit checked against an in-memory reference provider: a correct provider
//! passes every case, and a provider that ignores `expected` fails exactly where it should.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use mxguard_core::conformance::memory::MemoryProvider;
use mxguard_core::conformance::{run_all, run_case, Fixture, Peer, CASES};
use mxguard_core::{DnsProvider, Fqdn};

struct MemoryPeer {
    provider: MemoryProvider,
    next: AtomicUsize,
}

impl MemoryPeer {
    fn new(checks_expected: bool) -> Self {
        let provider = MemoryProvider::default();
        MemoryPeer {
            provider: if checks_expected {
                provider
            } else {
                provider.ignoring_expected()
            },
            next: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Peer for MemoryPeer {
    async fn fresh(&self) -> Result<Fixture, String> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let zone = Fqdn::parse(&format!("z{n}.memory.test")).map_err(|e| e.to_string())?;
        self.provider.add_zone(zone.clone());
        Ok(Fixture {
            provider: Arc::new(self.provider.clone()),
            zone,
        })
    }
    async fn bad_credentials(&self, _: &Fixture) -> Result<Arc<dyn DnsProvider>, String> {
        Ok(Arc::new(self.provider.with_bad_credentials()))
    }
    async fn stop(&self) -> Result<(), String> {
        self.provider.set_down(true);
        Ok(())
    }
}

#[tokio::test]
async fn a_correct_provider_passes_every_case() {
    let peer = MemoryPeer::new(true);
    if let Err(failures) = run_all(&peer).await {
        panic!("the reference provider failed: {failures:#?}");
    }
    assert_eq!(CASES.last(), Some(&"server_down_is_transient"));
}

#[tokio::test]
async fn a_provider_that_ignores_expected_is_caught() {
    let peer = MemoryPeer::new(false);
    let failures = run_all(&peer).await.expect_err("the kit must notice");
    let failed: Vec<&str> = failures.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        failed,
        vec![
            "concurrent_applies_are_serialised",
            "stale_expected_is_rejected"
        ]
    );
}

#[tokio::test]
async fn an_unknown_case_name_is_a_failure_not_a_pass() {
    let peer = MemoryPeer::new(true);
    assert!(run_case("no_such_case", &peer).await.is_err());
}
