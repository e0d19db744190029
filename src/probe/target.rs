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

impl Prober {
    /// A prober for one look outside the monitor's rounds (drills, DANE's look): the
    /// presented chain kept, no RCPT, at most `sessions` SMTP sessions at once. Without `dns`
    /// `checks`' resolvers are asked every time with no budget (a drill, a one-shot command);
    /// with `serve`'s, hosts' answers are shared with the probes and reused under `checks`'
    /// `dns_interval`, and what is asked is within the budget.
    pub fn one_look(
        c: &crate::config::Checks,
        tls: Arc<rustls::ClientConfig>,
        sessions: usize,
        dns: Option<SharedDns>,
    ) -> Prober {
        let (dns, reuse) = match dns {
            None => (SharedDns::unlimited(), Rules::ALWAYS_ASK),
            Some(dns) => (
                dns,
                Rules {
                    dns_interval: c.dns_interval,
                    interval: c.interval,
                },
            ),
        };
        Prober {
            resolvers: c
                .resolvers
                .iter()
                .map(|r| DnsClient::resolver(*r, c.timeout))
                .collect(),
            dns,
            reuse,
            smtp: SmtpPolicy {
                keep_chain: true,
                port: c.smtp_port,
                timeout: c.timeout,
                deadline: Some(crate::vantage::probe_deadline(c)),
                starttls: c.starttls,
                ehlo_name: c.ehlo_name.clone(),
                cert_min_days: c.cert_min_days,
                tls,
                rcpt: None,
            },
            global: Arc::new(Semaphore::new(sessions)),
            max_addresses: c.max_addresses as usize,
        }
    }
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
    /// checks, the host's round itself. A copy: for one domain (`mxguard check`); the
    /// monitor's fan-out shares the host's evidence ([`DomainEvidence`]).
    pub fn for_domain(&self, domain: &Fqdn) -> TargetEvidence {
        let smtp: Vec<SmtpReport> = self.smtp.iter().map(|r| r.for_domain(domain)).collect();
        TargetEvidence {
            side: self.side,
            round: TargetRound {
                addresses: if self.smtp.iter().all(|r| r.recipients.is_empty()) {
                    self.round.addresses.clone()
                } else {
                    address_results(&smtp)
                },
                ..self.round.clone()
            },
            dns: self.dns.clone(),
            smtp,
        }
    }
}

/// A target's round as one of its domains sees it, without a copy of the host's evidence:
/// every domain of a host holds the same [`TargetEvidence`] (a host of a thousand domains is
/// one copy a round, not a thousand). The domain's round differs from the host's only where an
/// address the host passed refused this domain's postmaster; only then does it have its own.
#[derive(Debug, Clone)]
pub struct DomainEvidence {
    pub host: Arc<TargetEvidence>,
    own: Option<Arc<TargetRound>>,
}

impl DomainEvidence {
    /// `host`'s round as `domain` sees it (the same verdicts as [`TargetEvidence::for_domain`]).
    pub fn of(host: &Arc<TargetEvidence>, domain: &Fqdn) -> Self {
        let refused = host
            .smtp
            .iter()
            .any(|r| r.pass && r.recipient(domain).is_some_and(|x| x.failure.is_some()));
        let own = refused.then(|| {
            let smtp: Vec<SmtpReport> = host.smtp.iter().map(|r| r.for_domain(domain)).collect();
            Arc::new(TargetRound {
                addresses: address_results(&smtp),
                ..host.round.clone()
            })
        });
        DomainEvidence {
            host: host.clone(),
            own,
        }
    }

    pub fn side(&self) -> Side {
        self.host.side
    }

    /// Whether this domain's round differs from the host's (its postmaster was refused).
    pub fn has_own_round(&self) -> bool {
        self.own.is_some()
    }

    /// The health model's input for this domain.
    pub fn round(&self) -> &TargetRound {
        self.own.as_deref().unwrap_or(&self.host.round)
    }

    pub fn dns(&self) -> &[DnsAnswer] {
        &self.host.dns
    }

    /// The SMTP reports as `domain` sees them: its own RCPT answer folded in, the other
    /// domains' left out. Built when asked (the verdicts do not need it).
    pub fn smtp_for(&self, domain: &Fqdn) -> Vec<SmtpReport> {
        self.host
            .smtp
            .iter()
            .map(|r| r.for_domain(domain))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::smtp::{Failure, FailureKind, Phase, Recipient};

    fn recipient(domain: &str, refused: bool) -> Recipient {
        Recipient {
            domain: Fqdn::parse(domain).unwrap(),
            latency_ms: 1,
            code: if refused { 550 } else { 250 },
            text: if refused { "5.1.1 unknown" } else { "ok" }.into(),
            failure: refused.then(|| Failure {
                phase: Phase::RcptPostmaster,
                kind: FailureKind::PermReject,
                detail: "550 5.1.1 unknown".into(),
            }),
        }
    }

    fn report(address: &str, host_pass: bool, recipients: Vec<Recipient>) -> SmtpReport {
        SmtpReport {
            host: Fqdn::parse("mx.example.net").unwrap(),
            address: format!("{address}:25").parse().unwrap(),
            pass: host_pass,
            failure: (!host_pass).then(|| Failure {
                phase: Phase::Banner,
                kind: FailureKind::TempReject,
                detail: "421 busy".into(),
            }),
            warnings: vec![],
            phases: vec![],
            starttls_offered: Some(true),
            certificate: None,
            chain: vec![],
            latency_ms: 3,
            recipients,
        }
    }

    fn host(smtp: Vec<SmtpReport>) -> Arc<TargetEvidence> {
        Arc::new(TargetEvidence {
            side: Side::Backup,
            round: TargetRound {
                target: Fqdn::parse("mx.example.net").unwrap(),
                resolvers: vec![],
                unasked: vec![],
                addresses: address_results(&smtp),
            },
            dns: vec![],
            smtp,
        })
    }

    #[test]
    fn a_domain_shares_the_hosts_round_unless_a_passing_address_refused_its_postmaster() {
        // a: refused at the passing address; b: accepted; c: refused only where the host
        // failed anyway; d: not checked this round.
        let evidence = host(vec![
            report(
                "192.0.2.1",
                true,
                vec![recipient("a.test", true), recipient("b.test", false)],
            ),
            report(
                "192.0.2.2",
                false,
                vec![recipient("b.test", false), recipient("c.test", true)],
            ),
        ]);
        for (domain, own) in [
            ("a.test", true),
            ("b.test", false),
            ("c.test", false),
            ("d.test", false),
        ] {
            let d = Fqdn::parse(domain).unwrap();
            let view = DomainEvidence::of(&evidence, &d);
            assert_eq!(view.has_own_round(), own, "{domain}");
            assert_eq!(
                view.round(),
                &evidence.for_domain(&d).round,
                "{domain}: the same round as a copy would give"
            );
            if !own {
                assert!(std::ptr::eq(view.round(), &evidence.round), "{domain}");
            }
        }
        let a = DomainEvidence::of(&evidence, &Fqdn::parse("a.test").unwrap());
        assert!(!a.round().addresses[0].pass);
        assert!(
            Arc::ptr_eq(&a.host, &evidence),
            "the host's evidence is not copied"
        );
    }
}
