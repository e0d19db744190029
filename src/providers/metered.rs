//! [`Metered`]: counts every provider operation by outcome, the kind of its failure included
//! (`mxguard_provider_operations_total{provider,operation,outcome}`), so a dashboard shows a
//! provider refusing a token or rate limiting before a failover needs it.

use async_trait::async_trait;
use mxguard_core::{
    Capabilities, ChangeSet, DnsProvider, Fence, Fqdn, ProviderError, RecordSet, RrsetKey,
};

pub struct Metered<P> {
    inner: P,
    provider: String,
}

impl<P: DnsProvider> Metered<P> {
    /// `provider`: the config name, the metric's label.
    pub fn new(inner: P, provider: &str) -> Self {
        for operation in ["read", "list_zone", "apply"] {
            // the series exist from the start, so `increase()` sees the first failure
            metrics::counter!("mxguard_provider_operations_total", "provider" => provider.to_string(), "operation" => operation, "outcome" => "ok").absolute(0);
        }
        Metered {
            inner,
            provider: provider.to_string(),
        }
    }

    fn count<T>(&self, operation: &'static str, r: &Result<T, ProviderError>) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        metrics::counter!("mxguard_provider_operations_total", "provider" => self.provider.clone(), "operation" => operation, "outcome" => outcome).increment(1);
    }
}

#[async_trait]
impl<P: DnsProvider> DnsProvider for Metered<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn request_rate(&self) -> Option<f64> {
        self.inner.request_rate()
    }

    fn read_cost(&self, keys: &[RrsetKey]) -> u32 {
        self.inner.read_cost(keys)
    }

    fn list_cost(&self, rrsets: usize) -> u32 {
        self.inner.list_cost(rrsets)
    }

    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        let r = self.inner.read(zone, keys).await;
        self.count("read", &r);
        r
    }

    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        let r = self.inner.list_zone(zone).await;
        self.count("list_zone", &r);
        r
    }

    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        let r = self.inner.apply(zone, changes).await;
        self.count("apply", &r);
        r
    }

    async fn apply_fenced(
        &self,
        zone: &Fqdn,
        changes: &ChangeSet,
        fence: &dyn Fence,
    ) -> Result<(), ProviderError> {
        let r = self.inner.apply_fenced(zone, changes, fence).await;
        self.count("apply", &r);
        r
    }
}
