//! The conformance kit checked against an in-memory reference provider: a correct provider
//! passes every case, and a provider that ignores `expected` fails exactly where it should.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mxguard_core::conformance::{run_all, run_case, Fixture, Peer, CASES};
use mxguard_core::{
    Capabilities, Change, ChangeSet, DnsProvider, Fqdn, ProviderError, RecordSet, RrsetKey,
};

#[derive(Default)]
struct Store {
    zones: Mutex<HashMap<Fqdn, BTreeMap<RrsetKey, RecordSet>>>,
    down: AtomicBool,
}

struct Memory {
    store: Arc<Store>,
    token_ok: bool,
    checks_expected: bool,
}

impl Memory {
    fn gate(&self) -> Result<(), ProviderError> {
        if self.store.down.load(Ordering::SeqCst) {
            return Err(ProviderError::Transient("connection refused".into()));
        }
        if !self.token_ok {
            return Err(ProviderError::Auth("bad token".into()));
        }
        Ok(())
    }

    fn with_zone<T>(
        &self,
        zone: &Fqdn,
        f: impl FnOnce(&mut BTreeMap<RrsetKey, RecordSet>) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.gate()?;
        let mut zones = self.store.zones.lock().unwrap();
        let sets = zones
            .get_mut(zone)
            .ok_or_else(|| ProviderError::NotFound(format!("no zone {zone}")))?;
        f(sets)
    }
}

#[async_trait]
impl DnsProvider for Memory {
    fn name(&self) -> &str {
        "memory"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            min_ttl: 0,
            max_ttl: mxguard_core::Ttl::MAX,
            max_changes_per_request: 50,
            atomic: true,
            zone_listing: true,
        }
    }
    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        self.with_zone(zone, |sets| {
            Ok(keys.iter().filter_map(|k| sets.get(k).cloned()).collect())
        })
    }
    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        self.with_zone(zone, |sets| Ok(sets.values().cloned().collect()))
    }
    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        self.gate()?;
        changes.validate_for(zone)?;
        self.with_zone(zone, |sets| {
            if self.checks_expected {
                for c in &changes.changes {
                    let live = sets.get(&c.key());
                    if live.map(|s| s.records()) != c.expected().map(|s| s.records()) {
                        return Err(ProviderError::Rejected {
                            reason: format!("{:?} changed", c.key()),
                        });
                    }
                }
            }
            for c in &changes.changes {
                match c {
                    Change::Upsert { set, .. } => {
                        sets.insert(RrsetKey::of(set), set.clone());
                    }
                    Change::Delete { key, .. } => {
                        sets.remove(key);
                    }
                }
            }
            Ok(())
        })
    }
}

struct MemoryPeer {
    store: Arc<Store>,
    next: AtomicUsize,
    checks_expected: bool,
}

impl MemoryPeer {
    fn new(checks_expected: bool) -> Self {
        MemoryPeer {
            store: Arc::default(),
            next: AtomicUsize::new(0),
            checks_expected,
        }
    }
    fn provider(&self, token_ok: bool) -> Arc<dyn DnsProvider> {
        Arc::new(Memory {
            store: Arc::clone(&self.store),
            token_ok,
            checks_expected: self.checks_expected,
        })
    }
}

#[async_trait]
impl Peer for MemoryPeer {
    async fn fresh(&self) -> Result<Fixture, String> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let zone = Fqdn::parse(&format!("z{n}.memory.test")).map_err(|e| e.to_string())?;
        self.store
            .zones
            .lock()
            .map_err(|e| e.to_string())?
            .insert(zone.clone(), BTreeMap::new());
        Ok(Fixture {
            provider: self.provider(true),
            zone,
        })
    }
    async fn bad_credentials(&self, _: &Fixture) -> Result<Arc<dyn DnsProvider>, String> {
        Ok(self.provider(false))
    }
    async fn stop(&self) -> Result<(), String> {
        self.store.down.store(true, Ordering::SeqCst);
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
