//! Drills (issue 19, item 3) end to end: `mxguard serve` in the lab (named with TSIG, two
//! Unbound, two Postfix, SPF/DMARC/DKIM published) and `mxguard drill` beside it.
//!
//! - a drill of the healthy domain passes every step, `named` serves the same zone (serial and
//!   MX) before and after, the report is in the timeline; `--live` is refused without
//!   `drillable = true`;
//! - the backup turned open relay: the relay step fails, the drill fails, the CLI exits 1, and
//!   the scheduled drill (`drill_every`) raises `alert.drill_failed`, delivered to a webhook;
//! - a live drill on a `drillable` domain fails over and back through the state machine: two
//!   UPDATEs at `named`, both verified, the zone as it was;
//! - mode `a`: the MX host is probed (and checked against the SPF) at the backup's own address.
//!
//! `cargo test --test drill -- --nocapture` prints each report as `mxguard drill` shows it.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::lab::{
    mxguard_bin, Lab, LabMode, LabOptions, Layout, Mxguard, BACKUP_IP, OPERATE_TOKEN,
};
use mxguard_testpeers::{PostfixConfig, Profile};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

async fn lab(domain_extra: &str) -> Lab {
    Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            mail_auth: true,
            operate_token: true,
            read_token: true,
            domain_extra: domain_extra.to_string(),
            ..Layout::default()
        },
    )
    .await
}

fn token_file(lab: &Lab) -> PathBuf {
    let path = lab.dir.path().join("operator.token");
    std::fs::write(&path, format!("{OPERATE_TOKEN}\n")).expect("token file");
    path
}

/// `mxguard drill example.test ARGS --api … --token-file …`, as an operator runs it.
async fn drill(lab: &Lab, mx: &Mxguard, args: &[&str]) -> Output {
    tokio::process::Command::new(mxguard_bin())
        .arg("drill")
        .arg("example.test")
        .args(args)
        .arg("--api")
        .arg(format!("http://{}", mx.listen))
        .arg("--token-file")
        .arg(token_file(lab))
        .env_remove("MXGUARD_TOKEN")
        .env_remove("MXGUARD_API")
        .env_remove("MXGUARD_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run mxguard drill")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The domain's timeline through the API.
async fn events(lab: &Lab, mx: &Mxguard) -> Vec<Value> {
    let (status, body) = lab
        .api_get(mx, "/v1/domains/example.test/events?limit=1000")
        .await
        .expect("the events answer");
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

fn drills<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// Every step of a drill that passed, by name and outcome.
fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap_or("?").to_string(),
                s["outcome"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const PASSING: &[(&str, &str)] = &[
    ("backup_rcpt", "pass"),
    ("backup_relay", "pass"),
    ("mail_auth", "pass"),
    ("mta_sts", "pass"),
    ("dane", "pass"),
    ("provider_write", "pass"),
    ("plan", "pass"),
];

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_of_a_healthy_domain_passes_every_step_and_changes_nothing() {
    let lab = lab("").await;
    let mut mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let (serial, served) = (lab.serial().await, lab.served_mx().await);

    let out = drill(&lab, &mx, &["--reason", "quarterly drill"]).await;
    let (stdout, stderr) = text(&out);
    println!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nmxguard's log:\n{}",
        mx.log()
    );
    assert!(stdout.contains("drill example.test: PASS"), "{stdout}");
    for (step, _) in PASSING {
        assert!(
            stdout.contains(&format!("PASS         {step:<14}")),
            "{step} not shown as passed:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("no backup publishes TLSA"),
        "the lab publishes no TLSA:\n{stdout}"
    );
    assert!(
        stdout.contains("accepts postmaster@example.test"),
        "{stdout}"
    );
    assert!(
        stdout.contains("refuses a stranger's recipient"),
        "{stdout}"
    );
    assert!(stdout.contains("a failover would write"), "{stdout}");
    assert!(stdout.contains("live records unchanged"), "{stdout}");

    // nothing changed at named: the same serial (no UPDATE, the write check's included), the same MX
    assert_eq!(lab.serial().await, serial, "the drill wrote to the zone");
    assert_eq!(lab.served_mx().await, served);
    assert_eq!(
        lab.changes().await,
        vec![],
        "the drill made a change intent"
    );

    // the report is in the timeline, typed
    let timeline = events(&lab, &mx).await;
    let recorded = drills(&timeline, "drill");
    assert_eq!(recorded.len(), 1, "{timeline:?}");
    let e = recorded[0];
    assert_eq!(e["actor"], "lab-operator");
    assert_eq!(e["reason"], "quarterly drill");
    let report = &e["evidence"];
    assert_eq!(report["result"], "pass", "{report}");
    assert_eq!(report["trigger"], "operator");
    assert_eq!(report["live"], false);
    assert_eq!(outcomes(report), pairs(PASSING));
    for s in report["steps"].as_array().expect("steps") {
        assert!(s["duration_ms"].is_u64(), "{s}");
    }
    assert!(report["plan"]["changes"]["changes"]
        .as_array()
        .is_some_and(|c| c.len() == 1));
    assert!(drills(&timeline, "alert.drill_failed").is_empty());

    // --json: the API's answer, the report inside
    let out = drill(&lab, &mx, &["--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(answer["report"]["result"], "pass");
    assert!(answer["event_id"].is_i64());

    // --live is refused without `drillable = true`, and nothing moves
    let out = drill(&lab, &mx, &["--live"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("drillable = true"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(lab.serial().await, serial);
    assert_eq!(drills(&events(&lab, &mx).await, "drill").len(), 2);
    assert_eq!(mx.terminate(), Some(0));
}

/// A webhook receiver on loopback: the JSON bodies it was sent.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let sink = sink.clone();
        async move {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                sink.lock().expect("seen").push(v);
            }
            "ok"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_turned_open_relay_fails_the_drill_and_the_scheduled_one_alerts() {
    let mut lab = lab("drill_every = \"3s\"\n").await;
    let (url, hooked) = webhook().await;
    let secret = lab.dir.path().join("hook.secret");
    std::fs::write(&secret, "hook-secret").expect("secret file");
    let mut config = std::fs::read_to_string(&lab.config).expect("config");
    config.push_str(&format!(
        "\n[notify.targets.hook]\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_file = \"{}\"\nmin_severity = \"warning\"\n",
        secret.display()
    ));
    std::fs::write(&lab.config, config).expect("config");
    let mut mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let serial = lab.serial().await;

    // The schedule drills the healthy domain: it passes, and raises nothing.
    common::poll("a scheduled drill that passed", DEADLINE, || async {
        let timeline = events(&lab, &mx).await;
        drills(&timeline, "drill")
            .iter()
            .any(|e| e["evidence"]["trigger"] == "schedule" && e["evidence"]["result"] == "pass")
            .then_some(())
    })
    .await;
    assert!(drills(&events(&lab, &mx).await, "alert.drill_failed").is_empty());

    // The backup now relays for the whole loopback network (Postfix reloaded: new sessions).
    let relaying = PostfixConfig {
        profile: Profile::OpenRelay,
        ..lab.backup.config().clone()
    };
    lab.backup
        .reconfigure(relaying)
        .await
        .expect("reload the backup as an open relay");

    // The operator's drill (retried while a scheduled one runs, and until the reload is seen).
    let (code, stdout) = common::poll(
        "an operator's drill finding the open relay",
        DEADLINE,
        || async {
            let out = drill(&lab, &mx, &["--reason", "after the backup's change"]).await;
            let (stdout, stderr) = text(&out);
            if stdout.contains("FAIL         backup_relay") {
                return Some((out.status.code(), stdout));
            }
            assert!(
                out.status.code() == Some(0) || stderr.contains("already running"),
                "unexpected: {:?}\n{stdout}\n{stderr}",
                out.status.code()
            );
            None
        },
    )
    .await;
    println!("{stdout}");
    assert_eq!(code, Some(1), "a failed drill exits 1:\n{stdout}");
    assert!(stdout.contains("drill example.test: FAIL"), "{stdout}");
    assert!(stdout.contains("is an open relay"), "{stdout}");
    assert!(stdout.contains("PASS         backup_rcpt"), "{stdout}");
    assert!(stdout.contains("PASS         mail_auth"), "{stdout}");
    assert!(stdout.contains("FAILED"), "{stdout}");

    // The schedule's drill fails too: an alert in the timeline, and at the webhook. (A drill
    // scheduled while Postfix was being reloaded may fail first for another reason — the backup
    // Down for a round — so the alert looked for is the one whose relay step failed.)
    let relay_step = |alert: &serde_json::Value| {
        alert["evidence"]["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["step"] == "backup_relay").cloned())
    };
    let alert = common::poll(
        "alert.drill_failed for the open relay",
        DEADLINE,
        || async {
            drills(&events(&lab, &mx).await, "alert.drill_failed")
                .into_iter()
                .find(|e| relay_step(e).is_some_and(|r| r["outcome"] == "fail"))
                .cloned()
        },
    )
    .await;
    assert_eq!(alert["actor"], "automation");
    assert_eq!(alert["evidence"]["trigger"], "schedule");
    assert_eq!(alert["evidence"]["result"], "fail");
    let relay = relay_step(&alert).expect("the relay step");
    assert!(
        relay["findings"].to_string().contains("open relay"),
        "{relay}"
    );
    common::poll("the alert at the webhook", DEADLINE, || async {
        hooked
            .lock()
            .expect("seen")
            .iter()
            .any(|p| p["event"]["kind"] == "alert.drill_failed" && p["severity"] == "warning")
            .then_some(())
    })
    .await;
    // the operator's failed drill raised no alert of its own
    let timeline = events(&lab, &mx).await;
    assert!(drills(&timeline, "alert.drill_failed")
        .iter()
        .all(|e| e["evidence"]["trigger"] == "schedule"));
    // and no drill wrote to the zone
    assert_eq!(lab.serial().await, serial);
    assert_eq!(mx.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_drill_fails_over_and_back_through_the_state_machine() {
    let lab = lab("drillable = true\n").await;
    let mut mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let (serial, served) = (lab.serial().await, lab.served_mx().await);

    let out = drill(&lab, &mx, &["--live", "--reason", "live drill"]).await;
    let (stdout, stderr) = text(&out);
    println!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nmxguard's log:\n{}",
        mx.log()
    );
    assert!(
        stdout.contains("drill example.test (live): PASS"),
        "{stdout}"
    );
    assert!(stdout.contains("PASS         live_failover"), "{stdout}");
    assert!(stdout.contains("PASS         live_failback"), "{stdout}");
    assert!(stdout.contains("published the backup records"), "{stdout}");
    assert!(stdout.contains("published the primary records"), "{stdout}");

    // two UPDATEs at named, two intents verified, and the zone as it was (TTL restored)
    assert_eq!(lab.serial().await, serial + 2, "{stdout}");
    let changes = lab.wait_verified(&mx, 2, DEADLINE).await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(lab.served_mx().await, served);

    // the timeline: the operator's moves with the drill's reason, then the report
    let timeline = events(&lab, &mx).await;
    let report = &drills(&timeline, "drill")[0]["evidence"];
    assert_eq!(report["live"], true);
    assert_eq!(report["result"], "pass");
    let mut want = PASSING.to_vec();
    want.extend([("live_failover", "pass"), ("live_failback", "pass")]);
    assert_eq!(outcomes(report), pairs(&want));
    let moves: Vec<&Value> = timeline.iter().filter(|e| e["kind"] == "change").collect();
    assert_eq!(moves.len(), 2, "{moves:?}");
    assert!(
        timeline.iter().any(|e| e["reason"] == "drill: live drill"),
        "the moves carry the drill's reason: {timeline:?}"
    );
    assert_eq!(mx.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_in_mode_a_probes_the_backups_own_addresses() {
    // mode a: the MX host's A record moves; the backup is that host at the backup's address
    let lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            mode: LabMode::A,
            mail_auth: true,
            operate_token: true,
            read_token: true,
            ..Layout::default()
        },
    )
    .await;
    let mut mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let (serial, published) = (lab.serial().await, lab.published().await);
    let out = drill(&lab, &mx, &[]).await;
    let (stdout, stderr) = text(&out);
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("mx.example.test. at {BACKUP_IP}:")),
        "the host probed at the backup's address, not at what it resolves to now:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("backup mx.example.test. at {BACKUP_IP}: SPF Pass")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("mx.example.test. 30 IN A {BACKUP_IP}")),
        "{stdout}"
    );
    assert_eq!(lab.serial().await, serial);
    assert_eq!(lab.published().await, published);
    assert_eq!(mx.terminate(), Some(0));
}
