//! Operator operations on snapshots, shared by the CLI and the API: take a snapshot, compare
//! one with what is live, revert to one. A revert is a change like any other: the live records
//! are snapshotted and a change intent is written before the provider is called.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use mxguard_core::{diff, Change, ChangeSet, DnsProvider, RrsetKey};
use serde::Serialize;

use crate::config::{DomainConfig, Targets};
use crate::model::{RecordSet, RecordType};
use crate::plan::Managed;
use crate::store::{ChangeStatus, NewChange, NewSnapshot, Snapshot, Store};

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

#[derive(Debug, Clone, Serialize)]
pub struct RevertOutcome {
    pub diff: SnapshotDiff,
    pub dry_run: bool,
    pub change_id: Option<i64>,
    pub message: String,
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

/// Makes live equal to snapshot `id` (records and TTLs). Refused when the live records were
/// changed by someone else since mxguard last changed them (`force` overrides), and always when
/// it would leave the domain without its MX set or the MX host without an address.
#[allow(clippy::too_many_arguments)]
pub async fn revert(
    cfg: &DomainConfig,
    provider: &Arc<dyn DnsProvider>,
    store: &Arc<dyn Store>,
    epoch: i64,
    id: i64,
    dry_run: bool,
    force: bool,
    by: &str,
    reason: &str,
) -> Result<RevertOutcome, OpsError> {
    let d = snapshot_diff(cfg, provider, store, id).await?;
    let managed_keys = Managed::new(cfg).keys();
    let empties = match &cfg.targets {
        Targets::Mx { .. } => !d
            .snapshot
            .records
            .iter()
            .any(|s| s.rtype() == RecordType::Mx && managed_keys.contains(&RrsetKey::of(s))),
        Targets::A { .. } => !d
            .snapshot
            .records
            .iter()
            .any(|s| managed_keys.contains(&RrsetKey::of(s))),
    };
    if empties && !d.changes.is_empty() {
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
    if !force {
        let keys = scope(&d.snapshot, cfg);
        let expected = match last_published(store, cfg, id).await? {
            Some(sets) => sets
                .into_iter()
                .filter(|s| keys.contains(&RrsetKey::of(s)))
                .collect(),
            None => d.snapshot.records.clone(),
        };
        if !d.changes.is_empty() && !same(&expected, &d.live) {
            return Err(OpsError::Refused(
                "the live records were changed outside mxguard since its last change; review `mxguard diff` and use --force".into(),
            ));
        }
    }
    if d.changes.is_empty() {
        let message = format!(
            "{}: live already equals snapshot {id}; nothing to do",
            cfg.name.without_dot()
        );
        return Ok(RevertOutcome {
            diff: d,
            dry_run,
            change_id: None,
            message,
        });
    }
    if dry_run {
        let message = format!(
            "{}: revert to snapshot {id} would make {} change(s)",
            cfg.name.without_dot(),
            d.changes.changes.len()
        );
        return Ok(RevertOutcome {
            diff: d,
            dry_run,
            change_id: None,
            message,
        });
    }
    let before = NewSnapshot {
        domain: cfg.name.clone(),
        provider: cfg.provider.clone(),
        zone: d.snapshot.zone.clone(),
        label: None,
        reason: format!("before revert to snapshot {id}"),
        taken_at: Utc::now(),
        taken_by: by.to_string(),
        records: d.live.clone(),
    };
    let change = NewChange {
        domain: cfg.name.clone(),
        provider: cfg.provider.clone(),
        zone: d.snapshot.zone.clone(),
        epoch,
        before: d.live.clone(),
        after: d.changes.clone(),
        at: Utc::now(),
    };
    let (_, intent) = store
        .begin_change(&before, &change)
        .await
        .map_err(store_err)?;
    if let Err(e) = provider.apply(&d.snapshot.zone, &d.changes).await {
        let _ = store
            .set_change_status(
                intent.id,
                ChangeStatus::Failed,
                Some(&e.to_string()),
                epoch,
                Utc::now(),
            )
            .await;
        return Err(provider_err(e));
    }
    store
        .set_change_status(intent.id, ChangeStatus::Applied, None, epoch, Utc::now())
        .await
        .map_err(store_err)?;
    let live = provider
        .read(&d.snapshot.zone, &scope(&d.snapshot, cfg))
        .await
        .map_err(provider_err)?;
    if !same(&live, &d.snapshot.records) {
        let why = "the provider does not serve the snapshot's records after the revert";
        let _ = store
            .set_change_status(
                intent.id,
                ChangeStatus::Failed,
                Some(why),
                epoch,
                Utc::now(),
            )
            .await;
        return Err(OpsError::Provider(why.into()));
    }
    store
        .set_change_status(intent.id, ChangeStatus::Verified, None, epoch, Utc::now())
        .await
        .map_err(store_err)?;
    let ev = crate::store::NewEvent {
        domain: cfg.name.clone(),
        at: Utc::now(),
        kind: "revert".into(),
        actor: by.to_string(),
        reason: Some(reason.to_string()),
        message: format!("reverted to snapshot {id} (change {})", intent.id),
        evidence: serde_json::json!({"snapshot": id, "change": intent.id, "changes": d.changes}),
    };
    store.append_event(&ev).await.map_err(store_err)?;
    let message = format!(
        "{}: reverted to snapshot {id} by {by}: {reason} (change {})",
        cfg.name.without_dot(),
        intent.id
    );
    Ok(RevertOutcome {
        diff: d,
        dry_run,
        change_id: Some(intent.id),
        message,
    })
}
