//! `/metrics` in the Prometheus text format. Per-domain state (phase, side health, override,
//! drift, change in flight) is read from the actors at scrape time, so it is never stale;
//! counters (HTTP requests, transitions, change intents by status), the probes' measurements
//! (`probe::metrics`: latency by phase and outcome, failure kinds, certificate days left) and
//! each domain's last successful round go through the `metrics` facade to a process-wide
//! Prometheus recorder, installed once. `mxguard_build_info` is written here at every scrape.
//!
//! The names `contrib/grafana/mxguard.json` and `contrib/prometheus/alerts.yaml` use are
//! checked against a real scrape by `tests/packaging.rs`.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::Api;
use crate::actor::Status;
use crate::health::Health;
use crate::machine::{Override, Phase};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Probe phases take from a millisecond (loopback) to the whole probe's deadline (19 s with the
/// default checks).
const PROBE_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const PHASES: [Phase; 7] = [
    Phase::Unknown,
    Phase::Primary,
    Phase::FailingOver,
    Phase::OnBackup,
    Phase::FailbackPending,
    Phase::FailingBack,
    Phase::BothDown,
];

/// Installs the process-wide recorder (once; later calls do nothing).
pub fn install() {
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        // Histograms, not the exporter's default summaries: buckets aggregate across
        // instances and over time (`histogram_quantile` in the dashboard).
        let built = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("mxguard_http_request_duration_seconds".into()),
                &buckets,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(crate::probe::metrics::PROBE_DURATION.into()),
                    &PROBE_BUCKETS,
                )
            })
            .and_then(PrometheusBuilder::install_recorder);
        match built {
            Ok(handle) => {
                metrics::describe_counter!(
                    "mxguard_http_requests_total",
                    "HTTP requests answered, by method, route template and status"
                );
                metrics::describe_histogram!(
                    "mxguard_http_request_duration_seconds",
                    "HTTP request latency, by method and route template"
                );
                metrics::describe_counter!(
                    "mxguard_transitions_total",
                    "State machine transitions, by domain"
                );
                metrics::describe_counter!(
                    "mxguard_change_intents_total",
                    "Change intents entering each status (pending, applied, verified, failed)"
                );
                metrics::describe_gauge!(
                    "mxguard_leader",
                    "1 while this instance holds the leader lease, else 0"
                );
                metrics::describe_gauge!(
                    "mxguard_lease_epoch",
                    "The fencing epoch of the lease as this instance last saw it"
                );
                metrics::describe_counter!(
                    "mxguard_change_failures_total",
                    "Failed publishes, by kind (fenced, auth, not_found, rate_limited, transient, rejected, plan, not_visible, store)"
                );
                metrics::describe_counter!(
                    "mxguard_fenced_writes_total",
                    "Provider writes refused because this instance's lease was no longer valid"
                );
                describe_probes();
                // At 0 from the start, so that increase() and rate() see the first one.
                for kind in crate::actor::error::ChangeError::KINDS {
                    metrics::counter!("mxguard_change_failures_total", "kind" => kind).absolute(0);
                }
                for status in ["pending", "applied", "verified", "failed"] {
                    metrics::counter!("mxguard_change_intents_total", "status" => status)
                        .absolute(0);
                }
                metrics::counter!("mxguard_fenced_writes_total").absolute(0);
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics shows state only");
                None
            }
        }
    });
}

fn describe_probes() {
    use crate::probe::metrics::{
        CERT_DAYS_LEFT, LAST_SUCCESSFUL_ROUND, PROBE_DURATION, PROBE_FAILURES,
    };
    metrics::describe_histogram!(
        PROBE_DURATION,
        metrics::Unit::Seconds,
        "Probe latency by phase (dns, connect, banner, ehlo, starttls, tls, ehlo_tls, mail_from, rcpt_postmaster, rcpt_relay, rset, quit; session: a whole SMTP session) and outcome (pass, soft: 4xx, fail)"
    );
    metrics::describe_counter!(
        PROBE_FAILURES,
        "Failed probes by phase and kind (SMTP: timeout, network, temp_reject, perm_reject, protocol, no_starttls, tls, certificate, open_relay; dns: nodata, nxdomain, servfail, refused, timeout, rcode, network)"
    );
    metrics::describe_gauge!(
        CERT_DAYS_LEFT,
        "Days until the soonest-expiring certificate of each MX target (host name) expires, as of its last TLS handshake"
    );
    metrics::describe_gauge!(
        LAST_SUCCESSFUL_ROUND,
        "When a probe round of each domain last passed on either side (Unix time): mail had somewhere to go"
    );
}

/// `mxguard_build_info`: which build answers, as labels on a constant 1.
pub fn render_build_info() -> String {
    let mut out = String::new();
    gauge(
        &mut out,
        "mxguard_build_info",
        "1, labelled with the version of mxguard and the platform it was built for",
    );
    let _ = writeln!(
        out,
        "mxguard_build_info{{version=\"{}\",target=\"{}-{}\"}} 1",
        label(env!("CARGO_PKG_VERSION")),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    out
}

/// A request's method as a metric label: the standard ones by name, anything else `OTHER`, so
/// that made-up methods cannot grow the label set (and the process's memory) without bound.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Counts and times every request by its route template (never the raw path).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!("mxguard_http_request_duration_seconds", "method" => method, "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("mxguard_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    resp
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

fn gauge(out: &mut String, metric: &str, help: &str) {
    let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
}

/// The per-domain gauges, from the actors' statuses.
pub fn render_state(statuses: &[std::sync::Arc<Status>]) -> String {
    let mut out = String::new();
    gauge(
        &mut out,
        "mxguard_domain_phase",
        "1 for the phase each domain's state machine is in, 0 for the others",
    );
    for s in statuses {
        let d = label(s.domain.without_dot());
        for p in PHASES {
            let v = u8::from(s.state.phase == p);
            let _ = writeln!(
                out,
                "mxguard_domain_phase{{domain=\"{d}\",phase=\"{}\"}} {v}",
                name(&p)
            );
        }
    }
    gauge(
        &mut out,
        "mxguard_side_health",
        "1 for each side's current verdict (up, down, unknown), 0 for the others",
    );
    for s in statuses {
        let d = label(s.domain.without_dot());
        for (side, h) in [("primary", s.state.primary), ("backup", s.state.backup)] {
            for cand in [Health::Up, Health::Down, Health::Unknown] {
                let v = u8::from(h == cand);
                let _ = writeln!(
                    out,
                    "mxguard_side_health{{domain=\"{d}\",side=\"{side}\",health=\"{}\"}} {v}",
                    name(&cand)
                );
            }
        }
    }
    gauge(
        &mut out,
        "mxguard_domain_published",
        "1 for the side whose records are published (neither: drift or not read yet)",
    );
    gauge(
        &mut out,
        "mxguard_domain_override",
        "1 when automation is paused or the domain is pinned",
    );
    gauge(
        &mut out,
        "mxguard_domain_change_in_flight",
        "1 while a change is being applied or verified",
    );
    gauge(
        &mut out,
        "mxguard_domain_drift",
        "1 when the published records match neither side",
    );
    for s in statuses {
        let d = label(s.domain.without_dot());
        let m = &s.state;
        for side in ["primary", "backup"] {
            let v = u8::from(m.published.is_some_and(|p| p.as_str() == side));
            let _ = writeln!(
                out,
                "mxguard_domain_published{{domain=\"{d}\",side=\"{side}\"}} {v}"
            );
        }
        let paused = matches!(m.overrides, Some(Override::Paused { .. }));
        let pinned = matches!(m.overrides, Some(Override::Pinned { .. }));
        let _ = writeln!(
            out,
            "mxguard_domain_override{{domain=\"{d}\",kind=\"paused\"}} {}",
            u8::from(paused)
        );
        let _ = writeln!(
            out,
            "mxguard_domain_override{{domain=\"{d}\",kind=\"pinned\"}} {}",
            u8::from(pinned)
        );
        let _ = writeln!(
            out,
            "mxguard_domain_change_in_flight{{domain=\"{d}\"}} {}",
            u8::from(m.writing().is_some())
        );
        let _ = writeln!(
            out,
            "mxguard_domain_drift{{domain=\"{d}\"}} {}",
            u8::from(s.drift)
        );
    }
    out
}

pub async fn metrics(State(api): State<Api>) -> Response {
    // From what each actor last published, never by waiting on every actor.
    let statuses: Vec<std::sync::Arc<Status>> = api
        .app
        .engine
        .domains
        .values()
        .map(|h| h.latest())
        .collect();
    let mut out = render_build_info();
    out.push_str(&render_state(&statuses));
    if let Some(h) = HANDLE.get().and_then(Option::as_ref) {
        h.run_upkeep();
        out.push_str(&h.render());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
