//! Every probe fault against a real peer, with the exact verdict and reason: the SMTP probe
//! against fault listeners and Postfix, the DNS probe against named, Unbound and a fixed-rcode
//! server, and target verdicts over three real resolvers with a quorum of two.

#[path = "common/probe_lab.rs"]
mod probe_lab;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mxguard::config::StartTls;
use mxguard::health::target_verdict;
use mxguard::model::{RecordType, Side};
use mxguard::probe::dns::{DnsClient, DnsStatus};
use mxguard::probe::smtp::{self, FailureKind, Phase, RcptCheck};
use mxguard::probe::target::{Prober, TargetSpec};
use mxguard_testpeers::dns::RcodeServer;
use mxguard_testpeers::hickory_proto::op::ResponseCode;
use mxguard_testpeers::{Ca, CertKind, Fault, Named, Unbound, UnboundOptions};
use probe_lab::*;

// ---------------------------------------------------------------- SMTP

#[tokio::test]
async fn silent_server_times_out_in_banner_within_the_phase_timeout() {
    let ca = Ca::new().expect("CA");
    let l = fault(Fault::Silent);
    let t = Duration::from_secs(1);
    let start = Instant::now();
    let r = probe_at(l.addr(), &plain_policy(&ca, StartTls::Require, t)).await;
    let took = start.elapsed();
    assert_failure(
        &r,
        Phase::Banner,
        FailureKind::Timeout,
        "no complete reply within 1s",
    );
    assert_eq!(phase_names(&r), ["connect"], "TCP connected, then nothing");
    assert!(
        took >= t && took < t + Duration::from_secs(1),
        "took {took:?}"
    );
}

#[tokio::test]
async fn trickling_banner_cannot_hold_the_probe_past_its_phase_timeout() {
    let ca = Ca::new().expect("CA");
    let l = fault(Fault::Trickle(Duration::from_secs(1)));
    let t = Duration::from_millis(1500);
    let start = Instant::now();
    let r = probe_at(l.addr(), &plain_policy(&ca, StartTls::Require, t)).await;
    let took = start.elapsed();
    assert_failure(&r, Phase::Banner, FailureKind::Timeout, "within 1.5s");
    assert!(
        took >= t && took < t + Duration::from_secs(1),
        "took {took:?}"
    );
    assert_eq!(l.connections(), 1);
}

#[tokio::test]
async fn banner_421_is_a_temporary_rejection() {
    let ca = Ca::new().expect("CA");
    let l = fault(Fault::Banner(421));
    let r = probe_at(l.addr(), &plain_policy(&ca, StartTls::Require, T)).await;
    let f = assert_failure(&r, Phase::Banner, FailureKind::TempReject, "421 ");
    assert!(f.detail.contains("Service not available"), "{f:?}");
    assert!(f
        .to_string()
        .starts_with("temporary rejection (4xx) in banner: 421"));
}

#[tokio::test]
async fn banner_554_is_down_for_mail_although_tcp_connects() {
    let ca = Ca::new().expect("CA");
    let l = fault(Fault::Banner(554));
    let r = probe_at(l.addr(), &plain_policy(&ca, StartTls::Require, T)).await;
    let f = assert_failure(&r, Phase::Banner, FailureKind::PermReject, "554 ");
    assert!(f.detail.contains("No SMTP service here"), "{f:?}");
    assert_eq!(
        phase_names(&r),
        ["connect", "banner"],
        "TCP connected, then 554"
    );
    assert_eq!(r.phases[1].code, Some(554));
    // A TCP-connect check would call this host healthy; the verdict must not.
    let round = one_address_round(&r);
    let v = target_verdict(&round, 1);
    assert!(!v.up, "{v:?}");
    assert_eq!(
        v.reason.to_string(),
        format!(
            "127.0.0.1: permanent rejection (5xx) in banner: {}",
            f.detail
        )
    );
}

#[tokio::test]
async fn no_starttls_fails_under_require_warns_under_opportunistic_passes_under_off() {
    let ca = Ca::new().expect("CA");
    let l = fault(Fault::NoStartTls);
    let r = probe_at(l.addr(), &plain_policy(&ca, StartTls::Require, T)).await;
    assert_failure(
        &r,
        Phase::Ehlo,
        FailureKind::NoStarttls,
        "does not list STARTTLS",
    );
    assert_eq!(r.starttls_offered, Some(false));

    let r = probe_at(l.addr(), &plain_policy(&ca, StartTls::Opportunistic, T)).await;
    assert_pass(&r);
    assert_eq!(r.warnings, ["STARTTLS not offered"]);
    assert!(r.certificate.is_none());

    let r = probe_at(l.addr(), &plain_policy(&ca, StartTls::Off, T)).await;
    assert_pass(&r);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(phase_names(&r), ["connect", "banner", "ehlo", "quit"]);
}

#[tokio::test]
async fn expired_certificate_is_a_certificate_failure_in_tls() {
    let r = tls_probe(CertKind::Expired, 7).await;
    let f = assert_failure(&r, Phase::Tls, FailureKind::Certificate, "certificate");
    assert!(f.detail.to_lowercase().contains("expired"), "{f:?}");
    assert_eq!(r.starttls_offered, Some(true));
}

#[tokio::test]
async fn opportunistic_tls_failure_falls_back_to_plaintext_and_still_checks_relay() {
    let ca = Ca::new().expect("CA");
    let expired = ca.leaf(&[MX_HOST], CertKind::Expired).expect("leaf");
    // The fault listener accepts every RCPT: an open relay with a broken certificate.
    let l = fault(Fault::StartTls(expired));
    let mut p = plain_policy(&ca, StartTls::Opportunistic, T);
    p.rcpt = rcpt(false);
    let r = probe_at(l.addr(), &p).await;
    assert_pass(&r);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].starts_with("opportunistic TLS failed: certificate problem in tls"));
    let after_tls = [
        "connect",
        "banner",
        "ehlo",
        "mail_from",
        "rcpt_postmaster",
        "quit",
    ];
    assert_eq!(
        phase_names(&r)[..4],
        ["connect", "banner", "ehlo", "starttls"]
    );
    assert_eq!(phase_names(&r)[4..], after_tls, "a new plaintext session");

    p.rcpt = rcpt(true);
    let r = probe_at(l.addr(), &p).await;
    assert_failure(
        &r,
        Phase::RcptRelay,
        FailureKind::OpenRelay,
        "from a stranger: 250",
    );
    assert_eq!(l.connections(), 4);
}

#[tokio::test]
async fn wrong_certificate_name_is_a_certificate_failure_in_tls() {
    let r = tls_probe(CertKind::WrongName, 7).await;
    let f = assert_failure(
        &r,
        Phase::Tls,
        FailureKind::Certificate,
        "not valid for name",
    );
    assert!(f.detail.contains(MX_HOST), "names the expected name: {f:?}");
}

#[tokio::test]
async fn certificate_expiring_in_3_days_fails_a_7_day_minimum_and_passes_a_2_day_one() {
    // 3 days minus the moments since issue: 2 whole days left.
    let r = tls_probe(CertKind::ExpiringSoon, 7).await;
    assert_failure(
        &r,
        Phase::Tls,
        FailureKind::Certificate,
        "certificate expires in 2 day(s); minimum is 7",
    );
    let cert = r.certificate.as_ref().expect("certificate facts kept");
    assert_eq!(cert.days_left, 2);
    assert_eq!(cert.names, [MX_HOST]);

    let r = tls_probe(CertKind::ExpiringSoon, 2).await;
    assert_pass(&r);
    assert_eq!(r.certificate.as_ref().map(|c| c.days_left), Some(2));
}

#[tokio::test]
async fn ehlo_550_is_a_permanent_rejection_in_ehlo() {
    let ca = Ca::new().expect("CA");
    let l = fault(Fault::EhloRejected(550));
    let r = probe_at(l.addr(), &plain_policy(&ca, StartTls::Require, T)).await;
    assert_failure(
        &r,
        Phase::Ehlo,
        FailureKind::PermReject,
        "550 5.7.1 Error: EHLO rejected",
    );
}

#[tokio::test]
async fn a_200_kb_reply_is_kept_as_512_bytes() {
    let ca = Ca::new().expect("CA");
    for (code, pass) in [(220, true), (554, false)] {
        let l = fault(Fault::LongBanner(code));
        let r = probe_at(l.addr(), &plain_policy(&ca, StartTls::Off, T)).await;
        assert_eq!(r.pass, pass, "{code}");
        let banner = r
            .phases
            .iter()
            .find(|p| p.phase == Phase::Banner)
            .expect("the banner's phase");
        assert_eq!(banner.text.len(), smtp::MAX_REPLY_TEXT, "{code}");
        assert!(banner.text.starts_with("xxxx") && banner.text.ends_with('…'));
        if let Some(f) = &r.failure {
            assert!(
                f.detail.len() <= smtp::MAX_REPLY_TEXT + 4,
                "{}",
                f.detail.len()
            );
            assert!(f.detail.starts_with("554 xxxx"), "{}", &f.detail[..20]);
        }
        let json = serde_json::to_string(&r).expect("json");
        assert!(
            json.len() < 4_000,
            "the whole report is {} bytes",
            json.len()
        );
    }
}

#[tokio::test]
async fn rcpt_450_on_postmaster_is_a_temporary_rejection() {
    let r = rcpt_rejected(450).await;
    assert_failure(
        &r,
        Phase::RcptPostmaster,
        FailureKind::TempReject,
        "450 4.7.1",
    );
}

#[tokio::test]
async fn rcpt_550_on_postmaster_is_a_permanent_rejection() {
    let r = rcpt_rejected(550).await;
    assert_failure(
        &r,
        Phase::RcptPostmaster,
        FailureKind::PermReject,
        "550 5.7.1",
    );
}

#[tokio::test]
async fn connection_refused_is_a_network_failure_in_connect() {
    let ca = Ca::new().expect("CA");
    let addr = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let r = probe_at(addr, &plain_policy(&ca, StartTls::Require, T)).await;
    assert_failure(&r, Phase::Connect, FailureKind::Network, "refused");
    assert!(r.phases.is_empty(), "{:?}", r.phases);
}

#[tokio::test]
async fn non_utf8_bytes_in_a_reply_are_a_finding_not_a_panic() {
    let ca = Ca::new().expect("CA");
    let p = plain_policy(&ca, StartTls::Require, T);
    // Not a reply code: a protocol error (before the fix: a panic slicing inside a char).
    let r = probe_at(raw_greeter(b"22\xff\r\n").await, &p).await;
    assert_failure(
        &r,
        Phase::Banner,
        FailureKind::Protocol,
        "not an SMTP reply",
    );
    // A code followed by a non-ASCII byte (a Latin-1 no-break space): still a 554.
    let r = probe_at(raw_greeter(b"554\xa0no service\r\n").await, &p).await;
    assert_failure(&r, Phase::Banner, FailureKind::PermReject, "554 ");
}

#[tokio::test]
async fn postfix_mx_passes_every_phase_and_refuses_the_foreign_recipient() {
    let (ca, mta) = postfix(false, [127, 0, 0, 20]).await;
    let mut p = plain_policy(&ca, StartTls::Require, T);
    p.rcpt = rcpt(true);
    let r = probe_at(mta.addr(), &p).await;
    assert_pass(&r);
    assert_eq!(phase_names(&r), FULL_DIALOGUE);
    // Every reply code: postmaster accepted (250), the foreign recipient refused (554).
    let codes: Vec<String> = r
        .phases
        .iter()
        .map(|p| p.code.map_or("-".into(), |c| c.to_string()))
        .collect();
    assert_eq!(
        codes.join(" "),
        "- 220 250 220 - 250 250 250 554 221",
        "{r:#?}"
    );
    let relay = r.phases.iter().find(|p| p.phase == Phase::RcptRelay);
    assert!(relay.is_some_and(|p| p.text.contains("Relay access denied")));
    assert_eq!(r.starttls_offered, Some(true));
    let cert = r.certificate.as_ref().expect("certificate facts");
    assert_eq!(cert.names, [MX_HOST]);
    assert!((88..=90).contains(&cert.days_left), "{cert:?}");
    assert!(cert.issuer.contains("mxguard test CA"), "{cert:?}");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // Postfix's own count of the session's commands: no DATA, and nothing reached the queue.
    let summary = session_summary(&mta, "ehlo=2").await;
    assert!(
        summary.ends_with("ehlo=2 starttls=1 mail=1 rcpt=1/2 quit=1 commands=6/7"),
        "{summary}"
    );
    let log = mta.log();
    assert!(!log.contains("data=") && !log.contains("qmgr"), "{log}");
}

#[tokio::test]
async fn one_postfix_session_carries_the_postmaster_checks_of_250_domains() {
    // A host shared by 250 domains: one session, three transactions of at most 100 RCPTs
    // (RSET between), each domain's own answer, and the relay check once.
    let (ca, mta) = postfix(false, [127, 0, 0, 20]).await;
    let mut domains = vec![fqdn("example.test"), fqdn("stranger.test")];
    domains.extend((0..248).map(|i| fqdn(&format!("d{i}.example.test"))));
    let mut p = plain_policy(&ca, StartTls::Require, T);
    p.port = mta.addr().port();
    p.rcpt = Some(RcptCheck {
        domains: domains.clone(),
        refuse_relay: true,
    });
    let r = smtp::probe(&fqdn(MX_HOST), mta.addr().ip(), &p, chrono::Utc::now()).await;
    assert!(r.pass, "the host itself passes: {r:#?}");
    assert_eq!(r.recipients.len(), 250);
    assert_eq!(
        r.phases
            .iter()
            .filter(|p| p.phase == Phase::RcptRelay)
            .count(),
        1,
        "the relay check once per session"
    );
    let mine = r.for_domain(&fqdn("d247.example.test"));
    assert!(mine.pass, "{mine:#?}");
    assert_eq!(
        phase_names(&mine),
        FULL_DIALOGUE,
        "a domain sees its own RCPT among the phases"
    );
    let stranger = r.for_domain(&fqdn("stranger.test"));
    assert_failure(
        &stranger,
        Phase::RcptPostmaster,
        FailureKind::PermReject,
        "554 5.7.1 <postmaster@stranger.test>: Relay access denied",
    );
    assert_eq!(stranger.recipients.len(), 1, "only its own answer");
    // Postfix's count: one session, 3 MAIL, 251 RCPTs (250 + the stranger's relay probe) of
    // which 249 accepted, 2 RSETs, no DATA.
    let summary = session_summary(&mta, "rset=2").await;
    assert!(
        summary.contains("mail=3 rcpt=249/251 rset=2 quit=1"),
        "{summary}"
    );
    let log = mta.log();
    let sessions = log
        .lines()
        .filter(|l| l.contains("disconnect from") && l.contains("ehlo="))
        .count();
    assert_eq!(
        sessions, 1,
        "one session (besides the readiness check): {log}"
    );
}

#[tokio::test]
async fn postfix_open_relay_is_an_open_relay_in_rcpt_relay() {
    let (ca, mta) = postfix(true, [127, 0, 0, 21]).await;
    let mut p = plain_policy(&ca, StartTls::Require, T);
    p.rcpt = rcpt(true);
    let r = probe_at(mta.addr(), &p).await;
    let f = assert_failure(
        &r,
        Phase::RcptRelay,
        FailureKind::OpenRelay,
        "accepted RCPT TO:<mxguard-relay-probe@example.net> from a stranger: 250",
    );
    assert!(f.to_string().starts_with("open relay in rcpt_relay"), "{f}");
}

// ---------------------------------------------------------------- DNS

#[tokio::test]
async fn dns_noerror_nxdomain_and_nodata_from_named_and_unbound() {
    let lab = DnsLab::start().await;
    let (auth, res) = (lab.authoritative(), lab.resolver());

    let a = auth.query(&fqdn(MX_HOST), RecordType::A).await;
    assert_eq!(a.status, DnsStatus::NoError, "{a:?}");
    assert_eq!(
        (records(&a), a.ttl, a.authoritative),
        (vec!["127.0.0.20".into()], Some(120), true)
    );
    assert!(!a.via_tcp);
    let mx = res.query(&fqdn("example.test"), RecordType::Mx).await;
    assert_eq!(mx.status, DnsStatus::NoError, "{mx:?}");
    assert_eq!(records(&mx), ["10 mx1.example.test."]);
    assert!(mx.ttl.is_some_and(|t| t > 0 && t <= 300), "{mx:?}");
    assert!(
        !mx.authoritative,
        "a resolver's answer is not authoritative"
    );

    for client in [auth, res] {
        let nx = client
            .query(&fqdn("nope.example.test"), RecordType::A)
            .await;
        assert_eq!(
            (nx.status.clone(), nx.ttl),
            (DnsStatus::NxDomain, None),
            "{nx:?}"
        );
        assert_eq!(nx.status.label(), "NXDOMAIN");
        assert!(nx.records.is_empty());
        // The name exists, with no MX.
        let nodata = client.query(&fqdn(MX_HOST), RecordType::Mx).await;
        assert_eq!(
            (nodata.status.clone(), nodata.ttl),
            (DnsStatus::NoData, None),
            "{nodata:?}"
        );
        assert_eq!(nodata.status.label(), "NODATA");
    }
}

#[tokio::test]
async fn dns_servfail_from_unbound_and_from_a_broken_server() {
    let broken = Unbound::start_servfail("example.test", UnboundOptions::default())
        .await
        .expect("unbound");
    let rcode = RcodeServer::start(ResponseCode::ServFail).expect("rcode server");
    for server in [broken.addr(), rcode.addr()] {
        let a = ask(server, MX_HOST, RecordType::A).await;
        assert_eq!(a.status, DnsStatus::ServFail, "{a:?}");
        assert_eq!(a.status.label(), "SERVFAIL");
        assert!(a.records.is_empty() && a.ttl.is_none());
    }
}

#[tokio::test]
async fn dns_refused_by_named_for_a_zone_it_does_not_serve() {
    let named = Named::start(&[example_zone("127.0.0.20")], None)
        .await
        .expect("named");
    let a = DnsClient::authoritative(named.addr(), T)
        .query(&fqdn("mx.example.org"), RecordType::A)
        .await;
    assert_eq!(a.status, DnsStatus::Refused, "{a:?}");
    let rcode = RcodeServer::start(ResponseCode::Refused).expect("rcode server");
    let a = ask(rcode.addr(), MX_HOST, RecordType::A).await;
    assert_eq!(
        (a.status.clone(), a.status.label()),
        (DnsStatus::Refused, "REFUSED".into())
    );
}

#[tokio::test]
async fn dns_timeout_when_nobody_answers_within_the_query_timeout() {
    // Bound and never read: datagrams are accepted by the kernel and never answered.
    let mute = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let t = Duration::from_secs(1);
    let start = Instant::now();
    let a = DnsClient::resolver(mute.local_addr().expect("addr"), t)
        .query(&fqdn(MX_HOST), RecordType::A)
        .await;
    let took = start.elapsed();
    assert_eq!(a.status, DnsStatus::Timeout, "{a:?}");
    assert!(
        took >= t && took < t + Duration::from_secs(1),
        "took {took:?}"
    );
    assert!(a.latency_ms >= 1000, "{a:?}");
}

#[tokio::test]
async fn dns_truncated_answer_is_retried_over_tcp() {
    let lab = DnsLab::start().await;
    for client in [lab.authoritative(), lab.resolver()] {
        let a = client.query(&fqdn("big.example.test"), RecordType::A).await;
        assert_eq!(a.status, DnsStatus::NoError, "{a:?}");
        assert!(
            a.via_tcp,
            "{BIG_RECORDS} A records do not fit 1232 bytes: {a:?}"
        );
        assert_eq!(a.records.len(), BIG_RECORDS);
        assert!(a.ttl.is_some_and(|t| t <= 60));
    }
    let small = lab.resolver().query(&fqdn(MX_HOST), RecordType::A).await;
    assert!(!small.via_tcp, "{small:?}");
}

#[tokio::test]
async fn a_target_with_ninety_addresses_gets_eight_probes() {
    // big.example.test answers 90 A records (127.1.x.y, all refusing connections at once)
    let lab = DnsLab::start().await;
    let ca = Ca::new().expect("ca");
    let prober = Prober {
        resolvers: vec![lab.resolver(), lab.authoritative()],
        smtp: policy(&ca, closed_port(), StartTls::Require, T),
        dns: mxguard::probe::budget::SharedDns::unlimited(),
        reuse: mxguard::probe::reuse::Rules::ALWAYS_ASK,
        global: std::sync::Arc::new(tokio::sync::Semaphore::new(64)),
        max_addresses: 8,
    };
    let spec = TargetSpec::named(Side::Primary, fqdn("big.example.test"), None);
    let ev = prober.probe_target(&spec, chrono::Utc::now()).await;
    assert_eq!(ev.smtp.len(), 8, "{:?}", ev.round.addresses);
    assert_eq!(ev.round.addresses.len(), 8);
    for r in &ev.round.resolvers {
        assert_eq!(r.addresses.len(), 8, "{r:?}");
    }
    // the same eight at every resolver: the lowest addresses of the answer
    assert_eq!(
        ev.round.resolvers[0].addresses,
        ev.round.resolvers[1].addresses
    );
    assert_eq!(ev.smtp[0].address.ip(), ip("127.1.0.2"));
}

// ---------------------------------------------------------------- verdicts

#[tokio::test]
async fn verdict_one_resolver_stopped_target_still_up() {
    let lab = VerdictLab::start().await;
    let [u1, u2, mut u3] = lab.resolvers().await;
    u3.stop();
    let ev = lab.probe(&[&u1, &u2, &u3]).await;
    let v = target_verdict(&ev.round, 2);
    assert!(v.up, "{v:?} {ev:#?}");
    assert_eq!(
        v.reason.to_string(),
        format!("127.0.0.1 passed: {}", ev.smtp[0].summary())
    );
    assert!(v.reason.contains("SMTP ok, TLS ok"), "{v:?}");
    let down = &ev.round.resolvers[2];
    assert_eq!(down.resolver, u3.addr().to_string());
    let err = down.error.as_deref().expect("the stopped resolver's error");
    assert!(
        err.starts_with("A network error") || err.starts_with("A timeout"),
        "{err}"
    );
    assert_eq!(ev.smtp.len(), 1, "one address, probed once");
    assert_eq!(lab.mta.connections(), 1);
}

#[tokio::test]
async fn verdict_servfail_at_one_resolver_target_still_up() {
    let lab = VerdictLab::start().await;
    let [u1, u2] = lab.resolvers().await;
    let sf = Unbound::start_servfail("example.test", UnboundOptions::default())
        .await
        .expect("unbound");
    let ev = lab.probe(&[&u1, &u2, &sf]).await;
    let v = target_verdict(&ev.round, 2);
    assert!(v.up, "{v:?}");
    assert_eq!(
        ev.round.resolvers[2].error.as_deref(),
        Some("A SERVFAIL, AAAA SERVFAIL")
    );
    assert_eq!(ev.round.resolvers[0].addresses, [ip("127.0.0.1")]);
}

#[tokio::test]
async fn verdict_two_resolvers_servfail_target_down_naming_the_quorum() {
    let lab = VerdictLab::start().await;
    let [u1] = lab.resolvers().await;
    let (sf1, sf2) = tokio::join!(
        Unbound::start_servfail("example.test", UnboundOptions::default()),
        Unbound::start_servfail("example.test", UnboundOptions::default())
    );
    let (sf1, sf2) = (sf1.expect("unbound"), sf2.expect("unbound"));
    let ev = lab.probe(&[&u1, &sf1, &sf2]).await;
    let v = target_verdict(&ev.round, 2);
    assert!(!v.up, "{v:?}");
    assert_eq!(
        v.reason.to_string(),
        format!(
            "resolved by 1 of 3 resolvers, quorum is 2 ({}: A SERVFAIL, AAAA SERVFAIL; {}: A SERVFAIL, AAAA SERVFAIL)",
            sf1.addr(),
            sf2.addr()
        )
    );
    // The address the one resolver found is still probed: the evidence is complete.
    assert_eq!(ev.smtp.len(), 1);
    assert!(ev.smtp[0].pass);
}

#[tokio::test]
async fn verdict_resolvers_disagreeing_evidence_shows_both_answers() {
    let lab = VerdictLab::start().await;
    // A second authoritative server with another address for the same host.
    let other = Named::start(&[example_zone("127.0.0.2")], None)
        .await
        .expect("named");
    let [u1, u3] = lab.resolvers().await;
    let u2 = Unbound::start("example.test", other.addr(), UnboundOptions::default())
        .await
        .expect("unbound");
    let ev = lab.probe(&[&u1, &u2, &u3]).await;
    let addrs: Vec<_> = ev
        .round
        .resolvers
        .iter()
        .map(|r| r.addresses.clone())
        .collect();
    assert_eq!(
        addrs,
        [
            vec![ip("127.0.0.1")],
            vec![ip("127.0.0.2")],
            vec![ip("127.0.0.1")]
        ]
    );
    let a_answers: Vec<Vec<String>> = ev
        .dns
        .iter()
        .filter(|a| a.rtype == RecordType::A)
        .map(records)
        .collect();
    assert!(
        a_answers.contains(&vec!["127.0.0.1".to_string()]),
        "{a_answers:?}"
    );
    assert!(
        a_answers.contains(&vec!["127.0.0.2".to_string()]),
        "{a_answers:?}"
    );
    // Both addresses were probed; only the real MTA passes, which is enough for Up.
    let by_ip: Vec<_> = ev.smtp.iter().map(|r| (r.address.ip(), r.pass)).collect();
    assert_eq!(by_ip, [(ip("127.0.0.1"), true), (ip("127.0.0.2"), false)]);
    assert_failure(&ev.smtp[1], Phase::Connect, FailureKind::Network, "refused");
    let v = target_verdict(&ev.round, 2);
    assert!(v.up && v.reason.starts_with("127.0.0.1 passed"), "{v:?}");
}

#[tokio::test]
async fn a_server_slow_in_every_reply_fails_at_the_session_deadline() {
    // Each reply 400 ms late: within the 1 s phase timeout every time.
    let ca = Ca::new().expect("CA");
    let l = fault(Fault::SlowReplies(Duration::from_millis(400)));
    let mut p = plain_policy(&ca, StartTls::Off, Duration::from_secs(1));
    p.rcpt = rcpt(false);
    let r = probe_at(l.addr(), &p).await;
    assert!(r.pass, "healthy without a session deadline: {r:?}");
    assert!(
        r.latency_ms >= 1600,
        "banner, EHLO, MAIL, RCPT… took {} ms",
        r.latency_ms
    );

    // The whole session may take 1 s: it is cut in the phase under way (MAIL's reply, due at
    // 1.2 s, 0.2 s from either edge), a hard timeout.
    p.deadline = Some(Duration::from_secs(1));
    let start = Instant::now();
    let r = probe_at(l.addr(), &p).await;
    let took = start.elapsed();
    let f = assert_failure(
        &r,
        Phase::MailFrom,
        FailureKind::Timeout,
        "session not done within 1s",
    );
    assert!(!f.kind.is_soft());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1800),
        "took {took:?}"
    );
}
