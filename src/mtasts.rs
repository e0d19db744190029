//! MTA-STS (RFC 8461) and TLS-RPT (RFC 8460): would a compliant sender deliver to the backup?
//!
//! A domain whose MTA-STS policy is in `enforce` mode lists the MX names senders may deliver to
//! (`mx:` patterns). Gmail and Microsoft refuse an MX host the policy does not list, or one
//! whose certificate is not valid for its name, and the mail stops — silently, from the
//! domain's side. This room is pure: parsing and the rule. Fetching is in `fetch`, `serve`'s
//! periodic check in `watch`.
//!
//! Rules:
//! - **The `_mta-sts` TXT record** (§3.1): of the TXT strings at `_mta-sts.DOMAIN`, those not
//!   starting with `v=STSv1` are ignored; none left → no policy; more than one, or one that does
//!   not parse (`v=STSv1` first, then `id=` of 1–32 letters and digits, fields separated by `;`)
//!   → no available policy (what a sender assumes), reported as an error.
//! - **The policy file** (§3.2): `key: value` lines (CRLF or LF); `version: STSv1`,
//!   `mode: enforce | testing | none`, `max_age` (0–31557600 s) are required, the first of each
//!   counts; `mx:` may repeat and at least one is required unless the mode is `none`; unknown
//!   keys are ignored (senders must ignore them).
//! - **An `mx` pattern** (§4.1) matches a host name case-insensitively, trailing dots aside; a
//!   pattern `*.example.com` matches exactly one extra leftmost label: `mx.example.com`, never
//!   `example.com` nor `a.b.example.com`.
//! - **A host is refused** by a compliant sender when the policy is in `enforce` mode and no
//!   pattern matches it (§5: such an MX is not a candidate). `testing` and `none` refuse nothing
//!   (senders report through TLS-RPT and deliver).
//! - **A side is refused** when every one of its MX hosts is refused: senders skip the hosts
//!   that fail and try the side's others, so one listed host keeps mail flowing (the unlisted
//!   ones are reported, not counted as a refusal).
//! - **Mode `mx`**: the backup side is its backup MX names, matched against the patterns.
//! - **Mode `a`**: the MX host name does not change on failover, so the patterns say the same
//!   for both sides: a host the policy does not list is refused on the primary already, and the
//!   failover changes nothing (reported, not counted as the backup's refusal). What changes is
//!   the certificate the backup's addresses present: the SMTP probe verifies it for the host
//!   name (chain and name) when `starttls = "require"`, and a backup that fails it is Down and
//!   never published. With `starttls` `opportunistic` or `off` that certificate is not verified,
//!   and the finding says so (a note, not a refusal: mxguard has not seen it fail).
//! - **TLS-RPT** (`_smtp._tls` TXT): exactly one record starting with `v=TLSRPTv1`, whose `rua`
//!   lists where reports go (`mailto:` or `https:` URIs, comma-separated); shown, never decisive.

pub mod fetch;
pub mod watch;

use serde::Serialize;

use crate::config::{DomainConfig, StartTls, Targets};
use crate::model::Fqdn;

/// The longest `max_age` a policy may state (about a year, §3.2).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// The `_mta-sts` TXT record: its `id` changes whenever the policy file does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StsRecord {
    pub id: String,
}

/// The records at one name that begin with `prefix` (case-insensitive; a record is one
/// string, the TXT's character-strings joined).
fn starting_with<'a>(txt: &'a [String], prefix: &str) -> Vec<&'a str> {
    txt.iter()
        .map(|t| t.trim_start())
        .filter(|t| {
            t.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        })
        .collect()
}

/// `key=value` fields separated by `;` (whitespace around each ignored, an empty last one too).
fn fields(record: &str) -> Result<Vec<(&str, &str)>, String> {
    record
        .split(';')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("field {f:?} is not key=value"))
        })
        .collect()
}

/// Parses the `_mta-sts` TXT strings. `Ok(None)`: no record (no policy).
pub fn parse_sts_record(txt: &[String]) -> Result<Option<StsRecord>, String> {
    let found = starting_with(txt, "v=STSv1");
    let record = match found.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        more => {
            return Err(format!(
                "{} records start with v=STSv1; senders treat that as no policy",
                more.len()
            ))
        }
    };
    let fields = fields(record)?;
    if fields.first().map(|(k, v)| (*k, *v)) != Some(("v", "STSv1")) {
        return Err(format!("{record:?} does not begin with v=STSv1"));
    }
    let id = fields
        .iter()
        .find(|(k, _)| *k == "id")
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("{record:?} has no id"))?;
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("id {id:?} is not 1–32 letters and digits"));
    }
    Ok(Some(StsRecord { id: id.to_string() }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    Enforce,
    Testing,
    None,
}

impl std::fmt::Display for StsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        })
    }
}

/// One `mx:` pattern: a host name, or `*.` and a name (one leftmost label). Lower case, no
/// trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MxPattern(String);

impl MxPattern {
    pub fn parse(raw: &str) -> Result<MxPattern, String> {
        let p = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        let name = p.strip_prefix("*.").unwrap_or(&p);
        let labels_ok = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !labels_ok {
            return Err(format!("mx pattern {raw:?} is not a host name or *.name"));
        }
        Ok(MxPattern(p))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `host` matches (§4.1).
    pub fn matches(&self, host: &Fqdn) -> bool {
        let host = host.without_dot().to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => host == self.0,
        }
    }
}

/// A policy file, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StsPolicy {
    pub mode: StsMode,
    pub mx: Vec<MxPattern>,
    /// Seconds senders may cache the policy.
    pub max_age: u32,
}

impl StsPolicy {
    /// The first pattern that matches `host`.
    pub fn pattern_for(&self, host: &Fqdn) -> Option<&MxPattern> {
        self.mx.iter().find(|p| p.matches(host))
    }
}

/// Parses a policy file's text (§3.2).
pub fn parse_policy(text: &str) -> Result<StsPolicy, String> {
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("line {line:?} is not key: value"));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "version" if version.is_none() => version = Some(value.to_string()),
            "mode" if mode.is_none() => {
                mode = Some(match value {
                    "enforce" => StsMode::Enforce,
                    "testing" => StsMode::Testing,
                    "none" => StsMode::None,
                    other => return Err(format!("mode {other:?} is not enforce, testing or none")),
                })
            }
            "max_age" if max_age.is_none() => {
                let secs = value
                    .parse::<u32>()
                    .ok()
                    .filter(|s| *s <= MAX_AGE_LIMIT && value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| format!("max_age {value:?} is not 0–{MAX_AGE_LIMIT} seconds"))?;
                max_age = Some(secs);
            }
            "mx" => mx.push(MxPattern::parse(value)?),
            _ => {} // unknown keys and repeats of single ones: ignored
        }
    }
    match version.as_deref() {
        Some("STSv1") => {}
        Some(v) => return Err(format!("version {v:?} is not STSv1")),
        None => return Err("no version line".into()),
    }
    let mode = mode.ok_or("no mode line")?;
    let max_age = max_age.ok_or("no max_age line")?;
    if mx.is_empty() && mode != StsMode::None {
        return Err(format!("mode {mode} needs at least one mx line"));
    }
    Ok(StsPolicy { mode, mx, max_age })
}

/// The TLS-RPT record (`_smtp._tls`): where failure reports go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsRpt {
    pub rua: Vec<String>,
}

/// Parses the `_smtp._tls` TXT strings. `Ok(None)`: no record.
pub fn parse_tlsrpt(txt: &[String]) -> Result<Option<TlsRpt>, String> {
    let found = starting_with(txt, "v=TLSRPTv1");
    let record = match found.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        more => return Err(format!("{} records start with v=TLSRPTv1", more.len())),
    };
    let fields = fields(record)?;
    let rua = fields
        .iter()
        .find(|(k, _)| *k == "rua")
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("{record:?} has no rua"))?;
    let rua: Vec<String> = rua
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = rua.iter().find(|u| {
        let l = u.to_ascii_lowercase();
        !(l.starts_with("mailto:") || l.starts_with("https:"))
    }) {
        return Err(format!("rua {bad:?} is neither mailto: nor https:"));
    }
    if rua.is_empty() {
        return Err(format!("{record:?} has an empty rua"));
    }
    Ok(Some(TlsRpt { rua }))
}

/// The MX host names of each side, as MTA-STS sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    /// Mode `mx`: the sides' MX names.
    Mx {
        primary: Vec<Fqdn>,
        backup: Vec<Fqdn>,
    },
    /// Mode `a`: one host name on both sides; whether the SMTP probe verifies the certificate
    /// the backup's addresses present (`starttls = "require"`).
    A {
        host: Fqdn,
        certificate_verified: bool,
    },
}

impl Hosts {
    pub fn of(cfg: &DomainConfig) -> Hosts {
        match &cfg.targets {
            Targets::Mx { primary, backup } => Hosts::Mx {
                primary: primary.iter().map(|m| m.exchange.clone()).collect(),
                backup: backup.iter().map(|m| m.exchange.clone()).collect(),
            },
            Targets::A { host, .. } => Hosts::A {
                host: host.clone(),
                certificate_verified: cfg.checks.starttls == StartTls::Require,
            },
        }
    }
}

/// One host against the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostVerdict {
    pub host: Fqdn,
    /// The pattern that lists it, if any.
    pub pattern: Option<String>,
    /// A compliant sender refuses it (enforce mode, not listed).
    pub refused: bool,
}

/// What the policy means for the domain's sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub mode: StsMode,
    pub primary: Vec<HostVerdict>,
    pub backup: Vec<HostVerdict>,
    /// Why compliant senders would refuse every backup host (`None`: they would deliver to one
    /// of them, or the mode refuses nothing). This is what the failover decision uses.
    pub backup_refused: Option<String>,
    /// Things worth saying that do not refuse the backup.
    pub notes: Vec<String>,
}

fn verdicts(policy: &StsPolicy, hosts: &[Fqdn]) -> Vec<HostVerdict> {
    hosts
        .iter()
        .map(|h| {
            let pattern = policy.pattern_for(h).map(|p| p.as_str().to_string());
            HostVerdict {
                host: h.clone(),
                refused: policy.mode == StsMode::Enforce && pattern.is_none(),
                pattern,
            }
        })
        .collect()
}

fn names(v: &[HostVerdict]) -> String {
    v.iter()
        .map(|h| h.host.without_dot())
        .collect::<Vec<_>>()
        .join(", ")
}

fn patterns(policy: &StsPolicy) -> String {
    policy
        .mx
        .iter()
        .map(MxPattern::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rule (module doc): which backup hosts compliant senders refuse, and whether that refuses
/// the backup side.
pub fn evaluate(policy: &StsPolicy, hosts: &Hosts) -> Evaluation {
    let mut notes = Vec::new();
    let (primary, backup) = match hosts {
        Hosts::Mx { primary, backup } => (verdicts(policy, primary), verdicts(policy, backup)),
        Hosts::A {
            host,
            certificate_verified,
        } => {
            let v = verdicts(policy, std::slice::from_ref(host));
            if v.iter().any(|h| h.refused) {
                notes.push(format!(
                    "the policy (mode enforce, mx {}) does not list {}: compliant senders refuse it on either side (mode a keeps the name)",
                    patterns(policy),
                    host.without_dot()
                ));
            }
            if policy.mode == StsMode::Enforce && !certificate_verified {
                notes.push(format!(
                    "the backup addresses' certificates are not verified for {} (starttls is not \"require\"): compliant senders refuse a backup whose certificate does not match",
                    host.without_dot()
                ));
            }
            (v.clone(), v)
        }
    };
    let all_backup_refused =
        matches!(hosts, Hosts::Mx { .. }) && !backup.is_empty() && backup.iter().all(|h| h.refused);
    let backup_refused = all_backup_refused.then(|| {
        let mut why = format!(
            "the MTA-STS policy (mode enforce, mx {}) does not list the backup MX {}: compliant senders (Gmail, Microsoft) will not deliver to it",
            patterns(policy),
            names(&backup)
        );
        if !primary.is_empty() && primary.iter().all(|h| h.refused) {
            why.push_str(" (nor to the primary, which it does not list either)");
        }
        why
    });
    if backup_refused.is_none() {
        let unlisted: Vec<HostVerdict> = backup.iter().filter(|h| h.refused).cloned().collect();
        if matches!(hosts, Hosts::Mx { .. }) && !unlisted.is_empty() {
            notes.push(format!(
                "backup MX {} not listed by the policy: senders skip it and use the listed ones",
                names(&unlisted)
            ));
        }
    }
    Evaluation {
        mode: policy.mode,
        primary,
        backup,
        backup_refused,
        notes,
    }
}

#[cfg(test)]
mod tests;
