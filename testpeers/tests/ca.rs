//! The test CA's certificates, checked by an independent implementation (openssl), and the
//! missing-binary error.

use std::process::Command;

use mxguard_testpeers::ca::{EXPIRING_SOON_DAYS, WRONG_NAME};
use mxguard_testpeers::{require_binary, Ca, CertKind, Error};

const NAME: &str = "mx1.example.test";

/// `openssl <args>`: (success, stdout + stderr).
fn openssl(args: &[&str]) -> (bool, String) {
    let bin = require_binary("openssl", "openssl").expect("openssl");
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("running openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn verify(ca: &Ca, leaf: &std::path::Path, host: &str) -> (bool, String) {
    let ca_file = ca.cert_path().to_str().expect("utf-8 path");
    let leaf = leaf.to_str().expect("utf-8 path");
    openssl(&["verify", "-CAfile", ca_file, "-verify_hostname", host, leaf])
}

#[test]
fn valid_expired_expiring_and_wrong_name_certificates() {
    let ca = Ca::new().expect("CA");
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));

    let valid = ca
        .leaf(&[NAME, "mx.example.test"], CertKind::Valid)
        .expect("leaf");
    let (ok, out) = verify(&ca, &valid.cert_path, NAME);
    assert!(ok, "valid cert should verify: {out}");
    let (ok, out) = verify(&ca, &valid.cert_path, "mx.example.test");
    assert!(ok, "second name is on the cert too: {out}");
    let days = |d: i64| (d * 86_400).to_string();
    let path = valid.cert_path.to_str().expect("utf-8 path");
    assert!(openssl(&["x509", "-noout", "-in", path, "-checkend", &days(80)]).0);

    let expired = ca.leaf(&[NAME], CertKind::Expired).expect("leaf");
    let (ok, out) = verify(&ca, &expired.cert_path, NAME);
    assert!(!ok && out.contains("expired"), "{out}");

    let soon = ca.leaf(&[NAME], CertKind::ExpiringSoon).expect("leaf");
    let (ok, out) = verify(&ca, &soon.cert_path, NAME);
    assert!(ok, "still valid: {out}");
    let path = soon.cert_path.to_str().expect("utf-8 path");
    let ends_before = |d| !openssl(&["x509", "-noout", "-in", path, "-checkend", &days(d)]).0;
    assert!(
        ends_before(EXPIRING_SOON_DAYS + 1),
        "expires within {EXPIRING_SOON_DAYS} days"
    );
    assert!(!ends_before(EXPIRING_SOON_DAYS - 1), "but not sooner");

    let wrong = ca.leaf(&[NAME], CertKind::WrongName).expect("leaf");
    assert_eq!(wrong.names, [WRONG_NAME]);
    let (ok, out) = verify(&ca, &wrong.cert_path, NAME);
    assert!(!ok && out.contains("mismatch"), "{out}");
    assert!(verify(&ca, &wrong.cert_path, WRONG_NAME).0);

    // The key matches the certificate.
    let key = valid.key_path.to_str().expect("utf-8 path");
    let (_, from_cert) = openssl(&[
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        valid.cert_path.to_str().expect("utf-8"),
    ]);
    let (_, from_key) = openssl(&["pkey", "-pubout", "-in", key]);
    assert_eq!(from_cert, from_key);
    valid.rustls_server_config().expect("rustls takes the pair");
}

#[test]
fn a_missing_binary_names_the_package() {
    let err =
        require_binary("mxguard-no-such-binary", "mxguard-no-such-package").expect_err("missing");
    assert!(matches!(err, Error::MissingBinary { .. }));
    let text = err.to_string();
    assert!(
        text.contains("apt-get install -y mxguard-no-such-package"),
        "{text}"
    );
}
