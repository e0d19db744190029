//! Builds the running controller from configuration: one provider client per `[providers.X]`
//! (wrapped in the shared retry / rate-limit / zone-lock machinery), and per domain a probe
//! monitor feeding that domain's actor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mxguard_core::{
    DnsProvider, Guarded, RateLimit, Retrier, RetryPolicy, SeededJitter, TokenBucket, TokioClock,
};
use mxguard_rfc2136::{Rfc2136Config, Rfc2136Provider, TsigSecret};
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actor::change::ChangeDeps;
use crate::actor::{Actor, ActorHandle};
use crate::config::{Config, DomainConfig, ProviderConfig, RcptChecks, TsigAlgorithm};
use crate::health::Thresholds;
use crate::lease::Leadership;
use crate::model::{Fqdn, Side};
use crate::monitor::{Monitor, MonitorSettings};
use crate::plan::Managed;
use crate::probe::dns::DnsClient;
use crate::probe::smtp::{RcptCheck, SmtpPolicy};
use crate::probe::target::{Prober, TargetSpec};
use crate::probe::tls;
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
}

struct BuiltProvider {
    client: Arc<dyn DnsProvider>,
    /// The server that answers authoritatively for the zone, when the provider knows it.
    primary: Option<std::net::SocketAddr>,
}

/// The provider client for `[providers.NAME]`, as the engine builds it (for CLI operations).
pub async fn provider_client(
    config: &Config,
    name: &str,
) -> Result<Arc<dyn DnsProvider>, EngineError> {
    let cfg = config
        .providers
        .get(name)
        .ok_or_else(|| EngineError::Provider {
            name: name.to_string(),
            why: "not configured".into(),
        })?;
    Ok(build_provider(name, cfg).await?.client)
}

async fn build_provider(name: &str, cfg: &ProviderConfig) -> Result<BuiltProvider, EngineError> {
    let err = |why: String| EngineError::Provider {
        name: name.to_string(),
        why,
    };
    match cfg {
        ProviderConfig::Rfc2136 {
            server,
            tsig_name,
            tsig_algorithm,
            tsig_secret,
        } => {
            let secret = tsig_secret
                .resolve()
                .map_err(|e| err(format!("tsig secret: {e}")))?;
            let secret = TsigSecret::from_base64(secret.expose_secret())
                .map_err(|e| err(format!("tsig secret: {e}")))?;
            let algorithm = match tsig_algorithm {
                TsigAlgorithm::HmacSha256 => mxguard_rfc2136::TsigAlgorithm::HmacSha256,
                TsigAlgorithm::HmacSha512 => mxguard_rfc2136::TsigAlgorithm::HmacSha512,
            };
            let config = Rfc2136Config::new(name, *server, tsig_name.clone(), algorithm, secret);
            let provider = Rfc2136Provider::new(config).map_err(|e| err(e.to_string()))?;
            Ok(BuiltProvider {
                client: guarded(provider, 50.0),
                primary: Some(*server),
            })
        }
        ProviderConfig::Cloudflare {
            api_token,
            api_url,
            min_ttl,
        } => {
            let token = api_token
                .resolve()
                .map_err(|e| err(format!("api token: {e}")))?;
            let token = mxguard_cloudflare::ApiToken::new(token.expose_secret())
                .map_err(|e| err(e.to_string()))?;
            let mut config =
                mxguard_cloudflare::CloudflareConfig::new(name, token).with_min_ttl(*min_ttl);
            if let Some(url) = api_url {
                config = config
                    .with_base_url(url)
                    .map_err(|e| err(format!("api_url: {e}")))?;
            }
            let provider =
                mxguard_cloudflare::CloudflareProvider::new(config, Arc::new(TokioClock))
                    .map_err(|e| err(e.to_string()))?;
            // The client paces its own requests (1,200 per 5 minutes); the shared bucket only retries.
            Ok(BuiltProvider {
                client: guarded(provider, 1000.0),
                primary: None,
            })
        }
        ProviderConfig::Route53 {
            region,
            endpoint_url,
        } => {
            let mut config = mxguard_route53::Route53Config::new(name);
            if let Some(r) = region {
                config = config.with_region(r.clone());
            }
            if let Some(url) = endpoint_url {
                config = config.with_endpoint_url(url.clone());
            }
            let provider = mxguard_route53::Route53Provider::new(config, Arc::new(TokioClock))
                .await
                .map_err(|e| err(e.to_string()))?;
            Ok(BuiltProvider {
                client: guarded(provider, 1000.0),
                primary: None,
            })
        }
    }
}

/// Wraps a provider in the shared machinery: token bucket, retries with backoff, deadline.
fn guarded<P: DnsProvider + 'static>(provider: P, per_second: f64) -> Arc<dyn DnsProvider> {
    let clock = Arc::new(TokioClock);
    let bucket = match RateLimit::new(per_second, per_second.ceil() as u32) {
        Ok(limit) => Arc::new(TokenBucket::new(limit, clock.clone())),
        Err(_) => Arc::new(TokenBucket::new(
            RateLimit::new(1.0, 1).expect("1/s is a valid rate"),
            clock.clone(),
        )),
    };
    let policy = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(5),
        deadline: Duration::from_secs(30),
    };
    let retrier = Retrier::new(policy, clock, Arc::new(SeededJitter::from_entropy()));
    Arc::new(Guarded::new(provider, bucket, retrier))
}

fn targets(cfg: &DomainConfig, managed: &Managed) -> Vec<TargetSpec> {
    let mut out = Vec::new();
    for side in [Side::Primary, Side::Backup] {
        let rcpt = match (cfg.checks.rcpt_checks, side) {
            (RcptChecks::All, _) | (RcptChecks::Backup, Side::Backup) => Some(RcptCheck {
                domain: cfg.name.clone(),
                refuse_relay: side == Side::Backup,
            }),
            _ => None,
        };
        for host in managed.hosts(side) {
            out.push(TargetSpec {
                side,
                host,
                rcpt: rcpt.clone(),
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
        store: Arc<dyn Store>,
        leadership: Leadership,
        events: crate::events::EventBus,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Engine, EngineError> {
        let mut providers = BTreeMap::new();
        for (name, p) in &config.providers {
            if config.domains.iter().any(|d| &d.provider == name) {
                providers.insert(name.clone(), build_provider(name, p).await?);
            }
        }
        let global = Arc::new(Semaphore::new(GLOBAL_PROBES));
        let mut engine = Engine {
            leadership: leadership.clone(),
            events,
            ..Engine::default()
        };
        let canaries = watch_canaries(&config.cluster.canaries, shutdown.clone(), tasks);
        let recorder = Recorder::start(store.clone(), shutdown.clone(), tasks);
        let window = config
            .domains
            .iter()
            .map(|d| freshness(&d.checks))
            .max()
            .unwrap_or_default();
        let board = Board::start(
            store.clone(),
            leadership.clone(),
            window,
            shutdown.clone(),
            tasks,
        );
        for d in &config.domains {
            let derr = |why: String| EngineError::Domain {
                domain: d.name.to_string(),
                why,
            };
            let provider = providers
                .get(&d.provider)
                .ok_or_else(|| derr(format!("unknown provider {}", d.provider)))?;
            let c = &d.checks;
            let tls = tls::client_config(c.ca_file.as_deref()).map_err(derr)?;
            let resolvers: Vec<DnsClient> = c
                .resolvers
                .iter()
                .map(|r| DnsClient::resolver(*r, c.timeout))
                .collect();
            let prober = Prober {
                resolvers,
                smtp: SmtpPolicy {
                    port: c.smtp_port,
                    timeout: c.timeout,
                    starttls: c.starttls,
                    ehlo_name: c.ehlo_name.clone(),
                    cert_min_days: c.cert_min_days,
                    tls,
                    rcpt: None,
                },
                global: global.clone(),
            };
            let authoritative = if d.authoritative.is_empty() {
                provider.primary.into_iter().collect()
            } else {
                d.authoritative.clone()
            };
            let verifier = Verifier {
                authoritative,
                resolvers: c.resolvers.clone(),
                query_timeout: c.timeout,
                bound: Duration::from_secs(60),
                poll: Duration::from_millis(250),
            };
            let deps = ChangeDeps {
                store: store.clone(),
                provider: provider.client.clone(),
                verifier,
                fence: leadership.clone(),
                vantage_quorum: config.cluster.vantage_quorum,
                board: board.clone(),
                provider_name: d.provider.clone(),
                events: engine.events.clone(),
            };
            let managed = Managed::new(d);
            let settings = MonitorSettings {
                interval: c.interval,
                confirm_interval: c.confirm_interval,
                jitter: c.interval / 10,
                thresholds: Thresholds {
                    fail_after: c.fail_after,
                    recover_after: c.recover_after,
                },
                resolver_quorum: c.resolver_quorum,
            };
            let monitor = Monitor::new(
                d.name.clone(),
                targets(d, &managed),
                settings,
                Arc::new(prober),
                Arc::new(TokioClock),
                Arc::new(SeededJitter::from_entropy()),
                chrono::Utc::now(),
            );
            let (actor, handle) = Actor::new(d.clone(), deps);
            tasks.spawn(actor.run(shutdown.clone()));
            let (tx, mut rx) = mpsc::channel(16);
            tasks.spawn(monitor.run(tx, shutdown.clone()));
            let forward = handle.clone();
            let (recorder, me, canaries) = (
                recorder.clone(),
                config.cluster.vantage.clone(),
                canaries.clone(),
            );
            tasks.spawn(async move {
                while let Some(report) = rx.recv().await {
                    let down = canaries.borrow().clone();
                    let own = VantageReport::from_round(&me, &report, down.as_deref());
                    record_round(&recorder, &report, &own);
                    if !forward.round(report, own).await {
                        break;
                    }
                }
            });
            tracing::info!(domain = %d.name, provider = %d.provider, mode = %d.targets.mode(), "domain controller started");
            engine.domains.insert(d.name.clone(), handle);
        }
        Ok(engine)
    }
}

/// Hands what this vantage saw in a round to the recorder: its report (for the leader's vote)
/// and the raw observations (evidence, pruned by retention). Never waits.
fn record_round(recorder: &Recorder, report: &crate::monitor::RoundReport, own: &VantageReport) {
    match serde_json::to_value(own) {
        Ok(json) => recorder.offer(
            VantageRow {
                domain: report.domain.clone(),
                vantage: own.vantage.clone(),
                side: report.side.as_str().to_string(),
                at: report.at,
                report: json,
            },
            vantage::observations(&own.vantage, report),
        ),
        Err(e) => tracing::error!(error = %e, "vantage report not serialisable"),
    }
}

/// How old another vantage's report may be and still vote on a domain with these checks.
pub fn freshness(checks: &crate::config::Checks) -> Duration {
    checks.interval * 3 + checks.timeout * 2
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
