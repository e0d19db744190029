//! The demo's live timeline: every line is `+SECONDS  text`, seconds since the lab came up.
//! It learns what happened only from outside the controller, as an operator would: the MX set
//! the demo DNS serves (asked over the wire) and the events mxguard writes to its store.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::machine::Phase;
use crate::model::{Fqdn, RecordType};
use crate::probe::dns::{DnsClient, DnsStatus};
use crate::store::{Event, Store};

/// How often the DNS and the store are polled.
const POLL: Duration = Duration::from_millis(100);

/// The MX set the demo DNS serves at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub records: Vec<String>,
    pub ttl: Option<u32>,
    pub status: DnsStatus,
}

impl Served {
    /// True when exactly `records` are served.
    pub fn is(&self, records: &[&str]) -> bool {
        self.records
            .iter()
            .map(String::as_str)
            .eq(records.iter().copied())
    }
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.records.is_empty() {
            return write!(f, "none ({})", self.status.label());
        }
        write!(f, "{}", self.records.join(", "))?;
        match self.ttl {
            Some(ttl) => write!(f, " (ttl {ttl})"),
            None => Ok(()),
        }
    }
}

pub struct Timeline {
    start: Instant,
    start_wall: DateTime<Utc>,
    store: Arc<dyn Store>,
    domain: Fqdn,
    dns: DnsClient,
    after: Option<i64>,
    events: Vec<Event>,
}

impl Timeline {
    pub fn new(store: Arc<dyn Store>, domain: Fqdn, dns: DnsClient) -> Timeline {
        Timeline {
            start: Instant::now(),
            start_wall: Utc::now(),
            store,
            domain,
            dns,
            after: None,
            events: Vec::new(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints one timeline line stamped now.
    pub fn say(&self, text: impl fmt::Display) {
        self.say_at(self.elapsed(), text);
    }

    fn say_at(&self, at: Duration, text: impl fmt::Display) {
        println!("+{:>5.1}s  {text}", at.as_secs_f64());
    }

    /// Prints the events mxguard recorded since the last call, stamped with their own times.
    pub async fn drain_events(&mut self) {
        let new = match self.store.events(&self.domain, self.after, 100).await {
            Ok(new) => new,
            Err(e) => {
                tracing::debug!(error = %e, "demo: reading events failed; trying again");
                return;
            }
        };
        for event in new {
            self.after = Some(event.id);
            let at = (event.at - self.start_wall).to_std().unwrap_or_default();
            self.say_at(at, format_args!("· {}: {}", event.kind, event.message));
            self.events.push(event);
        }
    }

    /// The MX set the demo DNS serves now.
    pub async fn served(&self) -> Served {
        let answer = self.dns.query(&self.domain, RecordType::Mx).await;
        Served {
            records: answer.records.iter().map(|r| r.to_string()).collect(),
            ttl: answer.ttl,
            status: answer.status,
        }
    }

    /// True when mxguard recorded a transition into `to` (from `from`, when given).
    pub fn transitioned(&self, from: Option<Phase>, to: Phase) -> bool {
        self.events.iter().any(|e| {
            crate::events::transition(e)
                .is_some_and(|(f, t)| t == to && from.is_none_or(|w| w == f))
        })
    }

    /// Polls the events and the DNS until `done` holds. Fails at `deadline`, or when
    /// `stopped()` says the service is no longer running.
    pub async fn wait_for(
        &mut self,
        what: &str,
        deadline: Instant,
        stopped: &dyn Fn() -> bool,
        done: impl Fn(&Timeline, &Served) -> bool,
    ) -> Result<Served, String> {
        loop {
            self.drain_events().await;
            let served = self.served().await;
            if done(self, &served) {
                // print what was recorded meanwhile, so the caller's line comes after it
                self.drain_events().await;
                return Ok(served);
            }
            if stopped() {
                return Err(format!("mxguard stopped while waiting for {what}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out waiting for {what}; the demo DNS serves MX = {served}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
