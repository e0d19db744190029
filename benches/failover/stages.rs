//! Part 1: where the time of one failover goes, for each cell of the production matrix — the
//! DNS provider (RFC 2136 on `named`, Cloudflare on the strict fake, Route 53 on moto) × the
//! mode (`mx`: the apex MX set moves; `a`: the MX host's address moves). Each trial is a fresh
//! lab (`named`, three Unbound resolvers, Postfix primary and backup, the cell's provider,
//! mxguard's default probe timings) and a fresh `mxguard serve`. Once it has settled on the
//! primary, the bench waits a random part of an interval, stops the primary's Postfix (t0 = the
//! stop has returned: its port refuses connections), and times:
//!
//! - decision: the `transition` event into FailingOver (mxguard's timeline);
//! - provider accepted: the change intent's `applied` moment, which is the `verified` row's
//!   `updated_at` minus the verification time mxguard records in the `change` event
//!   (`authoritative[].after_ms`, measured from right after the apply: its queries of `named`
//!   for RFC 2136, its read-back through the provider's API otherwise);
//! - visible: the managed records as the provider holds them ([`Lab::published`]) equal the
//!   backup's at the failover TTL — `named`'s answer for RFC 2136 (asked every 10 ms), the
//!   fake's records or moto's record sets otherwise (read every 20 ms);
//! - visible at each resolver (RFC 2136 only: for the other providers no DNS server serves the
//!   managed records, so propagation does not apply): the bench's own query of each Unbound
//!   every 50 ms (it has asked them since the lab settled, so they hold the old answer in
//!   cache, as resolvers of a domain that receives mail do).
//!
//! Trials go round the cells (trial 1 of every cell, then trial 2, …) so that a change in the
//! machine's load during the run spreads over every cell instead of landing on one.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mxguard::model::{Fqdn, RecordType};
use mxguard::probe::dns::DnsClient;
use serde_json::{json, Value};

use crate::lab::{Checks, Lab, LabMode, LabOptions, LabProvider, Layout};
use crate::util::{ms_between, percentile, random_fraction, show_ms, wait_for, Res};

pub struct Opts {
    pub trials: usize,
    /// TTL of the primary's managed record before the failover (what resolvers cache).
    pub ttl: u32,
    pub providers: Vec<LabProvider>,
    pub modes: Vec<LabMode>,
}

/// `rfc2136,cloudflare,route53` (any subset, in that spelling).
pub fn parse_providers(s: &str) -> Res<Vec<LabProvider>> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim) {
        let p = match name {
            "rfc2136" => LabProvider::Rfc2136,
            "cloudflare" => LabProvider::Cloudflare,
            "route53" => LabProvider::Route53,
            other => {
                return Err(format!(
                    "unknown provider {other:?} (rfc2136, cloudflare, route53)"
                ))
            }
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// `mx,a` (either or both).
pub fn parse_modes(s: &str) -> Res<Vec<LabMode>> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim) {
        let m = match name {
            "mx" => LabMode::Mx,
            "a" => LabMode::A,
            other => return Err(format!("unknown mode {other:?} (mx, a)")),
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug)]
struct Cell {
    provider: LabProvider,
    mode: LabMode,
}

impl Cell {
    /// `rfc2136/mx`: the key in the JSON line and the name in the tables.
    fn key(&self) -> String {
        let p = match self.provider {
            LabProvider::Rfc2136 => "rfc2136",
            LabProvider::Cloudflare => "cloudflare",
            LabProvider::Route53 => "route53",
        };
        let m = match self.mode {
            LabMode::Mx => "mx",
            LabMode::A => "a",
        };
        format!("{p}/{m}")
    }

    fn title(&self) -> String {
        let p = match self.provider {
            LabProvider::Rfc2136 => "RFC 2136 on named",
            LabProvider::Cloudflare => "Cloudflare on the strict fake",
            LabProvider::Route53 => "Route 53 on moto",
        };
        let m = match self.mode {
            LabMode::Mx => "mode mx (the apex MX set moves)",
            LabMode::A => "mode a (mx.example.test's A record moves)",
        };
        format!("{p}, {m}")
    }

    /// Whether a DNS server serves the managed records (so resolvers can be watched).
    fn served_by_named(&self) -> bool {
        self.provider == LabProvider::Rfc2136
    }

    /// What "provider accepted" is for this provider.
    fn accepted_means(&self) -> &'static str {
        match self.provider {
            LabProvider::Rfc2136 => "UPDATE answered",
            LabProvider::Cloudflare => "batch answered",
            // mxguard follows the change to INSYNC in the background, after its apply returns
            LabProvider::Route53 => "batch accepted",
        }
    }

    /// How often the bench reads what the provider holds.
    fn poll(&self) -> Duration {
        match self.provider {
            LabProvider::Rfc2136 => Duration::from_millis(10),
            LabProvider::Cloudflare | LabProvider::Route53 => Duration::from_millis(20),
        }
    }
}

/// One trial, every time in ms after t0.
#[derive(Debug, Clone)]
struct Trial {
    /// How long `postfix stop` took until its port refused connections (t0 is its end).
    stop: f64,
    decision: f64,
    intent: f64,
    accepted: f64,
    /// The provider holds the backup's records (for RFC 2136: `named` serves them).
    visible: f64,
    verified: f64,
    /// When each resolver first answered the backup; `None` where no resolver can see the
    /// managed records (providers other than RFC 2136).
    resolvers: Option<Vec<f64>>,
    failover_ttl: u32,
}

/// What one cell produced: its trials, or why it stopped.
struct CellRun {
    cell: Cell,
    trials: Vec<Trial>,
    error: Option<String>,
}

pub async fn run(opts: &Opts) -> Res<Value> {
    let mut runs: Vec<CellRun> = opts
        .providers
        .iter()
        .flat_map(|&provider| {
            opts.modes.iter().map(move |&mode| CellRun {
                cell: Cell { provider, mode },
                trials: Vec::new(),
                error: None,
            })
        })
        .collect();
    if runs.is_empty() {
        return Err("no provider × mode cell to measure".into());
    }
    for i in 0..opts.trials {
        for run in runs.iter_mut().filter(|r| r.error.is_none()) {
            let cell = run.cell;
            let (trials, ttl) = (opts.trials, opts.ttl);
            // A lab that cannot start panics (it is the tests' lab): in a task of its own that
            // ends this cell, not the whole run.
            let outcome = tokio::spawn(async move { trial(cell, ttl).await })
                .await
                .unwrap_or_else(|e| Err(format!("the trial panicked: {e}")));
            match outcome {
                Ok(t) => {
                    eprintln!(
                        "  {} trial {}/{trials}: decision {} · accepted {} · visible {} · resolvers {}",
                        cell.key(),
                        i + 1,
                        show_ms(t.decision),
                        show_ms(t.accepted),
                        show_ms(t.visible),
                        t.resolvers.as_ref().map_or("n/a".into(), |r| r
                            .iter()
                            .map(|v| show_ms(*v))
                            .collect::<Vec<_>>()
                            .join(" / "))
                    );
                    run.trials.push(t);
                }
                Err(e) => {
                    let e = format!("trial {}: {e}", i + 1);
                    eprintln!("  {} failed, no more trials of it: {e}", cell.key());
                    run.error = Some(e);
                }
            }
        }
    }

    let mut cells = serde_json::Map::new();
    let mut errors = Vec::new();
    let mut summary = Vec::new();
    for run in &runs {
        let mut value = if run.trials.is_empty() {
            json!({"trials": 0})
        } else {
            let rows = rows(run.cell, &run.trials);
            print_table(run.cell, &run.trials, &rows, opts.ttl);
            summary.push((run.cell, rows.clone()));
            let mut stages = serde_json::Map::new();
            for row in &rows {
                stages.insert(row.key.clone(), stats_json(row.values.as_deref()));
            }
            json!({
                "trials": run.trials.len(),
                "failover_ttl_s": run.trials.first().map(|t| t.failover_ttl),
                "stages": stages,
            })
        };
        if let Some(e) = &run.error {
            value["error"] = json!(e);
            errors.push(format!("{}: {e}", run.cell.key()));
        }
        cells.insert(run.cell.key(), value);
    }
    print_summary(&summary);
    Ok(json!({
        "trials": opts.trials,
        "old_ttl_s": opts.ttl,
        "cells": cells,
        "errors": errors,
    }))
}

/// One line of a cell's table: `values` is `None` where the stage does not apply.
#[derive(Clone)]
struct Row {
    key: String,
    label: String,
    values: Option<Vec<f64>>,
}

fn rows(cell: Cell, trials: &[Trial]) -> Vec<Row> {
    let col =
        |f: &dyn Fn(&Trial) -> f64| -> Option<Vec<f64>> { Some(trials.iter().map(f).collect()) };
    let row = |key: &str, label: String, values: Option<Vec<f64>>| Row {
        key: key.into(),
        label,
        values,
    };
    let at = if cell.served_by_named() {
        "at the authoritative server (named)"
    } else {
        "at the provider (its records read back)"
    };
    let mut rows = vec![
        row(
            "stop",
            "(postfix stop → its port refuses connections = t0)".into(),
            col(&|t| t.stop),
        ),
        row(
            "outage_to_decision",
            "outage → decision (FailingOver)".into(),
            col(&|t| t.decision),
        ),
        row(
            "decision_to_accepted",
            format!("decision → provider accepted ({})", cell.accepted_means()),
            col(&|t| t.accepted - t.decision),
        ),
        row(
            "decision_to_intent",
            "  of which decision → intent written".into(),
            col(&|t| t.intent - t.decision),
        ),
        row(
            "intent_to_accepted",
            "  of which intent → provider accepted".into(),
            col(&|t| t.accepted - t.intent),
        ),
        row(
            "accepted_to_visible",
            format!("accepted → visible {at}"),
            col(&|t| t.visible - t.accepted),
        ),
        row(
            "accepted_to_verified",
            if cell.served_by_named() {
                "accepted → verified by mxguard (its after_ms at named)".into()
            } else {
                "accepted → verified by mxguard (its read-back, after_ms)".into()
            },
            col(&|t| t.verified - t.accepted),
        ),
        row(
            "outage_to_visible",
            format!("outage → visible {at}"),
            col(&|t| t.visible),
        ),
    ];
    let n_res = trials
        .first()
        .and_then(|t| t.resolvers.as_ref())
        .map_or(0, Vec::len);
    if cell.served_by_named() {
        for r in 0..n_res {
            rows.push(row(
                &format!("accepted_to_resolver_{}", r + 1),
                format!("accepted → visible at resolver {}", r + 1),
                col(&|t| {
                    t.resolvers
                        .as_ref()
                        .and_then(|v| v.get(r))
                        .map_or(f64::NAN, |v| v - t.accepted)
                }),
            ));
        }
        rows.push(row(
            "outage_to_every_resolver",
            "outage → visible at every resolver".into(),
            col(&|t| {
                t.resolvers
                    .as_ref()
                    .map_or(f64::NAN, |v| v.iter().copied().fold(f64::MIN, f64::max))
            }),
        ));
    } else {
        rows.push(row(
            "accepted_to_resolvers",
            "accepted → visible at the resolvers (no DNS server serves these records)".into(),
            None,
        ));
        rows.push(row(
            "outage_to_every_resolver",
            "outage → visible at every resolver".into(),
            None,
        ));
    }
    rows
}

/// (median, p90, min, max) of `v`.
fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let finite = || v.iter().copied().filter(|x| x.is_finite());
    (
        percentile(v, 50.0),
        percentile(v, 90.0),
        finite().fold(f64::INFINITY, f64::min),
        finite().fold(f64::NEG_INFINITY, f64::max),
    )
}

fn stats_json(values: Option<&[f64]>) -> Value {
    match values {
        None => Value::Null,
        Some(v) => {
            let (med, p90, min, max) = stats(v);
            // + 0.0: a rounded -0.3 is -0.0, which JSON would carry as "-0.0"
            let ms = |x: f64| x.is_finite().then(|| x.round() + 0.0);
            json!({"median_ms": ms(med), "p90_ms": ms(p90), "min_ms": ms(min), "max_ms": ms(max)})
        }
    }
}

fn print_table(cell: Cell, trials: &[Trial], rows: &[Row], old_ttl: u32) {
    println!();
    println!(
        "Failover stages — {} ({} trials; mxguard defaults: interval 5 s, fail_after 3, confirm \
         500 ms; 3 resolvers, quorum 2; old TTL {old_ttl} s, failover TTL {} s)",
        cell.title(),
        trials.len(),
        trials.first().map_or(0, |t| t.failover_ttl),
    );
    println!("| stage | median | p90 | min | max |");
    println!("|---|---|---|---|---|");
    for row in rows {
        match &row.values {
            None => println!("| {} | n/a | n/a | n/a | n/a |", row.label),
            Some(v) => {
                let (med, p90, min, max) = stats(v);
                println!(
                    "| {} | {} | {} | {} | {} |",
                    row.label,
                    show_ms(med),
                    show_ms(p90),
                    show_ms(min),
                    show_ms(max)
                );
            }
        }
    }
}

/// Every cell side by side: the median and p90 of the stages that differ between providers.
fn print_summary(cells: &[(Cell, Vec<Row>)]) {
    if cells.is_empty() {
        return;
    }
    let columns = [
        ("outage_to_decision", "outage → decision"),
        ("decision_to_accepted", "decision → accepted"),
        ("intent_to_accepted", "intent → accepted"),
        ("accepted_to_visible", "accepted → visible"),
        ("accepted_to_verified", "accepted → verified"),
        ("outage_to_visible", "outage → visible"),
        ("outage_to_every_resolver", "outage → every resolver"),
    ];
    println!();
    println!("Failover stages per cell (median / p90)");
    let head: Vec<&str> = columns.iter().map(|(_, label)| *label).collect();
    println!("| cell | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(columns.len()));
    for (cell, rows) in cells {
        let figures: Vec<String> = columns
            .iter()
            .map(|(key, _)| {
                match rows
                    .iter()
                    .find(|r| r.key == *key)
                    .and_then(|r| r.values.as_ref())
                {
                    None => "n/a".to_string(),
                    Some(v) => {
                        let (med, p90, _, _) = stats(v);
                        format!("{} / {}", show_ms(med), show_ms(p90))
                    }
                }
            })
            .collect();
        println!("| {} | {} |", cell.key(), figures.join(" | "));
    }
}

async fn trial(cell: Cell, ttl: u32) -> Res<Trial> {
    let mut lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: ttl,
        },
        Layout {
            resolvers: 3,
            resolver_quorum: 2,
            checks: Checks::DEFAULTS,
            read_token: true,
            provider: cell.provider,
            mode: cell.mode,
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
    if lab.published().await != lab.primary_at(lab.live_ttl) {
        return Err(format!(
            "the provider does not hold the primary's records at the start: {:?}",
            lab.published().await
        ));
    }

    let domain = Fqdn::parse("example.test").map_err(|e| e.to_string())?;
    let (name, rtype) = lab.managed();
    let name = Fqdn::parse(name).map_err(|e| e.to_string())?;
    let want = lab.backup_at(lab.failover_ttl);
    let deadline = Duration::from_secs(u64::from(ttl) + 90);
    // The resolvers are asked from now on: they cache the primary's records as live traffic
    // would. Only `named` serves the managed records, so only then can resolvers see a change.
    let watchers: Vec<_> = if cell.served_by_named() {
        let rdata = rdata_of(&want);
        lab.resolvers
            .iter()
            .map(|u| {
                tokio::spawn(first_seen(
                    DnsClient::resolver(u.addr(), Duration::from_secs(2)),
                    name.clone(),
                    rtype,
                    rdata.clone(),
                    Duration::from_millis(50),
                    deadline,
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    let writes = lab.writes().await;
    // The outage lands anywhere within a probe interval (5 s).
    tokio::time::sleep(Duration::from_secs_f64(5.0 * random_fraction())).await;
    let stop_started = Utc::now();
    lab.primary
        .stop()
        .await
        .map_err(|e| format!("stopping the primary: {e}"))?;
    let t0 = Utc::now();
    let visible = first_published(&lab, &want, cell.poll(), Duration::from_secs(90))
        .await
        .ok_or_else(|| {
            format!(
                "the provider never held the backup's records {want:?}:\n{}",
                mx.log()
            )
        })?;
    let resolvers = if cell.served_by_named() {
        let mut seen_at = Vec::new();
        for w in watchers {
            let seen = w
                .await
                .map_err(|e| e.to_string())?
                .ok_or("a resolver never served the backup")?;
            seen_at.push(ms_between(t0, seen));
        }
        Some(seen_at)
    } else {
        None
    };

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
            // the change event of this intent: its evidence is mxguard's ChangeReport
            let e = events
                .into_iter()
                .find(|e| e.kind == "change" && e.evidence["change_id"].as_i64() == Some(c.id))?;
            Some((c, e))
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", mx.log()))?;
    let events = store
        .events(&domain, None, 10_000)
        .await
        .map_err(|e| e.to_string())?;
    store.close().await;
    // After the verified change the provider has answered mxguard: every write it carried out
    // is counted by now.
    let now = lab.writes().await;
    if now.checked_sub(writes) != Some(1) {
        return Err(format!(
            "the provider's write count went from {writes} to {now}: not exactly one write"
        ));
    }
    let decision = events
        .iter()
        .find(|e| e.kind == "transition" && e.message.contains("FailingOver"))
        .map(|e| e.at)
        .ok_or("no FailingOver transition in the timeline")?;
    // One entry per authoritative server for RFC 2136; one "provider lab" entry (the read-back)
    // otherwise. Both count from right after the apply.
    let after_ms = event.evidence["authoritative"]
        .as_array()
        .and_then(|a| a.iter().filter_map(|v| v["after_ms"].as_u64()).max())
        .ok_or_else(|| {
            format!(
                "no authoritative after_ms in the change event: {}",
                event.evidence
            )
        })?;
    let after_ms = i64::try_from(after_ms).map_err(|e| e.to_string())?;
    let applied: DateTime<Utc> = change.updated_at - chrono::Duration::milliseconds(after_ms);
    drop(mx);
    Ok(Trial {
        stop: ms_between(stop_started, t0),
        decision: ms_between(t0, decision),
        intent: ms_between(t0, change.created_at),
        accepted: ms_between(t0, applied),
        visible: ms_between(t0, visible),
        verified: ms_between(t0, change.updated_at),
        resolvers,
        failover_ttl: lab.failover_ttl,
    })
}

/// The RDATA of "RDATA TTL" strings (what a resolver answers, whatever TTL it has left).
fn rdata_of(records: &[String]) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .map(|r| {
            r.rsplit_once(' ')
                .map_or(r.as_str(), |(d, _)| d)
                .to_string()
        })
        .collect();
    out.sort();
    out
}

/// Reads what the provider holds every `every` until it is `want`; when the read that saw it
/// returned (an upper bound: the change landed between the previous read and this one).
async fn first_published(
    lab: &Lab,
    want: &[String],
    every: Duration,
    deadline: Duration,
) -> Option<DateTime<Utc>> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if lab.published().await == want {
            return Some(Utc::now());
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// Asks `client` for `name`'s `rtype` every `every` until it answers `want` (sorted RDATA);
/// when.
async fn first_seen(
    client: DnsClient,
    name: Fqdn,
    rtype: RecordType,
    want: Vec<String>,
    every: Duration,
    deadline: Duration,
) -> Option<DateTime<Utc>> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let a = client.query(&name, rtype).await;
        let mut got: Vec<String> = a.records.iter().map(|r| r.to_string()).collect();
        got.sort();
        if got == want {
            return Some(Utc::now());
        }
        tokio::time::sleep(every).await;
    }
    None
}
