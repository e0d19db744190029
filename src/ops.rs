//! Operator operations on snapshots, shared by the CLI and the API: take a snapshot, compare
//! one with what is live, check and plan a revert to one. The revert itself is written like any
//! other change, by the domain's actor through the machine and the one publish
//! (`actor::change::publish`: snapshot, intent, fenced apply, verify).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use mxguard_core::{diff, Change, ChangeSet, DnsProvider, RrsetKey};
use serde::Serialize;

use crate::config::{DomainConfig, Targets};
use crate::model::{RecordSet, RecordType, Side};
use crate::plan::Managed;
use crate::store::{ChangeStatus, NewSnapshot, Snapshot, Store};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("no snapshot {0}")]
    NoSnapshot(i64),
    #[error("{0}")]
    Refused(String),
    #[error("provider: {0}")]
    Provider(String),
    #[error("store: {0}")]
    Store(String),
}

/// A snapshot next to what is live, and the changes that would make live equal to it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotDiff {
    pub snapshot: Snapshot,
    pub live: Vec<RecordSet>,
    pub changes: ChangeSet,
}

fn store_err(e: impl std::fmt::Display) -> OpsError {
    OpsError::Store(e.to_string())
}

fn provider_err(e: impl std::fmt::Display) -> OpsError {
    OpsError::Provider(e.to_string())
}

/// Snapshots the domain's managed RRsets, or (`zone_wide`) every RRset of a managed type in its
/// zone where the provider can list it.
pub async fn take_snapshot(
    cfg: &DomainConfig,
    provider: &Arc<dyn DnsProvider>,
    store: &Arc<dyn Store>,
    zone_wide: bool,
    label: Option<String>,
    reason: &str,
    by: &str,
) -> Result<Snapshot, OpsError> {
    let managed = Managed::new(cfg);
    let records = if zone_wide {
        provider.list_zone(&cfg.zone).await.map_err(provider_err)?
    } else {
        provider
            .read(&cfg.zone, &managed.keys())
            .await
            .map_err(provider_err)?
    };
    let snap = NewSnapshot {
        domain: cfg.name.clone(),
        provider: cfg.provider.clone(),
        zone: cfg.zone.clone(),
        label,
        reason: reason.to_string(),
        taken_at: Utc::now(),
        taken_by: by.to_string(),
        records,
    };
    store.save_snapshot(&snap).await.map_err(store_err)
}

/// The RRset keys a snapshot speaks for: its own, plus the domain's managed keys (an RRset the
/// snapshot lacks is one that did not exist then).
fn scope(snapshot: &Snapshot, cfg: &DomainConfig) -> Vec<RrsetKey> {
    let mut keys: Vec<RrsetKey> = snapshot.records.iter().map(RrsetKey::of).collect();
    for k in Managed::new(cfg).keys() {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

pub async fn snapshot_diff(
    cfg: &DomainConfig,
    provider: &Arc<dyn DnsProvider>,
    store: &Arc<dyn Store>,
    id: i64,
) -> Result<SnapshotDiff, OpsError> {
    let snapshot = store
        .snapshot(id)
        .await
        .map_err(store_err)?
        .ok_or(OpsError::NoSnapshot(id))?;
    let live = provider
        .read(&snapshot.zone, &scope(&snapshot, cfg))
        .await
        .map_err(provider_err)?;
    let changes = diff(&snapshot.records, &live);
    Ok(SnapshotDiff {
        snapshot,
        live,
        changes,
    })
}

/// The records mxguard last left at `keys`: the outcome of its newest applied change made
/// after `since_id`'s snapshot, if any.
async fn last_published(
    store: &Arc<dyn Store>,
    cfg: &DomainConfig,
    after_snapshot: i64,
) -> Result<Option<Vec<RecordSet>>, OpsError> {
    let changes = store
        .recent_changes(&cfg.name, 50)
        .await
        .map_err(store_err)?;
    let Some(last) = changes.into_iter().find(|c| {
        matches!(c.status, ChangeStatus::Applied | ChangeStatus::Verified)
            && c.snapshot_id.is_some_and(|s| s >= after_snapshot)
    }) else {
        return Ok(None);
    };
    let mut sets: BTreeMap<RrsetKey, RecordSet> = last
        .before
        .into_iter()
        .map(|s| (RrsetKey::of(&s), s))
        .collect();
    for c in last.after.changes {
        match c {
            Change::Upsert { set, .. } => {
                sets.insert(RrsetKey::of(&set), set);
            }
            Change::Delete { key, .. } => {
                sets.remove(&key);
            }
        }
    }
    Ok(Some(sets.into_values().collect()))
}

fn same(a: &[RecordSet], b: &[RecordSet]) -> bool {
    let mut a: Vec<&RecordSet> = a.iter().collect();
    let mut b: Vec<&RecordSet> = b.iter().collect();
    a.sort_by_key(|s| RrsetKey::of(s));
    b.sort_by_key(|s| RrsetKey::of(s));
    a == b
}

/// A revert, checked and planned: what it would write and which side's records those are.
#[derive(Debug, Clone)]
pub struct RevertPlan {
    pub diff: SnapshotDiff,
    /// The snapshot's RRsets that the domain manages: what the revert publishes.
    pub desired: Vec<RecordSet>,
    /// Whose records `desired` are.
    pub side: Side,
    /// The changes to the managed RRsets that make live equal to the snapshot.
    pub changes: ChangeSet,
    /// RRsets where live differs from a zone-wide snapshot but which the domain does not
    /// manage: shown, never written.
    pub unmanaged: usize,
}

/// Checks a revert to snapshot `id` and plans it, changing nothing. A revert writes only the
/// domain's managed RRsets, and only the primary's or the backup's records (the machine decides
/// on it like on a failover or failback). Refused when the snapshot would leave the domain
/// without its MX set or the MX host without an address, when its records are neither side's,
/// and when the live records were changed by someone else since mxguard last changed them
/// (`force` overrides that one).
pub async fn plan_revert(
    cfg: &DomainConfig,
    provider: &Arc<dyn DnsProvider>,
    store: &Arc<dyn Store>,
    id: i64,
    force: bool,
) -> Result<RevertPlan, OpsError> {
    let d = snapshot_diff(cfg, provider, store, id).await?;
    let managed = Managed::new(cfg);
    let managed_keys = managed.keys();
    let desired: Vec<RecordSet> = d
        .snapshot
        .records
        .iter()
        .filter(|s| managed_keys.contains(&RrsetKey::of(s)))
        .cloned()
        .collect();
    let changes = ChangeSet {
        changes: d
            .changes
            .changes
            .iter()
            .filter(|c| managed_keys.contains(&c.key()))
            .cloned()
            .collect(),
    };
    let unmanaged = d.changes.changes.len() - changes.changes.len();
    let empties = match &cfg.targets {
        Targets::Mx { .. } => !desired.iter().any(|s| s.rtype() == RecordType::Mx),
        Targets::A { .. } => desired.is_empty(),
    };
    if empties && !changes.is_empty() {
        return Err(OpsError::Refused(format!(
            "snapshot {id} has no {} for {}: reverting would leave it without mail routing",
            if matches!(cfg.targets, Targets::Mx { .. }) {
                "MX set"
            } else {
                "address"
            },
            cfg.name
        )));
    }
    let Some(side) = managed.which_side(&desired) else {
        let shown: Vec<String> = desired.iter().map(|s| s.to_string()).collect();
        return Err(OpsError::Refused(format!(
            "snapshot {id} holds neither the primary's nor the backup's records for {} ({}); mxguard publishes only those",
            cfg.name.without_dot(),
            if shown.is_empty() { "none".into() } else { shown.join(" | ") }
        )));
    };
    if !force {
        let keys = scope(&d.snapshot, cfg);
        let expected = match last_published(store, cfg, id).await? {
            Some(sets) => sets
                .into_iter()
                .filter(|s| keys.contains(&RrsetKey::of(s)))
                .collect(),
            None => d.snapshot.records.clone(),
        };
        if !changes.is_empty() && !same(&expected, &d.live) {
            return Err(OpsError::Refused(
                "the live records were changed outside mxguard since its last change; review `mxguard diff` and use --force".into(),
            ));
        }
    }
    Ok(RevertPlan {
        diff: d,
        desired,
        side,
        changes,
        unmanaged,
    })
}

impl RevertPlan {
    /// What the revert would do, or that it has nothing to do, in one line.
    pub fn summary(&self, cfg: &DomainConfig) -> String {
        let id = self.diff.snapshot.id;
        let left = if self.unmanaged > 0 {
            format!(
                "; {} other RRset(s) of the snapshot are not managed by this domain and are left alone",
                self.unmanaged
            )
        } else {
            String::new()
        };
        if self.changes.is_empty() {
            format!(
                "{}: live already equals snapshot {id}; nothing to do{left}",
                cfg.name.without_dot()
            )
        } else {
            format!(
                "{}: revert to snapshot {id} ({} records) would make {} change(s){left}",
                cfg.name.without_dot(),
                self.side,
                self.changes.changes.len()
            )
        }
    }
}
