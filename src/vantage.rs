//! Votes from several vantages. Each instance probes from its own network (its *vantage*) and
//! stores its latest verdict per side; the leader combines the fresh ones:
//!
//! * a vantage **votes** when its report is fresh (another vantage's against the clock; this
//!   vantage's own against its newest round — see [`Clocks`]), it has a verdict (Up or Down, not Unknown)
//!   and it is not **partitioned** — it could reach none of its resolvers (every DNS query timed
//!   out or failed at the network level) or none of its configured canaries;
//! * the quorum is `vantage_quorum` when configured, else a majority of the voters;
//! * a side is Down when at least a quorum of voters see it Down, Up when at least a quorum see
//!   it Up, and Unknown otherwise (no voters, or a split short of the quorum) — the state
//!   machine never fails over on Unknown.
//!
//! Each vantage keeps its own hysteresis (`health.rs`), so a vote is already a confirmed verdict.
//! Pure: no I/O, `now` is passed in.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::health::{Health, TargetVerdict};
use crate::model::{Fqdn, Side};
use crate::monitor::RoundReport;
use crate::probe::dns::DnsStatus;
use crate::probe::target::TargetEvidence;
use crate::store::Observation;

/// How old another vantage's report may be and still vote on a domain with these checks:
/// longer than the interval to the next round plus a whole probe ([`probe_deadline`]) plus
/// the jitter, so a side whose every reply is slow — each within the phase timeout — always
/// has a fresh vote.
pub fn freshness(checks: &crate::config::Checks) -> Duration {
    checks.interval * 3 + checks.timeout * 4
}

/// Whether a vantage's new report of a side must be stored, given the last one stored: when it
/// votes differently (health, the round's pass, partitioned or not, a target's up or down) —
/// the leader sees a change within its next read — or when the stored one is `heartbeat` old,
/// so that an unchanged vote stays fresh (a third of [`freshness`] keeps it well inside). Not
/// every round: with thousands of domains, a row per domain and round is more than the store
/// takes, and an unchanged vote says nothing new.
pub fn worth_storing(
    last: Option<&VantageReport>,
    new: &VantageReport,
    heartbeat: Duration,
) -> bool {
    let Some(last) = last else {
        return true;
    };
    let heartbeat = chrono::Duration::from_std(heartbeat).unwrap_or(chrono::Duration::MAX);
    let ups_differ = !last
        .verdicts
        .iter()
        .map(|v| v.up)
        .eq(new.verdicts.iter().map(|v| v.up));
    last.health != new.health
        || last.pass != new.pass
        || last.partitioned.is_some() != new.partitioned.is_some()
        || ups_differ
        || new.at.signed_duration_since(last.at) >= heartbeat
}

/// How long one probe of a target may take in all, its DNS lookups and SMTP sessions
/// together: a verdict is in before the previous one goes stale. A session still running at
/// the deadline is a hard failure (`timeout`), not a vote that never arrives.
pub fn probe_deadline(checks: &crate::config::Checks) -> Duration {
    checks.interval * 2 + checks.timeout * 3
}

/// One vantage's latest verdict on one side (stored as JSON in `vantage_reports`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VantageReport {
    pub vantage: String,
    pub side: Side,
    pub at: DateTime<Utc>,
    pub health: Health,
    /// Whether the round itself passed (health has hysteresis on top).
    pub pass: bool,
    /// Why this vantage does not vote, when it is cut off.
    pub partitioned: Option<String>,
    /// Per target: up or down, and why (shared by the copies the actor and its votes keep).
    pub verdicts: Arc<[Verdict]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub target: Fqdn,
    pub up: bool,
    /// Shared with the host's verdict and every domain using the host (not copied per round).
    pub reason: Arc<str>,
}

impl From<&TargetVerdict> for Verdict {
    fn from(v: &TargetVerdict) -> Self {
        Verdict {
            target: v.target.clone(),
            up: v.up,
            reason: v.reason.clone(),
        }
    }
}

impl VantageReport {
    /// The report of `vantage` for one round; `canaries_down` says why the canaries failed.
    pub fn from_round(vantage: &str, r: &RoundReport, canaries_down: Option<&str>) -> Self {
        VantageReport {
            vantage: vantage.to_string(),
            side: r.side,
            at: r.at,
            health: r.health.health,
            pass: r.pass,
            partitioned: canaries_down
                .map(|why| format!("canaries unreachable: {why}"))
                .or_else(|| resolvers_unreachable(r)),
            verdicts: r.verdicts.iter().map(Verdict::from).collect(),
        }
    }
}

/// `Some(why)` when no resolver answered anything in the round: the vantage is cut off from DNS,
/// which says nothing about the targets. Answers such as SERVFAIL or NXDOMAIN are answers.
pub fn resolvers_unreachable(r: &RoundReport) -> Option<String> {
    let answers: Vec<_> = r.evidence.iter().flat_map(|e| e.dns().iter()).collect();
    if answers.is_empty() {
        return None;
    }
    let cut_off = answers
        .iter()
        .all(|a| matches!(a.status, DnsStatus::Timeout | DnsStatus::Network(_)));
    cut_off.then(|| {
        let mut servers: Vec<String> = answers.iter().map(|a| a.server.to_string()).collect();
        servers.sort();
        servers.dedup();
        format!("no resolver answered ({})", servers.join(", "))
    })
}

/// One vantage's part in a combined verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vote {
    pub vantage: String,
    pub health: Health,
    pub at: DateTime<Utc>,
    /// Whether it counted; when not, why.
    pub counted: bool,
    pub note: Option<String>,
    pub verdicts: Arc<[Verdict]>,
}

/// The leader's verdict on one side, with every vantage's evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Combined {
    pub side: Side,
    pub health: Health,
    pub quorum: u32,
    pub up: u32,
    pub down: u32,
    pub votes: Vec<Vote>,
}

impl Combined {
    /// "2 of 3 vantages see it Down (quorum 2): eu Down, us Down, ap Up (stale)".
    pub fn summary(&self) -> String {
        let voters = self.votes.iter().filter(|v| v.counted).count();
        let parts: Vec<String> = self
            .votes
            .iter()
            .map(|v| match &v.note {
                Some(note) => format!("{} {:?} ({note})", v.vantage, v.health),
                None => format!("{} {:?}", v.vantage, v.health),
            })
            .collect();
        let seen = match self.health {
            Health::Down => format!("{} of {voters} voting vantages see it Down", self.down),
            Health::Up => format!("{} of {voters} voting vantages see it Up", self.up),
            Health::Unknown => format!(
                "no quorum: {} Up, {} Down of {voters} voting vantages",
                self.up, self.down
            ),
        };
        format!("{seen} (quorum {}): {}", self.quorum, parts.join(", "))
    }
}

/// The times reports are judged fresh against.
#[derive(Debug, Clone, Copy)]
pub struct Clocks<'a> {
    /// Other vantages' reports are as old as the clock says.
    pub now: DateTime<Utc>,
    /// This vantage and the time of the newest round it has taken from its monitor. Its own
    /// reports are judged at that round, not at `now`: an actor late to its rounds (behind a
    /// slow store) is not its monitor gone silent, and judging its lag as silence turns a side
    /// Unknown and back at every round — a health event each, written behind the same slow
    /// store. A side's own report older than the other side's newest round by more than the
    /// freshness is still stale: that side's probes stopped coming.
    pub own: Option<(&'a str, DateTime<Utc>)>,
}

impl Clocks<'_> {
    /// Every report judged against the clock.
    pub fn at(now: DateTime<Utc>) -> Self {
        Clocks { now, own: None }
    }

    fn age(&self, r: &VantageReport) -> chrono::Duration {
        let judged_at = match self.own {
            Some((me, newest)) if r.vantage == me => newest,
            _ => self.now,
        };
        judged_at.signed_duration_since(r.at)
    }
}

/// Combines the reports of one side. `fresh`: how old a report may be and still vote.
pub fn combine(
    side: Side,
    reports: &[VantageReport],
    clocks: Clocks<'_>,
    fresh: Duration,
    quorum: Option<u32>,
) -> Combined {
    let fresh = chrono::Duration::from_std(fresh).unwrap_or(chrono::Duration::MAX);
    let votes: Vec<Vote> = reports
        .iter()
        .filter(|r| r.side == side)
        .map(|r| {
            let note = if clocks.age(r) > fresh {
                Some(format!("stale: last report {}", r.at.format("%H:%M:%S")))
            } else if let Some(why) = &r.partitioned {
                Some(format!("partitioned: {why}"))
            } else if r.health == Health::Unknown {
                Some("no verdict yet".to_string())
            } else {
                None
            };
            Vote {
                vantage: r.vantage.clone(),
                health: r.health,
                at: r.at,
                counted: note.is_none(),
                note,
                verdicts: r.verdicts.clone(),
            }
        })
        .collect();
    let count = |h: Health| votes.iter().filter(|v| v.counted && v.health == h).count() as u32;
    let (up, down) = (count(Health::Up), count(Health::Down));
    let voters = up + down;
    let quorum = quorum.unwrap_or(voters / 2 + 1);
    let health = if voters == 0 {
        Health::Unknown
    } else if down >= quorum {
        Health::Down
    } else if up >= quorum {
        Health::Up
    } else {
        Health::Unknown
    };
    Combined {
        side,
        health,
        quorum,
        up,
        down,
        votes,
    }
}

/// The observation rows of one probe of one MX host: one per resolver lookup and one per
/// probed address. They are the host's, not a domain's: a host shared by a thousand domains is
/// probed once and recorded once, under the domain `.` ("every domain using this target"); a
/// domain's own verdict (its RCPT answer included) is in its vantage report and its events.
pub fn observations(vantage: &str, e: &TargetEvidence, at: DateTime<Utc>) -> Vec<Observation> {
    let mut out = Vec::new();
    let target = e.round.target.to_string();
    let row = |resolver: String, address: Option<String>, outcome: &str| Observation {
        domain: Fqdn::root(),
        vantage: vantage.to_string(),
        side: e.side.as_str().to_string(),
        target: target.clone(),
        resolver,
        address,
        outcome: outcome.to_string(),
        phase: None,
        latency_ms: None,
        detail: String::new(),
        observed_at: at,
    };
    for res in &e.round.resolvers {
        out.push(Observation {
            phase: Some("dns".to_string()),
            detail: match &res.error {
                Some(err) => err.clone(),
                None => res
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            },
            ..row(
                res.resolver.clone(),
                None,
                if res.resolved() {
                    "resolved"
                } else {
                    "unresolved"
                },
            )
        });
    }
    for s in &e.smtp {
        out.push(Observation {
            phase: s.failure.as_ref().map(|f| f.phase.as_str().to_string()),
            latency_ms: i64::try_from(s.latency_ms).ok(),
            detail: s.summary(),
            ..row(
                String::new(),
                Some(s.address.ip().to_string()),
                match (&s.failure, s.pass) {
                    (_, true) => "pass",
                    (Some(f), false) if f.kind.is_soft() => "soft",
                    _ => "fail",
                },
            )
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(vantage: &str, health: Health, secs_ago: i64, partitioned: bool) -> VantageReport {
        VantageReport {
            vantage: vantage.into(),
            side: Side::Primary,
            at: now() - chrono::Duration::seconds(secs_ago),
            health,
            pass: health == Health::Up,
            partitioned: partitioned.then(|| "no resolver answered".to_string()),
            verdicts: Vec::new().into(),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    const FRESH: Duration = Duration::from_secs(90);

    #[test]
    fn a_report_is_stored_when_its_vote_changes_or_the_stored_one_is_a_heartbeat_old() {
        let beat = Duration::from_secs(9);
        let stored = report("a", Health::Up, 20, false);
        let later = |secs_ago| report("a", Health::Up, secs_ago, false);
        assert!(worth_storing(None, &later(0), beat), "the first");
        assert!(
            !worth_storing(Some(&stored), &later(15), beat),
            "unchanged, 5 s on"
        );
        assert!(
            worth_storing(Some(&stored), &later(11), beat),
            "unchanged, 9 s on"
        );
        assert!(worth_storing(
            Some(&stored),
            &report("a", Health::Down, 15, false),
            beat
        ));
        assert!(worth_storing(
            Some(&stored),
            &report("a", Health::Up, 15, true),
            beat
        ));
        let mut failed_round = later(15);
        failed_round.pass = false;
        assert!(
            worth_storing(Some(&stored), &failed_round, beat),
            "a failing round"
        );
        let mut target_down = later(15);
        target_down.verdicts = vec![Verdict {
            target: Fqdn::parse("mx1.example.com").expect("a name"),
            up: false,
            reason: "refused".into(),
        }]
        .into();
        assert!(worth_storing(Some(&stored), &target_down, beat));
    }

    fn health(reports: &[VantageReport], quorum: Option<u32>) -> Health {
        combine(Side::Primary, reports, Clocks::at(now()), FRESH, quorum).health
    }

    use Health::{Down, Unknown, Up};

    #[test]
    fn a_single_vantage_decides_alone() {
        assert_eq!(health(&[report("a", Down, 1, false)], None), Down);
        assert_eq!(health(&[report("a", Up, 1, false)], None), Up);
        assert_eq!(health(&[report("a", Unknown, 1, false)], None), Unknown);
    }

    #[test]
    fn a_majority_of_voters_is_needed() {
        let one_of_three = [
            report("a", Down, 1, false),
            report("b", Up, 1, false),
            report("c", Up, 1, false),
        ];
        assert_eq!(health(&one_of_three, None), Up);
        let two_of_three = [
            report("a", Down, 1, false),
            report("b", Down, 1, false),
            report("c", Up, 1, false),
        ];
        assert_eq!(health(&two_of_three, None), Down);
        // Two voters split: no quorum, no decision.
        let split = [report("a", Down, 1, false), report("b", Up, 1, false)];
        assert_eq!(health(&split, None), Unknown);
    }

    #[test]
    fn a_partitioned_vantage_does_not_vote() {
        // Alone and cut off: it cannot take a side Down.
        assert_eq!(health(&[report("a", Down, 1, true)], None), Unknown);
        // With a healthy peer, the peer decides.
        let r = [report("a", Down, 1, true), report("b", Up, 1, false)];
        let c = combine(Side::Primary, &r, Clocks::at(now()), FRESH, None);
        assert_eq!((c.health, c.quorum, c.up, c.down), (Up, 1, 1, 0));
        assert!(c.votes[0]
            .note
            .as_deref()
            .unwrap_or("")
            .contains("partitioned"));
        assert!(
            c.summary().contains("a Down (partitioned"),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn stale_and_undecided_reports_do_not_vote() {
        let r = [
            report("a", Down, 1, false),
            report("b", Up, 91, false),
            report("c", Unknown, 1, false),
        ];
        let c = combine(Side::Primary, &r, Clocks::at(now()), FRESH, None);
        assert_eq!((c.health, c.quorum), (Down, 1));
        assert_eq!(c.votes.iter().filter(|v| v.counted).count(), 1);
        assert!(c.votes[1]
            .note
            .as_deref()
            .unwrap_or("")
            .starts_with("stale"));
    }

    #[test]
    fn own_reports_are_judged_at_the_newest_own_round_others_at_the_clock() {
        // The actor takes its rounds 120 s late: its own report (100 s old by the clock) is
        // 10 s older than the newest round it took, and votes; another vantage's report as
        // old by the clock does not.
        let newest = now() - chrono::Duration::seconds(90);
        let clocks = Clocks {
            now: now(),
            own: Some(("a", newest)),
        };
        let r = [report("a", Up, 100, false), report("b", Down, 100, false)];
        let c = combine(Side::Primary, &r, clocks, FRESH, None);
        assert_eq!((c.health, c.up, c.down), (Up, 1, 0), "{}", c.summary());
        assert!(c.votes[1]
            .note
            .as_deref()
            .unwrap_or("")
            .starts_with("stale"));
        // A side whose own probes stopped coming: older than the newest own round by more than
        // the freshness, it is stale however late the actor is.
        let clocks = Clocks {
            now: now(),
            own: Some(("a", now())),
        };
        let c = combine(
            Side::Primary,
            &[report("a", Up, 91, false)],
            clocks,
            FRESH,
            None,
        );
        assert_eq!(c.health, Unknown, "{}", c.summary());
    }

    #[test]
    fn an_explicit_quorum_holds_even_when_fewer_vote() {
        let r = [report("a", Down, 1, false)];
        assert_eq!(health(&r, Some(2)), Unknown);
        let r = [report("a", Down, 1, false), report("b", Down, 1, false)];
        assert_eq!(health(&r, Some(2)), Down);
    }

    #[test]
    fn the_other_side_is_ignored() {
        let mut b = report("b", Down, 1, false);
        b.side = Side::Backup;
        assert_eq!(health(&[report("a", Up, 1, false), b], None), Up);
    }
}
