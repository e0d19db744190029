//! Fetching a domain's MTA-STS policy and TLS-RPT record, as a compliant sender would.
//!
//! - The TXT records (`_mta-sts.DOMAIN`, `_smtp._tls.DOMAIN`) through mxguard's configured
//!   resolvers (the first that answers NOERROR, NODATA or NXDOMAIN is believed).
//! - The policy file over HTTPS only (§3.3): `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`,
//!   `mta-sts.DOMAIN` resolved through the same resolvers, a certificate valid for that name
//!   (the system roots plus `[checks] ca_file`), no redirects, status 200, `text/plain`, at
//!   most [`MAX_POLICY_BYTES`], within [`FETCH_TIMEOUT`].
//! - Cached like a sender caches it: while the TXT `id` is the cached one and the cached
//!   policy's `max_age` has not run out, the file is not fetched again; when a fetch fails, or
//!   the TXT record is gone or unreadable, a cached policy still in its `max_age` stays in
//!   force (senders keep using it, §5.1). mxguard's cache starts with the process: a sender
//!   may hold an older policy for longer.
//! - Every DNS query takes the spare part of its resolver's query budget (`probe::budget`),
//!   so that the looks of many domains at once never crowd out the probes.
//!
//! Tests serve the policy on a loopback port: [`Fetcher::port`], which [`Fetcher::for_checks`]
//! takes from [`TEST_PORT_ENV`] (for tests of the binary) and otherwise sets to 443. It is for
//! tests only — senders always use 443 — and every fetch on another port logs a warning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{parse_policy, parse_sts_record, parse_tlsrpt, StsPolicy, StsRecord, TlsRpt};
use crate::model::{Fqdn, RData, RecordType};
use crate::probe::budget::SharedDns;
use crate::probe::dns::{resolution_error, resolve_addresses, DnsClient, DnsStatus};

/// Test-only: fetch policies from this port instead of 443.
pub const TEST_PORT_ENV: &str = "MXGUARD_MTA_STS_TEST_PORT";
/// The policy file's size bound (RFC 8461 §3.3 suggests senders stop at 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// The whole HTTPS fetch (connect, TLS, answer, body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// What one look at a domain found. Serialised in `check --json` and the domain's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyReport {
    /// The `_mta-sts` record (`None`: none, or one that does not parse — see `error`).
    pub record: Option<StsRecord>,
    /// The policy in force (fetched now or cached within its `max_age`).
    pub policy: Option<StsPolicy>,
    /// The policy came from the cache (same `id`, `max_age` not run out).
    pub cached: bool,
    /// Why no policy is available, or why the cached one is used.
    pub error: Option<String>,
    pub tlsrpt: Option<TlsRpt>,
    pub tlsrpt_error: Option<String>,
}

impl PolicyReport {
    /// When to look again: `min(max_age, 1 h)`, at least a minute; five minutes after an
    /// error; an hour when there is no policy.
    pub fn refresh_in(&self) -> Duration {
        const HOUR: Duration = Duration::from_secs(3600);
        match (&self.policy, &self.error) {
            (_, Some(_)) => Duration::from_secs(300),
            (Some(p), None) => Duration::from_secs(u64::from(p.max_age))
                .min(HOUR)
                .max(Duration::from_secs(60)),
            (None, None) => HOUR,
        }
    }
}

struct Cached {
    id: String,
    policy: StsPolicy,
    until: Instant,
}

/// Policies by domain, with the TXT `id` they were fetched under and their `max_age`.
#[derive(Default)]
pub struct PolicyCache {
    entries: Mutex<HashMap<Fqdn, Cached>>,
}

impl PolicyCache {
    fn get(&self, domain: &Fqdn, now: Instant) -> Option<(String, StsPolicy)> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(domain)
            .filter(|c| now < c.until)
            .map(|c| (c.id.clone(), c.policy.clone()))
    }

    fn put(&self, domain: &Fqdn, id: String, policy: StsPolicy, now: Instant) {
        let until = now + Duration::from_secs(u64::from(policy.max_age));
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(domain.clone(), Cached { id, policy, until });
    }
}

/// What a fetch needs: the resolvers, their timeout, the TLS client (system roots + `ca_file`).
#[derive(Clone)]
pub struct Fetcher {
    pub resolvers: Vec<SocketAddr>,
    pub dns_timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
    pub cache: Arc<PolicyCache>,
    /// The resolvers' query budgets: every lookup takes the spare budget
    /// ([`SharedDns::background`]); `serve`'s is the probes', a one-shot command's unlimited.
    pub dns: SharedDns,
    /// The hosts' DANE looks, shared by the domains this fetcher serves.
    pub dane: crate::dane::watch::HostLooks,
    /// 443; another port only in tests ([`TEST_PORT_ENV`]).
    pub port: u16,
}

impl Fetcher {
    /// A fetcher for a domain's checks (its resolvers, timeout and `ca_file`), its lookups
    /// within `dns`'s budgets.
    pub fn for_checks(checks: &crate::config::Checks, dns: SharedDns) -> Result<Fetcher, String> {
        Ok(Fetcher {
            dns,
            dane: Default::default(),
            resolvers: checks.resolvers.clone(),
            dns_timeout: checks.timeout,
            tls: crate::probe::tls::client_config(checks.ca_file.as_deref())?,
            cache: Arc::default(),
            port: port_from_env(),
        })
    }

    /// The TXT strings at `name` from the first resolver that gives a definite answer.
    async fn txt(&self, name: &Fqdn) -> Result<Vec<String>, String> {
        let mut failures = Vec::new();
        for server in &self.resolvers {
            self.dns.background(*server, 1).await;
            let answer = DnsClient::resolver(*server, self.dns_timeout)
                .query(name, RecordType::Txt)
                .await;
            match answer.status {
                DnsStatus::NoError | DnsStatus::NoData | DnsStatus::NxDomain => {
                    return Ok(answer
                        .records
                        .into_iter()
                        .filter_map(|r| match r {
                            RData::Txt(t) => Some(t),
                            _ => None,
                        })
                        .collect())
                }
                other => failures.push(format!("{server}: {}", other.label())),
            }
        }
        Err(format!("TXT {name}: {}", failures.join(", ")))
    }

    /// Looks at `domain` now: TXT records, then the policy (cached or fetched).
    pub async fn look(&self, domain: &Fqdn) -> PolicyReport {
        let (sts_name, rpt_name) = (sub(domain, "_mta-sts"), sub(domain, "_smtp._tls"));
        let (sts, rpt) = tokio::join!(self.txt(&sts_name), self.txt(&rpt_name));
        let (tlsrpt, tlsrpt_error) = match rpt.and_then(|t| parse_tlsrpt(&t)) {
            Ok(r) => (r, None),
            Err(e) => (None, Some(e)),
        };
        let mut report = PolicyReport {
            record: None,
            policy: None,
            cached: false,
            error: None,
            tlsrpt,
            tlsrpt_error,
        };
        let now = Instant::now();
        let cached = self.cache.get(domain, now);
        let record = match sts.and_then(|t| parse_sts_record(&t)) {
            Ok(Some(r)) => r,
            Ok(None) => {
                // §5.1: a policy is withdrawn by publishing mode none, not by removing the
                // record; senders keep a cached policy until its max_age runs out.
                if let Some((_, policy)) = cached {
                    report.error = Some(
                        "no _mta-sts record now; senders keep the cached policy until its max_age runs out".into(),
                    );
                    report.policy = Some(policy);
                    report.cached = true;
                }
                return report;
            }
            Err(e) => {
                // A sender that cannot read the record keeps a cached policy in force.
                report.error = Some(format!("_mta-sts record: {e}"));
                if let Some((_, policy)) = cached {
                    report.policy = Some(policy);
                    report.cached = true;
                }
                return report;
            }
        };
        report.record = Some(record.clone());
        if let Some((id, policy)) = &cached {
            if *id == record.id {
                report.policy = Some(policy.clone());
                report.cached = true;
                return report;
            }
        }
        match self.https(domain).await {
            Ok(policy) => {
                self.cache.put(domain, record.id, policy.clone(), now);
                report.policy = Some(policy);
            }
            Err(e) => {
                report.error = Some(e);
                if let Some((_, policy)) = cached {
                    report.policy = Some(policy);
                    report.cached = true;
                }
            }
        }
        report
    }

    /// Fetches and parses the policy file (the §3.3 rules in the module doc).
    async fn https(&self, domain: &Fqdn) -> Result<StsPolicy, String> {
        let host = sub(domain, "mta-sts");
        let host_name = host.without_dot().to_string();
        let mut addrs = Vec::new();
        let mut failures = Vec::new();
        for server in &self.resolvers {
            let client = DnsClient::resolver(*server, self.dns_timeout);
            self.dns.background(*server, 2).await;
            let (found, answers) = resolve_addresses(&client, &host).await;
            if !found.is_empty() {
                addrs = found;
                break;
            }
            failures.push(format!("{server}: {}", resolution_error(&answers)));
        }
        if addrs.is_empty() {
            return Err(format!(
                "policy host {host_name} does not resolve ({})",
                failures.join("; ")
            ));
        }
        let port = self.port;
        let url = if port == 443 {
            format!("https://{host_name}/.well-known/mta-sts.txt")
        } else {
            tracing::warn!(
                port,
                "MTA-STS policy fetched from port {port}, not 443 ({TEST_PORT_ENV}): a setting for tests only; senders always use 443"
            );
            format!("https://{host_name}:{port}/.well-known/mta-sts.txt")
        };
        let sockets: Vec<SocketAddr> = addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .resolve_to_addrs(&host_name, &sockets)
            .build()
            .map_err(|e| format!("policy fetch: {e}"))?;
        let fetch = async {
            let mut response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
            let status = response.status();
            if status.is_redirection() {
                return Err(format!(
                    "{url}: answered {status}; MTA-STS policies are never fetched through a redirect"
                ));
            }
            if status != reqwest::StatusCode::OK {
                return Err(format!("{url}: answered {status}"));
            }
            let media = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            if !media.starts_with("text/plain") {
                return Err(format!(
                    "{url}: Content-Type {media:?}, not text/plain (senders refuse it)"
                ));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("{url}: {}", error_chain(&e)))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_POLICY_BYTES {
                    return Err(format!("{url}: larger than {MAX_POLICY_BYTES} bytes"));
                }
            }
            let text = String::from_utf8(body).map_err(|_| format!("{url}: not UTF-8"))?;
            parse_policy(&text).map_err(|e| format!("{url}: {e}"))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("{url}: no answer within {FETCH_TIMEOUT:?}"))?
    }
}

/// `label.domain.`
fn sub(domain: &Fqdn, label: &str) -> Fqdn {
    Fqdn::parse(&format!("{label}.{}", domain.as_str())).unwrap_or_else(|_| domain.clone())
}

/// 443, or the port [`TEST_PORT_ENV`] sets (tests of the binary only; warned at each fetch).
pub fn port_from_env() -> u16 {
    let Ok(raw) = std::env::var(TEST_PORT_ENV) else {
        return 443;
    };
    match raw.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => {
            tracing::warn!(value = %raw, "{TEST_PORT_ENV} is not a port; ignored (443)");
            443
        }
    }
}

/// An error and its sources on one line (reqwest's own text hides the TLS reason).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
