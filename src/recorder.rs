//! What each vantage saw, to and from the store in batches. Probing never waits on the store:
//!
//! * [`Recorder`]: every domain round's vantage report, and every host probe's observations
//!   (once per host, however many domains use it), are offered to one background task (a
//!   bounded queue; when it is full the round is dropped and counted), which keeps the latest
//!   report per (domain, side) and writes them, with the observations, once a second in a
//!   couple of transactions — not two per round.
//! * [`Board`]: the other vantages' fresh reports, read once a second (only while this instance
//!   leads, since only the leader combines votes) into memory, where each domain's actor looks.
//!
//! A follower's verdict thus reaches the leader's decision within about two seconds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lease::Leadership;
use crate::model::Fqdn;
use crate::store::{Observation, Store, VantageRow};
use crate::vantage::VantageReport;

/// How often the recorder writes and the board reads.
pub const EVERY: Duration = Duration::from_secs(1);
/// Rounds waiting for the recorder before new ones are dropped.
const QUEUE: usize = 8192;
/// Observation rows held between writes before new ones are dropped.
const MAX_PENDING_OBSERVATIONS: usize = 100_000;

enum Recorded {
    /// A domain's vantage report for one side.
    Report(VantageRow),
    /// What one probe of one host found.
    Observations(Vec<Observation>),
}

/// Hands rounds to the background writer. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Recorded>,
}

impl Recorder {
    pub fn start(store: Arc<dyn Store>, shutdown: CancellationToken, tasks: &TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn(write(store, rx, shutdown));
        Recorder { tx }
    }

    /// Offers a domain's report of one round; never waits. A full queue drops it (the next
    /// round replaces it).
    pub fn offer(&self, row: VantageRow) {
        if self.tx.try_send(Recorded::Report(row)).is_err() {
            metrics::counter!("mxguard_rounds_not_recorded_total").increment(1);
        }
    }

    /// Offers one host probe's observations; never waits (a full queue drops them, counted).
    pub fn offer_observations(&self, observations: Vec<Observation>) {
        let n = observations.len() as u64;
        if self
            .tx
            .try_send(Recorded::Observations(observations))
            .is_err()
        {
            metrics::counter!("mxguard_observations_dropped_total").increment(n);
        }
    }
}

async fn write(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Recorded>,
    shutdown: CancellationToken,
) {
    let mut latest: HashMap<(Fqdn, String, String), VantageRow> = HashMap::new();
    let mut observations: Vec<Observation> = Vec::new();
    let mut dropped = 0usize;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        let stop = tokio::select! {
            r = rx.recv() => match r {
                Some(Recorded::Report(row)) => {
                    let key = (row.domain.clone(), row.vantage.clone(), row.side.clone());
                    latest.insert(key, row);
                    continue;
                }
                Some(Recorded::Observations(rows)) => {
                    if observations.len() + rows.len() <= MAX_PENDING_OBSERVATIONS {
                        observations.extend(rows);
                    } else {
                        dropped += rows.len();
                    }
                    continue;
                }
                None => true,
            },
            _ = tick.tick() => false,
            _ = shutdown.cancelled() => true,
        };
        let rows: Vec<VantageRow> = latest.drain().map(|(_, r)| r).collect();
        if !rows.is_empty() {
            if let Err(e) = store.put_vantage_reports(&rows).await {
                tracing::warn!(error = %e, reports = rows.len(), "vantage reports not stored; the leader does not see these rounds");
            }
        }
        if !observations.is_empty() {
            let n = observations.len();
            if let Err(e) = store.record_observations(&observations).await {
                tracing::warn!(error = %e, rows = n, "observations not stored");
            }
            observations.clear();
        }
        if dropped > 0 {
            metrics::counter!("mxguard_observations_dropped_total").increment(dropped as u64);
            tracing::warn!(
                rows = dropped,
                "observations dropped: the store is not keeping up"
            );
            dropped = 0;
        }
        if stop {
            return;
        }
    }
}

/// The other vantages' latest reports, by domain.
#[derive(Clone, Default)]
pub struct Board {
    reports: Arc<RwLock<HashMap<Fqdn, Vec<VantageReport>>>>,
}

impl Board {
    /// Refreshes every [`EVERY`] while `leadership` leads; `window`: how old a report may be
    /// and still be read (the longest freshness of any domain).
    pub fn start(
        store: Arc<dyn Store>,
        leadership: Leadership,
        window: Duration,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let board = Board::default();
        let b = board.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if !leadership.is_leader() {
                    b.replace(HashMap::new());
                    continue;
                }
                let since = Utc::now() - window;
                match store.other_vantage_reports(leadership.vantage(), since).await {
                    Ok(rows) => {
                        let mut by_domain: HashMap<Fqdn, Vec<VantageReport>> = HashMap::new();
                        for row in rows {
                            match serde_json::from_value::<VantageReport>(row.report) {
                                Ok(r) => by_domain.entry(row.domain).or_default().push(r),
                                Err(e) => tracing::warn!(vantage = %row.vantage, error = %e, "unreadable vantage report ignored"),
                            }
                        }
                        b.replace(by_domain);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the other vantages' reports; deciding on older ones"),
                }
            }
        });
        board
    }

    fn replace(&self, map: HashMap<Fqdn, Vec<VantageReport>>) {
        if let Ok(mut r) = self.reports.write() {
            *r = map;
        }
    }

    /// The other vantages' reports for `domain`.
    pub fn others(&self, domain: &Fqdn) -> Vec<VantageReport> {
        self.reports
            .read()
            .ok()
            .and_then(|r| r.get(domain).cloned())
            .unwrap_or_default()
    }
}
