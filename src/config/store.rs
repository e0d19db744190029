//! `[store]`: the store's URL, and how long each kind of record is kept. Everything the store
//! gathers without end — observations, the timeline, finished changes, snapshots, idempotency
//! keys — is pruned by the service's background task; these are the limits.

use std::time::Duration;

use super::reader::{Errors, Section};
use super::types::{StoreConfig, StoreUrl};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// humantime's year (365.25 days), so the limit reads "10years" in an error.
const YEAR: Duration = Duration::from_secs(31_557_600);

/// Probe evidence: a week covers an incident's review; older rounds only fill the disk.
const DEFAULT_OBSERVATION_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The audit timeline: a quarter, so a review or an audit of the last months finds it.
const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Finished change intents: as long as the timeline that refers to them.
const DEFAULT_CHANGE_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Idempotency keys: clients retry within minutes; a day is generous.
const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Snapshots per domain: a failover and a failback take one each, an operator some more; 50
/// reach back months. The ones still needed (a change's, a failback's) are kept anyway.
const DEFAULT_SNAPSHOT_KEEP: u32 = 50;

impl StoreConfig {
    /// The defaults, on `url`.
    pub fn on(url: StoreUrl) -> StoreConfig {
        StoreConfig {
            url,
            observation_retention: DEFAULT_OBSERVATION_RETENTION,
            event_retention: DEFAULT_EVENT_RETENTION,
            change_retention: DEFAULT_CHANGE_RETENTION,
            idempotency_retention: DEFAULT_IDEMPOTENCY_RETENTION,
            snapshot_keep: DEFAULT_SNAPSHOT_KEEP,
        }
    }
}

pub(super) const KEYS: &[&str] = &[
    "url",
    "observation_retention",
    "event_retention",
    "change_retention",
    "idempotency_retention",
    "snapshot_keep",
];

pub(super) fn parse_store(mut sec: Section, errs: &mut Errors) -> StoreConfig {
    let d = StoreConfig::on(StoreUrl::default_sqlite());
    let url = match sec.string("url", errs) {
        None => d.url,
        Some(s) => StoreUrl::parse(&s).unwrap_or_else(|why| {
            errs.push(sec.field("url"), why);
            StoreUrl::default_sqlite()
        }),
    };
    let observation_retention = sec.duration(
        "observation_retention",
        Duration::from_secs(60),
        365 * DAY,
        d.observation_retention,
        errs,
    );
    let event_retention = sec.duration("event_retention", HOUR, 10 * YEAR, d.event_retention, errs);
    let change_retention = sec.duration(
        "change_retention",
        HOUR,
        10 * YEAR,
        d.change_retention,
        errs,
    );
    // At least an hour: far longer than a request's claim on its key lives in flight, so a
    // key is never pruned while its request runs.
    let idempotency_retention = sec.duration(
        "idempotency_retention",
        HOUR,
        30 * DAY,
        d.idempotency_retention,
        errs,
    );
    let snapshot_keep = sec.int(
        "snapshot_keep",
        "a number of snapshots",
        1..=1_000_000,
        d.snapshot_keep.into(),
        errs,
    ) as u32;
    sec.finish(errs, KEYS);
    StoreConfig {
        url,
        observation_retention,
        event_retention,
        change_retention,
        idempotency_retention,
        snapshot_keep,
    }
}
