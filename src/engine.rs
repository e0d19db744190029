//! Builds the running controller from configuration: one provider client per `[providers.X]`
//! (wrapped in the shared retry / rate-limit / zone-lock machinery), and per domain a probe
//! monitor feeding that domain's actor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mxguard_core::{DnsProvider, SeededJitter, TokioClock};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actor::change::ChangeDeps;
use crate::actor::{Actor, ActorHandle, Batching};
use crate::config::{Config, DomainConfig, RcptChecks, StoreKind};
use crate::health::Thresholds;
use crate::lease::Leadership;
use crate::model::{Fqdn, Side};
use crate::monitor::{MonitorSettings, Monitors, RoundSink, TargetProber};
use crate::plan::Managed;
use crate::probe::budget::SharedDns;
use crate::probe::dns::DnsClient;
use crate::probe::reuse::Rules;
use crate::probe::smtp::{RcptCheck, SmtpPolicy};
use crate::probe::target::{Prober, TargetSpec};
use crate::probe::tls;
use crate::providers::{BuiltProvider, ProviderRegistry};
use crate::recorder::{Board, Recorder};
use crate::store::{Store, VantageRow};
use crate::vantage::{self, VantageReport};
use crate::verify::Verifier;

/// SMTP probes in flight across all domains.
const GLOBAL_PROBES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("providers.{name}: {why}")]
    Provider { name: String, why: String },
    #[error("domains {domain}: {why}")]
    Domain { domain: String, why: String },
}

/// The running domains, by name.
#[derive(Clone, Default)]
pub struct Engine {
    pub domains: BTreeMap<Fqdn, ActorHandle>,
    /// Whether this instance leads (and its fencing epoch).
    pub leadership: Leadership,
    /// Every event the domains' actors record, for notifications.
    pub events: crate::events::EventBus,
    /// The provider clients the actors use, by config name: the API writes through these
    /// too, so they share one account budget (token bucket, admission) and zone locks.
    pub providers: BTreeMap<String, Arc<dyn DnsProvider>>,
    /// The same clients at background priority: dry runs and diffs wait behind changes.
    pub background: BTreeMap<String, Arc<dyn DnsProvider>>,
    /// The domains with a drill running (one at a time per domain: the API's and the
    /// schedule's share it).
    pub drills: crate::drill::run::Running,
    /// The resolvers' query budgets (`[checks] max_qps`) and the hosts' last answers: the
    /// probes, verification, MTA-STS and DANE looks and drills all spend the same.
    pub dns: SharedDns,
}

/// How often a domain reads its published records back, at most.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// The share of a pacing provider's request budget the periodic reads may take, so that a
/// mass failover still finds most of the budget free.
const RECONCILE_SHARE: f64 = 0.2;

/// Per pacing provider: the shortest period at which its domains' reads take no more than
/// `RECONCILE_SHARE` of the requests its client allows itself (Cloudflare's 1,200 per 5 minutes
/// per token is 4 requests/s: the default 60 s suits up to ~48 one-name domains). A domain reads
/// back every `checks.reconcile_interval` or this period, whichever is longer.
fn reconcile_periods(config: &Config, providers: &ProviderRegistry) -> BTreeMap<String, Duration> {
    let mut out = BTreeMap::new();
    for (name, built) in providers.iter() {
        let Some(rate) = built.client.request_rate() else {
            continue;
        };
        let cost: u32 = config
            .domains
            .iter()
            .filter(|d| d.uses(name))
            .map(|d| built.client.read_cost(&Managed::new(d).keys()))
            .sum();
        let period = reconcile_period(cost, rate, Duration::ZERO);
        if period > RECONCILE_EVERY {
            tracing::info!(provider = %name, domains_read_cost = cost, requests_per_sec = rate, period_secs = period.as_secs(), "published records of this provider's domains are read back every {}s, not {}s, to keep the reads under a fifth of its request budget", period.as_secs(), RECONCILE_EVERY.as_secs());
        }
        out.insert(name.clone(), period);
    }
    out
}

/// The reconcile period for reads costing `cost` requests in all, at `rate` requests/s, and
/// never shorter than `floor`.
pub fn reconcile_period(cost: u32, rate: f64, floor: Duration) -> Duration {
    if !(rate.is_finite() && rate > 0.0) {
        return floor;
    }
    let secs = f64::from(cost) / (RECONCILE_SHARE * rate);
    floor.max(Duration::from_secs_f64(secs.min(86_400.0)))
}

fn targets(cfg: &DomainConfig, managed: &Managed) -> Vec<TargetSpec> {
    let mut out = Vec::new();
    for side in [Side::Primary, Side::Backup] {
        let rcpt = match (cfg.checks.rcpt_checks, side) {
            (RcptChecks::All, _) | (RcptChecks::Backup, Side::Backup) => {
                Some(RcptCheck::one(cfg.name.clone(), side == Side::Backup))
            }
            _ => None,
        };
        // mode a: one host, probed at this side's own addresses (never at what the host
        // resolves to now, which is whichever side is published).
        let addresses = managed.addresses(side);
        for host in managed.hosts(side) {
            out.push(TargetSpec {
                side,
                host,
                rcpt: rcpt.clone(),
                addresses: addresses.clone(),
            });
        }
    }
    out
}

impl Engine {
    /// Starts every domain's monitor and actor on `tasks`. Every instance probes and stores its
    /// vantage's verdicts; only while `leadership` says so do the actors decide and write.
    /// Listeners subscribe to `events` before this, so they miss nothing the actors record
    /// while they recover.
    pub async fn start(
        config: &Config,
        providers: &ProviderRegistry,
        store: Arc<dyn Store>,
        leadership: Leadership,
        events: crate::events::EventBus,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Engine, EngineError> {
        let reconcile = reconcile_periods(config, providers);
        let global = Arc::new(Semaphore::new(GLOBAL_PROBES));
        let mut engine = Engine {
            leadership: leadership.clone(),
            events,
            providers: providers.clients(),
            background: providers.backgrounds(),
            ..Engine::default()
        };
        let canaries = watch_canaries(&config.cluster.canaries, shutdown.clone(), tasks);
        let recorder = Recorder::start(store.clone(), shutdown.clone(), tasks);
        // Reports are read for twice the longest freshness: one past its freshness no longer
        // votes but stays in the evidence ("a Up (stale: last report …)") for a while, so the
        // timeline says which vantage went quiet instead of the vantage just vanishing.
        let window = config
            .domains
            .iter()
            .map(|d| vantage::freshness(&d.checks))
            .max()
            .unwrap_or_default();
        // Vantage reports are how instances sharing a store see each other's verdicts. SQLite
        // is one instance (its lock file), so there are none to read and nobody reads ours:
        // neither is stored or read (at 100,000 domains that was ~20,000 rows written a second
        // and the whole table scanned every second for nothing).
        let shared = config.store.url.kind() == StoreKind::Postgres;
        let board = if shared {
            Board::start(
                store.clone(),
                leadership.clone(),
                window * 2,
                shutdown.clone(),
                tasks,
            )
        } else {
            Board::default()
        };
        // One TLS client configuration per distinct `ca_file`, shared by the domains that name
        // it: each holds the whole parsed system root store (about 110 KiB per domain, which
        // made memory grow with the number of domains).
        let mut tls_by_ca: BTreeMap<Option<std::path::PathBuf>, Arc<rustls::ClientConfig>> =
            BTreeMap::new();
        // One prober per distinct set of probe settings: the monitors probe a host once for
        // all the domains that reach it through the same prober.
        let mut probers: BTreeMap<String, Arc<dyn TargetProber>> = BTreeMap::new();
        let mut monitors = Monitors::new(
            Arc::new(TokioClock),
            Arc::new(SeededJitter::from_entropy()),
            chrono::Utc::now(),
        );
        // Observations are the hosts': one set per host probe, not one per domain using it.
        {
            let (recorder, me) = (recorder.clone(), config.cluster.vantage.clone());
            monitors.on_host_round(Arc::new(move |evidence, at| {
                recorder.offer_observations(vantage::observations(&me, evidence, at));
            }));
        }
        // One query budget per resolver address for the whole process (`[checks] max_qps`),
        // spent by every prober and by verification, with the hosts' last answers.
        let dns = SharedDns::new(
            config.checks.max_qps,
            Arc::new(TokioClock),
            Arc::new(SeededJitter::from_entropy()),
        );
        engine.dns = dns.clone();
        // One loader and writer for every domain: their state is read, and their state and
        // timeline written, in batches, not one query each.
        let batching = Batching::new(store.clone());
        // This vantage's name, one copy for every domain's sink.
        let me: Arc<str> = config.cluster.vantage.as_str().into();
        let mut shared_deps: BTreeMap<String, Arc<ChangeDeps>> = BTreeMap::new();
        for d in &config.domains {
            let derr = |why: String| EngineError::Domain {
                domain: d.name.to_string(),
                why,
            };
            let provider: &BuiltProvider = providers
                .get(&d.provider)
                .ok_or_else(|| derr(format!("unknown provider {}", d.provider)))?;
            let c = &d.checks;
            let tls = match tls_by_ca.get(&c.ca_file) {
                Some(shared) => shared.clone(),
                None => {
                    let built = tls::client_config(c.ca_file.as_deref()).map_err(derr)?;
                    tls_by_ca.insert(c.ca_file.clone(), built.clone());
                    built
                }
            };
            let class = format!(
                "{:?}",
                (
                    &c.resolvers,
                    c.timeout,
                    c.smtp_port,
                    c.starttls,
                    &c.ehlo_name,
                    c.cert_min_days,
                    &c.ca_file,
                    c.max_addresses,
                    c.interval,
                    c.dns_interval
                )
            );
            let prober = probers
                .entry(class)
                .or_insert_with(|| {
                    dns.register(&c.resolvers);
                    Arc::new(Prober {
                        resolvers: c
                            .resolvers
                            .iter()
                            .map(|r| DnsClient::resolver(*r, c.timeout))
                            .collect(),
                        dns: dns.clone(),
                        reuse: Rules {
                            dns_interval: c.dns_interval,
                            interval: c.interval,
                        },
                        smtp: SmtpPolicy {
                            keep_chain: false,
                            port: c.smtp_port,
                            timeout: c.timeout,
                            deadline: Some(vantage::probe_deadline(c)),
                            starttls: c.starttls,
                            ehlo_name: c.ehlo_name.clone(),
                            cert_min_days: c.cert_min_days,
                            tls,
                            rcpt: None,
                        },
                        global: global.clone(),
                        max_addresses: c.max_addresses as usize,
                    })
                })
                .clone();
            let verify_at = |name: &str, built: &BuiltProvider| {
                let configured = d.authoritative_for(name);
                if configured.is_empty() {
                    built.primary.into_iter().collect()
                } else {
                    configured
                }
            };
            let authoritative = verify_at(&d.provider, provider);
            let mut mirrors = Vec::new();
            for name in &d.mirrors {
                let built = providers
                    .get(name)
                    .ok_or_else(|| derr(format!("unknown provider {name}")))?;
                mirrors.push(crate::actor::mirrors::Mirror {
                    name: name.clone(),
                    client: built.client.clone(),
                    observer: built.observer.clone(),
                    background: built.background.clone(),
                    authoritative: verify_at(name, built),
                });
            }
            let reconcile = d
                .providers()
                .filter_map(|p| reconcile.get(p))
                .fold(c.reconcile_interval, |a, p| a.max(*p));
            // Domains with the same provider, servers and checks share one set of deps (at
            // 100,000 domains a copy each was 35 MB).
            let key = format!(
                "{:?}",
                (
                    &d.provider,
                    &authoritative,
                    mirrors
                        .iter()
                        .map(|m| (&m.name, &m.authoritative))
                        .collect::<Vec<_>>(),
                    &c.resolvers,
                    c.timeout,
                    reconcile
                )
            );
            let deps = shared_deps
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(ChangeDeps {
                        store: store.clone(),
                        provider: provider.client.clone(),
                        observer: provider.observer.clone(),
                        background: provider.background.clone(),
                        reconcile,
                        verifier: Verifier {
                            authoritative,
                            resolvers: c.resolvers.clone(),
                            query_timeout: c.timeout,
                            dns: dns.clone(),
                            bound: Duration::from_secs(60),
                            poll: Duration::from_millis(250),
                        },
                        fence: leadership.clone(),
                        vantage_quorum: config.cluster.vantage_quorum,
                        board: board.clone(),
                        provider_name: d.provider.clone(),
                        mirrors,
                        events: engine.events.clone(),
                        clock: crate::clock::WallClock::default(),
                    })
                })
                .clone();
            let managed = Managed::new(d);
            let settings = MonitorSettings {
                interval: c.interval,
                confirm_interval: c.confirm_interval,
                jitter: c.interval / 10,
                thresholds: Thresholds {
                    fail_after: c.fail_after,
                    recover_after: c.recover_after,
                    soft_fail_after: c.soft_fail_after,
                },
                resolver_quorum: c.resolver_quorum,
            };
            let (actor, handle) = Actor::batched(d.clone(), deps, &batching);
            tasks.spawn(actor.run(shutdown.clone()));
            let (forward, me, canaries) = (handle.clone(), me.clone(), canaries.clone());
            // Each round goes from the host's round straight to the actor's inbox (which keeps
            // the newest per side): no queue and no task per domain. Only a shared store keeps
            // the last report stored per side (the sink is held for the domain's life).
            let sink: RoundSink = if shared {
                let recorder = recorder.clone();
                let heartbeat = vantage::freshness(&d.checks) / 3;
                let stored: std::sync::Mutex<crate::model::BySide<Option<VantageReport>>> =
                    Default::default();
                Box::new(move |report| {
                    let down = canaries.borrow().clone();
                    let own = VantageReport::from_round(&me, &report, down.as_deref());
                    let mut stored = stored.lock().unwrap_or_else(|p| p.into_inner());
                    let last = &mut stored[report.side];
                    if vantage::worth_storing(last.as_ref(), &own, heartbeat) {
                        record_round(&recorder, &report, &own);
                        *last = Some(own.clone());
                    }
                    drop(stored);
                    forward.offer_round(report, own)
                })
            } else {
                Box::new(move |report| {
                    let down = canaries.borrow().clone();
                    let own = VantageReport::from_round(&me, &report, down.as_deref());
                    forward.offer_round(report, own)
                })
            };
            monitors.add_sink(d.name.clone(), targets(d, &managed), settings, prober, sink);
            tracing::info!(domain = %d.name, provider = %d.provider, mirrors = ?d.mirrors, mode = %d.targets.mode(), "domain controller started");
            engine.domains.insert(d.name.clone(), handle);
        }
        monitors.spawn(shutdown, tasks);
        Ok(engine)
    }
}

/// Hands this vantage's report of a domain's round to the recorder (for the leader's vote; the
/// raw observations are recorded per host, see `Monitors::on_host_round`). Never waits.
fn record_round(recorder: &Recorder, report: &crate::monitor::RoundReport, own: &VantageReport) {
    match serde_json::to_value(own) {
        Ok(json) => recorder.offer(VantageRow {
            domain: report.domain.clone(),
            vantage: own.vantage.clone(),
            side: report.side.as_str().to_string(),
            at: report.at,
            report: json,
        }),
        Err(e) => tracing::error!(error = %e, "vantage report not serialisable"),
    }
}

/// How often the canaries are tried, and how long one connection may take.
const CANARY_EVERY: Duration = Duration::from_secs(5);
const CANARY_TIMEOUT: Duration = Duration::from_secs(2);

/// Tries the `[cluster] canaries` (TCP connect) in the background: `Some(why)` while none of
/// them answers, `None` while one does or when none is configured.
fn watch_canaries(
    canaries: &[std::net::SocketAddr],
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> tokio::sync::watch::Receiver<Option<String>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    if canaries.is_empty() {
        return rx;
    }
    let canaries = canaries.to_vec();
    tasks.spawn(async move {
        loop {
            let mut failures = Vec::new();
            for c in &canaries {
                match tokio::time::timeout(CANARY_TIMEOUT, tokio::net::TcpStream::connect(c)).await
                {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => failures.push(format!("{c}: {e}")),
                    Err(_) => failures.push(format!("{c}: no answer within {CANARY_TIMEOUT:?}")),
                }
            }
            let down = (failures.len() == canaries.len()).then(|| failures.join("; "));
            tx.send_if_modified(|v| {
                let changed = *v != down;
                *v = down.clone();
                changed
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CANARY_EVERY) => {}
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_reads_take_at_most_a_fifth_of_a_pacing_providers_budget() {
        // Cloudflare's pace: 1,140 per 5 minutes after the burst
        let cloudflare = 1140.0 / 300.0;
        assert_eq!(
            reconcile_period(10, cloudflare, RECONCILE_EVERY),
            RECONCILE_EVERY
        );
        let p = reconcile_period(1000, cloudflare, RECONCILE_EVERY);
        assert!(
            (1300..=1320).contains(&p.as_secs()),
            "1,000 one-name domains at 3.8 requests/s: {p:?}"
        );
        // the reads per second that period asks for
        let share = 1000.0 / p.as_secs_f64() / cloudflare;
        assert!(share <= 0.2 + 1e-9, "{share}");
        assert_eq!(
            reconcile_period(1000, 50.0, RECONCILE_EVERY),
            Duration::from_secs(100)
        );
        assert_eq!(
            reconcile_period(5, f64::NAN, RECONCILE_EVERY),
            RECONCILE_EVERY
        );
        assert_eq!(
            reconcile_period(u32::MAX, 1e-9, RECONCILE_EVERY),
            Duration::from_secs(86_400)
        );
    }
}
