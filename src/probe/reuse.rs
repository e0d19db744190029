//! When a host's A/AAAA answer from one resolver is asked again, and when the last one is
//! reused. Pure: no I/O, no clock reads (`now` is passed in).
//!
//! Resolvers are usually public (8.8.8.8 …) and rate-limit their clients; asking every host at
//! every resolver every round is hosts × 2 queries per interval, however rarely the answers
//! change. So:
//!
//! * A **good** answer (addresses, every answer NOERROR or NODATA) is reused for its
//!   **lifetime**: `dns_interval` or its TTL, whichever is shorter. It is asked again at the
//!   round nearest to the end of its lifetime (reused while its age plus half an interval is
//!   below the lifetime), so `dns_interval = interval` asks every round despite the rounds'
//!   jitter.
//! * A **bad** answer (NXDOMAIN, SERVFAIL, timeout, no address) is never reused: the next
//!   round asks again.
//! * A **confirmation** round (a side failed a round and is not Down yet) asks again at once:
//!   the failure may be the answer that changed.
//! * A host's **first** good answer lives a random part of its lifetime (`spread`, in (0, 1]):
//!   hosts start within one interval of each other, and without it they would all ask again
//!   within that same interval of every `dns_interval`; with it their asks spread evenly over
//!   the `dns_interval`.
//! * When the resolver's query budget cannot serve an ask in time (`budget.rs`), the last good
//!   answer stands whatever its age (what the resolver said when it was last asked; a budget
//!   is not an outage); with none, that resolver gives no evidence for the round.

use std::time::{Duration, Instant};

use super::dns::{DnsAnswer, DnsStatus};

/// How long answers may be reused: a prober's `dns_interval` and round `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rules {
    pub dns_interval: Duration,
    pub interval: Duration,
}

impl Rules {
    /// Never reuse: every round asks (the `check` command, tests of single probes).
    pub const ALWAYS_ASK: Rules = Rules {
        dns_interval: Duration::ZERO,
        interval: Duration::ZERO,
    };
}

/// What is known of the last answer of one resolver for one host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Last {
    pub asked_at: Instant,
    pub good: bool,
    /// The smallest TTL of its records.
    pub ttl: Option<u32>,
    /// The share of its lifetime it lives: 1 but for a host's first good answer.
    pub spread: f64,
}

/// What a round does about one resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Reuse the last answer.
    Reuse,
    /// Ask the resolver (within the budget).
    Ask,
}

/// Whether `answers` (a host's A and AAAA from one resolver) may be reused: some address, and
/// every answer NOERROR or NODATA.
pub fn good(answers: &[DnsAnswer]) -> bool {
    answers.iter().any(|a| !a.addresses().is_empty())
        && answers
            .iter()
            .all(|a| matches!(a.status, DnsStatus::NoError | DnsStatus::NoData))
}

/// The smallest TTL among `answers`' records.
pub fn ttl(answers: &[DnsAnswer]) -> Option<u32> {
    answers.iter().filter_map(|a| a.ttl).min()
}

/// How long an answer with `last`'s TTL and spread is reused under `rules`.
pub fn lifetime(last: &Last, rules: &Rules) -> Duration {
    let ttl = last
        .ttl
        .map_or(Duration::ZERO, |t| Duration::from_secs(t.into()));
    rules
        .dns_interval
        .min(ttl)
        .mul_f64(last.spread.clamp(0.0, 1.0))
}

/// Whether a round at `now` asks the resolver or reuses `last` (module doc).
pub fn decide(last: Option<&Last>, now: Instant, rules: &Rules, confirmation: bool) -> Decision {
    let Some(last) = last else {
        return Decision::Ask;
    };
    if confirmation || !last.good {
        return Decision::Ask;
    }
    let age = now.saturating_duration_since(last.asked_at);
    if age + rules.interval / 2 < lifetime(last, rules) {
        Decision::Reuse
    } else {
        Decision::Ask
    }
}

/// Whether a round whose ask the budget refused reuses `last` (else: no evidence).
pub fn fallback(last: Option<&Last>) -> bool {
    last.is_some_and(|l| l.good)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Rules = Rules {
        dns_interval: Duration::from_secs(60),
        interval: Duration::from_secs(5),
    };

    fn last(at: Instant, good: bool, ttl: Option<u32>, spread: f64) -> Last {
        Last {
            asked_at: at,
            good,
            ttl,
            spread,
        }
    }

    /// (case, last answer, its age, rules, confirmation, decision)
    type Case = (&'static str, Option<Last>, Duration, Rules, bool, Decision);

    #[test]
    fn reuse_table() {
        use Decision::{Ask, Reuse};
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let table: Vec<Case> = vec![
            ("never asked", None, s(0), MINUTE, false, Ask),
            (
                "fresh good answer",
                Some(last(t0, true, Some(300), 1.0)),
                s(5),
                MINUTE,
                false,
                Reuse,
            ),
            (
                "good answer, 57 s old",
                Some(last(t0, true, Some(300), 1.0)),
                s(57),
                MINUTE,
                false,
                Reuse,
            ),
            (
                "the round nearest to dns_interval asks",
                Some(last(t0, true, Some(300), 1.0)),
                s(58),
                MINUTE,
                false,
                Ask,
            ),
            (
                "past dns_interval",
                Some(last(t0, true, Some(300), 1.0)),
                s(61),
                MINUTE,
                false,
                Ask,
            ),
            (
                "a TTL shorter than dns_interval decides",
                Some(last(t0, true, Some(20), 1.0)),
                s(18),
                MINUTE,
                false,
                Ask,
            ),
            (
                "within the short TTL",
                Some(last(t0, true, Some(20), 1.0)),
                s(10),
                MINUTE,
                false,
                Reuse,
            ),
            (
                "TTL 0 is never reused",
                Some(last(t0, true, Some(0), 1.0)),
                s(0),
                MINUTE,
                false,
                Ask,
            ),
            (
                "no TTL is never reused",
                Some(last(t0, true, None, 1.0)),
                s(0),
                MINUTE,
                false,
                Ask,
            ),
            (
                "a bad answer is never reused",
                Some(last(t0, false, Some(300), 1.0)),
                s(1),
                MINUTE,
                false,
                Ask,
            ),
            (
                "confirmation asks at once",
                Some(last(t0, true, Some(300), 1.0)),
                s(1),
                MINUTE,
                true,
                Ask,
            ),
            (
                "a first answer lives its spread",
                Some(last(t0, true, Some(300), 0.25)),
                s(12),
                MINUTE,
                false,
                Reuse,
            ),
            (
                "… and is asked again after it",
                Some(last(t0, true, Some(300), 0.25)),
                s(13),
                MINUTE,
                false,
                Ask,
            ),
            (
                "dns_interval = interval asks every round",
                Some(last(t0, true, Some(300), 1.0)),
                s(1) - Duration::from_millis(50),
                Rules {
                    dns_interval: s(1),
                    interval: s(1),
                },
                false,
                Ask,
            ),
            (
                "the check command always asks",
                Some(last(t0, true, Some(300), 1.0)),
                s(0),
                Rules::ALWAYS_ASK,
                false,
                Ask,
            ),
        ];
        for (case, l, age, rules, confirmation, want) in table {
            assert_eq!(
                decide(l.as_ref(), t0 + age, &rules, confirmation),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn only_a_good_answer_stands_in_for_a_refused_ask() {
        let t0 = Instant::now();
        assert!(!fallback(None), "nothing to reuse: no evidence");
        assert!(
            fallback(Some(&last(t0, true, Some(1), 1.0))),
            "whatever its age"
        );
        assert!(!fallback(Some(&last(t0, false, Some(300), 1.0))));
    }

    #[test]
    fn lifetimes() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(lifetime(&last(t0, true, Some(300), 1.0), &MINUTE), s(60));
        assert_eq!(lifetime(&last(t0, true, Some(30), 1.0), &MINUTE), s(30));
        assert_eq!(lifetime(&last(t0, true, Some(300), 0.5), &MINUTE), s(30));
        assert_eq!(
            lifetime(&last(t0, true, Some(300), 7.0), &MINUTE),
            s(60),
            "clamped"
        );
    }
}
