use super::*;
use proptest::prelude::*;
use serde_json::json;

fn at(ms: i64) -> Time {
    DateTime::from_timestamp_millis(1_800_000_000_000 + ms).expect("valid")
}

/// Builds a timeline with ids 1, 2, … in the order of the calls.
#[derive(Default)]
struct Tl {
    events: Vec<Event>,
}

impl Tl {
    fn push(&mut self, ms: i64, kind: EventKind, evidence: serde_json::Value) -> i64 {
        self.push_by(ms, kind, evidence, "automation", None)
    }

    fn push_by(
        &mut self,
        ms: i64,
        kind: EventKind,
        evidence: serde_json::Value,
        actor: &str,
        reason: Option<&str>,
    ) -> i64 {
        let id = self.events.len() as i64 + 1;
        self.events.push(Event {
            id,
            domain: crate::model::Fqdn::parse("example.test").expect("name"),
            at: at(ms),
            kind,
            actor: actor.into(),
            reason: reason.map(str::to_string),
            message: format!("{kind} {id}"),
            evidence,
        });
        id
    }

    fn health(&mut self, ms: i64, side: &str, h: &str) -> i64 {
        self.push(
            ms,
            EventKind::Health,
            json!({"side": side, "combined": {"side": side, "health": h}}),
        )
    }

    fn transition(&mut self, ms: i64, from: &str, to: &str) -> i64 {
        self.push(ms, EventKind::Transition, json!({"from": from, "to": to}))
    }

    fn change(&mut self, ms: i64, side: &str, id: i64, slowest: u64) -> i64 {
        self.push(
            ms,
            EventKind::Change,
            json!({"side": side, "change_id": id, "authoritative": [
                {"server": "127.0.0.1:53", "after_ms": slowest / 2},
                {"server": "127.0.0.2:53", "after_ms": slowest},
            ]}),
        )
    }

    fn propagation(&mut self, ms: i64, change: i64, resolvers: &[(&str, Option<u64>)]) -> i64 {
        let rs: Vec<_> = resolvers
            .iter()
            .map(|(s, a)| json!({"server": s, "after_ms": a}))
            .collect();
        self.push(
            ms,
            EventKind::Propagation,
            json!({"change": change, "resolvers": rs}),
        )
    }

    fn derive(&self) -> Vec<Incident> {
        derive(&self.events)
    }
}

fn milestone(i: &Incident, step: Step) -> &Milestone {
    i.milestones
        .iter()
        .find(|m| m.step == step)
        .unwrap_or_else(|| panic!("no {step:?} in {:?}", i.milestones))
}

/// A failover and a failback, as the actor records them.
fn full_story() -> (Tl, i64) {
    let mut t = Tl::default();
    t.health(0, "primary", "up");
    t.health(0, "backup", "up");
    t.transition(0, "unknown", "primary");
    let down = t.health(10_000, "primary", "down");
    t.transition(10_000, "primary", "failing_over");
    t.change(12_000, "backup", 7, 400);
    t.transition(12_000, "failing_over", "on_backup");
    t.push_by(
        13_000,
        EventKind::Override,
        json!({}),
        "ops",
        Some("watching it"),
    );
    t.propagation(20_000, 7, &[("r1", Some(1_000)), ("r2", None)]);
    t.health(60_000, "primary", "up");
    t.transition(60_000, "on_backup", "failback_pending");
    t.transition(120_000, "failback_pending", "failing_back");
    t.change(121_000, "primary", 8, 200);
    t.transition(121_000, "failing_back", "primary");
    t.propagation(150_000, 8, &[("r1", Some(5_000)), ("r2", Some(6_000))]);
    // after the incident
    t.health(200_000, "backup", "down");
    (t, down)
}

#[test]
fn a_failover_and_failback_is_one_closed_incident_with_every_milestone() {
    let (t, down) = full_story();
    let incidents = t.derive();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = &incidents[0];
    assert_eq!(
        i.id, down,
        "starts at the health event that took the primary down"
    );
    assert_eq!(i.status, Status::Closed);
    assert_eq!((i.start, i.end), (at(10_000), Some(at(121_000))));
    assert_eq!(milestone(i, Step::Decision).at, at(10_000));
    assert_eq!(milestone(i, Step::Accepted).at, at(11_600));
    assert_eq!(milestone(i, Step::Authoritative).at, at(12_000));
    let r1 = milestone(i, Step::Resolver);
    assert_eq!((r1.server.as_deref(), r1.at), (Some("r1"), at(13_000)));
    assert_eq!(i.not_seen, vec!["r2".to_string()]);
    assert_eq!(milestone(i, Step::Recovery).at, at(60_000));
    assert_eq!(milestone(i, Step::FailbackDecision).at, at(120_000));
    assert_eq!(milestone(i, Step::FailbackAccepted).at, at(120_800));
    assert_eq!(milestone(i, Step::FailbackVerified).at, at(121_000));
    let d = &i.durations;
    assert_eq!(d.outage_to_decision_ms, Some(0));
    assert_eq!(d.decision_to_accepted_ms, Some(1_600));
    assert_eq!(d.accepted_to_authoritative_ms, Some(400));
    assert_eq!(d.authoritative_to_resolvers_ms, Some(1_000));
    assert_eq!(d.recovery_to_failback_ms, Some(61_000));
    assert_eq!(d.failback_decision_to_verified_ms, Some(1_000));
    assert_eq!(d.total_ms, Some(111_000));
    // the failback's propagation, recorded after the close, is the incident's
    let resolvers: Vec<_> = i
        .milestones
        .iter()
        .filter(|m| m.step == Step::FailbackResolver)
        .map(|m| m.at)
        .collect();
    assert_eq!(resolvers, vec![at(126_000), at(127_000)]);
    assert!(i.evidence.contains(&15), "{:?}", i.evidence);
    assert!(
        !i.evidence.contains(&16),
        "the later health event is outside"
    );
    assert!(
        !i.evidence.contains(&3),
        "events before the outage are outside"
    );
    assert_eq!(i.operator_actions.len(), 1);
    assert_eq!(i.operator_actions[0].by, "ops");
    assert_eq!(i.operator_actions[0].reason.as_deref(), Some("watching it"));
    assert!(i.steps.iter().any(|s| s.kind == EventKind::Change));
    let times: Vec<_> = i.milestones.iter().map(|m| m.at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[test]
fn an_operator_failover_starts_at_its_transition_and_stays_open() {
    let mut t = Tl::default();
    t.health(0, "primary", "up");
    t.transition(0, "unknown", "primary");
    let moved = t.push_by(
        5_000,
        EventKind::Transition,
        json!({"from": "primary", "to": "failing_over"}),
        "ops",
        Some("drill"),
    );
    t.change(6_000, "backup", 1, 100);
    t.transition(6_000, "failing_over", "on_backup");
    t.push(7_000, EventKind::ChangeFailed, json!({}));
    let incidents = t.derive();
    assert_eq!(incidents.len(), 1);
    let i = &incidents[0];
    assert_eq!((i.id, i.status, i.end), (moved, Status::Open, None));
    assert_eq!(i.operator_actions[0].reason.as_deref(), Some("drill"));
    assert_eq!(i.alerts.len(), 1);
    assert_eq!(i.durations.total_ms, None);
    assert!(i.milestones.iter().all(|m| m.step != Step::Recovery));
}

#[test]
fn a_primary_down_that_recovers_before_any_move_is_no_incident() {
    let mut t = Tl::default();
    t.transition(0, "unknown", "primary");
    t.health(1_000, "primary", "down");
    t.health(2_000, "primary", "up");
    t.transition(3_000, "primary", "unknown");
    assert!(t.derive().is_empty());
    // and a later failover starts at its transition, not at the old Down
    let mut t2 = Tl::default();
    t2.health(1_000, "primary", "down");
    t2.health(2_000, "primary", "up");
    let moved = t2.transition(3_000, "primary", "failing_over");
    assert_eq!(t2.derive()[0].id, moved);
}

#[test]
fn two_outages_are_two_incidents() {
    let mut t = Tl::default();
    for base in [0, 100_000] {
        t.health(base, "primary", "down");
        t.transition(base, "primary", "failing_over");
        t.change(base + 1_000, "backup", base + 1, 10);
        t.transition(base + 1_000, "failing_over", "on_backup");
        t.health(base + 5_000, "primary", "up");
        t.transition(base + 9_000, "failback_pending", "failing_back");
        t.change(base + 9_500, "primary", base + 2, 10);
        t.transition(base + 9_500, "failing_back", "primary");
    }
    let incidents = t.derive();
    assert_eq!(incidents.len(), 2);
    assert!(incidents.iter().all(|i| i.status == Status::Closed));
    assert_eq!(incidents[1].start, at(100_000));
}

#[test]
fn the_draft_has_the_timeline_and_placeholders() {
    let (t, _) = full_story();
    let i = &t.derive()[0];
    let md = postmortem("example.test", i);
    assert!(
        md.starts_with("# Postmortem draft: example.test, incident 4"),
        "{md}"
    );
    assert!(md.contains("## Timeline"), "{md}");
    assert!(md.contains("| time (UTC) | step | since start | since previous | event |"));
    assert!(
        md.contains("| accepted by the provider | 1.6 s | 1.6 s | 6 |"),
        "{md}"
    );
    assert!(md.contains("failback verified"), "{md}");
    assert!(md.contains("ops: ") || md.contains("by ops"), "{md}");
    assert!(md.contains("reason: watching it"), "{md}");
    assert!(md.contains("## Open questions"), "{md}");
    assert!(md.contains("_TODO_"), "{md}");
    assert_eq!(markdown::human(61_000), "1 min 1 s");
    assert_eq!(markdown::human(19), "19 ms");
    assert_eq!(markdown::human(1_600), "1.6 s");
    assert_eq!(markdown::human(3_720_000), "1 h 2 min");
}

#[test]
fn the_report_reads_back_from_its_json() {
    let (t, _) = full_story();
    let i = &t.derive()[0];
    let json = serde_json::to_value(i).expect("json");
    assert_eq!(json["milestones"][1]["step"], "decision");
    let back: Incident = serde_json::from_value(json).expect("reads back");
    assert_eq!(&back, i);
}

const PHASES: [&str; 7] = [
    "unknown",
    "primary",
    "failing_over",
    "on_backup",
    "failback_pending",
    "failing_back",
    "both_down",
];

#[derive(Debug, Clone)]
enum Gen {
    Health(bool, u8),
    Transition(u8, u8),
    Change(bool, u8, u16),
    Propagation(u8, Option<u16>),
    Operator,
    Alert,
}

fn gen() -> impl Strategy<Value = (u16, Gen)> {
    let g = prop_oneof![
        (any::<bool>(), 0u8..3).prop_map(|(p, h)| Gen::Health(p, h)),
        (0u8..7, 0u8..7).prop_map(|(f, t)| Gen::Transition(f, t)),
        (any::<bool>(), 0u8..6, 0u16..5_000).prop_map(|(b, c, s)| Gen::Change(b, c, s)),
        (0u8..6, proptest::option::of(0u16..5_000)).prop_map(|(c, a)| Gen::Propagation(c, a)),
        Just(Gen::Operator),
        Just(Gen::Alert),
    ];
    (0u16..3_000, g)
}

fn build(spec: &[(u16, Gen)]) -> Tl {
    let mut t = Tl::default();
    let mut now = 0i64;
    for (dt, g) in spec {
        now += i64::from(*dt);
        match g {
            Gen::Health(primary, h) => {
                let side = if *primary { "primary" } else { "backup" };
                t.health(now, side, ["up", "down", "unknown"][*h as usize]);
            }
            Gen::Transition(f, to) => {
                t.transition(now, PHASES[*f as usize], PHASES[*to as usize]);
            }
            Gen::Change(backup, id, slowest) => {
                let side = if *backup { "backup" } else { "primary" };
                t.change(now, side, i64::from(*id), u64::from(*slowest));
            }
            Gen::Propagation(id, after) => {
                t.propagation(now, i64::from(*id), &[("r", after.map(u64::from))]);
            }
            Gen::Operator => {
                t.push_by(now, EventKind::Override, json!({}), "ops", Some("why"));
            }
            Gen::Alert => {
                t.push(now, EventKind::BothDown, json!({}));
            }
        }
    }
    t
}

fn chain_ordered(i: &Incident, chain: &[Step]) -> bool {
    let times: Vec<_> = chain
        .iter()
        .filter_map(|s| i.milestones.iter().find(|m| m.step == *s).map(|m| m.at))
        .collect();
    times.windows(2).all(|w| w[0] <= w[1])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Incidents never overlap and come in order, only the newest may be open, no event is in
    /// two of them, each starts at its id's event, and each chain of milestones runs forwards.
    #[test]
    fn incidents_are_disjoint_ordered_and_their_chains_run_forwards(
        spec in proptest::collection::vec(gen(), 0..80)
    ) {
        let t = build(&spec);
        let incidents = t.derive();
        let mut seen = std::collections::HashSet::new();
        for (n, i) in incidents.iter().enumerate() {
            prop_assert!(seen.is_disjoint(&i.evidence.iter().copied().collect()));
            seen.extend(i.evidence.iter().copied());
            prop_assert_eq!(i.evidence.first().copied(), Some(i.id));
            prop_assert!(i.evidence.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(t.events[(i.id - 1) as usize].at, i.start);
            prop_assert_eq!(i.status == Status::Open, i.end.is_none());
            if n + 1 < incidents.len() {
                let next = &incidents[n + 1];
                prop_assert_eq!(i.status, Status::Closed);
                prop_assert!(i.id < next.id);
                prop_assert!(i.end.is_some_and(|e| e <= next.start));
            }
            prop_assert!(i.milestones.windows(2).all(|w| w[0].at <= w[1].at));
            prop_assert!(chain_ordered(i, &[Step::Outage, Step::Decision, Step::Accepted, Step::Authoritative]));
            prop_assert!(chain_ordered(i, &[Step::FailbackDecision, Step::FailbackAccepted, Step::FailbackAuthoritative, Step::FailbackVerified]));
            let auth = i.milestones.iter().find(|m| m.step == Step::Authoritative).map(|m| m.at);
            for r in i.milestones.iter().filter(|m| m.step == Step::Resolver) {
                prop_assert!(auth.is_some_and(|a| a <= r.at));
            }
            for e in &i.evidence {
                let ev = &t.events[(*e - 1) as usize];
                if ev.kind != EventKind::Propagation {
                    prop_assert!(ev.at >= i.start && i.end.is_none_or(|end| ev.at <= end));
                }
            }
        }
    }

    /// Ids are stable as the timeline grows: the incidents of a prefix keep their ids.
    #[test]
    fn ids_are_stable_as_the_timeline_grows(
        spec in proptest::collection::vec(gen(), 0..80),
        cut in 0usize..80,
    ) {
        let t = build(&spec);
        let cut = cut.min(t.events.len());
        let early: Vec<i64> = derive(&t.events[..cut]).iter().map(|i| i.id).collect();
        let late: Vec<i64> = t.derive().iter().map(|i| i.id).collect();
        prop_assert!(late.starts_with(&early), "{early:?} then {late:?}");
    }
}
