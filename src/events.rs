//! The event model and the engine's event bus.
//!
//! [`EventKind`] is what a timeline event is about: the machine and the actors emit it, the
//! store keeps its name, the API and the notification payloads show that name, and
//! notifications classify by it (never by parsing an event's message).
//!
//! Every event an actor records in the store's timeline is also published on the bus, with the
//! domain's machine state at that moment, for listeners that act on events (notifications).
//! Publishing never blocks or fails the actor: a listener that falls behind loses the oldest
//! notices and is told how many (`RecvError::Lagged`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::machine::{DomainState, Phase};
use crate::store::Event;

/// What a timeline event is about. Alerts (`alert.*`) are the kinds someone should look at.
///
/// Where a kind has fields, they are in the event's evidence under the names below, typed:
/// a `transition` carries `from` and `to` ([`Phase`]); a `health` event carries `side` and the
/// leader's `combined` verdict; `ttl_lowered` and `ttl_restored` carry `old_ttl`, `new_ttl`
/// (seconds) and `why` ([`crate::machine::TtlChange`]); `drill` and `alert.drill_failed`
/// carry the whole [`crate::drill::DrillReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The machine moved from one phase to another.
    #[serde(rename = "transition")]
    Transition,
    /// The leader's combined verdict on a side changed.
    #[serde(rename = "health")]
    Health,
    /// A change was published and verified at the authoritative servers.
    #[serde(rename = "change")]
    Change,
    /// When a published change became visible at each resolver.
    #[serde(rename = "propagation")]
    Propagation,
    /// A pin or pause was set, lifted or expired.
    #[serde(rename = "override")]
    Override,
    /// An operator's approval of a failback.
    #[serde(rename = "operator")]
    Operator,
    /// An operator's revert to a snapshot, verified.
    #[serde(rename = "revert")]
    Revert,
    /// A change this instance began was refused at the provider by the fence: the lease moved.
    #[serde(rename = "fenced")]
    Fenced,
    /// The published records match neither side.
    #[serde(rename = "drift")]
    Drift,
    /// A vantage reaches its resolvers again and votes.
    #[serde(rename = "vantage_reachable")]
    VantageReachable,
    /// A notification target gave up on an event.
    #[serde(rename = "notify_failed")]
    NotifyFailed,
    /// A change waits, before anything is sent, for a lockout its provider announced.
    #[serde(rename = "change_waiting")]
    ChangeWaiting,
    /// The domain's provider passes its access check again.
    #[serde(rename = "provider_access_restored")]
    ProviderAccessRestored,
    /// Compliant senders would deliver to the backup again (its MTA-STS policy lists it or no
    /// longer enforces, and a DANE sender can use one of its addresses).
    #[serde(rename = "mta_sts_restored")]
    MtaStsRestored,
    /// The primary's records republished unchanged with the failover TTL at early signs of
    /// trouble (`early_ttl`), so that caches turn over quickly if a failover comes.
    #[serde(rename = "ttl_lowered")]
    TtlLowered,
    /// The primary's original TTL restored after it was quiet for the hold.
    #[serde(rename = "ttl_restored")]
    TtlRestored,
    /// A maintenance window scheduled, started, over or cancelled.
    #[serde(rename = "maintenance")]
    Maintenance,
    /// A drill ran: every check a failover needs, without changing live records (or a live
    /// failover and failback); pass or fail per step (`src/drill.rs`).
    #[serde(rename = "drill")]
    Drill,
    /// A provider of a zone served by several serves the published side again (`mirrors`).
    #[serde(rename = "provider_caught_up")]
    ProviderCaughtUp,
    /// Both sides are Down; the published records are kept.
    #[serde(rename = "alert.both_down")]
    BothDown,
    /// Publishing failed; it is retried when its kind says.
    #[serde(rename = "alert.change_failed")]
    ChangeFailed,
    /// Too many automated moves: automation paused itself.
    #[serde(rename = "alert.flap_guard")]
    FlapGuard,
    /// Drift that the controller does not (or may not) correct.
    #[serde(rename = "alert.drift")]
    DriftNotCorrected,
    /// The published records cannot be read, for a reason retries will not fix.
    #[serde(rename = "alert.provider_read_failed")]
    ProviderReadFailed,
    /// A vantage is cut off from its resolvers and stops voting.
    #[serde(rename = "alert.vantage_partitioned")]
    VantagePartitioned,
    /// The domain's provider fails its access check: the credentials cannot do what mxguard
    /// needs for the zone (found at start, not at the first failover).
    #[serde(rename = "alert.provider_access")]
    ProviderAccess,
    /// Compliant senders would refuse the backup after a failover: the domain's enforce-mode
    /// MTA-STS policy does not list it, or every DANE sender would defer mail to it (its TLSA
    /// matches no certificate it presents, or it offers no STARTTLS).
    #[serde(rename = "alert.mta_sts")]
    MtaSts,
    /// `mta_sts = "block"`: an automated failover to a backup compliant senders refuse was not
    /// made.
    #[serde(rename = "alert.mta_sts_refused")]
    MtaStsFailoverRefused,
    /// A failover was made to a backup compliant senders refuse (`warn`, or an operator's move).
    #[serde(rename = "alert.mta_sts_failover")]
    MtaStsFailover,
    /// A provider of a zone served by several did not take a change the others took: it
    /// still serves the other side, and is retried.
    #[serde(rename = "alert.provider_behind")]
    ProviderBehind,
    /// A maintenance window could not start (its side is Down), or left a low TTL behind.
    #[serde(rename = "alert.maintenance")]
    MaintenanceAlert,
    /// A scheduled drill (`drill_every`) failed: a failover now would likely not work.
    #[serde(rename = "alert.drill_failed")]
    DrillFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 32] = [
        EventKind::Transition,
        EventKind::Health,
        EventKind::Change,
        EventKind::Propagation,
        EventKind::Override,
        EventKind::Operator,
        EventKind::Revert,
        EventKind::Fenced,
        EventKind::Drift,
        EventKind::VantageReachable,
        EventKind::NotifyFailed,
        EventKind::ChangeWaiting,
        EventKind::ProviderAccessRestored,
        EventKind::MtaStsRestored,
        EventKind::TtlLowered,
        EventKind::TtlRestored,
        EventKind::Maintenance,
        EventKind::Drill,
        EventKind::BothDown,
        EventKind::ChangeFailed,
        EventKind::FlapGuard,
        EventKind::DriftNotCorrected,
        EventKind::ProviderReadFailed,
        EventKind::VantagePartitioned,
        EventKind::ProviderAccess,
        EventKind::MtaSts,
        EventKind::MtaStsFailoverRefused,
        EventKind::MtaStsFailover,
        EventKind::ProviderCaughtUp,
        EventKind::ProviderBehind,
        EventKind::MaintenanceAlert,
        EventKind::DrillFailed,
    ];

    /// The name the store, the API and payloads carry.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Transition => "transition",
            EventKind::Health => "health",
            EventKind::Change => "change",
            EventKind::Propagation => "propagation",
            EventKind::Override => "override",
            EventKind::Operator => "operator",
            EventKind::Revert => "revert",
            EventKind::Fenced => "fenced",
            EventKind::Drift => "drift",
            EventKind::VantageReachable => "vantage_reachable",
            EventKind::NotifyFailed => "notify_failed",
            EventKind::ChangeWaiting => "change_waiting",
            EventKind::ProviderAccessRestored => "provider_access_restored",
            EventKind::MtaStsRestored => "mta_sts_restored",
            EventKind::TtlLowered => "ttl_lowered",
            EventKind::TtlRestored => "ttl_restored",
            EventKind::Maintenance => "maintenance",
            EventKind::Drill => "drill",
            EventKind::BothDown => "alert.both_down",
            EventKind::ChangeFailed => "alert.change_failed",
            EventKind::FlapGuard => "alert.flap_guard",
            EventKind::DriftNotCorrected => "alert.drift",
            EventKind::ProviderReadFailed => "alert.provider_read_failed",
            EventKind::VantagePartitioned => "alert.vantage_partitioned",
            EventKind::ProviderAccess => "alert.provider_access",
            EventKind::MtaSts => "alert.mta_sts",
            EventKind::MtaStsFailoverRefused => "alert.mta_sts_refused",
            EventKind::MtaStsFailover => "alert.mta_sts_failover",
            EventKind::MaintenanceAlert => "alert.maintenance",
            EventKind::ProviderCaughtUp => "provider_caught_up",
            EventKind::ProviderBehind => "alert.provider_behind",
            EventKind::DrillFailed => "alert.drill_failed",
        }
    }

    /// Someone should look: recorded and notified as an alert.
    pub fn is_alert(self) -> bool {
        self.as_str().starts_with("alert.")
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so the CLI's column widths apply.
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// Tests and filters compare kinds with their names.
impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A transition's phases, from its evidence (`None` for other kinds).
pub fn transition(event: &Event) -> Option<(Phase, Phase)> {
    if event.kind != EventKind::Transition {
        return None;
    }
    let phase = |key: &str| serde_json::from_value::<Phase>(event.evidence[key].clone()).ok();
    Some((phase("from")?, phase("to")?))
}

/// Notices kept for a slow listener before the oldest are dropped.
pub const BUS_CAPACITY: usize = 4096;

/// One recorded event and the state of its domain's machine when it was recorded.
#[derive(Debug, Clone)]
pub struct Notice {
    pub event: Event,
    pub state: DomainState,
}

/// Cheap to clone; every clone publishes to the same listeners.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Notice>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BUS_CAPACITY);
        EventBus { tx }
    }

    /// A new listener; it sees notices published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Notice>> {
        self.tx.subscribe()
    }

    /// Publishes without waiting; with no listener the notice is simply dropped.
    pub fn publish(&self, event: Event, state: DomainState) {
        let _ = self.tx.send(Arc::new(Notice { event, state }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_name_and_reads_back_from_it() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
            assert_eq!(serde_json::to_value(k).ok(), Some(k.as_str().into()));
        }
        let names: std::collections::BTreeSet<_> =
            EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert!("probe".parse::<EventKind>().is_err());
        assert!(EventKind::BothDown.is_alert() && !EventKind::Transition.is_alert());
    }

    #[test]
    fn the_openapi_document_lists_every_kind_and_no_other() {
        let doc = include_str!("../openapi.yaml");
        let line = doc
            .lines()
            .find(|l| l.trim_start().starts_with("enum: [transition"))
            .expect("the Event kind enum in openapi.yaml");
        let listed: std::collections::BTreeSet<&str> = line
            .trim()
            .trim_start_matches("enum: [")
            .trim_end_matches(']')
            .split(',')
            .map(str::trim)
            .collect();
        let ours: std::collections::BTreeSet<&str> =
            EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(listed, ours);
    }
}
