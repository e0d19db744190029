//! `[cluster]`: who this instance is among several (its vantage name), how long the leader's
//! lease lasts, and how many vantages must agree before a side is Down.

use std::net::SocketAddr;
use std::time::Duration;

use super::reader::{Errors, Section};

/// Several instances against one PostgreSQL: one leader decides and writes, every instance
/// probes from its own network (its *vantage*) and stores what it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// This instance's name in observations, votes and the lease. Unique per instance.
    pub vantage: String,
    /// How long a lease lasts without renewal; a follower takes over after it runs out.
    pub lease_ttl: Duration,
    /// Vantages that must see a side Down (or Up) for the leader to act on it;
    /// `None`: a majority of the vantages voting now.
    pub vantage_quorum: Option<u32>,
    /// How this instance's API is reached by others, shown by followers when they refuse a
    /// mutation (e.g. `https://mxguard-eu.example.net:8053`).
    pub advertise_url: Option<String>,
    /// Control targets (`IP:PORT`, TCP) this instance must reach to vote; when none answers,
    /// the vantage counts as partitioned. Empty: only the resolvers are the control.
    pub canaries: Vec<SocketAddr>,
}

pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            vantage: "default".into(),
            lease_ttl: DEFAULT_LEASE_TTL,
            vantage_quorum: None,
            advertise_url: None,
            canaries: Vec::new(),
        }
    }
}

pub(super) const KEYS: &[&str] = &[
    "vantage",
    "lease_ttl",
    "vantage_quorum",
    "advertise_url",
    "canaries",
];

pub(super) fn parse_cluster(mut sec: Section, errs: &mut Errors) -> ClusterConfig {
    let d = ClusterConfig::default();
    let vantage = match sec.string("vantage", errs) {
        None => d.vantage,
        Some(v) => {
            let ok = !v.is_empty()
                && v.len() <= 63
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                errs.push(
                    sec.field("vantage"),
                    format!("expected 1 to 63 letters, digits, '-', '_' or '.', got {v:?}"),
                );
            }
            v
        }
    };
    let lease_ttl = sec.duration(
        "lease_ttl",
        Duration::from_secs(2),
        Duration::from_secs(600),
        d.lease_ttl,
        errs,
    );
    let vantage_quorum = sec
        .has("vantage_quorum")
        .then(|| sec.int("vantage_quorum", "a number of vantages", 1..=64, 1, errs) as u32);
    let advertise_url = sec.string("advertise_url", errs);
    if let Some(u) = &advertise_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            errs.push(
                sec.field("advertise_url"),
                format!("expected an http:// or https:// URL, got {u:?}"),
            );
        }
    }
    let mut canaries = Vec::new();
    if let Some(list) = sec.strings("canaries", errs) {
        for (i, c) in list.iter().enumerate() {
            match c.parse::<SocketAddr>() {
                Ok(a) => canaries.push(a),
                Err(_) => errs.push(
                    format!("{}[{i}]", sec.field("canaries")),
                    format!("expected IP:PORT such as 192.0.2.53:53, got {c:?}"),
                ),
            }
        }
    }
    sec.finish(errs, KEYS);
    ClusterConfig {
        vantage,
        lease_ttl,
        vantage_quorum,
        advertise_url,
        canaries,
    }
}
