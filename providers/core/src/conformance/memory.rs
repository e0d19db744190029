//! [`MemoryProvider`]: the in-memory reference provider. The conformance kit is checked
//! against it (a correct provider passes every case; one that ignores `expected` is caught),
//! and the service's unit and router tests run their domains' zones on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::{
    Capabilities, Change, ChangeSet, DnsProvider, Fqdn, ProviderError, RecordSet, RrsetKey, Ttl,
};

type Zones = HashMap<Fqdn, BTreeMap<RrsetKey, RecordSet>>;

#[derive(Default)]
struct Shared {
    zones: Mutex<Zones>,
    down: AtomicBool,
    applies: AtomicUsize,
}

/// Zones of RRsets in memory, shared by every clone (and by [`MemoryProvider::with_bad_credentials`]).
/// Applies are atomic and check each change's `expected` (records, not TTLs) unless built
/// with [`MemoryProvider::ignoring_expected`]; [`MemoryProvider::set_down`] makes every call
/// fail as a server that is down does.
#[derive(Clone, Default)]
pub struct MemoryProvider {
    shared: Arc<Shared>,
    bad_credentials: bool,
    ignores_expected: bool,
}

impl MemoryProvider {
    /// A provider holding `zones`, empty.
    pub fn with_zones<'a>(zones: impl IntoIterator<Item = &'a Fqdn>) -> Self {
        let p = MemoryProvider::default();
        for z in zones {
            p.add_zone(z.clone());
        }
        p
    }

    /// The same zones, applying changes whatever `expected` says (the broken provider the
    /// kit must catch).
    pub fn ignoring_expected(mut self) -> Self {
        self.ignores_expected = true;
        self
    }

    /// A client of the same zones whose credentials are refused.
    pub fn with_bad_credentials(&self) -> Self {
        MemoryProvider {
            bad_credentials: true,
            ..self.clone()
        }
    }

    pub fn add_zone(&self, zone: Fqdn) {
        self.zones().entry(zone).or_default();
    }

    /// Writes `set` into `zone` behind the provider's back (a hand edit in a console).
    pub fn put(&self, zone: &Fqdn, set: RecordSet) {
        self.zones()
            .entry(zone.clone())
            .or_default()
            .insert(RrsetKey::of(&set), set);
    }

    /// What `zone` holds at `key` now.
    pub fn get(&self, zone: &Fqdn, key: &RrsetKey) -> Option<RecordSet> {
        self.zones().get(zone).and_then(|z| z.get(key).cloned())
    }

    /// Every RRset `zone` holds now.
    pub fn sets(&self, zone: &Fqdn) -> Vec<RecordSet> {
        self.zones()
            .get(zone)
            .map(|z| z.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Applies that changed something so far.
    pub fn applies(&self) -> usize {
        self.shared.applies.load(Ordering::SeqCst)
    }

    /// Every call fails as `Transient` ("connection refused") while `down`.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    fn zones(&self) -> MutexGuard<'_, Zones> {
        self.shared.zones.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gate(&self) -> Result<(), ProviderError> {
        if self.shared.down.load(Ordering::SeqCst) {
            return Err(ProviderError::Transient("connection refused".into()));
        }
        if self.bad_credentials {
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
        let mut zones = self.zones();
        let sets = zones
            .get_mut(zone)
            .ok_or_else(|| ProviderError::NotFound(format!("no zone {zone}")))?;
        f(sets)
    }
}

#[async_trait]
impl DnsProvider for MemoryProvider {
    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            min_ttl: 0,
            max_ttl: Ttl::MAX,
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
            if !self.ignores_expected {
                for c in &changes.changes {
                    c.check_expected(sets.get(&c.key()))?;
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
            if !changes.is_empty() {
                self.shared.applies.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    }
}
