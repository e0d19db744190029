//! Whether each provider's credentials can do what mxguard needs, for one zone: the checks each
//! provider crate runs (`verify_access`, read-only; `verify_write_access`, a write that changes
//! nothing) behind one trait, so `mxguard providers check` and `serve`'s start check
//! ([`watch`]) ask every kind the same way. The checks go through the provider's admission
//! gate at background priority: they never hold up a change.

use async_trait::async_trait;
use mxguard_cloudflare::CloudflareProvider;
use mxguard_core::{AccessReport, Fqdn, Guarded, Priority, RrsetKey};
use mxguard_rfc2136::Rfc2136Provider;
use mxguard_route53::Route53Provider;

pub mod watch;

#[async_trait]
pub trait ProviderAccess: Send + Sync {
    /// What the credentials can do for `zone`, without changing anything.
    async fn verify_access(&self, zone: &Fqdn) -> AccessReport;

    /// [`ProviderAccess::verify_access`], then a write the provider accepts only with write
    /// permission and that changes nothing. `probes` are the RRsets mxguard writes in `zone`:
    /// a provider whose permissions are per name and type (RFC 2136 `update-policy`) is asked
    /// about those.
    async fn verify_write_access(&self, zone: &Fqdn, probes: &[RrsetKey]) -> AccessReport;
}

/// Each provider crate's own checks, under one shape: what differs between kinds is only
/// whether the write check looks at the RRsets mxguard writes.
#[async_trait]
pub trait Checks: Send + Sync {
    async fn read_check(&self, zone: &Fqdn) -> AccessReport;
    async fn write_check(&self, zone: &Fqdn, probes: &[RrsetKey]) -> AccessReport;
}

#[async_trait]
impl Checks for CloudflareProvider {
    async fn read_check(&self, zone: &Fqdn) -> AccessReport {
        self.verify_access(zone).await
    }
    async fn write_check(&self, zone: &Fqdn, _probes: &[RrsetKey]) -> AccessReport {
        self.verify_write_access(zone).await
    }
}

#[async_trait]
impl Checks for Route53Provider {
    async fn read_check(&self, zone: &Fqdn) -> AccessReport {
        self.verify_access(zone).await
    }
    async fn write_check(&self, zone: &Fqdn, _probes: &[RrsetKey]) -> AccessReport {
        self.verify_write_access(zone).await
    }
}

#[async_trait]
impl Checks for Rfc2136Provider {
    async fn read_check(&self, zone: &Fqdn) -> AccessReport {
        self.verify_access(zone).await
    }
    async fn write_check(&self, zone: &Fqdn, probes: &[RrsetKey]) -> AccessReport {
        self.verify_write_access(zone, probes).await
    }
}

#[async_trait]
impl<P: Checks + mxguard_core::DnsProvider + 'static> ProviderAccess for Guarded<P> {
    async fn verify_access(&self, zone: &Fqdn) -> AccessReport {
        let _pass = self.gate().enter(Priority::Background).await;
        self.inner().read_check(zone).await
    }

    async fn verify_write_access(&self, zone: &Fqdn, probes: &[RrsetKey]) -> AccessReport {
        let _pass = self.gate().enter(Priority::Background).await;
        self.inner().write_check(zone, probes).await
    }
}
