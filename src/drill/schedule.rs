//! `serve`'s drills: each domain with `drill_every` is drilled that often (never live), on the
//! leader only. A domain's last drill is read from its timeline at start, so a restart neither
//! skips nor repeats one; a domain never drilled, or overdue, is drilled within
//! `min(drill_every, 1 h)` of the start, spread ([`super::first_due`]). A drill waits while its
//! domain's controller has no verdict yet (a drill at start would find nothing settled), while
//! this instance follows, and while another drill of the domain runs. A scheduled drill that
//! fails records `alert.drill_failed`, which notifications carry like any alert.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mxguard_core::{Jitter, SeededJitter};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::run::{self, Ask, Deps};
use super::Trigger;
use crate::access::ProviderAccess;
use crate::config::DomainConfig;
use crate::engine::Engine;
use crate::events::EventKind;
use crate::machine::Phase;
use crate::store::Store;

/// Scheduled drills running at once, across every domain.
pub const DRILLS_AT_ONCE: usize = 4;
/// How soon a drill that had to wait (no verdict yet, a follower, a drill running) is tried
/// again, at most.
const RETRY: Duration = Duration::from_secs(5);

/// Runs the schedule of every domain in `domains` that has `drill_every`, until `shutdown`.
pub async fn run(
    domains: Vec<Arc<DomainConfig>>,
    engine: Engine,
    store: Arc<dyn Store>,
    access: BTreeMap<String, Arc<dyn ProviderAccess>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let scheduled: Vec<(Arc<DomainConfig>, Duration)> = domains
        .into_iter()
        .filter_map(|d| d.drill.every.map(|every| (d, every)))
        .collect();
    if scheduled.is_empty() {
        return;
    }
    let jitter = SeededJitter::from_entropy();
    let mut due: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> = BinaryHeap::new();
    for (i, (d, every)) in scheduled.iter().enumerate() {
        let last = tokio::select! {
            _ = shutdown.cancelled() => return,
            last = store.last_event(&d.name, EventKind::Drill) => last,
        };
        let last = match last {
            Ok(e) => e.map(|e| e.at),
            Err(e) => {
                tracing::warn!(domain = %d.name, error = %e, "the last drill could not be read; drilling as if there was none");
                None
            }
        };
        let at = super::first_due(last, *every, Utc::now(), jitter.fraction());
        tracing::info!(domain = %d.name, every = %humantime::format_duration(*every), next = %at, "drills scheduled");
        due.push(Reverse((at, i)));
    }
    let places = Arc::new(Semaphore::new(DRILLS_AT_ONCE));
    while let Some(Reverse((at, i))) = due.pop() {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let (cfg, every) = &scheduled[i];
        let later = |d: Duration| Utc::now() + chrono::Duration::from_std(d).unwrap_or_default();
        let Some(handle) = engine.domains.get(&cfg.name) else {
            continue;
        };
        let settled = handle.latest().state.phase != Phase::Unknown;
        let turn = if settled && engine.leadership.is_leader() {
            engine.drills.try_start(&cfg.name)
        } else {
            None
        };
        let Some(turn) = turn else {
            due.push(Reverse((later(RETRY.min(*every)), i)));
            continue;
        };
        let place = tokio::select! {
            _ = shutdown.cancelled() => return,
            place = places.clone().acquire_owned() => place,
        };
        let Ok(place) = place else {
            return;
        };
        let deps = Deps {
            handle: handle.clone(),
            access: access
                .get(&cfg.provider)
                .cloned()
                .ok_or_else(|| format!("provider {} was not built", cfg.provider)),
            store: store.clone(),
            events: engine.events.clone(),
            dns: engine.dns.clone(),
        };
        let (cfg, stop) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _turn = turn;
            let _place = place;
            let ask = Ask {
                trigger: Trigger::Schedule,
                by: "automation".into(),
                reason: "scheduled drill (drill_every)".into(),
                live: false,
            };
            let report = tokio::select! {
                _ = stop.cancelled() => return,
                report = run::run(&cfg, &deps, &ask) => report,
            };
            if report.passed() {
                tracing::info!(domain = %cfg.name, ms = report.duration_ms, "scheduled drill passed");
            } else {
                tracing::warn!(domain = %cfg.name, result = %report.message(), "scheduled drill failed");
            }
            if let Err(e) = run::record(&deps, &report).await {
                tracing::error!(domain = %cfg.name, error = %e, "the drill's report was not recorded");
            }
        });
        due.push(Reverse((later(*every), i)));
    }
}
