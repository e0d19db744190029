//! `serve`'s DANE look, made with each MTA-STS look (`mtasts::watch`): the TLSA of every
//! primary host (whether the domain uses DANE, for the downgrade note) and of every backup
//! host, a backup that publishes TLSA judged against the chain each of its addresses presents
//! over STARTTLS. The verdict rides in the MTA-STS view to the actor, so one finding — why
//! compliant senders would refuse the backup — covers both and one `mta_sts` setting decides.
//!
//! Only a backup host that publishes TLSA is probed: without records (or with a lookup that
//! failed) the verdict does not depend on what it presents, and `serve` already probes every
//! backup each round for its health, so the look adds SMTP sessions only for DANE backups.

use std::sync::Arc;

use chrono::Utc;
use futures::future::join_all;

use super::{lookup, Evaluation, HostDane, TlsaFound};
use crate::config::DomainConfig;
use crate::model::Side;
use crate::plan::Managed;
use crate::probe::dns::DnsClient;
use crate::probe::target::{Prober, TargetSpec};

/// SMTP sessions one look holds at once (a domain has a few backup addresses; looks are
/// already few at a time, `mtasts::watch::LOOKS_AT_ONCE`).
const SESSIONS_PER_LOOK: usize = 4;

/// Looks at `cfg`'s domain now, the backup's TLS sessions made with `tls` (the domain's
/// `ca_file` and the system roots: with `starttls = "require"` a chain that fails PKIX is
/// not seen, and the host is not checked).
pub async fn look(cfg: &DomainConfig, tls: Arc<rustls::ClientConfig>) -> Evaluation {
    let c = &cfg.checks;
    let clients: Vec<DnsClient> = c
        .resolvers
        .iter()
        .map(|r| DnsClient::resolver(*r, c.timeout))
        .collect();
    let prober = Prober::one_look(c, tls, SESSIONS_PER_LOOK);
    let managed = Managed::new(cfg);
    let clients = &clients;
    let primaries = join_all(
        managed
            .hosts(Side::Primary)
            .into_iter()
            .map(|host| async move {
                let tlsa = lookup::tlsa(clients, &host).await;
                HostDane::judge(host, Side::Primary, tlsa, Vec::new())
            }),
    )
    .await;
    // mode a: the host at the backup's own addresses, never at what it resolves to now
    let addresses = managed.addresses(Side::Backup);
    let prober = &prober;
    let backups = join_all(managed.hosts(Side::Backup).into_iter().map(|host| {
        let addresses = addresses.clone();
        async move {
            let tlsa = lookup::tlsa(clients, &host).await;
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
            HostDane::judge(host, Side::Backup, tlsa, presented)
        }
    }))
    .await;
    Evaluation::new(primaries.into_iter().chain(backups).collect())
}

/// Whether a backup host with TLSA could not be judged (its lookup failed or no TLS session
/// was seen): the next look comes sooner than the policy's refresh.
pub fn backup_unchecked(ev: &Evaluation) -> bool {
    ev.backups()
        .any(|h| matches!(h.verdict, super::Verdict::NotChecked(_)))
}
