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
    DnsProvider, Gate, Guarded, RateLimit, Retrier, RetryPolicy, SeededJitter, TokenBucket,
    TokioClock,
};
use mxguard_rfc2136::{Rfc2136Config, Rfc2136Provider, TsigSecret};
use secrecy::ExposeSecret;

use crate::access::ProviderAccess;
use crate::config::{Config, ProviderConfig, TsigAlgorithm};
use crate::engine::EngineError;

/// One configured provider, as the registry built it.
#[derive(Clone)]
pub struct BuiltProvider {
    /// The client for changes (and reads that must not wait behind background work).
    pub client: Arc<dyn DnsProvider>,
    /// The same client at background priority (periodic reads).
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
        for (name, p) in &config.providers {
            if config.domains.iter().any(|d| &d.provider == name) {
                built.insert(name.clone(), build_provider(name, p, config).await?);
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
        build_provider(name, cfg, config).await
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

async fn build_provider(
    name: &str,
    cfg: &ProviderConfig,
    config: &Config,
) -> Result<BuiltProvider, EngineError> {
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
            // A DNS server answers in milliseconds when idle but not under load (5,000 fresh
            // domains reading at once through 8 places got ~10 reads/s): 32 places, the
            // 50 requests/s bucket paces.
            let (client, background) = guarded(provider, 50.0, 32, PROVIDER_DEADLINE);
            Ok(BuiltProvider {
                client: client.clone(),
                background,
                primary: Some(*server),
                access: client,
            })
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
            let provider =
                mxguard_cloudflare::CloudflareProvider::new(config, Arc::new(TokioClock))
                    .map_err(|e| err(e.to_string()))?;
            // The client paces its own requests (1,200 per 5 minutes); the shared bucket only
            // retries. Four operations at a time (a change is 3–4 requests) keep each one's
            // wait for the client's pacing well inside the 30 s deadline in a mass outage.
            let (client, background) = guarded(provider, 1000.0, 4, PROVIDER_DEADLINE);
            Ok(BuiltProvider {
                client: client.clone(),
                background,
                primary: None,
                access: client,
            })
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
            for d in domains.iter().filter(|d| d.provider == name) {
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
            let provider = mxguard_route53::Route53Provider::new(config, Arc::new(TokioClock))
                .await
                .map_err(|e| err(e.to_string()))?;
            // The client paces itself to Route 53's 5 requests per second per account; a change
            // is a read and a batch, so a few places keep each inside its deadline.
            let (client, background) = guarded(provider, 1000.0, 8, PROVIDER_DEADLINE);
            Ok(BuiltProvider {
                client: client.clone(),
                background,
                primary: None,
                access: client,
            })
        }
    }
}

/// How long one provider operation may take, retries included (not the wait for admission).
const PROVIDER_DEADLINE: Duration = Duration::from_secs(30);

/// Wraps a provider in the shared machinery: admission (`places` operations at a time, changes
/// first), token bucket, retries with backoff, deadline. Returns the client for changes (typed,
/// for its access checks too) and the same client at background priority.
fn guarded<P: DnsProvider + 'static>(
    provider: P,
    per_second: f64,
    places: usize,
    deadline: Duration,
) -> (Arc<Guarded<P>>, Arc<dyn DnsProvider>) {
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
        deadline,
    };
    let retrier = Retrier::new(policy, clock, Arc::new(SeededJitter::from_entropy()));
    let client = Guarded::with_gate(provider, bucket, retrier, Gate::new(places));
    let background = client.background();
    (Arc::new(client), Arc::new(background))
}
