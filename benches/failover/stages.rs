//! Part 1: where the time of one failover goes. Each trial is a fresh lab (`named` with TSIG,
//! three Unbound resolvers, Postfix primary and backup, mxguard's default probe timings) and a
//! fresh `mxguard serve`. Once it has settled on the primary, the bench waits a random part of
//! an interval, stops the primary's Postfix (t0 = the stop has returned: its port refuses
//! connections), and times:
//!
//! - decision: the `transition` event into FailingOver (mxguard's timeline);
//! - provider accepted: the change intent's `applied` moment, which is the `verified` row's
//!   `updated_at` minus the authoritative verification time mxguard records in the `change`
//!   event (`authoritative[].after_ms`, measured from right after the apply);
//! - visible at the authoritative server: the bench's own query of `named` every 10 ms;
//! - visible at each resolver: the bench's own query of each Unbound every 50 ms (it has asked
//!   them since the lab settled, so they hold the old MX in cache, as resolvers of a domain
//!   that receives mail do).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mxguard::model::{Fqdn, RecordType};
use mxguard::probe::dns::DnsClient;
use serde_json::{json, Value};

use crate::lab::{Checks, Lab, LabOptions, Layout};
use crate::util::{ms_between, percentile, random_fraction, show_ms, wait_for, Res};

const BACKUP: &str = "10 backup.example.test.";

pub struct Opts {
    pub trials: usize,
    /// TTL of the primary's MX record before the failover (what resolvers cache).
    pub ttl: u32,
}

/// One trial, every time in ms after t0.
#[derive(Debug, Clone)]
struct Trial {
    /// How long `postfix stop` took until its port refused connections (t0 is its end).
    stop: f64,
    decision: f64,
    intent: f64,
    accepted: f64,
    authoritative: f64,
    verified: f64,
    resolvers: Vec<f64>,
}

pub async fn run(opts: &Opts) -> Res<Value> {
    let mut trials = Vec::new();
    for i in 0..opts.trials {
        let t = trial(opts)
            .await
            .map_err(|e| format!("trial {}: {e}", i + 1))?;
        eprintln!(
            "  trial {}/{}: decision {} · accepted {} · authoritative {} · resolvers {}",
            i + 1,
            opts.trials,
            show_ms(t.decision),
            show_ms(t.accepted),
            show_ms(t.authoritative),
            t.resolvers
                .iter()
                .map(|r| show_ms(*r))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        trials.push(t);
    }
    let col = |f: &dyn Fn(&Trial) -> f64| -> Vec<f64> { trials.iter().map(f).collect() };
    let n_res = trials.first().map_or(0, |t| t.resolvers.len());
    let mut rows: Vec<(String, Vec<f64>)> = vec![
        (
            "(postfix stop → its port refuses connections = t0)".into(),
            col(&|t| t.stop),
        ),
        (
            "outage → decision (FailingOver)".into(),
            col(&|t| t.decision),
        ),
        (
            "decision → provider accepted (UPDATE answered)".into(),
            col(&|t| t.accepted - t.decision),
        ),
        (
            "  of which decision → intent written".into(),
            col(&|t| t.intent - t.decision),
        ),
        (
            "  of which intent → provider accepted".into(),
            col(&|t| t.accepted - t.intent),
        ),
        (
            "accepted → visible at the authoritative server".into(),
            col(&|t| (t.authoritative - t.accepted).max(0.0)),
        ),
        (
            "accepted → verified by mxguard (its after_ms)".into(),
            col(&|t| t.verified - t.accepted),
        ),
    ];
    for r in 0..n_res {
        rows.push((
            format!("accepted → visible at resolver {}", r + 1),
            col(&|t| t.resolvers[r] - t.accepted),
        ));
    }
    rows.push((
        "outage → visible at every resolver".into(),
        col(&|t| t.resolvers.iter().copied().fold(f64::MIN, f64::max)),
    ));
    println!();
    println!(
        "Failover stages ({} trials; mxguard defaults: interval 5 s, fail_after 3, confirm 500 ms; \
         3 resolvers, quorum 2; old MX TTL {} s)",
        trials.len(),
        opts.ttl
    );
    println!("| stage | median | p90 | min | max |");
    println!("|---|---|---|---|---|");
    let mut out = serde_json::Map::new();
    for (name, v) in &rows {
        let (med, p90) = (percentile(v, 50.0), percentile(v, 90.0));
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "| {name} | {} | {} | {} | {} |",
            show_ms(med),
            show_ms(p90),
            show_ms(min),
            show_ms(max)
        );
        out.insert(
            name.trim().to_string(),
            json!({"median_ms": med.round(), "p90_ms": p90.round(), "min_ms": min.round(), "max_ms": max.round()}),
        );
    }
    Ok(json!({"trials": trials.len(), "old_ttl_s": opts.ttl, "stages": out}))
}

async fn trial(opts: &Opts) -> Res<Trial> {
    let mut lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: opts.ttl,
        },
        Layout {
            resolvers: 3,
            resolver_quorum: 2,
            checks: Checks::DEFAULTS,
            read_token: true,
            ..Layout::default()
        },
    )
    .await;
    let mx = lab.serve(None);
    wait_for(
        "mxguard settled on the primary",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            let (code, s) = lab.api_get(&mx, "/v1/domains/example.test").await?;
            (code == 200
                && s["phase"] == "primary"
                && s["health"]["primary"] == "up"
                && s["health"]["backup"] == "up")
                .then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", mx.log()))?;

    let domain = Fqdn::parse("example.test").map_err(|e| e.to_string())?;
    let deadline = Duration::from_secs(u64::from(opts.ttl) + 90);
    // The resolvers are asked from now on: they cache the primary's MX as live traffic would.
    let watchers: Vec<_> = lab
        .resolvers
        .iter()
        .map(|u| {
            tokio::spawn(first_seen(
                DnsClient::resolver(u.addr(), Duration::from_secs(2)),
                domain.clone(),
                Duration::from_millis(50),
                deadline,
            ))
        })
        .collect();
    // The outage lands anywhere within a probe interval (5 s).
    tokio::time::sleep(Duration::from_secs_f64(5.0 * random_fraction())).await;
    let serial = lab.serial().await;
    let stop_started = Utc::now();
    lab.primary
        .stop()
        .await
        .map_err(|e| format!("stopping the primary: {e}"))?;
    let t0 = Utc::now();
    let named: SocketAddr = lab.named.addr();
    let authoritative = first_seen(
        DnsClient::authoritative(named, Duration::from_secs(2)),
        domain.clone(),
        Duration::from_millis(10),
        Duration::from_secs(90),
    )
    .await
    .ok_or_else(|| format!("named never served the backup:\n{}", mx.log()))?;
    let mut resolvers = Vec::new();
    for w in watchers {
        let seen = w
            .await
            .map_err(|e| e.to_string())?
            .ok_or("a resolver never served the backup")?;
        resolvers.push(ms_between(t0, seen));
    }
    if lab.serial().await != serial + 1 {
        return Err("not exactly one UPDATE".into());
    }

    let url = mxguard::config::StoreUrl::parse(&format!("sqlite://{}", lab.db.display()))
        .map_err(|e| e.to_string())?;
    let store = mxguard::store::open(&url)
        .await
        .map_err(|e| e.to_string())?;
    let (change, event) = wait_for(
        "the verified change",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let changes = store.recent_changes(&domain, 10).await.ok()?;
            let c = changes
                .into_iter()
                .find(|c| c.status.as_str() == "verified")?;
            let events = store.events(&domain, None, 10_000).await.ok()?;
            let e = events.into_iter().find(|e| e.kind == "change")?;
            Some((c, e))
        },
    )
    .await?;
    let events = store
        .events(&domain, None, 10_000)
        .await
        .map_err(|e| e.to_string())?;
    store.close().await;
    let decision = events
        .iter()
        .find(|e| e.kind == "transition" && e.message.contains("FailingOver"))
        .map(|e| e.at)
        .ok_or("no FailingOver transition in the timeline")?;
    let after_ms = event.evidence["authoritative"]
        .as_array()
        .and_then(|a| a.iter().filter_map(|v| v["after_ms"].as_u64()).max())
        .ok_or_else(|| {
            format!(
                "no authoritative after_ms in the change event: {}",
                event.evidence
            )
        })?;
    let applied: DateTime<Utc> =
        change.updated_at - chrono::Duration::milliseconds(after_ms as i64);
    drop(mx);
    Ok(Trial {
        stop: ms_between(stop_started, t0),
        decision: ms_between(t0, decision),
        intent: ms_between(t0, change.created_at),
        accepted: ms_between(t0, applied),
        authoritative: ms_between(t0, authoritative),
        verified: ms_between(t0, change.updated_at),
        resolvers,
    })
}

/// Asks `client` for example.test's MX every `every` until it answers the backup; when.
async fn first_seen(
    client: DnsClient,
    domain: Fqdn,
    every: Duration,
    deadline: Duration,
) -> Option<DateTime<Utc>> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let a = client.query(&domain, RecordType::Mx).await;
        let got: Vec<String> = a.records.iter().map(|r| r.to_string()).collect();
        if got == [BACKUP] {
            return Some(Utc::now());
        }
        tokio::time::sleep(every).await;
    }
    None
}
