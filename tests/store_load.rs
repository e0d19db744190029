//! The store under a startup at scale (docs/BENCHMARKS.md, "Probe rounds inside the service":
//! 5,000 domains on SQLite lost writes to pool timeouts): every domain's actor loads its state,
//! reads the unfinished changes and then writes its state and events, all at once, while the
//! recorder writes its batches. Nothing may be lost: every write succeeds (it may wait) and is
//! there afterwards; writes refused on their own (stale version, stale epoch) are refused
//! alone, whatever they are committed with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use mxguard::config::StoreUrl;
use mxguard::model::Fqdn;
use mxguard::store::{
    self, LeaseClaim, LeaseClock, NewEvent, Observation, Store, StoreError, Takeover, VantageRow,
};
use serde_json::json;
use tokio::sync::watch;

const DOMAINS: usize = 5_000;

/// The slowest single store call of a run (µs), to print how long callers had to wait.
type Slowest = Arc<AtomicU64>;

async fn timed<T>(slowest: &Slowest, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    slowest.fetch_max(us, Ordering::Relaxed);
    out
}

fn t(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_800_000_000_000 + ms)
        .single()
        .expect("valid time")
}

fn name(i: usize) -> Fqdn {
    Fqdn::parse(&format!("d{i}.example.test")).expect("name")
}

/// A state document about the size of a real one (the machine, both sides, an incident).
fn state(i: usize, side: &str) -> serde_json::Value {
    json!({
        "machine": {"phase": "Primary", "in_flight": null, "override": null, "moves": []},
        "last_side": side,
        "incident": null,
        "domain": i,
        "padding": "x".repeat(400),
    })
}

/// What one actor does at its start (actor.rs `recover`, `observe`, then its first round of
/// each side): load its state, read the unfinished changes, persist the observed records, then
/// per side a health event and the state, and the transition once both sides are known.
/// Returns the errors it met, as text.
async fn actor_start(s: Arc<dyn Store>, i: usize, epoch: i64, slowest: Slowest) -> Vec<String> {
    let mut errors = Vec::new();
    let d = name(i);
    // A writer that lost the race, and one of an old epoch: refused, each on its own.
    let (stale, fenced) = (i % 10 == 1, i % 10 == 2);
    let mut version = match timed(&slowest, s.load_state(&d)).await {
        Ok(row) => row.map(|r| r.version),
        Err(e) => {
            errors.push(format!("load_state: {e}"));
            None
        }
    };
    if let Err(e) = timed(&slowest, s.unfinished_changes()).await {
        errors.push(format!("unfinished_changes: {e}"));
    }
    let steps = [
        ("observed", None),
        ("primary", Some("health")),
        ("backup", Some("health")),
        ("settled", Some("transition")),
    ];
    for (k, (step, kind)) in steps.into_iter().enumerate() {
        let at = t(i64::try_from(k).unwrap_or(0));
        if let Some(kind) = kind {
            let ev = NewEvent {
                domain: d.clone(),
                at,
                kind: kind.parse().expect("a known event kind"),
                actor: "automation".into(),
                reason: None,
                message: format!("{step}: up"),
                evidence: json!({"step": step, "rounds": [{"side": step, "pass": true}], "padding": "y".repeat(600)}).into(),
            };
            if let Err(e) = timed(&slowest, s.append_event(&ev)).await {
                errors.push(format!("append_event {step}: {e}"));
            }
        }
        if step != "settled" {
            match timed(
                &slowest,
                s.save_state(&d, &state(i, step), version, epoch, at),
            )
            .await
            {
                Ok(v) => version = Some(v),
                Err(e) => errors.push(format!("save_state {step}: {e}")),
            }
        }
        if step == "primary" && stale {
            let old = version.map(|v| v - 1);
            match timed(
                &slowest,
                s.save_state(&d, &state(i, "stale"), old, epoch, at),
            )
            .await
            {
                Err(StoreError::Conflict(_)) => {}
                other => errors.push(format!("stale save_state: {other:?}, not a conflict")),
            }
        }
        if step == "primary" && fenced {
            match timed(
                &slowest,
                s.save_state(&d, &state(i, "fenced"), version, epoch - 1, at),
            )
            .await
            {
                Err(StoreError::Fenced(_)) => {}
                other => errors.push(format!("fenced save_state: {other:?}, not fenced")),
            }
        }
    }
    errors
}

/// The recorder's share (src/recorder.rs): once a second, every domain's vantage reports and
/// a round of observations, each batch in one transaction, until the actors are done.
async fn recorder(s: Arc<dyn Store>, mut stop: watch::Receiver<bool>) -> Vec<String> {
    let mut errors = Vec::new();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    for r in 0.. {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => break,
        }
        let at = t(i64::from(r) * 1000);
        let rows: Vec<VantageRow> = (0..DOMAINS)
            .flat_map(|i| {
                ["primary", "backup"].map(|side| VantageRow {
                    domain: name(i),
                    vantage: "local".into(),
                    side: side.into(),
                    at,
                    report: json!({"health": "up", "partitioned": false}),
                })
            })
            .collect();
        if let Err(e) = s.put_vantage_reports(&rows).await {
            errors.push(format!("put_vantage_reports: {e}"));
        }
        let obs: Vec<Observation> = (0..DOMAINS)
            .map(|i| Observation {
                domain: name(i),
                vantage: "local".into(),
                side: "primary".into(),
                target: format!("mx.d{i}.example.test."),
                resolver: "127.0.0.1:53".into(),
                address: Some("127.0.0.2".into()),
                outcome: "pass".into(),
                phase: None,
                latency_ms: Some(3),
                detail: String::new(),
                observed_at: at,
            })
            .collect();
        if let Err(e) = s.record_observations(&obs).await {
            errors.push(format!("record_observations: {e}"));
        }
    }
    errors
}

/// Runs the startup against the store at `url`. Only SQLite runs it in the suite: PostgreSQL
/// passes it too (it lost 381–675 writes to its old 5 s acquire timeout) but takes 35–70 s in
/// a debug build on 2 cores, with calls waiting up to 15 s.
async fn startup_at_scale(url: &StoreUrl) {
    let s = store::open(url).await.expect("open store");
    s.migrate().await.expect("migrate");
    // Epoch 2, so that epoch 1 is a stale one.
    for holder in ["old/1", "load/1"] {
        s.acquire_lease(
            &LeaseClaim {
                holder: holder.into(),
                vantage: holder.into(),
                api_url: None,
                ttl: Duration::from_secs(15),
                takeover: Takeover::Always,
            },
            LeaseClock::STORE,
        )
        .await
        .expect("lease");
    }
    let epoch = s.lease().await.expect("lease").epoch;
    assert_eq!(epoch, 2);

    let slowest = Slowest::default();
    let started = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let rec = tokio::spawn(recorder(s.clone(), stopped));
    let actors: Vec<_> = (0..DOMAINS)
        .map(|i| tokio::spawn(actor_start(s.clone(), i, epoch, slowest.clone())))
        .collect();
    let mut errors = Vec::new();
    for a in actors {
        errors.extend(a.await.expect("actor task"));
    }
    let _ = stop.send(true);
    errors.extend(rec.await.expect("recorder task"));
    let took = started.elapsed();
    eprintln!(
        "{:?}: {DOMAINS} actor startups, {} errors in {took:?}; slowest call {} ms",
        s.kind(),
        errors.len(),
        slowest.load(Ordering::Relaxed) / 1000
    );
    let mut kinds: Vec<String> = errors
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default().to_string())
        .collect();
    kinds.sort();
    kinds.dedup();
    assert!(
        errors.is_empty(),
        "{} of the writes failed ({kinds:?}); first: {:?}",
        errors.len(),
        errors.first()
    );

    // Every event and every state write is there.
    for i in 0..DOMAINS {
        let d = name(i);
        let events = s.events(&d, None, 10).await.expect("events");
        assert_eq!(events.len(), 3, "{d}: every event recorded");
        let row = s.load_state(&d).await.expect("load").expect("state saved");
        assert_eq!(row.version, 3, "{d}: every state write committed");
        assert_eq!(row.state["last_side"], "backup");
    }
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_startup_of_5000_domains_loses_no_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = StoreUrl::parse(&format!(
        "sqlite://{}",
        dir.path().join("load.db").display()
    ))
    .expect("url");
    startup_at_scale(&url).await;
}
