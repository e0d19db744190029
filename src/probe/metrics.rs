//! What each probe round measured, as Prometheus metrics: how long each phase took and how it
//! ended, why probes failed, and how long each target's certificate has left.
//!
//! Labels stay bounded: phases and failure kinds are closed sets, a target is an MX host name
//! from the configuration, never an address (a host's DNS belongs to someone else and may
//! answer any number of addresses), and a resolver is one of the configured resolvers' address
//! (the query budget is per resolver, `budget.rs`).

use std::net::SocketAddr;

use chrono::{DateTime, Utc};

use super::dns::DnsStatus;
use super::smtp::{FailureKind, SmtpReport};
use super::target::TargetEvidence;

pub const PROBE_DURATION: &str = "mxguard_probe_duration_seconds";
pub const PROBE_FAILURES: &str = "mxguard_probe_failures_total";
pub const CERT_DAYS_LEFT: &str = "mxguard_certificate_days_left";
/// When a probe round of the domain last passed on either side (Unix seconds), per domain; set
/// by the domain's actor, which sees the rounds as that domain's.
pub const LAST_SUCCESSFUL_ROUND: &str = "mxguard_last_successful_round_timestamp_seconds";

/// Queries sent to each resolver (probes and verification), per configured resolver.
pub const DNS_QUERIES: &str = "mxguard_dns_queries_total";
/// Queries a probe round did not send because the resolver's budget (`max_qps`) could not
/// serve them within half the round's deadline, per configured resolver.
pub const DNS_QUERIES_SKIPPED: &str = "mxguard_dns_queries_skipped_total";

/// The phase label of a whole SMTP session (every phase from connect to QUIT).
const SESSION: &str = "session";
/// The phase label of DNS lookups.
const DNS: &str = "dns";

/// The kind label of a failure, as the API's evidence spells it.
pub fn kind_label(kind: &FailureKind) -> &'static str {
    match kind {
        FailureKind::Timeout => "timeout",
        FailureKind::Network => "network",
        FailureKind::TempReject => "temp_reject",
        FailureKind::PermReject => "perm_reject",
        FailureKind::Protocol => "protocol",
        FailureKind::NoStarttls => "no_starttls",
        FailureKind::Tls => "tls",
        FailureKind::Certificate => "certificate",
        FailureKind::OpenRelay => "open_relay",
    }
}

/// A DNS answer's failure kind, `None` for an answer with records.
fn dns_kind(status: &DnsStatus) -> Option<&'static str> {
    match status {
        DnsStatus::NoError => None,
        DnsStatus::NoData => Some("nodata"),
        DnsStatus::NxDomain => Some("nxdomain"),
        DnsStatus::ServFail => Some("servfail"),
        DnsStatus::Refused => Some("refused"),
        DnsStatus::Timeout => Some("timeout"),
        DnsStatus::Rcode(_) => Some("rcode"),
        DnsStatus::Network(_) => Some("network"),
    }
}

fn outcome(failure: Option<&FailureKind>) -> &'static str {
    match failure {
        None => "pass",
        Some(k) if k.is_soft() => "soft",
        Some(_) => "fail",
    }
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Starts a resolver's query counters at zero, so `increase()` sees the first.
pub fn dns_budget_start(resolver: SocketAddr) {
    metrics::counter!(DNS_QUERIES, "resolver" => resolver.to_string()).increment(0);
    metrics::counter!(DNS_QUERIES_SKIPPED, "resolver" => resolver.to_string()).increment(0);
}

/// `n` queries sent to `resolver`.
pub fn dns_sent(resolver: SocketAddr, n: u32) {
    metrics::counter!(DNS_QUERIES, "resolver" => resolver.to_string()).increment(n.into());
}

/// `n` queries not sent to `resolver` for its budget.
pub fn dns_skipped(resolver: SocketAddr, n: u32) {
    metrics::counter!(DNS_QUERIES_SKIPPED, "resolver" => resolver.to_string()).increment(n.into());
}

/// Records one host round (once per host, however many domains use it). Reused DNS answers
/// were measured in the round that asked them.
pub fn record(evidence: &TargetEvidence, at: DateTime<Utc>) {
    for answer in evidence.dns.iter().filter(|a| !a.reused) {
        let kind = dns_kind(&answer.status);
        metrics::histogram!(PROBE_DURATION, "phase" => DNS, "outcome" => if kind.is_some() { "fail" } else { "pass" })
            .record(seconds(answer.latency_ms));
        if let Some(kind) = kind {
            metrics::counter!(PROBE_FAILURES, "phase" => DNS, "kind" => kind).increment(1);
        }
    }
    for report in &evidence.smtp {
        record_smtp(report);
    }
    let days_left = evidence
        .smtp
        .iter()
        .filter_map(|r| r.certificate.as_ref())
        .map(|c| (c.not_after - at).num_seconds() as f64 / 86_400.0)
        .reduce(f64::min);
    if let Some(days) = days_left {
        let target = evidence.round.target.without_dot().to_string();
        metrics::gauge!(CERT_DAYS_LEFT, "target" => target).set(days);
    }
}

fn record_smtp(report: &SmtpReport) {
    let failure = report.failure.as_ref();
    for phase in &report.phases {
        // The phase that failed ends in the failure's outcome; the ones before it passed.
        let failed_here = failure.filter(|f| f.phase == phase.phase);
        metrics::histogram!(PROBE_DURATION, "phase" => phase.phase.as_str(), "outcome" => outcome(failed_here.map(|f| &f.kind)))
            .record(seconds(phase.latency_ms));
    }
    metrics::histogram!(PROBE_DURATION, "phase" => SESSION, "outcome" => outcome(failure.map(|f| &f.kind)))
        .record(seconds(report.latency_ms));
    if let Some(f) = failure {
        metrics::counter!(PROBE_FAILURES, "phase" => f.phase.as_str(), "kind" => kind_label(&f.kind))
            .increment(1);
    }
    // A domain's postmaster refused: that domain's failure, in the same closed label sets.
    for r in &report.recipients {
        if let Some(f) = &r.failure {
            metrics::counter!(PROBE_FAILURES, "phase" => f.phase.as_str(), "kind" => kind_label(&f.kind))
                .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_kind_has_the_label_the_api_uses() {
        for kind in [
            FailureKind::Timeout,
            FailureKind::Network,
            FailureKind::TempReject,
            FailureKind::PermReject,
            FailureKind::Protocol,
            FailureKind::NoStarttls,
            FailureKind::Tls,
            FailureKind::Certificate,
            FailureKind::OpenRelay,
        ] {
            let api = serde_json::to_value(&kind).expect("serialise");
            assert_eq!(api.as_str(), Some(kind_label(&kind)), "{kind:?}");
        }
    }

    #[test]
    fn outcomes_keep_4xx_apart() {
        assert_eq!(outcome(None), "pass");
        assert_eq!(outcome(Some(&FailureKind::TempReject)), "soft");
        assert_eq!(outcome(Some(&FailureKind::PermReject)), "fail");
        assert_eq!(outcome(Some(&FailureKind::Timeout)), "fail");
    }
}
