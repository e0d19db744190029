//! Configuration: a TOML file (shape in `example.toml`), then environment overrides for the
//! server and store keys. Parsing happens in one pass that reports every problem at once,
//! each with the file and the field path; what comes out is trusted by the rest of mxguard.

mod cluster;
mod notify;
mod reader;
mod store;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::machine::MtaStsAction;
use mxguard_core::{Fqdn, MxRecord, Ttl};
use toml::Table;

pub use cluster::{ClusterConfig, DEFAULT_LEASE_TTL};
pub use notify::{Delivery, NotifyConfig, NotifyTarget, Severity, TargetKind};
pub use reader::FieldError;
use reader::{Errors, Section};
pub use types::*;

/// The commented example printed by `mxguard config example`.
pub const EXAMPLE: &str = include_str!("example.toml");

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: String, message: String },
    #[error("{}", render_invalid(file, errors))]
    Invalid {
        file: String,
        errors: Vec<FieldError>,
    },
}

fn render_invalid(file: &str, errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{file}: {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// From this many domains on one primary MX host, `config check` points out the other shape.
pub const SHARED_PRIMARY_ADVICE: usize = 20;

impl Config {
    /// Not errors, but what an operator may want to know about the configuration's shape:
    /// many mode-`mx` domains failing over from the same primary host mean one provider write
    /// per domain when that host fails, where one mode-`a` domain for the host itself would
    /// move them all with one write.
    pub fn advice(&self) -> Vec<String> {
        let mut by_host: BTreeMap<&Fqdn, Vec<&Fqdn>> = BTreeMap::new();
        for d in &self.domains {
            if let Targets::Mx { primary, .. } = &d.targets {
                for mx in primary {
                    by_host.entry(&mx.exchange).or_default().push(&d.name);
                }
            }
        }
        by_host
            .into_iter()
            .filter(|(_, domains)| domains.len() >= SHARED_PRIMARY_ADVICE)
            .map(|(host, domains)| {
                format!(
                    "{n} domains (e.g. {first}) fail over from primary MX host {host}: when it fails, \
                     that is {n} provider writes, one per domain. If {host} is yours, one domain \
                     with mode = \"a\" and host = \"{host}\" moves its address for all of them \
                     with one write (docs/CONFIGURATION.md: Shared MX hosts).",
                    n = domains.len(),
                    first = domains[0],
                )
            })
            .collect()
    }

    /// Embedded defaults: SQLite in the working directory, API on 127.0.0.1:8053, no domains.
    pub fn embedded() -> Config {
        Config {
            file: None,
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8053)),
                // Zero-config mode has no tokens to present: readiness is open there. A config
                // file keeps it closed unless it says `open_readyz = true`.
                open_readyz: true,
                open_metrics: false,
                header_read_timeout: Duration::from_secs(10),
                max_connections: 4096,
                request_timeout: Duration::from_secs(120),
                expensive_per_token: 4,
            },
            store: StoreConfig::on(StoreUrl::default_sqlite()),
            tokens: Vec::new(),
            providers: BTreeMap::new(),
            budgets: BTreeMap::new(),
            checks: Checks::default(),
            domains: Vec::new(),
            cluster: ClusterConfig::default(),
            notify: NotifyConfig::none(SocketAddr::from(([127, 0, 0, 1], 8053))),
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut cfg = Config::parse(&file, &text)?;
        cfg.file = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Validates TOML `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let table: Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let mut errs = Errors::default();
        let cfg = from_table(table, &mut errs);
        if errs.0.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                file: file.to_string(),
                errors: errs.0,
            })
        }
    }

    /// Applies `MXGUARD_STORE_URL` and `MXGUARD_LISTEN` from `env`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let mut errs = Errors::default();
        if let Some(url) = env("MXGUARD_STORE_URL") {
            match StoreUrl::parse(&url) {
                Ok(u) => self.store.url = u,
                Err(why) => errs.push("MXGUARD_STORE_URL", why),
            }
        }
        if let Some(listen) = env("MXGUARD_LISTEN") {
            match listen.parse::<SocketAddr>() {
                Ok(a) => self.server.listen = a,
                Err(_) => errs.push(
                    "MXGUARD_LISTEN",
                    format!("expected IP:PORT such as 127.0.0.1:8053, got {listen:?}"),
                ),
            }
        }
        if errs.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                file: "environment".to_string(),
                errors: errs.0,
            })
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

fn from_table(table: Table, errs: &mut Errors) -> Config {
    let mut root = Section::new("", table);
    let defaults = Config::embedded();

    let mut server = root.child("server", errs);
    let listen = match server.string("listen", errs) {
        None => defaults.server.listen,
        Some(s) => s.parse().unwrap_or_else(|_| {
            errs.push(
                server.field("listen"),
                format!("expected IP:PORT such as 127.0.0.1:8053, got {s:?}"),
            );
            defaults.server.listen
        }),
    };
    let open_readyz = server.bool("open_readyz", false, errs);
    let open_metrics = server.bool("open_metrics", defaults.server.open_metrics, errs);
    let header_read_timeout = server.duration(
        "header_read_timeout",
        Duration::from_millis(100),
        Duration::from_secs(300),
        defaults.server.header_read_timeout,
        errs,
    );
    let max_connections = server.int(
        "max_connections",
        "connections",
        1..=65_536,
        defaults.server.max_connections.into(),
        errs,
    ) as u32;
    let request_timeout = server.duration(
        "request_timeout",
        Duration::from_secs(1),
        Duration::from_secs(3600),
        defaults.server.request_timeout,
        errs,
    );
    let expensive_per_token = server.int(
        "expensive_per_token",
        "requests",
        1..=1024,
        defaults.server.expensive_per_token.into(),
        errs,
    ) as u32;
    server.finish(
        errs,
        &[
            "listen",
            "open_readyz",
            "open_metrics",
            "header_read_timeout",
            "max_connections",
            "request_timeout",
            "expensive_per_token",
        ],
    );

    let store = store::parse_store(root.child("store", errs), errs);

    let tokens = root
        .tables("tokens", errs)
        .into_iter()
        .filter_map(|sec| parse_token(sec, errs))
        .collect::<Vec<_>>();
    let mut seen = BTreeSet::new();
    for (i, t) in tokens.iter().enumerate() {
        if !seen.insert(t.name.clone()) {
            errs.push(
                format!("tokens[{i}].name"),
                format!("duplicate token name {:?}", t.name),
            );
        }
    }

    let mut budgets: BTreeMap<String, String> = BTreeMap::new();
    let providers: BTreeMap<String, ProviderConfig> = root
        .named_tables("providers", errs)
        .into_iter()
        .filter_map(|(name, mut sec)| {
            let budget = parse_budget(&mut sec, errs);
            let p = parse_provider(sec, errs)?;
            budgets.insert(name.clone(), budget.unwrap_or_else(|| name.clone()));
            Some((name, p))
        })
        .collect();
    check_budgets(&providers, &budgets, errs);

    let cluster = cluster::parse_cluster(root.child("cluster", errs), errs);

    let checks_sec = root.child("checks", errs);
    let checks = parse_checks(checks_sec, &Checks::default(), errs);

    let domains: Vec<std::sync::Arc<DomainConfig>> = root
        .tables("domains", errs)
        .into_iter()
        .filter_map(|sec| parse_domain(sec, &checks, &providers, errs))
        .map(std::sync::Arc::new)
        .collect();
    let mut seen = BTreeSet::new();
    for (i, d) in domains.iter().enumerate() {
        if !seen.insert(d.name.clone()) {
            errs.push(
                format!("domains[{i}].name"),
                format!("duplicate domain {}", d.name),
            );
        }
    }
    // One Route 53 client finds a zone by its name: two hosted zones of one name (public and
    // private) need a client each.
    let mut zone_ids: BTreeMap<(&str, &Fqdn), (usize, &str)> = BTreeMap::new();
    for (i, d) in domains.iter().enumerate() {
        let Some(id) = d.hosted_zone_id.as_deref() else {
            continue;
        };
        let route53 = d
            .providers()
            .filter(|p| matches!(providers.get(*p), Some(ProviderConfig::Route53 { .. })));
        for p in route53 {
            match zone_ids.get(&(p.as_str(), &d.zone)) {
                Some((j, other)) if *other != id => errs.push(
                    format!("domains[{i}].hosted_zone_id"),
                    format!(
                        "zone {} of provider {p:?} is already hosted zone {other} (domains[{j}]); a public and a private zone with one name need a [providers.NAME] entry each",
                        d.zone
                    ),
                ),
                Some(_) => {}
                None => {
                    zone_ids.insert((p.as_str(), &d.zone), (i, id));
                }
            }
        }
    }

    let notify = notify::parse_notify(root.child("notify", errs), listen, &domains, errs);

    root.finish(
        errs,
        &[
            "server",
            "store",
            "tokens",
            "providers",
            "checks",
            "domains",
            "cluster",
            "notify",
        ],
    );
    Config {
        file: None,
        server: ServerConfig {
            listen,
            open_readyz,
            open_metrics,
            header_read_timeout,
            max_connections,
            request_timeout,
            expensive_per_token,
        },
        store,
        tokens,
        providers,
        budgets,
        checks,
        domains,
        cluster,
        notify,
    }
}

fn parse_token(mut sec: Section, errs: &mut Errors) -> Option<TokenConfig> {
    let name = sec.required_string("name", errs);
    let sha = sec.string("sha256", errs);
    let env = sec.string("env", errs);
    let secret = match (sha, env) {
        (Some(h), None) => match parse_sha256(&h) {
            Some(d) => Some(TokenSecret::Sha256(d)),
            None => {
                errs.push(
                    sec.field("sha256"),
                    "expected 64 hexadecimal characters (the SHA-256 of the token)",
                );
                None
            }
        },
        (None, Some(var)) => Some(TokenSecret::Env(var)),
        (Some(_), Some(_)) => {
            errs.push(sec.path(), "give either sha256 or env, not both");
            None
        }
        (None, None) => {
            errs.push(
                sec.path(),
                "missing sha256 or env: how is this token's secret given?",
            );
            None
        }
    };
    let scopes = sec.strings("scopes", errs).unwrap_or_default();
    let scopes: Vec<Scope> = scopes
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            Scope::parse(s).or_else(|| {
                errs.push(
                    format!("{}[{i}]", sec.field("scopes")),
                    format!("expected read, operate or admin, got {s:?}"),
                );
                None
            })
        })
        .collect();
    if scopes.is_empty() && !errs.0.iter().any(|e| e.path.starts_with(sec.path())) {
        errs.push(
            sec.field("scopes"),
            "expected at least one of read, operate, admin",
        );
    }
    sec.finish(errs, &["name", "sha256", "env", "scopes"]);
    Some(TokenConfig {
        name: name?,
        secret: secret?,
        scopes,
    })
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// `NAME_env` or `NAME_file`: exactly one.
fn secret_source(sec: &mut Section, key: &str, errs: &mut Errors) -> Option<SecretSource> {
    let env_key = format!("{key}_env");
    let file_key = format!("{key}_file");
    let env = sec.string(&env_key, errs);
    let file = sec.string(&file_key, errs);
    match (env, file) {
        (Some(v), None) if !v.is_empty() => Some(SecretSource::Env(v)),
        (None, Some(f)) if !f.is_empty() => Some(SecretSource::File(PathBuf::from(f))),
        (Some(_), Some(_)) => {
            errs.push(
                sec.path(),
                format!("give either {env_key} or {file_key}, not both"),
            );
            None
        }
        _ => {
            errs.push(
                sec.field(&env_key),
                format!(
                    "missing: name the environment variable ({env_key}) or file ({file_key}) holding the secret; secrets are never written in the config file"
                ),
            );
            None
        }
    }
}

/// `budget = "NAME"`: the provider entries that spend the same user's or account's request
/// quota name the same budget (Cloudflare counts every token of a user together).
fn parse_budget(sec: &mut Section, errs: &mut Errors) -> Option<String> {
    let budget = sec.string("budget", errs)?;
    let ok = !budget.is_empty()
        && budget
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        errs.push(
            sec.field("budget"),
            format!("expected a name of letters, digits, '-' or '_', got {budget:?}"),
        );
        return None;
    }
    Some(budget)
}

/// A budget is one provider's account: entries of different kinds cannot share one.
fn check_budgets(
    providers: &BTreeMap<String, ProviderConfig>,
    budgets: &BTreeMap<String, String>,
    errs: &mut Errors,
) {
    let kind = |p: &ProviderConfig| match p {
        ProviderConfig::Cloudflare { .. } => "cloudflare",
        ProviderConfig::Route53 { .. } => "route53",
        ProviderConfig::Rfc2136 { .. } => "rfc2136",
    };
    let mut first: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for (name, budget) in budgets {
        let Some(p) = providers.get(name) else {
            continue;
        };
        match first.get(budget.as_str()) {
            Some((other, other_kind)) if *other_kind != kind(p) => errs.push(
                format!("providers.{name}.budget"),
                format!(
                    "budget {budget:?} is already spent by providers.{other} ({other_kind}); a {} entry cannot share it",
                    kind(p)
                ),
            ),
            Some(_) => {}
            None => {
                first.insert(budget, (name, kind(p)));
            }
        }
    }
}

fn parse_provider(mut sec: Section, errs: &mut Errors) -> Option<ProviderConfig> {
    let kind = sec.required_string("kind", errs)?;
    let cfg = match kind.as_str() {
        "cloudflare" => {
            let api_token = secret_source(&mut sec, "api_token", errs);
            let api_url = sec.string("api_url", errs);
            let min_ttl = sec.int("min_ttl", "seconds", 1..=86400, 60, errs) as u32;
            let account_id = sec.string("account_id", errs).and_then(|id| {
                mxguard_cloudflare::parse_account_id(&id)
                    .map_err(|e| {
                        errs.push(
                            sec.field("account_id"),
                            format!("{e} (set it for an account-owned API token only)"),
                        )
                    })
                    .ok()
            });
            sec.finish(
                errs,
                &[
                    "kind",
                    "budget",
                    "api_token_env",
                    "api_token_file",
                    "api_url",
                    "min_ttl",
                    "account_id",
                ],
            );
            ProviderConfig::Cloudflare {
                api_token: api_token?,
                api_url,
                min_ttl,
                account_id,
            }
        }
        "route53" => {
            let region = sec.string("region", errs);
            let endpoint_url = sec.string("endpoint_url", errs);
            let profile = sec.string("profile", errs);
            if profile.as_deref().is_some_and(|p| p.trim().is_empty()) {
                errs.push(sec.field("profile"), "empty; name a profile of the shared AWS config files, or leave it out for the default credential chain");
            }
            sec.finish(
                errs,
                &["kind", "budget", "region", "endpoint_url", "profile"],
            );
            ProviderConfig::Route53 {
                region,
                endpoint_url,
                profile,
            }
        }
        "rfc2136" => {
            let server = sec.required_string("server", errs).and_then(|s| {
                parse_server_addr(&s).or_else(|| {
                    errs.push(
                        sec.field("server"),
                        format!("expected IP or IP:PORT of the primary DNS server, got {s:?}"),
                    );
                    None
                })
            });
            let tsig_name = sec.required_string("tsig_name", errs).and_then(|s| {
                Fqdn::parse(&s)
                    .map_err(|e| errs.push(sec.field("tsig_name"), e.to_string()))
                    .ok()
            });
            let algorithm = match sec.string("tsig_algorithm", errs).as_deref() {
                None | Some("hmac-sha256") => Some(TsigAlgorithm::HmacSha256),
                Some("hmac-sha512") => Some(TsigAlgorithm::HmacSha512),
                Some(other) => {
                    errs.push(
                        sec.field("tsig_algorithm"),
                        format!("expected hmac-sha256 or hmac-sha512, got {other:?}"),
                    );
                    None
                }
            };
            let tsig_secret = secret_source(&mut sec, "tsig_secret", errs);
            sec.finish(
                errs,
                &[
                    "kind",
                    "budget",
                    "server",
                    "tsig_name",
                    "tsig_algorithm",
                    "tsig_secret_env",
                    "tsig_secret_file",
                ],
            );
            ProviderConfig::Rfc2136 {
                server: server?,
                tsig_name: tsig_name?,
                tsig_algorithm: algorithm?,
                tsig_secret: tsig_secret?,
            }
        }
        other => {
            errs.push(
                sec.field("kind"),
                format!("expected cloudflare, route53 or rfc2136, got {other:?}"),
            );
            return None;
        }
    };
    Some(cfg)
}

/// `192.0.2.53`, `192.0.2.53:5353`, `::1` or `[::1]:5353`; port 53 when none is given.
pub fn parse_server_addr(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

fn parse_checks(mut sec: Section, d: &Checks, errs: &mut Errors) -> Checks {
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    // A domain's [checks] inherits the global values; it only re-reports cross-field problems
    // for the fields it sets itself.
    let is_global = sec.path() == "checks";
    let timing_set = is_global || sec.has("interval") || sec.has("timeout");
    let quorum_set = is_global || sec.has("resolvers") || sec.has("resolver_quorum");
    let interval = sec.duration("interval", s(1), s(3600), d.interval, errs);
    let timeout = sec.duration("timeout", ms(100), s(120), d.timeout, errs);
    let fail_after = sec.int("fail_after", "rounds", 1..=100, d.fail_after.into(), errs) as u32;
    let recover_after = sec.int(
        "recover_after",
        "rounds",
        1..=1000,
        d.recover_after.into(),
        errs,
    ) as u32;
    let soft_fail_after = sec.duration(
        "soft_fail_after",
        s(1),
        s(7 * 24 * 3600),
        d.soft_fail_after,
        errs,
    );
    let confirm_interval =
        sec.duration("confirm_interval", ms(50), s(600), d.confirm_interval, errs);
    let resolvers = match sec.strings("resolvers", errs) {
        None => d.resolvers.clone(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, r) in list.iter().enumerate() {
                match parse_server_addr(r) {
                    Some(a) => out.push(a),
                    None => errs.push(
                        format!("{}[{i}]", sec.field("resolvers")),
                        format!("expected \"ip\" or \"ip:port\", got {r:?}"),
                    ),
                }
            }
            if list.is_empty() {
                errs.push(sec.field("resolvers"), "expected at least one resolver");
            }
            out
        }
    };
    let quorum_given = sec.has("resolver_quorum");
    let resolver_quorum = sec.int(
        "resolver_quorum",
        "resolvers",
        1..=64,
        d.resolver_quorum.into(),
        errs,
    ) as u32;
    let smtp_port = sec.int("smtp_port", "a port", 1..=65535, d.smtp_port.into(), errs) as u16;
    let starttls = match sec.string("starttls", errs).as_deref() {
        None => d.starttls,
        Some("require") => StartTls::Require,
        Some("opportunistic") => StartTls::Opportunistic,
        Some("off") => StartTls::Off,
        Some(other) => {
            errs.push(
                sec.field("starttls"),
                format!("expected require, opportunistic or off, got {other:?}"),
            );
            d.starttls
        }
    };
    let ca_file = match sec.string("ca_file", errs) {
        None => d.ca_file.clone(),
        Some(f) if f.is_empty() => None,
        Some(f) => Some(PathBuf::from(f)),
    };
    let cert_min_days = sec.int(
        "cert_min_days",
        "days",
        0..=365,
        d.cert_min_days.into(),
        errs,
    ) as u32;
    let ehlo_name = match sec.string("ehlo_name", errs) {
        None => d.ehlo_name.clone(),
        Some(n) => Fqdn::parse(&n).unwrap_or_else(|e| {
            errs.push(sec.field("ehlo_name"), e.to_string());
            d.ehlo_name.clone()
        }),
    };
    let rcpt_checks = match sec.string("rcpt_checks", errs).as_deref() {
        None => d.rcpt_checks,
        Some("off") => RcptChecks::Off,
        Some("backup") => RcptChecks::Backup,
        Some("all") => RcptChecks::All,
        Some(other) => {
            errs.push(
                sec.field("rcpt_checks"),
                format!("expected off, backup or all, got {other:?}"),
            );
            d.rcpt_checks
        }
    };
    let reconcile_interval = sec.duration(
        "reconcile_interval",
        s(1),
        s(24 * 3600),
        d.reconcile_interval,
        errs,
    );
    let max_addresses = sec.int(
        "max_addresses",
        "addresses",
        1..=64,
        d.max_addresses.into(),
        errs,
    ) as u32;
    let max_qps_given = sec.has("max_qps");
    let max_qps = sec.int(
        "max_qps",
        "queries per second",
        1..=1_000_000,
        d.max_qps.into(),
        errs,
    ) as u32;
    if max_qps_given && !is_global {
        errs.push(
            sec.field("max_qps"),
            "is a budget per resolver for the whole process: set it in the global [checks]",
        );
    }
    let dns_interval_given = sec.has("dns_interval");
    let dns_interval = sec.duration("dns_interval", s(1), s(24 * 3600), d.dns_interval, errs);
    // Unset, it is at least the interval: a longer interval than the default 60 s needs no
    // dns_interval of its own.
    let dns_interval = if dns_interval_given {
        dns_interval
    } else {
        dns_interval.max(interval)
    };
    if dns_interval_given && dns_interval < interval {
        errs.push(
            sec.field("dns_interval"),
            format!(
                "must be at least interval ({}): a round asks each resolver at most once",
                humantime::format_duration(interval)
            ),
        );
    }
    if timing_set && timeout >= interval {
        errs.push(
            sec.field("timeout"),
            format!(
                "must be shorter than interval ({}), or probe rounds would overlap",
                humantime::format_duration(interval)
            ),
        );
    }
    if quorum_set && resolver_quorum as usize > resolvers.len() && !resolvers.is_empty() {
        let field = if quorum_given {
            "resolver_quorum"
        } else {
            "resolvers"
        };
        errs.push(
            sec.field(field),
            format!(
                "resolver_quorum is {resolver_quorum} but only {} resolver(s) are configured",
                resolvers.len()
            ),
        );
    }
    sec.finish(errs, &CHECK_KEYS);
    Checks {
        interval,
        timeout,
        fail_after,
        recover_after,
        soft_fail_after,
        confirm_interval,
        resolvers,
        resolver_quorum,
        smtp_port,
        starttls,
        ca_file,
        cert_min_days,
        ehlo_name,
        rcpt_checks,
        reconcile_interval,
        max_addresses,
        max_qps,
        dns_interval,
    }
}

const CHECK_KEYS: [&str; 18] = [
    "interval",
    "timeout",
    "fail_after",
    "recover_after",
    "soft_fail_after",
    "confirm_interval",
    "resolvers",
    "resolver_quorum",
    "smtp_port",
    "starttls",
    "ca_file",
    "cert_min_days",
    "ehlo_name",
    "rcpt_checks",
    "reconcile_interval",
    "max_addresses",
    "max_qps",
    "dns_interval",
];

fn parse_domain(
    mut sec: Section,
    global: &Checks,
    providers: &BTreeMap<String, ProviderConfig>,
    errs: &mut Errors,
) -> Option<DomainConfig> {
    let name = sec.required_string("name", errs).and_then(|s| {
        Fqdn::parse(&s)
            .map_err(|e| errs.push(sec.field("name"), e.to_string()))
            .ok()
    });
    let named = domain_providers(&mut sec, providers, errs);
    let provider = named.as_ref().map(|n| n[0].clone());
    let zone = match sec.string("zone", errs) {
        None => name.clone(),
        Some(z) => Fqdn::parse(&z)
            .map_err(|e| errs.push(sec.field("zone"), e.to_string()))
            .ok(),
    };
    if let (Some(n), Some(z)) = (&name, &zone) {
        if !n.is_within(z) {
            errs.push(sec.field("zone"), format!("{n} is not inside zone {z}"));
        }
    }
    let mode = sec.string("mode", errs).unwrap_or_else(|| "mx".to_string());
    let primary = sec.strings("primary", errs);
    let backup = sec.strings("backup", errs);
    let host = sec.string("host", errs);
    let targets = match mode.as_str() {
        "mx" => {
            if host.is_some() {
                errs.push(sec.field("host"), "only used with mode = \"a\"");
            }
            let p = mx_list(&sec, "primary", primary, errs);
            let b = mx_list(&sec, "backup", backup, errs);
            match (p, b) {
                (Some(p), Some(b)) => Some(Targets::Mx {
                    primary: p,
                    backup: b,
                }),
                _ => None,
            }
        }
        "a" => {
            let host = match host {
                None => {
                    errs.push(
                        sec.field("host"),
                        "missing; mode = \"a\" needs the MX host whose A/AAAA records move",
                    );
                    None
                }
                Some(h) => Fqdn::parse(&h)
                    .map_err(|e| errs.push(sec.field("host"), e.to_string()))
                    .ok(),
            };
            if let (Some(h), Some(z)) = (&host, &zone) {
                if !h.is_within(z) {
                    errs.push(sec.field("host"), format!("{h} is not inside zone {z}"));
                }
            }
            let p = ip_list(&sec, "primary", primary, errs);
            let b = ip_list(&sec, "backup", backup, errs);
            match (host, p, b) {
                (Some(host), Some(primary), Some(backup)) => Some(Targets::A {
                    host,
                    primary,
                    backup,
                }),
                _ => None,
            }
        }
        other => {
            errs.push(
                sec.field("mode"),
                format!("expected mx or a, got {other:?}"),
            );
            None
        }
    };
    if let Some(t) = &targets {
        if t.sides_identical() {
            errs.push(
                sec.field("backup"),
                "is identical to primary: failing over would change nothing",
            );
        }
    }
    let failover_ttl = sec.int("failover_ttl", "seconds", 1..=86400, 60, errs) as u32;
    let failover_ttl = Ttl::new(failover_ttl).ok()?;
    let mut fb = sec.child("failback", errs);
    let hold = if fb.has("hold") {
        Some(fb.duration(
            "hold",
            Duration::from_secs(0),
            7 * DAY,
            Duration::ZERO,
            errs,
        ))
    } else {
        None
    };
    let approval = fb.bool("approval", false, errs);
    fb.finish(errs, &["hold", "approval"]);
    let drift = match sec.string("drift", errs).as_deref() {
        None | Some("report") => Drift::Report,
        Some("correct") => Drift::Correct,
        Some(other) => {
            errs.push(
                sec.field("drift"),
                format!("expected report or correct, got {other:?}"),
            );
            Drift::Report
        }
    };
    let mta_sts = match sec.string("mta_sts", errs).as_deref() {
        None | Some("warn") => MtaStsAction::Warn,
        Some("block") => MtaStsAction::Block,
        Some("off") => MtaStsAction::Off,
        Some(other) => {
            errs.push(
                sec.field("mta_sts"),
                format!("expected warn, block or off, got {other:?}"),
            );
            MtaStsAction::Warn
        }
    };
    // On by default: a lowering costs two writes per episode of early signs, and without it a
    // failover waits for the old TTL at every cache (an hour with 3,600 s).
    let early_ttl = sec.bool("early_ttl", true, errs);
    let checks_sec = sec.child("checks", errs);
    let checks = parse_checks(checks_sec, global, errs);
    let mut authoritative = Vec::new();
    for (i, a) in sec
        .strings("authoritative", errs)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match parse_server_addr(a) {
            Some(addr) => authoritative.push(addr),
            None => errs.push(
                format!("{}[{i}]", sec.field("authoritative")),
                format!("expected \"ip\" or \"ip:port\", got {a:?}"),
            ),
        }
    }
    let several = named.as_ref().is_some_and(|n| n.len() > 1);
    if several && !authoritative.is_empty() {
        errs.push(
            sec.field("authoritative"),
            "a domain served by several providers names each provider's servers in authoritative_at = { NAME = [\"ip:port\"] }",
        );
    }
    let authoritative_at = parse_authoritative_at(&mut sec, named.as_deref(), errs);
    let hosted_zone_id = sec.string("hosted_zone_id", errs).and_then(|id| {
        let configured: Vec<&ProviderConfig> = named
            .iter()
            .flatten()
            .filter_map(|p| providers.get(p))
            .collect();
        if !configured.is_empty()
            && !configured
                .iter()
                .any(|p| matches!(p, ProviderConfig::Route53 { .. }))
        {
            errs.push(
                sec.field("hosted_zone_id"),
                "only used with a provider of kind = \"route53\"",
            );
            return None;
        }
        parse_hosted_zone_id(&id)
            .map_err(|why| errs.push(sec.field("hosted_zone_id"), why))
            .ok()
    });
    let drill = parse_drill(&mut sec, errs);
    sec.finish(
        errs,
        &[
            "name",
            "provider",
            "providers",
            "zone",
            "hosted_zone_id",
            "mode",
            "host",
            "primary",
            "backup",
            "failover_ttl",
            "failback",
            "drift",
            "mta_sts",
            "early_ttl",
            "checks",
            "authoritative",
            "authoritative_at",
            "drill_every",
            "drillable",
            "dkim_selectors",
        ],
    );
    Some(DomainConfig {
        name: name?,
        provider: provider?,
        mirrors: named?.split_off(1),
        zone: zone?,
        targets: targets?,
        failover_ttl,
        failback: Failback { hold, approval },
        drift,
        mta_sts,
        early_ttl,
        checks,
        authoritative,
        authoritative_at,
        hosted_zone_id,
        drill,
    })
}

/// `provider = "NAME"`, or `providers = ["A", "B"]` for a zone served by several providers at
/// once (all of them in the zone's NS set): the names, the first one's first.
fn domain_providers(
    sec: &mut Section,
    providers: &BTreeMap<String, ProviderConfig>,
    errs: &mut Errors,
) -> Option<Vec<String>> {
    let (field, names) = match (sec.has("provider"), sec.has("providers")) {
        (true, true) => {
            errs.push(
                sec.field("providers"),
                "set provider (one) or providers (several), not both",
            );
            sec.take("provider");
            sec.take("providers");
            return None;
        }
        (false, false) => {
            errs.push(
                sec.field("provider"),
                "missing; this field is required (or providers = [\"A\", \"B\"] for a zone served by several providers)",
            );
            return None;
        }
        (true, false) => ("provider", vec![sec.string("provider", errs)?]),
        (false, true) => {
            let names = sec.strings("providers", errs)?;
            if names.len() < 2 {
                errs.push(
                    sec.field("providers"),
                    "lists at least two providers; a domain with one says provider = \"NAME\"",
                );
                return None;
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
                errs.push(
                    sec.field("providers"),
                    format!("names {twice:?} twice; each provider serving the zone once"),
                );
                return None;
            }
            ("providers", names)
        }
    };
    let mut known = true;
    for (i, p) in names.iter().enumerate() {
        if providers.contains_key(p) {
            continue;
        }
        known = false;
        let defined: Vec<&str> = providers.keys().map(String::as_str).collect();
        let path = if field == "provider" {
            sec.field(field)
        } else {
            format!("{}[{i}]", sec.field(field))
        };
        errs.push(
            path,
            format!(
                "unknown provider {p:?}; defined providers: {}",
                if defined.is_empty() {
                    "none".to_string()
                } else {
                    defined.join(", ")
                }
            ),
        );
    }
    known.then_some(names)
}

/// `authoritative_at = { NAME = ["ip:port"], … }`: per provider of the domain, the servers
/// that must serve a change to it before it counts as verified there (a provider without an
/// entry: its own primary, or a read-back through its API).
fn parse_authoritative_at(
    sec: &mut Section,
    named: Option<&[String]>,
    errs: &mut Errors,
) -> BTreeMap<String, Vec<SocketAddr>> {
    let mut out = BTreeMap::new();
    if !sec.has("authoritative_at") {
        return out;
    }
    let mut at = sec.child("authoritative_at", errs);
    let Some(named) = named else {
        return out;
    };
    for p in named {
        let Some(list) = at.strings(p, errs) else {
            continue;
        };
        let mut addrs = Vec::new();
        for (i, a) in list.iter().enumerate() {
            match parse_server_addr(a) {
                Some(addr) => addrs.push(addr),
                None => errs.push(
                    format!("{}[{i}]", at.field(p)),
                    format!("expected \"ip\" or \"ip:port\", got {a:?}"),
                ),
            }
        }
        out.insert(p.clone(), addrs);
    }
    let names: Vec<&str> = named.iter().map(String::as_str).collect();
    at.finish(errs, &names);
    out
}

/// `drill_every`, `drillable` and `dkim_selectors` of a domain.
fn parse_drill(sec: &mut Section, errs: &mut Errors) -> DrillSettings {
    let every = sec.has("drill_every").then(|| {
        sec.duration(
            "drill_every",
            Duration::from_secs(1),
            // a year as humantime writes it ("1year")
            Duration::from_secs(31_557_600),
            90 * DAY,
            errs,
        )
    });
    let drillable = sec.bool("drillable", false, errs);
    let mut dkim_selectors = Vec::new();
    for (i, s) in sec
        .strings("dkim_selectors", errs)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        // a selector is one or more DNS labels in front of `_domainkey.`
        let ok = !s.is_empty()
            && !s.starts_with('.')
            && !s.ends_with('.')
            && Fqdn::parse(&format!("{s}._domainkey.invalid")).is_ok();
        if ok {
            dkim_selectors.push(s);
        } else {
            errs.push(
                format!("{}[{i}]", sec.field("dkim_selectors")),
                format!("expected a DKIM selector such as \"s1\" (DNS labels), got {s:?}"),
            );
        }
    }
    DrillSettings {
        every,
        drillable,
        dkim_selectors,
    }
}

/// A Route 53 hosted zone id as the console shows it (`Z0123456789ABCDEFGHIJ`), with or
/// without the API's `/hostedzone/` prefix.
fn parse_hosted_zone_id(raw: &str) -> Result<String, String> {
    let id = raw.trim().trim_start_matches("/hostedzone/");
    if !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        Ok(id.to_string())
    } else {
        Err(format!(
            "expected a Route 53 hosted zone id such as \"Z0123456789ABCDEFGHIJ\" (upper-case letters and digits), got {raw:?}"
        ))
    }
}

fn mx_list(
    sec: &Section,
    key: &str,
    list: Option<Vec<String>>,
    errs: &mut Errors,
) -> Option<Vec<MxRecord>> {
    let path = sec.field(key);
    let Some(list) = list else {
        errs.push(
            path,
            "missing; expected MX records such as [\"10 mx1.example.com.\"]",
        );
        return None;
    };
    if list.is_empty() {
        errs.push(
            path,
            "expected at least one MX record; an empty set is never published",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, r) in list.iter().enumerate() {
        match MxRecord::parse(r) {
            Ok(mx) if mx.is_null() => {
                errs.push(
                    format!("{path}[{i}]"),
                    "a Null MX (\"0 .\") accepts no mail: nothing to fail over to or from",
                );
                ok = false;
            }
            Ok(mx) if out.contains(&mx) => {
                errs.push(format!("{path}[{i}]"), format!("duplicate MX record {mx}"));
                ok = false;
            }
            Ok(mx) => out.push(mx),
            Err(e) => {
                errs.push(format!("{path}[{i}]"), e.to_string());
                ok = false;
            }
        }
    }
    ok.then(|| {
        out.sort();
        out
    })
}

fn ip_list(
    sec: &Section,
    key: &str,
    list: Option<Vec<String>>,
    errs: &mut Errors,
) -> Option<Vec<IpAddr>> {
    let path = sec.field(key);
    let Some(list) = list else {
        errs.push(
            path,
            "missing; expected IP addresses such as [\"192.0.2.10\"]",
        );
        return None;
    };
    if list.is_empty() {
        errs.push(
            path,
            "expected at least one address; an empty set is never published",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, r) in list.iter().enumerate() {
        match r.parse::<IpAddr>() {
            Ok(ip) if out.contains(&ip) => {
                errs.push(format!("{path}[{i}]"), format!("duplicate address {ip}"));
                ok = false;
            }
            Ok(ip) => out.push(ip),
            Err(_) => {
                errs.push(
                    format!("{path}[{i}]"),
                    format!("expected an IPv4 or IPv6 address, got {r:?}"),
                );
                ok = false;
            }
        }
    }
    ok.then(|| {
        out.sort();
        out
    })
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Mx => "mx",
            Mode::A => "a",
        })
    }
}

#[cfg(test)]
mod tests;
