//! mxguard: a DNS failover controller for email.
//!
//! `main.rs` only parses the command line; everything a test may want to drive lives here.
//! [`run`] is the service: open the store, migrate, serve the API until the shutdown token fires.
#![forbid(unsafe_code)]

pub mod access;
pub mod actor;
pub mod api;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dane;
pub mod demo;
pub mod drill;
pub mod engine;
pub mod events;
pub mod health;
pub mod incidents;
pub mod lease;
pub mod logging;
pub mod machine;
pub mod model;
pub mod monitor;
pub mod mtasts;
pub mod notify;
pub mod ops;
pub mod plan;
pub mod probe;
pub mod providers;
pub mod recorder;
pub mod store;
pub mod systemd;
pub mod vantage;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::store::{Store, StoreError};

/// How long in-flight HTTP requests get to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("store {url}: {source}")]
    Store { url: String, source: StoreError },
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    #[error("{0}")]
    Engine(#[from] engine::EngineError),
    #[error("{0}")]
    Instance(#[from] lease::LockError),
}

/// Opens the configured store and applies its migrations.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, RunError> {
    let url = &config.store.url;
    let store = store::open(url).await.map_err(store_error(url))?;
    store.migrate().await.map_err(store_error(url))?;
    Ok(store)
}

/// A store error at `url`, as `serve` reports it.
fn store_error(url: &config::StoreUrl) -> impl Fn(StoreError) -> RunError + '_ {
    move |source| RunError::Store {
        url: url.to_string(),
        source,
    }
}

/// Runs the service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    api::install_metrics();
    // SQLite is single-instance: a second `serve` on the same file stops here, before touching it.
    let _instance = lease::lock_sqlite(&config.store.url)?;
    let store = open_store(&config).await?;
    tracing::info!(
        store = %config.store.url,
        domains = config.domains.len(),
        listen = %listener.local_addr()?,
        vantage = %config.cluster.vantage,
        "mxguard serving"
    );
    let tasks = TaskTracker::new();
    // PostgreSQL: the lease is renewed on a connection of its own, so a burst of the actors'
    // writes (which queue for the pool) never delays a renewal past the lease's TTL. SQLite
    // keeps one handle: its writes go through one writer anyway, and the lease is local.
    let lease_store = match store.kind() {
        config::StoreKind::Postgres => store::open(&config.store.url)
            .await
            .map_err(store_error(&config.store.url))?,
        config::StoreKind::Sqlite => store.clone(),
    };
    if store.kind() == config::StoreKind::Postgres {
        lease::refuse_live_twin(&*lease_store, &config.cluster).await?;
    }
    let (keeper, leadership) = lease::LeaseKeeper::new(
        lease_store,
        &config.cluster,
        Arc::new(mxguard_core::TokioClock),
    );
    tasks.spawn(keeper.run(shutdown.clone()));
    // Notifications listen before the actors start, so nothing recorded during recovery is lost.
    let events = events::EventBus::new();
    notify::spawn(&config, store.clone(), &events, shutdown.clone(), &tasks);
    let started = start_engine(
        &config,
        store.clone(),
        leadership,
        events,
        shutdown.clone(),
        &tasks,
    )
    .await;
    let (engine, registry) = match started {
        Ok(e) => e,
        Err(e) => {
            shutdown.cancel();
            tasks.close();
            tasks.wait().await;
            store.close().await;
            return Err(e.into());
        }
    };
    tasks.spawn(prune(
        store.clone(),
        config.store.retention(),
        shutdown.clone(),
    ));

    // The API writes through the engine's clients: one budget and one set of zone locks per
    // provider account, whoever writes.
    let providers = api::Providers::default();
    // Each provider's read check per zone, in the background: a failing one shows on /readyz
    // and in the domains' timelines from the start, not at the first failover.
    let sink = {
        let domains = engine.domains.clone();
        access::watch::Sink {
            store: store.clone(),
            events: engine.events.clone(),
            state: Box::new(move |d| domains.get(d).map(|h| h.latest().state.clone())),
            vantage: config.cluster.vantage.clone(),
        }
    };
    tasks.spawn(access::watch::run(
        access::watch::targets(&config, &registry),
        providers.access(),
        sink,
        shutdown.clone(),
    ));
    // Each domain's MTA-STS policy, at start and at each refresh: a backup that compliant
    // senders would refuse is alerted before the outage, and decided on during it. One fetcher
    // (TLS client, policy cache) per distinct set of checks, and a few looks at a time: with
    // thousands of domains starting together, a TLS client and a look in flight per domain
    // were gigabytes. One task schedules every domain's looks (a task per domain was 90 MB at
    // 100,000 domains).
    let mut fetchers: std::collections::BTreeMap<String, Arc<mtasts::fetch::Fetcher>> =
        Default::default();
    let mut watched = Vec::new();
    for d in &config.domains {
        if d.mta_sts == machine::MtaStsAction::Off {
            continue;
        }
        let Some(handle) = engine.domains.get(&d.name) else {
            continue;
        };
        let key = format!(
            "{:?} {:?} {:?}",
            d.checks.resolvers, d.checks.timeout, d.checks.ca_file
        );
        let fetcher = match fetchers.get(&key) {
            Some(f) => f.clone(),
            None => match mtasts::fetch::Fetcher::for_checks(&d.checks, engine.dns.clone()) {
                Ok(f) => fetchers.entry(key).or_insert(Arc::new(f)).clone(),
                Err(e) => {
                    tracing::error!(domain = %d.name, error = %e, "MTA-STS check not started: the TLS client cannot be built");
                    continue;
                }
            },
        };
        watched.push(mtasts::watch::Watched {
            cfg: d.clone(),
            fetcher,
            handle: handle.clone(),
        });
    }
    tasks.spawn(mtasts::watch::run(
        watched,
        mtasts::watch::LOOKS_AT_ONCE,
        shutdown.clone(),
    ));
    for (name, client) in &engine.providers {
        providers.insert(name, client.clone()).await;
    }
    let access: std::collections::BTreeMap<String, Arc<dyn access::ProviderAccess>> = registry
        .iter()
        .map(|(name, built)| (name.clone(), built.access.clone()))
        .collect();
    for (name, checks) in &access {
        providers.insert_access(name, checks.clone()).await;
    }
    // Drills on each domain's `drill_every`, on the leader.
    tasks.spawn(drill::schedule::run(
        config.domains.clone(),
        engine.clone(),
        store.clone(),
        access,
        shutdown.clone(),
        tasks.clone(),
    ));
    for (name, client) in &engine.background {
        providers.insert_background(name, client.clone()).await;
    }
    let server_cfg = config.server.clone();
    let app = api::router(api::AppState {
        store: store.clone(),
        engine: engine.clone(),
        config: Arc::new(config),
        providers,
    });
    let limits = api::server::Limits {
        header_read_timeout: server_cfg.header_read_timeout,
        max_connections: server_cfg.max_connections as usize,
    };
    let server = api::server::serve(listener, app, limits, shutdown.clone());
    // The listener is bound and the store answers: connections from now on are served.
    systemd::notify("READY=1");
    // A task of its own: the server may see the shutdown and end before `announce` does.
    let stopping = shutdown.clone();
    tasks.spawn(async move {
        stopping.cancelled().await;
        systemd::notify("STOPPING=1");
    });
    let announce = async {
        shutdown.cancelled().await;
        tracing::info!("shutdown requested; finishing in-flight requests");
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    // A slow client must not hold the process past the grace period.
    let result = tokio::select! {
        () = server => Ok(()),
        () = announce => {
            tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}; closing");
            Ok(())
        }
    };
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    store.close().await;
    tracing::info!("mxguard stopped");
    result
}

/// Builds the providers from `config` (one factory, [`providers::ProviderRegistry`]) and starts
/// the engine on them; the registry is returned for the providers' access checks.
async fn start_engine(
    config: &Config,
    store: Arc<dyn Store>,
    leadership: lease::Leadership,
    events: events::EventBus,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(engine::Engine, providers::ProviderRegistry), engine::EngineError> {
    let registry = providers::ProviderRegistry::from_config(config).await?;
    let engine = engine::Engine::start(
        config, &registry, store, leadership, events, shutdown, tasks,
    )
    .await?;
    Ok((engine, registry))
}

/// How long after start the first prune runs: after the actors' first state loads and writes,
/// which a start with thousands of domains queues at once.
const FIRST_PRUNE: Duration = Duration::from_secs(60);

/// Deletes what the `[store]` retention no longer keeps (observations, events, finished
/// changes, snapshots beyond the newest per domain, idempotency keys): shortly after start,
/// then hourly.
async fn prune(store: Arc<dyn Store>, retention: store::Retention, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + FIRST_PRUNE,
        Duration::from_secs(3600),
    );
    // A long first prune is followed by the next one an hour later, not by a catch-up burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pruned = tokio::select! {
            _ = shutdown.cancelled() => return,
            pruned = store.prune(&retention, chrono::Utc::now()) => pruned,
        };
        match pruned {
            Ok(p) if p.total() == 0 => {}
            Ok(p) => tracing::info!(
                observations = p.observations,
                events = p.events,
                changes = p.changes,
                snapshots = p.snapshots,
                idempotency_keys = p.idempotency_keys,
                "pruned what the store's retention no longer keeps"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "pruning the store failed; next attempt in an hour")
            }
        }
    }
}
