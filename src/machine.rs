//! The failover state machine. Pure: `step(state, input, now, policy) -> effects`, and
//! `next_deadline` says when it next wants a `Tick`. No I/O, no clock, no randomness — the
//! per-domain actor feeds it verdicts, observations, change outcomes and operator commands,
//! persists the new state, then carries out the effects.
//!
//! Rules (DESIGN.md, "The failover state machine"): never publish a side that is Down at the
//! moment of the decision; fail back only after the primary has been Up for the whole hold;
//! an override (pause, pin) beats automation and is lifted only by an operator or its expiry;
//! at most one change in flight; too many transitions in a window pause automation.
//!
//! **Early TTL lowering** (`early_ttl`, on by default): when the primary shows early signs of
//! trouble, the machine republishes the *same* primary records with the failover TTL, so that
//! if a failover comes, caches turn over within seconds instead of the old TTL; once the
//! primary is quiet again for the hold, the original TTL is restored. Both writes are
//! `Effect::Publish` of the primary, carried out by the one write path. The rules:
//!
//! * **What is a sign** ([`EarlySign`]): a round answered 4xx (soft), or a pass while failing
//!   rounds are not yet forgiven (a blip). A hard failing round is a sign too, but it never
//!   *starts* a lowering: it is being confirmed, and within `fail_after` confirmations it is
//!   either Down (the failover decides; a lowering then turns no cache over and would only
//!   delay it and spend a write during a mass outage) or a blip (which lowers at that pass).
//! * **When it lowers**: on a sign, with `early_ttl` on, in phase `Primary` with the primary's
//!   records published (records compared, TTL aside) and their TTL known and above the
//!   failover TTL, the primary not Down, no override (paused: observe only; pinned: the
//!   operator decided and no automated failover will come), no change in flight, not already
//!   lowered, and at most one lowering per hold (counted from the previous lowering).
//! * **It never changes record content**: the write publishes the primary records it found
//!   (the one write path refuses a TTL-only publish whose plan would change content).
//! * **The original TTL is never lost**: [`EarlyTtl::original`] is persisted with the state
//!   before the write; a restart restores it, and status shows a low TTL left behind.
//! * **When it restores**: after a round with no sign (failures forgiven: `recover_after`
//!   consecutive passes) the hold runs (`failback.hold`, else 10 min); a sign restarts it; at
//!   its end, under the same conditions as a lowering (phase `Primary`, primary published and
//!   Up, no override, nothing in flight), the original TTL is published. Turning `early_ttl`
//!   off stops new lowerings; one already made is still restored by this rule.
//! * **A move supersedes it**: a failover (automated or an operator's), failback or revert
//!   decided while a TTL write is in flight does not wait for it (the actor stops that write);
//!   the TTL remembered before the failover is the original one, so the failback publishes the
//!   primary at its original TTL. A TTL write that fails is not retried (it never holds up a
//!   move): a failed lowering counts as lowered (it may have landed) and is restored later; a
//!   failed restore is tried again after another hold.

//!
//! **Maintenance windows** ([`Maintenance`], `Command::Maintenance`): an operator schedules
//! `side` for `[start, end)`. The rules:
//!
//! * **The TTL first**: when the window moves the records (the side is not the one published),
//!   the primary's records are republished with the failover TTL one live TTL (and
//!   [`LOWER_MARGIN`] for the write) before the start (at once if that time has passed), through the same TTL write as an early lowering but
//!   whatever `early_ttl` says and however recently one was made — so caches hold the short
//!   TTL when the move comes. Quiet rounds do not restore it while the window is ahead.
//! * **The move at the start**: the side is pinned until the end and published, under the
//!   rules of an operator's pin (a Down side is never published: the window is then dropped,
//!   with an alert). A move the pin cannot make at once (a change in flight) is made at the
//!   next step.
//! * **Back after the end**: the pin expires and automation fails back through the guarded
//!   path (hold, approval); the failback publishes the TTL that was live before the lowering.
//!   At the first observation of the records after the primary is published again, a TTL
//!   below the one live when the window was scheduled is alerted (`alert.maintenance`).
//! * **Cancelable**: before the start, the window goes and a TTL it lowered is restored after
//!   the hold like an early one; during it, the pin goes too and the failback follows the
//!   usual guard.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::EventKind;
use crate::health::Health;
use crate::model::Side;

pub type Time = DateTime<Utc>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No full probe round yet, or the published records match neither side.
    Unknown,
    Primary,
    FailingOver,
    OnBackup,
    FailbackPending,
    FailingBack,
    BothDown,
}

/// Who paused automation. Persisted and shown as a name (`flap-guard` for the guard), so states
/// and API answers keep their shape; the machine tells the two apart by type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum PausedBy {
    /// The flap guard, after too many automated moves (an incident stays open while it holds).
    FlapGuard,
    /// An operator: the API token's name.
    Operator(String),
}

impl PausedBy {
    const FLAP_GUARD: &'static str = "flap-guard";
}

impl From<String> for PausedBy {
    fn from(name: String) -> Self {
        if name == PausedBy::FLAP_GUARD {
            PausedBy::FlapGuard
        } else {
            PausedBy::Operator(name)
        }
    }
}

impl From<PausedBy> for String {
    fn from(by: PausedBy) -> String {
        by.to_string()
    }
}

impl std::fmt::Display for PausedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PausedBy::FlapGuard => f.write_str(PausedBy::FLAP_GUARD),
            PausedBy::Operator(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Override {
    Paused {
        by: PausedBy,
        reason: String,
        at: Time,
    },
    Pinned {
        side: Side,
        until: Time,
        by: String,
        reason: String,
        at: Time,
    },
}

/// Everything the machine remembers; persisted as JSON after every step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainState {
    pub phase: Phase,
    pub since: Option<Time>,
    /// What the provider serves, as last observed: which side's records, if either.
    pub published: Option<Side>,
    /// The TTL of the managed records when last observed.
    pub published_ttl: Option<u32>,
    /// The TTL that was live before the last failover (restored on failback; sizes the hold).
    pub ttl_before_failover: Option<u32>,
    pub primary: Health,
    pub backup: Health,
    pub primary_up_since: Option<Time>,
    #[serde(rename = "override")]
    pub overrides: Option<Override>,
    /// Failback approved by an operator (only meaningful with `approval`).
    pub approved: bool,
    /// The side a change in flight is publishing.
    pub in_flight: Option<Side>,
    /// Times of recent automated moves, for the flap guard.
    pub moves: VecDeque<Time>,
    /// The current or last incident. Persisted, so notifications derive the same PagerDuty
    /// dedup key from it after a restart; absent in states saved before it existed.
    #[serde(default)]
    pub incident: Option<Incident>,
    /// Why compliant senders would refuse the backup — the domain's enforce-mode MTA-STS
    /// policy does not list it (`src/mtasts.rs`), or every DANE sender would defer mail to it
    /// (`src/dane.rs`) — as last evaluated; `None`: they would deliver to it, or
    /// `mta_sts = "off"`.
    #[serde(default)]
    pub mta_sts_refused: Option<String>,
    /// Under `mta_sts = "block"`: an automated failover was refused for it while the primary
    /// is Down (alerted once; cleared when the primary is no longer Down or the backup passes).
    #[serde(default)]
    pub mta_sts_blocked: bool,
    /// The primary's TTL lowered ahead of a possible failover (`None`: not lowered).
    #[serde(default)]
    pub early_ttl: Option<EarlyTtl>,
    /// When the last early TTL lowering began: at most one per hold.
    #[serde(default)]
    pub ttl_lowered_at: Option<Time>,
    /// The maintenance window scheduled or under way (module doc).
    #[serde(default)]
    pub maintenance: Option<Maintenance>,
}

/// A maintenance window: `side` is used from `start` until `end` (module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub side: Side,
    pub start: Time,
    pub end: Time,
    pub by: String,
    pub reason: String,
    /// When it was scheduled.
    pub at: Time,
    /// The records' TTL when it was scheduled: what must be live again after it.
    pub ttl: Option<u32>,
    pub stage: MaintenanceStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaintenanceStage {
    /// Before the start (the TTL may be lowered already).
    Scheduled,
    /// Pinned to its side until the end.
    Started,
    /// Over: waiting for the records (and their TTL) to be back.
    Ended,
}

impl Maintenance {
    /// When the TTL is lowered: one live TTL before the start, and [`LOWER_MARGIN`] more for
    /// the write itself (a cache filled just before it lands holds the old TTL from then).
    pub fn lower_at(&self, live_ttl: u32) -> Time {
        self.start - chrono::Duration::seconds(i64::from(live_ttl)) - LOWER_MARGIN
    }
}

/// How much earlier than one TTL before a window's start its lowering is written.
pub const LOWER_MARGIN: chrono::Duration = chrono::Duration::seconds(10);

/// A TTL lowered early, and what restores it (module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlyTtl {
    /// The TTL the primary's records had before the lowering: what is restored.
    pub original: u32,
    /// The TTL written (the failover TTL).
    pub lowered: u32,
    pub stage: TtlStage,
    /// When the lowering was decided.
    pub since: Time,
    /// The sign that caused it.
    pub why: String,
    /// Since when the primary is quiet (no sign); the restore comes a hold after it.
    pub quiet_since: Option<Time>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtlStage {
    /// The write lowering the TTL is in flight.
    Lowering,
    /// Lowered (or a lowering that failed and may have landed): restored when quiet.
    Lowered,
    /// The write restoring the original TTL is in flight.
    Restoring,
}

/// An early sign of trouble at the primary, short of a Down verdict (the leader's own round).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "sign", rename_all = "snake_case")]
pub enum EarlySign {
    /// The primary answered 4xx: senders queue; it is Down only after the soft window.
    Soft { reason: String },
    /// The primary passes again while failing rounds are not yet forgiven (a blip).
    Failed { failures: u32, reason: String },
    /// A hard failing round, being confirmed (or Down): breaks the quiet, never lowers.
    Hard { reason: String },
}

impl EarlySign {
    /// Whether this sign starts a lowering (module doc: a hard round is being confirmed).
    fn lowers(&self) -> bool {
        !matches!(self, EarlySign::Hard { .. })
    }

    fn describe(&self) -> String {
        match self {
            EarlySign::Soft { reason } => format!("the primary answers 4xx ({reason})"),
            EarlySign::Failed { failures, reason } => {
                format!("the primary failed {failures} round(s) not yet forgiven ({reason})")
            }
            EarlySign::Hard { reason } => format!("the primary failed a round ({reason})"),
        }
    }
}

/// Which TTL write is in flight, for the actor to build its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlWrite {
    /// The primary's records with this (the failover) TTL.
    Lower(u32),
    /// The primary's records with their original TTL.
    Restore(u32),
}

/// The timeline's record of a TTL change: typed evidence (`ttl_lowered`, `ttl_restored`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TtlChange {
    #[serde(skip)]
    pub kind: EventKind,
    pub old_ttl: u32,
    pub new_ttl: u32,
    pub why: String,
}

/// An incident: from the step that left normal operation (a failover started, both sides
/// Down, the flap guard paused automation) until the step that is back on the primary's records
/// with the primary Up and automation not paused by the flap guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub since: Time,
    /// `None` while the incident is open.
    pub until: Option<Time>,
}

impl Default for DomainState {
    fn default() -> Self {
        DomainState {
            phase: Phase::Unknown,
            since: None,
            published: None,
            published_ttl: None,
            ttl_before_failover: None,
            primary: Health::Unknown,
            backup: Health::Unknown,
            primary_up_since: None,
            overrides: None,
            approved: false,
            in_flight: None,
            moves: VecDeque::new(),
            incident: None,
            mta_sts_refused: None,
            mta_sts_blocked: false,
            early_ttl: None,
            ttl_lowered_at: None,
            maintenance: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `None`: max(10 min, 2 × ttl_before_failover).
    pub hold: Option<Duration>,
    pub approval: bool,
    /// More than `flap_max` automated moves within `flap_window` pause automation.
    pub flap_max: usize,
    pub flap_window: Duration,
    /// `drift = "correct"`: when the published records stop matching either side, publish the
    /// side that was published again (an automated move like any other).
    pub correct_drift: bool,
    /// What an MTA-STS finding does to a failover (`mta_sts` in the domain's config).
    pub mta_sts: MtaStsAction,
    /// `early_ttl`: lower the primary's TTL to the failover TTL at early signs (module doc).
    pub early_ttl: bool,
    /// The domain's failover TTL: what a lowering writes.
    pub failover_ttl: u32,
}

/// `mta_sts = "warn" | "block" | "off"`: what the machine does with a backup that compliant
/// senders would refuse under the domain's enforce-mode MTA-STS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsAction {
    /// Fail over anyway, with a critical warning naming what compliant senders will do.
    #[default]
    Warn,
    /// Refuse automated failovers to that backup, with an alert (operators may still move).
    Block,
    /// Do not look at the policy.
    Off,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            hold: None,
            approval: false,
            flap_max: 4,
            flap_window: Duration::from_secs(3600),
            correct_drift: false,
            mta_sts: MtaStsAction::Warn,
            early_ttl: true,
            failover_ttl: 60,
        }
    }
}

pub const MIN_HOLD: Duration = Duration::from_secs(600);

impl Policy {
    pub fn hold_for(&self, state: &DomainState) -> Duration {
        self.hold.unwrap_or_else(|| {
            let ttl = Duration::from_secs(u64::from(state.ttl_before_failover.unwrap_or(0)) * 2);
            MIN_HOLD.max(ttl)
        })
    }

    /// How long the primary stays quiet before a lowered TTL is restored, and the least time
    /// between two lowerings: the configured hold, else [`MIN_HOLD`] (the TTL-based default of
    /// the failback hold is about caches after a move, which a lowering does not make).
    pub fn early_hold(&self) -> Duration {
        self.hold.unwrap_or(MIN_HOLD)
    }
}

/// An operator's request, with who and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Failover,
    Failback,
    Pin {
        side: Side,
        until: Time,
    },
    Unpin,
    /// Schedule a maintenance window (module doc).
    Maintenance {
        side: Side,
        start: Time,
        end: Time,
    },
    CancelMaintenance,
    Pause,
    Resume,
    Approve,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The sides' health after a probe round.
    Health { primary: Health, backup: Health },
    /// What the provider serves now (read by the actor).
    Observed {
        published: Option<Side>,
        ttl: Option<u32>,
    },
    /// The change in flight is visible at the authoritative servers.
    ChangeVerified { side: Side },
    /// The change in flight failed (the actor retries with backoff).
    ChangeFailed { side: Side, error: String },
    /// A deadline from `next_deadline` passed.
    Tick,
    /// The leader's own probe round of the primary: an early sign, or `None` when quiet.
    PrimaryRound { sign: Option<EarlySign> },
    /// The domain's MTA-STS policy was evaluated: why compliant senders would refuse the
    /// backup (`None`: they would not).
    MtaSts { refused: Option<String> },
    Command {
        command: Command,
        by: String,
        reason: String,
    },
    /// An operator restores a snapshot whose managed records are `side`'s (the actor refuses a
    /// snapshot that holds neither side's records before asking).
    Revert {
        side: Side,
        snapshot: i64,
        by: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Make `side`'s records the published ones (snapshot, intent, apply, verify): the
    /// records of snapshot `from` when an operator reverts to it, else the side's own.
    Publish {
        side: Side,
        why: String,
        from: Option<i64>,
    },
    /// The machine moved from one phase to another (recorded as a `transition`).
    Transition { from: Phase, to: Phase, why: String },
    /// Record in the timeline (and notify: an alert kind means someone should look).
    Event { kind: EventKind, message: String },
    /// The command was refused; nothing changed.
    Rejected { reason: String },
    /// A TTL lowered or restored (recorded with its typed evidence).
    Ttl(TtlChange),
}

impl Effect {
    /// What the timeline records for this effect: its kind and message (`None`: not recorded).
    pub fn recorded(&self) -> Option<(EventKind, String)> {
        match self {
            Effect::Transition { from, to, why } => {
                Some((EventKind::Transition, format!("{from:?} → {to:?}: {why}")))
            }
            Effect::Event { kind, message } => Some((*kind, message.clone())),
            Effect::Ttl(c) => Some((
                c.kind,
                format!("primary TTL {} → {} s: {}", c.old_ttl, c.new_ttl, c.why),
            )),
            Effect::Publish { .. } | Effect::Rejected { .. } => None,
        }
    }
}

fn healthy(h: Health) -> bool {
    h == Health::Up
}

impl DomainState {
    fn health(&self, side: Side) -> Health {
        match side {
            Side::Primary => self.primary,
            Side::Backup => self.backup,
        }
    }

    pub fn change_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The TTL write in flight, if any (a publish of the primary's own records).
    pub fn ttl_write(&self) -> Option<TtlWrite> {
        let e = self.early_ttl.as_ref()?;
        match e.stage {
            TtlStage::Lowering => Some(TtlWrite::Lower(e.lowered)),
            TtlStage::Restoring => Some(TtlWrite::Restore(e.original)),
            TtlStage::Lowered => None,
        }
    }

    /// The side whose records a write in flight publishes: a move's, or the primary's for a
    /// TTL write. What the actor resumes after a restart.
    pub fn writing(&self) -> Option<Side> {
        self.in_flight.or(self.ttl_write().map(|_| Side::Primary))
    }

    fn enter(&mut self, phase: Phase, now: Time, fx: &mut Vec<Effect>, why: String) {
        if self.phase != phase {
            fx.push(Effect::Transition {
                from: self.phase,
                to: phase,
                why,
            });
            self.phase = phase;
            self.since = Some(now);
        }
    }

    /// Starts publishing `side`; the caller checked that it is not Down and nothing is in flight.
    fn publish(
        &mut self,
        side: Side,
        now: Time,
        fx: &mut Vec<Effect>,
        why: String,
        automated: bool,
    ) {
        if side == Side::Backup && self.published != Some(Side::Backup) {
            // A TTL lowered early is not the TTL to restore on failback: the original is.
            let original = self.early_ttl.as_ref().map(|e| e.original);
            self.ttl_before_failover = original.or(self.published_ttl).or(self.ttl_before_failover);
            if let Some(refused) = &self.mta_sts_refused {
                fx.push(Effect::Event {
                    kind: EventKind::MtaStsFailover,
                    message: format!(
                        "failing over ({why}) to a backup that compliant senders refuse: {refused}; their mail queues and then bounces until the primary is back or the backup passes (listed by the policy, its TLSA matching)"
                    ),
                });
            }
        }
        if side == Side::Backup {
            // The failback hold counts from the move to the backup: a primary that was Up all
            // along (an operator's failover or pin) must still stay Up for the whole hold.
            self.primary_up_since = self.primary_up_since.map(|t| t.max(now));
        }
        let phase = match side {
            Side::Primary => Phase::FailingBack,
            Side::Backup => Phase::FailingOver,
        };
        // A move ends an early lowering, and supersedes a TTL write in flight (the actor stops
        // it): a failover remembers the original TTL (above) and the failback publishes it; a
        // move to the primary publishes its own TTL.
        self.early_ttl = None;
        self.in_flight = Some(side);
        self.approved = false;
        if automated {
            self.moves.push_back(now);
        }
        self.enter(phase, now, fx, why.clone());
        fx.push(Effect::Publish {
            side,
            why,
            from: None,
        });
    }
}

/// One step. Returns the effects to carry out, in order.
pub fn step(state: &mut DomainState, input: Input, now: Time, policy: &Policy) -> Vec<Effect> {
    let mut fx = Vec::new();
    let observed = matches!(input, Input::Observed { .. });
    match input {
        Input::Health { primary, backup } => {
            if primary == Health::Up && state.primary != Health::Up {
                state.primary_up_since = Some(now);
            } else if primary != Health::Up {
                state.primary_up_since = None;
            }
            state.primary = primary;
            state.backup = backup;
            if primary != Health::Down {
                state.mta_sts_blocked = false;
            }
        }
        Input::MtaSts { refused } => mta_sts_step(state, refused, policy, &mut fx),
        Input::Observed { published, ttl } => {
            let before = state.published;
            state.published = published;
            state.published_ttl = ttl;
            if let (None, Some(lost)) = (published, before) {
                correct_drift(state, lost, now, policy, &mut fx);
            }
        }
        Input::ChangeVerified { side } if state.in_flight != Some(side) => {
            if side == Side::Primary {
                ttl_write_done(state, &mut fx);
            }
        }
        Input::ChangeFailed { side, error } if state.in_flight != Some(side) => {
            if side == Side::Primary {
                ttl_write_failed(state, &error, now, &mut fx);
            }
        }
        Input::PrimaryRound { sign } => {
            // Only the TTL is decided here: moves are decided on verdicts (`Health`) and
            // deadlines, and a round fed for its signs must not decide one a round early.
            early_ttl_step(state, sign, now, policy, &mut fx);
            return fx;
        }
        Input::ChangeVerified { side } => {
            if state.in_flight == Some(side) {
                state.in_flight = None;
                state.published = Some(side);
                let phase = match side {
                    Side::Primary => Phase::Primary,
                    Side::Backup => Phase::OnBackup,
                };
                state.enter(
                    phase,
                    now,
                    &mut fx,
                    format!("{side} records verified at the authoritative servers"),
                );
            }
        }
        Input::ChangeFailed { side, error } => {
            if state.in_flight == Some(side) {
                fx.push(Effect::Event {
                    kind: EventKind::ChangeFailed,
                    message: format!("publishing the {side} records failed: {error}; retrying"),
                });
            }
        }
        Input::Tick => restore_when_quiet(state, now, policy, &mut fx),
        Input::Command {
            command,
            by,
            reason,
        } => {
            command_step(state, command, &by, &reason, now, &mut fx);
            if fx.iter().any(|e| matches!(e, Effect::Rejected { .. })) {
                return fx;
            }
            // An accepted command may have lifted an override (unpin, resume): automation acts
            // on the current health at once rather than waiting for the next health change.
        }
        Input::Revert {
            side,
            snapshot,
            by,
            reason,
        } => {
            revert_step(
                state,
                side,
                snapshot,
                &format!("{by}: {reason}"),
                now,
                &mut fx,
            );
            if fx.iter().any(|e| matches!(e, Effect::Rejected { .. })) {
                return fx;
            }
        }
    }
    expire_pin(state, now, &mut fx);
    maintenance_step(state, observed, now, policy, &mut fx);
    automate(state, now, policy, &mut fx);
    track_incident(state, now);
    fx
}

/// Opens an incident when the domain is out of normal operation, closes it when it is back.
/// Level-triggered on the state after the step, so every path in (automation, an operator's
/// failover or pin, the flap guard) and out (failback verified, BothDown ending on the primary,
/// a resume) is covered. In between (Unknown, or Primary with the primary not Up) nothing changes.
fn track_incident(state: &mut DomainState, now: Time) {
    let flap_paused = matches!(
        &state.overrides,
        Some(Override::Paused {
            by: PausedBy::FlapGuard,
            ..
        })
    );
    let out_of_normal = flap_paused
        || state.mta_sts_blocked
        || matches!(
            state.phase,
            Phase::FailingOver
                | Phase::OnBackup
                | Phase::FailbackPending
                | Phase::FailingBack
                | Phase::BothDown
        );
    let normal = !flap_paused
        && state.phase == Phase::Primary
        && state.published == Some(Side::Primary)
        && state.primary == Health::Up;
    match &mut state.incident {
        Some(i) if i.until.is_none() && normal => i.until = Some(now),
        Some(i) if i.until.is_none() => {} // still open
        _ if out_of_normal => {
            state.incident = Some(Incident {
                since: now,
                until: None,
            })
        }
        _ => {}
    }
}

fn expire_pin(state: &mut DomainState, now: Time, fx: &mut Vec<Effect>) {
    if let Some(Override::Pinned { side, until, .. }) = &state.overrides {
        if now >= *until {
            fx.push(Effect::Event {
                kind: EventKind::Override,
                message: format!("pin to {side} expired at {until}; automation resumes"),
            });
            state.overrides = None;
        }
    }
}

/// What automation does, given health and what is published. Nothing while overridden or while
/// a change is in flight (the actor retries that change; the machine does not pile on).
fn automate(state: &mut DomainState, now: Time, policy: &Policy, fx: &mut Vec<Effect>) {
    if state.overrides.is_some() || state.change_in_flight() {
        return;
    }
    let (p, b) = (state.primary, state.backup);
    match state.phase {
        Phase::Unknown => {
            // No decision before the primary has a verdict; never changes records.
            if p == Health::Unknown {
                return;
            }
            let Some(side) = state.published else {
                return; // matches neither side: the actor reports drift; an operator decides
            };
            if p == Health::Down && b == Health::Down {
                state.enter(
                    Phase::BothDown,
                    now,
                    fx,
                    "first verdicts: primary and backup both Down".into(),
                );
            } else {
                let phase = if side == Side::Primary {
                    Phase::Primary
                } else {
                    Phase::OnBackup
                };
                state.enter(
                    phase,
                    now,
                    fx,
                    format!("first verdicts; {side} records published"),
                );
            }
        }
        Phase::Primary => {
            if p == Health::Down {
                if healthy(b) {
                    if mta_sts_blocks(state, policy, fx) || flap_guard(state, now, policy, fx) {
                        return;
                    }
                    state.publish(
                        Side::Backup,
                        now,
                        fx,
                        "primary Down, backup Up".into(),
                        true,
                    );
                } else if b == Health::Down {
                    state.enter(
                        Phase::BothDown,
                        now,
                        fx,
                        "primary and backup both Down".into(),
                    );
                    fx.push(Effect::Event {
                        kind: EventKind::BothDown,
                        message: "primary and backup are both Down; keeping the published records"
                            .into(),
                    });
                }
            }
        }
        Phase::OnBackup | Phase::FailbackPending => {
            if !healthy(p) {
                if state.phase == Phase::FailbackPending {
                    state.enter(
                        Phase::OnBackup,
                        now,
                        fx,
                        format!("primary {p:?} again; hold restarts"),
                    );
                }
                if p == Health::Down && b == Health::Down {
                    state.enter(
                        Phase::BothDown,
                        now,
                        fx,
                        "primary and backup both Down".into(),
                    );
                    fx.push(Effect::Event {
                        kind: EventKind::BothDown,
                        message: "primary and backup are both Down; keeping the published records"
                            .into(),
                    });
                }
                return;
            }
            let up_since = state.primary_up_since.unwrap_or(now);
            if state.phase == Phase::OnBackup {
                state.enter(
                    Phase::FailbackPending,
                    now,
                    fx,
                    "primary Up; failback guard running".into(),
                );
            }
            let hold = policy.hold_for(state);
            let held = now
                .signed_duration_since(up_since)
                .to_std()
                .unwrap_or_default()
                >= hold;
            let backup_down = b == Health::Down;
            if !(held || backup_down) {
                return;
            }
            if policy.approval && !state.approved && !backup_down {
                return;
            }
            if flap_guard(state, now, policy, fx) {
                return;
            }
            let why = if backup_down {
                "backup Down while the primary is Up".to_string()
            } else {
                format!(
                    "primary Up for the whole hold ({})",
                    humantime::format_duration(hold)
                )
            };
            state.publish(Side::Primary, now, fx, why, true);
        }
        Phase::BothDown => {
            // Stay on the published side as soon as it is Up again (a failback then goes through
            // the guard); move only when the published side is still Down and the other is Up.
            let Some(published) = state.published else {
                return;
            };
            let other = match published {
                Side::Primary => Side::Backup,
                Side::Backup => Side::Primary,
            };
            if healthy(state.health(published)) {
                let phase = if published == Side::Primary {
                    Phase::Primary
                } else {
                    Phase::OnBackup
                };
                state.enter(phase, now, fx, format!("{published} Up again"));
            } else if healthy(state.health(other))
                && !(other == Side::Backup && mta_sts_blocks(state, policy, fx))
                && !flap_guard(state, now, policy, fx)
            {
                state.publish(
                    other,
                    now,
                    fx,
                    format!("{other} Up while the published {published} is Down"),
                    true,
                );
            }
        }
        Phase::FailingOver | Phase::FailingBack => {}
    }
}

/// The published records stopped matching either side (someone edited them): with
/// `correct_drift`, publish `lost` (the side that was published) again, under the same rules as
/// every automated move — never a side that is not Up, never over an override, never while a
/// change is in flight, counted by the flap guard. The TTL remembered from before the failover
/// and the failback hold are left as they were: this restores, it does not fail over.
fn correct_drift(
    state: &mut DomainState,
    lost: Side,
    now: Time,
    policy: &Policy,
    fx: &mut Vec<Effect>,
) {
    if !policy.correct_drift
        || state.phase == Phase::Unknown
        || state.change_in_flight()
        || state.ttl_write().is_some()
    {
        return;
    }
    let left_alone = |fx: &mut Vec<Effect>, why: String| {
        fx.push(Effect::Event {
            kind: EventKind::DriftNotCorrected,
            message: format!(
                "the published records match neither side; not restoring the {lost} records: {why}"
            ),
        })
    };
    if state.overrides.is_some() {
        return left_alone(
            fx,
            "automation is paused or pinned; an operator decides".into(),
        );
    }
    let health = state.health(lost);
    if !healthy(health) {
        return left_alone(
            fx,
            format!("the {lost} is {health:?}; mxguard publishes only a side that is Up"),
        );
    }
    if flap_guard(state, now, policy, fx) {
        return;
    }
    let phase = match lost {
        Side::Primary => Phase::FailingBack,
        Side::Backup => Phase::FailingOver,
    };
    let why = format!("drift: restoring the {lost} records");
    state.in_flight = Some(lost);
    state.moves.push_back(now);
    state.enter(phase, now, fx, why.clone());
    fx.push(Effect::Publish {
        side: lost,
        why,
        from: None,
    });
}

/// A new MTA-STS and DANE evaluation (`mtasts::watch`): alerts when the backup starts being
/// refused, notes when it passes again. Ignored with `mta_sts = "off"`.
fn mta_sts_step(
    state: &mut DomainState,
    refused: Option<String>,
    policy: &Policy,
    fx: &mut Vec<Effect>,
) {
    if policy.mta_sts == MtaStsAction::Off {
        state.mta_sts_refused = None;
        state.mta_sts_blocked = false;
        return;
    }
    match (&state.mta_sts_refused, &refused) {
        (None, Some(why)) => {
            let then = match policy.mta_sts {
                MtaStsAction::Block => {
                    "an automated failover to it will be refused (mta_sts = \"block\")"
                }
                _ => "a failover to it will be made with a critical warning (mta_sts = \"warn\")",
            };
            fx.push(Effect::Event {
                kind: EventKind::MtaSts,
                message: format!("{why}; {then}"),
            });
        }
        (Some(_), None) => {
            state.mta_sts_blocked = false;
            fx.push(Effect::Event {
                kind: EventKind::MtaStsRestored,
                message: "compliant senders would deliver to the backup again: the domain's MTA-STS policy lists it or no longer enforces, and DANE senders can use it".into(),
            });
        }
        _ => {}
    }
    state.mta_sts_refused = refused;
}

/// Under `mta_sts = "block"`, true when compliant senders refuse the backup (MTA-STS or
/// DANE): the automated failover is not made, and an alert (once per episode) names why.
fn mta_sts_blocks(state: &mut DomainState, policy: &Policy, fx: &mut Vec<Effect>) -> bool {
    if policy.mta_sts != MtaStsAction::Block {
        return false;
    }
    let Some(why) = &state.mta_sts_refused else {
        return false;
    };
    if !state.mta_sts_blocked {
        state.mta_sts_blocked = true;
        fx.push(Effect::Event {
            kind: EventKind::MtaStsFailoverRefused,
            message: format!(
                "failover refused (mta_sts = \"block\"): the primary is Down and the backup is Up, but {why}; the primary records stay published — fix the policy or the backup, or fail over by hand"
            ),
        });
    }
    true
}

/// True (and pauses automation) when one more automated move would exceed the flap budget.
fn flap_guard(state: &mut DomainState, now: Time, policy: &Policy, fx: &mut Vec<Effect>) -> bool {
    let window = chrono::Duration::from_std(policy.flap_window).unwrap_or_default();
    while state
        .moves
        .front()
        .is_some_and(|t| now.signed_duration_since(*t) > window)
    {
        state.moves.pop_front();
    }
    if state.moves.len() < policy.flap_max {
        return false;
    }
    state.overrides = Some(Override::Paused {
        by: PausedBy::FlapGuard,
        reason: format!(
            "{} automated moves within {}",
            state.moves.len(),
            humantime::format_duration(policy.flap_window)
        ),
        at: now,
    });
    fx.push(Effect::Event {
        kind: EventKind::FlapGuard,
        message: format!(
            "automation paused: {} moves within {}; resume through the API when stable",
            state.moves.len(),
            humantime::format_duration(policy.flap_window)
        ),
    });
    true
}

/// Whether a TTL write may start now (module doc): the primary's records published in phase
/// `Primary`, the primary not Down, no override, nothing in flight.
fn ttl_write_allowed(state: &DomainState) -> bool {
    state.phase == Phase::Primary
        && state.published == Some(Side::Primary)
        && state.primary != Health::Down
        && state.overrides.is_none()
        && !state.change_in_flight()
        && state.ttl_write().is_none()
}

/// The leader's own primary round: a sign lowers the TTL (or restarts the quiet wait of one
/// lowered); a quiet round starts that wait, and a wait that ended restores.
fn early_ttl_step(
    state: &mut DomainState,
    sign: Option<EarlySign>,
    now: Time,
    policy: &Policy,
    fx: &mut Vec<Effect>,
) {
    match (&mut state.early_ttl, sign) {
        (Some(e), Some(_)) => e.quiet_since = None,
        (Some(e), None) => {
            e.quiet_since.get_or_insert(now);
            restore_when_quiet(state, now, policy, fx);
        }
        (None, Some(sign)) => lower(state, &sign, now, policy, fx),
        (None, None) => {}
    }
}

fn lower(
    state: &mut DomainState,
    sign: &EarlySign,
    now: Time,
    policy: &Policy,
    fx: &mut Vec<Effect>,
) {
    let Some(original) = state.published_ttl else {
        return; // the TTL to restore must be known before anything is lowered
    };
    let hold = chrono::Duration::from_std(policy.early_hold()).unwrap_or_default();
    let recently = state.ttl_lowered_at.is_some_and(|at| now < at + hold);
    if !policy.early_ttl
        || !sign.lowers()
        || original <= policy.failover_ttl
        || recently
        || !ttl_write_allowed(state)
    {
        return;
    }
    let why = sign.describe();
    let publish = format!(
        "early TTL lowering {original} → {} s: {why}",
        policy.failover_ttl
    );
    start_lowering(state, original, why, publish, now, policy, fx);
}

/// Starts a TTL lowering (early or for a maintenance window): remembered with its original
/// TTL before the write, which republishes the primary's records at the failover TTL.
fn start_lowering(
    state: &mut DomainState,
    original: u32,
    why: String,
    publish: String,
    now: Time,
    policy: &Policy,
    fx: &mut Vec<Effect>,
) {
    state.early_ttl = Some(EarlyTtl {
        original,
        lowered: policy.failover_ttl,
        stage: TtlStage::Lowering,
        since: now,
        why,
        quiet_since: None,
    });
    state.ttl_lowered_at = Some(now);
    fx.push(Effect::Publish {
        side: Side::Primary,
        why: publish,
        from: None,
    });
}

/// Restores the original TTL once the primary has been quiet for the hold.
fn restore_when_quiet(state: &mut DomainState, now: Time, policy: &Policy, fx: &mut Vec<Effect>) {
    let hold = chrono::Duration::from_std(policy.early_hold()).unwrap_or_default();
    let due = state.early_ttl.as_ref().is_some_and(|e| {
        e.stage == TtlStage::Lowered && e.quiet_since.is_some_and(|q| now >= q + hold)
    });
    let window_ahead = state
        .maintenance
        .as_ref()
        .is_some_and(|m| m.stage == MaintenanceStage::Scheduled);
    if !due || window_ahead || state.primary != Health::Up || !ttl_write_allowed(state) {
        return;
    }
    let Some(e) = &mut state.early_ttl else {
        return;
    };
    e.stage = TtlStage::Restoring;
    let why = format!(
        "restoring the primary's TTL {} → {} s: quiet for {}",
        e.lowered,
        e.original,
        humantime::format_duration(policy.early_hold())
    );
    fx.push(Effect::Publish {
        side: Side::Primary,
        why,
        from: None,
    });
}

/// The TTL write in flight is verified: recorded with its evidence.
fn ttl_write_done(state: &mut DomainState, fx: &mut Vec<Effect>) {
    let Some(write) = state.ttl_write() else {
        return;
    };
    let Some(e) = &mut state.early_ttl else {
        return;
    };
    match write {
        TtlWrite::Lower(ttl) => {
            e.stage = TtlStage::Lowered;
            fx.push(Effect::Ttl(TtlChange {
                kind: EventKind::TtlLowered,
                old_ttl: e.original,
                new_ttl: ttl,
                why: format!(
                    "{}; if a failover comes, caches hold the primary for {ttl} s at most",
                    e.why
                ),
            }));
        }
        TtlWrite::Restore(ttl) => {
            fx.push(Effect::Ttl(TtlChange {
                kind: EventKind::TtlRestored,
                old_ttl: e.lowered,
                new_ttl: ttl,
                why: "the primary is quiet again".into(),
            }));
            state.early_ttl = None;
        }
    }
}

/// The TTL write in flight failed: not retried, so it never holds up a move (module doc).
fn ttl_write_failed(state: &mut DomainState, error: &str, now: Time, fx: &mut Vec<Effect>) {
    let Some(write) = state.ttl_write() else {
        return;
    };
    let Some(e) = &mut state.early_ttl else {
        return;
    };
    e.stage = TtlStage::Lowered;
    let then = match write {
        TtlWrite::Lower(_) => {
            "not retried; it may have landed, so the original TTL is restored once the primary is quiet"
        }
        TtlWrite::Restore(_) => {
            e.quiet_since = Some(now);
            "tried again after another hold"
        }
    };
    let what = match write {
        TtlWrite::Lower(ttl) => format!("lowering the primary's TTL to {ttl} s"),
        TtlWrite::Restore(ttl) => format!("restoring the primary's TTL to {ttl} s"),
    };
    fx.push(Effect::Event {
        kind: EventKind::ChangeFailed,
        message: format!("{what} failed: {error}; {then}"),
    });
}

/// An operator's revert is an operator's move to `side` with the snapshot's records (their
/// TTLs): refused under the same rules as a failover or failback command.
fn revert_step(
    state: &mut DomainState,
    side: Side,
    snapshot: i64,
    who: &str,
    now: Time,
    fx: &mut Vec<Effect>,
) {
    let reject = |fx: &mut Vec<Effect>, why: String| fx.push(Effect::Rejected { reason: why });
    if state.change_in_flight() {
        return reject(fx, "a change is in flight; retry when it completes".into());
    }
    if state.health(side) == Health::Down {
        return reject(
            fx,
            format!("snapshot {snapshot} holds the {side} records and the {side} is Down; mxguard never publishes a Down side"),
        );
    }
    if matches!(&state.overrides, Some(Override::Pinned { side: s, .. }) if *s != side) {
        return reject(
            fx,
            format!("the domain is pinned to the other side; unpin before reverting to the {side} records"),
        );
    }
    state.publish(
        side,
        now,
        fx,
        format!("operator {who} (revert to snapshot {snapshot})"),
        false,
    );
    if let Some(Effect::Publish { from, .. }) = fx.last_mut() {
        *from = Some(snapshot);
    }
}

fn command_step(
    state: &mut DomainState,
    command: Command,
    by: &str,
    reason: &str,
    now: Time,
    fx: &mut Vec<Effect>,
) {
    let reject = |fx: &mut Vec<Effect>, why: String| fx.push(Effect::Rejected { reason: why });
    let who = format!("{by}: {reason}");
    let publishing = matches!(
        command,
        Command::Failover | Command::Failback | Command::Pin { .. }
    );
    if publishing && state.change_in_flight() {
        return reject(fx, "a change is in flight; retry when it completes".into());
    }
    match command {
        Command::Failover | Command::Failback | Command::Pin { .. } => {
            let side = match &command {
                Command::Failover => Side::Backup,
                Command::Failback => Side::Primary,
                Command::Pin { side, .. } => *side,
                _ => return,
            };
            if let Command::Pin { until, .. } = &command {
                if *until <= now {
                    return reject(fx, format!("pin expiry {until} is not in the future"));
                }
            }
            if state.health(side) == Health::Down {
                return reject(
                    fx,
                    format!("the {side} is Down; mxguard never publishes a Down side"),
                );
            }
            let pinned_elsewhere =
                matches!(&state.overrides, Some(Override::Pinned { side: s, .. }) if *s != side);
            if pinned_elsewhere && !matches!(command, Command::Pin { .. }) {
                return reject(
                    fx,
                    "the domain is pinned to the other side; unpin first".into(),
                );
            }
            if let Command::Pin { until, .. } = command {
                state.overrides = Some(Override::Pinned {
                    side,
                    until,
                    by: by.to_string(),
                    reason: reason.to_string(),
                    at: now,
                });
                fx.push(Effect::Event {
                    kind: EventKind::Override,
                    message: format!("pinned to {side} until {until} by {who}"),
                });
            }
            if state.published == Some(side) {
                if !matches!(command, Command::Pin { .. }) {
                    reject(fx, format!("the {side} records are already published"));
                }
                return;
            }
            state.publish(side, now, fx, format!("operator {who}"), false);
        }
        Command::Maintenance { side, start, end } => {
            schedule_maintenance(state, side, start, end, by, reason, now, fx)
        }
        Command::CancelMaintenance => cancel_maintenance(state, &who, now, fx),
        Command::Unpin => match &state.overrides {
            Some(Override::Pinned { .. }) => {
                state.overrides = None;
                fx.push(Effect::Event {
                    kind: EventKind::Override,
                    message: format!("unpinned by {who}"),
                });
            }
            _ => reject(fx, "the domain is not pinned".into()),
        },
        Command::Pause => {
            state.overrides = Some(Override::Paused {
                by: PausedBy::Operator(by.to_string()),
                reason: reason.to_string(),
                at: now,
            });
            fx.push(Effect::Event {
                kind: EventKind::Override,
                message: format!("automation paused by {who}"),
            });
        }
        Command::Resume => match &state.overrides {
            Some(Override::Paused { .. }) => {
                state.overrides = None;
                state.moves.clear();
                fx.push(Effect::Event {
                    kind: EventKind::Override,
                    message: format!("automation resumed by {who}"),
                });
            }
            _ => reject(fx, "automation is not paused".into()),
        },
        Command::Approve => {
            if state.phase != Phase::FailbackPending {
                return reject(fx, format!("nothing to approve in state {:?}", state.phase));
            }
            state.approved = true;
            fx.push(Effect::Event {
                kind: EventKind::Operator,
                message: format!("failback approved by {who}"),
            });
        }
    }
}

/// When the machine next wants a `Tick`: the end of the hold, a pin's expiry, or when a TTL
/// lowered early is due to be restored.
pub fn next_deadline(state: &DomainState, policy: &Policy) -> Option<Time> {
    let pin = match &state.overrides {
        Some(Override::Pinned { until, .. }) => Some(*until),
        _ => None,
    };
    let hold = (state.phase == Phase::FailbackPending && state.overrides.is_none())
        .then_some(state.primary_up_since)
        .flatten()
        .and_then(|since| {
            chrono::Duration::from_std(policy.hold_for(state))
                .ok()
                .map(|h| since + h)
        });
    let restore = state
        .early_ttl
        .as_ref()
        .filter(|e| e.stage == TtlStage::Lowered && state.overrides.is_none())
        .and_then(|e| e.quiet_since)
        .and_then(|q| {
            chrono::Duration::from_std(policy.early_hold())
                .ok()
                .map(|h| q + h)
        });
    let maintenance = state.maintenance.as_ref().and_then(|m| match m.stage {
        MaintenanceStage::Scheduled => {
            let lower = maintenance_lowering_due(state, m, policy)
                .then(|| state.published_ttl.map(|ttl| m.lower_at(ttl)))
                .flatten();
            Some(lower.map_or(m.start, |l| l.min(m.start)))
        }
        MaintenanceStage::Started => Some(m.end),
        MaintenanceStage::Ended => None,
    });
    let restore = restore.filter(|_| {
        !state
            .maintenance
            .as_ref()
            .is_some_and(|m| m.stage == MaintenanceStage::Scheduled)
    });
    [pin, hold, restore, maintenance]
        .into_iter()
        .flatten()
        .min()
}

/// Whether the window still needs the TTL lowered before it: it moves the records, the
/// primary's are published above the failover TTL, and nothing is lowered or being lowered.
fn maintenance_lowering_due(state: &DomainState, m: &Maintenance, policy: &Policy) -> bool {
    m.side == Side::Backup
        && state.published == Some(Side::Primary)
        && state.early_ttl.is_none()
        && state
            .published_ttl
            .is_some_and(|ttl| ttl > policy.failover_ttl)
}

#[allow(clippy::too_many_arguments)]
fn schedule_maintenance(
    state: &mut DomainState,
    side: Side,
    start: Time,
    end: Time,
    by: &str,
    reason: &str,
    now: Time,
    fx: &mut Vec<Effect>,
) {
    let reject = |fx: &mut Vec<Effect>, why: String| fx.push(Effect::Rejected { reason: why });
    if end <= start {
        return reject(fx, format!("end {end} is not after start {start}"));
    }
    if end <= now {
        return reject(fx, format!("end {end} is not in the future"));
    }
    if let Some(m) = &state.maintenance {
        return reject(
            fx,
            format!(
                "a maintenance window ({} from {} to {}) is already {}; cancel it first",
                m.side,
                m.start,
                m.end,
                match m.stage {
                    MaintenanceStage::Scheduled => "scheduled",
                    MaintenanceStage::Started => "under way",
                    MaintenanceStage::Ended => "ending",
                }
            ),
        );
    }
    let m = Maintenance {
        side,
        start,
        end,
        by: by.to_string(),
        reason: reason.to_string(),
        at: now,
        ttl: state.published_ttl,
        stage: MaintenanceStage::Scheduled,
    };
    let ttl = match state.published_ttl {
        Some(ttl) if side == Side::Backup && state.published == Some(Side::Primary) => {
            let at = m.lower_at(ttl);
            if at <= now {
                format!("; the TTL ({ttl} s) is lowered now, less than one TTL ahead: caches that fetched the records before now still hold them up to {ttl} s after the start")
            } else {
                format!("; the TTL ({ttl} s) is lowered at {at}, one TTL ahead")
            }
        }
        _ => String::new(),
    };
    fx.push(Effect::Event {
        kind: EventKind::Maintenance,
        message: format!(
            "maintenance window scheduled by {by}: the {side} from {start} to {end} ({reason}){ttl}"
        ),
    });
    state.maintenance = Some(m);
}

fn cancel_maintenance(state: &mut DomainState, who: &str, now: Time, fx: &mut Vec<Effect>) {
    let Some(m) = state.maintenance.take() else {
        return fx.push(Effect::Rejected {
            reason: "no maintenance window is scheduled".into(),
        });
    };
    match m.stage {
        MaintenanceStage::Scheduled => {
            // A TTL lowered for the window is restored after the hold, like an early one.
            if let Some(e) = &mut state.early_ttl {
                e.quiet_since.get_or_insert(now);
            }
            fx.push(Effect::Event {
                kind: EventKind::Maintenance,
                message: format!(
                    "maintenance window (the {} from {}) cancelled by {who}",
                    m.side, m.start
                ),
            });
        }
        MaintenanceStage::Ended => fx.push(Effect::Event {
            kind: EventKind::Maintenance,
            message: format!(
                "maintenance window (the {} until {}) dismissed by {who}: its records and TTL are no longer watched for",
                m.side, m.end
            ),
        }),
        MaintenanceStage::Started => {
            if m.stage == MaintenanceStage::Started
                && matches!(&state.overrides, Some(Override::Pinned { side, .. }) if *side == m.side)
            {
                state.overrides = None;
            }
            fx.push(Effect::Event {
                kind: EventKind::Maintenance,
                message: format!(
                    "maintenance window (the {} until {}) ended early by {who}; automation resumes (a failback waits for its hold)",
                    m.side, m.end
                ),
            });
            state.maintenance = Some(Maintenance {
                stage: MaintenanceStage::Ended,
                ..m
            });
        }
    }
}

/// The window's progress at each step (module doc): lower, start, end, and the TTL check.
fn maintenance_step(
    state: &mut DomainState,
    observed: bool,
    now: Time,
    policy: &Policy,
    fx: &mut Vec<Effect>,
) {
    let Some(m) = state.maintenance.clone() else {
        return;
    };
    match m.stage {
        MaintenanceStage::Scheduled => {
            let lower_now = maintenance_lowering_due(state, &m, policy)
                && state
                    .published_ttl
                    .is_some_and(|ttl| now >= m.lower_at(ttl))
                && ttl_write_allowed(state);
            if lower_now && now < m.start {
                lower_for_maintenance(state, &m, now, policy, fx);
            }
            if now >= m.start {
                start_maintenance(state, m, now, fx);
            }
        }
        MaintenanceStage::Started => {
            if now >= m.end {
                fx.push(Effect::Event {
                    kind: EventKind::Maintenance,
                    message: format!(
                        "maintenance window over at {}; automation resumes (a failback waits for its hold)",
                        m.end
                    ),
                });
                state.maintenance = Some(Maintenance {
                    stage: MaintenanceStage::Ended,
                    ..m
                });
            } else if matches!(&state.overrides, Some(Override::Pinned { side, .. }) if *side == m.side)
                && state.published != Some(m.side)
                && !state.change_in_flight()
                && state.health(m.side) != Health::Down
            {
                // The move the start could not make at once (a change was in flight).
                state.publish(
                    m.side,
                    now,
                    fx,
                    format!("maintenance window until {} ({})", m.end, m.reason),
                    false,
                );
            }
        }
        MaintenanceStage::Ended => {
            let back = state.phase == Phase::Primary
                && state.published == Some(Side::Primary)
                && !state.change_in_flight()
                && state.ttl_write().is_none();
            if !(observed && back) {
                return;
            }
            state.maintenance = None;
            match (state.published_ttl, m.ttl) {
                (Some(live), Some(before)) if live < before => fx.push(Effect::Event {
                    kind: EventKind::MaintenanceAlert,
                    message: format!(
                        "after the maintenance window the primary's records are back at TTL {live} s, below the {before} s they had before it: a low TTL left behind"
                    ),
                }),
                (live, _) => fx.push(Effect::Event {
                    kind: EventKind::Maintenance,
                    message: format!(
                        "after the maintenance window the primary's records are back{}",
                        live.map(|t| format!(" at TTL {t} s")).unwrap_or_default()
                    ),
                }),
            }
        }
    }
}

fn lower_for_maintenance(
    state: &mut DomainState,
    m: &Maintenance,
    now: Time,
    policy: &Policy,
    fx: &mut Vec<Effect>,
) {
    let Some(original) = state.published_ttl else {
        return;
    };
    let why = format!("maintenance window from {} ({})", m.start, m.reason);
    let publish = format!(
        "TTL lowered {original} → {} s ahead of the {why}",
        policy.failover_ttl
    );
    start_lowering(state, original, why, publish, now, policy, fx);
}

fn start_maintenance(state: &mut DomainState, m: Maintenance, now: Time, fx: &mut Vec<Effect>) {
    let side = m.side;
    if state.health(side) == Health::Down {
        state.maintenance = None;
        return fx.push(Effect::Event {
            kind: EventKind::MaintenanceAlert,
            message: format!(
                "maintenance window from {} not started: the {side} is Down and mxguard never publishes a Down side; the records stay as they are",
                m.start
            ),
        });
    }
    state.overrides = Some(Override::Pinned {
        side,
        until: m.end,
        by: m.by.clone(),
        reason: format!("maintenance window: {}", m.reason),
        at: now,
    });
    fx.push(Effect::Event {
        kind: EventKind::Maintenance,
        message: format!(
            "maintenance window started: pinned to the {side} until {} ({})",
            m.end, m.reason
        ),
    });
    let move_now = state.published != Some(side) && !state.change_in_flight();
    let why = format!("maintenance window until {} ({})", m.end, m.reason);
    state.maintenance = Some(Maintenance {
        stage: MaintenanceStage::Started,
        ..m
    });
    if move_now {
        state.publish(side, now, fx, why, false);
    }
}

#[cfg(test)]
mod tests;
