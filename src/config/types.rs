//! The validated configuration types. Values here have been checked; secrets are only named.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mxguard_core::{Fqdn, MxRecord, Ttl};
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from; `None` for embedded defaults.
    pub file: Option<PathBuf>,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub tokens: Vec<TokenConfig>,
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Each provider entry's request budget (`budget = "NAME"`, else its own name): entries
    /// naming the same budget share one pacing, admission and lockout.
    pub budgets: BTreeMap<String, String>,
    pub checks: Checks,
    /// Shared (`Arc`): each domain's actor, watches and the API hold the parsed config rather
    /// than copies of it (at 100,000 domains each copy was ~100 MB).
    pub domains: Vec<std::sync::Arc<DomainConfig>>,
    pub cluster: super::ClusterConfig,
    /// `[notify]`: notification targets and routes.
    pub notify: super::NotifyConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `/readyz` answers without a token (default: a `read` token is required).
    pub open_readyz: bool,
    /// `/metrics` answers without a token (default: a `read` token is required).
    pub open_metrics: bool,
    /// A connection that has not sent a whole request head within this long is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: u32,
    /// A request not answered within this long gets a 503 (what it started goes on).
    pub request_timeout: Duration,
    /// Requests per token at once on the routes that read the provider (dry runs, diffs,
    /// snapshots, reverts); more get a 429.
    pub expensive_per_token: u32,
}

/// `[store]`: where mxguard keeps its state, and how long it keeps what grows (parsed in
/// `store.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub url: StoreUrl,
    /// Probe observations older than this are pruned.
    pub observation_retention: Duration,
    /// Timeline events older than this are pruned.
    pub event_retention: Duration,
    /// Changes that ended (verified or failed) this long ago are pruned; unfinished ones never.
    pub change_retention: Duration,
    /// Idempotency keys older than this are pruned: a retry after that runs afresh.
    pub idempotency_retention: Duration,
    /// Snapshots kept per domain, newest first, besides those a change or the domain's state
    /// refers to.
    pub snapshot_keep: u32,
}

impl StoreConfig {
    /// What the pruning task keeps.
    pub fn retention(&self) -> crate::store::Retention {
        crate::store::Retention {
            observations: self.observation_retention,
            events: self.event_retention,
            changes: self.change_retention,
            idempotency_keys: self.idempotency_retention,
            snapshot_keep: self.snapshot_keep,
        }
    }
}

/// Which store backend a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// A store URL: `sqlite://PATH` or `postgres://…`. It may hold a password, so `Display`
/// and `Debug` print it with the password replaced.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    url: String,
    kind: StoreKind,
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let kind = if url.starts_with("sqlite:") {
            StoreKind::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            StoreKind::Postgres
        } else {
            return Err(format!(
                "expected sqlite://PATH or postgres://USER@HOST/DB, got {:?}",
                redact_password(url)
            ));
        };
        Ok(StoreUrl {
            url: url.to_string(),
            kind,
        })
    }

    /// `sqlite://mxguard.db` in the working directory.
    pub fn default_sqlite() -> Self {
        StoreUrl {
            url: "sqlite://mxguard.db".to_string(),
            kind: StoreKind::Sqlite,
        }
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The full URL, password included: only for handing to the driver.
    pub fn expose(&self) -> &str {
        &self.url
    }
}

/// The URL with every password replaced by `***`: the user-info one
/// (`postgres://user:secret@host/db` → `postgres://user:***@host/db`) and any query parameter
/// naming one (`?password=…`, `&sslpassword=…`), whatever its case.
pub fn redact_password(url: &str) -> String {
    let url = redact_userinfo(url);
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.to_ascii_lowercase().ends_with("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_password(&self.url))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// Where a secret lives. The secret itself is read only when needed, never stored in config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret. Errors name the variable or file, never the value.
    pub fn resolve(&self) -> Result<SecretString, String> {
        match self {
            SecretSource::Env(var) => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(SecretString::from)
                .ok_or_else(|| format!("environment variable {var} is not set or empty")),
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|s| SecretString::from(s.trim().to_string()))
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Operate,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "operate" => Some(Scope::Operate),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// How an API token is recognised: by the SHA-256 of the token, or by a token held in env.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSecret {
    Sha256([u8; 32]),
    Env(String),
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSecret::Sha256(_) => f.write_str("Sha256(<redacted>)"),
            TokenSecret::Env(var) => write!(f, "Env({var})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub name: String,
    pub secret: TokenSecret,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha512,
}

#[derive(Debug, Clone)]
pub enum ProviderConfig {
    Cloudflare {
        api_token: SecretSource,
        /// Override of the API base URL (tests, proxies).
        api_url: Option<String>,
        min_ttl: u32,
        /// The account owning the API token, for an account-owned token (32 hex characters):
        /// it verifies at the account's endpoint, not the user's.
        account_id: Option<String>,
    },
    Route53 {
        region: Option<String>,
        endpoint_url: Option<String>,
        /// A named profile of the shared AWS config files (one per AWS account); `None`: the
        /// default credential chain.
        profile: Option<String>,
    },
    Rfc2136 {
        server: SocketAddr,
        tsig_name: Fqdn,
        tsig_algorithm: TsigAlgorithm,
        tsig_secret: SecretSource,
    },
}

/// Which targets get RCPT checks (`postmaster@` accepted; for backups, relay refused). With
/// `All` (the default) a primary must accept its domain's postmaster to count as Up, so
/// mxguard never fails back to a primary that bounces the domain's mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptChecks {
    Off,
    Backup,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    Require,
    Opportunistic,
    Off,
}

/// Probe settings; global defaults, overridable per domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Checks {
    pub interval: Duration,
    pub timeout: Duration,
    pub fail_after: u32,
    pub recover_after: u32,
    /// How long a side may fail softly (4xx: senders queue) before it is Down.
    pub soft_fail_after: Duration,
    pub confirm_interval: Duration,
    pub resolvers: Vec<SocketAddr>,
    pub resolver_quorum: u32,
    pub smtp_port: u16,
    pub starttls: StartTls,
    pub ca_file: Option<PathBuf>,
    pub cert_min_days: u32,
    pub ehlo_name: Fqdn,
    pub rcpt_checks: RcptChecks,
    /// How often the published records are read back at the provider (drift, and what the
    /// machine believes is published); longer when the provider's request budget needs it.
    pub reconcile_interval: Duration,
    /// At most this many addresses per resolver answer and per target are probed.
    pub max_addresses: u32,
    /// Queries per second to each resolver, at most, for the whole process (global
    /// `[checks]` only): resolvers are usually public and rate-limit their clients.
    pub max_qps: u32,
    /// How long a host's good A/AAAA answer is reused (or its TTL, when shorter); at least
    /// `interval`.
    pub dns_interval: Duration,
}

impl Default for Checks {
    fn default() -> Self {
        let resolver = |ip: [u8; 4]| SocketAddr::from((ip, 53));
        Checks {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            fail_after: 3,
            recover_after: 6,
            soft_fail_after: Duration::from_secs(600),
            confirm_interval: Duration::from_millis(500),
            resolvers: vec![
                resolver([8, 8, 8, 8]),
                resolver([1, 1, 1, 1]),
                resolver([9, 9, 9, 9]),
            ],
            resolver_quorum: 2,
            smtp_port: 25,
            starttls: StartTls::Require,
            ca_file: None,
            cert_min_days: 7,
            ehlo_name: Fqdn::parse("mxguard.invalid").expect("static name is valid"),
            rcpt_checks: RcptChecks::All,
            reconcile_interval: Duration::from_secs(60),
            max_addresses: 8,
            max_qps: 20,
            dns_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The apex MX RRset moves between the primary and backup sets.
    Mx,
    /// MX names stay; the A/AAAA RRsets of `host` move between addresses.
    A,
}

/// What moves on failover, per mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    Mx {
        primary: Vec<MxRecord>,
        backup: Vec<MxRecord>,
    },
    A {
        host: Fqdn,
        primary: Vec<IpAddr>,
        backup: Vec<IpAddr>,
    },
}

impl Targets {
    pub fn mode(&self) -> Mode {
        match self {
            Targets::Mx { .. } => Mode::Mx,
            Targets::A { .. } => Mode::A,
        }
    }

    pub fn sides_identical(&self) -> bool {
        match self {
            Targets::Mx { primary, backup } => primary == backup,
            Targets::A {
                primary, backup, ..
            } => primary == backup,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failback {
    /// `None`: max(10 min, 2 × the TTL live before failover).
    pub hold: Option<Duration>,
    /// Failback waits for an operator.
    pub approval: bool,
}

/// What to do when a managed RRset was changed outside mxguard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    Report,
    Correct,
}

#[derive(Debug, Clone)]
pub struct DomainConfig {
    pub name: Fqdn,
    /// The provider holding the zone (`provider`, or the first of `providers`).
    pub provider: String,
    /// The other providers serving the same zone (`providers = [...]` after the first): every
    /// change is written to each too (`src/actor/mirrors.rs`).
    pub mirrors: Vec<String>,
    pub zone: Fqdn,
    pub targets: Targets,
    pub failover_ttl: Ttl,
    pub failback: Failback,
    pub drift: Drift,
    /// What a backup outside the domain's enforce-mode MTA-STS policy does to a failover.
    pub mta_sts: crate::machine::MtaStsAction,
    /// `early_ttl`: lower the primary's TTL to `failover_ttl` at early signs of trouble, and
    /// restore it when the primary is quiet (`src/machine.rs`); default on.
    pub early_ttl: bool,
    pub checks: Checks,
    /// Servers that must serve a change before it counts as verified; empty: the provider's
    /// own primary (RFC 2136) or a read-back through the provider.
    pub authoritative: Vec<SocketAddr>,
    /// `authoritative_at`: per provider of a domain with several, the servers that must serve
    /// a change to it (a provider without an entry: its own primary or a read-back).
    pub authoritative_at: std::collections::BTreeMap<String, Vec<SocketAddr>>,
    /// Route 53: the hosted zone's id (a public and a private zone may share a name); `None`:
    /// found by name.
    pub hosted_zone_id: Option<String>,
    /// Drills (`src/drill.rs`): how often `serve` runs one, whether a live one is allowed, the
    /// DKIM selectors it checks.
    pub drill: DrillSettings,
}

impl DomainConfig {
    /// Every provider serving the domain's zone: `provider` first, then the mirrors.
    pub fn providers(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.provider).chain(&self.mirrors)
    }

    /// The servers a change at `provider` is verified at (`authoritative_at`, else, for the
    /// first provider, `authoritative`); empty: its own primary or a read-back.
    pub fn authoritative_for(&self, provider: &str) -> Vec<SocketAddr> {
        match self.authoritative_at.get(provider) {
            Some(at) => at.clone(),
            None if provider == self.provider => self.authoritative.clone(),
            None => Vec::new(),
        }
    }

    /// Whether `name` is one of the providers serving the domain's zone.
    pub fn uses(&self, name: &str) -> bool {
        self.providers().any(|p| p == name)
    }
}

/// A domain's drill settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrillSettings {
    /// `drill_every`: `serve` drills the domain this often (never live); `None`: only on demand.
    pub every: Option<Duration>,
    /// `drillable`: a live drill (a real failover and failback) may be asked for.
    pub drillable: bool,
    /// `dkim_selectors`: the DKIM keys a drill looks up (`SELECTOR._domainkey.DOMAIN`).
    pub dkim_selectors: Vec<String>,
}
