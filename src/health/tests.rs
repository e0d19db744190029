use super::*;
use proptest::prelude::*;

const T: Thresholds = Thresholds {
    fail_after: 3,
    recover_after: 6,
};

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
        reason: reason.to_string(),
    }
}

fn round(resolvers: Vec<ResolverResult>, addresses: Vec<AddressResult>) -> TargetRound {
    TargetRound {
        target: fqdn("mx1.example.test"),
        resolvers,
        addresses,
    }
}

/// Feeds a pattern like "PPFFF" and returns the health after each round.
fn run(pattern: &str) -> Vec<Health> {
    let mut h = SideHealth::new(Side::Primary);
    pattern
        .chars()
        .enumerate()
        .map(|(i, c)| {
            h.observe(c == 'P', now(i as i64), T);
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
        v.reason,
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
    assert_eq!(up.reason, "2001:db8::1 passed: 250 ok");
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
        down.reason,
        "192.0.2.1: 554 banner; 2001:db8::1: timeout in connect"
    );
    let none = target_verdict(&round(rs(), vec![]), 1);
    assert!(!none.up);
}

#[test]
fn a_side_passes_when_any_target_is_up() {
    let v = |up| TargetVerdict {
        target: fqdn("mx.example.test"),
        up,
        reason: String::new(),
    };
    assert!(side_passes(&[v(false), v(true)]));
    assert!(!side_passes(&[v(false), v(false)]));
    assert!(!side_passes(&[]));
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
    assert!(h.observe(true, now(0), T).is_some());
    assert_eq!(h.since, Some(now(0)));
    assert!(h.observe(false, now(1), T).is_none());
    assert!(h.confirming());
    assert!(h.observe(true, now(2), T).is_none());
    assert!(!h.confirming(), "a pass ends confirmation");
    assert!(h.observe(false, now(3), T).is_none());
    assert_eq!(
        h.failures, 2,
        "the earlier failure is not forgiven by one pass"
    );
    let c = h
        .observe(false, now(4), T)
        .expect("goes down at the third failure");
    assert_eq!(
        c,
        HealthChange {
            side: Side::Backup,
            from: Health::Up,
            to: Health::Down,
            failures: 3,
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
        h.observe(true, now(0), T);
        for (i, fail) in pattern.iter().enumerate() {
            let isolated = *fail && last_fail.is_none_or(|l| i - l > T.recover_after as usize);
            if isolated { last_fail = Some(i); }
            h.observe(!isolated, now(i as i64 + 1), T);
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
            h.observe(*pass, now(i as i64), T);
            if before == Health::Down && h.health == Health::Up {
                prop_assert!(run >= T.recover_after);
            }
            if h.health == Health::Down {
                prop_assert!(before != Health::Up || !*pass);
            }
        }
    }
}
