//! `POST /v1/domains/{domain}/drill`: a drill through the running service (`src/drill.rs`),
//! answered with its report once it has run and been recorded in the domain's timeline.

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::body::{Mutation, Reasoned};
use super::domains::KnownDomain;
use super::error::ApiError;
use super::idempotency::Done;
use super::Api;
use crate::drill::run::{self, Ask, Deps};
use crate::drill::Trigger;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillBody {
    reason: String,
    /// A real failover and failback (only on a domain with `drillable = true`).
    #[serde(default)]
    live: bool,
}

impl Reasoned for DrillBody {
    fn reason(&self) -> &str {
        &self.reason
    }
}

pub async fn drill(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<DrillBody>,
) -> Response {
    let work = || async {
        let (cfg, handle) = api.domain(&domain)?;
        // A drill writes to the timeline and, live, moves records: the leader's work.
        api.leader_epoch()?;
        if m.body.live && !cfg.drill.drillable {
            return Err(ApiError::Refused(format!(
                "a live drill fails {} over and back for real, and its configuration does not allow it: set drillable = true on the domain to allow live drills (a drill without live changes nothing)",
                cfg.name.without_dot()
            )));
        }
        let Some(turn) = api.app.engine.drills.try_start(&cfg.name) else {
            return Err(ApiError::Refused(format!(
                "a drill of {} is already running; retry when it is done",
                cfg.name.without_dot()
            )));
        };
        let deps = Deps {
            handle: handle.clone(),
            access: api
                .app
                .providers
                .access_for(&api.app.config, &cfg.provider)
                .await,
            store: api.app.store.clone(),
            events: api.app.engine.events.clone(),
            dns: api.app.engine.dns.clone(),
        };
        let ask = Ask {
            trigger: Trigger::Operator,
            by: caller.name.clone(),
            reason: m.body.reason.clone(),
            live: m.body.live,
        };
        let cfg = cfg.clone();
        // A task of its own: a request cut short (its client gone, `request_timeout`) must not
        // stop a live drill between its failover and its failback, nor lose the report.
        let task = tokio::spawn(async move {
            let _turn = turn;
            let report = run::run(&cfg, &deps, &ask).await;
            let recorded = run::record(&deps, &report).await;
            (report, recorded)
        });
        let (report, recorded) = task
            .await
            .map_err(|e| ApiError::internal(format!("the drill task failed: {e}")))?;
        let event = recorded.map_err(ApiError::internal)?;
        Ok(Done::ok(json!({
            "message": report.message(),
            "event_id": event.id,
            "report": report,
        })))
    };
    api.once(&caller, &m, work).await
}
