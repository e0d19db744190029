use proptest::prelude::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use sha2::{Digest, Sha256, Sha512};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

/// A CA and a leaf it signed, both DER.
struct Chain {
    leaf: Vec<u8>,
    ca: Vec<u8>,
}

fn chain() -> Chain {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["backup.example.test".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    Chain {
        leaf: leaf.der().to_vec(),
        ca: ca.der().to_vec(),
    }
}

fn spki(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).expect("parse");
    cert.public_key().raw.to_vec()
}

fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
    Tlsa {
        usage,
        selector,
        matching,
        data,
    }
}

fn found(records: Vec<Tlsa>) -> TlsaFound {
    TlsaFound::Records {
        records,
        authenticated: true,
    }
}

fn host() -> Fqdn {
    Fqdn::parse("backup.example.test").expect("name")
}

#[test]
fn every_selector_and_matching_type_of_dane_ee_matches_the_leaf() {
    let c = chain();
    let presented = Presented::Chain(vec![c.leaf.clone(), c.ca.clone()]);
    let cases = [
        rec(3, 0, 0, c.leaf.clone()),
        rec(3, 0, 1, Sha256::digest(&c.leaf).to_vec()),
        rec(3, 0, 2, Sha512::digest(&c.leaf).to_vec()),
        rec(3, 1, 0, spki(&c.leaf)),
        rec(3, 1, 1, Sha256::digest(spki(&c.leaf)).to_vec()),
        rec(3, 1, 2, Sha512::digest(spki(&c.leaf)).to_vec()),
    ];
    for r in cases {
        let v = judge(&found(vec![r.clone()]), &presented);
        assert!(matches!(v, Verdict::Matches(_)), "{r}: {v}");
    }
}

#[test]
fn dane_ta_matches_the_issuer_sent_in_the_chain_not_the_leaf() {
    let c = chain();
    let ta = rec(2, 1, 1, Sha256::digest(spki(&c.ca)).to_vec());
    let with_ta = Presented::Chain(vec![c.leaf.clone(), c.ca.clone()]);
    assert!(matches!(
        judge(&found(vec![ta.clone()]), &with_ta),
        Verdict::Matches(_)
    ));
    // The TA must be in the chain the server sends (RFC 7672 §3.2.2).
    let leaf_only = Presented::Chain(vec![c.leaf.clone()]);
    assert!(matches!(
        judge(&found(vec![ta]), &leaf_only),
        Verdict::Mismatch(_)
    ));
    // A DANE-TA record naming the leaf is no trust anchor.
    let leaf_as_ta = rec(2, 1, 1, Sha256::digest(spki(&c.leaf)).to_vec());
    assert!(matches!(
        judge(&found(vec![leaf_as_ta]), &with_ta),
        Verdict::Mismatch(_)
    ));
}

#[test]
fn a_wrong_hash_is_a_mismatch_that_names_the_right_one() {
    let c = chain();
    let v = judge(
        &found(vec![rec(3, 1, 1, vec![0xab; 32])]),
        &Presented::Chain(vec![c.leaf.clone()]),
    );
    let Verdict::Mismatch(why) = &v else {
        panic!("{v}")
    };
    let right = hex(&Sha256::digest(spki(&c.leaf)));
    assert!(why.contains(&right), "{why}");
    assert!(v.refused());
}

#[test]
fn one_matching_record_among_several_is_enough() {
    let c = chain();
    let good = rec(3, 1, 1, Sha256::digest(spki(&c.leaf)).to_vec());
    let v = judge(
        &found(vec![rec(3, 1, 1, vec![1; 32]), good]),
        &Presented::Chain(vec![c.leaf]),
    );
    assert!(matches!(v, Verdict::Matches(_)), "{v}");
}

#[test]
fn pkix_usages_and_unknown_parameters_are_unusable_for_smtp() {
    let c = chain();
    let leaf_hash = Sha256::digest(spki(&c.leaf)).to_vec();
    let presented = Presented::Chain(vec![c.leaf.clone()]);
    for r in [
        rec(0, 1, 1, leaf_hash.clone()),
        rec(1, 1, 1, leaf_hash.clone()),
        rec(3, 2, 1, leaf_hash.clone()),
        rec(3, 1, 3, leaf_hash.clone()),
        rec(3, 1, 1, vec![0; 31]),
    ] {
        assert!(r.unusable().is_some(), "{r}");
        let v = judge(&found(vec![r.clone()]), &presented);
        assert!(matches!(v, Verdict::Unusable(_)), "{r}: {v}");
        assert!(!v.refused(), "mail flows over unauthenticated TLS");
    }
}

#[test]
fn tlsa_without_starttls_is_refused_and_no_tlsa_never_is() {
    let r = rec(3, 1, 1, vec![0; 32]);
    assert_eq!(
        judge(&found(vec![r]), &Presented::NoStartTls),
        Verdict::NoStartTls
    );
    assert_eq!(
        judge(&TlsaFound::None, &Presented::NoStartTls),
        Verdict::NoTlsa
    );
    let failed = TlsaFound::Failed {
        why: "SERVFAIL".into(),
    };
    assert!(matches!(
        judge(&failed, &Presented::NoStartTls),
        Verdict::NotChecked(_)
    ));
}

#[test]
fn rdata_parses_three_bytes_and_the_data() {
    let t = Tlsa::from_rdata(&[3, 1, 1, 0xde, 0xad]).expect("parse");
    assert_eq!(t, rec(3, 1, 1, vec![0xde, 0xad]));
    assert_eq!(t.to_string(), "3 1 1 dead");
    assert!(Tlsa::from_rdata(&[3, 1]).is_err());
}

#[test]
fn the_evaluation_flags_a_refused_backup_a_downgrade_and_unvalidated_records() {
    let c = chain();
    let good = rec(3, 1, 1, Sha256::digest(spki(&c.leaf)).to_vec());
    let at = |p: Presented| vec![("127.0.0.21:25".to_string(), p)];
    let primary = HostDane::judge(
        Fqdn::parse("mx1.example.test").expect("name"),
        Side::Primary,
        TlsaFound::Records {
            records: vec![good.clone()],
            authenticated: false,
        },
        at(Presented::Chain(vec![c.leaf.clone()])),
    );
    let bad_backup = HostDane::judge(
        host(),
        Side::Backup,
        found(vec![rec(3, 1, 1, vec![7; 32])]),
        at(Presented::Chain(vec![c.leaf.clone()])),
    );
    let ev = Evaluation::new(vec![primary.clone(), bad_backup]);
    assert!(ev.primary_uses_dane);
    assert_eq!(ev.problems.len(), 1, "{:?}", ev.problems);
    assert!(ev.problems[0].contains("backup backup.example.test"));
    assert!(ev.notes.iter().any(|n| n.contains("not DNSSEC-validated")));

    let bare_backup = HostDane::judge(
        host(),
        Side::Backup,
        TlsaFound::None,
        at(Presented::Chain(vec![c.leaf])),
    );
    let ev = Evaluation::new(vec![primary, bare_backup]);
    assert!(ev.problems.is_empty(), "{:?}", ev.problems);
    assert!(
        ev.notes.iter().any(|n| n.contains("downgrades")),
        "{:?}",
        ev.notes
    );
}

#[test]
fn a_host_is_as_bad_as_its_worst_address() {
    let c = chain();
    let good = rec(3, 1, 1, Sha256::digest(spki(&c.leaf)).to_vec());
    let h = HostDane::judge(
        host(),
        Side::Backup,
        found(vec![good]),
        vec![
            ("a".into(), Presented::Chain(vec![c.leaf])),
            ("b".into(), Presented::NoStartTls),
        ],
    );
    assert_eq!(h.verdict, Verdict::NoStartTls);
    let ev = Evaluation::new(vec![h]);
    assert_eq!(ev.problems.len(), 1);
}

fn any_record() -> impl Strategy<Value = Tlsa> {
    (
        0u8..5,
        0u8..3,
        0u8..4,
        prop::collection::vec(any::<u8>(), 0..70),
    )
        .prop_map(|(u, s, m, d)| rec(u, s, m, d))
}

proptest! {
    /// RDATA round-trips: the three parameters and the rest as data, never a panic.
    #[test]
    fn rdata_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        match Tlsa::from_rdata(&bytes) {
            Ok(t) => {
                prop_assert_eq!(vec![t.usage, t.selector, t.matching], bytes[..3].to_vec());
                prop_assert_eq!(t.data, bytes[3..].to_vec());
            }
            Err(_) => prop_assert!(bytes.len() < 3),
        }
    }

    /// Without TLSA nothing is refused; without STARTTLS any TLSA is refused; a chain that
    /// is garbage never matches; only usable records can ever match.
    #[test]
    fn verdict_rules_hold(records in prop::collection::vec(any_record(), 1..4),
                          junk in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3)) {
        prop_assert_eq!(judge(&TlsaFound::None, &Presented::NoStartTls), Verdict::NoTlsa);
        prop_assert_eq!(judge(&found(records.clone()), &Presented::NoStartTls), Verdict::NoStartTls);
        let v = judge(&found(records.clone()), &Presented::Chain(junk));
        let any_usable = records.iter().any(|r| r.unusable().is_none());
        match v {
            Verdict::Mismatch(_) => prop_assert!(any_usable),
            Verdict::Unusable(_) => prop_assert!(!any_usable),
            Verdict::Matches(_) => {
                // only exact (matching 0, selector 0) data can equal junk bytes
                prop_assert!(records.iter().any(|r| r.unusable().is_none() && r.matching == 0 && r.selector == 0));
            }
            other => prop_assert!(false, "unexpected {other}"),
        }
    }
}

#[test]
fn the_backup_side_is_refused_only_when_every_backup_address_is() {
    let c = chain();
    let good = rec(3, 1, 1, Sha256::digest(spki(&c.leaf)).to_vec());
    let wrong = rec(3, 1, 1, vec![7; 32]);
    let other = Fqdn::parse("backup2.example.test").expect("name");
    let at = |p: Presented| vec![("127.0.0.21:25".to_string(), p)];
    let leaf = || Presented::Chain(vec![c.leaf.clone()]);
    let mismatched = HostDane::judge(host(), Side::Backup, found(vec![wrong.clone()]), at(leaf()));
    let no_starttls = HostDane::judge(
        other.clone(),
        Side::Backup,
        found(vec![good.clone()]),
        at(Presented::NoStartTls),
    );

    // every backup host refused: the reason names DANE, each host and its verdict
    let why = Evaluation::new(vec![mismatched.clone(), no_starttls.clone()])
        .backup_refused()
        .expect("refused");
    assert!(why.starts_with("DANE: "), "{why}");
    assert!(why.contains("backup.example.test (MISMATCH"), "{why}");
    assert!(
        why.contains("backup2.example.test (TLSA published but STARTTLS not offered)"),
        "{why}"
    );

    // one backup host a DANE sender can use keeps the side deliverable
    for fine in [
        HostDane::judge(
            other.clone(),
            Side::Backup,
            found(vec![good.clone()]),
            at(leaf()),
        ),
        HostDane::judge(other.clone(), Side::Backup, TlsaFound::None, Vec::new()),
        HostDane::judge(
            other.clone(),
            Side::Backup,
            TlsaFound::Failed {
                why: "SERVFAIL".into(),
            },
            Vec::new(),
        ),
        HostDane::judge(
            other.clone(),
            Side::Backup,
            found(vec![good.clone()]),
            at(Presented::NotSeen("connection refused".into())),
        ),
    ] {
        let ev = Evaluation::new(vec![mismatched.clone(), fine.clone()]);
        assert_eq!(ev.backup_refused(), None, "{:?}", fine.verdict);
    }

    // one address that matches keeps a host deliverable, though its worst address is a problem
    let split = HostDane::judge(
        host(),
        Side::Backup,
        found(vec![good]),
        vec![("a".into(), Presented::NoStartTls), ("b".into(), leaf())],
    );
    let ev = Evaluation::new(vec![split]);
    assert_eq!(ev.problems.len(), 1);
    assert_eq!(ev.backup_refused(), None);

    // the primaries do not count, and no backup is no refusal
    let primary = HostDane::judge(host(), Side::Primary, found(vec![wrong]), at(leaf()));
    assert_eq!(Evaluation::new(vec![primary]).backup_refused(), None);
}
