//! DANE (RFC 7672) end to end: the real binary against a lab whose zone (BIND, served through
//! two Unbound) publishes TLSA at `_25._tcp.backup.example.test` for the backup Postfix's
//! certificate (issued by the lab CA before the zone is served).
//!
//! - a `3 1 1` record with the SHA-256 of the backup's SPKI: `mxguard check` exits 0 showing
//!   the match (and that the unsigned lab zone is not DNSSEC-validated), `mxguard drill`'s
//!   `dane` step passes;
//! - TLSA published for a backup that offers no STARTTLS: `mxguard check` exits 1 naming it;
//! - the same record with a wrong hash: `mxguard check` exits 1 naming the mismatch (and the
//!   right hash), `mxguard drill` fails its `dane` step and exits 1;
//! - `serve` (issue 19 item 1, DANE half): with the wrong hash and `mta_sts = "block"`, the
//!   finding is in the status and alerted before any outage, and stopping the primary MTA does
//!   not move the MX (named still serves the primary) and alerts the refused failover; with
//!   `warn` the failover is made with the critical warning; with the matching record the
//!   failover is made with no MTA-STS/DANE event at all;
//! - mode `a` (one host name, `_25._tcp.mx` with a wrong hash): the backup is probed at its own
//!   address, not at what the name resolves to, and the failover under `block` is refused;
//! - `mxguard config check --mta-sts` prints the backup's DANE verdict and, for the wrong hash,
//!   the warning that automated failovers to it will be refused.
//!
//! `cargo test --test dane -- --nocapture` prints the check and drill output.

#[path = "common/check_lab.rs"]
mod check_lab;
mod common;

use std::time::{Duration, Instant};

use common::lab::{
    mxguard_bin, Lab, LabMode, LabOptions, Layout, Mxguard, BACKUP_IP, OPERATE_TOKEN, PRIMARY_IP,
};
use mxguard_testpeers::Profile;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

/// The backup certificate's `3 1 1` data: SHA-256 of its SubjectPublicKeyInfo, in hex.
fn spki_sha256(cert_pem: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("the cert's PEM");
    mxguard::dane::spki_sha256(&pem.contents).expect("the cert's SPKI")
}

fn matching_tlsa(cert_pem: &str) -> String {
    format!(
        "_25._tcp.backup 300 IN TLSA 3 1 1 {}\n",
        spki_sha256(cert_pem)
    )
}

fn wrong_tlsa(_: &str) -> String {
    format!("_25._tcp.backup 300 IN TLSA 3 1 1 {}\n", "ab".repeat(32))
}

/// The backup's host in the check report's `dane.hosts`.
fn backup_dane(report: &Value) -> &Value {
    report["dane"]["hosts"]
        .as_array()
        .expect("dane.hosts")
        .iter()
        .find(|h| h["host"] == "backup.example.test." && h["role"] == "backup")
        .unwrap_or_else(|| panic!("no backup in dane.hosts: {:#}", report["dane"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn check_shows_a_matching_backup_tlsa_and_exits_0() {
    let lab = check_lab::CheckLab::start_with_tlsa(
        check_lab::SPF_WITH_BACKUP,
        Profile::Mx,
        matching_tlsa,
        true,
    )
    .await;
    let out = check_lab::run(&lab.args(&[])).await;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let (code, report) = lab.check_json().await;
    assert_eq!(code, 0, "{report:#}");
    let b = backup_dane(&report);
    assert_eq!(b["verdict"]["result"], "matches", "{b:#}");
    assert_eq!(b["tlsa"]["status"], "records", "{b:#}");
    assert_eq!(
        b["tlsa"]["authenticated"], false,
        "the lab zone is not signed: {b:#}"
    );
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("not DNSSEC-validated"), "{warnings}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DANE (TLSA at _25._tcp.HOST):"), "{text}");
    assert!(text.contains("matches the certificate"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_a_backup_tlsa_mismatch_and_exits_1() {
    let lab = check_lab::CheckLab::start_with_tlsa(
        check_lab::SPF_WITH_BACKUP,
        Profile::Mx,
        wrong_tlsa,
        true,
    )
    .await;
    let out = check_lab::run(&lab.args(&[])).await;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let (code, report) = lab.check_json().await;
    assert_eq!(code, 1, "{report:#}");
    let b = backup_dane(&report);
    assert_eq!(b["verdict"]["result"], "mismatch", "{b:#}");
    let problems = check_lab::problems(&report);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("backup backup.example.test")
                && p.contains("DANE senders would defer")),
        "{problems:?}"
    );
    // the primary publishes no TLSA: nothing said about it beyond its verdict
    assert!(
        problems.iter().all(|p| !p.contains("mx1.example.test")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_a_backup_with_tlsa_but_no_starttls_and_exits_1() {
    let lab = check_lab::CheckLab::start_with_tlsa(
        check_lab::SPF_WITH_BACKUP,
        Profile::Mx,
        matching_tlsa,
        false,
    )
    .await;
    let (code, report) = lab.check_json().await;
    assert_eq!(code, 1, "{report:#}");
    let b = backup_dane(&report);
    assert_eq!(b["verdict"]["result"], "no_start_tls", "{b:#}");
    let problems = check_lab::problems(&report);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("DANE senders would defer") && p.contains("STARTTLS not offered")),
        "{problems:?}"
    );
}

async fn drill_lab(zone_extra: fn(&str) -> String) -> Lab {
    Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            mail_auth: true,
            operate_token: true,
            backup_zone_extra: Some(zone_extra),
            ..Layout::default()
        },
    )
    .await
}

/// `mxguard drill example.test --json` through the lab's `serve`: (exit code, report, text).
async fn drill(lab: &Lab, listen: std::net::SocketAddr) -> (Option<i32>, String) {
    let token = lab.dir.path().join("operator.token");
    std::fs::write(&token, format!("{OPERATE_TOKEN}\n")).expect("token file");
    let out = tokio::process::Command::new(mxguard_bin())
        .args(["drill", "example.test", "--api"])
        .arg(format!("http://{listen}"))
        .arg("--token-file")
        .arg(&token)
        .env_remove("MXGUARD_TOKEN")
        .env_remove("MXGUARD_API")
        .env_remove("MXGUARD_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run mxguard drill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_passes_its_dane_step_when_the_backup_tlsa_matches() {
    let lab = drill_lab(matching_tlsa).await;
    let mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let (code, text) = drill(&lab, mx.listen).await;
    assert_eq!(code, Some(0), "{text}\nmxguard's log:\n{}", mx.log());
    assert!(text.contains("PASS         dane"), "{text}");
    assert!(text.contains("matches the certificate"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_fails_its_dane_step_when_the_backup_tlsa_does_not_match() {
    let lab = drill_lab(wrong_tlsa).await;
    let mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let (code, text) = drill(&lab, mx.listen).await;
    assert_eq!(code, Some(1), "{text}\nmxguard's log:\n{}", mx.log());
    assert!(text.contains("FAIL         dane"), "{text}");
    assert!(text.contains("MISMATCH"), "{text}");
    // every other step still passed: the failure is DANE's alone
    for step in [
        "backup_rcpt",
        "backup_relay",
        "mail_auth",
        "mta_sts",
        "provider_write",
        "plan",
    ] {
        assert!(
            text.contains(&format!("PASS         {step:<14}")),
            "{step} not passed:\n{text}"
        );
    }
}

const PRIMARY_MX: &str = "10 mx1.example.test.";
const BACKUP_MX: &str = "10 backup.example.test.";

/// A lab whose backup publishes the TLSA `zone_extra` makes, and whose domain has
/// `mta_sts = setting` and no MTA-STS policy: DANE alone decides.
async fn serve_lab(zone_extra: fn(&str) -> String, setting: &str) -> Lab {
    serve_lab_in(LabMode::Mx, zone_extra, setting).await
}

async fn serve_lab_in(mode: LabMode, zone_extra: fn(&str) -> String, setting: &str) -> Lab {
    let lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            mode,
            read_token: true,
            backup_zone_extra: Some(zone_extra),
            ..Layout::default()
        },
    )
    .await;
    // The lab writes `mta_sts = "off"` for a domain without a policy of its own to serve.
    let text = std::fs::read_to_string(&lab.config).expect("lab config");
    assert!(text.contains("mta_sts = \"off\""), "{text}");
    let text = text.replacen("mta_sts = \"off\"", &format!("mta_sts = \"{setting}\""), 1);
    std::fs::write(&lab.config, text).expect("lab config");
    lab
}

/// Until the domain's status shows a DANE look; returns the status's `mta_sts`.
async fn wait_for_dane(lab: &Lab, mx: &Mxguard) -> Value {
    let start = Instant::now();
    loop {
        if let Some((200, body)) = lab.api_get(mx, "/v1/domains/example.test").await {
            if !body["mta_sts"]["dane"].is_null() {
                return body["mta_sts"].clone();
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no DANE look in the status after {DEADLINE:?}\nmxguard's log:\n{}",
            mx.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Until the timeline has an event of `kind`; returns its message.
async fn wait_for_event(lab: &Lab, mx: &Mxguard, kind: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(e) = lab.events().await.into_iter().find(|e| e.kind == kind) {
            return e.message;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no {kind} event after {DEADLINE:?}; timeline: {:?}\nmxguard's log:\n{}",
            kinds(lab).await,
            mx.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn kinds(lab: &Lab) -> Vec<String> {
    lab.events()
        .await
        .iter()
        .map(|e| e.kind.as_str().to_string())
        .collect()
}

/// The backup's host in the status's `mta_sts.dane.hosts`.
fn status_backup(mta_sts: &Value) -> &Value {
    status_host(mta_sts, "backup.example.test.")
}

fn status_host<'a>(mta_sts: &'a Value, host: &str) -> &'a Value {
    mta_sts["dane"]["hosts"]
        .as_array()
        .expect("mta_sts.dane.hosts")
        .iter()
        .find(|h| h["host"] == host && h["role"] == "backup")
        .unwrap_or_else(|| panic!("no backup {host} in mta_sts.dane.hosts: {mta_sts:#}"))
}

/// Mode `a`: the TLSA of the one host name, with a hash no certificate has.
fn wrong_tlsa_at_the_a_host(_: &str) -> String {
    format!("_25._tcp.mx 300 IN TLSA 3 1 1 {}\n", "ab".repeat(32))
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_block_refuses_the_failover_to_a_backup_whose_tlsa_does_not_match() {
    let mut lab = serve_lab(wrong_tlsa, "block").await;
    let started = Instant::now();
    let mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;

    // the finding, before any outage: in the status and alerted
    let status = wait_for_dane(&lab, &mx).await;
    println!(
        "DANE look in the status {:?} after serve started",
        started.elapsed()
    );
    assert_eq!(status["setting"], "block");
    assert!(status["policy"].is_null(), "no MTA-STS policy: {status:#}");
    let b = status_backup(&status);
    assert_eq!(b["verdict"]["result"], "mismatch", "{b:#}");
    assert_eq!(b["addresses"][0]["verdict"]["result"], "mismatch", "{b:#}");
    let alert = wait_for_event(&lab, &mx, "alert.mta_sts").await;
    assert!(
        alert.starts_with("DANE: the backup MX backup.example.test (MISMATCH")
            && alert.contains("refused (mta_sts = \"block\")"),
        "{alert}"
    );

    // the outage: the primary goes Down, the backup is Up, and the failover is refused
    let stopped = Instant::now();
    lab.primary.stop().await.expect("stop primary MTA");
    let refused = wait_for_event(&lab, &mx, "alert.mta_sts_refused").await;
    println!(
        "failover refused {:?} after the primary MTA stopped",
        stopped.elapsed()
    );
    assert!(
        refused.contains("failover refused")
            && refused.contains("DANE")
            && refused.contains("backup.example.test"),
        "{refused}"
    );
    let (_, body) = lab
        .api_get(&mx, "/v1/domains/example.test")
        .await
        .expect("status");
    assert_eq!(body["state"]["mta_sts_blocked"], true, "{body:#}");
    assert_eq!(body["state"]["phase"], "primary", "{body:#}");
    assert_eq!(lab.served_mx().await, vec![format!("{PRIMARY_MX} 300")]);
    assert!(lab.changes().await.is_empty(), "no change intent");
    let events = lab.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "health" && e.message.starts_with("primary Up → Down")),
        "the refusal follows the primary's Down verdict: {:?}",
        kinds(&lab).await
    );
    assert!(
        !events.iter().any(|e| e.kind == "alert.mta_sts_failover"),
        "{:?}",
        kinds(&lab).await
    );
    // and `mxguard status` says it
    let out = lab.cli(&["status", "example.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  DANE: the backup MX backup.example.test (MISMATCH")
            && text.contains("(a failover was refused for it)"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_warn_fails_over_to_a_backup_whose_tlsa_does_not_match_with_a_critical_warning() {
    let mut lab = serve_lab(wrong_tlsa, "warn").await;
    let mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let alert = wait_for_event(&lab, &mx, "alert.mta_sts").await;
    assert!(
        alert.contains("DANE") && alert.contains("(mta_sts = \"warn\")"),
        "{alert}"
    );

    lab.primary.stop().await.expect("stop primary MTA");
    lab.wait_for_mx(&mx, BACKUP_MX, DEADLINE).await;
    let warning = wait_for_event(&lab, &mx, "alert.mta_sts_failover").await;
    assert!(
        warning.contains("compliant senders refuse")
            && warning.contains("DANE: the backup MX backup.example.test (MISMATCH"),
        "{warning}"
    );
    assert!(!kinds(&lab)
        .await
        .contains(&"alert.mta_sts_refused".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_fails_over_to_a_backup_whose_tlsa_matches_without_any_event() {
    let mut lab = serve_lab(matching_tlsa, "block").await;
    let mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    // the backup was looked at and passes: only then is the outage meaningful
    let status = wait_for_dane(&lab, &mx).await;
    let b = status_backup(&status);
    assert_eq!(b["verdict"]["result"], "matches", "{b:#}");

    lab.primary.stop().await.expect("stop primary MTA");
    lab.wait_for_mx(&mx, BACKUP_MX, DEADLINE).await;
    let k = kinds(&lab).await;
    assert!(!k.iter().any(|k| k.contains("mta_sts")), "{k:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_prints_the_backup_dane_verdict_and_warns_of_a_mismatch() {
    let (wrong, matching) = tokio::join!(
        serve_lab(wrong_tlsa, "block"),
        serve_lab(matching_tlsa, "warn")
    );
    let check = |lab: &Lab| {
        let config = lab.config.display().to_string();
        let out = lab.cli(&["config", "check", &config, "--mta-sts"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        println!("{text}");
        assert_eq!(
            out.status.code(),
            Some(0),
            "findings are not errors: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };

    let text = check(&wrong);
    assert!(
        text.contains("example.test: DANE backup backup.example.test: MISMATCH"),
        "{text}"
    );
    assert!(
        text.contains("example.test: warning: DANE: the backup MX backup.example.test (MISMATCH")
            && text.contains("automated failovers to it will be refused"),
        "{text}"
    );

    let text = check(&matching);
    assert!(
        text.contains("example.test: DANE backup backup.example.test: TLSA 3 1 1")
            && text.contains("matches the certificate"),
        "{text}"
    );
    assert!(!text.contains("warning:"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_in_mode_a_judges_the_backup_at_its_own_address_and_block_refuses_it() {
    let mut lab = serve_lab_in(LabMode::A, wrong_tlsa_at_the_a_host, "block").await;
    let mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let primary_only = |published: Vec<String>| {
        !published.is_empty()
            && published
                .iter()
                .all(|r| r.starts_with(&format!("{PRIMARY_IP} ")))
    };
    assert!(
        primary_only(lab.published().await),
        "{:?}",
        lab.published().await
    );

    // the name resolves to the primary now; the backup is probed at its own address
    let status = wait_for_dane(&lab, &mx).await;
    let b = status_host(&status, "mx.example.test.");
    let addresses = b["addresses"].as_array().expect("addresses");
    assert!(!addresses.is_empty(), "{b:#}");
    for a in addresses {
        assert!(
            a["address"]
                .as_str()
                .is_some_and(|x| x.starts_with(&format!("{BACKUP_IP}:"))),
            "{b:#}"
        );
        assert_eq!(a["verdict"]["result"], "mismatch", "{b:#}");
    }
    wait_for_event(&lab, &mx, "alert.mta_sts").await;

    lab.primary.stop().await.expect("stop primary MTA");
    let refused = wait_for_event(&lab, &mx, "alert.mta_sts_refused").await;
    assert!(
        refused.contains("DANE: the backup MX mx.example.test (MISMATCH"),
        "{refused}"
    );
    assert!(
        primary_only(lab.published().await),
        "still the primary: {:?}",
        lab.published().await
    );
    assert!(lab.changes().await.is_empty(), "no change intent");
}
