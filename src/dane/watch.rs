//! `serve`'s DANE look, made with each MTA-STS look (`mtasts::watch`): the TLSA of every
//! primary host (whether the domain uses DANE, for the downgrade note) and of every backup
//! host, a backup that publishes TLSA judged against the chain each of its addresses presents
//! over STARTTLS. The verdict rides in the MTA-STS view to the actor, so one finding — why
//! compliant senders would refuse the backup — covers both and one `mta_sts` setting decides.
//!
//! Only a backup host that publishes TLSA is probed: without records (or with a lookup that
//! failed) the verdict does not depend on what it presents, and `serve` already probes every
//! backup each round for its health, so the look adds SMTP sessions only for DANE backups —
//! and one per host, not per domain: a host's look is shared by every domain that uses it for
//! [`HOST_LOOK_FOR`] ([`HostLooks`]), and its DNS queries take the spare part of the
//! resolvers' budgets, its addresses shared with the probes' answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use tokio::sync::OnceCell;

use super::{lookup, Evaluation, HostDane, Presented, TlsaFound};
use crate::config::DomainConfig;
use crate::model::{Fqdn, Side};
use crate::mtasts::fetch::Fetcher;
use crate::plan::Managed;
use crate::probe::dns::DnsClient;
use crate::probe::target::{Prober, TargetSpec};

/// SMTP sessions one look holds at once (a domain has a few backup addresses; looks are
/// already few at a time, `mtasts::watch::LOOKS_AT_ONCE`).
const SESSIONS_PER_LOOK: usize = 4;

/// How long one look at a host serves every domain that uses it. Thousands of domains on a
/// few shared hosts would otherwise each ask the same TLSA and open their own session to the
/// same backup at every refresh — the flood that gets mxguard rate-limited by the hosts it
/// watches; a backup not judged is looked at again after about this long
/// ([`super::super::mtasts::watch::MtaStsView::refresh_in`]), so a verdict is never older.
pub const HOST_LOOK_FOR: Duration = Duration::from_secs(300);

/// What one look at a host found: its TLSA and, for a backup that publishes TLSA, what each
/// of its addresses presented.
type HostLook = (TlsaFound, Vec<(String, Presented)>);
/// A host's look: when it began, and its answer once it is in.
type Entry = (Instant, Arc<OnceCell<HostLook>>);

/// The hosts' looks, shared by the domains of one fetcher (the same resolvers and CA): at most
/// one look per host in flight, its answer reused for [`HOST_LOOK_FOR`]. One entry per
/// distinct host and probe shape in the configuration, so the map stays bounded.
#[derive(Clone, Default)]
pub struct HostLooks {
    looks: Arc<Mutex<HashMap<String, Entry>>>,
}

impl HostLooks {
    /// The look at `key` younger than [`HOST_LOOK_FOR`], or `look`'s (made once however many
    /// domains ask at the same time; a look cancelled halfway is made by the next asker).
    async fn get<F>(&self, key: String, look: F) -> HostLook
    where
        F: std::future::Future<Output = HostLook>,
    {
        let cell = {
            let mut looks = self.looks.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match looks.get(&key) {
                Some((at, cell)) if now.duration_since(*at) < HOST_LOOK_FOR => cell.clone(),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    looks.insert(key, (now, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_init(|| look).await.clone()
    }
}

/// Looks at `cfg`'s domain now, with `fetcher`'s resolvers, budget, TLS client (the domain's
/// `ca_file` and the system roots: with `starttls = "require"` a chain that fails PKIX is not
/// seen, and the host is not checked) and shared host looks.
pub async fn look(cfg: &DomainConfig, fetcher: &Fetcher) -> Evaluation {
    let c = &cfg.checks;
    let clients: Vec<DnsClient> = c
        .resolvers
        .iter()
        .map(|r| DnsClient::resolver(*r, c.timeout))
        .collect();
    let prober = Prober::one_look(
        c,
        fetcher.tls.clone(),
        SESSIONS_PER_LOOK,
        Some(fetcher.dns.clone()),
    );
    let managed = Managed::new(cfg);
    let (clients, dns, shared) = (&clients, &fetcher.dns, &fetcher.dane);
    let primaries = join_all(
        managed
            .hosts(Side::Primary)
            .into_iter()
            .map(|host| async move {
                let key = format!("primary {host}");
                let (tlsa, _) = shared
                    .get(key, async {
                        (lookup::tlsa(dns, clients, &host).await, Vec::new())
                    })
                    .await;
                HostDane::judge(host, Side::Primary, tlsa, Vec::new())
            }),
    )
    .await;
    // mode a: the host at the backup's own addresses, never at what it resolves to now
    let addresses = managed.addresses(Side::Backup);
    let prober = &prober;
    let backups = join_all(managed.hosts(Side::Backup).into_iter().map(|host| {
        let addresses = addresses.clone();
        // what shapes the session: the addresses (mode a) and the SMTP policy
        let key = format!(
            "backup {host} {addresses:?} {} {:?} {} {:?}",
            c.smtp_port, c.starttls, c.ehlo_name, c.timeout
        );
        async move {
            let (tlsa, presented) = shared
                .get(key, backup_look(dns, clients, prober, &host, addresses))
                .await;
            HostDane::judge(host, Side::Backup, tlsa, presented)
        }
    }))
    .await;
    Evaluation::new(primaries.into_iter().chain(backups).collect())
}

/// A backup's TLSA and, when it publishes some, what each of its addresses presents.
async fn backup_look(
    dns: &crate::probe::budget::SharedDns,
    clients: &[DnsClient],
    prober: &Prober,
    host: &Fqdn,
    addresses: Vec<std::net::IpAddr>,
) -> HostLook {
    let tlsa = lookup::tlsa(dns, clients, host).await;
    let presented = if matches!(tlsa, TlsaFound::Records { .. }) {
        let spec = TargetSpec {
            side: Side::Backup,
            host: host.clone(),
            rcpt: None,
            addresses,
        };
        let ev = prober.probe_target(&spec, Utc::now()).await;
        ev.smtp
            .iter()
            .map(|r| (r.address.to_string(), lookup::presented(r)))
            .collect()
    } else {
        Vec::new()
    };
    (tlsa, presented)
}

/// Whether a backup host with TLSA could not be judged (its lookup failed or no TLS session
/// was seen): the next look comes sooner than the policy's refresh.
pub fn backup_unchecked(ev: &Evaluation) -> bool {
    ev.backups()
        .any(|h| matches!(h.verdict, super::Verdict::NotChecked(_)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_host_is_looked_at_once_for_every_domain_asking_at_the_same_time() {
        let looks = HostLooks::default();
        let made = AtomicUsize::new(0);
        let look = |found: TlsaFound| {
            let made = &made;
            async move {
                made.fetch_add(1, Ordering::SeqCst);
                // still in flight while the other domains ask
                tokio::task::yield_now().await;
                (found, Vec::new())
            }
        };
        let answers =
            join_all((0..50).map(|_| looks.get("backup b0".into(), look(TlsaFound::None)))).await;
        assert_eq!(made.load(Ordering::SeqCst), 1, "50 domains, one look");
        assert!(answers.iter().all(|(t, _)| *t == TlsaFound::None));
        // later asks within HOST_LOOK_FOR are answered from it, whatever they would find
        let again = looks
            .get(
                "backup b0".into(),
                look(TlsaFound::Failed { why: "x".into() }),
            )
            .await;
        assert_eq!(again.0, TlsaFound::None);
        assert_eq!(made.load(Ordering::SeqCst), 1);
        // another host (or another probe shape) is its own look
        let other = looks
            .get(
                "backup b1".into(),
                look(TlsaFound::Failed { why: "x".into() }),
            )
            .await;
        assert!(matches!(other.0, TlsaFound::Failed { .. }));
        assert_eq!(made.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_look_cancelled_halfway_is_made_by_the_next_asker() {
        let looks = HostLooks::default();
        let stuck = looks.get("primary p0".into(), std::future::pending());
        assert!(tokio::time::timeout(Duration::from_millis(20), stuck)
            .await
            .is_err());
        let (found, _) = looks
            .get("primary p0".into(), async { (TlsaFound::None, Vec::new()) })
            .await;
        assert_eq!(found, TlsaFound::None);
    }
}
