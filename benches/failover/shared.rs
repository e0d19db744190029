//! Part 2b (`scale --hosts H --shared-domains N,…`): many domains on a few shared MX hosts, the
//! shape of a hosting or mail provider. N domains over H hosts: H/2 primary hosts and H/2
//! backups, domain i on primary `p{i mod H/2}` and backup `b{i mod H/2}`; `named` (TSIG) serves
//! every domain's MX and the hosts' A records in one zone, two Unbound resolvers (quorum 2),
//! and every host is the same light STARTTLS listener (`FaultListener`) except `p0`, which has
//! a listener of its own on another loopback address so that it alone can fail.
//!
//! Measured: start → every domain out of `unknown`; RSS and CPU; SMTP sessions per second
//! (they should follow hosts, not domains); then `p0`'s listener is dropped and the bench waits
//! for every domain on it to be decided (left `primary`) and verified (`on_backup`: the change
//! was seen at `named`), with the times from the outage.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mxguard_testpeers::{Ca, CertKind, Fault, FaultListener};
use serde_json::{json, Value};

use crate::lab::SECRET;
use crate::util::{proc_cpu_secs, proc_status_kb, Res, Service};

const TOKEN: &str = "bench-shared-token";

pub struct Opts {
    pub domains: Vec<usize>,
    pub hosts: usize,
    pub secs: u64,
}

pub async fn run(opts: &Opts) -> Res<Value> {
    let mut results = Vec::new();
    for &domains in &opts.domains {
        let r = match one(domains, opts.hosts.max(2), opts.secs).await {
            Ok(r) => r,
            Err(e) => {
                let e: String = e.chars().take(2_000).collect();
                eprintln!("  {domains} domains failed: {e}");
                json!({"domains": domains, "error": e})
            }
        };
        eprintln!("  {r}");
        results.push(r);
    }
    println!();
    println!(
        "Domains on shared hosts ({} hosts; interval 5 s; STARTTLS; 2 resolvers; {} s measured after settling)",
        opts.hosts, opts.secs
    );
    println!("| domains | hosts | start → all settled | peak RSS | CPU after settling | SMTP sessions/s | outage of p0: its domains | → all decided (timeline) | → all changes verified (timeline) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        if let Some(e) = r["error"].as_str() {
            let first = e.lines().next().unwrap_or_default();
            println!("| {} | — | failed: {first} | | | | | | |", r["domains"]);
            continue;
        }
        let secs = |k: &str| {
            r[k].as_f64()
                .map_or("not reached".to_string(), |s| format!("{s:.1} s"))
        };
        println!(
            "| {} | {} | {} | {:.0} MiB | {:.0} % | {:.1} | {} | {} | {} |",
            r["domains"],
            r["hosts"],
            secs("settled_after_s"),
            r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            r["mxguard_cpu_percent"].as_f64().unwrap_or(f64::NAN),
            r["smtp_sessions_per_s"].as_f64().unwrap_or(f64::NAN),
            r["outage_domains"],
            decided_cell(r),
            secs("outage_change_last_s"),
        );
        crate::util::print_warnings_row(r, 9);
    }
    Ok(json!(results))
}

/// The last decision, and where the outage fell in p0's rounds: a decision is at best the
/// round that takes p0 Down, which comes (fail_after − 1) confirmations after its first failing
/// round, itself anywhere within an interval of the outage.
fn decided_cell(r: &Value) -> String {
    let s = |k: &str| r[k].as_f64();
    match (
        s("outage_decided_last_s"),
        s("outage_first_failing_round_s"),
        s("outage_down_round_s"),
    ) {
        (Some(last), Some(first), Some(down)) => format!(
            "{last:.1} s (p0's first failing round {first:.1} s, its Down round {down:.1} s)"
        ),
        (Some(last), _, _) => format!("{last:.1} s"),
        _ => "not reached".to_string(),
    }
}

/// Phases of every domain, by name, from one `GET /v1/domains`.
async fn phases(mx: &Service) -> Option<Vec<(String, String)>> {
    let (status, v) = mx
        .get("/v1/domains", TOKEN, Duration::from_secs(60))
        .await?;
    if status != 200 {
        return None;
    }
    Some(
        v["domains"]
            .as_array()?
            .iter()
            .map(|d| {
                (
                    d["domain"].as_str().unwrap_or_default().to_string(),
                    d["phase"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

async fn one(domains: usize, hosts: usize, secs: u64) -> Res<Value> {
    let half = hosts / 2;
    eprintln!("  {domains} domains on {half} primary + {half} backup hosts");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ca = Ca::new().map_err(|e| e.to_string())?;
    let leaf = |ca: &Ca| {
        ca.leaf(&["*.hosts.example.test"], CertKind::Valid)
            .map_err(|e| e.to_string())
    };
    let smtp = FaultListener::start(Fault::StartTls(leaf(&ca)?)).map_err(|e| e.to_string())?;
    let port = smtp.addr().port();
    let victim_ip = Ipv4Addr::new(127, 0, 0, 2);
    let victim = FaultListener::start_on(
        SocketAddr::new(IpAddr::V4(victim_ip), port),
        Fault::StartTls(leaf(&ca)?),
    )
    .map_err(|e| e.to_string())?;

    let mut records = String::new();
    for k in 0..half {
        let ip = if k == 0 {
            victim_ip.to_string()
        } else {
            smtp.addr().ip().to_string()
        };
        let _ = writeln!(records, "p{k}.hosts 300 IN A {ip}");
        let _ = writeln!(records, "b{k}.hosts 300 IN A {}", smtp.addr().ip());
    }
    let mut domain_lines = String::new();
    for i in 0..domains {
        let k = i % half;
        let _ = writeln!(records, "s{i} 300 IN MX 10 p{k}.hosts");
        let _ = write!(
            domain_lines,
            "\n[[domains]]\nname = \"s{i}.example.test\"\nzone = \"example.test\"\nprovider = \"lab\"\n\
             primary = [\"10 p{k}.hosts.example.test.\"]\nbackup = [\"10 b{k}.hosts.example.test.\"]\n\
             failover_ttl = 30\nauthoritative = [\"NAMED\"]\n"
        );
    }
    let lab = crate::scale::Lab::start(dir.path(), &records, &domain_lines, port, &ca, TOKEN, None)
        .await?;
    let config = lab.config.clone();

    let started = Instant::now();
    let mut mx = Service::start(dir.path(), &config, &[("MXGUARD_TEST_TSIG", SECRET)])?;
    let mut settled = None;
    let mut out_of_unknown = 0;
    let give_up = Duration::from_secs(900);
    while started.elapsed() < give_up {
        if let Some(status) = mx.exited() {
            return Err(format!("mxguard exited: {status}\n{}", mx.tail(20)));
        }
        if let Some(list) = phases(&mx).await {
            out_of_unknown = list.iter().filter(|(_, p)| p != "unknown").count();
            if list.len() == domains && out_of_unknown == domains {
                settled = Some(started.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "  settled: {:?} ({out_of_unknown} of {domains} out of `unknown`)",
        settled
    );
    let pid = mx.pid();
    let sessions = || smtp.connections() + victim.connections();
    let (c0, cpu0, t0) = (sessions(), proc_cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (c1, cpu1, elapsed) = (sessions(), proc_cpu_secs(pid), t0.elapsed().as_secs_f64());
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b - a) / elapsed * 100.0,
        _ => f64::NAN,
    };
    let rss_settled = proc_status_kb(pid, "VmRSS").unwrap_or(0);

    // The outage: p0 stops answering (connections refused), every domain on it must move.
    let on_p0: std::collections::BTreeSet<String> = (0..domains)
        .filter(|i| i % half == 0)
        .map(|i| format!("s{i}.example.test"))
        .collect();
    let outage = Instant::now();
    let outage_at = chrono::Utc::now();
    drop(victim);
    let (mut decided, mut verified) = (None, None);
    let mut last = (0, 0);
    while outage.elapsed() < Duration::from_secs(600) && settled.is_some() {
        if let Some(list) = phases(&mx).await {
            let mine: Vec<&String> = list
                .iter()
                .filter(|(n, _)| on_p0.contains(n.trim_end_matches('.')))
                .map(|(_, p)| p)
                .collect();
            let moved = mine.iter().filter(|p| p.as_str() != "primary").count();
            let done = mine.iter().filter(|p| p.as_str() == "on_backup").count();
            last = (moved, done);
            if decided.is_none() && moved == on_p0.len() {
                decided = Some(outage.elapsed());
            }
            if done == on_p0.len() {
                verified = Some(outage.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "  outage of p0 ({} domains): decided {decided:?}, verified {verified:?} (last: {} moved, {} on the backup)",
        on_p0.len(),
        last.0,
        last.1
    );
    // Exact moments from the timelines: each domain's transition out of `primary` (decided)
    // and its `change` event (published and seen at `named`), after the outage.
    let (mut decided_at, mut changed_at) = (Vec::new(), Vec::new());
    if verified.is_some() {
        let store = mx.store().await?;
        for name in &on_p0 {
            let d = mxguard::model::Fqdn::parse(name).map_err(|e| e.to_string())?;
            let events = store
                .events(&d, None, 10_000)
                .await
                .map_err(|e| e.to_string())?;
            let after = |kind: &str| {
                events
                    .iter()
                    .find(|e| e.kind.as_str() == kind && e.at >= outage_at)
                    .map(|e| crate::util::ms_between(outage_at, e.at) / 1000.0)
            };
            decided_at.extend(after("transition"));
            changed_at.extend(after("change"));
        }
    }
    // Where the outage fell in p0's rounds, from the observations recorded once per host
    // round (each stamped when its round ended): its first failing round, and the round that
    // took it Down (the `fail_after`-th failing one, after the confirmations).
    let (mut first_failing, mut down_round) = (None, None);
    if verified.is_some() {
        let store = mx.store().await?;
        let rounds = p0_rounds(store.as_ref(), outage_at).await?;
        let failing: Vec<f64> = rounds.iter().filter(|r| r.1).map(|r| r.0).collect();
        first_failing = failing.first().copied();
        // The lab leaves `fail_after` at mxguard's default.
        let fail_after = mxguard::config::Checks::default().fail_after as usize;
        down_round = failing.get(fail_after.saturating_sub(1)).copied();
        eprintln!("  p0's rounds after the outage (s, failed): {rounds:?}");
    }
    let p = |v: &[f64], q: f64| (crate::util::percentile(v, q) * 10.0).round() / 10.0;
    eprintln!(
        "  from the timelines: decided median {} s, last {} s ({} domains); change verified median {} s, last {} s",
        p(&decided_at, 50.0),
        p(&decided_at, 100.0),
        decided_at.len(),
        p(&changed_at, 50.0),
        p(&changed_at, 100.0)
    );
    let hwm = proc_status_kb(pid, "VmHWM").unwrap_or(0);
    let warnings = mx.warnings();
    let warning_count: usize = warnings.iter().map(|(n, _)| n).sum();
    let top: Vec<String> = warnings
        .iter()
        .take(3)
        .map(|(n, m)| format!("{n}× {}", m.chars().take(160).collect::<String>()))
        .collect();
    drop(mx);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Ok(json!({
        "domains": domains,
        "hosts": hosts,
        "settled_after_s": settled.map(|s| round(s.as_secs_f64())),
        "domains_out_of_unknown": out_of_unknown,
        "peak_rss_mib": round(hwm as f64 / 1024.0),
        "rss_settled_mib": round(rss_settled as f64 / 1024.0),
        "mxguard_cpu_percent": cpu.round(),
        "smtp_sessions_per_s": round((c1 - c0) as f64 / elapsed),
        "scheduled_sessions_per_s": hosts as f64 / 5.0,
        "outage_domains": on_p0.len(),
        "outage_decided_after_s": decided.map(|s| round(s.as_secs_f64())),
        "outage_decided_median_s": p(&decided_at, 50.0),
        "outage_decided_last_s": p(&decided_at, 100.0),
        "outage_first_failing_round_s": first_failing.map(round),
        "outage_down_round_s": down_round.map(round),
        "outage_change_median_s": p(&changed_at, 50.0),
        "outage_change_last_s": p(&changed_at, 100.0),
        "outage_verified_after_s": verified.map(|s| round(s.as_secs_f64())),
        "warnings_logged": warning_count,
        "top_warnings": top,
        "measured_s": elapsed,
    }))
}

/// p0's host rounds from `since`: (seconds after `since`, whether its SMTP failed), one per
/// round, from the observations recorded per host round.
async fn p0_rounds(
    store: &dyn mxguard::store::Store,
    since: chrono::DateTime<chrono::Utc>,
) -> Res<Vec<(f64, bool)>> {
    let rows = store
        .recent_observations(&mxguard::model::Fqdn::root(), 200_000)
        .await
        .map_err(|e| e.to_string())?;
    let mut rounds: std::collections::BTreeMap<chrono::DateTime<chrono::Utc>, bool> =
        std::collections::BTreeMap::new();
    for o in rows {
        if o.target.trim_end_matches('.') != "p0.hosts.example.test"
            || o.observed_at < since
            || o.address.is_none()
        {
            continue;
        }
        *rounds.entry(o.observed_at).or_default() |= o.outcome != "pass";
    }
    Ok(rounds
        .into_iter()
        .map(|(at, failed)| (crate::util::ms_between(since, at) / 1000.0, failed))
        .collect())
}
