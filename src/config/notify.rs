//! `[notify]`: where notifications go (`[notify.targets.NAME]`), for which domains and from
//! which severity on, and how hard delivery tries. Parsed with the same walker as the rest of the
//! file, so every problem is reported with its path; secrets are only named (`…_env`/`…_file`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use mxguard_core::Fqdn;

use super::reader::{Errors, Section};
use super::{secret_source, DomainConfig, SecretSource};

/// How much an event matters. Ordered: a target with `min_severity = "warning"` gets warning
/// and critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    /// This mxguard's API as receivers reach it (no trailing slash), for the status and
    /// pin/unpin links in messages. Default: `http://` + `[server] listen`.
    pub api_base_url: String,
    pub delivery: Delivery,
    pub targets: BTreeMap<String, NotifyTarget>,
}

impl NotifyConfig {
    /// No targets; links point at `listen`.
    pub fn none(listen: SocketAddr) -> NotifyConfig {
        NotifyConfig {
            api_base_url: format!("http://{listen}"),
            delivery: Delivery::default(),
            targets: BTreeMap::new(),
        }
    }
}

/// How each target's queue and retries behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Notifications waiting per target; more are dropped (counted and logged).
    pub queue: usize,
    /// Attempts per notification, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A notification is given up (→ a `notify_failed` event) after this long.
    pub give_up_after: Duration,
    /// One HTTP request, connect to last byte.
    pub timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            queue: 1024,
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            give_up_after: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NotifyTarget {
    pub kind: TargetKind,
    /// `None`: every domain.
    pub domains: Option<Vec<Fqdn>>,
    pub min_severity: Severity,
}

impl NotifyTarget {
    pub fn routes(&self, domain: &Fqdn) -> bool {
        self.domains.as_ref().is_none_or(|d| d.contains(domain))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetKind {
    /// JSON POST signed with HMAC-SHA256 of `secret`.
    Webhook { url: String, secret: SecretSource },
    /// A Slack incoming webhook; its URL is the credential, so it is a secret.
    Slack { url: SecretSource },
    /// PagerDuty Events API v2 (`{api_url}/v2/enqueue`).
    PagerDuty {
        routing_key: SecretSource,
        api_url: String,
    },
    /// An incident on a Statuspage page, affecting one component.
    Statuspage {
        page_id: String,
        component_id: String,
        api_key: SecretSource,
        api_url: String,
    },
}

impl TargetKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetKind::Webhook { .. } => "webhook",
            TargetKind::Slack { .. } => "slack",
            TargetKind::PagerDuty { .. } => "pagerduty",
            TargetKind::Statuspage { .. } => "statuspage",
        }
    }

    /// Without `min_severity`: webhooks get everything, the others what someone should see.
    fn default_severity(&self) -> Severity {
        match self {
            TargetKind::Webhook { .. } => Severity::Info,
            _ => Severity::Warning,
        }
    }
}

pub const PAGERDUTY_API: &str = "https://events.pagerduty.com";
pub const STATUSPAGE_API: &str = "https://api.statuspage.io";

const NOTIFY_KEYS: [&str; 8] = [
    "api_base_url",
    "queue",
    "max_attempts",
    "initial_backoff",
    "max_backoff",
    "give_up_after",
    "timeout",
    "targets",
];

/// `[notify]`; `listen` gives the default link base, `domains` the names a route may list.
pub(super) fn parse_notify(
    mut sec: Section,
    listen: SocketAddr,
    domains: &[std::sync::Arc<DomainConfig>],
    errs: &mut Errors,
) -> NotifyConfig {
    let none = NotifyConfig::none(listen);
    let api_base_url = match sec.string("api_base_url", errs) {
        None => none.api_base_url,
        Some(u) => http_url(&sec, "api_base_url", &u, errs).unwrap_or(none.api_base_url),
    };
    let d = Delivery::default();
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let queue = sec.int("queue", "notifications", 1..=100_000, d.queue as i64, errs) as usize;
    let max_attempts = sec.int(
        "max_attempts",
        "attempts",
        1..=100,
        d.max_attempts.into(),
        errs,
    ) as u32;
    let initial_backoff = sec.duration("initial_backoff", ms(10), s(600), d.initial_backoff, errs);
    let max_backoff = sec.duration("max_backoff", ms(10), s(3600), d.max_backoff, errs);
    let give_up_after = sec.duration("give_up_after", s(1), s(7 * 86_400), d.give_up_after, errs);
    let timeout = sec.duration("timeout", ms(100), s(300), d.timeout, errs);
    if max_backoff < initial_backoff {
        errs.push(
            sec.field("max_backoff"),
            format!(
                "must not be shorter than initial_backoff ({})",
                humantime::format_duration(initial_backoff)
            ),
        );
    }
    let targets = sec
        .named_tables("targets", errs)
        .into_iter()
        .filter_map(|(name, t)| {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                errs.push(
                    t.path(),
                    "a target name may only hold letters, digits, '-' and '_' (it labels metrics and events)",
                );
            }
            parse_target(t, domains, errs).map(|t| (name, t))
        })
        .collect();
    sec.finish(errs, &NOTIFY_KEYS);
    NotifyConfig {
        api_base_url,
        delivery: Delivery {
            queue,
            max_attempts,
            initial_backoff,
            max_backoff,
            give_up_after,
            timeout,
        },
        targets,
    }
}

fn parse_target(
    mut sec: Section,
    domains: &[std::sync::Arc<DomainConfig>],
    errs: &mut Errors,
) -> Option<NotifyTarget> {
    let kind = sec.required_string("kind", errs)?;
    let route_keys = ["kind", "domains", "min_severity"];
    let (kind, own): (Option<TargetKind>, &[&str]) = match kind.as_str() {
        "webhook" => {
            let url = sec
                .required_string("url", errs)
                .and_then(|u| http_url(&sec, "url", &u, errs));
            let secret = secret_source(&mut sec, "secret", errs);
            let kind = match (url, secret) {
                (Some(url), Some(secret)) => Some(TargetKind::Webhook { url, secret }),
                _ => None,
            };
            (kind, &["url", "secret_env", "secret_file"])
        }
        "slack" => {
            if sec.has("url") {
                errs.push(
                    sec.field("url"),
                    "a Slack webhook URL is a credential: give url_env or url_file instead",
                );
                sec.take("url");
            }
            let url = secret_source(&mut sec, "url", errs);
            (
                url.map(|url| TargetKind::Slack { url }),
                &["url_env", "url_file"],
            )
        }
        "pagerduty" => {
            let routing_key = secret_source(&mut sec, "routing_key", errs);
            let api_url = api_url(&mut sec, PAGERDUTY_API, errs);
            let kind = match (routing_key, api_url) {
                (Some(routing_key), Some(api_url)) => Some(TargetKind::PagerDuty {
                    routing_key,
                    api_url,
                }),
                _ => None,
            };
            (kind, &["routing_key_env", "routing_key_file", "api_url"])
        }
        "statuspage" => {
            let page_id = statuspage_id(&mut sec, "page_id", errs);
            let component_id = statuspage_id(&mut sec, "component_id", errs);
            let api_key = secret_source(&mut sec, "api_key", errs);
            let api_url = api_url(&mut sec, STATUSPAGE_API, errs);
            let kind = match (page_id, component_id, api_key, api_url) {
                (Some(page_id), Some(component_id), Some(api_key), Some(api_url)) => {
                    Some(TargetKind::Statuspage {
                        page_id,
                        component_id,
                        api_key,
                        api_url,
                    })
                }
                _ => None,
            };
            (
                kind,
                &[
                    "page_id",
                    "component_id",
                    "api_key_env",
                    "api_key_file",
                    "api_url",
                ],
            )
        }
        other => {
            errs.push(
                sec.field("kind"),
                format!("expected webhook, slack, pagerduty or statuspage, got {other:?}"),
            );
            return None;
        }
    };
    let routed = parse_domains(&mut sec, domains, errs);
    let min_severity = match sec.string("min_severity", errs) {
        None => None,
        Some(s) => Severity::parse(&s).or_else(|| {
            errs.push(
                sec.field("min_severity"),
                format!("expected info, warning or critical, got {s:?}"),
            );
            None
        }),
    };
    let known: Vec<&str> = route_keys.iter().chain(own).copied().collect();
    sec.finish(errs, &known);
    let kind = kind?;
    Some(NotifyTarget {
        min_severity: min_severity.unwrap_or_else(|| kind.default_severity()),
        kind,
        domains: routed?,
    })
}

/// `domains = [...]`: names of `[[domains]]`; absent means all. `Some(None)` is "all".
fn parse_domains(
    sec: &mut Section,
    domains: &[std::sync::Arc<DomainConfig>],
    errs: &mut Errors,
) -> Option<Option<Vec<Fqdn>>> {
    let Some(list) = sec.strings("domains", errs) else {
        return Some(None);
    };
    let path = sec.field("domains");
    if list.is_empty() {
        errs.push(
            &path,
            "expected at least one domain; leave domains out to route every domain",
        );
        return None;
    }
    let mut out = Vec::new();
    for (i, name) in list.iter().enumerate() {
        match Fqdn::parse(name) {
            Ok(n) if domains.iter().any(|d| d.name == n) => out.push(n),
            Ok(n) => {
                let known: Vec<&str> = domains.iter().map(|d| d.name.without_dot()).collect();
                errs.push(
                    format!("{path}[{i}]"),
                    format!(
                        "unknown domain {}; configured domains: {}",
                        n.without_dot(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            Err(e) => errs.push(format!("{path}[{i}]"), e.to_string()),
        }
    }
    (out.len() == list.len()).then_some(Some(out))
}

fn api_url(sec: &mut Section, default: &str, errs: &mut Errors) -> Option<String> {
    match sec.string("api_url", errs) {
        None => Some(default.to_string()),
        Some(u) => http_url(sec, "api_url", &u, errs),
    }
}

/// An absolute http(s) URL without query or fragment; returned without a trailing slash.
fn http_url(sec: &Section, key: &str, url: &str, errs: &mut Errors) -> Option<String> {
    let ok = reqwest::Url::parse(url).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.query().is_none()
            && u.fragment().is_none()
    });
    if ok.is_none() {
        errs.push(
            sec.field(key),
            format!("expected an http:// or https:// URL without query, got {url:?}"),
        );
        return None;
    }
    Some(url.trim_end_matches('/').to_string())
}

/// Statuspage ids go into URL paths: letters and digits only.
fn statuspage_id(sec: &mut Section, key: &str, errs: &mut Errors) -> Option<String> {
    let id = sec.required_string(key, errs)?;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        errs.push(
            sec.field(key),
            format!("expected the Statuspage id (letters and digits), got {id:?}"),
        );
        return None;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError, EXAMPLE};
    use super::*;

    const DOMAIN: &str = r#"
[providers.ns1]
kind = "rfc2136"
server = "127.0.0.1:5353"
tsig_name = "mxguard"
tsig_secret_env = "TSIG"

[[domains]]
name = "example.com"
provider = "ns1"
primary = ["10 mx1.example.com."]
backup = ["10 mx2.example.net."]
"#;

    fn parse(notify: &str) -> Result<Config, ConfigError> {
        Config::parse("mxguard.toml", &format!("{DOMAIN}\n{notify}"))
    }

    fn errors(notify: &str) -> Vec<String> {
        match parse(notify) {
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(|e| e.to_string()).collect()
            }
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn the_example_routes_four_targets() {
        let cfg = Config::parse("example.toml", EXAMPLE).expect("example parses");
        let n = &cfg.notify;
        assert_eq!(n.api_base_url, "https://mxguard.example.net");
        assert_eq!(n.delivery, Delivery::default());
        let kinds: Vec<(&str, &str, Severity)> = n
            .targets
            .iter()
            .map(|(k, t)| (k.as_str(), t.kind.as_str(), t.min_severity))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("ops-webhook", "webhook", Severity::Info),
                ("pager", "pagerduty", Severity::Critical),
                ("slack", "slack", Severity::Warning),
                ("status", "statuspage", Severity::Warning),
            ]
        );
        let slack = &n.targets["slack"];
        let com = Fqdn::parse("example.com").unwrap();
        let org = Fqdn::parse("example.org").unwrap();
        assert!(slack.routes(&com) && !slack.routes(&org));
        assert!(n.targets["pager"].routes(&org), "no domains: every domain");
        assert_eq!(
            n.targets["pager"].kind,
            TargetKind::PagerDuty {
                routing_key: SecretSource::Env("MXGUARD_PAGERDUTY_ROUTING_KEY".into()),
                api_url: PAGERDUTY_API.into(),
            }
        );
    }

    #[test]
    fn defaults_without_a_notify_section() {
        let cfg = parse("[server]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        assert!(cfg.notify.targets.is_empty());
        assert_eq!(cfg.notify.api_base_url, "http://127.0.0.1:9000");
        let cfg = parse(
            r#"
[notify]
api_base_url = "http://127.0.0.1:8053/"
initial_backoff = "10ms"
max_backoff = "20ms"
give_up_after = "2s"
max_attempts = 3
queue = 2
timeout = "1s"
[notify.targets.st]
kind = "statuspage"
page_id = "p1"
component_id = "c1"
api_key_file = "/run/secrets/sp"
api_url = "http://127.0.0.1:1234"
domains = ["example.com."]
"#,
        )
        .unwrap();
        let n = &cfg.notify;
        assert_eq!(
            n.api_base_url, "http://127.0.0.1:8053",
            "trailing slash dropped"
        );
        assert_eq!(
            n.delivery,
            Delivery {
                queue: 2,
                max_attempts: 3,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                give_up_after: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
            }
        );
        assert_eq!(n.targets["st"].min_severity, Severity::Warning);
        assert_eq!(
            n.targets["st"].kind,
            TargetKind::Statuspage {
                page_id: "p1".into(),
                component_id: "c1".into(),
                api_key: SecretSource::File("/run/secrets/sp".into()),
                api_url: "http://127.0.0.1:1234".into(),
            }
        );
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let errs = errors(
            r#"
[notify]
api_base_url = "ftp://x"
max_attempts = 0
initial_backoff = "5s"
max_backoff = "1s"
colour = "red"
[notify.targets."bad name"]
kind = "webhook"
url = "https://example.net/hook"
secret_env = "S"
[notify.targets.hook]
kind = "webhook"
url = "not a url"
min_severity = "loud"
[notify.targets.chat]
kind = "slack"
url = "https://hooks.slack.com/services/T/B/X"
[notify.targets.pd]
kind = "pagerduty"
routing_key_env = "PD"
routing_key_file = "/pd"
api_url = "https://events.pagerduty.com?x=1"
domains = ["example.org", "not a name!"]
[notify.targets.sp]
kind = "statuspage"
page_id = "../admin"
api_key_env = "SP"
extra = 1
[notify.targets.other]
kind = "email"
"#,
        );
        let want = [
            "notify.api_base_url: expected an http:// or https:// URL without query, got \"ftp://x\"",
            "notify.max_attempts: expected attempts 1..=100, got 0",
            "notify.max_backoff: must not be shorter than initial_backoff (5s)",
            "notify.targets.bad name: a target name may only hold letters, digits, '-' and '_'",
            "notify.targets.hook.url: expected an http:// or https:// URL without query, got \"not a url\"",
            "notify.targets.hook.secret_env: missing: name the environment variable (secret_env) or file (secret_file)",
            "notify.targets.hook.min_severity: expected info, warning or critical, got \"loud\"",
            "notify.targets.chat.url: a Slack webhook URL is a credential: give url_env or url_file instead",
            "notify.targets.pd: give either routing_key_env or routing_key_file, not both",
            "notify.targets.pd.api_url: expected an http:// or https:// URL without query",
            "notify.targets.pd.domains[0]: unknown domain example.org; configured domains: example.com",
            "notify.targets.pd.domains[1]: ",
            "notify.targets.sp.page_id: expected the Statuspage id (letters and digits), got \"../admin\"",
            "notify.targets.sp.component_id: missing; this field is required",
            "notify.targets.sp.extra: unknown field; expected one of: kind, domains, min_severity, page_id",
            "notify.targets.other.kind: expected webhook, slack, pagerduty or statuspage, got \"email\"",
            "notify.colour: unknown field; expected one of: api_base_url, queue",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in:\n{}",
                errs.join("\n")
            );
        }
        assert!(
            !errs.iter().any(|e| e.contains("hooks.slack.com")),
            "a Slack URL is never echoed: {errs:?}"
        );
    }
}
