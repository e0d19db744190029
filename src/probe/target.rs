//! One target in one round: resolve it at every resolver, probe every address found, and hand
//! the health model a [`TargetRound`]. Concurrency is capped overall (a semaphore shared by all
//! domains) and per target (addresses of one host are probed a few at a time).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::dns::{self, DnsAnswer, DnsClient};
use super::smtp::{self, RcptCheck, SmtpPolicy, SmtpReport};
use crate::health::{AddressResult, ResolverResult, TargetRound};
use crate::model::{Fqdn, Side};

/// At most this many SMTP connections to one target's addresses at once.
pub const PER_TARGET_CONCURRENCY: usize = 4;

/// Shared probing resources.
#[derive(Clone)]
pub struct Prober {
    pub resolvers: Vec<DnsClient>,
    pub smtp: SmtpPolicy,
    /// Caps SMTP probes in flight across every domain.
    pub global: Arc<Semaphore>,
    /// At most this many addresses are kept from each resolver's answer and probed per target
    /// (`[checks] max_addresses`): a host's DNS belongs to someone else, and a hostile or broken
    /// answer with a hundred addresses must not become a hundred SMTP sessions a round.
    pub max_addresses: usize,
}

/// What to probe: one MX host of one side.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub side: Side,
    pub host: Fqdn,
    pub rcpt: Option<RcptCheck>,
    /// The addresses to probe, when the side is a set of addresses rather than names (mode
    /// `a`): the host's A/AAAA move between sides, so what `host` resolves to now says which
    /// side is published, not where this side's MTAs are. Empty: probe what `host` resolves to.
    pub addresses: Vec<IpAddr>,
}

impl TargetSpec {
    /// A named MX host, probed at the addresses it resolves to.
    pub fn named(side: Side, host: Fqdn, rcpt: Option<RcptCheck>) -> Self {
        TargetSpec {
            side,
            host,
            rcpt,
            addresses: Vec::new(),
        }
    }
}

/// Everything a round learned about a target: the health model's input plus the evidence.
#[derive(Debug, Clone, Serialize)]
pub struct TargetEvidence {
    pub side: Side,
    pub round: TargetRound,
    pub dns: Vec<DnsAnswer>,
    pub smtp: Vec<SmtpReport>,
}

impl Prober {
    pub async fn probe_target(&self, spec: &TargetSpec, now: DateTime<Utc>) -> TargetEvidence {
        let started = std::time::Instant::now();
        let mut lookups = JoinSet::new();
        for (i, client) in self.resolvers.iter().enumerate() {
            let client = *client;
            let host = spec.host.clone();
            lookups.spawn(async move { (i, dns::resolve_addresses(&client, &host).await) });
        }
        let mut per_resolver: Vec<Option<(Vec<IpAddr>, Vec<DnsAnswer>)>> =
            vec![None; self.resolvers.len()];
        while let Some(joined) = lookups.join_next().await {
            if let Ok((i, result)) = joined {
                per_resolver[i] = Some(result);
            }
        }
        let mut resolvers = Vec::new();
        let mut answers = Vec::new();
        let mut addresses = BTreeSet::new();
        let cap = self.max_addresses.max(1);
        for (client, result) in self.resolvers.iter().zip(per_resolver) {
            let (mut addrs, ans) = result.unwrap_or_default();
            if addrs.len() > cap {
                tracing::debug!(host = %spec.host, resolver = %client.server, answered = addrs.len(), kept = cap, "more addresses than max_addresses; the first are kept");
                addrs.sort();
                addrs.truncate(cap);
            }
            addresses.extend(addrs.iter().copied());
            resolvers.push(ResolverResult {
                resolver: client.server.to_string(),
                error: addrs.is_empty().then(|| dns::resolution_error(&ans)),
                addresses: addrs,
            });
            answers.extend(ans);
        }

        if !spec.addresses.is_empty() {
            // Senders still connect to `host` by name, so it must resolve (at the quorum, as
            // above); the SMTP probes go to this side's own addresses, with `host` as the TLS
            // name.
            addresses = spec.addresses.iter().copied().collect();
        }
        let addresses: Vec<IpAddr> = addresses.into_iter().take(cap).collect();
        let mut policy = self.smtp.clone();
        policy.rcpt = spec.rcpt.clone();
        // The deadline is the whole probe's: what the lookups took is spent.
        policy.deadline = policy.deadline.map(|d| d.saturating_sub(started.elapsed()));
        let policy = Arc::new(policy);
        let local = Arc::new(Semaphore::new(PER_TARGET_CONCURRENCY));
        let mut probes = JoinSet::new();
        for address in addresses {
            let (policy, local, global, host) = (
                policy.clone(),
                local.clone(),
                self.global.clone(),
                spec.host.clone(),
            );
            probes.spawn(async move {
                let _l = local.acquire_owned().await.ok();
                let _g = global.acquire_owned().await.ok();
                smtp::probe(&host, address, &policy, now).await
            });
        }
        let mut reports = Vec::new();
        while let Some(joined) = probes.join_next().await {
            if let Ok(report) = joined {
                reports.push(report);
            }
        }
        reports.sort_by_key(|r| r.address);
        TargetEvidence {
            side: spec.side,
            round: TargetRound {
                target: spec.host.clone(),
                resolvers,
                addresses: address_results(&reports),
            },
            dns: answers,
            smtp: reports,
        }
    }
}

fn address_results(reports: &[SmtpReport]) -> Vec<AddressResult> {
    reports
        .iter()
        .map(|r| AddressResult {
            address: r.address.ip(),
            pass: r.pass,
            soft: r.failure.as_ref().is_some_and(|f| f.kind.is_soft()),
            reason: r.summary(),
        })
        .collect()
}

impl TargetEvidence {
    /// The round as one of the domains it checked sees it: each address passes only if it
    /// also accepted that domain's postmaster ([`SmtpReport::for_domain`]). Without RCPT
    /// checks, the host's round itself.
    pub fn for_domain(&self, domain: &Fqdn) -> TargetEvidence {
        let smtp: Vec<SmtpReport> = self.smtp.iter().map(|r| r.for_domain(domain)).collect();
        TargetEvidence {
            side: self.side,
            round: TargetRound {
                target: self.round.target.clone(),
                resolvers: self.round.resolvers.clone(),
                addresses: if self.smtp.iter().all(|r| r.recipients.is_empty()) {
                    self.round.addresses.clone()
                } else {
                    address_results(&smtp)
                },
            },
            dns: self.dns.clone(),
            smtp,
        }
    }
}
