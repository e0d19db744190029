//! The provider registry: one client per `[providers.NAME]`, built from configuration by one
//! factory and wrapped in the shared machinery (admission, token bucket, retries, deadline).
//! The engine's actors, the API and the CLI all take their clients from a registry, so one
//! account has one budget and one set of zone locks whoever writes; tests build it the same
//! way from a config that points at the Cloudflare fake, moto or `named`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mxguard_core::{
    Budget, Clock, Coalescing, DnsProvider, Guarded, RateLimit, Retrier, RetryPolicy, SeededJitter,
    TokenBucket, TokioClock,
};
use mxguard_rfc2136::{Rfc2136Config, Rfc2136Provider, TsigSecret};
use secrecy::ExposeSecret;

use crate::access::ProviderAccess;
use crate::config::{Config, ProviderConfig, TsigAlgorithm};

mod metered;
use crate::engine::EngineError;
pub use metered::Metered;

/// One configured provider, as the registry built it.
#[derive(Clone)]
pub struct BuiltProvider {
    /// The client for changes (and reads that must not wait behind background work).
    pub client: Arc<dyn DnsProvider>,
    /// The client for reads of what is published when nothing is known yet (a start, a
    /// takeover): the asks of many domains of one zone at once are answered by one listing
    /// ([`Coalescing`]). Changes keep `client`: their read is planned and written at once.
    pub observer: Arc<dyn DnsProvider>,
    /// The same client at background priority (periodic reads), its reads coalesced likewise.
    pub background: Arc<dyn DnsProvider>,
    /// The server that answers authoritatively for the zone, when the provider knows it.
    pub primary: Option<SocketAddr>,
    /// The same client's access checks (`providers check`, `serve`'s start check).
    pub access: Arc<dyn ProviderAccess>,
}

/// The built providers, by config name.
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    built: BTreeMap<String, BuiltProvider>,
}

impl ProviderRegistry {
    /// Builds every provider that a configured domain uses (the others cost nothing: no
    /// credentials are resolved, no client is made).
    pub async fn from_config(config: &Config) -> Result<ProviderRegistry, EngineError> {
        let mut built = BTreeMap::new();
        let mut budgets = Budgets::default();
        for (name, p) in &config.providers {
            if config.domains.iter().any(|d| d.uses(name)) {
                let b = build_provider(name, p, config, &mut budgets).await?;
                built.insert(name.clone(), b);
            }
        }
        Ok(ProviderRegistry { built })
    }

    /// Builds `[providers.NAME]` alone (CLI operations on one domain).
    pub async fn one(config: &Config, name: &str) -> Result<BuiltProvider, EngineError> {
        let cfg = config
            .providers
            .get(name)
            .ok_or_else(|| EngineError::Provider {
                name: name.to_string(),
                why: "not configured".into(),
            })?;
        build_provider(name, cfg, config, &mut Budgets::default()).await
    }

    pub fn get(&self, name: &str) -> Option<&BuiltProvider> {
        self.built.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &BuiltProvider)> {
        self.built.iter()
    }

    /// The clients for changes, by name.
    pub fn clients(&self) -> BTreeMap<String, Arc<dyn DnsProvider>> {
        self.built
            .iter()
            .map(|(name, p)| (name.clone(), p.client.clone()))
            .collect()
    }

    /// The same clients at background priority (reads that may wait behind changes), by name.
    pub fn backgrounds(&self) -> BTreeMap<String, Arc<dyn DnsProvider>> {
        self.built
            .iter()
            .map(|(name, p)| (name.clone(), p.background.clone()))
            .collect()
    }
}

/// The provider client for `[providers.NAME]`, as the engine builds it (for CLI operations).
pub async fn provider_client(
    config: &Config,
    name: &str,
) -> Result<Arc<dyn DnsProvider>, EngineError> {
    Ok(ProviderRegistry::one(config, name).await?.client)
}

/// How long after the last change a budget admits periodic reads again. Longer than the gaps
/// in a stream of failovers (milliseconds to a few seconds at the provider's pace), short
/// against the reconcile period (a minute at least).
pub const QUIET_AFTER_CHANGES: std::time::Duration = std::time::Duration::from_secs(5);

/// The budgets built so far, by name: provider entries naming the same `budget` get the same
/// one (the first entry's limits make it).
///
/// Each budget holds its periodic reads back until [`QUIET_AFTER_CHANGES`] has passed without a
/// change admitted: during a mass failover every request goes to the changes.
#[derive(Default)]
struct Budgets(BTreeMap<String, Budget>);

impl Budgets {
    fn get_or(
        &mut self,
        name: &str,
        make: impl FnOnce() -> Result<Budget, String>,
    ) -> Result<Budget, String> {
        if let Some(b) = self.0.get(name) {
            return Ok(b.clone());
        }
        let b = make()?;
        b.gate().set_quiet(QUIET_AFTER_CHANGES);
        self.0.insert(name.to_string(), b.clone());
        Ok(b)
    }
}

async fn build_provider(
    name: &str,
    cfg: &ProviderConfig,
    config: &Config,
    budgets: &mut Budgets,
) -> Result<BuiltProvider, EngineError> {
    let err = |why: String| EngineError::Provider {
        name: name.to_string(),
        why,
    };
    let budget_name = config
        .budgets
        .get(name)
        .cloned()
        .unwrap_or_else(|| name.to_string());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock);
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
            // A DNS server answers in milliseconds when idle but not under load (5,000 fresh
            // domains reading at once through 8 places got ~10 reads/s): 32 places, the
            // 50 requests/s bucket paces.
            let budget = budgets
                .get_or(&budget_name, || {
                    let limit = RateLimit::new(50.0, 50).map_err(|e| e.to_string())?;
                    Ok(Budget::new(&budget_name, limit, 32, clock.clone()))
                })
                .map_err(err)?;
            let w = guarded(name, provider, budget.bucket().clone(), &budget);
            Ok(w.built(Some(*server)))
        }
        ProviderConfig::Cloudflare {
            api_token,
            api_url,
            min_ttl,
            account_id,
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
            if let Some(id) = account_id {
                config = config
                    .with_account_id(id)
                    .map_err(|e| err(format!("account_id: {e}")))?;
            }
            // The client paces its own requests (1,200 per 5 minutes per user) on the budget
            // every entry of the same user shares; the wrapper only retries. Four operations
            // at a time (a change is two requests) keep each one's wait for the pacing well
            // inside the 30 s deadline in a mass outage.
            let budget = budgets
                .get_or(&budget_name, || {
                    mxguard_cloudflare::CloudflareProvider::budget_for(&config, 4, clock.clone())
                        .map_err(|e| e.to_string())
                })
                .map_err(err)?;
            let provider =
                mxguard_cloudflare::CloudflareProvider::with_budget(config, budget.clone())
                    .map_err(|e| err(e.to_string()))?;
            let w = guarded(name, provider, unpaced(), &budget);
            Ok(w.built(None))
        }
        ProviderConfig::Route53 {
            region,
            endpoint_url,
            profile,
        } => {
            let domains = &config.domains;
            let mut config = mxguard_route53::Route53Config::new(name);
            if let Some(p) = profile {
                config = config.with_credentials(mxguard_route53::Credentials::Profile(p.clone()));
            }
            // Zones whose domains name their hosted zone are never looked up by name.
            for d in domains.iter().filter(|d| d.uses(name)) {
                if let Some(id) = &d.hosted_zone_id {
                    config = config.with_hosted_zone_id(d.zone.clone(), id.clone());
                }
            }
            if let Some(r) = region {
                config = config.with_region(r.clone());
            }
            if let Some(url) = endpoint_url {
                config = config.with_endpoint_url(url.clone());
            }
            // An apply returns once Route 53 accepted the change; following it to INSYNC runs
            // outside the zone lock and the admission place (Route 53 refuses only a change
            // processed concurrently, `PriorRequestNotComplete`, which is retried), and the
            // change is verified at the authoritative servers or by reading back.
            let config = config.with_background_follow();
            // The client paces itself to Route 53's 5 requests per second per account (on
            // the budget the account's entries share); a change is a read and a batch, so a
            // few places keep each inside its deadline.
            let limit = config.rate_limit;
            let budget = budgets
                .get_or(&budget_name, || {
                    Ok(Budget::new(&budget_name, limit, 8, clock.clone()))
                })
                .map_err(err)?;
            let provider = mxguard_route53::Route53Provider::with_bucket(
                config,
                clock,
                budget.bucket().clone(),
            )
            .await
            .map_err(|e| err(e.to_string()))?;
            let w = guarded(name, provider, unpaced(), &budget);
            Ok(w.built(None))
        }
    }
}

/// How long one provider operation may take, retries included (not the wait for admission).
const PROVIDER_DEADLINE: Duration = Duration::from_secs(30);

/// A wrapped provider: the client for changes, the same at background priority, and the client
/// typed (for its access checks).
struct Wrapped<P> {
    client: Arc<dyn DnsProvider>,
    observer: Arc<dyn DnsProvider>,
    background: Arc<dyn DnsProvider>,
    typed: Arc<Guarded<P>>,
}

impl<P: DnsProvider + crate::access::Checks + 'static> Wrapped<P> {
    fn built(self, primary: Option<SocketAddr>) -> BuiltProvider {
        BuiltProvider {
            client: self.client,
            observer: self.observer,
            background: self.background,
            primary,
            access: self.typed,
        }
    }
}

/// How long the reads of one zone are gathered before they are answered together: the
/// domains starting together ask within milliseconds of each other.
const COALESCE_WINDOW: Duration = Duration::from_millis(20);

/// A bucket that never makes anyone wait, for a wrapper around a client that paces itself.
fn unpaced() -> Arc<TokenBucket> {
    let limit = RateLimit::new(1_000_000.0, 1_000_000).expect("a valid rate");
    Arc::new(TokenBucket::new(limit, Arc::new(TokioClock)))
}

/// Wraps a provider in the shared machinery: its budget's admission (a few operations at a
/// time, changes first, closed while the provider locks the account out), `bucket`'s pacing,
/// retries with backoff, the deadline; every operation counted by outcome ([`Metered`]).
/// Returns the client for changes, the same for first reads and at background priority (both
/// with their reads of one zone coalesced), and the client typed (for its access checks).
fn guarded<P: DnsProvider + 'static>(
    name: &str,
    provider: P,
    bucket: Arc<TokenBucket>,
    budget: &Budget,
) -> Wrapped<P> {
    let clock = Arc::new(TokioClock);
    let policy = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(5),
        deadline: PROVIDER_DEADLINE,
    };
    let retrier = Retrier::new(policy, clock, Arc::new(SeededJitter::from_entropy()));
    let client = Guarded::with_gate(provider, bucket, retrier, budget.gate().clone());
    let background = client.background();
    let typed = Arc::new(client.clone());
    let client: Arc<dyn DnsProvider> = Arc::new(Metered::new(client, name));
    let coalesced = |inner: Arc<dyn DnsProvider>| -> Arc<dyn DnsProvider> {
        Arc::new(Coalescing::new(
            inner,
            Arc::new(TokioClock),
            COALESCE_WINDOW,
        ))
    };
    Wrapped {
        observer: coalesced(client.clone()),
        background: coalesced(Arc::new(Metered::new(background, name))),
        client,
        typed,
    }
}
