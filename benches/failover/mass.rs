//! Part 3: a mass outage through Cloudflare's rate limit. `domains` domains, each its own zone
//! at the fake Cloudflare API (`mxguard_testpeers::cloudflare`, enforcing 1,200 requests per
//! window per token and locking the token out for a window after the first request over it),
//! all with the same primary MX host; the primary stops and every domain must fail over to the
//! backup through the same API token.
//!
//! The window is scaled down (`window` seconds instead of 300) so a run takes minutes: the fake
//! enforces 1,200 per `window`, and mxguard's Cloudflare client is told the same window through
//! `MXGUARD_CLOUDFLARE_RATE_WINDOW_SECS` (it then paces a burst of 60 plus 1,140 per window,
//! its default budget, over that window). What does not scale with it: the probe timings and
//! the retry backoffs. The actors' reconcile period does: it derives from the client's pacing
//! (see `engine::reconcile_period`).
//!
//! Probes: `named` serves the MX hosts' addresses (example.test), two Unbound resolvers, and
//! two healthy SMTP listeners with STARTTLS on 127.0.0.20 (primary) and 127.0.0.21 (backup);
//! the outage drops the primary's listener. mxguard verifies each change at the fake's own
//! nameserver (`--verify dns`, each domain's `authoritative`) or by reading it back through the
//! API (`--verify api`, as before the fake served DNS).
//!
//! `--entries N` splits the domains over N provider entries, each with its own token of the
//! same user, all naming one `budget`; `--inject-429 S` makes the fake answer one request 429
//! with `retry-after: S` once a third of the domains are verified.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mxguard::model::Fqdn;
use mxguard_testpeers::cloudflare::{
    FakeCloudflare, FakeConfig, Fault as CfFault, Perms, RateLimitPolicy, Record, Route,
};
use mxguard_testpeers::dns::RcodeServer;
use mxguard_testpeers::hickory_proto::op::ResponseCode;
use mxguard_testpeers::{
    free_port_on, Ca, CertKind, Fault, FaultListener, Named, Stub, Unbound, UnboundOptions, Zone,
};
use serde_json::{json, Value};

use crate::util::{ms_between, percentile, phase_of, sha256_hex, show_ms, wait_for, Res, Service};

const CF_TOKEN: &str = "cf-bench-token-0123456789abcdef";
const API_TOKEN: &str = "bench-mass-token";
/// Requests one failover needed at Cloudflare before mxguard reused its read and verified by
/// DNS: its read of the live records, the provider's read for record ids inside `apply`, the
/// batch, the read-back that verified it. The bound it gives is what the issue measures against.
const PREVIOUS_REQUESTS_PER_FAILOVER: usize = 4;

/// How mxguard verifies each change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// At the fake's nameserver (each domain's `authoritative`).
    Dns,
    /// By reading back through the API.
    Api,
}

pub struct Opts {
    pub domains: usize,
    pub window: u64,
    pub verify: Verify,
    pub entries: usize,
    pub inject_429: Option<u64>,
}

fn token(entry: usize) -> String {
    if entry == 0 {
        CF_TOKEN.to_string()
    } else {
        format!("{CF_TOKEN}-{entry}")
    }
}

fn entry_name(entry: usize) -> String {
    if entry == 0 {
        "cf".to_string()
    } else {
        format!("cf{entry}")
    }
}

/// One `[providers.X]` per entry, each with its own token; several name one budget (the
/// `budget` key is left out for a single entry, so older builds read the config too).
fn providers_toml(entries: usize, url: &str) -> String {
    let mut out = String::new();
    for e in 0..entries {
        let _ = write!(
            out,
            "[providers.{}]\nkind = \"cloudflare\"\napi_token_env = \"MXGUARD_BENCH_CF_TOKEN_{e}\"\napi_url = \"{url}\"\n",
            entry_name(e)
        );
        if entries > 1 {
            out.push_str("budget = \"bench-user\"\n");
        }
        out.push('\n');
    }
    out
}

pub async fn run(opts: &Opts) -> Res<Value> {
    let n = opts.domains;
    let window = Duration::from_secs(opts.window);
    let policy = RateLimitPolicy {
        quota: 1_200,
        window,
    };
    let fake = FakeCloudflare::try_start(FakeConfig {
        rate_limit: Some(policy),
        ..FakeConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    for e in 0..opts.entries {
        fake.add_token(&token(e), Perms::FULL);
    }
    let nameserver = fake.serve_dns().map_err(|e| e.to_string())?;
    let names: Vec<String> = (1..=n).map(|i| format!("d{i}.cf.test")).collect();
    for zone in &names {
        fake.add_zone(zone);
        let name = zone.clone();
        fake.edit(zone, move |records, new_id| {
            records.push(Record {
                id: new_id(),
                rtype: "MX".into(),
                name,
                content: "mx1.example.test".into(),
                priority: Some(10),
                ttl: 300,
                proxied: false,
            });
        });
    }

    let primary_ip: IpAddr = "127.0.0.20".parse().map_err(|e| format!("{e}"))?;
    let backup_ip: IpAddr = "127.0.0.21".parse().map_err(|e| format!("{e}"))?;
    let named = Named::start(
        &[Zone::new(
            "example.test",
            &format!("mx1 300 IN A {primary_ip}\nbackup 300 IN A {backup_ip}\n"),
        )],
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    // The domains' own zones are at the fake, which serves no DNS: the resolvers answer
    // NXDOMAIN for them at once (mxguard's propagation tracker asks).
    let nx = RcodeServer::start(ResponseCode::NXDomain).map_err(|e| e.to_string())?;
    let mut resolvers = Vec::new();
    for _ in 0..2 {
        let opts = UnboundOptions {
            extra_stubs: vec![Stub::new("cf.test", nx.addr())],
            ..UnboundOptions::default()
        };
        resolvers.push(
            Unbound::start("example.test", named.addr(), opts)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let ca = Ca::new().map_err(|e| e.to_string())?;
    let leaf = ca
        .leaf(
            &["mx1.example.test", "backup.example.test"],
            CertKind::Valid,
        )
        .map_err(|e| e.to_string())?;
    let port = free_port_on(&[primary_ip, backup_ip]).map_err(|e| e.to_string())?;
    let primary = FaultListener::start_on(
        SocketAddr::new(primary_ip, port),
        Fault::StartTls(leaf.clone()),
    )
    .map_err(|e| e.to_string())?;
    let _backup = FaultListener::start_on(SocketAddr::new(backup_ip, port), Fault::StartTls(leaf))
        .map_err(|e| e.to_string())?;

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let list: Vec<String> = resolvers
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    let mut text = format!(
        r#"[[tokens]]
name = "bench"
sha256 = "{digest}"
scopes = ["read"]

{providers}
[checks]
resolvers = [{resolvers}]
resolver_quorum = 2
smtp_port = {port}
starttls = "require"
ca_file = "{ca}"
ehlo_name = "mxguard.test"
rcpt_checks = "off"
"#,
        digest = sha256_hex(API_TOKEN),
        providers = providers_toml(opts.entries, &fake.base_url),
        resolvers = list.join(", "),
        ca = ca.cert_path().display(),
    );
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            text,
            "\n[[domains]]\nname = \"{name}\"\nzone = \"{name}\"\nprovider = \"{provider}\"\n\
             primary = [\"10 mx1.example.test.\"]\nbackup = [\"10 backup.example.test.\"]\n\
             failover_ttl = 60\n",
            provider = entry_name(i % opts.entries),
        );
        if opts.verify == Verify::Dns {
            let _ = writeln!(text, "authoritative = [\"{}\"]", nameserver.addr());
        }
    }
    let config = dir.path().join("mxguard.toml");
    std::fs::write(&config, text).map_err(|e| e.to_string())?;

    let window_s = opts.window.to_string();
    let started = Instant::now();
    let tokens: Vec<(String, String)> = (0..opts.entries)
        .map(|e| (format!("MXGUARD_BENCH_CF_TOKEN_{e}"), token(e)))
        .collect();
    let mut env: Vec<(&str, &str)> = tokens
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.push(("MXGUARD_CLOUDFLARE_RATE_WINDOW_SECS", &window_s));
    let mut mx = Service::start(dir.path(), &config, &env)?;
    let domains: Vec<Fqdn> = names
        .iter()
        .map(|n| Fqdn::parse(n).map_err(|e| e.to_string()))
        .collect::<Res<_>>()?;
    // The store may not exist for a moment; then every actor reads its zone once (zone id +
    // records: two requests per domain) before it knows what is published.
    let store = wait_for(
        "the store",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { mx.store().await.ok() },
    )
    .await?;
    let mut last_report = Instant::now();
    wait_for(
        "every domain on the primary",
        Duration::from_secs(1800),
        Duration::from_secs(2),
        || {
            let report = last_report.elapsed() > Duration::from_secs(30);
            if report {
                last_report = Instant::now();
            }
            let (store, domains, fake) = (&store, &domains, &fake);
            async move {
                let mut on_primary = 0;
                for d in domains {
                    if let Ok(Some(row)) = store.load_state(d).await {
                        if phase_of(&row.state).as_deref() == Some("primary") {
                            on_primary += 1;
                        }
                    }
                }
                if report {
                    eprintln!(
                        "  … {on_primary} of {n} domains on the primary after {:.0} s ({} requests, 429s: {})",
                        started.elapsed().as_secs_f64(),
                        fake.request_count(),
                        fake.limit_stats().refused
                    );
                }
                (on_primary == n).then_some(())
            }
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", mx.tail(20)))?;
    let settled = started.elapsed();
    if let Some(status) = mx.exited() {
        return Err(format!("mxguard exited: {status}\n{}", mx.tail(20)));
    }
    eprintln!(
        "  {n} domains on the primary after {:.1} s ({} requests so far, 429s: {})",
        settled.as_secs_f64(),
        fake.request_count(),
        fake.limit_stats().refused
    );

    // --- the outage ---
    let (r0, s0) = (fake.request_count(), fake.limit_stats());
    drop(primary);
    let t0 = Utc::now();
    let clock = Instant::now();
    let mut verified: BTreeMap<Fqdn, DateTime<Utc>> = BTreeMap::new();
    let deadline = Duration::from_secs(3600);
    let mut injected = opts.inject_429.is_none();
    while verified.len() < n {
        if !injected && verified.len() * 3 >= n {
            if let Some(secs) = opts.inject_429 {
                eprintln!(
                    "  injecting one 429 (retry-after: {secs} s) with {} of {n} verified",
                    verified.len()
                );
                fake.inject(Route::Any, CfFault::RateLimit { retry_after: secs }, 1);
            }
            injected = true;
        }
        for d in &domains {
            if verified.contains_key(d) {
                continue;
            }
            // mxguard's `change` event says the backup records are published and verified —
            // also when a retry found them already live (an earlier attempt's apply landed
            // after its deadline had given up on it), which leaves no `verified` intent row.
            // Under load an event can fail to be written ("event not recorded"), so a
            // `verified` intent row written after the outage counts too.
            let mut seen: Option<DateTime<Utc>> = None;
            if let Ok(events) = store.events(d, None, 10_000).await {
                seen = events
                    .iter()
                    .find(|e| e.kind == "change" && e.at >= t0)
                    .map(|e| e.at);
            }
            if let Ok(changes) = store.recent_changes(d, 1_000).await {
                let row = changes
                    .iter()
                    .filter(|c| c.status.as_str() == "verified" && c.created_at >= t0)
                    .map(|c| c.updated_at)
                    .min();
                seen = match (seen, row) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            if let Some(at) = seen {
                verified.insert(d.clone(), at);
            }
        }
        if clock.elapsed() > deadline {
            return Err(format!(
                "only {} of {n} domains failed over within {deadline:?}\n{}",
                verified.len(),
                mx.tail(20)
            ));
        }
        if verified.len() < n {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "  … {} of {n} verified {:.0} s after the outage ({} requests, 429s: {})",
                verified.len(),
                clock.elapsed().as_secs_f64(),
                fake.request_count() - r0,
                fake.limit_stats().refused - s0.refused
            );
        }
    }
    let (r1, s1) = (fake.request_count(), fake.limit_stats());
    let during: Vec<String> = fake.requests().into_iter().skip(r0).take(r1 - r0).collect();
    let batches = during
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("/batch"))
        .count();

    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for d in &domains {
        for c in store
            .recent_changes(d, 1_000)
            .await
            .map_err(|e| e.to_string())?
        {
            if c.created_at >= t0 {
                *statuses.entry(c.status.as_str().to_string()).or_default() += 1;
            }
        }
    }
    let mut decisions = Vec::new();
    let mut change_events = 0usize;
    let mut alerts = 0usize;
    for d in &domains {
        let events = store
            .events(d, None, 10_000)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(e) = events
            .iter()
            .find(|e| e.kind == "transition" && e.message.contains("FailingOver") && e.at >= t0)
        {
            decisions.push(ms_between(t0, e.at));
        }
        change_events += events
            .iter()
            .filter(|e| e.kind == "change" && e.at >= t0)
            .count();
        alerts += events
            .iter()
            .filter(|e| e.kind.is_alert() && e.at >= t0)
            .count();
    }
    let done: Vec<f64> = verified.values().map(|t| ms_between(t0, *t)).collect();
    let total_ms = done.iter().copied().fold(0.0, f64::max);
    let requests = r1 - r0;
    let mut batches_per_domain: BTreeMap<String, usize> = BTreeMap::new();
    for r in during
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("/batch"))
    {
        *batches_per_domain.entry(r.clone()).or_default() += 1;
    }
    let most_batches = batches_per_domain.values().copied().max().unwrap_or(0);
    let limit_per_s = 1_200.0 / opts.window as f64;
    let bound_needed_s = (n * PREVIOUS_REQUESTS_PER_FAILOVER) as f64 / limit_per_s;
    let bound_made_s = requests as f64 / limit_per_s;
    let refused = s1.refused - s0.refused;
    let hwm = crate::util::proc_status_kb(mx.pid(), "VmHWM").unwrap_or(0);
    store.close().await;
    drop(mx);

    println!();
    println!(
        "Mass outage: {n} domains (one zone each) through the fake Cloudflare API, {} provider \
         entr{} of one user; rate limit scaled to 1,200 requests per {} s (Cloudflare: per 300 s), \
         client pacing scaled the same way; verified {}{}",
        opts.entries,
        if opts.entries == 1 {
            "y"
        } else {
            "ies (one budget)"
        },
        opts.window,
        match opts.verify {
            Verify::Dns => "at the fake's nameserver",
            Verify::Api => "by reading back through the API",
        },
        opts.inject_429
            .map(|s| format!("; one 429 (retry-after {s} s) injected"))
            .unwrap_or_default()
    );
    println!("| figure | value |");
    println!("|---|---|");
    let rows = [
        ("settled on the primary after start", format!("{:.1} s", settled.as_secs_f64())),
        ("outage → first / median / last decision", format!("{} / {} / {}", show_ms(percentile(&decisions, 0.0)), show_ms(percentile(&decisions, 50.0)), show_ms(percentile(&decisions, 100.0)))),
        ("outage → first / median / last domain verified", format!("{} / {} / {}", show_ms(percentile(&done, 0.0)), show_ms(percentile(&done, 50.0)), show_ms(total_ms))),
        ("**outage → all verified (total)**", show_ms(total_ms)),
        ("requests to the API during the failover", format!("{requests} ({batches} batches; {:.2} per domain)", requests as f64 / n as f64)),
        ("most batches for one zone (one expected)", most_batches.to_string()),
        ("queries at the fake's nameserver", nameserver.queries().to_string()),
        ("previous rate-limit bound (4 requests per failover)", format!("{bound_needed_s:.1} s ({} × {PREVIOUS_REQUESTS_PER_FAILOVER} requests ÷ {limit_per_s:.0}/s)", n)),
        ("rate-limit bound for the requests made", format!("{bound_made_s:.1} s ({requests} ÷ {limit_per_s:.0}/s)")),
        ("total ÷ previous bound", format!("{:.2}", total_ms / 1000.0 / bound_needed_s)),
        ("429s received (goal: none)", format!("{refused} (lockouts: {})", s1.lockouts - s0.lockouts)),
        ("most requests of the token in one window", format!("{} of 1,200", s1.peak_in_window)),
        ("alerts in the timelines during the failover", alerts.to_string()),
        ("change intents written during the failover, by status", format!("{statuses:?}")),
        ("`change` events in the timelines (one per domain expected)", change_events.to_string()),
        ("mxguard peak RSS (VmHWM)", format!("{:.0} MiB", hwm as f64 / 1024.0)),
    ];
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    Ok(json!({
        "domains": n,
        "window_s": opts.window,
        "settled_s": settled.as_secs_f64(),
        "decision_ms": {"first": percentile(&decisions, 0.0), "median": percentile(&decisions, 50.0), "last": percentile(&decisions, 100.0), "count": decisions.len()},
        "verified_ms": {"first": percentile(&done, 0.0), "median": percentile(&done, 50.0), "last": total_ms},
        "total_s": total_ms / 1000.0,
        "requests": requests,
        "batches": batches,
        "most_batches_per_zone": most_batches,
        "requests_per_domain": requests as f64 / n as f64,
        "entries": opts.entries,
        "verify": format!("{:?}", opts.verify),
        "inject_429": opts.inject_429,
        "bound_needed_s": bound_needed_s,
        "bound_made_s": bound_made_s,
        "http_429": refused,
        "lockouts": s1.lockouts - s0.lockouts,
        "http_429_since_start": s1.refused,
        "peak_in_window": s1.peak_in_window,
        "alerts": alerts,
        "intents_by_status": statuses,
        "change_events": change_events,
        "peak_rss_mib": hwm as f64 / 1024.0,
    }))
}
