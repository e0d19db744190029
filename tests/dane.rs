//! DANE (RFC 7672) end to end: the real binary against a lab whose zone (BIND, served through
//! two Unbound) publishes TLSA at `_25._tcp.backup.example.test` for the backup Postfix's
//! certificate (issued by the lab CA before the zone is served).
//!
//! - a `3 1 1` record with the SHA-256 of the backup's SPKI: `mxguard check` exits 0 showing
//!   the match (and that the unsigned lab zone is not DNSSEC-validated), `mxguard drill`'s
//!   `dane` step passes;
//! - TLSA published for a backup that offers no STARTTLS: `mxguard check` exits 1 naming it;
//! - the same record with a wrong hash: `mxguard check` exits 1 naming the mismatch (and the
//!   right hash), `mxguard drill` fails its `dane` step and exits 1.
//!
//! `cargo test --test dane -- --nocapture` prints the check and drill output.

#[path = "common/check_lab.rs"]
mod check_lab;
mod common;

use std::time::Duration;

use common::lab::{mxguard_bin, Lab, LabOptions, Layout, OPERATE_TOKEN};
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
