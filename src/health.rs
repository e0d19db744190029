//! From observations to verdicts. Pure: no I/O, no clock reads (`now` is passed in).
//!
//! * A **target** is Up in a round when at least `resolver_quorum` resolvers resolved it and at
//!   least one of its addresses passed the SMTP probe. One resolver failing is not an outage.
//! * A **side** (the primary or the backup set) passes a round when any of its targets is Up:
//!   senders try every MX, so one working target keeps mail flowing.
//! * Hysteresis, after gdnsd's monitoring rule: a side starts **Unknown**; its first round makes
//!   it Up (pass) or starts counting failures. While not Down, failing rounds accumulate and a
//!   side goes **Down** at `fail_after` of them; a run of `recover_after` consecutive passes
//!   forgives earlier isolated failures. A Down side comes back **Up** only after
//!   `recover_after` consecutive passing rounds.
//! * Mail-aware: a failing round is **hard** when senders would bounce or find nobody (a 5xx, a
//!   refused or timed-out connection, a TLS or certificate failure, no address) and **soft**
//!   when the host answered 4xx: senders queue and retry for days, and a host that rate-limits
//!   its prober answers 421. Only hard rounds count towards `fail_after`; a side whose failing
//!   run includes soft rounds goes Down once that run has lasted `soft_fail_after` (and has
//!   `fail_after` failing rounds). Soft rounds are not confirmed at the fast pace: re-probing a
//!   host that asks to be left alone makes it worse.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{Fqdn, Side};

/// What one address of a target did in a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressResult {
    pub address: IpAddr,
    pub pass: bool,
    /// Failed with a 4xx reply: the host is there and asks senders to retry later.
    pub soft: bool,
    /// The deciding detail: "250 ok" or "554 banner: service unavailable", "timeout in tls"…
    pub reason: String,
}

/// What one resolver said about a target's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolverResult {
    pub resolver: String,
    /// Addresses this resolver returned (A and AAAA); empty when it failed.
    pub addresses: Vec<IpAddr>,
    /// Why it returned nothing (NXDOMAIN, SERVFAIL, timeout…), when it did.
    pub error: Option<String>,
}

impl ResolverResult {
    pub fn resolved(&self) -> bool {
        !self.addresses.is_empty()
    }
}

/// One target in one round: every resolver's answer and every probed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetRound {
    pub target: Fqdn,
    pub resolvers: Vec<ResolverResult>,
    /// Resolvers not asked this round for their query budget, with no earlier good answer to
    /// stand in: no evidence either way (see [`undecided`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unasked: Vec<String>,
    pub addresses: Vec<AddressResult>,
}

/// A target's verdict for one round, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetVerdict {
    pub target: Fqdn,
    pub up: bool,
    /// Down in this round, but only softly: one of its addresses answered 4xx (senders reaching
    /// it queue their mail rather than bounce it).
    pub soft: bool,
    /// Shared by every domain using the target: the host's verdict is made once per round.
    pub reason: Arc<str>,
}

pub fn target_verdict(round: &TargetRound, resolver_quorum: u32) -> TargetVerdict {
    let resolved = round.resolvers.iter().filter(|r| r.resolved()).count();
    let verdict = |up: bool, reason: String| TargetVerdict {
        target: round.target.clone(),
        up,
        soft: !up && resolved as u32 >= resolver_quorum && round.addresses.iter().any(|a| a.soft),
        reason: reason.into(),
    };
    if (resolved as u32) < resolver_quorum {
        let failures: Vec<String> = round
            .resolvers
            .iter()
            .filter(|r| !r.resolved())
            .map(|r| {
                format!(
                    "{}: {}",
                    r.resolver,
                    r.error.as_deref().unwrap_or("no address")
                )
            })
            .collect();
        return verdict(
            false,
            format!(
                "resolved by {resolved} of {} resolvers, quorum is {resolver_quorum} ({})",
                round.resolvers.len(),
                failures.join("; ")
            ),
        );
    }
    match round.addresses.iter().find(|a| a.pass) {
        Some(a) => verdict(true, format!("{} passed: {}", a.address, a.reason)),
        None if round.addresses.is_empty() => verdict(false, "no address to probe".to_string()),
        None => verdict(
            false,
            round
                .addresses
                .iter()
                .map(|a| format!("{}: {}", a.address, a.reason))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// Whether `round` says nothing about its target: too few resolvers resolved it for the
/// quorum, but enough were not asked (their query budget was spent) that they might have made
/// it. Such a round is not a failure — a budget is not an outage — and is not counted at all.
pub fn undecided(round: &TargetRound, resolver_quorum: u32) -> bool {
    let resolved = round.resolvers.iter().filter(|r| r.resolved()).count();
    (resolved as u32) < resolver_quorum
        && (resolved + round.unasked.len()) as u32 >= resolver_quorum
}

/// How a round went for a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// At least one target is Up: senders get through.
    Pass,
    /// No target is Up, and at least one answered 4xx: senders queue and retry.
    Soft,
    /// No target is Up or answering 4xx: senders bounce or find nobody.
    Hard,
}

impl Outcome {
    pub fn passed(self) -> bool {
        self == Outcome::Pass
    }
}

/// A side passes a round when any of its targets is Up; otherwise it fails softly when any of
/// them answered 4xx (senders trying every MX queue at that one).
pub fn side_outcome(verdicts: &[TargetVerdict]) -> Outcome {
    if verdicts.iter().any(|v| v.up) {
        Outcome::Pass
    } else if verdicts.iter().any(|v| v.soft) {
        Outcome::Soft
    } else {
        Outcome::Hard
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Unknown,
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Thresholds {
    pub fail_after: u32,
    pub recover_after: u32,
    /// How long a failing run that includes soft (4xx) rounds lasts before the side is Down.
    pub soft_fail_after: std::time::Duration,
}

/// The running health of one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SideHealth {
    pub side: Side,
    pub health: Health,
    pub since: Option<DateTime<Utc>>,
    /// Failing rounds counted towards Down (not necessarily consecutive; see module doc).
    pub failures: u32,
    /// Of those, the hard ones (only they take a side Down within `fail_after` rounds).
    pub hard_failures: u32,
    /// When the first of the counted failing rounds was (the soft window runs from here).
    pub failing_since: Option<DateTime<Utc>>,
    /// Whether the latest round failed softly.
    pub soft: bool,
    /// Consecutive passing rounds.
    pub passes: u32,
    pub rounds: u64,
}

/// A change of a side's health, with the evidence counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthChange {
    pub side: Side,
    pub from: Health,
    pub to: Health,
    pub failures: u32,
    /// Of the failures, the hard ones: fewer than `fail_after` means the soft window decided.
    pub hard_failures: u32,
    pub passes: u32,
}

impl SideHealth {
    pub fn new(side: Side) -> Self {
        SideHealth {
            side,
            health: Health::Unknown,
            since: None,
            failures: 0,
            hard_failures: 0,
            failing_since: None,
            soft: false,
            passes: 0,
            rounds: 0,
        }
    }

    fn forgive(&mut self) {
        self.failures = 0;
        self.hard_failures = 0;
        self.failing_since = None;
    }

    /// Folds one round in; returns the change of health, if any.
    pub fn observe(
        &mut self,
        outcome: Outcome,
        now: DateTime<Utc>,
        t: Thresholds,
    ) -> Option<HealthChange> {
        self.rounds += 1;
        self.soft = outcome == Outcome::Soft;
        let pass = outcome.passed();
        if pass {
            self.passes += 1;
            if self.passes >= t.recover_after {
                self.forgive();
            }
        } else {
            self.passes = 0;
            self.failures += 1;
            self.hard_failures += u32::from(outcome == Outcome::Hard);
            self.failing_since.get_or_insert(now);
        }
        let soft_window_over = self.failing_since.is_some_and(|since| {
            (now - since)
                .to_std()
                .is_ok_and(|lasted| lasted >= t.soft_fail_after)
        });
        let down_due = self.hard_failures >= t.fail_after
            || (self.failures >= t.fail_after && soft_window_over);
        let next = match (self.health, pass) {
            (Health::Unknown, true) => Health::Up,
            (Health::Down, true) if self.passes >= t.recover_after => Health::Up,
            (Health::Unknown | Health::Up, false) if down_due => Health::Down,
            (h, _) => h,
        };
        if next == self.health {
            return None;
        }
        let change = HealthChange {
            side: self.side,
            from: self.health,
            to: next,
            failures: self.failures,
            hard_failures: self.hard_failures,
            passes: self.passes,
        };
        self.health = next;
        self.since = Some(now);
        if next == Health::Up {
            self.forgive();
        }
        Some(change)
    }

    /// Whether this side deserves fast re-probing: its last round failed hard and it is not
    /// Down yet. A pass ends confirmation (earlier failures still count until forgiven); so
    /// does a soft round (the host asked to be left alone; the soft window is measured in time,
    /// not rounds).
    pub fn confirming(&self) -> bool {
        self.passes == 0 && self.failures > 0 && !self.soft && self.health != Health::Down
    }
}

#[cfg(test)]
mod tests;
