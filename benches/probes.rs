//! Probe benchmarks (not timed tests): `cargo bench --bench probes`.
//!
//! 1. SMTP probes/s against a loopback listener, plain and with STARTTLS (rustls, test CA).
//! 2. One round over 10,000 configured targets (DNS from an in-process responder, then SMTP),
//!    targets/s and the process's peak RSS.
//! 3. Detection latency through the real monitor (interval 5 s, fail_after 3, confirm 500 ms):
//!    the primary starts refusing connections, or starts answering 554, at a random moment;
//!    time until its side is Down.
//!
//! Everything runs on loopback, bounded in count and time. Prints a table and one JSON line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData as WireData, Record};
use mxguard::config::StartTls;
use mxguard::health::{Health, Thresholds};
use mxguard::model::{Fqdn, Side};
use mxguard::monitor::{MonitorSettings, Monitors};
use mxguard::probe::dns::DnsClient;
use mxguard::probe::smtp::{self, SmtpPolicy};
use mxguard::probe::target::{Prober, TargetSpec};
use mxguard::probe::tls;
use mxguard_core::{SeededJitter, TokioClock};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Detection trials (half refused, half 554, in pairs at the same moments), run concurrently.
const TRIALS: u64 = 200;
const OK: u8 = 0;
const BANNER_554: u8 = 1;
const REFUSE: u8 = 2;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A minimal SMTP responder: banner, EHLO (with STARTTLS when `tls`), MAIL/RCPT/RSET 250, QUIT.
/// `mode` switches it to a 554 banner, or to refusing connections (the listener is dropped).
struct SmtpServer {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    changed: Arc<Notify>,
}

impl SmtpServer {
    async fn start(tls: Option<TlsAcceptor>) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(OK));
        let changed = Arc::new(Notify::new());
        let (m, c) = (mode.clone(), changed.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = c.notified() => {
                        if m.load(Ordering::SeqCst) == REFUSE { return; }
                    }
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (tls, m) = (tls.clone(), m.clone());
                        tokio::spawn(async move { let _ = session(Box::new(stream), tls, m).await; });
                    }
                }
            }
        });
        SmtpServer {
            addr,
            mode,
            changed,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.changed.notify_one();
    }
}

async fn session(
    stream: Box<dyn Io>,
    tls: Option<TlsAcceptor>,
    mode: Arc<AtomicU8>,
) -> std::io::Result<()> {
    let mut conn = BufReader::new(stream);
    if mode.load(Ordering::SeqCst) == BANNER_554 {
        conn.get_mut()
            .write_all(b"554 5.3.2 no service here\r\n")
            .await?;
        return Ok(());
    }
    conn.get_mut()
        .write_all(b"220 bench.test ESMTP\r\n")
        .await?;
    let mut secured = false;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            if tls.is_some() && !secured {
                b"250-bench.test\r\n250-STARTTLS\r\n250 SIZE 10240000\r\n"
            } else {
                b"250-bench.test\r\n250 SIZE 10240000\r\n"
            }
        } else if cmd == "STARTTLS" {
            if let (Some(acceptor), false) = (&tls, secured) {
                conn.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                let stream = acceptor.accept(conn.into_inner()).await?;
                conn = BufReader::new(Box::new(stream));
                secured = true;
                continue;
            }
            b"454 TLS not available\r\n"
        } else if cmd == "QUIT" {
            conn.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 ok\r\n"
        };
        conn.get_mut().write_all(reply).await?;
    }
}

/// Answers every A query with 127.0.0.1, every other query with an empty NOERROR.
async fn start_dns() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
    let addr = sock.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp =
                Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
            resp.metadata.recursion_available = true;
            for q in &req.queries {
                resp.add_query(q.clone());
                if q.query_type() == hickory_proto::rr::RecordType::A {
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        300,
                        WireData::A(A(Ipv4Addr::LOCALHOST)),
                    ));
                }
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

struct Pki {
    ca_file: tempfile::NamedTempFile,
    acceptor: TlsAcceptor,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["mx.bench.test".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("leaf");
    let ca_file = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(ca_file.path(), ca.pem()).expect("write ca");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    Pki {
        ca_file,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

fn policy(port: u16, starttls: StartTls, ca: &std::path::Path) -> SmtpPolicy {
    SmtpPolicy {
        keep_chain: false,
        port,
        timeout: Duration::from_secs(3),
        deadline: None,
        starttls,
        ehlo_name: Fqdn::parse("bench.invalid").expect("name"),
        cert_min_days: 7,
        tls: tls::client_config(Some(ca)).expect("tls config"),
        rcpt: None,
    }
}

/// Runs `n` probes of `host`/127.0.0.1, `concurrency` at a time; returns (probes/s, failures).
async fn throughput(n: usize, concurrency: usize, policy: SmtpPolicy, host: &str) -> (f64, usize) {
    let policy = Arc::new(policy);
    let host = Fqdn::parse(host).expect("host");
    let sem = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (policy, host, sem) = (policy.clone(), host.clone(), sem.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await.ok();
            smtp::probe(
                &host,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                &policy,
                chrono::Utc::now(),
            )
            .await
            .pass
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(true)) {
            failed += 1;
        }
    }
    (n as f64 / start.elapsed().as_secs_f64(), failed)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One detection trial: returns seconds from the fault to the primary side being Down.
async fn detection_trial(
    fault: u8,
    seed: u64,
    delay: Duration,
    dns: SocketAddr,
    ca: std::path::PathBuf,
) -> f64 {
    let server = SmtpServer::start(None).await;
    let prober = Prober {
        resolvers: vec![DnsClient::resolver(dns, Duration::from_secs(1))],
        smtp: SmtpPolicy {
            timeout: Duration::from_secs(1),
            ..policy(server.addr.port(), StartTls::Off, &ca)
        },
        dns: mxguard::probe::budget::SharedDns::unlimited(),
        reuse: mxguard::probe::reuse::Rules::ALWAYS_ASK,
        global: Arc::new(Semaphore::new(16)),
        max_addresses: 8,
    };
    let settings = MonitorSettings {
        interval: Duration::from_secs(5),
        confirm_interval: Duration::from_millis(500),
        jitter: Duration::from_millis(500),
        thresholds: Thresholds {
            fail_after: 3,
            recover_after: 6,
            soft_fail_after: Duration::from_secs(600),
        },
        resolver_quorum: 1,
    };
    let mut monitors = Monitors::new(
        Arc::new(TokioClock),
        Arc::new(SeededJitter::new(seed)),
        chrono::Utc::now(),
    );
    let mut rx = monitors.add(
        Fqdn::parse("bench.test").expect("name"),
        vec![TargetSpec {
            side: Side::Primary,
            host: Fqdn::parse("mx.bench.test").expect("host"),
            rcpt: None,
            addresses: Vec::new(),
        }],
        settings,
        Arc::new(prober),
    );
    let stop = CancellationToken::new();
    tokio::spawn(monitors.run(stop.clone()));
    tokio::time::sleep(delay).await;
    // Reports from before the fault say nothing about detection.
    while let Ok(r) = rx.try_recv() {
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!(
                "before fault: {:?} {:?}",
                r.health.health,
                r.verdicts.iter().map(|v| &v.reason).collect::<Vec<_>>()
            );
        }
    }
    let fault_at = Instant::now();
    server.set(fault);
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await {
        if r.side == Side::Primary && r.health.health == Health::Down {
            stop.cancel();
            return fault_at.elapsed().as_secs_f64();
        }
    }
    stop.cancel();
    f64::NAN
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let pki = pki();
    let plain = SmtpServer::start(None).await;
    let tls_server = SmtpServer::start(Some(pki.acceptor.clone())).await;
    let dns = start_dns().await;

    // 3 first: the 10,000-target round, so peak RSS is measured with the targets configured.
    let targets: Vec<TargetSpec> = (0..10_000)
        .map(|i| TargetSpec {
            side: Side::Primary,
            host: Fqdn::parse(&format!("mx{i}.bench.test")).expect("host"),
            rcpt: None,
            addresses: Vec::new(),
        })
        .collect();
    let prober = Prober {
        resolvers: vec![DnsClient::resolver(dns, Duration::from_secs(3))],
        smtp: policy(plain.addr.port(), StartTls::Off, pki.ca_file.path()),
        dns: mxguard::probe::budget::SharedDns::unlimited(),
        reuse: mxguard::probe::reuse::Rules::ALWAYS_ASK,
        global: Arc::new(Semaphore::new(256)),
        max_addresses: 8,
    };
    let prober = Arc::new(prober);
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(512));
    let mut set = tokio::task::JoinSet::new();
    for spec in targets.clone() {
        let (prober, sem) = (prober.clone(), sem.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await.ok();
            let ev = prober.probe_target(&spec, chrono::Utc::now()).await;
            let ok = ev.round.addresses.iter().any(|a| a.pass);
            if !ok && std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!("10k: {:?} {:?}", ev.round.resolvers, ev.round.addresses);
            }
            ok
        });
    }
    let mut up = 0;
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(true)) {
            up += 1;
        }
    }
    let round_secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_mib();

    let (plain_rate, plain_failed) = throughput(
        5_000,
        64,
        policy(plain.addr.port(), StartTls::Off, pki.ca_file.path()),
        "mx.bench.test",
    )
    .await;
    let (tls_rate, tls_failed) = throughput(
        2_000,
        64,
        policy(
            tls_server.addr.port(),
            StartTls::Require,
            pki.ca_file.path(),
        ),
        "mx.bench.test",
    )
    .await;

    let mut refuse = Vec::new();
    let mut banner = Vec::new();
    // Faults at seeded-random moments between 5 and 10 s after the monitor starts, in pairs:
    // both kinds of fault at the same moment of the same rounds (the same jitter seed), so the
    // two medians differ by what the fault does, not by where the moments fell.
    let spread = SeededJitter::new(2026);
    let trials: Vec<_> = (0..TRIALS / 2)
        .flat_map(|pair| {
            let delay = Duration::from_secs(5)
                + Duration::from_secs(5).mul_f64(mxguard_core::Jitter::fraction(&spread));
            [REFUSE, BANNER_554].map(|fault| {
                let ca = pki.ca_file.path().to_path_buf();
                tokio::spawn(
                    async move { (fault, detection_trial(fault, pair, delay, dns, ca).await) },
                )
            })
        })
        .collect();
    for t in trials {
        if let Ok((fault, secs)) = t.await {
            if fault == REFUSE {
                refuse.push(secs)
            } else {
                banner.push(secs)
            }
        }
    }

    println!("probe benchmark (2 cores; loopback)");
    println!(
        "  plain SMTP probes/s            {plain_rate:>8.0}   ({plain_failed} failed of 5000)"
    );
    println!("  STARTTLS SMTP probes/s         {tls_rate:>8.0}   ({tls_failed} failed of 2000)");
    println!(
        "  10,000-target round            {round_secs:>8.2} s  ({:.0} targets/s, {up} up)",
        10_000.0 / round_secs
    );
    println!("  peak RSS                       {rss:>8.1} MiB");
    println!(
        "  detection, connection refused  median {:.2} s  (n={}, max {:.2} s)",
        median(refuse.clone()),
        refuse.len(),
        refuse.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "  detection, 554 banner          median {:.2} s  (n={}, max {:.2} s)",
        median(banner.clone()),
        banner.len(),
        banner.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "{}",
        serde_json::json!({
            "plain_probes_per_s": plain_rate.round(), "starttls_probes_per_s": tls_rate.round(),
            "round_10k_s": round_secs, "targets_per_s": (10_000.0 / round_secs).round(), "peak_rss_mib": rss,
            "detect_refused_median_s": median(refuse), "detect_554_median_s": median(banner),
        })
    );
}
