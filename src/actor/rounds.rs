//! Probe rounds in: this vantage's verdicts recorded, partitions reported, and (on the leader)
//! every vantage's fresh verdicts combined per side and handed to the machine.

use std::sync::Arc;

use serde_json::json;

use crate::events::EventKind;
use crate::health::Health;
use crate::machine::{EarlySign, Input, Phase};
use crate::model::Side;
use crate::monitor::RoundReport;
use crate::vantage::{self, VantageReport};

use super::{Actor, RoundSummary};

impl Actor {
    /// The rounds taken from the inbox together (the newest per side) are all recorded before
    /// the leader decides once on them: deciding after each would judge the other side on its
    /// previous round, older by however long the actor was behind.
    pub(super) async fn on_rounds(&mut self, batch: Vec<(RoundReport, VantageReport)>) {
        let mut primary_sign = None;
        for (r, own) in batch {
            if let Some(sign) = self.on_round(r, own).await {
                primary_sign = Some(sign);
            }
        }
        if self.leading {
            self.decide().await;
            if let Some(sign) = primary_sign {
                self.early_signs(sign).await;
            }
        }
    }

    /// Records one round; returns the primary's early sign (`Some(None)`: a quiet primary
    /// round) unless this vantage is cut off from its resolvers, when it says nothing.
    async fn on_round(&mut self, r: RoundReport, own: VantageReport) -> Option<Option<EarlySign>> {
        // The primary's early signs are read before the round's verdicts move into its summary.
        let primary_sign =
            (r.side == Side::Primary).then(|| early_sign(&r, self.cfg.checks.recover_after));
        // Shared with every status published until the side's next round (not copied into
        // each).
        self.rounds[r.side] = Some(Arc::new(RoundSummary {
            side: r.side,
            at: r.at,
            pass: r.pass,
            health: r.health.health,
            verdicts: r.verdicts,
        }));
        if r.pass {
            // One series per configured domain (bounded by the configuration): the alert on
            // "no successful round for N minutes" needs it per domain. The handle is looked up
            // once, not at each of the domain's rounds.
            let name = &self.cfg.name;
            self.last_round_gauge
                .get_or_insert_with(|| {
                    metrics::gauge!(crate::probe::metrics::LAST_SUCCESSFUL_ROUND, "domain" => name.without_dot().to_string())
                })
                .set(r.at.timestamp_millis() as f64 / 1000.0);
        }
        if let Some(c) = &r.change {
            tracing::info!(domain = %self.cfg.name, vantage = %own.vantage, side = %r.side, from = ?c.from, to = ?c.to, "this vantage's verdict changed");
        }
        self.note_partition(&own).await;
        let cut_off = own.partitioned.is_some();
        self.own[r.side] = Some(own);
        primary_sign.filter(|_| !cut_off)
    }

    /// The leader's own primary round, for early TTL lowering (`src/machine.rs`): only while
    /// it is on, or a lowered TTL waits to be restored; a vantage cut off from its resolvers
    /// says nothing about the primary.
    async fn early_signs(&mut self, sign: Option<EarlySign>) {
        // Nothing lowered and no sign: nothing to decide (and no step to run — this is every
        // primary round of every domain).
        let lowered = self.state.machine.early_ttl.is_some();
        if !lowered && (sign.is_none() || !self.policy.early_ttl) {
            return;
        }
        let _ = self
            .input(Input::PrimaryRound { sign }, "automation", None)
            .await;
    }

    /// Followers serve reads: keep the leader's persisted state at hand (once per batch of
    /// rounds, not once per side; read in a batch with other domains' through the loader).
    pub(super) async fn follow_state(&mut self) {
        if let Ok(Some(row)) = self.loader.state(&self.cfg.name).await {
            if let Ok(state) = serde_json::from_value(row.state) {
                self.state = state;
                self.version = Some(row.version);
            }
        }
    }

    /// Reports once per episode that this vantage is cut off (it stops voting) or back.
    pub(super) async fn note_partition(&mut self, own: &VantageReport) {
        let now = own.partitioned.is_some();
        if now == self.partitioned {
            return;
        }
        self.partitioned = now;
        let (kind, message) = match &own.partitioned {
            Some(why) => (
                EventKind::VantagePartitioned,
                format!("vantage {} is cut off and stops voting: {why}", own.vantage),
            ),
            None => (
                EventKind::VantageReachable,
                format!(
                    "vantage {} reaches its resolvers again and votes",
                    own.vantage
                ),
            ),
        };
        tracing::warn!(domain = %self.cfg.name, vantage = %own.vantage, %message, "vantage");
        self.event(kind, message, json!({"vantage": own})).await;
    }

    /// The leader combines every vantage's fresh verdicts per side and tells the machine.
    pub(super) async fn decide(&mut self) {
        let me = self.deps.fence.vantage().to_string();
        let mut reports: Vec<VantageReport> = self.own.present().cloned().collect();
        reports.extend(
            self.deps
                .board
                .others(&self.cfg.name)
                .into_iter()
                .filter(|r| r.vantage != me),
        );
        let fresh = vantage::freshness(&self.cfg.checks);
        let clocks = vantage::Clocks {
            now: self.deps.clock.utc(),
            own: self
                .own
                .present()
                .map(|r| r.at)
                .max()
                .map(|at| (me.as_str(), at)),
        };
        for side in Side::BOTH {
            let c = vantage::combine(side, &reports, clocks, fresh, self.deps.vantage_quorum);
            let before = self.combined[side]
                .as_ref()
                .map_or(Health::Unknown, |c| c.health);
            if c.health != before {
                let message = format!("{side} {before:?} → {:?}: {}", c.health, c.summary());
                tracing::info!(domain = %self.cfg.name, %side, to = ?c.health, evidence = %c.summary(), "health changed");
                self.event(
                    EventKind::Health,
                    message,
                    json!({"side": side, "combined": c}),
                )
                .await;
            }
            self.combined[side] = Some(Arc::new(c));
        }
        let health = |side: Side| {
            self.combined[side]
                .as_ref()
                .map_or(Health::Unknown, |c| c.health)
        };
        let (primary, backup) = (health(Side::Primary), health(Side::Backup));
        // Unknown settles on the first verdicts and decides at the next round (machine.rs), so
        // while it is Unknown every round goes in, changed or not: a domain whose primary is
        // already down when mxguard starts must not wait for a health change to fail over.
        let unknown = self.state.machine.phase == Phase::Unknown;
        if unknown
            || self.settled
            || (primary, backup) != (self.state.machine.primary, self.state.machine.backup)
        {
            self.settled = false;
            let _ = self
                .input(Input::Health { primary, backup }, "automation", None)
                .await;
            // Settled on the first verdicts just now: the next round decides, even unchanged.
            self.settled = unknown && self.state.machine.phase != Phase::Unknown;
        }
    }
}

/// What a primary round says ahead of a verdict: a 4xx answer (soft), a hard failing round
/// (being confirmed, or Down), a pass while earlier failures are not yet forgiven (a blip), or
/// nothing (`None`: quiet, all failures forgiven after `recover_after` passes).
pub(super) fn early_sign(r: &RoundReport, recover_after: u32) -> Option<EarlySign> {
    let reason = || {
        let failing: Vec<String> = r
            .verdicts
            .iter()
            .filter(|v| !v.up)
            .map(|v| format!("{}: {}", v.target, v.reason))
            .collect();
        if failing.is_empty() {
            "no target's reason recorded".to_string()
        } else {
            failing.join("; ")
        }
    };
    let h = &r.health;
    match (r.pass, h.soft) {
        (false, true) => Some(EarlySign::Soft { reason: reason() }),
        (false, false) => Some(EarlySign::Hard { reason: reason() }),
        (true, _) if h.failures > 0 => Some(EarlySign::Failed {
            failures: h.failures,
            reason: format!(
                "passing again, {} of the {recover_after} passes that forgive them",
                h.passes
            ),
        }),
        (true, _) => None,
    }
}
