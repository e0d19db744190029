//! Each fault listener does its one fault, and nothing else.

mod common;

use std::time::{Duration, Instant};

use common::Smtp;
use mxguard_testpeers::{Ca, CertKind, Fault, FaultListener};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn silent_listener_accepts_and_says_nothing() {
    let l = FaultListener::start(Fault::Silent).expect("listener");
    let mut tcp = tokio::net::TcpStream::connect(l.addr())
        .await
        .expect("connects");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(1500), tcp.read(&mut buf)).await;
    assert!(read.is_err(), "expected silence, got {read:?}");
    assert_eq!(l.connections(), 1);
}

#[tokio::test]
async fn banner_421_then_close_and_banner_554_then_503() {
    let l = FaultListener::start(Fault::Banner(421)).expect("listener");
    let (mut smtp, banner) = Smtp::connect(l.addr()).await;
    assert_eq!(banner.code, 421, "{banner:?}");
    assert!(smtp.closed().await, "421 must close the connection");

    let l = FaultListener::start(Fault::Banner(554)).expect("listener");
    let (mut smtp, banner) = Smtp::connect(l.addr()).await;
    assert_eq!(banner.code, 554, "{banner:?}");
    assert_eq!(smtp.cmd("EHLO probe.test").await.code, 503);
    assert_eq!(smtp.cmd("QUIT").await.code, 221);
}

#[tokio::test]
async fn no_starttls_is_otherwise_healthy() {
    let l = FaultListener::start(Fault::NoStartTls).expect("listener");
    let (mut smtp, banner) = Smtp::connect(l.addr()).await;
    assert_eq!(banner.code, 220);
    let ehlo = smtp.cmd("EHLO probe.test").await;
    assert_eq!(ehlo.code, 250);
    assert!(!ehlo.has("STARTTLS"), "{ehlo:?}");
    assert_eq!(smtp.cmd("STARTTLS").await.code, 502);
    assert_eq!(smtp.cmd("MAIL FROM:<p@probe.test>").await.code, 250);
    assert_eq!(
        smtp.cmd("RCPT TO:<postmaster@example.test>").await.code,
        250
    );
}

#[tokio::test]
async fn starttls_presents_the_certificate_it_was_given() {
    let ca = Ca::new().expect("CA");
    let name = "mx.example.test";
    for (kind, expect) in [
        (CertKind::Valid, None),
        (CertKind::Expired, Some("Expired")),
        (CertKind::WrongName, Some("NotValidForName")),
    ] {
        let cert = ca.leaf(&[name], kind).expect("leaf");
        let l = FaultListener::start(Fault::StartTls(cert)).expect("listener");
        let (mut smtp, _) = Smtp::connect(l.addr()).await;
        let ehlo = smtp.cmd("EHLO probe.test").await;
        assert!(ehlo.has("STARTTLS"), "{ehlo:?}");
        match (smtp.starttls(&ca, name).await, expect) {
            (Ok(mut tls), None) => {
                let ehlo = tls.cmd("EHLO probe.test").await;
                assert_eq!(ehlo.code, 250);
                assert!(!ehlo.has("STARTTLS"), "no STARTTLS twice: {ehlo:?}");
                assert_eq!(tls.cmd("QUIT").await.code, 221);
            }
            (Err(e), Some(want)) => {
                assert!(
                    format!("{e:?}").contains(want),
                    "{kind:?}: want {want}, got {e:?}"
                )
            }
            (Ok(_), Some(want)) => panic!("{kind:?}: handshake succeeded, wanted {want}"),
            (Err(e), None) => panic!("{kind:?}: handshake failed: {e:?}"),
        }
    }
}

#[tokio::test]
async fn trickle_sends_the_banner_one_byte_per_interval() {
    let l = FaultListener::start(Fault::Trickle(Duration::from_secs(1))).expect("listener");
    let mut tcp = tokio::net::TcpStream::connect(l.addr())
        .await
        .expect("connects");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while start.elapsed() < Duration::from_millis(2500) {
        let left = Duration::from_millis(2500).saturating_sub(start.elapsed());
        if let Ok(Ok(n)) = tokio::time::timeout(left, tcp.read(&mut buf)).await {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!((2..=4).contains(&got.len()), "bytes in 2.5 s: {got:?}");
    assert!(got.starts_with(b"22"), "{got:?}");
}

#[tokio::test]
async fn ehlo_rejected() {
    let l = FaultListener::start(Fault::EhloRejected(550)).expect("listener");
    let (mut smtp, banner) = Smtp::connect(l.addr()).await;
    assert_eq!(banner.code, 220);
    assert_eq!(smtp.cmd("EHLO probe.test").await.code, 550);
    assert_eq!(smtp.cmd("HELO probe.test").await.code, 550);
    assert_eq!(smtp.cmd("QUIT").await.code, 221);
}

#[tokio::test]
async fn rcpt_rejected_with_the_code_given() {
    for code in [450, 550] {
        let l = FaultListener::start(Fault::RcptRejected(code)).expect("listener");
        let (mut smtp, _) = Smtp::connect(l.addr()).await;
        assert_eq!(smtp.cmd("EHLO probe.test").await.code, 250);
        assert_eq!(smtp.cmd("MAIL FROM:<p@probe.test>").await.code, 250);
        let rcpt = smtp.cmd("RCPT TO:<postmaster@example.test>").await;
        assert_eq!(rcpt.code, code, "{rcpt:?}");
    }
}

#[tokio::test]
async fn a_dropped_listener_refuses_connections() {
    let l = FaultListener::start(Fault::NoStartTls).expect("listener");
    let addr = l.addr();
    drop(l);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
