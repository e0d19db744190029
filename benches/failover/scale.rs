//! Part 2: probe rounds per second and peak memory of the release `mxguard serve` with 1,000
//! and 10,000 targets configured. The lab: `named` (TSIG) serving example.test with every
//! domain's MX and every target's A record, two Unbound resolvers (quorum 2), and one SMTP
//! listener with STARTTLS and a certificate for `*.example.test` from a test CA
//! (`FaultListener` with `Fault::StartTls`: a healthy MX host, much lighter than Postfix, which
//! could not take thousands of TLS sessions a second on this machine). Every target resolves to
//! it. Domains have `per_domain` targets each (half primary, half backup, rounded up for the
//! primary); mxguard's default timings (interval 5 s), RCPT checks off.
//!
//! After every domain has had its first rounds (none left in `unknown`), the bench counts the
//! SMTP sessions the listener accepts during `secs` seconds: each target has one address, so
//! one session is one target probed, and a side's round probes each of its targets once.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mxguard_testpeers::named::TsigKey;
use mxguard_testpeers::{Ca, CertKind, Fault, FaultListener, Named, Unbound, UnboundOptions, Zone};
use serde_json::{json, Value};

use crate::lab::SECRET;
use crate::util::{proc_cpu_secs, proc_status_kb, sha256_hex, Res, Service};

const TOKEN: &str = "bench-scale-token";

pub struct Opts {
    pub targets: Vec<usize>,
    pub per_domain: usize,
    pub secs: u64,
    /// Each resolver's query budget: every target is a host of its own, resolved through the
    /// budget, so the default (20) would take 1,000 s for 20,000 hosts' first answers.
    pub max_qps: u32,
}

pub async fn run(opts: &Opts) -> Res<Value> {
    let mut results = Vec::new();
    for &targets in &opts.targets {
        // a size that fails is reported as such; the others are still measured
        let r = match one(targets, opts.per_domain, opts.secs, opts.max_qps).await {
            Ok(r) => r,
            Err(e) => {
                let e: String = e.chars().take(2_000).collect();
                eprintln!("  {targets} targets failed: {e}");
                json!({"targets": targets, "error": e})
            }
        };
        eprintln!("  {r}");
        results.push(r);
    }
    println!();
    println!(
        "Probe rounds inside the service ({} s measured after every domain's first rounds; \
         interval 5 s; {} targets per domain; STARTTLS; 2 resolvers)",
        opts.secs, opts.per_domain
    );
    println!("| targets | domains | scheduled probes/s | probes/s | rounds/s | mxguard CPU | peak RSS (VmHWM) | all domains settled after |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &results {
        if let Some(e) = r["error"].as_str() {
            let first = e.lines().next().unwrap_or_default();
            println!("| {} | — | — | failed: {first} | | | | |", r["targets"]);
            continue;
        }
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} % | {:.0} MiB | {} |",
            r["targets"],
            r["domains"],
            r["scheduled_probes_per_s"].as_f64().unwrap_or(f64::NAN),
            r["probes_per_s"].as_f64().unwrap_or(f64::NAN),
            r["rounds_per_s"].as_f64().unwrap_or(f64::NAN),
            r["mxguard_cpu_percent"].as_f64().unwrap_or(f64::NAN),
            r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            match r["settled_after_s"].as_f64() {
                Some(s) => format!("{s:.1} s"),
                None => format!(
                    "not within 600 s ({} of {} out of `unknown`)",
                    r["domains_out_of_unknown"], r["domains"]
                ),
            },
        );
        crate::util::print_warnings_row(r, 8);
    }
    Ok(json!(results))
}

async fn one(targets: usize, per_domain: usize, secs: u64, max_qps: u32) -> Res<Value> {
    let per_domain = per_domain.max(2);
    let domains = targets.div_ceil(per_domain);
    let primaries = per_domain.div_ceil(2);
    let backups = per_domain - primaries;
    eprintln!("  {targets} targets: {domains} domains × ({primaries} primary + {backups} backup)");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;

    let ca = Ca::new().map_err(|e| e.to_string())?;
    let leaf = ca
        .leaf(&["*.example.test"], CertKind::Valid)
        .map_err(|e| e.to_string())?;
    let smtp = FaultListener::start(Fault::StartTls(leaf)).map_err(|e| e.to_string())?;
    let ip: IpAddr = smtp.addr().ip();

    let mut records = String::new();
    let mut domain_lines = String::new();
    for d in 1..=domains {
        let p: Vec<String> = (1..=primaries).map(|j| format!("p{d}-{j}")).collect();
        let b: Vec<String> = (1..=backups).map(|j| format!("b{d}-{j}")).collect();
        for h in p.iter().chain(&b) {
            let _ = writeln!(records, "{h} 300 IN A {ip}");
        }
        // the published MX set is the primary side, as configured
        for (k, h) in p.iter().enumerate() {
            let _ = writeln!(records, "d{d} 300 IN MX {} {h}", 10 * (k + 1));
        }
        let list = |hs: &[String]| {
            hs.iter()
                .enumerate()
                .map(|(k, h)| format!("\"{} {h}.example.test.\"", 10 * (k + 1)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            domain_lines,
            "\n[[domains]]\nname = \"d{d}.example.test\"\nzone = \"example.test\"\nprovider = \"lab\"\n\
             primary = [{}]\nbackup = [{}]\nfailover_ttl = 30\nauthoritative = [\"NAMED\"]\n",
            list(&p),
            list(&b)
        );
    }
    let lab = Lab::start(
        dir.path(),
        &records,
        &domain_lines,
        smtp.addr().port(),
        &ca,
        TOKEN,
        Some(max_qps),
    )
    .await?;
    let config = lab.config.clone();

    let started = Instant::now();
    let mut mx = Service::start(dir.path(), &config, &[("MXGUARD_TEST_TSIG", SECRET)])?;
    // Every domain out of `unknown`: each side has had a full round. When that does not
    // happen within 10 minutes the service is overloaded; it is measured all the same.
    let mut settled = None;
    let mut out_of_unknown = None;
    let give_up = Duration::from_secs(600);
    while started.elapsed() < give_up {
        if let Some(status) = mx.exited() {
            return Err(format!("mxguard exited: {status}\n{}", mx.tail(20)));
        }
        if let Some((200, v)) = mx.get("/v1/domains", TOKEN, Duration::from_secs(30)).await {
            let list = v["domains"].as_array().cloned().unwrap_or_default();
            let n = list.iter().filter(|d| d["phase"] != "unknown").count();
            out_of_unknown = Some(n);
            if list.len() == domains && n == domains {
                settled = Some(started.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if settled.is_none() {
        eprintln!(
            "  not settled after {give_up:?} ({} of {domains} domains out of `unknown` at the last answer); measuring anyway",
            out_of_unknown.map_or("?".to_string(), |n| n.to_string())
        );
    }
    let dashboard = dashboard_latency(&mx, domains).await;
    let pid = mx.pid();
    let (c0, cpu0, t0) = (smtp.connections(), proc_cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (c1, cpu1, elapsed) = (
        smtp.connections(),
        proc_cpu_secs(pid),
        t0.elapsed().as_secs_f64(),
    );
    let hwm = proc_status_kb(pid, "VmHWM").unwrap_or(0);
    let rss = proc_status_kb(pid, "VmRSS").unwrap_or(0);
    let not_primary = mx
        .get("/v1/domains", TOKEN, Duration::from_secs(60))
        .await
        .and_then(|(_, v)| {
            v["domains"]
                .as_array()
                .map(|l| l.iter().filter(|d| d["phase"] != "primary").count())
        });
    let probes = (c1 - c0) as f64 / elapsed;
    let sides_per_domain = if backups > 0 { 2.0 } else { 1.0 };
    let rounds = probes * domains as f64 * sides_per_domain / targets as f64;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b - a) / elapsed * 100.0,
        _ => f64::NAN,
    };
    let warnings = mx.warnings();
    let warning_count: usize = warnings.iter().map(|(n, _)| n).sum();
    let top: Vec<String> = warnings
        .iter()
        .take(3)
        .map(|(n, m)| format!("{n}× {}", m.chars().take(160).collect::<String>()))
        .collect();
    drop(mx);
    Ok(json!({
        "targets": domains * per_domain,
        "max_qps": max_qps,
        "domains": domains,
        "targets_per_domain": per_domain,
        "scheduled_probes_per_s": (domains * per_domain) as f64 / 5.0,
        "probes_per_s": (probes * 10.0).round() / 10.0,
        "rounds_per_s": (rounds * 10.0).round() / 10.0,
        "mxguard_cpu_percent": cpu.round(),
        "peak_rss_mib": (hwm as f64 / 1024.0 * 10.0).round() / 10.0,
        "rss_mib_at_end": (rss as f64 / 1024.0 * 10.0).round() / 10.0,
        "settled_after_s": settled.map(|s| (s.as_secs_f64() * 10.0).round() / 10.0),
        "dashboard": dashboard,
        "domains_out_of_unknown": out_of_unknown,
        "domains_not_on_primary_at_end": not_primary,
        "warnings_logged": warning_count,
        "top_warnings": top,
        "measured_s": elapsed,
    }))
}

/// The dashboard's domain list (`GET /ui`, the read token in its cookie) with every domain
/// configured, loaded 30 times one after another: milliseconds to the whole page, and its size.
async fn dashboard_latency(mx: &Service, domains: usize) -> Value {
    let cookie = format!(
        "mxguard_ui={}",
        TOKEN
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let client = reqwest::Client::new();
    let url = format!("http://{}/ui", mx.listen);
    let mut ms = Vec::new();
    let mut bytes = 0;
    let mut rows = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let Ok(resp) = client.get(&url).header("Cookie", &cookie).send().await else {
            continue;
        };
        let ok = resp.status().is_success();
        let Ok(body) = resp.text().await else {
            continue;
        };
        if ok {
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            bytes = body.len();
            rows = body.matches("<tr data-domain=").count();
        }
    }
    let p = |q: f64| (crate::util::percentile(&ms, q) * 10.0).round() / 10.0;
    eprintln!(
        "  dashboard /ui with {domains} domains ({rows} rows, {} KiB): median {} ms, p95 {} ms, max {} ms",
        bytes / 1024,
        p(50.0),
        p(95.0),
        p(100.0)
    );
    json!({"loads": ms.len(), "rows": rows, "bytes": bytes, "median_ms": p(50.0), "p95_ms": p(95.0), "max_ms": p(100.0)})
}

/// What the scale parts run `mxguard serve` against: `named` (TSIG) serving `example.test`
/// with `records`, two Unbound resolvers (quorum 2), and the service's config (a read token,
/// the RFC 2136 provider, STARTTLS on `smtp_port` trusting `ca`, RCPT checks off) with
/// `domains` (`[[domains]]` blocks, `NAMED` standing for the server's address).
pub struct Lab {
    /// The peers run while the lab is held.
    _named: Named,
    _resolvers: Vec<Unbound>,
    pub config: std::path::PathBuf,
}

impl Lab {
    pub async fn start(
        dir: &std::path::Path,
        records: &str,
        domains: &str,
        smtp_port: u16,
        ca: &Ca,
        token: &str,
        max_qps: Option<u32>,
    ) -> Res<Lab> {
        let tsig = TsigKey {
            name: "mxguard-test.".into(),
            algorithm: "hmac-sha256".into(),
            secret_b64: SECRET.into(),
        };
        let named = Named::start(&[Zone::new("example.test", records)], Some(&tsig))
            .await
            .map_err(|e| e.to_string())?;
        let mut resolvers = Vec::new();
        for _ in 0..2 {
            resolvers.push(
                Unbound::start("example.test", named.addr(), UnboundOptions::default())
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let list: Vec<String> = resolvers
            .iter()
            .map(|r| format!("\"{}\"", r.addr()))
            .collect();
        let config = dir.join("mxguard.toml");
        let text = format!(
            r#"[[tokens]]
name = "bench"
sha256 = "{digest}"
scopes = ["read"]

[providers.lab]
kind = "rfc2136"
server = "{named}"
tsig_name = "mxguard-test"
tsig_algorithm = "hmac-sha256"
tsig_secret_env = "MXGUARD_TEST_TSIG"

[checks]
resolvers = [{resolvers}]
resolver_quorum = 2
smtp_port = {smtp_port}
starttls = "require"
ca_file = "{ca}"
ehlo_name = "mxguard.test"
rcpt_checks = "off"
{max_qps}{domains}"#,
            digest = sha256_hex(token),
            named = named.addr(),
            resolvers = list.join(", "),
            ca = ca.cert_path().display(),
            domains = domains.replace("NAMED", &named.addr().to_string()),
            max_qps = max_qps.map_or(String::new(), |q| format!("max_qps = {q}\n")),
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        Ok(Lab {
            _named: named,
            _resolvers: resolvers,
            config,
        })
    }
}
