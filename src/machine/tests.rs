use super::*;
use proptest::prelude::*;
use Health::{Down, Unknown, Up};

fn t(secs: i64) -> Time {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid")
}

fn policy() -> Policy {
    Policy {
        hold: Some(Duration::from_secs(600)),
        ..Policy::default()
    }
}

fn health(p: Health, b: Health) -> Input {
    Input::Health {
        primary: p,
        backup: b,
    }
}

fn cmd(command: Command) -> Input {
    Input::Command {
        command,
        by: "chatops".into(),
        reason: "incident #1".into(),
    }
}

fn publishes(fx: &[Effect]) -> Vec<Side> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Publish { side, .. } => Some(*side),
            _ => None,
        })
        .collect()
}

fn rejected(fx: &[Effect]) -> bool {
    fx.iter().any(|e| matches!(e, Effect::Rejected { .. }))
}

/// A state already settled on the primary.
fn on_primary() -> DomainState {
    let mut s = DomainState::default();
    step(
        &mut s,
        Input::Observed {
            published: Some(Side::Primary),
            ttl: Some(3600),
        },
        t(0),
        &policy(),
    );
    step(&mut s, health(Up, Up), t(0), &policy());
    assert_eq!(s.phase, Phase::Primary);
    s
}

fn failed_over() -> DomainState {
    let mut s = on_primary();
    assert_eq!(
        publishes(&step(&mut s, health(Down, Up), t(10), &policy())),
        vec![Side::Backup]
    );
    step(
        &mut s,
        Input::ChangeVerified { side: Side::Backup },
        t(20),
        &policy(),
    );
    assert_eq!(s.phase, Phase::OnBackup);
    s
}

#[test]
fn unknown_waits_for_a_primary_verdict_and_never_publishes() {
    let mut s = DomainState::default();
    step(
        &mut s,
        Input::Observed {
            published: Some(Side::Primary),
            ttl: Some(300),
        },
        t(0),
        &policy(),
    );
    assert!(step(&mut s, health(Unknown, Up), t(1), &policy()).is_empty());
    assert_eq!(s.phase, Phase::Unknown);
    let fx = step(&mut s, health(Down, Up), t(2), &policy());
    assert!(publishes(&fx).is_empty(), "Unknown never changes records");
    assert_eq!(s.phase, Phase::Primary);
    // the next round decides
    assert_eq!(
        publishes(&step(&mut s, health(Down, Up), t(3), &policy())),
        vec![Side::Backup]
    );
}

#[test]
fn unknown_follows_what_is_published() {
    for (published, p, b, phase) in [
        (Side::Primary, Up, Up, Phase::Primary),
        (Side::Backup, Up, Up, Phase::OnBackup),
        (Side::Backup, Down, Up, Phase::OnBackup),
        (Side::Primary, Down, Down, Phase::BothDown),
    ] {
        let mut s = DomainState::default();
        step(
            &mut s,
            Input::Observed {
                published: Some(published),
                ttl: None,
            },
            t(0),
            &policy(),
        );
        assert!(publishes(&step(&mut s, health(p, b), t(1), &policy())).is_empty());
        assert_eq!(s.phase, phase, "{published:?} {p:?} {b:?}");
    }
    let mut s = DomainState::default();
    step(
        &mut s,
        Input::Observed {
            published: None,
            ttl: None,
        },
        t(0),
        &policy(),
    );
    step(&mut s, health(Up, Up), t(1), &policy());
    assert_eq!(
        s.phase,
        Phase::Unknown,
        "records matching neither side wait for an operator"
    );
}

#[test]
fn failover_needs_the_backup_up() {
    let mut s = on_primary();
    assert!(publishes(&step(&mut s, health(Down, Unknown), t(5), &policy())).is_empty());
    assert_eq!(s.phase, Phase::Primary);
    let fx = step(&mut s, health(Down, Down), t(6), &policy());
    assert!(publishes(&fx).is_empty());
    assert_eq!(s.phase, Phase::BothDown);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Event {
            kind: EventKind::BothDown,
            ..
        }
    )));
}

#[test]
fn failover_remembers_the_ttl_and_one_change_at_a_time() {
    let mut s = on_primary();
    let fx = step(&mut s, health(Down, Up), t(10), &policy());
    assert_eq!(publishes(&fx), vec![Side::Backup]);
    assert_eq!(s.phase, Phase::FailingOver);
    assert_eq!(s.ttl_before_failover, Some(3600));
    assert_eq!(s.in_flight, Some(Side::Backup));
    // while in flight: no second publish, whatever happens
    assert!(publishes(&step(&mut s, health(Up, Up), t(11), &policy())).is_empty());
    assert!(rejected(&step(
        &mut s,
        cmd(Command::Failback),
        t(12),
        &policy()
    )));
    // a failure alerts and keeps the change in flight for the actor to retry
    let fx = step(
        &mut s,
        Input::ChangeFailed {
            side: Side::Backup,
            error: "SERVFAIL".into(),
        },
        t(13),
        &policy(),
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Event {
            kind: EventKind::ChangeFailed,
            ..
        }
    )));
    assert_eq!(s.phase, Phase::FailingOver);
    step(
        &mut s,
        Input::ChangeVerified { side: Side::Backup },
        t(14),
        &policy(),
    );
    // the primary reported Up meanwhile, so the failback guard starts at once
    assert_eq!(
        (s.phase, s.published, s.in_flight),
        (Phase::FailbackPending, Some(Side::Backup), None)
    );
}

#[test]
fn failback_only_after_the_whole_hold() {
    let mut s = failed_over();
    step(&mut s, health(Up, Up), t(100), &policy());
    assert_eq!(s.phase, Phase::FailbackPending);
    assert_eq!(next_deadline(&s, &policy()), Some(t(700)));
    assert!(publishes(&step(&mut s, Input::Tick, t(699), &policy())).is_empty());
    // a relapse restarts the guard
    step(&mut s, health(Down, Up), t(650), &policy());
    assert_eq!(s.phase, Phase::OnBackup);
    step(&mut s, health(Up, Up), t(660), &policy());
    assert!(publishes(&step(&mut s, Input::Tick, t(700), &policy())).is_empty());
    let fx = step(&mut s, Input::Tick, t(1260), &policy());
    assert_eq!(publishes(&fx), vec![Side::Primary]);
    assert_eq!(s.phase, Phase::FailingBack);
    step(
        &mut s,
        Input::ChangeVerified {
            side: Side::Primary,
        },
        t(1270),
        &policy(),
    );
    assert_eq!(s.phase, Phase::Primary);
}

#[test]
fn default_hold_is_ten_minutes_or_twice_the_old_ttl() {
    let p = Policy::default();
    let mut s = DomainState {
        ttl_before_failover: Some(60),
        ..DomainState::default()
    };
    assert_eq!(p.hold_for(&s), Duration::from_secs(600));
    s.ttl_before_failover = Some(3600);
    assert_eq!(p.hold_for(&s), Duration::from_secs(7200));
}

#[test]
fn approval_holds_failback_until_approved() {
    let pol = Policy {
        approval: true,
        ..policy()
    };
    let mut s = failed_over();
    step(&mut s, health(Up, Up), t(100), &pol);
    assert!(publishes(&step(&mut s, Input::Tick, t(800), &pol)).is_empty());
    // the hold is long over: approving starts the failback at once
    let fx = step(&mut s, cmd(Command::Approve), t(801), &pol);
    assert_eq!(publishes(&fx), vec![Side::Primary]);
}

#[test]
fn backup_down_while_primary_up_fails_back_without_waiting() {
    let mut s = failed_over();
    step(&mut s, health(Up, Up), t(100), &policy());
    assert_eq!(
        publishes(&step(&mut s, health(Up, Down), t(110), &policy())),
        vec![Side::Primary]
    );
}

#[test]
fn both_down_keeps_what_is_published_and_leaves_to_an_up_side() {
    let mut s = on_primary();
    step(&mut s, health(Down, Down), t(5), &policy());
    assert_eq!(s.phase, Phase::BothDown);
    assert!(publishes(&step(&mut s, health(Down, Down), t(6), &policy())).is_empty());
    assert_eq!(
        publishes(&step(&mut s, health(Down, Up), t(7), &policy())),
        vec![Side::Backup]
    );
    let mut s = on_primary();
    step(&mut s, health(Down, Down), t(5), &policy());
    assert!(publishes(&step(&mut s, health(Up, Down), t(6), &policy())).is_empty());
    assert_eq!(s.phase, Phase::Primary, "the published side came back");
}

#[test]
fn pin_wins_until_unpinned_or_expired() {
    let mut s = on_primary();
    let fx = step(
        &mut s,
        cmd(Command::Pin {
            side: Side::Backup,
            until: t(3600),
        }),
        t(10),
        &policy(),
    );
    assert_eq!(publishes(&fx), vec![Side::Backup]);
    step(
        &mut s,
        Input::ChangeVerified { side: Side::Backup },
        t(20),
        &policy(),
    );
    // automation would fail back after the hold, but the pin wins
    step(&mut s, health(Up, Up), t(30), &policy());
    assert!(publishes(&step(&mut s, Input::Tick, t(3000), &policy())).is_empty());
    assert_eq!(next_deadline(&s, &policy()), Some(t(3600)));
    // expiry lifts it; automation resumes (the primary has been Up since 30 s)
    let fx = step(&mut s, Input::Tick, t(3600), &policy());
    assert!(s.overrides.is_none());
    assert_eq!(publishes(&fx), vec![Side::Primary]);
}

#[test]
fn an_operator_failover_is_not_undone_before_the_hold() {
    let mut s = on_primary();
    // the primary is Up all along; the operator moves to the backup anyway
    assert_eq!(
        publishes(&step(&mut s, cmd(Command::Failover), t(100), &policy())),
        vec![Side::Backup]
    );
    step(
        &mut s,
        Input::ChangeVerified { side: Side::Backup },
        t(101),
        &policy(),
    );
    assert_eq!(s.phase, Phase::FailbackPending);
    assert_eq!(
        next_deadline(&s, &policy()),
        Some(t(700)),
        "the hold counts from the move"
    );
    assert!(publishes(&step(&mut s, Input::Tick, t(102), &policy())).is_empty());
    assert_eq!(
        publishes(&step(&mut s, Input::Tick, t(700), &policy())),
        vec![Side::Primary]
    );
}

#[test]
fn unpin_lets_automation_act_at_once() {
    let mut s = on_primary();
    step(
        &mut s,
        cmd(Command::Pin {
            side: Side::Backup,
            until: t(99_999),
        }),
        t(10),
        &policy(),
    );
    step(
        &mut s,
        Input::ChangeVerified { side: Side::Backup },
        t(11),
        &policy(),
    );
    assert_eq!(s.phase, Phase::OnBackup, "pinned: no failback guard");
    // unpinned long after the hold: the failback starts in the same step
    let fx = step(&mut s, cmd(Command::Unpin), t(1000), &policy());
    assert_eq!(publishes(&fx), vec![Side::Primary]);
    // unpinned before the hold: the guard starts and a deadline is set
    let mut s = on_primary();
    step(
        &mut s,
        cmd(Command::Pin {
            side: Side::Backup,
            until: t(99_999),
        }),
        t(10),
        &policy(),
    );
    step(
        &mut s,
        Input::ChangeVerified { side: Side::Backup },
        t(11),
        &policy(),
    );
    assert!(publishes(&step(&mut s, cmd(Command::Unpin), t(20), &policy())).is_empty());
    assert_eq!(s.phase, Phase::FailbackPending);
    assert_eq!(next_deadline(&s, &policy()), Some(t(610)));
}

#[test]
fn commands_that_would_publish_a_down_side_are_refused() {
    let mut s = on_primary();
    step(&mut s, health(Up, Down), t(5), &policy());
    let before = s.clone();
    for c in [
        Command::Failover,
        Command::Pin {
            side: Side::Backup,
            until: t(99),
        },
    ] {
        let fx = step(&mut s, cmd(c), t(6), &policy());
        assert!(rejected(&fx));
        assert!(publishes(&fx).is_empty());
        assert_eq!(s, before, "a refused command changes nothing");
    }
    assert!(
        rejected(&step(
            &mut s,
            cmd(Command::Pin {
                side: Side::Primary,
                until: t(1)
            }),
            t(6),
            &policy()
        )),
        "pin in the past"
    );
    assert!(rejected(&step(
        &mut s,
        cmd(Command::Unpin),
        t(6),
        &policy()
    )));
    assert!(rejected(&step(
        &mut s,
        cmd(Command::Resume),
        t(6),
        &policy()
    )));
    assert!(
        rejected(&step(&mut s, cmd(Command::Failback), t(6), &policy())),
        "already published"
    );
}

#[test]
fn pause_stops_automation_and_resume_restarts_it() {
    let mut s = on_primary();
    step(&mut s, cmd(Command::Pause), t(1), &policy());
    assert!(publishes(&step(&mut s, health(Down, Up), t(2), &policy())).is_empty());
    assert_eq!(s.primary, Down, "health is still tracked while paused");
    // resuming acts on the current health at once
    assert_eq!(
        publishes(&step(&mut s, cmd(Command::Resume), t(3), &policy())),
        vec![Side::Backup]
    );
}

#[test]
fn flap_guard_pauses_after_too_many_moves() {
    let pol = Policy {
        hold: Some(Duration::from_secs(0)),
        flap_max: 4,
        ..policy()
    };
    let mut s = on_primary();
    let mut moves = 0;
    let mut now = 10;
    let mut alerted = false;
    for _ in 0..10 {
        for input in [health(Down, Up), health(Up, Up)] {
            now += 10;
            let fx = step(&mut s, input, t(now), &pol);
            moves += publishes(&fx).len();
            alerted |= fx.iter().any(|e| {
                matches!(
                    e,
                    Effect::Event {
                        kind: EventKind::FlapGuard,
                        ..
                    }
                )
            });
            if let Some(side) = s.in_flight {
                step(&mut s, Input::ChangeVerified { side }, t(now), &pol);
            }
        }
    }
    assert_eq!(moves, 4);
    assert!(alerted);
    assert!(matches!(
        &s.overrides,
        Some(Override::Paused {
            by: PausedBy::FlapGuard,
            ..
        })
    ));
}

fn drifted() -> Input {
    Input::Observed {
        published: None,
        ttl: Some(5),
    }
}

fn alerts(fx: &[Effect], kind: EventKind) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::Event { kind: k, .. } if *k == kind && kind.is_alert()))
        .count()
}

#[test]
fn drift_restores_the_published_side_only_when_correcting_and_only_an_up_side() {
    let correcting = Policy {
        correct_drift: true,
        ..policy()
    };
    // drift = "report": nothing is written
    let mut s = on_primary();
    assert!(publishes(&step(&mut s, drifted(), t(10), &policy())).is_empty());
    assert_eq!((s.phase, s.published), (Phase::Primary, None));

    // correcting, on the primary: the primary's records go back, as an automated move
    let mut s = on_primary();
    let fx = step(&mut s, drifted(), t(10), &correcting);
    assert_eq!(publishes(&fx), vec![Side::Primary]);
    assert_eq!(
        (s.phase, s.in_flight, s.moves.len()),
        (Phase::FailingBack, Some(Side::Primary), 1)
    );
    step(
        &mut s,
        Input::ChangeVerified {
            side: Side::Primary,
        },
        t(11),
        &correcting,
    );
    assert_eq!(
        (s.phase, s.published),
        (Phase::Primary, Some(Side::Primary))
    );

    // on the backup: the backup's, keeping the TTL to restore on failback and the hold
    let mut s = failed_over();
    step(&mut s, health(Up, Up), t(30), &correcting);
    let (ttl, up_since) = (s.ttl_before_failover, s.primary_up_since);
    let fx = step(&mut s, drifted(), t(40), &correcting);
    assert_eq!(publishes(&fx), vec![Side::Backup]);
    assert_eq!((s.ttl_before_failover, s.primary_up_since), (ttl, up_since));
    assert_eq!(ttl, Some(3600));

    // both Down: nothing is published, someone is told
    let mut s = on_primary();
    step(&mut s, health(Down, Down), t(10), &correcting);
    assert_eq!(s.phase, Phase::BothDown);
    let fx = step(&mut s, drifted(), t(20), &correcting);
    assert!(publishes(&fx).is_empty(), "{fx:?}");
    assert_eq!(alerts(&fx, EventKind::DriftNotCorrected), 1, "{fx:?}");

    // paused or pinned: the operator decides
    let mut s = on_primary();
    step(&mut s, cmd(Command::Pause), t(10), &correcting);
    let fx = step(&mut s, drifted(), t(20), &correcting);
    assert!(publishes(&fx).is_empty());
    assert_eq!(alerts(&fx, EventKind::DriftNotCorrected), 1);
}

fn revert(side: Side) -> Input {
    Input::Revert {
        side,
        snapshot: 7,
        by: "admin".into(),
        reason: "undo".into(),
    }
}

#[test]
fn a_revert_is_an_operators_move_under_the_same_rules() {
    // on the backup with the primary Up: the primary's snapshot goes back at once, with its
    // records (not the side's configured ones), and it is no automated move
    let mut s = failed_over();
    step(&mut s, health(Up, Up), t(30), &policy());
    let fx = step(&mut s, revert(Side::Primary), t(40), &policy());
    assert!(
        fx.iter().any(|e| matches!(
            e,
            Effect::Publish {
                side: Side::Primary,
                from: Some(7),
                ..
            }
        )),
        "{fx:?}"
    );
    assert_eq!(
        (s.phase, s.in_flight),
        (Phase::FailingBack, Some(Side::Primary))
    );
    assert_eq!(s.moves.len(), 1, "only the automated failover counts");

    // refused, changing nothing: a change in flight, a Down side, a pin elsewhere
    let mut s = on_primary();
    step(&mut s, health(Down, Up), t(10), &policy());
    let before = s.clone();
    assert!(rejected(&step(
        &mut s,
        revert(Side::Primary),
        t(11),
        &policy()
    )));
    assert_eq!(s, before);
    let mut s = failed_over();
    let before = s.clone();
    let fx = step(&mut s, revert(Side::Primary), t(30), &policy());
    assert!(
        rejected(&fx) && publishes(&fx).is_empty(),
        "the primary is Down: {fx:?}"
    );
    assert_eq!(s, before);
    let mut s = on_primary();
    step(
        &mut s,
        cmd(Command::Pin {
            side: Side::Primary,
            until: t(5000),
        }),
        t(10),
        &policy(),
    );
    assert!(rejected(&step(
        &mut s,
        revert(Side::Backup),
        t(20),
        &policy()
    )));
}

#[test]
fn drift_corrections_count_towards_the_flap_guard() {
    let pol = Policy {
        correct_drift: true,
        flap_max: 3,
        ..policy()
    };
    let mut s = on_primary();
    let mut restored = 0;
    for i in 0..5 {
        let fx = step(&mut s, drifted(), t(10 * i + 10), &pol);
        restored += publishes(&fx).len();
        if let Some(side) = s.in_flight {
            step(&mut s, Input::ChangeVerified { side }, t(10 * i + 11), &pol);
        }
    }
    assert_eq!(
        restored, 3,
        "someone editing the records by hand is not fought forever"
    );
    assert!(matches!(
        &s.overrides,
        Some(Override::Paused {
            by: PausedBy::FlapGuard,
            ..
        })
    ));
}

#[test]
fn state_round_trips_through_json() {
    let mut s = failed_over();
    step(
        &mut s,
        cmd(Command::Pin {
            side: Side::Backup,
            until: t(9999),
        }),
        t(30),
        &policy(),
    );
    let json = serde_json::to_value(&s).unwrap();
    let back: DomainState = serde_json::from_value(json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn incident_spans_leaving_and_regaining_normal_operation() {
    let open = |since| {
        Some(Incident {
            since: t(since),
            until: None,
        })
    };
    let closed = |since, until| {
        Some(Incident {
            since: t(since),
            until: Some(t(until)),
        })
    };
    let verified = |side| Input::ChangeVerified { side };
    let pol = policy();
    // (input, time, incident after the step)
    let table: Vec<(Input, i64, Option<Incident>)> = vec![
        (health(Up, Down), 5, None), // the backup Down alone is no incident
        (health(Up, Up), 6, None),
        (health(Down, Up), 10, open(10)), // failover starts
        (verified(Side::Backup), 20, open(10)),
        (
            Input::ChangeFailed {
                side: Side::Backup,
                error: "x".into(),
            },
            21,
            open(10),
        ),
        (health(Down, Down), 30, open(10)), // BothDown: the same incident
        (health(Up, Down), 40, open(10)),   // the primary Up, the backup Down: failing back
        (verified(Side::Primary), 50, closed(10, 50)),
        (health(Up, Up), 60, closed(10, 50)),
        (cmd(Command::Failover), 70, open(70)), // an operator's failover is a new incident
        (verified(Side::Backup), 80, open(70)),
        (cmd(Command::Failback), 90, open(70)),
        (verified(Side::Primary), 100, closed(70, 100)),
        (health(Down, Down), 110, open(110)), // both Down while on the primary
        (health(Up, Down), 120, closed(110, 120)),
    ];
    let mut s = on_primary();
    assert_eq!(s.incident, None, "settling on the primary is no incident");
    for (i, (input, at, want)) in table.into_iter().enumerate() {
        let shown = format!("{input:?}");
        step(&mut s, input, t(at), &pol);
        assert_eq!(s.incident, want, "row {i}: {shown} → {:?}", s.phase);
    }

    // The flap guard pausing automation opens one; the primary Up is not enough to close it
    // while automation stays paused; a resume on the healthy primary does.
    let mut s = on_primary();
    s.moves = (0..4).map(t).collect();
    step(&mut s, health(Down, Up), t(10), &pol);
    assert!(matches!(
        &s.overrides,
        Some(Override::Paused {
            by: PausedBy::FlapGuard,
            ..
        })
    ));
    assert_eq!(s.phase, Phase::Primary);
    assert_eq!(s.incident, open(10));
    step(&mut s, health(Up, Up), t(20), &pol);
    assert_eq!(s.incident, open(10));
    step(&mut s, cmd(Command::Resume), t(30), &pol);
    assert_eq!(s.incident, closed(10, 30));

    // An operator's pause is no incident; a state saved before the field existed reads as none.
    let mut s = on_primary();
    step(&mut s, cmd(Command::Pause), t(10), &pol);
    assert_eq!(s.incident, None);
    let mut json = serde_json::to_value(failed_over()).unwrap();
    json.as_object_mut().unwrap().remove("incident");
    let old: DomainState = serde_json::from_value(json).unwrap();
    assert_eq!(old.incident, None);
}

// ---- invariants over generated histories ----

#[derive(Debug, Clone)]
enum Gen {
    Health(Health, Health),
    Verify,
    Fail,
    Tick,
    Cmd(Command),
    Advance(i64),
    /// The published records edited to match neither side.
    Drift,
    /// What the provider serves, read back (the side last published).
    Observe,
    Revert(Side),
    /// A new MTA-STS evaluation: the backup refused by the policy, or not.
    MtaSts(bool),
    /// The leader's own primary round: quiet, or one of the early signs.
    Round(Option<u8>),
}

fn arb_health() -> impl Strategy<Value = Health> {
    prop_oneof![Just(Up), Just(Down), Just(Unknown)]
}

fn arb_side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Primary), Just(Side::Backup)]
}

fn arb_gen() -> impl Strategy<Value = Gen> {
    prop_oneof![
        6 => (arb_health(), arb_health()).prop_map(|(p, b)| Gen::Health(p, b)),
        3 => Just(Gen::Verify),
        1 => Just(Gen::Fail),
        2 => Just(Gen::Tick),
        4 => (1i64..900).prop_map(Gen::Advance),
        1 => Just(Gen::Drift),
        1 => Just(Gen::Observe),
        1 => arb_side().prop_map(Gen::Revert),
        1 => any::<bool>().prop_map(Gen::MtaSts),
        3 => proptest::option::of(0u8..3).prop_map(Gen::Round),
        1 => prop_oneof![
            Just(Command::Failover),
            Just(Command::Failback),
            Just(Command::Unpin),
            Just(Command::Pause),
            Just(Command::Resume),
            Just(Command::Approve),
            (arb_side(), -100i64..5000).prop_map(|(side, d)| Command::Pin { side, until: t(d) }),
            (arb_side(), -100i64..3000, -10i64..3000).prop_map(|(side, start, len)| Command::Maintenance { side, start: t(start), end: t(start + len) }),
            Just(Command::CancelMaintenance),
        ]
        .prop_map(Gen::Cmd),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(history in proptest::collection::vec(arb_gen(), 1..120), approval in any::<bool>(), correct_drift in any::<bool>(), mta_sts in prop_oneof![Just(MtaStsAction::Warn), Just(MtaStsAction::Block), Just(MtaStsAction::Off)], early_ttl in any::<bool>()) {
        let pol = Policy { hold: Some(Duration::from_secs(600)), approval, correct_drift, mta_sts, early_ttl, failover_ttl: 60, ..Policy::default() };
        let mut last_published = Some(Side::Primary);
        let mut s = DomainState::default();
        let mut now = 0i64;
        step(&mut s, Input::Observed { published: Some(Side::Primary), ttl: Some(300) }, t(now), &pol);
        let mut primary_up_since: Option<i64> = None;
        for g in history {
            // A maintenance window scheduled or under way is an operator's decision too.
            let maintaining = s.maintenance.as_ref().is_some_and(|m| m.stage != MaintenanceStage::Ended)
                || matches!(g, Gen::Cmd(Command::Maintenance { .. }));
            let operator = maintaining || matches!(g, Gen::Cmd(Command::Failover | Command::Failback | Command::Pin { .. } | Command::Maintenance { .. }) | Gen::Revert(_));
            let completes_flight = matches!(g, Gen::Verify) && s.in_flight.is_some();
            // a verification ends the write in flight, a move or a TTL write alike
            let completes_write = matches!(g, Gen::Verify) && s.writing().is_some();
            let g_is_cmd = matches!(g, Gen::Cmd(_) | Gen::Revert(_));
            let g_kind = match &g { Gen::Cmd(c) => Some(c.clone()), _ => None };
            let input = match g {
                Gen::Health(p, b) => {
                    if p == Up { primary_up_since.get_or_insert(now); } else { primary_up_since = None; }
                    health(p, b)
                }
                Gen::Verify => match s.writing() { Some(side) => Input::ChangeVerified { side }, None => Input::Tick },
                Gen::Fail => match s.writing() { Some(side) => Input::ChangeFailed { side, error: "x".into() }, None => Input::Tick },
                Gen::Tick => Input::Tick,
                Gen::Advance(d) => { now += d; Input::Tick }
                Gen::Cmd(c) => cmd(c),
                Gen::Drift => Input::Observed { published: None, ttl: Some(5) },
                Gen::Observe => Input::Observed { published: last_published, ttl: Some(300) },
                Gen::Revert(side) => revert(side),
                Gen::MtaSts(refused) => Input::MtaSts { refused: refused.then(|| "not listed".to_string()) },
                Gen::Round(sign) => Input::PrimaryRound { sign: sign.map(|k| match k {
                    0 => EarlySign::Soft { reason: "421".into() },
                    1 => EarlySign::Failed { failures: 1, reason: "blip".into() },
                    _ => EarlySign::Hard { reason: "timeout".into() },
                }) },
            };
            let drift = matches!(input, Input::Observed { published: None, .. });
            let before = s.clone();
            let fx = step(&mut s, input, t(now), &pol);
            for p in publishes(&fx) {
                // 1. never publish a side that is Down at the moment of the decision
                let h = if p == Side::Primary { s.primary } else { s.backup };
                prop_assert_ne!(h, Down, "published a Down {:?}", p);
                // a TTL write (early TTL lowering or its restore) republishes the primary's own
                // records: only with them published, in phase Primary, no override, nothing in
                // flight (a window's lowering may follow the verification that ended a move),
                // and with early_ttl on unless it restores or a maintenance window lowers
                let ttl_only = p == Side::Primary && s.in_flight.is_none();
                if ttl_only {
                    prop_assert_eq!(s.phase, Phase::Primary);
                    prop_assert_eq!(s.published, Some(Side::Primary));
                    prop_assert!(before.phase == Phase::Primary || (maintaining && completes_flight), "TTL write in {:?}", before.phase);
                    // (a pin that expired in this step, or an operator lifted in it, no longer
                    // holds it back: `an_unpin_may_let_a_due_maintenance_lowering_go_in_the_same_step`)
                    let pin_expired = matches!(&before.overrides, Some(Override::Pinned { until, .. }) if *until <= t(now));
                    let lifted = matches!(g_kind, Some(Command::Unpin | Command::Resume));
                    prop_assert!((before.overrides.is_none() || pin_expired || lifted) && s.overrides.is_none());
                    prop_assert!(before.writing().is_none() || (maintaining && completes_write), "TTL write while a write was in flight");
                    let restoring = matches!(s.ttl_write(), Some(TtlWrite::Restore(_)));
                    prop_assert!(early_ttl || restoring || maintaining, "lowered with early_ttl off");
                    continue;
                }
                // 4. at most one change in flight (a verification may end one and start the
                //    next; a move supersedes a TTL write)
                prop_assert!(before.in_flight.is_none() || completes_flight, "publish while a change was in flight");
                // the TTL to restore on failback is never a TTL lowered early
                if let (Side::Backup, Some(e)) = (p, &before.early_ttl) {
                    if before.published != Some(Side::Backup) {
                        prop_assert_eq!(s.ttl_before_failover, Some(e.original));
                    }
                }
                // 2. automated failback only after the whole hold, unless the backup it leaves
                //    is not known to work
                //    (restoring the primary's records after drift is not a failback)
                let restores = drift && before.published == Some(p);
                if p == Side::Primary && !operator && !restores && s.backup == Up {
                    let since = primary_up_since.expect("primary Up");
                    prop_assert!(now - since >= 600, "failback after {}s of health", now - since);
                }
                // 3. automation never publishes over an override (one lifted in this step by an
                //    operator or by expiry no longer counts)
                if !operator {
                    prop_assert!(s.overrides.is_none(), "automation published under {:?}", s.overrides);
                }
                // 6. mta_sts = "block": automation never moves to a backup the policy refuses
                //    (restoring the backup's records after drift is not a move)
                let moves_to_backup = p == Side::Backup && before.published != Some(Side::Backup);
                if mta_sts == MtaStsAction::Block && !operator && !restores && moves_to_backup {
                    prop_assert!(s.mta_sts_refused.is_none(), "automated failover to a refused backup");
                }
                // 7. any other move to a refused backup carries the critical warning
                if s.mta_sts_refused.is_some() && moves_to_backup && !restores {
                    prop_assert!(fx.iter().any(|e| matches!(e, Effect::Event { kind: EventKind::MtaStsFailover, .. })), "no warning: {:?}", fx);
                }
            }
            // 3. an override is lifted only by an operator or its expiry
            if before.overrides.is_some() && s.overrides.is_none() && !g_is_cmd {
                let expired = matches!(&before.overrides, Some(Override::Pinned { until, .. }) if *until <= t(now));
                prop_assert!(expired, "override lifted without an operator: {:?}", before.overrides);
            }
            // a rejected command changes nothing
            if fx.iter().any(|e| matches!(e, Effect::Rejected { .. })) {
                prop_assert_eq!(&s, &before);
            }
            // 5. the machine always knows a side to publish once it has published one, unless
            //    the records were edited to match neither side
            if before.published.is_some() && !drift {
                prop_assert!(s.published.is_some());
            }
            if !drift {
                last_published = s.published.or(last_published);
            }
        }
    }
}

// ---- MTA-STS ----

fn mta_policy(action: MtaStsAction) -> Policy {
    Policy {
        mta_sts: action,
        ..policy()
    }
}

fn kinds(fx: &[Effect]) -> Vec<EventKind> {
    fx.iter()
        .filter_map(|e| e.recorded().map(|(k, _)| k))
        .collect()
}

fn refused(why: &str) -> Input {
    Input::MtaSts {
        refused: Some(why.into()),
    }
}

#[test]
fn mta_sts_finding_is_alerted_once_and_its_end_noted() {
    let pol = mta_policy(MtaStsAction::Warn);
    let mut s = on_primary();
    let fx = step(&mut s, refused("mx.backup.test not listed"), t(1), &pol);
    assert_eq!(kinds(&fx), vec![EventKind::MtaSts]);
    let (_, message) = fx[0].recorded().expect("recorded");
    assert!(
        message.contains("mx.backup.test not listed") && message.contains("warn"),
        "{message}"
    );
    assert!(kinds(&step(
        &mut s,
        refused("mx.backup.test not listed"),
        t(2),
        &pol
    ))
    .is_empty());
    let fx = step(&mut s, Input::MtaSts { refused: None }, t(3), &pol);
    assert_eq!(kinds(&fx), vec![EventKind::MtaStsRestored]);
    assert_eq!(s.mta_sts_refused, None);
}

#[test]
fn block_refuses_the_automated_failover_with_one_alert_and_moves_once_the_backup_passes() {
    let pol = mta_policy(MtaStsAction::Block);
    let mut s = on_primary();
    step(&mut s, refused("mx.backup.test not listed"), t(1), &pol);
    let fx = step(&mut s, health(Down, Up), t(10), &pol);
    assert!(publishes(&fx).is_empty(), "{fx:?}");
    assert_eq!(kinds(&fx), vec![EventKind::MtaStsFailoverRefused]);
    let (_, message) = fx[0].recorded().expect("recorded");
    assert!(message.contains("mx.backup.test not listed"), "{message}");
    assert_eq!(s.phase, Phase::Primary);
    assert!(s.mta_sts_blocked);
    assert!(s.incident.is_some(), "mail is stopped: an incident");
    // later rounds: no repeated alert, still no move, not counted by the flap guard
    for i in 0..10 {
        let fx = step(&mut s, health(Down, Up), t(20 + i), &pol);
        assert!(fx.is_empty(), "{fx:?}");
    }
    assert!(s.moves.is_empty());
    // the policy lists the backup now: the failover is made
    let fx = step(&mut s, Input::MtaSts { refused: None }, t(40), &pol);
    assert_eq!(publishes(&fx), vec![Side::Backup]);
    assert!(!kinds(&fx).contains(&EventKind::MtaStsFailover));
}

#[test]
fn block_alerts_again_after_the_primary_recovered_and_failed_again() {
    let pol = mta_policy(MtaStsAction::Block);
    let mut s = on_primary();
    step(&mut s, refused("x"), t(1), &pol);
    step(&mut s, health(Down, Up), t(10), &pol);
    step(&mut s, health(Up, Up), t(20), &pol);
    assert!(!s.mta_sts_blocked);
    let fx = step(&mut s, health(Down, Up), t(30), &pol);
    assert_eq!(kinds(&fx), vec![EventKind::MtaStsFailoverRefused]);
}

#[test]
fn warn_fails_over_with_a_critical_warning() {
    let pol = mta_policy(MtaStsAction::Warn);
    let mut s = on_primary();
    step(&mut s, refused("mx.backup.test not listed"), t(1), &pol);
    let fx = step(&mut s, health(Down, Up), t(10), &pol);
    assert_eq!(publishes(&fx), vec![Side::Backup]);
    assert!(kinds(&fx).contains(&EventKind::MtaStsFailover), "{fx:?}");
    assert!(EventKind::MtaStsFailover.is_alert());
}

#[test]
fn block_lets_an_operator_fail_over_with_the_warning() {
    let pol = mta_policy(MtaStsAction::Block);
    let mut s = on_primary();
    step(&mut s, refused("x"), t(1), &pol);
    let fx = step(&mut s, cmd(Command::Failover), t(10), &pol);
    assert_eq!(publishes(&fx), vec![Side::Backup]);
    assert!(kinds(&fx).contains(&EventKind::MtaStsFailover), "{fx:?}");
}

#[test]
fn block_keeps_both_down_off_a_refused_backup() {
    let pol = mta_policy(MtaStsAction::Block);
    let mut s = on_primary();
    step(&mut s, health(Down, Down), t(10), &pol);
    assert_eq!(s.phase, Phase::BothDown);
    step(&mut s, refused("x"), t(11), &pol);
    let fx = step(&mut s, health(Down, Up), t(20), &pol);
    assert!(publishes(&fx).is_empty(), "{fx:?}");
    assert!(kinds(&fx).contains(&EventKind::MtaStsFailoverRefused));
}

#[test]
fn off_ignores_findings_and_a_passing_backup_moves_without_warning() {
    let mut s = on_primary();
    let fx = step(&mut s, refused("x"), t(1), &mta_policy(MtaStsAction::Off));
    assert!(fx.is_empty());
    assert_eq!(s.mta_sts_refused, None);
    let fx = step(
        &mut s,
        health(Down, Up),
        t(10),
        &mta_policy(MtaStsAction::Block),
    );
    assert_eq!(publishes(&fx), vec![Side::Backup]);
    assert!(!kinds(&fx).contains(&EventKind::MtaStsFailover));
}

#[test]
fn states_saved_before_mta_sts_read_back() {
    let mut json = serde_json::to_value(on_primary()).expect("json");
    let map = json.as_object_mut().expect("object");
    map.remove("mta_sts_refused");
    map.remove("mta_sts_blocked");
    let old: DomainState = serde_json::from_value(json).expect("old state");
    assert_eq!(old.mta_sts_refused, None);
    assert!(!old.mta_sts_blocked);
}

// ---- early TTL lowering ----

fn early(failover_ttl: u32, on: bool) -> Policy {
    Policy {
        early_ttl: on,
        failover_ttl,
        ..policy()
    }
}

fn soft() -> Input {
    Input::PrimaryRound {
        sign: Some(EarlySign::Soft {
            reason: "mx1.example.test.: 421 try later".into(),
        }),
    }
}

fn quiet() -> Input {
    Input::PrimaryRound { sign: None }
}

fn verified(side: Side) -> Input {
    Input::ChangeVerified { side }
}

fn ttl_events(fx: &[Effect]) -> Vec<(EventKind, u32, u32)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Ttl(c) => Some((c.kind, c.old_ttl, c.new_ttl)),
            _ => None,
        })
        .collect()
}

/// On the primary (TTL 3,600 s), lowered to 60 s at t = 5 and verified at t = 6.
fn lowered() -> DomainState {
    let pol = early(60, true);
    let mut s = on_primary();
    let fx = step(&mut s, soft(), t(5), &pol);
    assert_eq!(publishes(&fx), vec![Side::Primary], "{fx:?}");
    assert_eq!(s.phase, Phase::Primary, "a TTL write is no move");
    assert_eq!(s.in_flight, None);
    assert_eq!(s.ttl_write(), Some(TtlWrite::Lower(60)));
    assert_eq!(s.writing(), Some(Side::Primary));
    let e = s.early_ttl.as_ref().expect("lowering");
    assert_eq!(
        (e.original, e.lowered, e.stage),
        (3600, 60, TtlStage::Lowering)
    );
    assert!(e.why.contains("421"), "{}", e.why);
    let fx = step(&mut s, verified(Side::Primary), t(6), &pol);
    assert_eq!(ttl_events(&fx), vec![(EventKind::TtlLowered, 3600, 60)]);
    assert!(publishes(&fx).is_empty());
    step(
        &mut s,
        Input::Observed {
            published: Some(Side::Primary),
            ttl: Some(60),
        },
        t(6),
        &pol,
    );
    assert_eq!(
        s.early_ttl.as_ref().map(|e| e.stage),
        Some(TtlStage::Lowered)
    );
    s
}

#[test]
fn early_ttl_lowers_once_at_the_first_sign_and_never_again_while_lowered() {
    let pol = early(60, true);
    let mut s = lowered();
    for i in 0..20 {
        let fx = step(&mut s, soft(), t(10 + i), &pol);
        assert!(fx.is_empty(), "{fx:?}");
    }
    // a blip (a pass with failures not yet forgiven) lowers too; a hard round being confirmed
    // never does (Down or a blip follows within seconds)
    let blip = Input::PrimaryRound {
        sign: Some(EarlySign::Failed {
            failures: 1,
            reason: "passing again".into(),
        }),
    };
    let hard = Input::PrimaryRound {
        sign: Some(EarlySign::Hard {
            reason: "timeout".into(),
        }),
    };
    let mut s = on_primary();
    assert!(step(&mut s, hard, t(5), &pol).is_empty());
    assert_eq!(s.early_ttl, None);
    assert_eq!(
        publishes(&step(&mut s, blip, t(6), &pol)),
        vec![Side::Primary]
    );
}

#[test]
fn early_ttl_restores_after_quiet_rounds_and_the_hold_and_a_sign_restarts_the_wait() {
    let pol = early(60, true);
    let mut s = lowered();
    // quiet (failures forgiven) at 100: the restore is due a hold (600 s) later
    assert!(step(&mut s, quiet(), t(100), &pol).is_empty());
    assert_eq!(next_deadline(&s, &pol), Some(t(700)));
    // a sign at 400 restarts the wait; quiet again at 500 → due at 1,100
    assert!(step(&mut s, soft(), t(400), &pol).is_empty());
    assert_eq!(next_deadline(&s, &pol), None);
    assert!(step(&mut s, quiet(), t(500), &pol).is_empty());
    assert!(
        step(&mut s, quiet(), t(700), &pol).is_empty(),
        "quiet since 500 only"
    );
    assert_eq!(next_deadline(&s, &pol), Some(t(1100)));
    assert!(step(&mut s, Input::Tick, t(1099), &pol).is_empty());
    let fx = step(&mut s, Input::Tick, t(1100), &pol);
    assert_eq!(publishes(&fx), vec![Side::Primary]);
    assert_eq!(s.ttl_write(), Some(TtlWrite::Restore(3600)));
    assert_eq!(s.in_flight, None);
    assert_eq!(next_deadline(&s, &pol), None);
    let fx = step(&mut s, verified(Side::Primary), t(1101), &pol);
    assert_eq!(ttl_events(&fx), vec![(EventKind::TtlRestored, 60, 3600)]);
    assert_eq!(s.early_ttl, None);
    assert_eq!(s.phase, Phase::Primary);
    assert!(
        s.moves.is_empty(),
        "TTL writes are not moves for the flap guard"
    );
}

#[test]
fn early_ttl_is_rate_limited_to_one_lowering_per_hold() {
    let pol = early(60, true);
    let mut s = lowered(); // lowered at 5
                           // a failover while lowered, and an operator's failback: the episode is over
    step(&mut s, health(Down, Up), t(20), &pol);
    step(&mut s, verified(Side::Backup), t(21), &pol);
    step(&mut s, health(Up, Up), t(30), &pol);
    step(&mut s, cmd(Command::Failback), t(40), &pol);
    step(&mut s, verified(Side::Primary), t(41), &pol);
    step(
        &mut s,
        Input::Observed {
            published: Some(Side::Primary),
            ttl: Some(3600),
        },
        t(41),
        &pol,
    );
    assert_eq!(s.phase, Phase::Primary);
    assert_eq!(s.early_ttl, None);
    // signs within the hold of the lowering at 5 lower nothing; at 605 they may again
    assert!(publishes(&step(&mut s, soft(), t(50), &pol)).is_empty());
    assert!(publishes(&step(&mut s, soft(), t(604), &pol)).is_empty());
    assert_eq!(
        publishes(&step(&mut s, soft(), t(605), &pol)),
        vec![Side::Primary]
    );
}

#[test]
fn early_ttl_off_lowers_nothing_but_still_restores_a_ttl_lowered_before() {
    let off = early(60, false);
    let mut s = on_primary();
    for i in 0..10 {
        assert!(step(&mut s, soft(), t(i), &off).is_empty());
    }
    assert_eq!(s.early_ttl, None);
    // lowered while it was on, then turned off: the original TTL still comes back
    let mut s = lowered();
    step(&mut s, quiet(), t(100), &off);
    let fx = step(&mut s, Input::Tick, t(700), &off);
    assert_eq!(publishes(&fx), vec![Side::Primary]);
    assert_eq!(s.ttl_write(), Some(TtlWrite::Restore(3600)));
}

#[test]
fn early_ttl_never_lowers_during_a_change_an_override_or_without_the_primary_published() {
    let pol = early(60, true);
    // a change in flight
    let mut s = on_primary();
    step(&mut s, cmd(Command::Failover), t(1), &pol);
    assert_eq!(s.in_flight, Some(Side::Backup));
    assert!(publishes(&step(&mut s, soft(), t(2), &pol)).is_empty());
    // paused; pinned (to either side)
    let mut s = on_primary();
    step(&mut s, cmd(Command::Pause), t(1), &pol);
    assert!(publishes(&step(&mut s, soft(), t(2), &pol)).is_empty());
    let mut s = on_primary();
    step(
        &mut s,
        cmd(Command::Pin {
            side: Side::Primary,
            until: t(5000),
        }),
        t(1),
        &pol,
    );
    assert!(publishes(&step(&mut s, soft(), t(2), &pol)).is_empty());
    // the records match neither side (edited by hand)
    let mut s = on_primary();
    step(
        &mut s,
        Input::Observed {
            published: None,
            ttl: Some(3600),
        },
        t(1),
        &pol,
    );
    assert!(publishes(&step(&mut s, soft(), t(2), &pol)).is_empty());
    // on the backup, or both Down
    let mut s = failed_over();
    assert!(publishes(&step(&mut s, soft(), t(30), &pol)).is_empty());
    // the TTL already at or below the failover TTL, or not known yet
    let mut s = on_primary();
    step(
        &mut s,
        Input::Observed {
            published: Some(Side::Primary),
            ttl: Some(60),
        },
        t(1),
        &pol,
    );
    assert!(publishes(&step(&mut s, soft(), t(2), &pol)).is_empty());
    let mut s = on_primary();
    s.published_ttl = None;
    assert!(publishes(&step(&mut s, soft(), t(2), &pol)).is_empty());
    // a TTL write in flight: no second one, and no restore while paused
    let mut s = lowered();
    step(&mut s, quiet(), t(100), &pol);
    step(&mut s, cmd(Command::Pause), t(200), &pol);
    assert_eq!(next_deadline(&s, &pol), None, "no restore while paused");
    assert!(publishes(&step(&mut s, Input::Tick, t(800), &pol)).is_empty());
    step(&mut s, cmd(Command::Resume), t(900), &pol);
    assert_eq!(
        publishes(&step(&mut s, Input::Tick, t(901), &pol)),
        vec![Side::Primary]
    );
    assert!(publishes(&step(&mut s, soft(), t(902), &pol)).is_empty());
    assert!(publishes(&step(&mut s, Input::Tick, t(903), &pol)).is_empty());
}

#[test]
fn a_failover_supersedes_a_lowering_in_flight_and_fails_back_to_the_original_ttl() {
    let pol = early(60, true);
    let mut s = on_primary();
    step(&mut s, soft(), t(5), &pol);
    assert_eq!(s.ttl_write(), Some(TtlWrite::Lower(60)));
    // the lowering may have landed: what is observed is the lowered TTL
    s.published_ttl = Some(60);
    // the primary goes Down before the lowering is verified: the failover does not wait
    let fx = step(&mut s, health(Down, Up), t(6), &pol);
    assert_eq!(publishes(&fx), vec![Side::Backup]);
    assert_eq!(s.in_flight, Some(Side::Backup));
    assert_eq!(s.early_ttl, None);
    assert_eq!(
        s.ttl_before_failover,
        Some(3600),
        "the TTL to restore is the original, not the lowered one"
    );
    // the superseded lowering's late verification changes nothing
    let before = s.clone();
    assert!(step(&mut s, verified(Side::Primary), t(7), &pol).is_empty());
    assert_eq!(s, before);
    // the failback's hold is sized by the original TTL (2 × 3,600 s), not the lowered one
    assert_eq!(Policy::default().hold_for(&s), Duration::from_secs(7200));

    // a failover after the lowering was verified remembers the original too
    let mut s = lowered();
    step(&mut s, health(Down, Up), t(20), &pol);
    assert_eq!(s.ttl_before_failover, Some(3600));
    // and an operator's failover during a lowering is accepted (not "a change is in flight")
    let mut s = on_primary();
    step(&mut s, soft(), t(5), &pol);
    let fx = step(&mut s, cmd(Command::Failover), t(6), &pol);
    assert!(!rejected(&fx), "{fx:?}");
    assert_eq!(publishes(&fx), vec![Side::Backup]);
}

#[test]
fn a_failed_ttl_write_is_not_retried_and_never_forgets_the_original() {
    let pol = early(60, true);
    let mut s = on_primary();
    step(&mut s, soft(), t(5), &pol);
    let fx = step(
        &mut s,
        Input::ChangeFailed {
            side: Side::Primary,
            error: "transient: timeout".into(),
        },
        t(6),
        &pol,
    );
    assert!(publishes(&fx).is_empty());
    assert_eq!(kinds(&fx), vec![EventKind::ChangeFailed]);
    let e = s.early_ttl.clone().expect("still remembered");
    assert_eq!((e.original, e.stage), (3600, TtlStage::Lowered));
    assert_eq!(s.writing(), None, "nothing in flight: a move may start");
    // the restore fails too: tried again a hold later
    step(&mut s, quiet(), t(100), &pol);
    assert_eq!(
        publishes(&step(&mut s, Input::Tick, t(700), &pol)),
        vec![Side::Primary]
    );
    step(
        &mut s,
        Input::ChangeFailed {
            side: Side::Primary,
            error: "transient: timeout".into(),
        },
        t(701),
        &pol,
    );
    assert_eq!(next_deadline(&s, &pol), Some(t(1301)));
    assert_eq!(
        publishes(&step(&mut s, Input::Tick, t(1301), &pol)),
        vec![Side::Primary]
    );
}

#[test]
fn states_saved_before_early_ttl_read_back() {
    let mut json = serde_json::to_value(on_primary()).expect("json");
    let map = json.as_object_mut().expect("object");
    map.remove("early_ttl");
    map.remove("ttl_lowered_at");
    let old: DomainState = serde_json::from_value(json).expect("old state");
    assert_eq!(old.early_ttl, None);
    assert_eq!(old.ttl_lowered_at, None);
    let s = lowered();
    let back: DomainState =
        serde_json::from_value(serde_json::to_value(&s).expect("json")).expect("read back");
    assert_eq!(back, s, "the original TTL survives a restart");
}

// ---- maintenance windows ----

fn maintenance(side: Side, start: i64, end: i64) -> Input {
    cmd(Command::Maintenance {
        side,
        start: t(start),
        end: t(end),
    })
}

fn observed(side: Side, ttl: u32) -> Input {
    Input::Observed {
        published: Some(side),
        ttl: Some(ttl),
    }
}

/// On the primary at TTL 3,600 s with a window on the backup from t = 10,000 to 20,000, run to
/// its end and the failback: returns the state and the failback's step time.
fn through_a_window(pol: &Policy) -> (DomainState, i64) {
    let mut s = on_primary();
    let fx = step(&mut s, maintenance(Side::Backup, 10_000, 20_000), t(1), pol);
    assert_eq!(kinds(&fx), vec![EventKind::Maintenance], "{fx:?}");
    assert!(publishes(&fx).is_empty());
    // The TTL is lowered one live TTL (3,600 s) and the margin (10 s) before the start.
    assert_eq!(next_deadline(&s, pol), Some(t(6_390)));
    assert!(publishes(&step(&mut s, Input::Tick, t(6_389), pol)).is_empty());
    let fx = step(&mut s, Input::Tick, t(6_390), pol);
    assert_eq!(publishes(&fx), vec![Side::Primary], "{fx:?}");
    assert_eq!(s.ttl_write(), Some(TtlWrite::Lower(60)));
    let fx = step(&mut s, verified(Side::Primary), t(6_401), pol);
    assert_eq!(ttl_events(&fx), vec![(EventKind::TtlLowered, 3600, 60)]);
    step(&mut s, observed(Side::Primary, 60), t(6_401), pol);
    // Quiet rounds do not restore it while the window is ahead.
    step(&mut s, quiet(), t(6_500), pol);
    assert_eq!(next_deadline(&s, pol), Some(t(10_000)));
    assert!(publishes(&step(&mut s, quiet(), t(9_000), pol)).is_empty());
    // The start: pinned to the backup and published.
    let fx = step(&mut s, Input::Tick, t(10_000), pol);
    assert_eq!(publishes(&fx), vec![Side::Backup], "{fx:?}");
    assert!(
        matches!(&s.overrides, Some(Override::Pinned { side: Side::Backup, until, .. }) if *until == t(20_000))
    );
    assert_eq!(
        s.ttl_before_failover,
        Some(3600),
        "the TTL before the lowering"
    );
    step(&mut s, verified(Side::Backup), t(10_010), pol);
    step(&mut s, observed(Side::Backup, 60), t(10_010), pol);
    assert_eq!(s.phase, Phase::OnBackup);
    // Nothing moves before the end, the primary Up all along.
    step(&mut s, health(Up, Up), t(15_000), pol);
    assert_eq!(s.phase, Phase::OnBackup);
    assert_eq!(next_deadline(&s, pol), Some(t(20_000)));
    // The end: the pin expires and the guarded failback follows (the hold has passed).
    let fx = step(&mut s, Input::Tick, t(20_000), pol);
    assert_eq!(publishes(&fx), vec![Side::Primary], "{fx:?}");
    assert_eq!(
        s.maintenance.as_ref().map(|m| m.stage),
        Some(MaintenanceStage::Ended)
    );
    step(&mut s, verified(Side::Primary), t(20_010), pol);
    (s, 20_010)
}

#[test]
fn a_maintenance_window_lowers_the_ttl_one_ttl_ahead_moves_at_the_start_and_fails_back_after() {
    let pol = early(60, false); // early_ttl off: the window lowers anyway
    let (mut s, at) = through_a_window(&pol);
    let fx = step(&mut s, observed(Side::Primary, 3600), t(at), &pol);
    assert_eq!(kinds(&fx), vec![EventKind::Maintenance], "{fx:?}");
    assert_eq!(s.maintenance, None);
    assert_eq!(s.phase, Phase::Primary);
}

#[test]
fn a_low_ttl_left_behind_after_a_window_is_alerted() {
    let pol = early(60, false);
    let (mut s, at) = through_a_window(&pol);
    let fx = step(&mut s, observed(Side::Primary, 60), t(at), &pol);
    assert_eq!(kinds(&fx), vec![EventKind::MaintenanceAlert], "{fx:?}");
    assert_eq!(s.maintenance, None);
}

#[test]
fn a_window_does_not_start_on_a_down_side() {
    let pol = early(60, true);
    let mut s = on_primary();
    step(&mut s, maintenance(Side::Backup, 100, 200), t(1), &pol);
    step(&mut s, health(Up, Down), t(50), &pol);
    let fx = step(&mut s, Input::Tick, t(100), &pol);
    assert!(publishes(&fx).iter().all(|p| *p == Side::Primary), "{fx:?}");
    assert_eq!(alerts(&fx, EventKind::MaintenanceAlert), 1, "{fx:?}");
    assert_eq!((s.maintenance.as_ref(), s.overrides.as_ref()), (None, None));
}

#[test]
fn a_window_scheduled_late_lowers_at_once_and_bad_windows_are_refused() {
    let pol = early(60, true);
    let mut s = on_primary();
    let before = s.clone();
    for bad in [
        maintenance(Side::Backup, 100, 100),
        maintenance(Side::Backup, -100, -1),
    ] {
        let fx = step(&mut s, bad, t(1), &pol);
        assert!(rejected(&fx), "{fx:?}");
        assert_eq!(s, before);
    }
    // Less than one TTL ahead: lowered now, and the event says caches may still hold it.
    let fx = step(&mut s, maintenance(Side::Backup, 600, 1_200), t(1), &pol);
    assert_eq!(publishes(&fx), vec![Side::Primary], "{fx:?}");
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Event { message, .. } if message.contains("lowered now"))),
        "{fx:?}"
    );
    let fx = step(&mut s, maintenance(Side::Primary, 2_000, 3_000), t(2), &pol);
    assert!(rejected(&fx), "one window at a time: {fx:?}");
}

#[test]
fn cancelling_a_window_restores_its_ttl_after_the_hold_and_ends_its_pin() {
    let pol = early(60, false);
    let mut s = on_primary();
    step(&mut s, maintenance(Side::Backup, 1_000, 5_000), t(1), &pol);
    assert_eq!(
        publishes(&step(&mut s, Input::Tick, t(1), &pol)),
        Vec::<Side>::new(),
        "lowered at the scheduling step already"
    );
    step(&mut s, verified(Side::Primary), t(2), &pol);
    step(&mut s, observed(Side::Primary, 60), t(2), &pol);
    let fx = step(&mut s, cmd(Command::CancelMaintenance), t(100), &pol);
    assert_eq!(kinds(&fx), vec![EventKind::Maintenance]);
    assert_eq!(s.maintenance, None);
    // The hold (600 s) after the cancel, the TTL is restored.
    assert_eq!(next_deadline(&s, &pol), Some(t(700)));
    let fx = step(&mut s, Input::Tick, t(700), &pol);
    assert_eq!(s.ttl_write(), Some(TtlWrite::Restore(3600)), "{fx:?}");
    step(&mut s, verified(Side::Primary), t(701), &pol);
    assert!(
        publishes(&step(&mut s, Input::Tick, t(1_000), &pol)).is_empty(),
        "no move at the old start"
    );
    // During a window: the pin goes too.
    let mut s = on_primary();
    step(&mut s, maintenance(Side::Backup, 10, 5_000), t(1), &pol);
    step(&mut s, verified(Side::Primary), t(2), &pol);
    step(&mut s, Input::Tick, t(10), &pol);
    step(&mut s, verified(Side::Backup), t(11), &pol);
    assert!(s.overrides.is_some());
    step(&mut s, cmd(Command::CancelMaintenance), t(20), &pol);
    assert_eq!(s.overrides, None);
    assert_eq!(
        s.maintenance.as_ref().map(|m| m.stage),
        Some(MaintenanceStage::Ended)
    );
    // Over: a cancel stops waiting for the records to be back.
    let fx = step(&mut s, cmd(Command::CancelMaintenance), t(21), &pol);
    assert_eq!(kinds(&fx), vec![EventKind::Maintenance]);
    assert_eq!(s.maintenance, None);
    assert!(rejected(&step(
        &mut s,
        cmd(Command::CancelMaintenance),
        t(22),
        &pol
    )));
}

#[test]
fn an_unpin_may_let_a_due_maintenance_lowering_go_in_the_same_step() {
    // Found by the proptest: a pin that holds back a window's lowering (due already: the
    // window starts within one TTL), lifted by an operator, lets it go at once.
    let pol = Policy {
        hold: Some(Duration::from_secs(600)),
        failover_ttl: 60,
        ..Policy::default()
    };
    let mut s = DomainState::default();
    let now = 1784;
    step(
        &mut s,
        Input::Observed {
            published: Some(Side::Primary),
            ttl: Some(300),
        },
        t(0),
        &pol,
    );
    step(
        &mut s,
        cmd(Command::Pin {
            side: Side::Primary,
            until: t(now + 1),
        }),
        t(now),
        &pol,
    );
    step(&mut s, revert(Side::Primary), t(now), &pol);
    if let Some(side) = s.writing() {
        step(&mut s, Input::ChangeVerified { side }, t(now), &pol);
    }
    let fx = step(
        &mut s,
        cmd(Command::Maintenance {
            side: Side::Backup,
            start: t(now + 1),
            end: t(now + 2),
        }),
        t(now),
        &pol,
    );
    assert!(
        publishes(&fx).is_empty(),
        "nothing written under the pin: {fx:?}"
    );
    let fx = step(&mut s, cmd(Command::Unpin), t(now), &pol);
    assert_eq!(publishes(&fx), vec![Side::Primary], "{fx:?}");
    assert!(s.overrides.is_none());
    assert!(
        matches!(s.ttl_write(), Some(TtlWrite::Lower(60))),
        "{:?}",
        s.early_ttl
    );
}
