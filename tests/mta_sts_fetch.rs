//! Fetching MTA-STS policies as a compliant sender does (RFC 8461 §3.3), against BIND `named`
//! (the TXT and A records; asked directly, as mxguard asks its configured resolvers) and an
//! HTTPS server on loopback presenting certificates of a test CA. One server answers for every
//! domain by its Host header, so each rule has a domain of its own under `lab.test`:
//!
//! | domain | what its policy host does |
//! |---|---|
//! | `ok` | an enforce policy, `text/plain`, max_age 1 day, and a TLS-RPT record |
//! | `ok2` | the same policy (its record is removed in a later view) |
//! | `zero` | the same with max_age 0 (never cached) |
//! | `redirect` | 301 to the `ok` policy: refused (no redirects) |
//! | `html` | `text/html`: refused |
//! | `big` | a body over 64 KiB: refused |
//! | `badcert` | a certificate not valid for its name: refused |
//! | `missing` | 404 |
//! | `gone` | the policy host does not resolve |
//! | `twice` | two `v=STSv1` records: no policy (an error) |
//! | `none` | nothing: no policy, no error |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mxguard::model::Fqdn;
use mxguard::mtasts::fetch::{Fetcher, PolicyCache, MAX_POLICY_BYTES};
use mxguard::mtasts::StsMode;
use mxguard_testpeers::named::{Named, Zone};
use mxguard_testpeers::{Ca, CertKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx1.lab.test\r\nmax_age: 86400\r\n";
const ZERO: &str = "version: STSv1\r\nmode: testing\r\nmx: mx1.lab.test\r\nmax_age: 0\r\n";
const SERVED: [&str; 9] = [
    "ok", "ok2", "zero", "redirect", "html", "big", "badcert", "missing", "twice",
];

struct Setup {
    _named: Named,
    _ca: Ca,
    requests: Arc<AtomicUsize>,
    fetcher: Fetcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(host: &str, path_ok: bool) -> String {
    let label = host
        .trim_start_matches("mta-sts.")
        .split('.')
        .next()
        .unwrap_or("");
    let plain = |status: &str, media: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {media}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if !path_ok {
        return plain("404 Not Found", "text/plain", "");
    }
    match label {
        "ok" | "ok2" | "badcert" => plain("200 OK", "text/plain; charset=utf-8", POLICY),
        "zero" => plain("200 OK", "text/plain", ZERO),
        "html" => plain("200 OK", "text/html", POLICY),
        "big" => {
            let mut body = POLICY.to_string();
            while body.len() <= MAX_POLICY_BYTES {
                body.push_str("x-padding: 0123456789012345678901234567890123456789\r\n");
            }
            plain("200 OK", "text/plain", &body)
        }
        "redirect" => "HTTP/1.1 301 Moved Permanently\r\nLocation: https://mta-sts.ok.lab.test/.well-known/mta-sts.txt\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        _ => plain("404 Not Found", "text/plain", ""),
    }
}

impl Setup {
    async fn start() -> Setup {
        let mut records = String::new();
        for d in SERVED {
            records.push_str(&format!(
                "mta-sts.{d} 300 IN A 127.0.0.1\n_mta-sts.{d} 300 IN TXT \"v=STSv1; id=id{d}1\"\n"
            ));
        }
        records.push_str("_mta-sts.twice 300 IN TXT \"v=STSv1; id=other\"\n");
        records.push_str("_mta-sts.gone 300 IN TXT \"v=STSv1; id=g1\"\n");
        records.push_str("_smtp._tls.ok 300 IN TXT \"v=TLSRPTv1; rua=mailto:tls@lab.test\"\n");
        let named = Named::start(&[Zone::new("lab.test", &records)], None)
            .await
            .expect("named (install bind9: scripts/test does)");
        let ca = Ca::new().expect("ca");
        let names: Vec<String> = SERVED
            .iter()
            .filter(|d| **d != "badcert")
            .map(|d| format!("mta-sts.{d}.lab.test"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let cert = ca.leaf(&names, CertKind::Valid).expect("cert");
        let acceptor =
            tokio_rustls::TlsAcceptor::from(cert.rustls_server_config().expect("server config"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8_lossy(&head).to_string();
                    let host = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("host:")
                                .map(|h| h.trim().split(':').next().unwrap_or("").to_string())
                        })
                        .unwrap_or_default();
                    let path_ok = text.starts_with("GET /.well-known/mta-sts.txt ");
                    let _ = tls.write_all(answer(&host, path_ok).as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let fetcher = Fetcher {
            resolvers: vec![named.addr()],
            dns_timeout: Duration::from_secs(2),
            tls: mxguard::probe::tls::client_config(Some(ca.cert_path())).expect("tls"),
            cache: Arc::new(PolicyCache::default()),
            dns: mxguard::probe::budget::SharedDns::unlimited(),
            dane: Default::default(),
            port,
        };
        Setup {
            _named: named,
            _ca: ca,
            requests,
            fetcher,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn domain(label: &str) -> Fqdn {
    Fqdn::parse(&format!("{label}.lab.test")).expect("name")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_is_fetched_then_cached_by_its_id_within_max_age() {
    let s = Setup::start().await;
    let first = s.fetcher.look(&domain("ok")).await;
    assert_eq!(first.error, None);
    assert_eq!(first.record.as_ref().map(|r| r.id.as_str()), Some("idok1"));
    let policy = first.policy.expect("policy");
    assert_eq!(policy.mode, StsMode::Enforce);
    assert_eq!(policy.max_age, 86400);
    assert_eq!(policy.mx[0].as_str(), "mx1.lab.test");
    assert!(!first.cached);
    assert_eq!(
        first.tlsrpt.map(|t| t.rua),
        Some(vec!["mailto:tls@lab.test".to_string()])
    );
    assert_eq!(s.requests(), 1);
    // same id, max_age not run out: no second request
    let second = s.fetcher.look(&domain("ok")).await;
    assert!(second.cached);
    assert_eq!(second.policy.map(|p| p.max_age), Some(86400));
    assert_eq!(s.requests(), 1);
    assert_eq!(second.error, None);
    // max_age 0: fetched at every look
    s.fetcher.look(&domain("zero")).await;
    let again = s.fetcher.look(&domain("zero")).await;
    assert!(!again.cached);
    assert_eq!(again.policy.map(|p| p.mode), Some(StsMode::Testing));
    assert_eq!(s.requests(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_senders_refuse_is_refused_with_the_reason() {
    let s = Setup::start().await;
    let cases = [
        ("redirect", "301"),
        ("html", "text/html"),
        ("big", "larger than 65536 bytes"),
        ("badcert", "certificate"),
        ("missing", "404"),
        ("gone", "does not resolve"),
        ("twice", "2 records start with v=STSv1"),
    ];
    for (label, needle) in cases {
        let r = s.fetcher.look(&domain(label)).await;
        assert_eq!(r.policy, None, "{label}: {r:?}");
        let error = r.error.unwrap_or_else(|| panic!("{label}: no error"));
        assert!(
            error
                .to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase()),
            "{label}: {error}"
        );
    }
    let none = s.fetcher.look(&domain("none")).await;
    assert_eq!((none.record, none.policy, none.error), (None, None, None));
    assert_eq!(none.tlsrpt, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_policy_stays_in_force_when_a_later_fetch_fails() {
    let s = Setup::start().await;
    assert!(s.fetcher.look(&domain("ok")).await.policy.is_some());
    // Later, the record's id changes and the policy host stops resolving: another named
    // serves that view, asked by a fetcher sharing the cache.
    let later = Named::start(
        &[Zone::new(
            "lab.test",
            "_mta-sts.ok 300 IN TXT \"v=STSv1; id=changed\"\n",
        )],
        None,
    )
    .await
    .expect("named");
    let broken = Fetcher {
        resolvers: vec![later.addr()],
        ..s.fetcher.clone()
    };
    let r = broken.look(&domain("ok")).await;
    assert_eq!(r.record.as_ref().map(|r| r.id.as_str()), Some("changed"));
    assert!(r.cached, "{r:?}");
    assert_eq!(r.policy.map(|p| p.mode), Some(StsMode::Enforce));
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("does not resolve")),
        "{:?}",
        r.error
    );
    // the record removed (no `_mta-sts.ok2` in that view): the cached policy stays in force
    // until its max_age runs out (§5.1)
    assert!(s.fetcher.look(&domain("ok2")).await.policy.is_some());
    let r = broken.look(&domain("ok2")).await;
    assert!(r.cached, "{r:?}");
    assert_eq!(r.policy.map(|p| p.max_age), Some(86400));
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("no _mta-sts record now")),
        "{:?}",
        r.error
    );
    // nothing was cached for `zero` (max_age 0): no record, no policy
    s.fetcher.look(&domain("zero")).await;
    let r = broken.look(&domain("zero")).await;
    assert_eq!(
        (r.policy, r.error),
        (None, None),
        "no record, nothing cached"
    );
}

#[test]
fn refresh_follows_max_age_within_a_minute_and_an_hour() {
    use mxguard::mtasts::fetch::PolicyReport;
    use mxguard::mtasts::parse_policy;
    let with = |max_age: u32, error: Option<&str>| PolicyReport {
        record: None,
        policy: Some(
            parse_policy(&format!(
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: {max_age}\n"
            ))
            .expect("policy"),
        ),
        cached: false,
        error: error.map(str::to_string),
        tlsrpt: None,
        tlsrpt_error: None,
    };
    assert_eq!(with(86400, None).refresh_in(), Duration::from_secs(3600));
    assert_eq!(with(600, None).refresh_in(), Duration::from_secs(600));
    assert_eq!(with(0, None).refresh_in(), Duration::from_secs(60));
    assert_eq!(
        with(86400, Some("x")).refresh_in(),
        Duration::from_secs(300)
    );
}
