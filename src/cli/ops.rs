//! Operator commands that work on the store and the providers directly: status, plan, snapshot,
//! snapshots, diff, revert. Exit 0 done, 1 failed or refused, 2 bad input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use mxguard_core::DnsProvider;

use super::load_config;
use crate::actor::Persisted;
use crate::config::{Config, DomainConfig};
use crate::model::{Fqdn, Side};
use crate::ops::{self, OpsError};
use crate::plan::Managed;
use crate::store::Store;

/// Everything an operation needs; errors are already printed.
struct Ctx {
    config: Config,
    store: Arc<dyn Store>,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("mxguard: {msg}");
    ExitCode::from(code)
}

async fn ctx(file: Option<PathBuf>) -> Result<Ctx, ExitCode> {
    let config = load_config(file).map_err(|e| fail(2, e))?;
    let store = crate::open_store(&config).await.map_err(|e| fail(1, e))?;
    Ok(Ctx { config, store })
}

/// Refuses when an instance serves from this store: SQLite by its instance lock (held here for
/// the revert, so `serve` cannot start meanwhile), PostgreSQL by a leader lease still running.
async fn serving_elsewhere(c: &Ctx) -> Result<Option<crate::lease::InstanceLock>, String> {
    if c.store.kind() == crate::config::StoreKind::Sqlite {
        return crate::lease::lock_sqlite(&c.config.store.url).map_err(|e| e.to_string());
    }
    let lease = c.store.lease().await.map_err(|e| e.to_string())?;
    // Live on the store's clock, which wrote the expiry: this host's clock may be off.
    if lease.is_live() {
        return Err(format!(
            "mxguard instance {} leads on this store (epoch {}, lease until {})",
            lease.vantage, lease.epoch, lease.expires_at
        ));
    }
    Ok(None)
}

impl Ctx {
    fn domain(&self, name: &str) -> Result<&DomainConfig, ExitCode> {
        let fqdn = Fqdn::parse(name).map_err(|e| fail(2, e))?;
        self.config
            .domains
            .iter()
            .find(|d| d.name == fqdn)
            .map(|d| &**d)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .config
                    .domains
                    .iter()
                    .map(|d| d.name.without_dot())
                    .collect();
                fail(
                    2,
                    format!(
                        "domain {fqdn} is not configured (configured: {})",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })
    }

    async fn provider(&self, d: &DomainConfig) -> Result<Arc<dyn DnsProvider>, ExitCode> {
        crate::providers::provider_client(&self.config, &d.provider)
            .await
            .map_err(|e| fail(1, e))
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

fn ops_fail(e: OpsError) -> ExitCode {
    match e {
        OpsError::NoSnapshot(_) => fail(2, e),
        _ => fail(1, e),
    }
}

pub(super) async fn status(file: Option<PathBuf>, domain: Option<String>, json: bool) -> ExitCode {
    let c = match ctx(file).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let domains: Vec<&DomainConfig> = match &domain {
        Some(name) => match c.domain(name) {
            Ok(d) => vec![d],
            Err(code) => return code,
        },
        None => c.config.domains.iter().map(|d| &**d).collect(),
    };
    let lease = match c.store.lease().await {
        Ok(l) => l,
        Err(e) => return fail(1, e),
    };
    if !json {
        println!("lease: {}", lease.line());
    }
    let mut out = Vec::new();
    for d in domains {
        let state: Persisted = match c.store.load_state(&d.name).await {
            Ok(Some(row)) => serde_json::from_value(row.state).unwrap_or_default(),
            Ok(None) => Persisted::default(),
            Err(e) => return fail(1, e),
        };
        let events = c
            .store
            .events(&d.name, None, 10_000)
            .await
            .unwrap_or_default();
        let recent: Vec<_> = events.iter().rev().take(5).cloned().collect();
        out.push(
            serde_json::json!({"domain": d.name, "state": state.machine, "recent_events": recent, "lease": lease.view()}),
        );
        if !json {
            let m = &state.machine;
            let active = m
                .published
                .map_or("neither".to_string(), |s: Side| s.to_string());
            let since = m.since.map_or("-".into(), |t| t.to_rfc3339());
            println!(
                "{}  {:?}  active: {active}  since: {since}",
                d.name, m.phase
            );
            println!("  health: primary {:?}, backup {:?}", m.primary, m.backup);
            if let Some(o) = &m.overrides {
                println!(
                    "  override: {}",
                    serde_json::to_string(o).unwrap_or_default()
                );
            }
            if let Some(up) = m.primary_up_since {
                println!("  primary Up since {}", up.to_rfc3339());
            }
            if let Some(why) = &m.mta_sts_refused {
                let blocked = if m.mta_sts_blocked {
                    " (a failover was refused for it)"
                } else {
                    ""
                };
                // a DANE-only reason names itself (`mtasts::watch::MtaStsView::refused`)
                let label = if why.starts_with("DANE:") {
                    ""
                } else {
                    "MTA-STS: "
                };
                println!("  {label}{why}{blocked}");
            }
            if !d.mirrors.is_empty() {
                let names: Vec<&str> = d.providers().map(String::as_str).collect();
                // The newest word on a provider lagging: behind until caught up.
                let lag = events.iter().rev().find(|e| {
                    matches!(
                        e.kind,
                        crate::events::EventKind::ProviderBehind
                            | crate::events::EventKind::ProviderCaughtUp
                    )
                });
                match lag {
                    Some(e) if e.kind == crate::events::EventKind::ProviderBehind => println!(
                        "  providers: {} — behind since {}: {}",
                        names.join(", "),
                        e.at.to_rfc3339(),
                        e.message
                    ),
                    _ => println!("  providers: {} (none behind)", names.join(", ")),
                }
            }
            if let Some(w) = &m.maintenance {
                println!(
                    "  maintenance window: the {} from {} to {}, {:?} (by {}: {})",
                    w.side,
                    w.start.to_rfc3339(),
                    w.end.to_rfc3339(),
                    w.stage,
                    w.by,
                    w.reason
                );
            }
            if let Some(e) = &m.early_ttl {
                // A low TTL left behind must be visible: it costs queries, and says trouble.
                println!(
                    "  TTL lowered early: {} s (original {} s, restored when the primary is quiet), {:?} since {}: {}",
                    e.lowered,
                    e.original,
                    e.stage,
                    e.since.to_rfc3339(),
                    e.why
                );
            }
            for e in recent.iter().rev() {
                println!("  {}  {:<12} {}", e.at.to_rfc3339(), e.kind, e.message);
            }
        }
    }
    if json {
        return print_json(&out);
    }
    ExitCode::SUCCESS
}

pub(super) async fn plan(file: Option<PathBuf>, domain: String, json: bool) -> ExitCode {
    let c = match ctx(file).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let d = match c.domain(&domain) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let provider = match c.provider(d).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let state: Persisted = match c.store.load_state(&d.name).await {
        Ok(Some(row)) => serde_json::from_value(row.state).unwrap_or_default(),
        _ => Persisted::default(),
    };
    let side = state
        .machine
        .in_flight
        .or(state.machine.published)
        .unwrap_or(Side::Primary);
    let managed = Managed::new(d);
    let result = async {
        let actual = provider
            .read(&managed.zone, &managed.keys())
            .await
            .map_err(|e| e.to_string())?;
        let live_ttl = managed.ttl_of(&actual);
        let desired = crate::actor::change::desired_records(
            &*c.store,
            &managed,
            d.failover_ttl,
            &state,
            side,
            live_ttl,
        )
        .await
        .map_err(|e| e.to_string())?;
        managed.plan(desired, actual).map_err(|e| e.to_string())
    }
    .await;
    match result {
        Err(e) => fail(1, e),
        Ok(p) if json => print_json(&p),
        Ok(p) => {
            println!("{}: wants the {side} records", d.name);
            if p.is_empty() {
                println!("  converged: nothing to change");
            }
            for ch in &p.changes.changes {
                println!("  {}", serde_json::to_string(ch).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
    }
}

pub(super) async fn snapshot(
    file: Option<PathBuf>,
    domain: String,
    zone: bool,
    label: Option<String>,
    reason: String,
) -> ExitCode {
    let c = match ctx(file).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let d = match c.domain(&domain) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let provider = match c.provider(d).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    match ops::take_snapshot(d, &provider, &c.store, zone, label, &reason, "cli").await {
        Ok(s) => {
            println!(
                "snapshot {} of {} ({} RRset(s)) taken",
                s.id,
                s.domain,
                s.records.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => ops_fail(e),
    }
}

pub(super) async fn snapshots(
    file: Option<PathBuf>,
    domain: Option<String>,
    limit: u32,
    json: bool,
) -> ExitCode {
    let c = match ctx(file).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let filter = match domain.as_deref().map(Fqdn::parse).transpose() {
        Ok(f) => f,
        Err(e) => return fail(2, e),
    };
    let list = match c.store.snapshots(filter.as_ref(), limit).await {
        Ok(l) => l,
        Err(e) => return fail(1, e),
    };
    if json {
        return print_json(&list);
    }
    for s in &list {
        println!(
            "{:>6}  {}  {:<24} {:<10} by {:<12} {} ({} RRset(s))",
            s.id,
            s.taken_at.to_rfc3339(),
            s.domain,
            s.label.as_deref().unwrap_or("-"),
            s.taken_by,
            s.reason,
            s.records.len()
        );
    }
    ExitCode::SUCCESS
}

/// The configured domain a snapshot belongs to.
async fn snapshot_domain(
    c: &Ctx,
    id: i64,
) -> Result<(DomainConfig, Arc<dyn DnsProvider>), ExitCode> {
    let snap = match c.store.snapshot(id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(fail(2, format!("no snapshot {id}"))),
        Err(e) => return Err(fail(1, e)),
    };
    let d = c.domain(snap.domain.as_str())?.clone();
    let p = c.provider(&d).await?;
    Ok((d, p))
}

pub(super) async fn diff(file: Option<PathBuf>, id: i64, json: bool) -> ExitCode {
    let c = match ctx(file).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (d, provider) = match snapshot_domain(&c, id).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    match ops::snapshot_diff(&d, &provider, &c.store, id).await {
        Err(e) => ops_fail(e),
        Ok(diff) if json => print_json(&diff),
        Ok(diff) => {
            println!(
                "snapshot {id} of {} taken {}:",
                diff.snapshot.domain,
                diff.snapshot.taken_at.to_rfc3339()
            );
            for s in &diff.snapshot.records {
                println!("  snapshot  {s}");
            }
            for s in &diff.live {
                println!("  live      {s}");
            }
            if diff.changes.is_empty() {
                println!("identical: live equals the snapshot");
            } else {
                println!(
                    "{} change(s) would revert live to the snapshot",
                    diff.changes.changes.len()
                );
            }
            ExitCode::SUCCESS
        }
    }
}

pub(super) async fn revert(
    file: Option<PathBuf>,
    id: i64,
    dry_run: bool,
    force: bool,
    reason: String,
) -> ExitCode {
    let c = match ctx(file).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (d, provider) = match snapshot_domain(&c, id).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    // A running controller owns the domain's records: a revert from here would race it.
    let _lock = if dry_run {
        None
    } else {
        match serving_elsewhere(&c).await {
            Ok(lock) => lock,
            Err(why) => {
                return fail(
                    1,
                    format!(
                        "{why}; revert through its API instead: mxguard revert {id} --api URL (POST /v1/snapshots/{id}/revert, admin token in MXGUARD_TOKEN)"
                    ),
                )
            }
        }
    };
    let plan = match ops::plan_revert(&d, &provider, &c.store, id, force).await {
        Ok(p) => p,
        Err(e) => return ops_fail(e),
    };
    for ch in &plan.changes.changes {
        println!("  {}", serde_json::to_string(ch).unwrap_or_default());
    }
    if dry_run || plan.changes.is_empty() {
        println!("{}", plan.summary(&d));
        return ExitCode::SUCCESS;
    }
    let epoch = match c.store.lease().await {
        Ok(l) => l.epoch,
        Err(e) => return fail(1, e),
    };
    // No controller runs (checked above): the same publish as the controller's, fenced by the
    // store's lease epoch, so an instance that starts meanwhile and takes the lease stops it.
    // Every provider serving the zone gets the revert, as from the controller.
    let mut mirrors = Vec::new();
    for name in &d.mirrors {
        let client = match crate::providers::provider_client(&c.config, name).await {
            Ok(p) => p,
            Err(e) => return fail(1, e),
        };
        mirrors.push(crate::actor::mirrors::Mirror {
            name: name.clone(),
            client: client.clone(),
            observer: client.clone(),
            background: client,
            authoritative: d.authoritative_for(name),
        });
    }
    let deps = crate::actor::change::ChangeDeps {
        store: c.store.clone(),
        provider: provider.clone(),
        observer: provider.clone(),
        background: provider.clone(),
        reconcile: std::time::Duration::from_secs(60),
        verifier: crate::verify::Verifier {
            authoritative: d.authoritative_for(&d.provider),
            resolvers: Vec::new(),
            query_timeout: d.checks.timeout,
            // no resolvers are polled here
            dns: crate::probe::budget::SharedDns::unlimited(),
            bound: std::time::Duration::from_secs(60),
            poll: std::time::Duration::from_millis(250),
        },
        fence: crate::lease::Leadership::fixed("cli", epoch),
        vantage_quorum: None,
        board: crate::recorder::Board::default(),
        provider_name: d.provider.clone(),
        mirrors,
        events: crate::events::EventBus::default(),
        clock: crate::clock::WallClock::default(),
    };
    let origin = crate::actor::change::Origin {
        by: "cli".into(),
        why: format!("before revert to snapshot {id}"),
        waiting: Some(crate::actor::change::Waiting(std::sync::Arc::new(
            |until| {
                let until = chrono::DateTime::<chrono::Utc>::from(until);
                eprintln!(
                "mxguard: waiting for the provider's rate limit until {} UTC (nothing is sent before)",
                until.format("%H:%M:%S")
            );
            },
        ))),
        ttl_only: false,
    };
    let managed = Managed::new(&d);
    match crate::actor::mirrors::publish_everywhere(
        &deps,
        &managed,
        plan.side,
        plan.desired,
        Vec::new(),
        &origin,
    )
    .await
    {
        Ok(report) => {
            let change = report
                .change_id
                .map_or("no change needed".to_string(), |c| format!("change {c}"));
            let ev = crate::store::NewEvent {
                domain: d.name.clone(),
                at: chrono::Utc::now(),
                kind: crate::events::EventKind::Revert,
                actor: "cli".into(),
                reason: Some(reason.clone()),
                message: format!("reverted to snapshot {id} ({change})"),
                evidence: serde_json::json!({"snapshot": id, "change": report.change_id, "changes": report.plan.changes}).into(),
            };
            if let Err(e) = c.store.append_event(&ev).await {
                eprintln!("mxguard: the revert was applied but its event was not recorded: {e}");
            }
            println!(
                "{}: reverted to snapshot {id} by cli: {reason} ({change})",
                d.name.without_dot()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, format!("revert to snapshot {id} failed: {e}")),
    }
}
