//! After an apply: ask every authoritative server until the new RRsets are served (bounded) —
//! that verifies the change — then each configured resolver until its cache has let the old
//! answer go, which is recorded, not waited on by the state machine. The resolvers are asked
//! within their query budgets, shared with the probes (`probe::budget`); the authoritative
//! servers are the zone's own and are not budgeted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::model::RecordSet;
use crate::probe::budget::SharedDns;
use crate::probe::dns::{DnsClient, DnsStatus};

/// Polls in a row without any answer after which a server counts as not answering (so the
/// change is verified another way instead of waiting out the whole bound).
const SILENT_AFTER: u32 = 3;

/// When a server first served the new records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Visible {
    pub server: String,
    /// Milliseconds from the start of verification; `None` when not seen within the bound.
    pub after_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Verifier {
    pub authoritative: Vec<SocketAddr>,
    pub resolvers: Vec<SocketAddr>,
    pub query_timeout: Duration,
    /// The resolvers' query budgets: each query to a resolver waits for its token (for up to
    /// a poll; else it is asked at the next poll).
    pub dns: SharedDns,
    /// How long authoritative servers get to serve the change.
    pub bound: Duration,
    pub poll: Duration,
}

impl Verifier {
    /// Polls each authoritative server until it serves `desired` exactly (records and TTLs).
    pub async fn authoritative(&self, desired: &[RecordSet]) -> Vec<Visible> {
        self.authoritative_answering(desired)
            .await
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    }

    /// As [`Verifier::authoritative`], saying for each server whether it answered at all: one
    /// that never answered its first few queries is given up early.
    pub async fn authoritative_answering(&self, desired: &[RecordSet]) -> Vec<(Visible, bool)> {
        let checks = self.authoritative.iter().map(|s| {
            let client = DnsClient::authoritative(*s, self.query_timeout);
            poll_authoritative(client, desired, self.bound, self.poll)
        });
        futures::future::join_all(checks).await
    }

    /// Polls each resolver until it answers with `desired`'s records (its cached TTL may be
    /// lower), for at most `old_ttl` + 30 s: after that the old answer must have expired.
    pub async fn resolvers(&self, desired: &[RecordSet], old_ttl: u32) -> Vec<Visible> {
        let bound = Duration::from_secs(u64::from(old_ttl) + 30);
        let checks = self.resolvers.iter().map(|s| {
            let client = DnsClient::resolver(*s, self.query_timeout);
            poll_until_served(
                client,
                &self.dns,
                desired,
                bound,
                self.poll.max(Duration::from_secs(1)),
            )
        });
        futures::future::join_all(checks).await
    }
}

/// True when `client` serves every RRset of `desired` (TTL compared when `exact_ttl`).
pub async fn serves(client: &DnsClient, desired: &[RecordSet], exact_ttl: bool) -> bool {
    served(client, desired, exact_ttl, None).await == Some(true)
}

/// Whether `client` serves every RRset of `desired`; `None` when it did not answer at all.
/// With `budget` (a resolver's), each query waits for its token, at most `poll`; `None` when
/// the token would come later (the next poll tries again).
async fn served(
    client: &DnsClient,
    desired: &[RecordSet],
    exact_ttl: bool,
    budget: Option<(&SharedDns, Duration)>,
) -> Option<bool> {
    for set in desired {
        if let Some((budget, poll)) = budget {
            if !budget.reserve(client.server, 1, poll).await {
                return None;
            }
        }
        let answer = client.query(set.name(), set.rtype()).await;
        if matches!(
            answer.status,
            DnsStatus::Timeout | DnsStatus::Network(_) | DnsStatus::Refused
        ) {
            return None;
        }
        let mut got = answer.records.clone();
        got.sort();
        if got.as_slice() != set.records() {
            return Some(false);
        }
        if exact_ttl && answer.ttl != Some(set.ttl().secs()) {
            return Some(false);
        }
    }
    Some(true)
}

/// Polls an authoritative server until it serves `desired` exactly, within `bound`; gives up
/// early (`false`: never answered) when its first [`SILENT_AFTER`] polls got no answer.
async fn poll_authoritative(
    client: DnsClient,
    desired: &[RecordSet],
    bound: Duration,
    poll: Duration,
) -> (Visible, bool) {
    let start = Instant::now();
    let mut answered = false;
    let mut silent = 0;
    loop {
        match served(&client, desired, true, None).await {
            Some(true) => {
                let seen = Visible {
                    server: client.server.to_string(),
                    after_ms: Some(start.elapsed().as_millis() as u64),
                };
                return (seen, true);
            }
            Some(false) => answered = true,
            None => silent += 1,
        }
        if start.elapsed() >= bound || (!answered && silent >= SILENT_AFTER) {
            let not_seen = Visible {
                server: client.server.to_string(),
                after_ms: None,
            };
            return (not_seen, answered);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Polls a resolver (within its budget) until it serves `desired`'s records, within `bound`.
async fn poll_until_served(
    client: DnsClient,
    budget: &SharedDns,
    desired: &[RecordSet],
    bound: Duration,
    poll: Duration,
) -> Visible {
    let start = Instant::now();
    loop {
        if served(&client, desired, false, Some((budget, poll))).await == Some(true) {
            return Visible {
                server: client.server.to_string(),
                after_ms: Some(start.elapsed().as_millis() as u64),
            };
        }
        if start.elapsed() >= bound {
            return Visible {
                server: client.server.to_string(),
                after_ms: None,
            };
        }
        tokio::time::sleep(poll).await;
    }
}

/// The TTL a cache may still hold the old answer for.
pub fn cache_bound(old: Option<u32>) -> u32 {
    old.unwrap_or(3600)
}
