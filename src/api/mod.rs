//! The HTTP API. `router` is callable from tests without a socket.
//!
//! Every route is declared once, in [`routes`]: method, path, the scope it needs and its
//! handler. The router is built from that table, the auth layer reads its scopes from it, and a
//! test compares it with `openapi.yaml` both ways.

mod auth;
mod body;
mod commands;
mod domains;
mod drill;
mod error;
mod health;
mod idempotency;
mod incidents;
mod metrics;
pub mod server;
mod snapshots;
mod ui;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use mxguard_core::DnsProvider;
use tower_http::trace::TraceLayer;

pub use self::auth::{Access, Caller};
pub use self::error::{ApiError, PROBLEM_BASE};
use crate::access::ProviderAccess;
use crate::actor::ActorHandle;
use crate::config::{Config, DomainConfig, Scope};
use crate::engine::{Engine, EngineError};
use crate::model::Fqdn;
use crate::store::Store;

/// The OpenAPI document, served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// What the API serves from.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub engine: Engine,
    pub config: Arc<Config>,
    /// Provider clients for snapshots and reverts, built from `config` on first use (tests
    /// may put their own in first).
    pub providers: Providers,
}

/// Provider clients by `[providers.NAME]`, built once and shared; each with the same client at
/// background priority for reads that may wait behind changes (dry runs, diffs).
#[derive(Clone, Default)]
pub struct Providers {
    clients: Arc<tokio::sync::Mutex<BTreeMap<String, Arc<dyn DnsProvider>>>>,
    background: Arc<tokio::sync::Mutex<BTreeMap<String, Arc<dyn DnsProvider>>>>,
    /// What the providers' access checks found failing (`/readyz`).
    access: crate::access::watch::AccessStatus,
    /// Each provider's access checks (a drill's write check), by name.
    checks: Arc<tokio::sync::Mutex<BTreeMap<String, Arc<dyn ProviderAccess>>>>,
}

impl Providers {
    /// The providers' access checks as `serve` last ran them; `/readyz` answers from it.
    pub fn access(&self) -> crate::access::watch::AccessStatus {
        self.access.clone()
    }

    /// Uses `provider` for `[providers.NAME]` instead of building one from the config.
    pub async fn insert(&self, name: &str, provider: Arc<dyn DnsProvider>) {
        self.clients.lock().await.insert(name.to_string(), provider);
    }

    /// Uses `provider` for `[providers.NAME]`'s background reads.
    pub async fn insert_background(&self, name: &str, provider: Arc<dyn DnsProvider>) {
        self.background
            .lock()
            .await
            .insert(name.to_string(), provider);
    }

    /// Uses `access` for `[providers.NAME]`'s access checks.
    pub async fn insert_access(&self, name: &str, access: Arc<dyn ProviderAccess>) {
        self.checks.lock().await.insert(name.to_string(), access);
    }

    /// `[providers.NAME]`'s access checks; built from the config on first use when none was
    /// put in (`serve` puts in the registry's, which share the clients' admission).
    async fn access_for(
        &self,
        config: &Config,
        name: &str,
    ) -> Result<Arc<dyn ProviderAccess>, String> {
        let mut map = self.checks.lock().await;
        if let Some(a) = map.get(name) {
            return Ok(a.clone());
        }
        let built = crate::providers::ProviderRegistry::one(config, name)
            .await
            .map_err(|e| e.to_string())?;
        map.insert(name.to_string(), built.access.clone());
        Ok(built.access)
    }

    /// The background client, else the client itself.
    async fn get_background(
        &self,
        config: &Config,
        name: &str,
    ) -> Result<Arc<dyn DnsProvider>, EngineError> {
        if let Some(p) = self.background.lock().await.get(name) {
            return Ok(p.clone());
        }
        self.get(config, name).await
    }

    async fn get(&self, config: &Config, name: &str) -> Result<Arc<dyn DnsProvider>, EngineError> {
        let mut map = self.clients.lock().await;
        if let Some(p) = map.get(name) {
            return Ok(p.clone());
        }
        let p = crate::providers::provider_client(config, name).await?;
        map.insert(name.to_string(), p.clone());
        Ok(p)
    }
}

/// The handlers' state: the app state plus what the router derives from it.
#[derive(Clone)]
pub struct Api(Arc<Inner>);

pub struct Inner {
    pub app: AppState,
    tokens: auth::Tokens,
    /// Per route: who may call it, and whether it is expensive.
    access: HashMap<(Method, &'static str), (Access, bool)>,
    /// (token name, Idempotency-Key) pairs being answered now.
    in_flight: Mutex<HashSet<(String, String)>>,
    /// Per token name: its places for expensive requests.
    expensive: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl Deref for Api {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Api {
    /// The configured domain `name` and its controller; 404 when it is not configured.
    fn domain(&self, name: &str) -> Result<(&DomainConfig, &ActorHandle), ApiError> {
        let unknown = || {
            let known: Vec<&str> = self
                .app
                .config
                .domains
                .iter()
                .map(|d| d.name.without_dot())
                .collect();
            ApiError::UnknownDomain(format!(
                "domain {name:?} is not configured (configured: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        };
        let fqdn = Fqdn::parse(name).map_err(|_| unknown())?;
        let cfg = self
            .app
            .config
            .domains
            .iter()
            .find(|d| d.name == fqdn)
            .ok_or_else(unknown)?;
        let handle = self.app.engine.domains.get(&fqdn).ok_or_else(unknown)?;
        Ok((cfg, handle))
    }

    /// The epoch to write with; a follower refuses (503 `not-leader`, naming the leader).
    fn leader_epoch(&self) -> Result<i64, ApiError> {
        let l = &self.app.engine.leadership;
        l.epoch()
            .ok_or_else(|| ApiError::NotLeader(crate::actor::not_leader(&l.report())))
    }

    async fn provider(&self, cfg: &DomainConfig) -> Result<Arc<dyn DnsProvider>, ApiError> {
        self.app
            .providers
            .get(&self.app.config, &cfg.provider)
            .await
            .map_err(|e| ApiError::Provider(e.to_string()))
    }

    /// The domain's provider at background priority, for reads that change nothing.
    async fn background(&self, cfg: &DomainConfig) -> Result<Arc<dyn DnsProvider>, ApiError> {
        self.app
            .providers
            .get_background(&self.app.config, &cfg.provider)
            .await
            .map_err(|e| ApiError::Provider(e.to_string()))
    }
}

/// One row of the route table.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    /// Reads the DNS provider (dry runs, diffs, snapshots, reverts): a token may have only
    /// `[server] expensive_per_token` of these at once.
    pub expensive: bool,
    service: MethodRouter<Api>,
}

impl Route {
    fn expensive(mut self) -> Route {
        self.expensive = true;
        self
    }
}

fn route<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Route
where
    H: Handler<T, Api>,
    T: 'static,
{
    let filter =
        MethodFilter::try_from(method.clone()).expect("the route table uses standard methods only");
    Route {
        method,
        path,
        access,
        expensive: false,
        service: on(filter, handler),
    }
}

/// Every route the API serves. `/readyz` and `/metrics` need a read token unless
/// `[server] open_readyz` / `open_metrics` say otherwise.
pub fn routes(config: &Config) -> Vec<Route> {
    use Method as M;
    let open = Access::Open;
    let read = Access::Need(Scope::Read);
    let operate = Access::Need(Scope::Operate);
    let admin = Access::Need(Scope::Admin);
    let open_if = |yes: bool| if yes { open } else { read };
    vec![
        route(M::GET, "/healthz", open, health::healthz),
        route(
            M::GET,
            "/readyz",
            open_if(config.server.open_readyz),
            health::readyz,
        ),
        route(
            M::GET,
            "/metrics",
            open_if(config.server.open_metrics),
            metrics::metrics,
        ),
        route(M::GET, "/openapi.yaml", open, health::openapi),
        route(M::GET, "/v1/domains", read, domains::list),
        route(M::GET, "/v1/domains/{domain}", read, domains::status),
        route(M::GET, "/v1/domains/{domain}/plan", read, domains::plan).expensive(),
        route(M::GET, "/v1/domains/{domain}/events", read, domains::events),
        route(
            M::GET,
            "/v1/domains/{domain}/incidents",
            read,
            incidents::list,
        ),
        route(
            M::GET,
            "/v1/domains/{domain}/incidents/{incident}",
            read,
            incidents::get,
        ),
        route(
            M::POST,
            "/v1/domains/{domain}/failover",
            operate,
            commands::failover,
        )
        .expensive(),
        route(
            M::POST,
            "/v1/domains/{domain}/failback",
            operate,
            commands::failback,
        )
        .expensive(),
        route(M::PUT, "/v1/domains/{domain}/pin", operate, commands::pin),
        route(
            M::DELETE,
            "/v1/domains/{domain}/pin",
            operate,
            commands::unpin,
        ),
        route(
            M::POST,
            "/v1/domains/{domain}/maintenance",
            operate,
            commands::maintenance,
        ),
        route(
            M::DELETE,
            "/v1/domains/{domain}/maintenance",
            operate,
            commands::cancel_maintenance,
        ),
        route(
            M::POST,
            "/v1/domains/{domain}/pause",
            operate,
            commands::pause,
        ),
        route(
            M::POST,
            "/v1/domains/{domain}/resume",
            operate,
            commands::resume,
        ),
        route(
            M::POST,
            "/v1/domains/{domain}/approve",
            operate,
            commands::approve,
        ),
        route(M::POST, "/v1/domains/{domain}/drill", operate, drill::drill).expensive(),
        route(M::GET, "/v1/snapshots", read, snapshots::list),
        route(M::POST, "/v1/snapshots", operate, snapshots::take).expensive(),
        route(M::GET, "/v1/snapshots/{id}", read, snapshots::get),
        route(M::GET, "/v1/snapshots/{id}/diff", read, snapshots::diff).expensive(),
        route(
            M::POST,
            "/v1/snapshots/{id}/revert",
            admin,
            snapshots::revert,
        )
        .expensive(),
    ]
}

/// Installs the process-wide metrics recorder (once). `serve` does it before anything else
/// runs: what the lease keeper and the first rounds record before the router exists would go
/// nowhere.
pub fn install_metrics() {
    metrics::install();
}

pub fn router(app: AppState) -> Router {
    metrics::install();
    let table = routes(&app.config);
    let access = table
        .iter()
        .map(|r| ((r.method.clone(), r.path), (r.access, r.expensive)))
        .collect();
    let api = Api(Arc::new(Inner {
        tokens: auth::Tokens::from_config(&app.config.tokens),
        app,
        access,
        in_flight: Mutex::new(HashSet::new()),
        expensive: Mutex::new(HashMap::new()),
    }));
    let mut router = Router::new();
    for r in table {
        router = router.route(r.path, r.service);
    }
    // The dashboard: HTML with its own cookie auth, outside the route table.
    let router = router.merge(ui::routes());
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(api.clone(), authorize))
        .layer(middleware::from_fn_with_state(api.clone(), time_limit))
        .layer(DefaultBodyLimit::max(body::BODY_LIMIT))
        .layer(middleware::from_fn(metrics::track))
        .layer(TraceLayer::new_for_http())
        .with_state(api)
}

/// Checks the token against the scope the route table gives the matched route.
async fn authorize(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    // axum answers HEAD with the GET handler: it needs what GET needs.
    let method = match *req.method() {
        Method::HEAD => Method::GET,
        ref m => m.clone(),
    };
    let access = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| api.access.get(&(method, p.as_str())))
        .copied();
    // Not a route (404) or not a method of it (405): the fallbacks answer.
    let Some((access, expensive)) = access else {
        return next.run(req).await;
    };
    match api.tokens.check(access, req.headers()) {
        Ok(Some(caller)) => {
            // Held until the answer is made: one token cannot fill the provider's queue.
            let _place = if expensive {
                match api.expensive_place(&caller.name) {
                    Ok(place) => Some(place),
                    Err(e) => return e.into_response(),
                }
            } else {
                None
            };
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Answers 503 when a request is not answered within `[server] request_timeout`. Whatever the
/// request started (a change, a revert) goes on: the actor owns it, not the connection.
async fn time_limit(State(api): State<Api>, req: Request, next: Next) -> Response {
    let limit = api.app.config.server.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(format!(
            "not answered within {} ([server] request_timeout); anything it started goes on: see the domain's events",
            humantime::format_duration(limit)
        ))
        .into_response(),
    }
}

impl Api {
    /// A place for one expensive request of token `name`, or 429.
    fn expensive_place(&self, name: &str) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let limit = self.app.config.server.expensive_per_token;
        let places = self
            .expensive
            .lock()
            .map_err(|_| ApiError::internal("expensive-request lock poisoned"))?
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit as usize)))
            .clone();
        places.try_acquire_owned().map_err(|_| {
            ApiError::TooManyRequests(format!(
                "token {name:?} already has {limit} requests that read the DNS provider in progress ([server] expensive_per_token); retry when one is answered"
            ))
        })
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NoRoute(req.uri().path().to_string())
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}
