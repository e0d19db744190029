//! Notifications: the engine's events, routed per domain and severity to webhooks, Slack,
//! PagerDuty (Events API v2) and Statuspage. `docs/NOTIFY.md` describes the configuration,
//! the payloads, the signature and what a restart does.
//!
//! One dispatcher task reads the event bus, classifies each notice (severity, incident, whether
//! it resolves one) and offers it to every target whose route accepts it. Each target has its
//! own bounded queue and worker task, which delivers in order with retries; a full queue drops
//! the notice (counted, logged) rather than wait, so the bus reader — and so the actors that
//! publish — never wait on a receiver. A delivery that is given up becomes a `notify_failed`
//! event in the domain's timeline (written to the store only, never published on the bus, so a
//! failing target cannot feed itself).

mod classify;
mod deliver;
mod pagerduty;
mod slack;
mod statuspage;
mod webhook;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};

use chrono::{DateTime, Utc};
use mxguard_core::{Clock, Jitter, SeededJitter, TokioClock};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::classify::{dedup_key, severity_of, Item, Links};
use self::deliver::Worker;
pub use self::webhook::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::config::{Config, NotifyConfig, NotifyTarget, TargetKind};
use crate::events::{EventBus, Notice};
use crate::model::Fqdn;
use crate::store::Store;

/// Delivery counts of one target, for tests and logs (metrics carry the same).
#[derive(Debug, Default)]
pub struct Stats {
    queued: AtomicU64,
    dropped: AtomicU64,
    attempts: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Notices accepted into the target's queue.
    pub queued: u64,
    /// Notices dropped because the queue was full.
    pub dropped: u64,
    /// HTTP requests made (each retry counts).
    pub attempts: u64,
    /// Notices delivered.
    pub delivered: u64,
    /// Notices given up (each one a `notify_failed` event).
    pub failed: u64,
    /// Notices the target had nothing to send for (e.g. a Statuspage status unchanged).
    pub skipped: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        StatsSnapshot {
            queued: get(&self.queued),
            dropped: get(&self.dropped),
            attempts: get(&self.attempts),
            delivered: get(&self.delivered),
            failed: get(&self.failed),
            skipped: get(&self.skipped),
        }
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::SeqCst);
    }
}

/// What a running notifier exposes: per-target counts.
#[derive(Clone, Default)]
pub struct NotifyHandle {
    stats: BTreeMap<String, Arc<Stats>>,
}

impl NotifyHandle {
    pub fn stats(&self, target: &str) -> Option<StatsSnapshot> {
        self.stats.get(target).map(|s| s.snapshot())
    }

    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.stats.keys().map(String::as_str)
    }
}

/// Starts notifications for `config` on the engine's bus (the service's one call). With no
/// target configured nothing is spawned.
pub fn spawn(
    config: &Config,
    store: Arc<dyn Store>,
    bus: &EventBus,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> NotifyHandle {
    Notifier::new(config.notify.clone(), store).start(bus, shutdown, tasks)
}

/// A notifier before it starts; tests inject the clock and jitter of the retries.
pub struct Notifier {
    config: NotifyConfig,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
}

impl Notifier {
    pub fn new(config: NotifyConfig, store: Arc<dyn Store>) -> Notifier {
        Notifier {
            config,
            store,
            clock: Arc::new(TokioClock),
            jitter: Arc::new(SeededJitter::from_entropy()),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>, jitter: Arc<dyn Jitter>) -> Notifier {
        self.clock = clock;
        self.jitter = jitter;
        self
    }

    /// Subscribes to `bus` now and spawns the dispatcher and one worker per target on `tasks`;
    /// all stop when `shutdown` fires (queued notices are then dropped: the timeline has them).
    pub fn start(
        self,
        bus: &EventBus,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> NotifyHandle {
        if self.config.targets.is_empty() {
            return NotifyHandle::default();
        }
        let http = match deliver::http_client(&self.config.delivery) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client; notifications are off");
                return NotifyHandle::default();
            }
        };
        let links = Links::new(&self.config.api_base_url);
        let started = Utc::now();
        let mut routes = Vec::new();
        let mut handle = NotifyHandle::default();
        for (name, target) in &self.config.targets {
            check_secrets(name, target);
            let stats = Arc::new(Stats::default());
            let (tx, rx) = mpsc::channel(self.config.delivery.queue);
            let worker = Worker::new(
                name.clone(),
                target.clone(),
                deliver::Context {
                    http: http.clone(),
                    store: self.store.clone(),
                    delivery: self.config.delivery.clone(),
                    clock: self.clock.clone(),
                    jitter: self.jitter.clone(),
                    started,
                },
                stats.clone(),
            );
            tasks.spawn(worker.run(rx, shutdown.clone()));
            handle.stats.insert(name.clone(), stats.clone());
            routes.push(Route {
                name: name.clone(),
                target: target.clone(),
                tx,
                stats,
                touched: HashSet::new(),
            });
        }
        tracing::info!(targets = routes.len(), "notifications on");
        let dispatcher = Dispatcher {
            routes,
            links,
            started,
            closed: HashMap::new(),
        };
        tasks.spawn(dispatcher.run(bus.subscribe(), shutdown));
        handle
    }
}

/// A secret that cannot be read now is reported at start; it is read again at every delivery,
/// so fixing the variable or file needs no restart.
fn check_secrets(name: &str, target: &NotifyTarget) {
    let sources = match &target.kind {
        TargetKind::Webhook { secret, .. } => vec![secret],
        TargetKind::Slack { url } => vec![url],
        TargetKind::PagerDuty { routing_key, .. } => vec![routing_key],
        TargetKind::Statuspage { api_key, .. } => vec![api_key],
    };
    for s in sources {
        if let Err(why) = s.resolve() {
            tracing::error!(target = name, kind = target.kind.as_str(), %why, "notification secret unreadable; deliveries to this target will fail until it is");
        }
    }
}

/// Describes the metrics once; called on the first outcome, after the service installed its
/// recorder (descriptions given before that are lost).
fn describe_metrics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        metrics::describe_counter!(
            "mxguard_notify_deliveries_total",
            "Notifications by target, kind and outcome (delivered, failed, dropped, skipped)"
        );
        metrics::describe_counter!(
            "mxguard_notify_attempts_total",
            "Notification HTTP requests by target, kind and outcome (ok, error)"
        );
        metrics::describe_counter!(
            "mxguard_notify_lagged_total",
            "Events the notifier missed because it fell behind the event bus"
        );
    });
}

fn count_outcome(target: &str, kind: &'static str, outcome: &'static str) {
    describe_metrics();
    metrics::counter!("mxguard_notify_deliveries_total", "target" => target.to_string(), "kind" => kind, "outcome" => outcome).increment(1);
}

/// One target's filter in the dispatcher.
struct Route {
    name: String,
    target: NotifyTarget,
    tx: mpsc::Sender<Arc<Item>>,
    stats: Arc<Stats>,
    /// Incidents (domain, start) this target was sent something for.
    touched: HashSet<(Fqdn, DateTime<Utc>)>,
}

impl Route {
    /// Whether this target gets `item`. Severity decides, except that the resolution of an
    /// incident goes to every target that was told about it (or may have been, before a
    /// restart), and a Statuspage incident, once opened, follows every step of its incident.
    fn accepts(&mut self, item: &Item, started: DateTime<Utc>) -> bool {
        if !self.target.routes(&item.notice.event.domain) {
            return false;
        }
        let severe = item.severity >= self.target.min_severity;
        let Some(incident) = &item.incident else {
            return severe && !self.target.kind.tracks_incidents();
        };
        let key = (item.notice.event.domain.clone(), incident.since);
        // Before this process started, we cannot know what this target was sent.
        let told = self.touched.contains(&key) || incident.since < started;
        if item.resolves {
            return told || (severe && !self.target.kind.tracks_incidents());
        }
        let open = incident.until.is_none();
        let accept = match &self.target.kind {
            TargetKind::Webhook { .. } | TargetKind::Slack { .. } => severe,
            TargetKind::PagerDuty { .. } => open && severe,
            TargetKind::Statuspage { .. } => open && (severe || told),
        };
        if accept && open {
            self.touched.insert(key);
        }
        accept
    }
}

impl TargetKind {
    /// PagerDuty and Statuspage speak in incidents: nothing outside one is sent there.
    fn tracks_incidents(&self) -> bool {
        matches!(
            self,
            TargetKind::PagerDuty { .. } | TargetKind::Statuspage { .. }
        )
    }
}

struct Dispatcher {
    routes: Vec<Route>,
    links: Links,
    started: DateTime<Utc>,
    /// Per domain, the start of the last incident whose resolution was dispatched.
    closed: HashMap<Fqdn, DateTime<Utc>>,
}

/// How long after a restart a closed incident still gets its resolution sent: one closed just
/// before the restart may not have been delivered; older ones were.
const RESOLVE_GRACE: chrono::Duration = chrono::Duration::minutes(10);

impl Dispatcher {
    async fn run(mut self, mut rx: broadcast::Receiver<Arc<Notice>>, shutdown: CancellationToken) {
        loop {
            let notice = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = rx.recv() => match r {
                    Ok(n) => n,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        describe_metrics();
                        metrics::counter!("mxguard_notify_lagged_total").increment(n);
                        tracing::warn!(missed = n, "notifications fell behind the event bus; events skipped (they are in the timeline)");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            self.dispatch(notice);
        }
        tracing::info!("notification dispatcher stopped");
    }

    /// Classifies one notice and offers it to every route; never waits.
    fn dispatch(&mut self, notice: Arc<Notice>) {
        let item = Arc::new(self.classify(notice));
        for route in &mut self.routes {
            if !route.accepts(&item, self.started) {
                continue;
            }
            let kind = route.target.kind.as_str();
            match route.tx.try_send(item.clone()) {
                Ok(()) => Stats::bump(&route.stats.queued),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Stats::bump(&route.stats.dropped);
                    count_outcome(&route.name, kind, "dropped");
                    tracing::warn!(target = %route.name, kind, event = item.notice.event.id, domain = %item.notice.event.domain, "notification queue full; notification dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::warn!(target = %route.name, "notification worker gone");
                }
            }
        }
    }

    fn classify(&mut self, notice: Arc<Notice>) -> Item {
        let domain = notice.event.domain.clone();
        let resolves = match notice.state.incident {
            Some(i) => match i.until {
                Some(until) => {
                    let fresh = self.closed.get(&domain) != Some(&i.since);
                    let recent = until >= self.started - RESOLVE_GRACE;
                    if fresh {
                        self.closed.insert(domain, i.since);
                    }
                    fresh && recent
                }
                None => false,
            },
            None => false,
        };
        Item::new(notice, resolves, &self.links)
    }
}

#[cfg(test)]
mod tests;
