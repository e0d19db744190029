//! What a domain's actor reports to the API and CLI: its state, the failback guard, the latest
//! rounds and the combined verdicts.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::health::{Health, TargetVerdict};
use crate::machine::{DomainState, Phase};
use crate::model::{Fqdn, Side};
use crate::mtasts::watch::MtaStsView;
use crate::vantage::Combined;

use super::mirrors::ProviderView;
use super::Actor;

/// A domain's status for the API and CLI.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub domain: Fqdn,
    pub state: DomainState,
    pub active: Option<Side>,
    pub guard: Option<Guard>,
    pub rounds: Vec<Arc<RoundSummary>>,
    pub drift: bool,
    /// The leader's combined verdict per side, with each vantage's vote (empty on a follower).
    pub vantages: Vec<Arc<Combined>>,
    /// The latest look at the domain's MTA-STS policy (`None`: `mta_sts = "off"`, or not yet).
    pub mta_sts: Option<Arc<MtaStsView>>,
    /// A zone served by several providers: what each serves at the latest read, and which are
    /// behind the published side (empty with one provider).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Guard {
    pub hold_secs: u64,
    pub elapsed_secs: u64,
    pub approval_required: bool,
    pub approved: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundSummary {
    pub side: Side,
    pub at: DateTime<Utc>,
    pub pass: bool,
    pub health: Health,
    pub verdicts: Vec<TargetVerdict>,
}

impl Status {
    /// Before the actor's first step: nothing known yet.
    pub fn new(domain: Fqdn) -> Status {
        Status {
            domain,
            state: DomainState::default(),
            active: None,
            guard: None,
            rounds: Vec::new(),
            drift: false,
            vantages: Vec::new(),
            mta_sts: None,
            providers: Vec::new(),
        }
    }
}

impl Actor {
    /// Publishes the status for readers that must not wait on the actor.
    pub(super) fn show(&self) {
        self.shown.send_replace(Arc::new(self.status()));
    }

    pub(super) fn status(&self) -> Status {
        let m = &self.state.machine;
        let guard = (m.phase == Phase::FailbackPending).then(|| Guard {
            hold_secs: self.policy.hold_for(m).as_secs(),
            elapsed_secs: m.primary_up_since.map_or(0, |s| {
                (self.deps.clock.utc() - s).num_seconds().max(0) as u64
            }),
            approval_required: self.policy.approval,
            approved: m.approved,
        });
        Status {
            domain: self.cfg.name.clone(),
            state: m.clone(),
            active: m.published,
            guard,
            rounds: self.rounds.present().cloned().collect(),
            drift: self.drift,
            vantages: self.combined.present().cloned().collect(),
            mta_sts: self.mta_sts.clone(),
            providers: self.provider_views(),
        }
    }
}

impl Actor {
    /// Each provider of a zone served by several: the latest read, with what is behind now.
    fn provider_views(&self) -> Vec<ProviderView> {
        if self.deps.mirrors.is_empty() {
            return Vec::new();
        }
        self.deps
            .provider_names()
            .into_iter()
            .map(|provider| {
                let read = self.views.iter().find(|v| v.provider == provider);
                ProviderView {
                    serves: read.and_then(|v| v.serves),
                    read_error: read.and_then(|v| v.read_error.clone()),
                    behind: self
                        .behind
                        .as_ref()
                        .and_then(|b| b.providers.get(&provider).cloned()),
                    checked_at: read.and_then(|v| v.checked_at),
                    provider,
                }
            })
            .collect()
    }
}
