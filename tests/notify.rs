//! Notifications against receivers on loopback: the exact payloads of one full incident
//! (trigger → updates → resolve) driven through the real actor, the webhook signature, the
//! PagerDuty dedup key across a restart, Statuspage create → update → resolve, retries and
//! give-ups, and a receiver that never answers delaying nothing.

mod common;
#[path = "common/notify_lab.rs"]
mod notify_lab;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::api::{MxView, DOMAIN};
use common::poll;
use hmac::{Hmac, Mac};
use mxguard::config::Config;
use mxguard::events::EventBus;
use mxguard::health::Health::{Down, Up};
use mxguard::machine::{self, Command, DomainState, Input, Phase, Policy};
use mxguard::model::{Fqdn, Side};
use mxguard::notify::{dedup_key, Notifier};
use mxguard::store::{Event, Store};
use mxguard_core::{FixedJitter, ManualClock};
use notify_lab::{hung, statuspage, Answer, NotifyLab, Receiver, Recorded};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WEBHOOK_SECRET: &str = "whsec-0123456789abcdef";
const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";
const STATUSPAGE_KEY: &str = "sp-api-key-123";

/// Secrets in files of a test-owned directory, as `…_file` options name them.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new(slack_url: &str) -> Secrets {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, value) in [
            ("webhook", WEBHOOK_SECRET),
            ("slack", slack_url),
            ("pd", ROUTING_KEY),
            ("sp", STATUSPAGE_KEY),
        ] {
            std::fs::write(dir.path().join(name), format!("{value}\n")).expect("secret file");
        }
        Secrets { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

struct Receivers {
    hook: Receiver,
    slack: Receiver,
    pd: Receiver,
    sp: Receiver,
}

/// A `[notify]` section with one target of each kind, retrying fast.
fn notify_toml(r: &Receivers, s: &Secrets, extra: &str) -> String {
    format!(
        r#"
[notify]
api_base_url = "https://mxguard.example.net/"
initial_backoff = "10ms"
max_backoff = "50ms"
{extra}

[notify.targets.hook]
kind = "webhook"
url = "{hook}/hook"
secret_file = "{webhook}"

[notify.targets.chat]
kind = "slack"
url_file = "{slack}"

[notify.targets.pager]
kind = "pagerduty"
routing_key_file = "{pd}"
api_url = "{pd_url}"

[notify.targets.status]
kind = "statuspage"
page_id = "page1"
component_id = "comp1"
api_key_file = "{sp}"
api_url = "{sp_url}"
"#,
        hook = r.hook.url,
        webhook = s.path("webhook"),
        slack = s.path("slack"),
        pd = s.path("pd"),
        pd_url = r.pd.url,
        sp = s.path("sp"),
        sp_url = r.sp.url,
    )
}

fn hmac_hex(secret: &str, message: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a webhook receiver does: recompute the HMAC over `timestamp.body` and compare.
fn assert_signed(req: &Recorded) {
    let ts = req.header("x-mxguard-timestamp").expect("timestamp header");
    let ts: i64 = ts.parse().expect("unix seconds");
    assert!(
        (Utc::now().timestamp() - ts).abs() < 300,
        "timestamp {ts} is the time of sending"
    );
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&req.body);
    let want = format!("sha256={}", hmac_hex(WEBHOOK_SECRET, &signed));
    assert_eq!(req.header("x-mxguard-signature"), Some(want.as_str()));
    assert_eq!(req.header("content-type"), Some("application/json"));
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn time(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

const LINKS: &str = "https://mxguard.example.net/v1/domains/example.test";

/// Primary down → failover → primary back → failback (hold 0) through the real actor; every
/// target gets exactly its part of the incident.
#[tokio::test]
async fn one_incident_reaches_every_target_with_its_exact_payloads() {
    let r = Receivers {
        hook: Receiver::accepting().await,
        slack: Receiver::start(|_, _| Answer::status(200, "ok")).await,
        pd: Receiver::accepting().await,
        sp: statuspage(json!([])).await,
    };
    let secrets = Secrets::new(&format!("{}/services/T000/B000/XXXX", r.slack.url));
    let lab = NotifyLab::start(&notify_toml(&r, &secrets, "")).await;

    lab.round(Side::Primary, Up, "250 ok").await;
    lab.round(Side::Backup, Up, "250 ok").await;
    lab.until("on the primary", |s| s.phase == Phase::Primary)
        .await;
    lab.round(Side::Primary, Down, "connect: timed out after 3s")
        .await;
    let on_backup = lab
        .until("failed over", |s| {
            s.phase == Phase::OnBackup && s.in_flight.is_none()
        })
        .await;
    let incident = on_backup.incident.expect("an open incident");
    assert_eq!(incident.until, None);
    assert_eq!(lab.persisted().await.incident, Some(incident), "persisted");
    lab.round(Side::Primary, Up, "250 ok").await;
    let back = lab
        .until("failed back", |s| {
            s.phase == Phase::Primary && s.incident.is_some_and(|i| i.until.is_some())
        })
        .await;
    assert_eq!(back.incident.map(|i| i.since), Some(incident.since));

    // The webhook (min info) gets every event of the timeline, in order, each once.
    let events = lab.events().await;
    let hook = r.hook.wait_for(events.len()).await;
    lab.settled().await;
    let hook = {
        let again = r.hook.requests();
        assert_eq!(again.len(), hook.len(), "nothing more than the timeline");
        again
    };
    assert_eq!(
        hook.iter()
            .map(|h| h.json()["event"]["id"].as_i64().expect("id"))
            .collect::<Vec<_>>(),
        events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    for (req, ev) in hook.iter().zip(&events) {
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/hook"));
        assert_signed(req);
        assert_eq!(req.header("x-mxguard-event"), Some(ev.kind.as_str()));
        assert_eq!(
            req.header("x-mxguard-delivery"),
            Some(ev.id.to_string().as_str())
        );
        let b = req.json();
        assert_eq!(
            keys(&b),
            [
                "domain",
                "event",
                "incident",
                "links",
                "resolves_incident",
                "severity",
                "state",
                "version"
            ]
        );
        assert_eq!(
            b["event"],
            json!({
                "id": ev.id,
                "kind": ev.kind,
                "at": time(ev.at),
                "actor": ev.actor,
                "reason": ev.reason,
                "message": ev.message,
                "evidence": ev.evidence,
            })
        );
        assert_eq!(
            keys(&b["state"]),
            [
                "backup",
                "in_flight",
                "override",
                "phase",
                "primary",
                "published",
                "since"
            ]
        );
    }
    let key = dedup_key(&lab.domain(), incident.since);
    assert_eq!(
        key,
        format!("mxguard/example.test/{}", time(incident.since))
    );
    let failover = find(&hook, |b| {
        b["event"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Primary → FailingOver"))
    });
    let mut body = failover.json();
    let event = body
        .as_object_mut()
        .and_then(|o| o.remove("event"))
        .expect("event");
    assert_eq!(event["kind"], "transition");
    assert!(body["state"]["since"].is_string());
    body["state"]["since"] = Value::Null;
    assert_eq!(
        body,
        json!({
            "version": 1,
            "domain": "example.test",
            "severity": "warning",
            "resolves_incident": false,
            "state": {
                "phase": "failing_over",
                "since": null,
                "published": "primary",
                "in_flight": "backup",
                "primary": "down",
                "backup": "up",
                "override": null,
            },
            "incident": {"key": key, "status": "open", "since": time(incident.since), "until": null},
            "links": {
                "status": LINKS,
                "events": format!("{LINKS}/events"),
                "pin": {"method": "PUT", "url": format!("{LINKS}/pin")},
                "unpin": {"method": "DELETE", "url": format!("{LINKS}/pin")},
            },
        })
    );
    let resolution = hook.last().expect("a last request").json();
    assert_eq!(resolution["resolves_incident"], true);
    assert_eq!(resolution["incident"]["status"], "resolved");
    assert_eq!(resolution["incident"]["key"], key.as_str());
    assert_eq!(resolution["state"]["phase"], "primary");

    // Slack (min warning): the primary going Down, the failover, the resolution.
    let slack = r.slack.requests();
    let texts: Vec<String> = slack
        .iter()
        .map(|s| s.json()["text"].as_str().expect("text").to_string())
        .collect();
    assert_eq!(texts.len(), 3, "{texts:#?}");
    assert!(
        texts[0].starts_with("[WARNING] example.test: primary Up → Down"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1]
            .starts_with("[WARNING] example.test: Primary → FailingOver: primary Down, backup Up"),
        "{}",
        texts[1]
    );
    assert!(
        texts[2].starts_with(
            "[RESOLVED] example.test: mail is back on the primary; FailingBack → Primary"
        ),
        "{}",
        texts[2]
    );
    for s in &slack {
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("POST", "/services/T000/B000/XXXX")
        );
        assert!(s.header("x-mxguard-signature").is_none());
    }
    let msg = slack[1].json();
    assert_eq!(keys(&msg), ["blocks", "text"]);
    let blocks = msg["blocks"].as_array().expect("blocks");
    let types: Vec<&str> = blocks
        .iter()
        .map(|b| b["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, ["section", "section", "section", "context"]);
    let fields: Vec<&str> = blocks[1]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        fields,
        [
            "*State*\nFailingOver",
            "*Published*\nprimary",
            "*Primary*\ndown",
            "*Backup*\nup",
            "*Change in flight*\nbackup",
            &format!("*Incident*\nopen since {}", time(incident.since)),
        ]
    );
    let evidence = blocks[2]["text"]["text"].as_str().expect("evidence");
    assert!(
        evidence.starts_with(
            "*Evidence*\n• primary mx1.example.test.: down, connect: timed out after 3s"
        ),
        "{evidence}"
    );
    assert_eq!(
        blocks[3]["elements"][0]["text"],
        format!("<{LINKS}|Status> · <{LINKS}/events|Timeline> · Pin: `PUT {LINKS}/pin` · Unpin: `DELETE {LINKS}/pin` · by automation")
    );

    // PagerDuty (min warning): one trigger at the failover, one resolve, the same dedup_key.
    let pd = r.pd.requests();
    assert_eq!(
        pd.len(),
        2,
        "{:#?}",
        pd.iter().map(Recorded::json).collect::<Vec<_>>()
    );
    for p in &pd {
        assert_eq!(
            (p.method.as_str(), p.path.as_str()),
            ("POST", "/v2/enqueue")
        );
    }
    let fo_event = events
        .iter()
        .find(|e| e.message.starts_with("Primary → FailingOver"))
        .expect("failover event");
    let mut trigger = pd[0].json();
    let details = trigger["payload"]
        .as_object_mut()
        .and_then(|p| p.remove("custom_details"))
        .expect("custom_details");
    assert_eq!(
        trigger,
        json!({
            "routing_key": ROUTING_KEY,
            "event_action": "trigger",
            "dedup_key": key,
            "payload": {
                "summary": format!("example.test: {}", fo_event.message),
                "source": "example.test",
                "severity": "warning",
                "timestamp": time(fo_event.at),
                "component": "mx-records",
                "group": "mxguard",
                "class": "transition",
            },
            "client": "mxguard",
            "client_url": LINKS,
            "links": [
                {"href": LINKS, "text": "mxguard status of example.test"},
                {"href": format!("{LINKS}/events"), "text": "mxguard timeline"},
            ],
        })
    );
    assert_eq!(details["event_id"], fo_event.id);
    assert_eq!(details["state"], "FailingOver");
    assert_eq!(details["primary"], "down");
    assert_eq!(details["pin"], format!("PUT {LINKS}/pin"));
    assert_eq!(details["unpin"], format!("DELETE {LINKS}/pin"));
    assert_eq!(details["incident_since"], time(incident.since));
    assert_eq!(
        pd[1].json(),
        json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": key})
    );

    // Statuspage: created at the failover, updated when mail moved to the backup and when the
    // primary came back, resolved — each on the configured component.
    let sp = r.sp.requests();
    let calls: Vec<(String, String)> = sp
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    let create = ("POST".to_string(), "/v1/pages/page1/incidents".to_string());
    let patch = (
        "PATCH".to_string(),
        "/v1/pages/page1/incidents/inc42".to_string(),
    );
    assert_eq!(calls, [create, patch.clone(), patch.clone(), patch]);
    for s in &sp {
        assert_eq!(s.header("authorization"), Some("OAuth sp-api-key-123"));
    }
    let name = format!(
        "Mail delivery for example.test (since {})",
        incident.since.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let bodies: Vec<Value> = sp.iter().map(Recorded::json).collect();
    let update = |status: &str, component: &str, body: &str| {
        json!({"incident": {
            "status": status,
            "body": body,
            "component_ids": ["comp1"],
            "components": {"comp1": component},
        }})
    };
    let mut created = update(
        "investigating",
        "major_outage",
        "Mail for example.test cannot be delivered at the moment. Sending servers keep retrying, so mail is delayed rather than lost.",
    );
    created["incident"]["name"] = json!(name);
    assert_eq!(bodies[0], created);
    assert_eq!(bodies[1], update("identified", "degraded_performance", "The primary mail servers for example.test are unavailable; mail is being delivered through the backup mail servers."));
    assert_eq!(bodies[2], update("monitoring", "degraded_performance", "The primary mail servers for example.test have recovered; mail returns to them once they have stayed healthy for a while."));
    assert_eq!(
        bodies[3],
        update(
            "resolved",
            "operational",
            "Mail for example.test is delivered by its primary mail servers again."
        )
    );

    for t in ["hook", "chat", "pager", "status"] {
        let s = lab.notify.stats(t).expect("stats");
        assert_eq!(s.failed + s.dropped, 0, "{t}: {s:?}");
    }
    assert!(
        !lab.events().await.iter().any(|e| e.kind == "notify_failed"),
        "no delivery failed"
    );
}

fn find(reqs: &[Recorded], pred: impl Fn(&Value) -> bool) -> &Recorded {
    reqs.iter()
        .find(|r| pred(&r.json()))
        .expect("a matching request")
}

/// mxguard restarts in the middle of an incident: the resolve carries the trigger's dedup_key,
/// and the Statuspage incident created before the restart is found and resolved (no duplicate).
#[tokio::test]
async fn the_incident_keeps_its_keys_across_a_restart() {
    let r = Receivers {
        hook: Receiver::accepting().await,
        slack: Receiver::accepting().await,
        pd: Receiver::accepting().await,
        sp: Receiver::start(|_, _| Answer::status(500, "unused")).await,
    };
    let secrets = Secrets::new(&r.slack.url);
    let lab = NotifyLab::start(&notify_toml(&r, &secrets, "")).await;
    lab.round(Side::Primary, Up, "250 ok").await;
    lab.round(Side::Backup, Up, "250 ok").await;
    lab.until("on the primary", |s| s.phase == Phase::Primary)
        .await;
    lab.round(Side::Primary, Down, "421 too busy").await;
    let s = lab
        .until("failed over", |s| {
            s.phase == Phase::OnBackup && s.in_flight.is_none()
        })
        .await;
    let since = s.incident.expect("incident").since;
    let trigger = r.pd.wait_for(1).await[0].json();
    assert_eq!(trigger["event_action"], "trigger");

    // The new process: a Statuspage that already has this incident open (created before).
    let name = format!(
        "Mail delivery for example.test (since {})",
        since.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let sp = statuspage(json!([
        {"id": "other", "name": "Mail delivery for other.test (since 2020-01-01 00:00:00 UTC)"},
        {"id": "before-restart", "name": name},
    ]))
    .await;
    let r2 = Receivers {
        sp: sp.clone(),
        ..r
    };
    let lab = lab.restart(&notify_toml(&r2, &secrets, "")).await;
    assert_eq!(lab.persisted().await.phase, Phase::OnBackup);
    // Probe rounds start afresh after a restart: both sides report before the primary is Up.
    lab.round(Side::Backup, Up, "250 ok").await;
    lab.round(Side::Primary, Up, "250 ok").await;
    lab.until("failed back", |s| {
        s.phase == Phase::Primary && s.incident.is_some_and(|i| i.until.is_some())
    })
    .await;
    let pd = r2.pd.wait_for(2).await;
    assert_eq!(
        pd[1].json(),
        json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": trigger["dedup_key"]})
    );
    assert_eq!(
        trigger["dedup_key"],
        dedup_key(&lab.domain(), since).as_str()
    );
    lab.settled().await;
    let calls: Vec<(String, String)> = sp
        .requests()
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(
        calls.first(),
        Some(&("GET".into(), "/v1/pages/page1/incidents/unresolved".into())),
        "looked up once after the restart"
    );
    assert!(
        calls.iter().skip(1).all(|c| c
            == &(
                "PATCH".into(),
                "/v1/pages/page1/incidents/before-restart".into()
            )),
        "{calls:?}"
    );
    let last = sp.requests().last().expect("requests").json();
    assert_eq!(last["incident"]["status"], "resolved");
    assert_eq!(
        last["incident"]["components"],
        json!({"comp1": "operational"})
    );
}

/// Receivers that accept connections and never answer: a pin to the backup still publishes
/// and verifies while every target is still waiting on its first attempt.
#[tokio::test]
async fn a_receiver_that_never_answers_delays_nothing() {
    let h = hung().await;
    let dead = Receiver::at(&h.url);
    let r = Receivers {
        hook: dead.clone(),
        slack: dead.clone(),
        pd: dead.clone(),
        sp: dead,
    };
    let secrets = Secrets::new(&h.url);
    let lab = NotifyLab::start(&notify_toml(
        &r,
        &secrets,
        "timeout = \"5m\"\nmax_attempts = 100\ngive_up_after = \"1h\"",
    ))
    .await;
    let until = Utc::now() + chrono::Duration::hours(1);
    lab.handle
        .command(
            Command::Pin {
                side: Side::Backup,
                until,
            },
            "chatops",
            "drill",
        )
        .await
        .expect("pin accepted");
    lab.until("the backup published and verified", |s| {
        s.phase == Phase::OnBackup && s.published == Some(Side::Backup) && s.in_flight.is_none()
    })
    .await;
    assert!(
        lab.events()
            .await
            .iter()
            .any(|e| e.kind == "change" && e.message.contains("published the backup records")),
        "the change was verified"
    );
    assert_eq!(lab.dns.mx(), vec!["10 backup.example.test. 30"]);
    // Every target did try (its connection is held open)…
    poll(
        "all four targets connected",
        Duration::from_secs(30),
        || async { (h.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 4).then_some(()) },
    )
    .await;
    // …and none has finished a delivery: the failover did not wait for them.
    for t in ["hook", "chat", "pager", "status"] {
        let s = lab.notify.stats(t).expect("stats");
        assert!(s.queued >= 1 && s.attempts >= 1, "{t}: {s:?}");
        assert_eq!((s.delivered, s.failed), (0, 0), "{t}: {s:?}");
    }
}

/// A bus and store without an engine, and notices from real machine steps.
struct Bench {
    store: Arc<dyn Store>,
    bus: EventBus,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Bench {
    async fn new() -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = mxguard::config::StoreUrl::parse(&format!(
            "sqlite://{}",
            dir.path().join("n.db").display()
        ))
        .expect("url");
        let store = mxguard::store::open(&url).await.expect("store");
        store.migrate().await.expect("migrate");
        Bench {
            store,
            bus: EventBus::new(),
            shutdown: CancellationToken::new(),
            _dir: dir,
        }
    }

    fn start(&self, notify: &str, clock: Option<ManualClock>) -> mxguard::notify::NotifyHandle {
        let config = Config::parse("bench.toml", &notify_lab::config_text(notify)).expect("config");
        let mut n = Notifier::new(config.notify, self.store.clone());
        if let Some(c) = clock {
            n = n.with_clock(Arc::new(c), Arc::new(FixedJitter(0.0)));
        }
        n.start(&self.bus, self.shutdown.clone(), &TaskTracker::new())
    }

    /// Records an event in the store and publishes it, as an actor does (a transition's
    /// evidence names the phase the state is in now).
    async fn publish(&self, kind: &str, message: &str, state: &DomainState) -> Event {
        let kind: mxguard::events::EventKind = kind.parse().expect("a known event kind");
        let evidence = if kind == mxguard::events::EventKind::Transition {
            json!({"from": "primary", "to": state.phase})
        } else {
            json!({})
        };
        let ev = mxguard::store::NewEvent {
            domain: Fqdn::parse(DOMAIN).expect("name"),
            at: Utc::now(),
            kind,
            actor: "automation".into(),
            reason: None,
            message: message.into(),
            evidence: evidence.into(),
        };
        let stored = self.store.append_event(&ev).await.expect("append");
        self.bus.publish(stored.clone(), state.clone());
        stored
    }

    async fn notify_failed(&self) -> Vec<Event> {
        let events = self
            .store
            .events(&Fqdn::parse(DOMAIN).expect("name"), None, 100)
            .await
            .expect("events");
        events
            .into_iter()
            .filter(|e| e.kind == "notify_failed")
            .collect()
    }
}

/// A failover state from real machine steps (the incident open).
fn failing_over() -> DomainState {
    let mut s = DomainState::default();
    let now = Utc::now();
    let pol = Policy::default();
    machine::step(
        &mut s,
        Input::Observed {
            published: Some(Side::Primary),
            ttl: Some(300),
        },
        now,
        &pol,
    );
    machine::step(
        &mut s,
        Input::Health {
            primary: Up,
            backup: Up,
        },
        now,
        &pol,
    );
    machine::step(
        &mut s,
        Input::Health {
            primary: Down,
            backup: Up,
        },
        now,
        &pol,
    );
    assert_eq!(s.phase, Phase::FailingOver);
    s
}

/// Retries every 10–20 ms.
const FAST: &str = "initial_backoff = \"10ms\"\nmax_backoff = \"20ms\"\n";

/// One webhook target; `extra` goes into `[notify]`.
fn webhook_toml(url: &str, secret: &Secrets, extra: &str) -> String {
    format!(
        "[notify]\n{extra}\n[notify.targets.hook]\nkind = \"webhook\"\nurl = \"{url}/hook\"\nsecret_file = \"{}\"\n",
        secret.path("webhook")
    )
}

#[tokio::test]
async fn errors_and_rate_limits_are_retried_until_delivered_once() {
    let rx = Receiver::start(|_, n| match n {
        0 => Answer::status(500, "boom"),
        1 => Answer {
            status: 429,
            headers: vec![("retry-after", "0".into())],
            body: "slow down".into(),
        },
        _ => Answer::status(200, "{}"),
    })
    .await;
    let secrets = Secrets::new("unused");
    let bench = Bench::new().await;
    let handle = bench.start(&webhook_toml(&rx.url, &secrets, FAST), None);
    let ev = bench
        .publish(
            "transition",
            "Primary → FailingOver: primary Down, backup Up",
            &failing_over(),
        )
        .await;
    poll("delivered", Duration::from_secs(30), || async {
        (handle.stats("hook").expect("stats").delivered == 1).then_some(())
    })
    .await;
    let s = handle.stats("hook").expect("stats");
    assert_eq!((s.attempts, s.delivered, s.failed), (3, 1, 0), "{s:?}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_signed(r);
        assert_eq!(r.body, reqs[0].body, "the same body on every attempt");
        assert_eq!(r.json()["event"]["id"], ev.id);
    }
    assert!(bench.notify_failed().await.is_empty());
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let rx = Receiver::start(|_, n| match n {
        0 => Answer {
            status: 429,
            headers: vec![("retry-after", "120".into())],
            body: "{}".into(),
        },
        _ => Answer::status(200, "{}"),
    })
    .await;
    let secrets = Secrets::new("unused");
    let bench = Bench::new().await;
    let clock = ManualClock::new();
    let toml = webhook_toml(
        &rx.url,
        &secrets,
        "initial_backoff = \"1s\"\nmax_backoff = \"2s\"\n",
    );
    let handle = bench.start(&toml, Some(clock.clone()));
    bench
        .publish(
            "alert.both_down",
            "primary and backup are both Down",
            &failing_over(),
        )
        .await;
    rx.wait_for(1).await;
    // The retrier now sleeps on the injected clock: for Retry-After's 120 s, not the 0.5 s
    // backoff (jitter pinned to 0).
    poll("the retry scheduled", Duration::from_secs(30), || async {
        (clock.next_wake() == Some(Duration::from_secs(120))).then_some(())
    })
    .await;
    assert_eq!(rx.requests().len(), 1);
    clock.advance(Duration::from_secs(120));
    poll("delivered", Duration::from_secs(30), || async {
        (handle.stats("hook").expect("stats").delivered == 1).then_some(())
    })
    .await;
    assert_eq!(rx.requests().len(), 2);
}

#[tokio::test]
async fn a_delivery_given_up_becomes_a_timeline_event_and_is_not_republished() {
    let always_down = Receiver::start(|_, _| Answer::status(503, "maintenance")).await;
    // Refuses, echoing the request (which holds the routing key) in its answer.
    let refuses = Receiver::start(|req, _| {
        let key = req.json()["routing_key"].clone();
        Answer::status(
            400,
            &json!({"message": "unknown key", "routing_key": key}).to_string(),
        )
    })
    .await;
    let secrets = Secrets::new("unused");
    let bench = Bench::new().await;
    let toml = format!(
        "{}\n[notify.targets.strict]\nkind = \"pagerduty\"\nrouting_key_file = \"{}\"\napi_url = \"{}\"\n",
        webhook_toml(&always_down.url, &secrets, &format!("{FAST}max_attempts = 3")),
        secrets.path("pd"),
        refuses.url
    );
    let handle = bench.start(&toml, None);
    let mut listener = bench.bus.subscribe();
    let ev = bench
        .publish(
            "alert.change_failed",
            "publishing the backup records failed: SERVFAIL; retrying",
            &failing_over(),
        )
        .await;
    let failed = poll(
        "two notify_failed events",
        Duration::from_secs(30),
        || async {
            let f = bench.notify_failed().await;
            (f.len() == 2).then_some(f)
        },
    )
    .await;
    let by_target = |t: &str| {
        failed
            .iter()
            .find(|e| e.evidence["target"] == t)
            .unwrap_or_else(|| panic!("no notify_failed for {t}: {failed:?}"))
    };
    let hook = by_target("hook");
    assert_eq!(hook.actor, "notify");
    assert_eq!(
        hook.evidence,
        json!({
            "target": "hook",
            "target_kind": "webhook",
            "event_id": ev.id,
            "event_kind": "alert.change_failed",
            "attempts": 3,
            "error": "HTTP 503 Service Unavailable: maintenance",
        })
    );
    assert_eq!(
        hook.message,
        format!("notification to hook (webhook) about event {} (alert.change_failed) failed after 3 attempt(s): HTTP 503 Service Unavailable: maintenance", ev.id)
    );
    let strict = by_target("strict");
    assert_eq!(strict.evidence["attempts"], 1, "a 400 is not retried");
    assert!(
        !strict.message.contains(ROUTING_KEY) && strict.message.contains("***"),
        "the echoed routing key is blanked out: {}",
        strict.message
    );
    assert_eq!(always_down.requests().len(), 3);
    assert_eq!(refuses.requests().len(), 1);
    assert_eq!(handle.stats("hook").expect("stats").failed, 1);
    assert_eq!(handle.stats("strict").expect("stats").failed, 1);
    // The bus carried the published event and nothing about the failures: a marker published
    // after them is the next thing a listener sees.
    let marker = bench.publish("operator", "marker", &failing_over()).await;
    let seen: Vec<i64> = vec![
        listener.recv().await.expect("first").event.id,
        listener.recv().await.expect("second").event.id,
    ];
    assert_eq!(seen, [ev.id, marker.id]);
}

#[tokio::test]
async fn a_full_queue_drops_instead_of_waiting() {
    let h = hung().await;
    let secrets = Secrets::new("unused");
    let bench = Bench::new().await;
    let handle = bench.start(
        &webhook_toml(
            &h.url,
            &secrets,
            "queue = 2\ntimeout = \"5m\"\ngive_up_after = \"1h\"",
        ),
        None,
    );
    let state = failing_over();
    for i in 0..10 {
        bench.publish("drift", &format!("drift {i}"), &state).await;
    }
    poll(
        "all ten handled by the dispatcher",
        Duration::from_secs(30),
        || async {
            let s = handle.stats("hook").expect("stats");
            (s.queued + s.dropped == 10).then_some(())
        },
    )
    .await;
    let s = handle.stats("hook").expect("stats");
    // One in flight (hung) and two queued at most; the rest dropped, the publisher never waited.
    assert!(s.queued <= 3 && s.dropped >= 7, "{s:?}");
    assert_eq!(s.delivered, 0);
}
