//! Helpers for `tests/probes.rs`: SMTP policies against the test CA, assertions on probe
//! failures, and a DNS lab (named serving example.test + a caching Unbound in front of it).
//! Included with `#[path]`, so it does not pull in the rest of `tests/common`.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mxguard::config::StartTls;
use mxguard::health::{AddressResult, ResolverResult, TargetRound};
use mxguard::model::{Fqdn, RecordType, Side};
use mxguard::probe::dns::{DnsAnswer, DnsClient};
use mxguard::probe::smtp::{self, Failure, FailureKind, Phase, RcptCheck, SmtpPolicy, SmtpReport};
use mxguard::probe::target::{Prober, TargetEvidence, TargetSpec};
use mxguard::probe::tls;
use mxguard_testpeers::{
    free_port_on, poll_until, Ca, CertKind, Fault, FaultListener, Named, Postfix, PostfixConfig,
    Unbound, UnboundOptions, Zone,
};

/// The MX host name every SMTP probe uses (SNI and certificate name).
pub const MX_HOST: &str = "mx1.example.test";
/// Per DNS query and per SMTP phase, unless a test says otherwise.
pub const T: Duration = Duration::from_secs(3);
/// Every phase of a passing probe with STARTTLS and both RCPT checks. No DATA.
pub const FULL_DIALOGUE: [&str; 10] = [
    "connect",
    "banner",
    "ehlo",
    "starttls",
    "tls",
    "ehlo_tls",
    "mail_from",
    "rcpt_postmaster",
    "rcpt_relay",
    "quit",
];
/// Addresses of `big.example.test`: enough A records (BIND allows 100) to exceed a 1232-byte UDP answer.
pub const BIG_RECORDS: usize = 90;

pub fn fqdn(s: &str) -> Fqdn {
    Fqdn::parse(s).expect("a valid name")
}

/// A policy for `port` trusting `ca` (besides the system roots), with `timeout` per phase.
pub fn policy(ca: &Ca, port: u16, starttls: StartTls, timeout: Duration) -> SmtpPolicy {
    SmtpPolicy {
        keep_chain: false,
        port,
        timeout,
        deadline: None,
        starttls,
        ehlo_name: fqdn("probe.mxguard.test"),
        cert_min_days: 7,
        tls: tls::client_config(Some(ca.cert_path())).expect("TLS client config with the test CA"),
        rcpt: None,
    }
}

/// RCPT checks for example.test; `refuse_relay` for backups.
pub fn rcpt(refuse_relay: bool) -> Option<RcptCheck> {
    Some(RcptCheck::one(fqdn("example.test"), refuse_relay))
}

/// Probes `addr` as [`MX_HOST`] with `policy` (its port replaced by `addr`'s).
pub async fn probe_at(addr: SocketAddr, policy: &SmtpPolicy) -> SmtpReport {
    let mut policy = policy.clone();
    policy.port = addr.port();
    // as example.test sees it: its postmaster's answer folded into the host's
    smtp::probe(&fqdn(MX_HOST), addr.ip(), &policy, chrono::Utc::now())
        .await
        .for_domain(&fqdn("example.test"))
}

/// The probe's failure, which must be exactly `kind` in `phase` with `detail` containing
/// `needle`; panics with the whole report otherwise.
pub fn assert_failure<'a>(
    report: &'a SmtpReport,
    phase: Phase,
    kind: FailureKind,
    needle: &str,
) -> &'a Failure {
    let f = report
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("expected {kind:?} in {phase:?}, the probe passed: {report:#?}"));
    assert!(!report.pass, "a failed probe must not pass: {report:#?}");
    assert_eq!(
        (f.phase, &f.kind),
        (phase, &kind),
        "wrong failure: {report:#?}"
    );
    assert!(
        f.detail.contains(needle),
        "detail {:?} lacks {needle:?}: {report:#?}",
        f.detail
    );
    assert_never_data(report);
    f
}

/// The probe passed; panics with the whole report otherwise.
pub fn assert_pass(report: &SmtpReport) {
    assert!(
        report.pass && report.failure.is_none(),
        "expected a pass: {report:#?}"
    );
    assert_never_data(report);
}

/// The phases the probe went through, by their JSON names.
pub fn phase_names(report: &SmtpReport) -> Vec<String> {
    report
        .phases
        .iter()
        .map(|p| {
            serde_json::to_value(p.phase)
                .expect("phase serialises")
                .as_str()
                .expect("phase is a string")
                .to_string()
        })
        .collect()
}

/// No phase of the dialogue is DATA (nor anything after it).
pub fn assert_never_data(report: &SmtpReport) {
    let names = phase_names(report);
    assert!(
        !names.iter().any(|n| n.contains("data")),
        "a DATA phase was run: {names:?}"
    );
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The zone every DNS probe test uses: an MX, its host, and one name with [`BIG_RECORDS`]
/// A records (127.1.0.x, never contacted).
pub fn example_zone(mx_addr: &str) -> Zone {
    let mut records = format!("@ 300 IN MX 10 mx1\nmx1 120 IN A {mx_addr}\n");
    for i in 1..=BIG_RECORDS {
        records.push_str(&format!("big 60 IN A 127.1.{}.{}\n", i / 250, i % 250 + 1));
    }
    Zone::new("example.test", &records)
}

/// named serving [`example_zone`] and one Unbound resolving through it.
pub struct DnsLab {
    pub named: Named,
    pub unbound: Unbound,
}

impl DnsLab {
    pub async fn start() -> DnsLab {
        let named = Named::start(&[example_zone("127.0.0.20")], None)
            .await
            .expect("named (package bind9) must start");
        let unbound = Unbound::start("example.test", named.addr(), UnboundOptions::default())
            .await
            .expect("unbound must start");
        DnsLab { named, unbound }
    }

    pub fn resolver(&self) -> DnsClient {
        DnsClient::resolver(self.unbound.addr(), Duration::from_secs(3))
    }

    pub fn authoritative(&self) -> DnsClient {
        DnsClient::authoritative(self.named.addr(), Duration::from_secs(3))
    }
}

/// One query for `name`/`rtype` to `server` as a resolver (RD set), within [`T`].
pub async fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> DnsAnswer {
    DnsClient::resolver(server, T)
        .query(&fqdn(name), rtype)
        .await
}

/// A round in which one resolver found the address `report` probed, with that probe's result.
pub fn one_address_round(report: &SmtpReport) -> TargetRound {
    let address = report.address.ip();
    TargetRound {
        target: report.host.clone(),
        resolvers: vec![ResolverResult {
            resolver: "127.0.0.53:53".into(),
            addresses: vec![address],
            error: None,
        }],
        unasked: vec![],
        addresses: vec![AddressResult {
            address,
            pass: report.pass,
            soft: report.failure.as_ref().is_some_and(|f| f.kind.is_soft()),
            reason: report.summary(),
        }],
    }
}

/// Answer records as strings, for readable assertions.
pub fn records(a: &DnsAnswer) -> Vec<String> {
    a.records.iter().map(|r| r.to_string()).collect()
}

/// `ip` parsed.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

/// The `disconnect from … <counts>` line Postfix logs for the session whose counts contain
/// `marker` (e.g. `ehlo=2`), polled for: Postfix writes its maillog through postlogd.
pub async fn session_summary(mta: &Postfix, marker: &str) -> String {
    poll_until(
        Duration::from_secs(30),
        "the session in maillog",
        || async {
            let log = mta.log();
            log.lines()
                .find(|l| l.contains("disconnect from") && l.contains(marker))
                .map(str::to_string)
                .ok_or(log)
        },
    )
    .await
    .expect("postfix logs the probe's session")
}

pub fn fault(f: Fault) -> FaultListener {
    FaultListener::start(f).expect("fault listener")
}

pub fn plain_policy(ca: &Ca, starttls: StartTls, timeout: Duration) -> SmtpPolicy {
    policy(ca, 0, starttls, timeout)
}

pub async fn tls_probe(kind: CertKind, min_days: u32) -> SmtpReport {
    let ca = Ca::new().expect("CA");
    let l = fault(Fault::StartTls(ca.leaf(&[MX_HOST], kind).expect("leaf")));
    let mut p = plain_policy(&ca, StartTls::Require, T);
    p.cert_min_days = min_days;
    probe_at(l.addr(), &p).await
}

pub async fn rcpt_rejected(code: u16) -> SmtpReport {
    let ca = Ca::new().expect("CA");
    let l = fault(Fault::RcptRejected(code));
    let mut p = plain_policy(&ca, StartTls::Off, T);
    p.rcpt = rcpt(false);
    probe_at(l.addr(), &p).await
}

/// A listener that greets every connection with `greeting` (raw bytes) and then says nothing.
pub async fn raw_greeter(greeting: &'static [u8]) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(greeting).await;
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
            });
        }
    });
    addr
}

pub async fn postfix(open_relay: bool, ip: [u8; 4]) -> (Ca, Postfix) {
    let ca = Ca::new().expect("CA");
    let port = free_port_on(&[ip.into()]).expect("port");
    let addr = SocketAddr::from((ip, port));
    let cfg = if open_relay {
        PostfixConfig::open_relay(&ca, MX_HOST, addr)
    } else {
        PostfixConfig::mx(&ca, MX_HOST, addr)
    };
    let cfg = cfg.expect("config").with_domain("example.test");
    let mta = Postfix::start(cfg).await.expect("postfix must start");
    (ca, mta)
}

/// A healthy STARTTLS MTA for mx1.example.test at 127.0.0.1, named serving mx1 → 127.0.0.1,
/// and a prober over `resolvers`.
pub struct VerdictLab {
    _ca: Ca,
    pub mta: FaultListener,
    pub named: Named,
    pub policy: SmtpPolicy,
}

impl VerdictLab {
    pub async fn start() -> VerdictLab {
        let ca = Ca::new().expect("CA");
        let leaf = ca.leaf(&[MX_HOST], CertKind::Valid).expect("leaf");
        let mta = fault(Fault::StartTls(leaf));
        let named = Named::start(&[example_zone("127.0.0.1")], None)
            .await
            .expect("named");
        let policy = policy(&ca, mta.addr().port(), StartTls::Require, T);
        VerdictLab {
            _ca: ca,
            mta,
            named,
            policy,
        }
    }

    /// `N` Unbound resolvers in front of this lab's named, started at once.
    pub async fn resolvers<const N: usize>(&self) -> [Unbound; N] {
        let starts = (0..N)
            .map(|_| Unbound::start("example.test", self.named.addr(), UnboundOptions::default()));
        let started: Vec<Unbound> = futures::future::join_all(starts)
            .await
            .into_iter()
            .map(|u| u.expect("unbound must start"))
            .collect();
        started.try_into().expect("N resolvers")
    }

    pub async fn probe(&self, resolvers: &[&Unbound]) -> TargetEvidence {
        let prober = Prober {
            resolvers: resolvers
                .iter()
                .map(|u| DnsClient::resolver(u.addr(), T))
                .collect(),
            smtp: self.policy.clone(),
            dns: mxguard::probe::budget::SharedDns::unlimited(),
            reuse: mxguard::probe::reuse::Rules::ALWAYS_ASK,
            global: std::sync::Arc::new(tokio::sync::Semaphore::new(8)),
            max_addresses: 8,
        };
        let spec = TargetSpec {
            side: Side::Primary,
            host: fqdn(MX_HOST),
            rcpt: None,
            addresses: Vec::new(),
        };
        prober.probe_target(&spec, chrono::Utc::now()).await
    }
}
