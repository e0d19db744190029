//! End to end, MTA-STS aware failover (issue 19, item 1): the real `mxguard serve` against BIND,
//! two Unbound resolvers and two Postfix MX hosts, with example.test publishing an MTA-STS
//! policy: `_mta-sts` and `_smtp._tls` TXT records at named, `mta-sts.example.test` at
//! 127.0.0.1, and the policy file served over HTTPS on a loopback port by this test with a
//! certificate of the lab's CA (mxguard trusts it through `[checks] ca_file`).
//!
//! - an enforce policy that does not list the backup, `mta_sts = "block"`: stopping the primary
//!   MTA does not move the MX (named still serves the primary) and the timeline has the alert;
//! - the same with `warn`: the failover is made, with the critical warning;
//! - a policy that lists the backup: the failover is made with no MTA-STS event at all;
//! - a policy changed to list the backup is seen at the next refresh (`mta_sts_restored`), and
//!   the failover is then made.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::lab::{Lab, LabMtaSts, LabOptions, Layout, Mxguard, LAB_TLSRPT};
use mxguard_testpeers::CertKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PRIMARY_MX: &str = "10 mx1.example.test.";
const BACKUP_MX: &str = "10 backup.example.test.";
/// Lists the primary only.
const PRIMARY_ONLY: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmax_age: 86400\r\n";
/// Lists every host one label under example.test: the primary and the backup.
const BOTH: &str = "version: STSv1\r\nmode: enforce\r\nmx: *.example.test\r\nmax_age: 86400\r\n";

/// The policy's HTTPS server: every request gets `body` as `text/plain`; counts requests.
struct PolicyServer {
    requests: Arc<AtomicUsize>,
    body: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyServer {
    /// Serves `body` from now on.
    fn publish(&self, body: &str) {
        *self.body.lock().expect("body") = body.to_string();
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve_policy(listener: TcpListener, lab: &Lab, body: &'static str) -> PolicyServer {
    let cert = lab
        .ca
        .leaf(&["mta-sts.example.test"], CertKind::Valid)
        .expect("policy host certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(
        cert.rustls_server_config()
            .expect("policy server TLS config"),
    );
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let body = Arc::new(std::sync::Mutex::new(body.to_string()));
    let served = body.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            let body = served.lock().expect("body").clone();
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
                let line = String::from_utf8_lossy(&head);
                let answer = if line.starts_with("GET /.well-known/mta-sts.txt ") {
                    counted.fetch_add(1, Ordering::SeqCst);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    PolicyServer {
        requests,
        body,
        task,
    }
}

/// A lab whose domain has `mta_sts = setting`, its policy served with `body`.
async fn lab(setting: &'static str, body: &'static str) -> (Lab, PolicyServer) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("policy server port");
    let port = listener.local_addr().expect("local addr").port();
    let lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            read_token: true,
            mta_sts: Some(LabMtaSts { setting, port }),
            ..Layout::default()
        },
    )
    .await;
    let server = serve_policy(listener, &lab, body);
    (lab, server)
}

/// Until the timeline has an event of `kind`; returns its message.
async fn wait_for_event(lab: &Lab, mx: &Mxguard, kind: &str, deadline: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(e) = lab.events().await.into_iter().find(|e| e.kind == kind) {
            return e.message;
        }
        assert!(
            start.elapsed() < deadline,
            "no {kind} event after {deadline:?}; timeline: {:#?}\nmxguard's log:\n{}",
            lab.events()
                .await
                .iter()
                .map(|e| format!("{} {}", e.kind, e.message))
                .collect::<Vec<_>>(),
            mx.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Until the domain's status shows a fetched policy; returns the status's `mta_sts`.
async fn wait_for_policy(lab: &Lab, mx: &Mxguard, deadline: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some((200, body)) = lab.api_get(mx, "/v1/domains/example.test").await {
            if !body["mta_sts"]["policy"].is_null() {
                return body["mta_sts"].clone();
            }
        }
        assert!(
            start.elapsed() < deadline,
            "no MTA-STS policy in the status after {deadline:?}\nmxguard's log:\n{}",
            mx.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kinds(events: &[mxguard::store::Event]) -> Vec<String> {
    events.iter().map(|e| e.kind.as_str().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn block_refuses_the_failover_to_a_backup_the_enforce_policy_does_not_list() {
    let (mut lab, policy) = lab("block", PRIMARY_ONLY).await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;

    // the finding, before any outage: in the status and as an alert in the timeline
    let status = wait_for_policy(&lab, &mx, Duration::from_secs(60)).await;
    assert_eq!(status["setting"], "block");
    assert_eq!(status["record"]["id"], "lab1");
    assert_eq!(status["policy"]["mode"], "enforce");
    assert_eq!(
        status["policy"]["mx"],
        serde_json::json!(["mx1.example.test"])
    );
    assert_eq!(status["policy"]["max_age"], 86400);
    assert_eq!(status["tlsrpt"]["rua"], serde_json::json!([LAB_TLSRPT]));
    let refused = status["evaluation"]["backup_refused"]
        .as_str()
        .expect("the backup is refused")
        .to_string();
    assert!(refused.contains("backup.example.test"), "{refused}");
    let alert = wait_for_event(&lab, &mx, "alert.mta_sts", Duration::from_secs(30)).await;
    assert!(
        alert.contains("backup.example.test") && alert.contains("block"),
        "{alert}"
    );
    assert!(policy.requests.load(Ordering::SeqCst) >= 1);

    // the outage: the primary goes Down, the backup is Up, and the failover is refused
    lab.primary.stop().await.expect("stop primary MTA");
    let message = wait_for_event(&lab, &mx, "alert.mta_sts_refused", Duration::from_secs(60)).await;
    assert!(
        message.contains("failover refused") && message.contains("backup.example.test"),
        "{message}"
    );
    let events = lab.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "health" && e.message.starts_with("primary Up → Down")),
        "the refusal follows the primary's Down verdict: {:?}",
        kinds(&events)
    );
    assert_eq!(lab.served_mx().await, vec![format!("{PRIMARY_MX} 300")]);
    assert!(lab.changes().await.is_empty(), "no change intent");
    let (_, body) = lab
        .api_get(&mx, "/v1/domains/example.test")
        .await
        .expect("status");
    assert_eq!(body["state"]["mta_sts_blocked"], true);
    assert_eq!(body["state"]["phase"], "primary");
    assert!(!kinds(&events).contains(&"alert.mta_sts_failover".to_string()));
    // and `mxguard status` says it
    let out = lab.cli(&["status", "example.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("MTA-STS: the MTA-STS policy (mode enforce, mx mx1.example.test) does not list the backup MX backup.example.test")
            && text.contains("(a failover was refused for it)"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn warn_fails_over_to_a_backup_the_policy_does_not_list_with_a_critical_warning() {
    let (mut lab, _policy) = lab("warn", PRIMARY_ONLY).await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    let alert = wait_for_event(&lab, &mx, "alert.mta_sts", Duration::from_secs(60)).await;
    assert!(alert.contains("warn"), "{alert}");

    lab.primary.stop().await.expect("stop primary MTA");
    lab.wait_for_mx(&mx, BACKUP_MX, Duration::from_secs(60))
        .await;
    let warning =
        wait_for_event(&lab, &mx, "alert.mta_sts_failover", Duration::from_secs(10)).await;
    assert!(
        warning.contains("compliant senders refuse") && warning.contains("backup.example.test"),
        "{warning}"
    );
    assert!(!kinds(&lab.events().await).contains(&"alert.mta_sts_refused".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_that_lists_the_backup_fails_over_without_any_mta_sts_event() {
    let (mut lab, policy) = lab("block", BOTH).await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    // the policy was looked at and passes the backup: only then is the outage meaningful
    let status = wait_for_policy(&lab, &mx, Duration::from_secs(60)).await;
    assert_eq!(
        status["evaluation"]["backup_refused"],
        serde_json::Value::Null
    );
    assert_eq!(
        status["evaluation"]["backup"][0]["pattern"],
        "*.example.test"
    );
    assert!(policy.requests.load(Ordering::SeqCst) >= 1);

    lab.primary.stop().await.expect("stop primary MTA");
    lab.wait_for_mx(&mx, BACKUP_MX, Duration::from_secs(60))
        .await;
    let events = lab.events().await;
    assert!(
        !events.iter().any(|e| e.kind.as_str().contains("mta_sts")),
        "{:?}",
        kinds(&events)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_prints_the_policy_and_the_refused_backup() {
    let (lab, _policy) = lab("block", PRIMARY_ONLY).await;
    let port = lab.primary.addr().port().to_string();
    let ca = lab.ca.cert_path().display().to_string();
    let resolver = lab.resolvers[0].addr().to_string();
    let out = lab.cli(&[
        "check",
        "example.test",
        "--resolver",
        &resolver,
        "--port",
        &port,
        "--backup",
        "backup.example.test",
        "--ca-file",
        &ca,
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["mta_sts"]["policy"]["mode"], "enforce");
    assert_eq!(r["mta_sts"]["tlsrpt"]["rua"][0], LAB_TLSRPT);
    assert_eq!(r["mta_sts"]["evaluation"]["primary"][0]["refused"], false);
    assert_eq!(r["mta_sts"]["evaluation"]["backup"][0]["refused"], true);
    let problems = r["problems"].to_string();
    assert!(
        problems.contains("does not list the backup MX backup.example.test"),
        "{problems}"
    );
    assert_eq!(out.status.code(), Some(1), "a problem found");

    let table = lab.cli(&[
        "check",
        "example.test",
        "--resolver",
        &resolver,
        "--port",
        &port,
        "--backup",
        "backup.example.test",
        "--ca-file",
        &ca,
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("policy id lab1: mode enforce ; max_age 86400 s ; mx mx1.example.test"),
        "{text}"
    );
    assert!(text.contains("NOT LISTED"), "{text}");
    assert!(
        text.contains(&format!("TLS-RPT rua {LAB_TLSRPT}")),
        "{text}"
    );

    let config = lab.config.display().to_string();
    let checked = lab.cli(&["config", "check", &config, "--mta-sts"]);
    let text = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(0), "{text}");
    assert!(
        text.contains("example.test: warning: the MTA-STS policy (mode enforce, mx mx1.example.test) does not list the backup MX backup.example.test"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refreshes_the_policy_and_a_backup_listed_later_is_failed_over_to() {
    // max_age 60 s: serve looks again a minute later (min(max_age, 1 h))
    let (mut lab, policy) = lab(
        "block",
        "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmax_age: 60\r\n",
    )
    .await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    wait_for_event(&lab, &mx, "alert.mta_sts", Duration::from_secs(60)).await;
    let fetched = policy.requests.load(Ordering::SeqCst);

    // the domain's owner adds the backup to the policy
    policy.publish(
        "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: backup.example.test\r\nmax_age: 60\r\n",
    );
    let restored = wait_for_event(&lab, &mx, "mta_sts_restored", Duration::from_secs(150)).await;
    assert!(
        restored.contains("deliver to the backup again"),
        "{restored}"
    );
    assert!(
        policy.requests.load(Ordering::SeqCst) > fetched,
        "fetched again"
    );

    lab.primary.stop().await.expect("stop primary MTA");
    lab.wait_for_mx(&mx, BACKUP_MX, Duration::from_secs(60))
        .await;
    let k = kinds(&lab.events().await);
    assert!(
        !k.iter()
            .any(|k| k == "alert.mta_sts_refused" || k == "alert.mta_sts_failover"),
        "{k:?}"
    );
}
