use std::time::Duration;

use chrono::TimeZone;
use reqwest::header::HeaderValue;
use serde_json::json;

use super::deliver::retry_after;
use super::*;
use crate::config::{SecretSource, Severity};
use crate::health::Health::{Down, Up};
use crate::machine::{self, DomainState, Effect, Input, Phase, Policy};
use crate::model::Side;
use crate::store::Event;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn domain() -> Fqdn {
    Fqdn::parse("example.test").unwrap()
}

fn event(id: i64, kind: &str, message: &str) -> Event {
    Event {
        id,
        domain: domain(),
        at: t(id),
        kind: kind.parse().expect("a known event kind"),
        actor: "automation".into(),
        reason: None,
        message: message.into(),
        evidence: json!({}),
    }
}

fn notice(id: i64, kind: &str, message: &str, state: &DomainState) -> Arc<Notice> {
    Arc::new(Notice {
        event: event(id, kind, message),
        state: state.clone(),
    })
}

/// Every event the machine emits on one step, as the actor records it: kind, message and the
/// typed fields in the evidence.
fn step(s: &mut DomainState, input: Input, at: i64) -> Vec<(String, String, serde_json::Value)> {
    let pol = Policy {
        hold: Some(Duration::ZERO),
        ..Policy::default()
    };
    machine::step(s, input, t(at), &pol)
        .into_iter()
        .filter_map(|e| {
            let evidence = match &e {
                Effect::Transition { from, to, .. } => json!({"from": from, "to": to}),
                _ => json!({}),
            };
            let (kind, message) = e.recorded()?;
            Some((kind.to_string(), message, evidence))
        })
        .collect()
}

fn health(primary: crate::health::Health, backup: crate::health::Health) -> Input {
    Input::Health { primary, backup }
}

fn on_primary() -> DomainState {
    let mut s = DomainState::default();
    step(
        &mut s,
        Input::Observed {
            published: Some(Side::Primary),
            ttl: Some(300),
        },
        0,
    );
    step(&mut s, health(Up, Up), 1);
    assert_eq!(s.phase, Phase::Primary);
    s
}

#[test]
fn severities_follow_the_machines_own_messages() {
    let mut s = on_primary();
    let mut seen = Vec::new();
    for (input, at) in [
        (health(Down, Up), 10),
        (
            Input::ChangeFailed {
                side: Side::Backup,
                error: "SERVFAIL".into(),
            },
            11,
        ),
        (Input::ChangeVerified { side: Side::Backup }, 12),
        (health(Down, Down), 13),
        (health(Up, Down), 14),
        (
            Input::ChangeVerified {
                side: Side::Primary,
            },
            15,
        ),
    ] {
        for (kind, message, evidence) in step(&mut s, input, at) {
            let mut e = event(at, &kind, &message);
            e.evidence = evidence;
            let sev = severity_of(&e);
            seen.push((
                kind,
                message.split(':').next().unwrap_or("").to_string(),
                sev,
            ));
        }
    }
    let want = [
        ("transition", "Primary → FailingOver", Severity::Warning),
        (
            "alert.change_failed",
            "publishing the backup records failed",
            Severity::Critical,
        ),
        ("transition", "FailingOver → OnBackup", Severity::Info),
        ("transition", "OnBackup → BothDown", Severity::Critical),
        (
            "alert.both_down",
            "primary and backup are both Down; keeping the published records",
            Severity::Critical,
        ),
        ("transition", "BothDown → FailingBack", Severity::Info),
        ("transition", "FailingBack → Primary", Severity::Info),
    ];
    let want: Vec<(String, String, Severity)> = want
        .iter()
        .map(|(k, m, s)| (k.to_string(), m.to_string(), *s))
        .collect();
    assert_eq!(seen, want);
    for (kind, message, sev) in [
        (
            "alert.flap_guard",
            "automation paused: 4 moves within 1h",
            Severity::Warning,
        ),
        (
            "drift",
            "published records match neither side",
            Severity::Warning,
        ),
        (
            "override",
            "pinned to backup until … by chatops: drill",
            Severity::Info,
        ),
        (
            "propagation",
            "backup records visible at resolvers",
            Severity::Info,
        ),
        (
            "change",
            "change 3 published the backup records",
            Severity::Info,
        ),
    ] {
        assert_eq!(
            severity_of(&event(1, kind, message)),
            sev,
            "{kind}: {message}"
        );
    }
    // Health events: the leader's combined verdict, from the evidence the actor records.
    for (to, sev) in [
        ("down", Severity::Warning),
        ("up", Severity::Info),
        ("unknown", Severity::Info),
    ] {
        let mut e = event(1, "health", "primary Up → …: 1 of 1 voting vantages …");
        e.evidence = json!({"side": "primary", "combined": {"health": to, "votes": []}});
        assert_eq!(severity_of(&e), sev, "{to}");
    }
}

#[test]
fn dedup_key_is_the_domain_and_the_incident_start() {
    let since = t(0) + chrono::Duration::milliseconds(123);
    assert_eq!(
        dedup_key(&domain(), since),
        "mxguard/example.test/2027-01-15T08:00:00.123Z"
    );
    let long = Fqdn::parse(&format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(60)
    ))
    .unwrap();
    let key = dedup_key(&long, since);
    assert!(key.len() <= 255, "{}", key.len());
    assert_eq!(key, dedup_key(&long, since), "stable");
    assert_ne!(key, dedup_key(&domain(), since));
}

#[test]
fn signature_matches_an_independent_hmac() {
    // printf '%s' '1700000000.{"hello":"world"}' | openssl dgst -sha256 -hmac 'whsec-test'
    assert_eq!(
        sign(b"whsec-test", 1_700_000_000, br#"{"hello":"world"}"#),
        "sha256=d2f87610c84b65860686f28ca20a297cdbae7281e8a598d8e50924282655c6c4"
    );
}

#[test]
fn retry_after_in_seconds_or_as_a_date() {
    let v = |s: &str| retry_after(&HeaderValue::from_str(s).unwrap());
    assert_eq!(v("120"), Some(Duration::from_secs(120)));
    assert_eq!(v(" 0 "), Some(Duration::ZERO));
    let later = (Utc::now() + chrono::Duration::seconds(3600)).to_rfc2822();
    let d = v(&later).expect("an HTTP date");
    assert!(
        d > Duration::from_secs(3500) && d <= Duration::from_secs(3600),
        "{d:?}"
    );
    assert_eq!(
        v("Tue, 01 Jan 2019 00:00:00 GMT"),
        None,
        "a past date: no wait"
    );
    assert_eq!(v("soon"), None);
}

fn route(kind: TargetKind, min: Severity) -> (Route, mpsc::Receiver<Arc<Item>>) {
    let (tx, rx) = mpsc::channel(16);
    let r = Route {
        name: "t".into(),
        target: NotifyTarget {
            kind,
            domains: None,
            min_severity: min,
        },
        tx,
        stats: Arc::default(),
        touched: HashSet::new(),
    };
    (r, rx)
}

fn kinds() -> [TargetKind; 4] {
    let s = || SecretSource::Env("X".into());
    [
        TargetKind::Webhook {
            url: "http://x".into(),
            secret: s(),
        },
        TargetKind::Slack { url: s() },
        TargetKind::PagerDuty {
            routing_key: s(),
            api_url: "http://x".into(),
        },
        TargetKind::Statuspage {
            page_id: "p".into(),
            component_id: "c".into(),
            api_key: s(),
            api_url: "http://x".into(),
        },
    ]
}

/// One incident (warning failover, info steps, the resolution, a later event) through each
/// kind of route with min_severity = warning: what each one is given.
#[test]
fn routes_follow_severity_and_the_incident() {
    let started = t(0);
    let mut d = Dispatcher {
        routes: Vec::new(),
        links: Links::new("http://api"),
        started,
        closed: HashMap::new(),
    };
    let mut s = on_primary();
    let mut items = vec![d.classify(notice(2, "override", "automation paused by x", &s))];
    let steps = [
        (health(Down, Up), 10),
        (Input::ChangeVerified { side: Side::Backup }, 11),
        (health(Up, Up), 12),
        (
            Input::ChangeVerified {
                side: Side::Primary,
            },
            13,
        ),
    ];
    for (input, at) in steps {
        for (kind, message, evidence) in step(&mut s, input, at) {
            let mut e = event(at, &kind, &message);
            e.evidence = evidence;
            items.push(d.classify(Arc::new(Notice {
                event: e,
                state: s.clone(),
            })));
        }
    }
    items.push(d.classify(notice(
        20,
        "drift",
        "published records match neither side",
        &s,
    )));
    let shown: Vec<(String, Severity, bool)> = items
        .iter()
        .map(|i| (i.notice.event.message.clone(), i.severity, i.resolves))
        .collect();
    assert_eq!(
        shown
            .iter()
            .map(|(m, s, r)| (m.split(':').next().unwrap_or(""), *s, *r))
            .collect::<Vec<_>>(),
        vec![
            ("automation paused by x", Severity::Info, false),
            ("Primary → FailingOver", Severity::Warning, false),
            ("FailingOver → OnBackup", Severity::Info, false),
            ("OnBackup → FailbackPending", Severity::Info, false),
            ("FailbackPending → FailingBack", Severity::Info, false),
            ("FailingBack → Primary", Severity::Info, true),
            (
                "published records match neither side",
                Severity::Warning,
                false
            ),
        ]
    );
    let want: [&[usize]; 4] = [
        &[1, 5, 6],       // webhook: warnings and the resolution
        &[1, 5, 6],       // slack: the same
        &[1, 5],          // pagerduty: the trigger, the resolve; nothing outside an incident
        &[1, 2, 3, 4, 5], // statuspage: every step of the incident it opened
    ];
    for (kind, want) in kinds().into_iter().zip(want) {
        let label = kind.as_str();
        let (mut r, _rx) = route(kind, Severity::Warning);
        let got: Vec<usize> = (0..items.len())
            .filter(|i| r.accepts(&items[*i], started))
            .collect();
        assert_eq!(got, want, "{label}");
    }
    // A target above the incident's severity hears nothing of it, not even the resolution.
    for kind in kinds() {
        let label = kind.as_str();
        let (mut r, _rx) = route(kind, Severity::Critical);
        let got: Vec<usize> = (0..items.len())
            .filter(|i| r.accepts(&items[*i], started))
            .collect();
        assert!(got.is_empty(), "{label}: {got:?}");
    }
    // Another domain's route hears nothing.
    let (mut r, _rx) = route(kinds()[0].clone(), Severity::Info);
    r.target.domains = Some(vec![Fqdn::parse("other.test").unwrap()]);
    assert!(!items.iter().any(|i| r.accepts(i, started)));
}

#[test]
fn a_resolution_is_sent_once_and_after_a_restart_only_when_recent() {
    let mut s = on_primary();
    step(&mut s, health(Down, Up), 10);
    step(&mut s, Input::ChangeVerified { side: Side::Backup }, 11);
    step(&mut s, health(Up, Up), 12);
    step(
        &mut s,
        Input::ChangeVerified {
            side: Side::Primary,
        },
        13,
    );
    let closed = s.incident.expect("an incident");
    assert_eq!((closed.since, closed.until), (t(10), Some(t(13))));
    let dispatcher = |started| Dispatcher {
        routes: Vec::new(),
        links: Links::new("http://api"),
        started,
        closed: HashMap::new(),
    };
    // The same process: the first notice after the close resolves, later ones do not.
    let mut d = dispatcher(t(0));
    assert!(
        d.classify(notice(1, "transition", "FailingBack → Primary: x", &s))
            .resolves
    );
    assert!(
        !d.classify(notice(2, "health", "backup Up → Down", &s))
            .resolves
    );
    // Restarted five minutes after the close: resend (it may not have gone out).
    let mut d = dispatcher(t(13 + 300));
    assert!(d.classify(notice(3, "health", "x", &s)).resolves);
    // Restarted an hour later: that incident was dealt with.
    let mut d = dispatcher(t(13 + 3600));
    assert!(!d.classify(notice(4, "health", "x", &s)).resolves);
    // The key of the incident is the same in every notice of it.
    let mut d = dispatcher(t(0));
    let mut s = on_primary();
    step(&mut s, health(Down, Up), 10);
    let open = d.classify(notice(5, "transition", "x", &s));
    step(&mut s, Input::ChangeVerified { side: Side::Backup }, 11);
    let later = d.classify(notice(6, "transition", "x", &s));
    let key = |i: &Item| i.incident.as_ref().map(|i| i.key.clone());
    assert_eq!(
        key(&open),
        Some("mxguard/example.test/2027-01-15T08:00:10.000Z".into())
    );
    assert_eq!(key(&open), key(&later));
}

#[test]
fn evidence_lines_put_failing_targets_first() {
    let mut e = event(1, "transition", "x");
    e.evidence = json!({"rounds": [
        {"side": "backup", "verdicts": [{"target": "backup.example.test.", "up": true, "reason": "250 OK"}]},
        {"side": "primary", "verdicts": [{"target": "mx1.example.test.", "up": false, "reason": "connect <timeout> & more"}]},
    ]});
    let item = Item::new(
        Arc::new(Notice {
            event: e,
            state: on_primary(),
        }),
        false,
        &Links::new("http://api/"),
    );
    assert_eq!(
        item.evidence_lines(),
        vec![
            "primary mx1.example.test.: down, connect <timeout> & more",
            "backup backup.example.test.: up, 250 OK",
        ]
    );
    let slack = slack::message(&item).to_string();
    assert!(
        slack.contains("connect &lt;timeout&gt; &amp; more"),
        "{slack}"
    );
    assert_eq!(item.links.pin, "http://api/v1/domains/example.test/pin");
    let mut e = event(
        2,
        "health",
        "primary Up → Down: 1 of 1 voting vantages see it Down",
    );
    e.evidence = json!({"side": "primary", "combined": {"side": "primary", "health": "down", "votes": [
        {"vantage": "eu", "health": "down", "counted": true, "verdicts": [{"target": "mx1.example.test.", "up": false, "reason": "421"}]}
    ]}});
    let item = Item::new(
        Arc::new(Notice {
            event: e,
            state: on_primary(),
        }),
        false,
        &Links::new("http://api"),
    );
    assert_eq!(
        item.evidence_lines(),
        vec!["primary (vantage eu) mx1.example.test.: down, 421"]
    );
}

#[test]
fn statuspage_public_status_follows_where_mail_goes() {
    let links = Links::new("http://api");
    let item = |s: &DomainState, resolves| Item::new(notice(1, "health", "x", s), resolves, &links);
    let p = |i: &Item| {
        let p = statuspage::public(i);
        (p.incident, p.component)
    };
    let mut s = on_primary();
    step(&mut s, health(Down, Up), 10);
    assert_eq!(
        p(&item(&s, false)),
        ("investigating", "major_outage"),
        "still on the Down primary"
    );
    step(&mut s, Input::ChangeVerified { side: Side::Backup }, 11);
    assert_eq!(p(&item(&s, false)), ("identified", "degraded_performance"));
    step(&mut s, health(Down, Down), 12);
    assert_eq!(p(&item(&s, false)), ("investigating", "major_outage"));
    step(&mut s, health(Up, Down), 13);
    assert_eq!(s.phase, Phase::FailingBack);
    assert_eq!(
        p(&item(&s, false)),
        ("investigating", "major_outage"),
        "the backup still serves, Down"
    );
    let mut pending = on_primary();
    step(&mut pending, health(Down, Up), 10);
    step(
        &mut pending,
        Input::ChangeVerified { side: Side::Backup },
        11,
    );
    pending.phase = Phase::FailbackPending;
    assert_eq!(
        p(&item(&pending, false)),
        ("monitoring", "degraded_performance")
    );
    step(
        &mut s,
        Input::ChangeVerified {
            side: Side::Primary,
        },
        14,
    );
    assert_eq!(p(&item(&s, true)), ("resolved", "operational"));
    assert_eq!(
        statuspage::incident_name(&item(&s, true)).as_deref(),
        Some("Mail delivery for example.test (since 2027-01-15 08:00:10 UTC)")
    );
}
