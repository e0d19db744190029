use proptest::prelude::*;

use super::*;

fn fq(s: &str) -> Fqdn {
    Fqdn::parse(s).expect("test name")
}

fn txt(records: &[&str]) -> Vec<String> {
    records.iter().map(|s| s.to_string()).collect()
}

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.mail.example.com\r\nmax_age: 86400\r\n";

#[test]
fn sts_record_parses_and_ignores_other_txt() {
    let r = parse_sts_record(&txt(&[
        "google-site-verification=x",
        "v=STSv1; id=20240101T1;",
    ]));
    assert_eq!(
        r,
        Ok(Some(StsRecord {
            id: "20240101T1".into()
        }))
    );
    assert_eq!(
        parse_sts_record(&txt(&["v=STSv1;id=abc"])),
        Ok(Some(StsRecord { id: "abc".into() }))
    );
    assert_eq!(parse_sts_record(&txt(&["v=spf1 -all"])), Ok(None));
    assert_eq!(parse_sts_record(&[]), Ok(None));
}

#[test]
fn sts_record_errors() {
    // Two records: senders assume no policy.
    assert!(parse_sts_record(&txt(&["v=STSv1; id=a", "v=STSv1; id=b"])).is_err());
    assert!(parse_sts_record(&txt(&["v=STSv1;"])).is_err());
    assert!(parse_sts_record(&txt(&["v=STSv1; id=has-dash"])).is_err());
    assert!(parse_sts_record(&txt(&["v=STSv1; id=123456789012345678901234567890123"])).is_err());
    assert!(parse_sts_record(&txt(&["v=STSv1; id"])).is_err());
}

#[test]
fn policy_parses_crlf_and_lf_first_single_key_wins() {
    let p = parse_policy(ENFORCE).expect("policy");
    assert_eq!(p.mode, StsMode::Enforce);
    assert_eq!(p.max_age, 86400);
    assert_eq!(
        p.mx.iter().map(MxPattern::as_str).collect::<Vec<_>>(),
        ["mx1.example.com", "*.mail.example.com"]
    );
    let lf = "version: STSv1\nmode: testing\nmode: enforce\nmx: MX.Example.com.\nmax_age: 0\nextension: whatever\n";
    let p = parse_policy(lf).expect("policy");
    assert_eq!(p.mode, StsMode::Testing);
    assert_eq!(p.max_age, 0);
    assert_eq!(p.mx[0].as_str(), "mx.example.com");
    let none = parse_policy("version: STSv1\nmode: none\nmax_age: 10\n").expect("policy");
    assert!(none.mx.is_empty());
}

#[test]
fn policy_errors_name_what_is_wrong() {
    let cases = [
        ("mode: enforce\nmx: a.b\nmax_age: 1\n", "version"),
        (
            "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
            "STSv2",
        ),
        (
            "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n",
            "strict",
        ),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "mx"),
        ("version: STSv1\nmode: enforce\nmx: a.b\n", "max_age"),
        (
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n",
            "31557601",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
            "-1",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n",
            "a..b",
        ),
        ("version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", "*"),
        ("<html>oops</html>\n", "key: value"),
    ];
    for (text, needle) in cases {
        let e = parse_policy(text).expect_err(text);
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn wildcard_matches_exactly_one_leftmost_label() {
    let p = MxPattern::parse("*.example.com").expect("pattern");
    assert!(p.matches(&fq("mx.example.com")));
    assert!(p.matches(&fq("MX.EXAMPLE.COM.")));
    assert!(!p.matches(&fq("example.com")));
    assert!(!p.matches(&fq("a.b.example.com")));
    assert!(!p.matches(&fq("mx.example.net")));
    assert!(!p.matches(&fq("mxexample.com")));
    let exact = MxPattern::parse("mx.example.com").expect("pattern");
    assert!(exact.matches(&fq("mx.example.com.")));
    assert!(!exact.matches(&fq("a.mx.example.com")));
}

#[test]
fn tlsrpt_record() {
    let r = parse_tlsrpt(&txt(&[
        "v=TLSRPTv1; rua=mailto:tls@example.com,https://r.example.com/tls",
    ]));
    assert_eq!(
        r,
        Ok(Some(TlsRpt {
            rua: vec![
                "mailto:tls@example.com".into(),
                "https://r.example.com/tls".into()
            ]
        }))
    );
    assert_eq!(parse_tlsrpt(&txt(&["v=spf1"])), Ok(None));
    assert!(parse_tlsrpt(&txt(&["v=TLSRPTv1;"])).is_err());
    assert!(parse_tlsrpt(&txt(&["v=TLSRPTv1; rua=ftp://x"])).is_err());
    assert!(parse_tlsrpt(&txt(&[
        "v=TLSRPTv1; rua=mailto:a@b",
        "v=TLSRPTv1; rua=mailto:c@d"
    ]))
    .is_err());
}

fn mx(primary: &[&str], backup: &[&str]) -> Hosts {
    Hosts::Mx {
        primary: primary.iter().map(|s| fq(s)).collect(),
        backup: backup.iter().map(|s| fq(s)).collect(),
    }
}

#[test]
fn enforce_policy_refuses_an_unlisted_backup_side() {
    let p = parse_policy(ENFORCE).expect("policy");
    let e = evaluate(&p, &mx(&["mx1.example.com"], &["mx.backup.example.net"]));
    assert_eq!(e.primary[0].pattern.as_deref(), Some("mx1.example.com"));
    assert!(e.backup[0].refused);
    let why = e.backup_refused.expect("refused");
    assert!(why.contains("mx.backup.example.net"), "{why}");
    assert!(why.contains("mx1.example.com, *.mail.example.com"), "{why}");
    assert!(!why.contains("nor to the primary"), "{why}");
}

#[test]
fn a_listed_backup_or_one_listed_backup_host_passes() {
    let p = parse_policy(ENFORCE).expect("policy");
    let e = evaluate(&p, &mx(&["mx1.example.com"], &["b.mail.example.com"]));
    assert_eq!(e.backup_refused, None);
    assert_eq!(e.backup[0].pattern.as_deref(), Some("*.mail.example.com"));
    assert!(e.notes.is_empty());
    // Two backups, one listed: senders skip the other; noted, not refused.
    let e = evaluate(
        &p,
        &mx(
            &["mx1.example.com"],
            &["b.mail.example.com", "other.example.net"],
        ),
    );
    assert_eq!(e.backup_refused, None);
    assert!(e.notes[0].contains("other.example.net"), "{:?}", e.notes);
}

#[test]
fn testing_and_none_modes_refuse_nothing() {
    for mode in ["testing", "none"] {
        let text = format!("version: STSv1\nmode: {mode}\nmx: mx1.example.com\nmax_age: 60\n");
        let p = parse_policy(&text).expect("policy");
        let e = evaluate(&p, &mx(&["mx1.example.com"], &["mx.backup.example.net"]));
        assert_eq!(e.backup_refused, None, "{mode}");
        assert!(!e.backup[0].refused);
    }
}

#[test]
fn both_sides_unlisted_says_so() {
    let p = parse_policy(ENFORCE).expect("policy");
    let e = evaluate(&p, &mx(&["mx.other.org"], &["mx.backup.example.net"]));
    assert!(e
        .backup_refused
        .expect("refused")
        .contains("nor to the primary"));
}

#[test]
fn mode_a_never_refuses_the_backup_by_name_and_notes_unverified_certificates() {
    let p = parse_policy(ENFORCE).expect("policy");
    let listed = Hosts::A {
        host: fq("mx1.example.com"),
        certificate_verified: true,
    };
    let e = evaluate(&p, &listed);
    assert_eq!(e.backup_refused, None);
    assert!(e.notes.is_empty());
    let unlisted = Hosts::A {
        host: fq("mail.other.org"),
        certificate_verified: false,
    };
    let e = evaluate(&p, &unlisted);
    assert_eq!(e.backup_refused, None);
    assert_eq!(e.notes.len(), 2, "{:?}", e.notes);
    assert!(e.notes[0].contains("either side"));
    assert!(e.notes[1].contains("not verified"));
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 2..5).prop_map(|l| l.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// A name always matches the pattern made from it, in any case, with or without the dot.
    #[test]
    fn a_name_matches_its_own_pattern(n in name(), upper in any::<bool>(), dot in any::<bool>()) {
        let p = MxPattern::parse(&n).expect("pattern");
        let host = if upper { n.to_ascii_uppercase() } else { n.clone() };
        let host = if dot { format!("{host}.") } else { host };
        prop_assert!(p.matches(&fq(&host)));
    }

    /// `*.S` matches `L.S` for any label L, and never S itself nor two labels before S.
    #[test]
    fn wildcard_is_one_label(suffix in name(), a in label(), b in label()) {
        let p = MxPattern::parse(&format!("*.{suffix}")).expect("pattern");
        let one = fq(&format!("{a}.{suffix}"));
        let two = fq(&format!("{a}.{b}.{suffix}"));
        prop_assert!(p.matches(&one));
        prop_assert!(!p.matches(&fq(&suffix)));
        prop_assert!(!p.matches(&two));
    }

    /// An exact pattern matches only its own name.
    #[test]
    fn exact_pattern_matches_only_itself(n in name(), other in name()) {
        let p = MxPattern::parse(&n).expect("pattern");
        prop_assert_eq!(p.matches(&fq(&other)), n == other);
    }

    /// The policy parser never panics, and whatever it accepts obeys the RFC's bounds.
    #[test]
    fn policy_parser_total(text in "(version|mode|mx|max_age|x)?(: ?)?[ -~]{0,20}(\r?\n[ -~]{0,30}){0,6}") {
        if let Ok(p) = parse_policy(&text) {
            prop_assert!(p.max_age <= MAX_AGE_LIMIT);
            prop_assert!(p.mode == StsMode::None || !p.mx.is_empty());
        }
    }
}

/// One backup host publishing TLSA, seen at one address as `presented`.
fn dane_backup(presented: crate::dane::Presented) -> crate::dane::Evaluation {
    use crate::dane::{HostDane, Tlsa, TlsaFound};
    let tlsa = TlsaFound::Records {
        records: vec![Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![7; 32],
        }],
        authenticated: false,
    };
    crate::dane::Evaluation::new(vec![HostDane::judge(
        fq("backup.example.com"),
        crate::model::Side::Backup,
        tlsa,
        vec![("127.0.0.21:25".into(), presented)],
    )])
}

fn watch_view(
    policy: Option<StsPolicy>,
    dane: Option<crate::dane::Evaluation>,
) -> watch::MtaStsView {
    let hosts = Hosts::Mx {
        primary: vec![fq("mx1.example.com")],
        backup: vec![fq("backup.example.com")],
    };
    watch::MtaStsView {
        setting: crate::machine::MtaStsAction::Block,
        checked_at: chrono::Utc::now(),
        evaluation: policy.as_ref().map(|p| evaluate(p, &hosts)),
        report: fetch::PolicyReport {
            record: policy.as_ref().map(|_| StsRecord { id: "1".into() }),
            policy,
            cached: false,
            error: None,
            tlsrpt: None,
            tlsrpt_error: None,
        },
        dane,
    }
}

#[test]
fn the_view_refuses_the_backup_for_mta_sts_dane_or_both_in_one_reason() {
    use crate::dane::Presented;
    let unlisted = parse_policy(ENFORCE).expect("policy");
    let refused_dane = || Some(dane_backup(Presented::NoStartTls));

    assert_eq!(watch_view(None, None).refused(), None);
    let sts = watch_view(Some(unlisted.clone()), None)
        .refused()
        .expect("MTA-STS refuses");
    assert!(sts.contains("MTA-STS policy"), "{sts}");

    let dane = watch_view(None, refused_dane())
        .refused()
        .expect("DANE refuses");
    assert!(
        dane.starts_with(
            "DANE: the backup MX backup.example.com (TLSA published but STARTTLS not offered)"
        ),
        "{dane}"
    );

    let both = watch_view(Some(unlisted), refused_dane())
        .refused()
        .expect("both refuse");
    assert_eq!(both, format!("{sts}; {dane}"));

    // not checked is never a refusal, and is looked at again within five minutes
    let unseen = watch_view(
        None,
        Some(dane_backup(Presented::NotSeen("refused".into()))),
    );
    assert_eq!(unseen.refused(), None);
    assert_eq!(unseen.refresh_in(), std::time::Duration::from_secs(300));
    assert_eq!(
        watch_view(None, refused_dane()).refresh_in(),
        std::time::Duration::from_secs(3600)
    );
}
