//! Which domains' postmaster RCPTs ride on a shared host's next session, and what each
//! domain's latest answer was.
//!
//! A host that thousands of domains use cannot take all their RCPTs every round: Postfix
//! answers about 100 a second here, so 2,000 domains would make every session 20 s long, and
//! the host's own verdict (banner, TLS) as old as that. The host's health is what detects an
//! outage; whether it accepts a domain's postmaster is configuration, which changes rarely.
//! So each scheduled round carries at most [`RCPT_PER_ROUND`] domains — never checked first,
//! then refused ones, then the longest unchecked — and a domain's latest answer stands until it
//! is checked again. Confirmation rounds carry only the domains whose RCPT was refused, so a
//! refusal is re-observed (not repeated from memory) before it can take a side Down.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use crate::model::Fqdn;
use crate::probe::smtp::{Recipient, SmtpReport};

/// RCPT checks per round and host: one transaction's worth.
pub const RCPT_PER_ROUND: usize = crate::probe::smtp::RCPT_BATCH;

#[derive(Default)]
pub(super) struct RcptRotation {
    /// The domains that want their postmaster checked at this host.
    domains: Vec<Fqdn>,
    /// Per domain: when last checked, and whether any address refused it then.
    checked: Vec<Option<Instant>>,
    refused: Vec<bool>,
    /// The latest answer per address and domain.
    latest: BTreeMap<(IpAddr, Fqdn), Recipient>,
}

impl RcptRotation {
    pub(super) fn add(&mut self, domain: Fqdn) {
        self.domains.push(domain);
        self.checked.push(None);
        self.refused.push(false);
    }

    /// The domains to check in the next round.
    pub(super) fn pick(&self, confirmation: bool) -> Vec<Fqdn> {
        let mut order: Vec<usize> = (0..self.domains.len())
            .filter(|&i| !confirmation || self.refused[i])
            .collect();
        // never checked (None sorts first), then refused, then the oldest check
        order.sort_by_key(|&i| (self.checked[i].is_some(), !self.refused[i], self.checked[i]));
        order
            .into_iter()
            .take(RCPT_PER_ROUND)
            .map(|i| self.domains[i].clone())
            .collect()
    }

    /// Keeps this round's answers (from each address's report) and completes each report
    /// that got as far as the RCPTs with the latest answers of the domains not checked this
    /// time, so that every domain's view ([`SmtpReport::for_domain`]) includes its own.
    pub(super) fn record(&mut self, checked: &[Fqdn], reports: &mut [SmtpReport], now: Instant) {
        if self.domains.is_empty() {
            return;
        }
        for r in reports.iter_mut() {
            r.recipients.sort_by(|a, b| a.domain.cmp(&b.domain));
        }
        let asked: BTreeSet<&Fqdn> = checked.iter().collect();
        for (i, d) in self.domains.iter().enumerate() {
            if !asked.contains(d) {
                continue;
            }
            let answers: Vec<&Recipient> = reports
                .iter()
                .filter_map(|r| {
                    r.recipients
                        .binary_search_by(|x| x.domain.cmp(d))
                        .ok()
                        .map(|k| &r.recipients[k])
                })
                .collect();
            if !answers.is_empty() {
                self.checked[i] = Some(now);
                self.refused[i] = answers.iter().any(|a| a.failure.is_some());
            }
        }
        for report in reports.iter_mut() {
            let ip = report.address.ip();
            for r in &report.recipients {
                self.latest.insert((ip, r.domain.clone()), r.clone());
            }
            if !report.pass {
                continue;
            }
            let earlier = self
                .latest
                .range((ip, Fqdn::root())..)
                .take_while(|((a, _), _)| *a == ip)
                .filter(|((_, d), _)| !asked.contains(d))
                .map(|(_, r)| r.clone());
            report.recipients.extend(earlier);
            report.recipients.sort_by(|a, b| a.domain.cmp(&b.domain));
        }
    }
}
