//! Read-only domain routes: the list, one domain's full status, its dry-run plan, its events.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::ApiError;
use super::Api;
use crate::actor::change::ttl_for;
use crate::actor::{ActorError, Status};
use crate::config::DomainConfig;
use crate::health::Health;
use crate::machine::{Override, Phase};
use crate::model::{Side, Ttl};
use crate::plan::Managed;

/// A `{domain}` path parameter naming a configured domain (404 otherwise), checked before the
/// body is read.
pub struct KnownDomain(pub String);

impl FromRequestParts<Api> for KnownDomain {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, api)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        api.domain(&name)?;
        Ok(KnownDomain(name))
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn actor_error(e: ActorError) -> ApiError {
    match e {
        ActorError::Rejected(why) => ApiError::Refused(why),
        ActorError::Gone => {
            ApiError::Unavailable("the domain's controller has stopped; see the server log".into())
        }
        ActorError::Store(why) => ApiError::Internal(format!("store: {why}")),
        ActorError::NotLeader(why) => ApiError::NotLeader(why),
        ActorError::Failed(why) => ApiError::Provider(why),
    }
}

/// The override as the API shows it.
fn override_view(o: &Option<Override>) -> Value {
    match o {
        None => Value::Null,
        Some(Override::Paused { by, reason, at }) => {
            json!({"kind": "paused", "by": by, "reason": reason, "at": rfc3339(*at)})
        }
        Some(Override::Pinned {
            side,
            until,
            by,
            reason,
            at,
        }) => json!({
            "kind": "pinned", "side": side, "until": rfc3339(*until),
            "by": by, "reason": reason, "at": rfc3339(*at)
        }),
    }
}

/// The short form used by the list, serialised straight from the status (the list of 100,000
/// domains built as `serde_json::Value`s cost seconds of CPU a request).
#[derive(Serialize)]
pub struct Summary<'a> {
    domain: &'a str,
    phase: Phase,
    since: Option<String>,
    active: Option<Side>,
    health: SideHealths,
    #[serde(rename = "override")]
    overrides: Value,
    change_in_flight: Option<Side>,
    drift: bool,
    last_round: Option<LastRound>,
}

#[derive(Serialize)]
struct SideHealths {
    primary: Health,
    backup: Health,
}

#[derive(Serialize)]
struct LastRound {
    side: Side,
    at: String,
    pass: bool,
    health: Health,
}

impl<'a> Summary<'a> {
    pub fn of(s: &'a Status) -> Self {
        let m = &s.state;
        Summary {
            domain: s.domain.without_dot(),
            phase: m.phase,
            since: m.since.map(rfc3339),
            active: s.active,
            health: SideHealths {
                primary: m.primary,
                backup: m.backup,
            },
            overrides: override_view(&m.overrides),
            change_in_flight: m.writing(),
            drift: s.drift,
            last_round: s.rounds.iter().max_by_key(|r| r.at).map(|r| LastRound {
                side: r.side,
                at: rfc3339(r.at),
                pass: r.pass,
                health: r.health,
            }),
        }
    }
}

/// The short form used by the list, as a JSON value.
pub fn summary(s: &Status) -> Value {
    json!(Summary::of(s))
}

/// A side's records as config describes them (no provider round trip).
fn side_records(managed: &Managed, side: Side, ttl: Ttl) -> Value {
    match managed.desired(side, ttl) {
        Ok(sets) => json!({"side": side, "records": sets}),
        Err(e) => json!({"side": side, "error": e.to_string()}),
    }
}

/// The full status: summary, verdicts per target, published vs desired records, guard.
pub fn full(s: &Status, cfg: &DomainConfig) -> Value {
    let m = &s.state;
    let managed = Managed::new(cfg);
    let published = match m.published {
        Some(side) => {
            let ttl = m
                .published_ttl
                .and_then(|t| Ttl::new(t).ok())
                .unwrap_or(cfg.failover_ttl);
            side_records(&managed, side, ttl)
        }
        None => {
            json!({"side": null, "note": "the published records match neither side (or were not read yet)"})
        }
    };
    let want = m.in_flight.or(m.published);
    let desired = match want {
        Some(side) => {
            let ttl = ttl_for(
                side,
                cfg.failover_ttl,
                m.ttl_before_failover,
                m.published_ttl,
            );
            side_records(&managed, side, ttl)
        }
        None => Value::Null,
    };
    let rounds: Vec<Value> = s
        .rounds
        .iter()
        .map(|r| {
            json!({
                "side": r.side, "at": rfc3339(r.at), "pass": r.pass, "health": r.health,
                "verdicts": r.verdicts,
            })
        })
        .collect();
    let mut v = summary(s);
    if let Value::Object(map) = &mut v {
        map.insert("mode".into(), json!(cfg.targets.mode().to_string()));
        map.insert("zone".into(), json!(cfg.zone.without_dot()));
        map.insert("provider".into(), json!(cfg.provider));
        map.insert("published".into(), published);
        map.insert("desired".into(), desired);
        map.insert("guard".into(), json!(s.guard));
        map.insert("rounds".into(), json!(rounds));
        map.insert("vantages".into(), json!(s.vantages));
        map.insert("mta_sts".into(), json!(s.mta_sts));
        if !s.providers.is_empty() {
            map.insert("providers".into(), json!(s.providers));
        }
        map.insert("state".into(), json!(s.state));
    }
    v
}

pub async fn list(State(api): State<Api>) -> Result<Response, ApiError> {
    // From what each actor last published: a slow or busy actor never holds up the list.
    let latest: Vec<Arc<Status>> = api
        .app
        .engine
        .domains
        .values()
        .map(|h| h.latest())
        .collect();
    #[derive(Serialize)]
    struct List<'a> {
        domains: Vec<Summary<'a>>,
    }
    let list = List {
        domains: latest.iter().map(|s| Summary::of(s)).collect(),
    };
    let body = serde_json::to_vec(&list)
        .map_err(|e| ApiError::Internal(format!("the list is not serialisable: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub async fn status(
    State(api): State<Api>,
    KnownDomain(domain): KnownDomain,
) -> Result<Json<Value>, ApiError> {
    let (cfg, handle) = api.domain(&domain)?;
    let s = handle.status().await.map_err(actor_error)?;
    Ok(Json(full(&s, cfg)))
}

pub async fn plan(
    State(api): State<Api>,
    KnownDomain(domain): KnownDomain,
) -> Result<Json<Value>, ApiError> {
    let (cfg, handle) = api.domain(&domain)?;
    let plan = handle
        .plan()
        .await
        .map_err(actor_error)?
        .map_err(ApiError::Provider)?;
    Ok(Json(json!({
        "domain": cfg.name.without_dot(),
        "converged": plan.is_empty(),
        "plan": plan,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

pub const EVENTS_DEFAULT: u32 = 100;
pub const EVENTS_MAX: u32 = 1000;

pub async fn events(
    State(api): State<Api>,
    KnownDomain(domain): KnownDomain,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (cfg, _) = api.domain(&domain)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(EVENTS_DEFAULT);
    if limit == 0 || limit > EVENTS_MAX {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {EVENTS_MAX}"
        )));
    }
    let events = api
        .app
        .store
        .events(&cfg.name, q.after, limit)
        .await
        .map_err(ApiError::internal)?;
    let next = (events.len() as u32 == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id, "at": rfc3339(e.at), "kind": e.kind, "actor": e.actor,
                "reason": e.reason, "message": e.message, "evidence": e.evidence,
            })
        })
        .collect();
    // A quiet timeline still says who decides for the domain.
    let lease = api
        .app
        .store
        .lease()
        .await
        .map_err(ApiError::internal)?
        .view();
    Ok(Json(json!({
        "domain": cfg.name.without_dot(),
        "events": events,
        "next_after": next,
        "lease": lease,
    })))
}
