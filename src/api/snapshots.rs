//! Snapshots of the records mxguard manages: list, take, read, compare with what is live, and
//! revert: checked and planned here (`ops::plan_revert`: refused over hand edits unless
//! `force`), written by the domain's actor like any other change.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::body::{one_line, Mutation, Reasoned};
use super::domains::{actor_error, rfc3339};
use super::error::ApiError;
use super::idempotency::Done;
use super::Api;
use crate::actor::Revert;
use crate::config::DomainConfig;
use crate::model::Fqdn;
use crate::ops::{self, OpsError};
use crate::store::Snapshot;

const LIST_DEFAULT: u32 = 50;
const LIST_MAX: u32 = 500;

fn ops_error(e: OpsError) -> ApiError {
    match e {
        OpsError::NoSnapshot(id) => ApiError::UnknownSnapshot(format!("no snapshot {id}")),
        OpsError::Refused(why) => ApiError::Refused(why),
        OpsError::Provider(why) => ApiError::Provider(why),
        OpsError::Store(why) => ApiError::Internal(format!("store: {why}")),
    }
}

pub fn view(s: &Snapshot) -> Value {
    json!({
        "id": s.id, "domain": s.domain.without_dot(), "provider": s.provider,
        "zone": s.zone.without_dot(), "label": s.label, "reason": s.reason,
        "taken_at": rfc3339(s.taken_at), "taken_by": s.taken_by, "records": s.records,
    })
}

/// A `{id}` path parameter naming an existing snapshot (404 otherwise).
pub struct KnownSnapshot(pub Snapshot);

impl FromRequestParts<Api> for KnownSnapshot {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, api)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let unknown = || ApiError::UnknownSnapshot(format!("no snapshot {raw:?}"));
        let id: i64 = raw.parse().map_err(|_| unknown())?;
        let snap = api
            .app
            .store
            .snapshot(id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(unknown)?;
        Ok(KnownSnapshot(snap))
    }
}

impl Api {
    /// The configuration of the domain a snapshot belongs to.
    fn snapshot_domain(&self, s: &Snapshot) -> Result<&DomainConfig, ApiError> {
        self.app
            .config
            .domains
            .iter()
            .find(|d| d.name == s.domain)
            .map(|d| &**d)
            .ok_or_else(|| {
                ApiError::Refused(format!(
                    "snapshot {} belongs to {}, which is no longer configured",
                    s.id, s.domain
                ))
            })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    domain: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(api): State<Api>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(LIST_DEFAULT);
    if limit == 0 || limit > LIST_MAX {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {LIST_MAX}"
        )));
    }
    let domain: Option<Fqdn> = match &q.domain {
        Some(d) => Some(api.domain(d)?.0.name.clone()),
        None => None,
    };
    let snaps = api
        .app
        .store
        .snapshots(domain.as_ref(), limit)
        .await
        .map_err(ApiError::internal)?;
    let list: Vec<Value> = snaps.iter().map(view).collect();
    Ok(Json(json!({ "snapshots": list })))
}

pub async fn get(KnownSnapshot(s): KnownSnapshot) -> Json<Value> {
    Json(view(&s))
}

pub async fn diff(
    State(api): State<Api>,
    KnownSnapshot(s): KnownSnapshot,
) -> Result<Json<Value>, ApiError> {
    let cfg = api.snapshot_domain(&s)?;
    // A diff changes nothing: it reads at background priority, behind changes, within a bound.
    let provider = api.background(cfg).await?;
    let d = bounded(ops::snapshot_diff(cfg, &provider, &api.app.store, s.id))
        .await?
        .map_err(ops_error)?;
    Ok(Json(json!({
        "snapshot": view(&d.snapshot),
        "live": d.live,
        "identical": d.changes.is_empty(),
        "changes": d.changes,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeBody {
    domain: String,
    #[serde(default)]
    zone: bool,
    label: Option<String>,
    reason: String,
}

impl Reasoned for TakeBody {
    fn reason(&self) -> &str {
        &self.reason
    }
}

pub async fn take(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    m: Mutation<TakeBody>,
) -> Response {
    let work = || async {
        let b = &m.body;
        if let Some(label) = &b.label {
            one_line("label", label, 100)?;
        }
        let (cfg, _) = api.domain(&b.domain)?;
        let provider = api.provider(cfg).await?;
        let snap = ops::take_snapshot(
            cfg,
            &provider,
            &api.app.store,
            b.zone,
            b.label.clone(),
            &b.reason,
            &caller.name,
        )
        .await
        .map_err(ops_error)?;
        let message = format!(
            "snapshot {} of {} ({} RRset(s){}) taken by {}: {}",
            snap.id,
            cfg.name.without_dot(),
            snap.records.len(),
            if b.zone { ", whole zone" } else { "" },
            caller.name,
            b.reason
        );
        Ok(Done {
            status: StatusCode::CREATED,
            body: json!({"message": message, "snapshot": view(&snap)}),
        })
    };
    api.once(&caller, &m, work).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertBody {
    reason: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
}

impl Reasoned for RevertBody {
    fn reason(&self) -> &str {
        &self.reason
    }
}

pub async fn revert(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownSnapshot(s): KnownSnapshot,
    m: Mutation<RevertBody>,
) -> Response {
    let work = || async {
        let b = &m.body;
        let cfg = api.snapshot_domain(&s)?;
        if !b.dry_run {
            api.leader_epoch()?;
        }
        // A dry run changes nothing: it reads at background priority, within a bound.
        let provider = if b.dry_run {
            api.background(cfg).await?
        } else {
            api.provider(cfg).await?
        };
        let plan = bounded(ops::plan_revert(
            cfg,
            &provider,
            &api.app.store,
            s.id,
            b.force,
        ))
        .await?
        .map_err(ops_error)?;
        let (message, change_id) = if b.dry_run || plan.changes.is_empty() {
            let m = plan.summary(cfg);
            (
                if b.dry_run {
                    format!("dry run: {m}; nothing was changed")
                } else {
                    m
                },
                None,
            )
        } else {
            // Written by the domain's actor: the machine decides (a Down side, a change in
            // flight, a pin elsewhere refuse it) and the one publish writes it, fenced.
            let handle = api.app.engine.domains.get(&cfg.name).ok_or_else(|| {
                ApiError::Unavailable(format!(
                    "the controller of {} is not running",
                    cfg.name.without_dot()
                ))
            })?;
            let done = handle
                .revert(Revert {
                    snapshot: s.id,
                    side: plan.side,
                    desired: plan.desired.clone(),
                    by: caller.name.clone(),
                    reason: b.reason.clone(),
                })
                .await
                .map_err(actor_error)?;
            (done.message, done.change_id)
        };
        Ok(Done::ok(json!({
            "message": message,
            "dry_run": b.dry_run,
            "change_id": change_id,
            "changes": plan.changes,
            "live_before": plan.diff.live,
            "snapshot": view(&plan.diff.snapshot),
        })))
    };
    api.once(&caller, &m, work).await
}

/// A read for a diff or a plan, given up (502, nothing changed) when the provider takes longer
/// than a dry run may.
async fn bounded<T>(work: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
    let limit = crate::actor::DRY_RUN_TIMEOUT;
    tokio::time::timeout(limit, work).await.map_err(|_| {
        ApiError::Provider(format!(
            "the provider did not answer within {}s; nothing was changed",
            limit.as_secs()
        ))
    })
}
