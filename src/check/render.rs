//! The readable form of a [`CheckReport`].

use std::fmt::Write;

use super::CheckReport;

pub fn render_table(r: &CheckReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "mxguard check {}  ({} resolver(s), quorum {})",
        r.domain,
        r.resolvers.len(),
        r.resolver_quorum
    );
    let _ = writeln!(
        o,
        "\nMX set per resolver{}:",
        if r.mx_agree {
            " (all agree)"
        } else {
            " (DISAGREE)"
        }
    );
    for m in &r.mx {
        let recs: Vec<String> = m.answer.records.iter().map(|x| x.to_string()).collect();
        let ttl = m.answer.ttl.map(|t| format!("ttl {t}")).unwrap_or_default();
        let _ = writeln!(
            o,
            "  {:<22} {:<8} {} {ttl}",
            m.resolver,
            m.answer.status.label(),
            recs.join(", ")
        );
    }
    for t in &r.targets {
        let pref = t
            .preference
            .map(|p| format!(" (preference {p})"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "\n{} {}{pref}: {}",
            t.role,
            t.host,
            if t.up { "UP" } else { "DOWN" }
        );
        let _ = writeln!(o, "  verdict: {}", t.reason);
        for res in &t.resolvers {
            let addrs: Vec<String> = res.addresses.iter().map(|a| a.to_string()).collect();
            let shown = if addrs.is_empty() {
                res.error.clone().unwrap_or_default()
            } else {
                addrs.join(", ")
            };
            let _ = writeln!(o, "  resolver {:<22} {shown}", res.resolver);
        }
        for s in &t.smtp {
            let _ = writeln!(
                o,
                "  smtp {:<26} {}",
                s.address,
                if s.pass { "PASS" } else { "FAIL" }
            );
            for p in &s.phases {
                let code = p.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    o,
                    "    {:<16} {:>5} ms  {code:>3}  {}",
                    p.phase.as_str(),
                    p.latency_ms,
                    truncate(&p.text, 70)
                );
            }
            if let Some(f) = &s.failure {
                let _ = writeln!(o, "    failure: {f}");
            }
            if let Some(c) = &s.certificate {
                let _ = writeln!(
                    o,
                    "    certificate: {} ; issuer {} ; {} day(s) left ; names {}",
                    c.subject,
                    c.issuer,
                    c.days_left,
                    c.names.join(",")
                );
            }
        }
    }
    let _ = writeln!(o, "\nMail authentication:");
    for p in std::iter::once(&r.spf)
        .chain(std::iter::once(&r.dmarc))
        .chain(r.dkim.iter())
    {
        let state = match (&p.record, &p.error) {
            (None, _) => "absent".to_string(),
            (Some(_), Some(e)) => format!("INVALID: {e}"),
            (Some(rec), None) => format!("ok: {}", truncate(rec, 80)),
        };
        let _ = writeln!(o, "  {:<6} {:<40} {state}", p.kind, p.name);
    }
    for b in &r.backup_spf {
        let _ = writeln!(o, "  backup {} {} in SPF: {}", b.host, b.address, b.result);
    }
    render_mta_sts(&mut o, r);
    render_dane(&mut o, r);
    if let Some(ttl) = r.mx_ttl {
        let _ = writeln!(o, "\nMX TTL: {ttl} s");
    }
    for w in &r.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    if r.ok {
        let _ = writeln!(o, "\nOK: no problem found");
    } else {
        let _ = writeln!(o, "\n{} problem(s):", r.problems.len());
        for p in &r.problems {
            let _ = writeln!(o, "  - {p}");
        }
    }
    o
}

fn render_mta_sts(o: &mut String, r: &CheckReport) {
    let m = &r.mta_sts;
    let _ = writeln!(o, "\nMTA-STS:");
    match (&m.report.record, &m.report.policy) {
        (None, None) => {
            let _ = writeln!(o, "  no policy (no _mta-sts record)");
        }
        (record, Some(p)) => {
            let id = record.as_ref().map_or("-", |r| r.id.as_str());
            let mx: Vec<&str> = p.mx.iter().map(|x| x.as_str()).collect();
            let _ = writeln!(
                o,
                "  policy id {id}: mode {} ; max_age {} s ; mx {}",
                p.mode,
                p.max_age,
                mx.join(", ")
            );
        }
        (Some(rec), None) => {
            let _ = writeln!(o, "  record id {} ; policy not available", rec.id);
        }
    }
    if let Some(e) = &m.report.error {
        let _ = writeln!(o, "  error: {e}");
    }
    if let Some(ev) = &m.evaluation {
        for h in ev.primary.iter().chain(ev.backup.iter()) {
            let role = if ev.backup.contains(h) {
                "backup"
            } else {
                "primary"
            };
            let verdict = match (&h.pattern, h.refused) {
                (Some(p), _) => format!("listed ({p})"),
                (None, true) => "NOT LISTED: compliant senders refuse it".into(),
                (None, false) => "not listed (mode does not enforce)".into(),
            };
            let _ = writeln!(o, "  {role:<7} {:<36} {verdict}", h.host.to_string());
        }
    }
    match (&m.report.tlsrpt, &m.report.tlsrpt_error) {
        (Some(t), _) => {
            let _ = writeln!(o, "  TLS-RPT rua {}", t.rua.join(", "));
        }
        (None, Some(e)) => {
            let _ = writeln!(o, "  TLS-RPT INVALID: {e}");
        }
        (None, None) => {
            let _ = writeln!(o, "  TLS-RPT: none");
        }
    }
}

fn render_dane(o: &mut String, r: &CheckReport) {
    let _ = writeln!(o, "\nDANE (TLSA at _25._tcp.HOST):");
    for h in &r.dane.hosts {
        let role = h.role.as_str();
        let tlsa = match &h.tlsa {
            crate::dane::TlsaFound::None => "no TLSA".to_string(),
            crate::dane::TlsaFound::Records {
                records,
                authenticated,
            } => {
                let shown: Vec<String> = records.iter().map(|t| t.to_string()).collect();
                let ad = if *authenticated {
                    "DNSSEC-validated"
                } else {
                    "not DNSSEC-validated"
                };
                format!("TLSA {} ({ad})", shown.join(", "))
            }
            crate::dane::TlsaFound::Failed { why } => format!("TLSA lookup failed: {why}"),
        };
        let _ = writeln!(o, "  {role:<7} {:<36} {tlsa}", h.host.to_string());
        for a in &h.addresses {
            let _ = writeln!(o, "          at {}: {}", a.address, a.verdict);
        }
        if h.addresses.is_empty() {
            let _ = writeln!(o, "          {}", h.verdict);
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
