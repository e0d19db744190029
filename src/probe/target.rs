//! One target in one round: resolve it at every resolver, probe every address found, and hand
//! the health model a [`TargetRound`]. Concurrency is capped overall (a semaphore shared by all
//! domains) and per target (addresses of one host are probed a few at a time). The resolvers
//! are asked through their shared query budgets, and good answers are reused between asks
//! ([`budget`](super::budget), [`reuse`](super::reuse)).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::budget::{Resolution, SharedDns};
use super::dns::{self, DnsAnswer, DnsClient};
use super::reuse::Rules;
use super::smtp::{self, RcptCheck, SmtpPolicy, SmtpReport};
use crate::health::{AddressResult, ResolverResult, TargetRound};
use crate::model::{Fqdn, Side};

/// At most this many SMTP connections to one target's addresses at once.
pub const PER_TARGET_CONCURRENCY: usize = 4;

/// Shared probing resources.
#[derive(Clone)]
pub struct Prober {
    pub resolvers: Vec<DnsClient>,
    /// The resolvers' query budgets and the hosts' last answers, shared by every prober.
    pub dns: SharedDns,
    /// How long this prober's rounds reuse a good answer (`[checks] dns_interval`).
    pub reuse: Rules,
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
    /// One scheduled round of `spec` (answers reused under [`Prober::reuse`]).
    pub async fn probe_target(&self, spec: &TargetSpec, now: DateTime<Utc>) -> TargetEvidence {
        self.probe_round(spec, now, false).await
    }

    /// One round of `spec`; a `confirmation` round asks every resolver again.
    pub async fn probe_round(
        &self,
        spec: &TargetSpec,
        now: DateTime<Utc>,
        confirmation: bool,
    ) -> TargetEvidence {
        let clock = self.dns.clock().clone();
        let started = clock.now();
        // Waiting for the budget may take up to half the round's deadline; the rest is the
        // queries' and the SMTP probes'.
        let latest = self.smtp.deadline.map_or(Duration::MAX, |d| d / 2);
        let mut lookups = JoinSet::new();
        for (i, client) in self.resolvers.iter().enumerate() {
            let (client, host, dns, rules) =
                (*client, spec.host.clone(), self.dns.clone(), self.reuse);
            lookups.spawn(async move {
                let got = dns
                    .resolve(&client, &host, &rules, confirmation, latest)
                    .await;
                (i, got)
            });
        }
        let mut per_resolver: Vec<Option<Option<Resolution>>> = vec![None; self.resolvers.len()];
        while let Some(joined) = lookups.join_next().await {
            if let Ok((i, result)) = joined {
                per_resolver[i] = Some(result);
            }
        }
        let mut resolvers = Vec::new();
        let mut unasked = Vec::new();
        let mut answers = Vec::new();
        let mut addresses = BTreeSet::new();
        let cap = self.max_addresses.max(1);
        for (client, result) in self.resolvers.iter().zip(per_resolver) {
            let (mut addrs, ans) = match result {
                // over the budget, with no good answer to stand in: no evidence either way
                Some(None) => {
                    unasked.push(client.server.to_string());
                    continue;
                }
                Some(Some(resolution)) => resolution,
                None => Default::default(),
            };
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
        // The deadline is the whole probe's: what the lookups took (and waited) is spent.
        let spent = clock.now().saturating_duration_since(started);
        policy.deadline = policy.deadline.map(|d| d.saturating_sub(spent));
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
                unasked,
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
                unasked: self.round.unasked.clone(),
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
