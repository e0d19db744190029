use super::*;
use proptest::prelude::*;

const T: Thresholds = Thresholds {
    fail_after: 3,
    recover_after: 6,
    soft_fail_after: std::time::Duration::from_secs(600),
};

const P: Outcome = Outcome::Pass;
const F: Outcome = Outcome::Hard;
const S: Outcome = Outcome::Soft;

fn outcome(pass: bool) -> Outcome {
    if pass {
        P
    } else {
        F
    }
}

fn now(i: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + i, 0).expect("valid")
}

fn fqdn(s: &str) -> Fqdn {
    Fqdn::parse(s).expect("name")
}

fn resolver(name: &str, addrs: &[&str], error: Option<&str>) -> ResolverResult {
    ResolverResult {
        resolver: name.to_string(),
        addresses: addrs.iter().map(|a| a.parse().expect("ip")).collect(),
        error: error.map(str::to_string),
    }
}

fn addr(a: &str, pass: bool, reason: &str) -> AddressResult {
    AddressResult {
        address: a.parse().expect("ip"),
        pass,
        soft: !pass && reason.starts_with('4'),
        reason: reason.to_string(),
    }
}

fn round(resolvers: Vec<ResolverResult>, addresses: Vec<AddressResult>) -> TargetRound {
    TargetRound {
        target: fqdn("mx1.example.test"),
        resolvers,
        unasked: Vec::new(),
        addresses,
    }
}

#[test]
fn resolvers_over_their_budget_are_no_evidence() {
    let ok = || resolver("r1", &["192.0.2.1"], None);
    let failed = || resolver("r2", &[], Some("A SERVFAIL, AAAA SERVFAIL"));
    let unasked = |rs: Vec<ResolverResult>, n: usize| TargetRound {
        unasked: (0..n).map(|i| format!("u{i}")).collect(),
        ..round(rs, vec![addr("192.0.2.1", true, "250 ok")])
    };
    // (case, round, quorum, undecided)
    let table = [
        ("quorum met without them", unasked(vec![ok()], 1), 1, false),
        (
            "quorum met, one unasked",
            unasked(vec![ok(), ok()], 1),
            2,
            false,
        ),
        ("the only resolver unasked", unasked(vec![], 1), 1, true),
        (
            "short of the quorum by an unasked one",
            unasked(vec![ok()], 1),
            2,
            true,
        ),
        (
            "one failed, one unasked, quorum 2",
            unasked(vec![ok(), failed()], 1),
            2,
            true,
        ),
        (
            "failed even with them",
            unasked(vec![failed(), failed()], 1),
            2,
            false,
        ),
        ("nothing unasked", unasked(vec![failed()], 0), 1, false),
    ];
    for (case, r, quorum, want) in table {
        assert_eq!(undecided(&r, quorum), want, "{case}");
    }
}

fn outcome_of(c: char) -> Outcome {
    match c {
        'P' => P,
        'S' => S,
        _ => F,
    }
}

/// Feeds a pattern like "PPFFS" (pass, hard failure, soft failure), one round a second, and
/// returns the health after each round.
fn run(pattern: &str) -> Vec<Health> {
    let mut h = SideHealth::new(Side::Primary);
    pattern
        .chars()
        .enumerate()
        .map(|(i, c)| {
            h.observe(outcome_of(c), now(i as i64), T);
            h.health
        })
        .collect()
}

#[test]
fn one_resolver_failing_is_not_an_outage() {
    let r = round(
        vec![
            resolver("a", &["192.0.2.1"], None),
            resolver("b", &["192.0.2.1"], None),
            resolver("c", &[], Some("timeout")),
        ],
        vec![addr("192.0.2.1", true, "250 ok")],
    );
    let v = target_verdict(&r, 2);
    assert!(v.up, "{v:?}");
}

#[test]
fn below_resolver_quorum_the_target_is_down_even_if_smtp_passes() {
    let r = round(
        vec![
            resolver("a", &["192.0.2.1"], None),
            resolver("b", &[], Some("SERVFAIL")),
            resolver("c", &[], Some("timeout")),
        ],
        vec![addr("192.0.2.1", true, "250 ok")],
    );
    let v = target_verdict(&r, 2);
    assert!(!v.up);
    assert_eq!(
        &*v.reason,
        "resolved by 1 of 3 resolvers, quorum is 2 (b: SERVFAIL; c: timeout)"
    );
}

#[test]
fn one_passing_address_is_enough_and_all_failing_is_down() {
    let rs = || vec![resolver("a", &["192.0.2.1", "2001:db8::1"], None)];
    let up = target_verdict(
        &round(
            rs(),
            vec![
                addr("192.0.2.1", false, "connection refused"),
                addr("2001:db8::1", true, "250 ok"),
            ],
        ),
        1,
    );
    assert!(up.up);
    assert_eq!(&*up.reason, "2001:db8::1 passed: 250 ok");
    let down = target_verdict(
        &round(
            rs(),
            vec![
                addr("192.0.2.1", false, "554 banner"),
                addr("2001:db8::1", false, "timeout in connect"),
            ],
        ),
        1,
    );
    assert!(!down.up);
    assert_eq!(
        &*down.reason,
        "192.0.2.1: 554 banner; 2001:db8::1: timeout in connect"
    );
    let none = target_verdict(&round(rs(), vec![]), 1);
    assert!(!none.up);
}

#[test]
fn a_side_passes_when_any_target_is_up_and_fails_softly_when_any_answered_4xx() {
    let v = |up, soft| TargetVerdict {
        target: fqdn("mx.example.test"),
        up,
        soft,
        reason: "".into(),
    };
    assert_eq!(side_outcome(&[v(false, false), v(true, false)]), P);
    assert_eq!(side_outcome(&[v(false, true), v(true, false)]), P);
    assert_eq!(side_outcome(&[v(false, false), v(false, true)]), S);
    assert_eq!(side_outcome(&[v(false, false), v(false, false)]), F);
    assert_eq!(side_outcome(&[]), F);
}

#[test]
fn a_target_fails_softly_when_an_address_answered_4xx_and_it_resolved() {
    let rs = || vec![resolver("a", &["192.0.2.1", "192.0.2.2"], None)];
    let mixed = target_verdict(
        &round(
            rs(),
            vec![
                addr("192.0.2.1", false, "connection refused"),
                addr("192.0.2.2", false, "421 too many connections"),
            ],
        ),
        1,
    );
    assert!(!mixed.up && mixed.soft, "{mixed:?}");
    let hard = target_verdict(
        &round(rs(), vec![addr("192.0.2.1", false, "554 no service")]),
        1,
    );
    assert!(!hard.up && !hard.soft, "{hard:?}");
    // below the resolver quorum it is hard whatever the addresses said
    let unresolved = target_verdict(
        &round(
            vec![
                resolver("a", &["192.0.2.1"], None),
                resolver("b", &[], Some("SERVFAIL")),
            ],
            vec![addr("192.0.2.1", false, "421 busy")],
        ),
        2,
    );
    assert!(!unresolved.up && !unresolved.soft, "{unresolved:?}");
}

#[test]
fn soft_failures_take_a_side_down_only_after_the_soft_window() {
    let t = Thresholds {
        soft_fail_after: std::time::Duration::from_secs(60),
        ..T
    };
    let mut h = SideHealth::new(Side::Primary);
    h.observe(P, now(0), t);
    // a 421 every 5 s for 55 s: far more than fail_after rounds, still Up and not confirmed fast
    for i in 1..=12 {
        assert_eq!(h.observe(S, now(i * 5), t), None, "round {i}");
        assert!(
            !h.confirming(),
            "soft rounds are not confirmed at the fast pace"
        );
    }
    assert_eq!((h.failures, h.hard_failures), (12, 0));
    assert_eq!(h.failing_since, Some(now(5)));
    // 60 s after the first soft round
    let c = h
        .observe(S, now(65), t)
        .expect("Down at the end of the window");
    assert_eq!((c.to, c.failures, c.hard_failures), (Health::Down, 13, 0));
}

#[test]
fn hard_failures_count_among_soft_ones_and_a_pass_run_forgives_both() {
    // hard rounds still take it Down at fail_after, whatever soft rounds come between
    use Health::*;
    assert_eq!(run("PFSFSF"), [Up, Up, Up, Up, Up, Down]);
    // soft rounds alone within the window never do
    assert!(run("PSSSSSSSSSS").iter().all(|h| *h == Up));
    // a hard round after a soft run is confirmed at the fast pace again
    let mut h = SideHealth::new(Side::Primary);
    h.observe(P, now(0), T);
    h.observe(S, now(1), T);
    assert!(!h.confirming());
    h.observe(F, now(2), T);
    assert!(h.confirming());
    // recover_after passes forgive the run: the soft window starts again
    for i in 3..9 {
        h.observe(P, now(i), T);
    }
    assert_eq!((h.failures, h.hard_failures, h.failing_since), (0, 0, None));
}

#[test]
fn transitions_table() {
    use Health::*;
    let cases: &[(&str, &[Health])] = &[
        // first passing round decides Up at once
        ("P", &[Up]),
        // from Unknown, failures count towards Down
        ("FFF", &[Unknown, Unknown, Down]),
        ("FFP", &[Unknown, Unknown, Up]),
        // Up → Down after fail_after failing rounds
        ("PFFF", &[Up, Up, Up, Down]),
        // isolated failures accumulate while Up …
        ("PFPFPF", &[Up, Up, Up, Up, Up, Down]),
        // … unless a run of recover_after passes forgives them
        ("PFFPPPPPPFF", &[Up, Up, Up, Up, Up, Up, Up, Up, Up, Up, Up]),
        // Down → Up only after recover_after consecutive passes
        (
            "PFFFPPPPP",
            &[Up, Up, Up, Down, Down, Down, Down, Down, Down],
        ),
        (
            "PFFFPPPPPP",
            &[Up, Up, Up, Down, Down, Down, Down, Down, Down, Up],
        ),
        // a failure in the recovery run restarts it
        (
            "PFFFPPPPPFPPPPPP",
            &[
                Up, Up, Up, Down, Down, Down, Down, Down, Down, Down, Down, Down, Down, Down, Down,
                Up,
            ],
        ),
    ];
    for (pattern, expected) in cases {
        assert_eq!(&run(pattern), expected, "pattern {pattern}");
    }
}

#[test]
fn changes_carry_evidence_and_time() {
    let mut h = SideHealth::new(Side::Backup);
    assert!(h.observe(P, now(0), T).is_some());
    assert_eq!(h.since, Some(now(0)));
    assert!(h.observe(F, now(1), T).is_none());
    assert!(h.confirming());
    assert!(h.observe(P, now(2), T).is_none());
    assert!(!h.confirming(), "a pass ends confirmation");
    assert!(h.observe(F, now(3), T).is_none());
    assert_eq!(
        h.failures, 2,
        "the earlier failure is not forgiven by one pass"
    );
    let c = h
        .observe(F, now(4), T)
        .expect("goes down at the third failure");
    assert_eq!(
        c,
        HealthChange {
            side: Side::Backup,
            from: Health::Up,
            to: Health::Down,
            failures: 3,
            hard_failures: 3,
            passes: 0
        }
    );
    assert_eq!(h.since, Some(now(4)));
    assert!(!h.confirming(), "a Down side is not being confirmed");
}

proptest! {
    /// A single lost round can never take an Up side Down (fail_after ≥ 2), and no side goes
    /// Down without fail_after failing rounds since it was last Up and forgiven.
    #[test]
    fn isolated_failures_never_cause_down(pattern in proptest::collection::vec(any::<bool>(), 1..200)) {
        // make failures isolated: never two within recover_after rounds
        let mut last_fail: Option<usize> = None;
        let mut h = SideHealth::new(Side::Primary);
        h.observe(P, now(0), T);
        for (i, fail) in pattern.iter().enumerate() {
            let isolated = *fail && last_fail.is_none_or(|l| i - l > T.recover_after as usize);
            if isolated { last_fail = Some(i); }
            h.observe(outcome(!isolated), now(i as i64 + 1), T);
            prop_assert_eq!(h.health, Health::Up);
        }
    }

    /// Down is left only after recover_after consecutive passes.
    #[test]
    fn recovery_needs_a_full_run(pattern in proptest::collection::vec(any::<bool>(), 1..300)) {
        let mut h = SideHealth::new(Side::Primary);
        let mut run = 0u32;
        for (i, pass) in pattern.iter().enumerate() {
            let before = h.health;
            run = if *pass { run + 1 } else { 0 };
            h.observe(outcome(*pass), now(i as i64), T);
            if before == Health::Down && h.health == Health::Up {
                prop_assert!(run >= T.recover_after);
            }
            if h.health == Health::Down {
                prop_assert!(before != Health::Up || !*pass);
            }
        }
    }

    /// Soft rounds never take a side Down before `soft_fail_after` has passed since the first
    /// failing round of the run, and hard rounds alone take it Down at `fail_after` as before.
    #[test]
    fn soft_rounds_never_cut_the_window_short(
        pattern in proptest::collection::vec(0u8..3, 1..300),
        step in 1i64..30,
    ) {
        let mut h = SideHealth::new(Side::Primary);
        h.observe(P, now(0), T);
        let mut run_start: Option<i64> = None;
        let mut hard = 0u32;
        let mut passes = 0u32;
        for (i, o) in pattern.iter().enumerate() {
            let at = (i as i64 + 1) * step;
            let o = [P, S, F][*o as usize];
            let before = h.health;
            if o == P {
                passes += 1;
                if passes >= T.recover_after { run_start = None; hard = 0; }
            } else {
                passes = 0;
                run_start.get_or_insert(at);
                hard += u32::from(o == F);
            }
            let change = h.observe(o, now(at), T);
            if before != Health::Down && h.health == Health::Down {
                let lasted = at - run_start.unwrap_or(at);
                prop_assert!(hard >= T.fail_after || lasted >= T.soft_fail_after.as_secs() as i64,
                    "Down with {hard} hard failures after {lasted} s: {change:?}");
            }
            if before == Health::Up && hard >= T.fail_after {
                prop_assert_eq!(h.health, Health::Down);
            }
        }
    }
}
