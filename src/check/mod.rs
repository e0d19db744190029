//! `mxguard check DOMAIN`: the runbook's checks as one command, with no configuration.
//! What each resolver says about the MX set and its hosts, each address's SMTP dialogue and
//! certificate, SPF / DMARC / DKIM, whether each backup passes the domain's SPF, and the
//! domain's MTA-STS policy and TLS-RPT record with whether compliant senders would deliver to
//! each backup (`src/mtasts.rs`), and each host's TLSA with whether DANE senders would deliver
//! to it (`src/dane.rs`).

pub mod auth;
mod render;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::StartTls;
use crate::health::{target_verdict, ResolverResult};
use crate::model::{Fqdn, RecordType, Side};
use crate::probe::dns::{DnsAnswer, DnsClient};
use crate::probe::smtp::{FailureKind, RcptCheck, SmtpPolicy, SmtpReport};
use crate::probe::target::{Prober, TargetSpec};
use crate::probe::tls;

pub use auth::{BackupSpf, PolicyRecord};
pub use render::render_table;

/// What `mxguard check` was asked to do.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    pub domain: Fqdn,
    pub resolvers: Vec<SocketAddr>,
    pub port: u16,
    pub backups: Vec<Fqdn>,
    pub ca_file: Option<PathBuf>,
    pub starttls: StartTls,
    pub dkim_selectors: Vec<String>,
    pub timeout: Duration,
    pub ehlo_name: Fqdn,
    pub cert_min_days: u32,
}

/// The MX set as one resolver sees it.
#[derive(Debug, Clone, Serialize)]
pub struct MxView {
    pub resolver: String,
    pub answer: DnsAnswer,
}

/// One target (an MX host, or a backup named with `--backup`).
#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    pub host: Fqdn,
    pub role: Side,
    /// MX preference, for published MX hosts.
    pub preference: Option<u16>,
    pub up: bool,
    pub reason: String,
    pub resolvers: Vec<ResolverResult>,
    pub smtp: Vec<SmtpReport>,
}

/// The whole report; `--json` prints it as is. Field names are stable (see docs/CLI.md).
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub domain: Fqdn,
    pub checked_at: DateTime<Utc>,
    pub resolvers: Vec<String>,
    pub resolver_quorum: u32,
    pub mx: Vec<MxView>,
    pub mx_agree: bool,
    pub mx_ttl: Option<u32>,
    pub targets: Vec<TargetView>,
    pub spf: PolicyRecord,
    pub dmarc: PolicyRecord,
    pub dkim: Vec<PolicyRecord>,
    pub backup_spf: Vec<BackupSpf>,
    pub mta_sts: MtaStsCheck,
    /// Each target's TLSA and what a DANE sender would do with it (`src/dane.rs`).
    pub dane: crate::dane::Evaluation,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub ok: bool,
}

/// The domain's MTA-STS policy and TLS-RPT record, and what the policy says of the MX hosts
/// found (primary) and the `--backup` hosts.
#[derive(Debug, Clone, Serialize)]
pub struct MtaStsCheck {
    #[serde(flatten)]
    pub report: crate::mtasts::fetch::PolicyReport,
    /// `None` without a policy.
    pub evaluation: Option<crate::mtasts::Evaluation>,
}

/// Runs every check. Errors only for bad setup (an unreadable `ca_file`); everything the
/// network does is a finding in the report.
pub async fn run(req: &CheckRequest, now: DateTime<Utc>) -> Result<CheckReport, String> {
    let clients: Vec<DnsClient> = req
        .resolvers
        .iter()
        .map(|r| DnsClient::resolver(*r, req.timeout))
        .collect();
    let quorum = (clients.len() as u32) / 2 + 1;
    let prober = Prober {
        resolvers: clients.clone(),
        smtp: SmtpPolicy {
            keep_chain: true,
            port: req.port,
            timeout: req.timeout,
            // As `serve` would judge it with these timeouts at the default interval.
            deadline: Some(crate::vantage::probe_deadline(&crate::config::Checks {
                timeout: req.timeout,
                ..crate::config::Checks::default()
            })),
            starttls: req.starttls,
            ehlo_name: req.ehlo_name.clone(),
            cert_min_days: req.cert_min_days,
            tls: tls::client_config(req.ca_file.as_deref())?,
            rcpt: None,
        },
        dns: crate::probe::budget::SharedDns::unlimited(),
        reuse: crate::probe::reuse::Rules::ALWAYS_ASK,
        global: Arc::new(Semaphore::new(64)),
        max_addresses: crate::config::Checks::default().max_addresses as usize,
    };
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    // 1. The MX set per resolver, and whether they agree.
    let mx: Vec<MxView> = join_all(clients.iter().map(|c| {
        let d = req.domain.clone();
        let c = *c;
        async move {
            MxView {
                resolver: c.server.to_string(),
                answer: c.query(&d, RecordType::Mx).await,
            }
        }
    }))
    .await;
    let sets: Vec<Vec<String>> = mx
        .iter()
        .map(|m| m.answer.records.iter().map(|r| r.to_string()).collect())
        .collect();
    let mx_agree = sets.windows(2).all(|w| w[0] == w[1]);
    if !mx_agree {
        let detail: Vec<String> = mx
            .iter()
            .map(|m| format!("{}: {}", m.resolver, describe_mx(&m.answer)))
            .collect();
        problems.push(format!(
            "resolvers disagree on the MX set ({})",
            detail.join("; ")
        ));
    }
    let mx_ttl = mx.iter().filter_map(|m| m.answer.ttl).min();
    let mut hosts: BTreeMap<Fqdn, u16> = BTreeMap::new();
    for m in &mx {
        for rec in m.answer.mx() {
            if rec.is_null() {
                warnings.push(format!(
                    "{} publishes a Null MX: the domain accepts no mail",
                    m.resolver
                ));
                continue;
            }
            let pref = hosts
                .entry(rec.exchange.clone())
                .or_insert(rec.preference.0);
            *pref = (*pref).min(rec.preference.0);
        }
    }
    if hosts.is_empty() {
        problems.push(format!(
            "no resolver returned an MX host for {}",
            req.domain
        ));
    }

    // 2. Each target: resolution per resolver, SMTP per address.
    let mut specs: Vec<(TargetSpec, Option<u16>)> = hosts
        .iter()
        .map(|(h, p)| {
            let spec = TargetSpec {
                side: Side::Primary,
                host: h.clone(),
                rcpt: Some(RcptCheck::one(req.domain.clone(), false)),
                addresses: Vec::new(),
            };
            (spec, Some(*p))
        })
        .collect();
    specs.sort_by_key(|(s, p)| (*p, s.host.clone()));
    for b in &req.backups {
        let spec = TargetSpec {
            side: Side::Backup,
            host: b.clone(),
            rcpt: Some(RcptCheck::one(req.domain.clone(), true)),
            addresses: Vec::new(),
        };
        specs.push((spec, None));
    }
    let evidence =
        join_all(specs.iter().map(|(spec, _)| async {
            prober.probe_target(spec, now).await.for_domain(&req.domain)
        }))
        .await;
    let mut targets = Vec::new();
    for ((spec, pref), ev) in specs.iter().zip(evidence) {
        let verdict = target_verdict(&ev.round, quorum);
        let role = spec.side.as_str();
        if !verdict.up {
            problems.push(format!("{role} {} is down: {}", spec.host, verdict.reason));
        }
        for r in &ev.smtp {
            if let Some(f) = &r.failure {
                if f.kind == FailureKind::OpenRelay {
                    problems.push(format!(
                        "{role} {} at {} is an open relay: {}",
                        spec.host, r.address, f.detail
                    ));
                } else if verdict.up {
                    problems.push(format!("{role} {} at {} fails: {f}", spec.host, r.address));
                }
            }
            for w in &r.warnings {
                warnings.push(format!("{} at {}: {w}", spec.host, r.address));
            }
        }
        targets.push(TargetView {
            host: spec.host.clone(),
            role: spec.side,
            preference: *pref,
            up: verdict.up,
            reason: verdict.reason.to_string(),
            resolvers: ev.round.resolvers,
            smtp: ev.smtp,
        });
    }

    // 3. SPF, DMARC, DKIM, and the backups against SPF.
    let first = clients.first().copied().ok_or("no resolver to ask")?;
    let spf = auth::spf_record(&first, &req.domain).await;
    let dmarc = auth::dmarc_record(&first, &req.domain).await;
    let mut dkim = Vec::new();
    for s in &req.dkim_selectors {
        dkim.push(auth::dkim_record(&first, &req.domain, s).await);
    }
    for rec in std::iter::once(&spf)
        .chain(std::iter::once(&dmarc))
        .chain(dkim.iter())
    {
        if !rec.present {
            warnings.push(format!("no {} record at {}", rec.kind, rec.name));
        } else if let Some(e) = &rec.error {
            problems.push(format!(
                "{} record at {} does not parse: {e}",
                rec.kind, rec.name
            ));
        }
    }
    let mut backup_spf = Vec::new();
    if spf.present && spf.error.is_none() {
        let backups: Vec<&TargetView> = targets.iter().filter(|t| t.role == Side::Backup).collect();
        let mut checks = Vec::new();
        for t in &backups {
            for r in &t.resolvers {
                for a in &r.addresses {
                    if !checks.iter().any(|(h, ip)| h == &t.host && ip == a) {
                        checks.push((t.host.clone(), *a));
                    }
                }
            }
        }
        backup_spf = auth::backups_in_spf(first.server, &req.domain, &checks, &req.ehlo_name).await;
        for b in backup_spf.iter().filter(|b| !b.pass) {
            problems.push(format!(
                "backup {} at {} is not allowed by {}'s SPF ({})",
                b.host, b.address, req.domain, b.result
            ));
        }
    }

    // 4. MTA-STS: the policy, and whether compliant senders would deliver to each side.
    let fetcher = crate::mtasts::fetch::Fetcher {
        resolvers: req.resolvers.clone(),
        dns_timeout: req.timeout,
        tls: prober.smtp.tls.clone(),
        cache: Arc::default(),
        dns: crate::probe::budget::SharedDns::unlimited(),
        dane: Default::default(),
        port: crate::mtasts::fetch::port_from_env(),
    };
    let report = fetcher.look(&req.domain).await;
    let sides = crate::mtasts::Hosts::Mx {
        primary: hosts.keys().cloned().collect(),
        backup: req.backups.clone(),
    };
    let evaluation = report
        .policy
        .as_ref()
        .map(|p| crate::mtasts::evaluate(p, &sides));
    if let Some(e) = &report.error {
        warnings.push(format!(
            "MTA-STS: {e}{}",
            if report.policy.is_some() {
                " (the policy cached within its max_age stays in force)"
            } else {
                " (senders without a cached policy deliver as if there were none)"
            }
        ));
    }
    if let Some(e) = &report.tlsrpt_error {
        warnings.push(format!("TLS-RPT record: {e}"));
    }
    if let Some(ev) = &evaluation {
        for h in ev.primary.iter().filter(|h| h.refused) {
            problems.push(format!(
                "MX {} is not listed by the enforce-mode MTA-STS policy: compliant senders refuse it",
                h.host
            ));
        }
        if let Some(why) = &ev.backup_refused {
            problems.push(why.clone());
        }
        warnings.extend(ev.notes.iter().cloned());
    }
    let mta_sts = MtaStsCheck { report, evaluation };

    // 5. DANE: each target's TLSA against what each of its addresses presented.
    let dane = dane(&clients, &targets).await;
    problems.extend(dane.problems.iter().cloned());
    warnings.extend(dane.notes.iter().cloned());

    Ok(CheckReport {
        domain: req.domain.clone(),
        checked_at: now,
        resolvers: req.resolvers.iter().map(|r| r.to_string()).collect(),
        resolver_quorum: quorum,
        mx,
        mx_agree,
        mx_ttl,
        targets,
        spf,
        dmarc,
        dkim,
        backup_spf,
        mta_sts,
        dane,
        ok: problems.is_empty(),
        problems,
        warnings,
    })
}

/// Looks up every target's TLSA and judges it against the target's SMTP reports.
async fn dane(clients: &[DnsClient], targets: &[TargetView]) -> crate::dane::Evaluation {
    let hosts = join_all(targets.iter().map(|t| async move {
        let tlsa = crate::dane::lookup::tlsa(
            &crate::probe::budget::SharedDns::unlimited(),
            clients,
            &t.host,
        )
        .await;
        let presented = t
            .smtp
            .iter()
            .map(|r| (r.address.to_string(), crate::dane::lookup::presented(r)))
            .collect();
        crate::dane::HostDane::judge(t.host.clone(), t.role, tlsa, presented)
    }))
    .await;
    crate::dane::Evaluation::new(hosts)
}

fn describe_mx(a: &DnsAnswer) -> String {
    if a.records.is_empty() {
        a.status.label()
    } else {
        a.records
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
