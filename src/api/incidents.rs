//! A domain's incidents, derived from its whole timeline by `crate::incidents` on each request:
//! the list (newest first, paged by `before`) and one incident by id.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::domains::{KnownDomain, EVENTS_MAX};
use super::error::ApiError;
use super::Api;
use crate::config::DomainConfig;
use crate::incidents::{Incident, Timeline};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsQuery {
    before: Option<i64>,
    limit: Option<u32>,
}

pub const INCIDENTS_DEFAULT: u32 = 20;
pub const INCIDENTS_MAX: u32 = 100;

/// Every incident of the domain, oldest first. The timeline is read a page at a time and
/// folded as it comes, so only the incidents are held, not the events.
async fn all(api: &Api, cfg: &DomainConfig) -> Result<Vec<Incident>, ApiError> {
    let mut timeline = Timeline::default();
    let mut after = None;
    loop {
        let page = api
            .app
            .store
            .events(&cfg.name, after, EVENTS_MAX)
            .await
            .map_err(ApiError::internal)?;
        for e in &page {
            timeline.push(e);
        }
        match page.last() {
            Some(last) if page.len() as u32 == EVENTS_MAX => after = Some(last.id),
            _ => break,
        }
    }
    Ok(timeline.finish())
}

pub async fn list(
    State(api): State<Api>,
    KnownDomain(domain): KnownDomain,
    query: Result<Query<IncidentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (cfg, _) = api.domain(&domain)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(INCIDENTS_DEFAULT);
    if limit == 0 || limit > INCIDENTS_MAX {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {INCIDENTS_MAX}"
        )));
    }
    let mut newest_first: Vec<Incident> = all(&api, cfg)
        .await?
        .into_iter()
        .rev()
        .filter(|i| q.before.is_none_or(|b| i.id < b))
        .collect();
    let more = newest_first.len() > limit as usize;
    newest_first.truncate(limit as usize);
    let next = more.then(|| newest_first.last().map(|i| i.id)).flatten();
    Ok(Json(json!({
        "domain": cfg.name.without_dot(),
        "incidents": newest_first,
        "next_before": next,
    })))
}

pub async fn get(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((domain, raw)) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (cfg, _) = api.domain(&domain)?;
    let unknown = || {
        ApiError::UnknownIncident(format!(
            "no incident {raw:?} of {} (GET /v1/domains/{}/incidents lists them)",
            cfg.name.without_dot(),
            cfg.name.without_dot()
        ))
    };
    let id: i64 = raw.parse().map_err(|_| unknown())?;
    let incident = all(&api, cfg)
        .await?
        .into_iter()
        .find(|i| i.id == id)
        .ok_or_else(unknown)?;
    Ok(Json(json!({
        "domain": cfg.name.without_dot(),
        "incident": incident,
    })))
}
